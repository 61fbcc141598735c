/**
 * A test server: the SMART router plus a tiny FHIR endpoint guarded by `authenticate` and
 * `scopeAllows` (the real facade is wired by src/app.ts). Listens on 127.0.0.1:0, data in a temp
 * directory, clock frozen and advanced by the test.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import express from 'express';
import { pino } from 'pino';
import { loadConfig, type Config } from '../../src/config.js';
import { isGlucoGuardError } from '../../src/errors.js';
import { MemoryKeyValueStore } from '../../src/kv/memory.js';
import type { KeyValueStore } from '../../src/kv/port.js';
import { BearerTokenError, createSmart, type Smart, type SmartDeps } from '../../src/smart/index.js';

export const PATIENTS = [
  { resourceType: 'Patient', id: 'p1', name: [{ family: 'Rivera', given: ['Ana'] }], birthDate: '1980-02-03' },
  { resourceType: 'Patient', id: 'p2', name: [{ family: 'Okafor', given: ['Ben'] }], birthDate: '1975-07-09' },
];
/** Practitioner ids the harness holds (only their existence: POST /smart/launch checks it). */
export const PRACTITIONERS = ['d1', 'd2'];
const CATEGORY = 'http://terminology.hl7.org/CodeSystem/observation-category';
export const OBSERVATIONS = [
  { resourceType: 'Observation', id: 'o1', status: 'final', subject: { reference: 'Patient/p1' },
    category: [{ coding: [{ system: CATEGORY, code: 'laboratory' }] }], code: { coding: [{ system: 'http://loinc.org', code: '4548-4' }] } },
  { resourceType: 'Observation', id: 'o2', status: 'final', subject: { reference: 'Patient/p1' },
    category: [{ coding: [{ system: CATEGORY, code: 'vital-signs' }] }], code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] } },
  { resourceType: 'Observation', id: 'o3', status: 'final', subject: { reference: 'Patient/p2' },
    category: [{ coding: [{ system: CATEGORY, code: 'laboratory' }] }], code: { coding: [{ system: 'http://loinc.org', code: '4548-4' }] } },
];

export interface Harness {
  baseUrl: string;
  fhirBase: string;
  config: Config;
  smart: Smart;
  kv: KeyValueStore;
  /** Moves the frozen clock forward. */
  advance(ms: number): void;
  now(): number;
  close(): Promise<void>;
}

/** `env`: configuration variables for loadConfig (e.g. GLUCOGUARD_TRUST_PROXY, applied as src/app.ts does). */
export async function startHarness(options: Partial<Pick<SmartDeps, 'rateLimits' | 'lifetimes'>> & { kv?: KeyValueStore; withPicker?: boolean; env?: Record<string, string> } = {}): Promise<Harness> {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'gg-smart-'));
  let clock = Date.UTC(2026, 0, 15, 12, 0, 0);
  const now = () => clock;
  const app = express();
  const server: Server = createServer(app);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const baseUrl = `http://127.0.0.1:${port}`;
  const fhirBase = `${baseUrl}/fhir`;
  const config = loadConfig(options.env ?? {}, { dataDir, baseUrl, port });
  const kv = options.kv ?? new MemoryKeyValueStore(now);
  const smart = await createSmart({
    config, kv, logger: pino({ level: 'silent' }), now, fhirBase,
    rateLimits: options.rateLimits, lifetimes: options.lifetimes,
    // no consent here: every user may see both patients (the real app's picker is src/consent/patient-picker.ts)
    patients: options.withPicker === false ? undefined : {
      search: async (_user, q) => PATIENTS
        .filter((p) => !q || p.id === q || JSON.stringify(p.name).toLowerCase().includes(q.toLowerCase()))
        .map((p) => ({ id: p.id, name: `${p.name[0]!.given[0]} ${p.name[0]!.family}`, birthDate: p.birthDate })),
      mayChoose: async (_user, id) => PATIENTS.some((p) => p.id === id),
      describe: async (_user, id) => PATIENTS.filter((p) => p.id === id)
        .map((p) => ({ id: p.id, name: `${p.name[0]!.given[0]} ${p.name[0]!.family}`, birthDate: p.birthDate }))[0],
    },
    // what the tiny FHIR endpoint holds, and the practitioners the tests sign in as (the real app asks its repository)
    resourceExists: async (type, id) => (type === 'Patient' && PATIENTS.some((p) => p.id === id)) || (type === 'Practitioner' && PRACTITIONERS.includes(id)),
  });
  app.set('trust proxy', config.trustProxy); // as src/app.ts does
  app.use(smart.router);
  mountTinyFhir(app, smart);
  return {
    baseUrl, fhirBase, config, smart, kv, now,
    advance: (ms) => { clock += ms; },
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await smart.close();
      if (!options.kv) await kv.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** Patient and Observation read/search: 401 without a live token, 404 when not there or not allowed. */
function mountTinyFhir(app: express.Express, smart: Smart): void {
  const data: Record<string, object[]> = { Patient: PATIENTS, Observation: OBSERVATIONS };
  const guard = (handler: (req: express.Request, res: express.Response, access: Awaited<ReturnType<Smart['authenticate']>>) => void) =>
    async (req: express.Request, res: express.Response) => {
      try {
        const access = await smart.authenticate(req.headers as Record<string, string | undefined>, req.originalUrl);
        handler(req, res, access);
      } catch (err) {
        if (err instanceof BearerTokenError) res.status(err.status).set(err.headers).json({ resourceType: 'OperationOutcome', issue: err.issues });
        else if (isGlucoGuardError(err)) res.status(err.status).json({ resourceType: 'OperationOutcome', issue: err.issues });
        else res.status(500).json({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'exception' }] });
      }
    };
  const notFound = { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'not-found' }] };
  app.get('/fhir/metadata', (_req, res) => {
    res.json({ resourceType: 'CapabilityStatement', status: 'active', kind: 'instance', fhirVersion: '4.0.1', format: ['json'],
      rest: [{ mode: 'server', security: smart.capabilitySecurity() }] });
  });
  app.get('/fhir/:type/:id', guard((req, res, access) => {
    const type = String(req.params.type);
    const resource = data[type]?.find((r) => (r as { id: string }).id === req.params.id);
    if (!resource || !smart.scopeAllows(access, 'read', type, resource)) return void res.status(404).json(notFound);
    res.json(resource);
  }));
  app.get('/fhir/:type', guard((req, res, access) => {
    const type = String(req.params.type);
    if (!data[type] || !smart.scopeAllows(access, 'search', type)) return void res.status(403).json(notFound);
    const patient = typeof req.query.patient === 'string' ? req.query.patient : undefined;
    const entries = data[type]!
      .filter((r) => !patient || (r as { subject?: { reference: string } }).subject?.reference === `Patient/${patient}`)
      .filter((r) => smart.scopeAllows(access, 'search', type, r));
    res.json({ resourceType: 'Bundle', type: 'searchset', entry: entries.map((resource) => ({ resource })) });
  }));
}
