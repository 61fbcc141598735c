/**
 * A write that cannot have the embedded store's write lock — another process on the data directory
 * (a long import, a key rotation) holds it past SQLite's busy wait — is answered 503 with
 * Retry-After, a transient outcome a client may retry, and writes nothing. Before, it was an
 * opaque 500 "Internal error" (seen with replicas on one store).
 */
import { afterAll, beforeAll, expect, it } from '@jest/globals';
import Database from 'better-sqlite3';
import type { OperationOutcome, Patient } from '@medplum/fhirtypes';
import request from 'supertest';
import { storeFilePath } from '../../src/repository/embedded/store.js';
import { startTestApp, tempDir, type TestApp } from '../support/app.js';

const dataDir = tempDir('gg-store-busy-');
let t: TestApp;
beforeAll(async () => { t = await startTestApp({}, dataDir); });
afterAll(async () => { await t.close(); });

it('a write kept from the store\'s lock past the wait is 503 with Retry-After, and nothing is written', async () => {
  const other = new Database(storeFilePath(dataDir));
  other.exec('BEGIN IMMEDIATE');
  try {
    const res = await request(t.app.http).post('/fhir/Patient').set('Content-Type', 'application/fhir+json')
      .send({ resourceType: 'Patient', name: [{ family: 'Busy' }] } satisfies Patient);
    expect(res.status).toBe(503);
    expect(res.headers['retry-after']).toBe('1');
    expect((res.body as OperationOutcome).issue[0]).toMatchObject({ code: 'transient' });
  } finally {
    other.exec('ROLLBACK');
    other.close();
  }
  const search = await request(t.app.http).get('/fhir/Patient?family=Busy');
  expect(search.body.total ?? search.body.entry?.length ?? 0).toBe(0);
}, 30_000);
