/**
 * `glucoguard export` and `glucoguard exchange status` in-process against a test app: an operator
 * export of everything, a client export limited by the client's consent grants (research:
 * de-identified), and the status listing.
 */
import { readFileSync, rmSync, statSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Observation, Organization } from '@medplum/fhirtypes';
import { registerExchangeCommands } from '../../src/exchange/cli.js';
import { startTestApp, tempDir, type TestApp } from '../support/app.js';
import { inProcessCli } from '../support/cli.js';
import { DAY, grant, ingest, person, registerIdentity, sparseTrace } from './consent-helpers.js';

describe('exchange CLI', () => {
  let t: TestApp;
  let ana: string;
  let ben: string;
  let study: string;
  let clientId: string;
  const trace = sparseTrace(2, 120);
  const now = Date.now();

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
    ana = await person(t.app, 'Patient', 'Rivera');
    ben = await person(t.app, 'Patient', 'Okafor');
    study = (await t.app.repository.create<Organization>({ resourceType: 'Organization', name: 'Study 42' })).resource.id!;
    await registerIdentity(t.app, `Organization/${study}`);
    for (const p of [ana, ben]) await ingest(t.app, p, trace);
    expect((await grant(t.app, { patient: ana, actor: `Organization/${study}`, accessTo: now + DAY, dataFrom: now - 10 * DAY, dataTo: now, purposes: ['HRESCH'], classes: ['Observation'] })).status).toBe(201);
    clientId = t.app.smart.store.addClient({ name: 'study 42', type: 'confidential-asymmetric', jwksUrl: 'https://study.example/jwks', scopes: ['system/*.rs'] }).client.clientId;
  }, 120_000);
  afterAll(async () => {
    await t?.close();
  });

  const cli = inProcessCli(registerExchangeCommands, () => t.app);

  const outDirs: string[] = [];
  const outDir = () => {
    const dir = tempDir('gg-export-out-');
    outDirs.push(dir);
    return dir;
  };
  afterAll(() => {
    for (const dir of outDirs) rmSync(dir, { recursive: true, force: true });
  });

  const readNdjson = (file: string) => readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Observation);

  test('an operator export holds every patient\'s readings', async () => {
    const out = JSON.parse(await cli('export', '--type', 'Observation', '--out', outDir())) as { output: { type: string; count: number; file: string }[] };
    expect(out.output).toEqual([{ type: 'Observation', count: 2 * trace.length, file: expect.stringMatching(/Observation\.ndjson$/) }]);
    expect(new Set(readNdjson(out.output[0]!.file).map((o) => o.subject?.reference))).toEqual(new Set([`Patient/${ana}`, `Patient/${ben}`]));
    expect(statSync(out.output[0]!.file).mode & 0o777).toBe(0o600);
  }, 30_000);

  test('a client export (research purpose) holds only what was granted, de-identified', async () => {
    const out = JSON.parse(await cli('export', '--out', outDir(), '--client', clientId, '--as', `Organization/${study}`, '--purpose', 'HRESCH', '--type', 'Observation', '--since', new Date(now - DAY * 30).toISOString()));
    expect(out.output).toHaveLength(1);
    const lines = readNdjson(out.output[0].file);
    expect(lines).toHaveLength(trace.length);
    expect(JSON.stringify(lines)).not.toContain(ana);
    expect(lines[0]!.meta?.security?.map((c) => c.code)).toEqual(['PSEUDED', 'REDACTED']);
  }, 30_000);

  test('exchange status lists the jobs', async () => {
    const out = await cli('exchange', 'status');
    expect(out).toMatch(/^Export jobs \(2\)/);
    expect(out).toMatch(/completed system {2}Observation {2}\d+ resources {2}by open/);
    expect(out).toContain('Subscriptions (0)');
  }, 30_000);
});
