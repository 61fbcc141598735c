/**
 * Black-box round on the upstream repository: upstream answers that do not fit the request.
 * - A read or vread answered with another resource (another id, or another version) is the
 *   upstream's failure (502), never served under the URL the client asked for.
 * - A 422 to a read (which sends no resource to process) is the upstream's failure (502) as a 400
 *   is, not "could not process the resource" with the upstream's text; a 422 to a write keeps it.
 * - A token endpoint answering 200 without a usable access_token is logged as such, not as a refusal.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Observation, Patient } from '@medplum/fhirtypes';
import { exportPKCS8, generateKeyPair } from 'jose';
import { failure } from '../support/adapters.js';
import { UpstreamRepository } from '../../src/repository/upstream/index.js';
import { startUpstreamFhirServer, type UpstreamFhirServer } from '../support/upstream-server.js';

const PROXY = 'https://glucoguard.example/fhir';

function glucose(patientId: string, value: number): Observation {
  return {
    resourceType: 'Observation', status: 'final',
    code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] },
    subject: { reference: `Patient/${patientId}` }, effectiveDateTime: '2026-01-05T08:00:00Z',
    valueQuantity: { value, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
  };
}

describe('upstream answers that do not fit the request', () => {
  let upstream: UpstreamFhirServer;
  let repo: UpstreamRepository;
  let patient: string;
  let asked: Observation;
  let other: Observation;

  beforeAll(async () => {
    upstream = await startUpstreamFhirServer();
    repo = new UpstreamRepository({ config: { url: upstream.url, auth: 'none', timeoutMs: 5000 }, proxyFhirBase: PROXY });
    patient = (await repo.create<Patient>({ resourceType: 'Patient' })).resource.id!;
    asked = (await repo.create(glucose(patient, 110))).resource;
    other = (await repo.create(glucose(patient, 40))).resource;
  });
  afterAll(async () => {
    upstream.intercept(undefined);
    await upstream.close();
  });

  it('a read answered with another resource is 502, not the other resource under the asked URL', async () => {
    upstream.intercept((req) => (req.method === 'GET' && req.url.endsWith(`/Observation/${asked.id}`) ? { status: 200, body: other } : undefined));
    try {
      const err = await failure(repo.read('Observation', asked.id!));
      expect([err.code, err.status]).toEqual(['ERR_UPSTREAM', 502]);
    } finally {
      upstream.intercept(undefined);
    }
    // the honest answer still reads
    expect((await repo.read<Observation>('Observation', asked.id!)).valueQuantity?.value).toBe(110);
  });

  it('a vread answered with another version is 502; a version the upstream leaves unnamed is taken as asked', async () => {
    const updated = (await repo.update({ ...asked, valueQuantity: { ...asked.valueQuantity!, value: 120 } })).resource;
    const first = asked.meta!.versionId!;
    upstream.intercept((req) => (req.url.endsWith(`/_history/${first}`) ? { status: 200, body: updated } : undefined));
    try {
      const err = await failure(repo.vread('Observation', asked.id!, first));
      expect([err.code, err.status]).toEqual(['ERR_UPSTREAM', 502]);
      const { meta: _meta, ...unnamed } = asked;
      upstream.intercept((req) => (req.url.endsWith(`/_history/${first}`) ? { status: 200, body: unnamed } : undefined));
      expect((await repo.vread<Observation>('Observation', asked.id!, first)).valueQuantity?.value).toBe(110);
    } finally {
      upstream.intercept(undefined);
    }
  });

  it('a 422 to a read is the upstream\'s failure (502) without its text; a 422 to a write keeps its plain issues', async () => {
    const outcome = { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'invariant', expression: ['Observation.status'], diagnostics: 'status is required' }] };
    upstream.intercept(() => ({ status: 422, body: outcome }));
    try {
      const read = await failure(repo.read('Observation', asked.id!));
      expect([read.code, read.status]).toEqual(['ERR_UPSTREAM', 502]);
      expect(JSON.stringify({ m: read.message, i: read.issues })).not.toContain('status is required');
      const vread = await failure(repo.vread('Observation', asked.id!, asked.meta!.versionId!));
      expect([vread.code, vread.status]).toEqual(['ERR_UPSTREAM', 502]);
      const write = await failure(repo.create(glucose(patient, 90)));
      expect([write.code, write.status]).toEqual(['ERR_UNPROCESSABLE', 422]);
      expect(write.issues?.[0]).toMatchObject({ code: 'invariant', diagnostics: 'status is required', expression: ['Observation.status'] });
    } finally {
      upstream.intercept(undefined);
    }
  });
});

describe('a token endpoint answering 200 without a usable token', () => {
  let tokenServer: Server;
  let tokenUrl: string;
  let dir: string;
  let keyFile: string;
  let upstream: UpstreamFhirServer;

  beforeAll(async () => {
    upstream = await startUpstreamFhirServer({ bearerTokens: ['never-issued'] });
    tokenServer = createServer((req, res) => {
      req.resume();
      req.on('end', () => res.writeHead(200, { 'content-type': 'application/json' }).end('{"token_type":"bearer","error_description":"tok-detail-secret"}'));
    });
    await new Promise<void>((resolve) => tokenServer.listen(0, '127.0.0.1', resolve));
    tokenUrl = `http://127.0.0.1:${(tokenServer.address() as AddressInfo).port}/token`;
    dir = mkdtempSync(path.join(tmpdir(), 'gg-bb-upstream-replies-'));
    keyFile = path.join(dir, 'k.pem');
    writeFileSync(keyFile, await exportPKCS8((await generateKeyPair('RS384', { extractable: true })).privateKey), { mode: 0o600 });
  });
  afterAll(async () => {
    tokenServer.closeAllConnections();
    await new Promise<void>((resolve) => tokenServer.close(() => resolve()));
    await upstream.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('logs that the answer had no usable access_token (not a refusal), and no body text; the request is 502', async () => {
    const lines: string[] = [];
    const log = (...args: unknown[]): void => { lines.push(JSON.stringify(args)); };
    const repo = new UpstreamRepository({
      config: { url: upstream.url, auth: 'backend-services', timeoutMs: 5000, clientId: 'gg', tokenUrl, privateKeyFile: keyFile },
      proxyFhirBase: PROXY, logger: { debug: log, info: log, warn: log, error: log } as never,
    });
    const err = await failure(repo.read('Patient', '1'));
    expect([err.code, err.status]).toEqual(['ERR_UPSTREAM', 502]);
    const logged = lines.join('\n');
    expect(logged).toContain('upstream token endpoint answered without a usable access_token');
    expect(logged).not.toContain('upstream token request refused');
    expect(logged).not.toContain('tok-detail-secret');
    expect(upstream.requests).toHaveLength(0);
  });
});
