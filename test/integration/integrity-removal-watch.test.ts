/**
 * Commitments removed from the commitment store while the server runs (no read can see a version
 * removed with its commitment): the server looks every GLUCOGUARD_LEDGER_CHECK_MS, and each time it
 * finds more missing than it reported, logs the error, writes one Security Alert AuditEvent and
 * sets `glucoguard_commitments_missing`. Before, only `glucoguard verify` or the next start found it.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import path from 'node:path';
import Database from 'better-sqlite3';
import request from 'supertest';
import type { AuditEvent, Patient } from '@medplum/fhirtypes';
import { startTestApp, type TestApp } from '../support/app.js';

let t: TestApp;
beforeAll(async () => {
  t = await startTestApp({ GLUCOGUARD_LEDGER_CHECK_MS: '1000' });
});
afterAll(async () => {
  await t?.close();
});

const FHIR_JSON = 'application/fhir+json';

async function createPatient(family: string): Promise<string> {
  const res = await request(t.app.http).post('/fhir/Patient').set('content-type', FHIR_JSON).send({ resourceType: 'Patient', name: [{ family }] });
  expect(res.status).toBe(201);
  return (res.body as Patient).id!;
}

/** The version and its commitment row deleted, as someone with the files would. */
function removeWithCommitment(id: string): void {
  const store = new Database(path.join(t.dataDir, 'store', 'glucoguard.db'));
  const ledger = new Database(path.join(t.dataDir, 'ledger', 'commitments.db'));
  try {
    expect(store.prepare("DELETE FROM versions WHERE type = 'Patient' AND id = ?").run(id).changes).toBe(1);
    expect(ledger.prepare("DELETE FROM commitments WHERE type = 'Patient' AND id = ?").run(id).changes).toBe(1);
  } finally {
    store.close();
    ledger.close();
  }
}

async function alerts(): Promise<AuditEvent[]> {
  await t.app.consent.audit.flush();
  const found = await t.app.repository.search({ resourceType: 'AuditEvent', count: 10_000, offset: 0 });
  return (found.resources as AuditEvent[]).filter((e) => e.type?.code === '110113' && e.subtype?.some((s) => s.code === 'commitments-missing'));
}

async function missingGauge(): Promise<number> {
  const res = await request(t.app.http).get('/metrics');
  return Number(/^glucoguard_commitments_missing(?:\{[^}]*\})? (\d+)$/m.exec(res.text)?.[1]);
}

async function until<T>(probe: () => Promise<T>, done: (v: T) => boolean, ms = 8000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (done(v) || Date.now() > end) return v;
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe('the running server watches the commitment store', () => {
  it('a removal is alerted within the check interval, once per new finding, and counted in the metrics', async () => {
    const ids = [];
    for (const name of ['Ames', 'Berg', 'Cole', 'Dahl']) ids.push(await createPatient(name));
    await t.app.ledger.anchorer.flush();
    expect(await missingGauge()).toBe(0);
    expect(await alerts()).toEqual([]);

    removeWithCommitment(ids[1]!);
    const first = await until(alerts, (a) => a.length > 0);
    expect(first).toHaveLength(1);
    expect(first[0]!.outcome).toBe('8');
    expect(first[0]!.outcomeDesc).toMatch(/^1 commitments are missing from the commitment store \(1 leaves of 1 batch \(\d+\) have no commitment row\)/);
    // no patient, version or content is named: which ones are gone is for `glucoguard verify`
    expect(JSON.stringify(first[0])).not.toMatch(/Berg|Patient\//);
    expect(await missingGauge()).toBe(1);

    // later checks find the same: no second alert
    await new Promise((r) => setTimeout(r, 2500));
    expect(await alerts()).toHaveLength(1);

    removeWithCommitment(ids[3]!);
    const second = await until(alerts, (a) => a.length > 1);
    expect(second).toHaveLength(2);
    expect(second.map((e) => e.outcomeDesc!.split(' ')[0]).sort()).toEqual(['1', '2']);
    expect(await missingGauge()).toBe(2);

    // a server started on a store with rows missing alerts too (once its anchorer holds the lease)
    await t.restart();
    const third = await until(alerts, (a) => a.length > 2);
    expect(third.map((e) => e.outcomeDesc!.split(' ')[0]).sort()).toEqual(['1', '2', '2']);
    await new Promise((r) => setTimeout(r, 2500));
    expect(await alerts()).toHaveLength(3);
  }, 40_000);
});
