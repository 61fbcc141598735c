/**
 * Property-based fuzzing of `POST /cgm/ingest` over HTTP: hostile exports of every format (and
 * arbitrary bytes) with arbitrary query options. Never a 5xx; a request that is not accepted (any
 * 4xx) stores nothing; an accepted one answers an import report.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Resource } from '@medplum/fhirtypes';
import fc from 'fast-check';
import { createServer, type Server } from 'node:http';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { STRUCTURED } from './cgm-arbitraries.js';

let t: TestApp;
let server: Server;
let patientId: string;
const statuses = new Map<number, number>();

beforeAll(async () => {
  t = await startTestApp();
  patientId = (await t.app.repository.create<Resource>({ resourceType: 'Patient', name: [{ family: 'Ingest' }] })).resource.id!;
  server = createServer(t.app.http);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
});
afterAll(async () => {
  server?.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await t?.close();
});

/** The newest readings and devices (AuditEvents are left out: one is recorded for every access by design). */
async function newestChange(): Promise<string> {
  const newest = await Promise.all(['Observation', 'Device', 'MedicationAdministration'].map(async (resourceType) => {
    const e = (await t.app.repository.history({ resourceType, count: 1, offset: 0 })).entries[0];
    return e ? `${e.resourceType}/${e.id}/${e.versionId}` : `${resourceType}:none`;
  }));
  return newest.join(' ');
}

const body = fc.oneof(
  { weight: 4, arbitrary: fc.oneof(...STRUCTURED.map(([, arb]) => arb)) },
  { weight: 1, arbitrary: fc.string({ maxLength: 200 }) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.from(b)) },
  { weight: 1, arbitrary: fc.constant(`[${'{"type":"sgv","sgv":'.repeat(3000)}1${'}'.repeat(3000)}]`) },
);
/** Options are often absent (null), so hostile bodies reach the parsers instead of stopping at a bad option. */
const query = fc.record({
  patient: fc.oneof({ weight: 6, arbitrary: fc.constant('__patient__') },
    { weight: 1, arbitrary: fc.constantFrom('unknown-patient', '', '../etc', 'a'.repeat(65), '__patient__&patient=x') }),
  format: fc.option(fc.constantFrom('nightscout', 'dexcom', 'dexcom-clarity', 'tidepool', 'openmhealth', 'libreview', 'healthkit', 'csv', ''), { freq: 2 }),
  tz: fc.option(fc.constantFrom('Europe/Berlin', 'America/New_York', 'Mars/Olympus', 'UTC', ''), { freq: 2 }),
  partial: fc.option(fc.constantFrom('true', 'false', 'yes'), { freq: 2 }),
}).map((q) => Object.fromEntries(Object.entries(q).filter(([, v]) => v !== null)) as Record<string, string>);

describe('POST /cgm/ingest never answers 5xx and stores nothing when it refuses', () => {
  test('hostile exports × options', async () => {
    await fc.assert(fc.asyncProperty(query, body, fc.constantFrom('application/json', 'text/csv', 'application/xml', 'application/octet-stream'),
      async (q, b, type) => {
        const qs = Object.entries(q).map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join('&').replaceAll('__patient__', patientId).replace('%26patient%3Dx', '&patient=x');
        const before = await newestChange();
        const res = await request(server).post(`/cgm/ingest?${qs}`).set('Content-Type', type).send(b);
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
        if (res.status >= 500) throw new Error(`status ${res.status} for ${qs}: ${res.text.slice(0, 300)}`);
        if (res.status >= 400) {
          expect(res.body.resourceType).toBe('OperationOutcome');
          expect(await newestChange()).toBe(before);
        } else {
          expect(res.status).toBe(200);
        }
      }), { numRuns: 400 });
    process.stdout.write(`cgm ingest fuzz statuses: ${JSON.stringify(Object.fromEntries([...statuses].sort((a, b) => a[0] - b[0])))}\n`);
    expect(statuses.get(200) ?? 0).toBeGreaterThan(20);
    expect((statuses.get(400) ?? 0) + (statuses.get(422) ?? 0)).toBeGreaterThan(20);
  });
});
