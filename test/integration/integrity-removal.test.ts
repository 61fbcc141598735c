/**
 * Data removed from the stores, found all the same (QA, session 22): a resource's rows deleted
 * from the repository while its commitment stays make a read an integrity failure, not a plain
 * 404; versions deleted together with their commitment rows leave gaps that the commitment store's
 * batches and the chain's records reveal (`counts`, `gaps`, `checkCompleteness`); a tampered version
 * read again and again fails every read but alerts once per hour, saying what was found.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import path from 'node:path';
import Database from 'better-sqlite3';
import request from 'supertest';
import type { AuditEvent, Observation, OperationOutcome, Patient } from '@medplum/fhirtypes';
import { AlertThrottle } from '../../src/audit/alert-throttle.js';
import { checkCompleteness } from '../../src/ledger/completeness.js';
import { createLedger } from '../../src/ledger/index.js';
import { createLogger } from '../../src/log.js';
import { startTestApp, type TestApp } from '../support/app.js';

let t: TestApp;
beforeAll(async () => {
  t = await startTestApp();
  await t.app.ledger.anchorer.stop(); // batches closed by flush() only, so each test knows what it anchored
});
afterAll(async () => {
  await t?.close();
});

const FHIR_JSON = 'application/fhir+json';

async function createPatient(family: string): Promise<Patient> {
  const res = await request(t.app.http).post('/fhir/Patient').set('content-type', FHIR_JSON).send({ resourceType: 'Patient', name: [{ family }] });
  expect(res.status).toBe(201);
  return res.body as Patient;
}

async function observe(patient: string, minute: number): Promise<Observation> {
  const res = await request(t.app.http).post('/fhir/Observation').set('content-type', FHIR_JSON).send({
    resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] },
    subject: { reference: `Patient/${patient}` }, effectiveDateTime: new Date(Date.parse('2026-06-01T00:00:00Z') + minute * 300_000).toISOString(),
    valueQuantity: { value: 100 + minute, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
  });
  expect(res.status).toBe(201);
  return res.body as Observation;
}

/** Writes the access log's pending AuditEvents, then anchors everything queued. */
async function settle(): Promise<void> {
  await t.app.consent.audit.flush();
  await t.app.ledger.anchorer.flush();
}

/** Deletes every stored version of type/id from the repository (rows only: its index rows may stay). */
function deleteVersions(type: string, id: string): void {
  const db = new Database(path.join(t.dataDir, 'store', 'glucoguard.db'));
  try {
    expect(db.prepare('DELETE FROM versions WHERE type = ? AND id = ?').run(type, id).changes).toBeGreaterThan(0);
  } finally {
    db.close();
  }
}

/** Flips one byte of a stored version's ciphertext: it no longer authenticates (AES-GCM). */
function flipStoredByte(type: string, id: string): void {
  const db = new Database(path.join(t.dataDir, 'store', 'glucoguard.db'));
  try {
    const row = db.prepare('SELECT seq, body FROM versions WHERE type = ? AND id = ?').get(type, id) as { seq: number; body: Buffer };
    const body = Buffer.from(row.body);
    body[body.length >> 1]! ^= 0x01;
    expect(db.prepare('UPDATE versions SET body = ? WHERE seq = ?').run(body, row.seq).changes).toBe(1);
  } finally {
    db.close();
  }
}

/** Runs `sql` on the commitment store (another connection, as QA's better-sqlite3 did). */
function onCommitments<T>(use: (db: Database.Database) => T): T {
  const db = new Database(path.join(t.dataDir, 'ledger', 'commitments.db'));
  try {
    return use(db);
  } finally {
    db.close();
  }
}

function deleteCommitment(type: string, id: string): void {
  onCommitments((db) => expect(db.prepare('DELETE FROM commitments WHERE type = ? AND id = ?').run(type, id).changes).toBe(1));
}

async function securityAlerts(versionRef: string): Promise<AuditEvent[]> {
  await t.app.consent.audit.flush();
  const audits = await t.app.repository.search({ resourceType: 'AuditEvent', count: 10_000, offset: 0 });
  return audits.resources.filter((r) => (r as AuditEvent).type?.code === '110113'
    && (r as AuditEvent).entity?.some((e) => e.what?.reference === versionRef)) as AuditEvent[];
}

function integrityIssue(body: OperationOutcome): string | undefined {
  return body.issue?.find((i) => i.details?.coding?.some((c) => c.code === 'integrity-failed'))?.diagnostics;
}

function completeness() {
  return checkCompleteness({
    store: t.app.ledger.store, repository: t.app.ledger.repository.adapter,
    anchor: t.app.chain.contract('ResourceAnchor', t.app.chain.provider), authority: t.app.chain.authorityAddress,
  });
}

describe('a resource removed from the repository while its commitment stays', () => {
  it('a read by id is an integrity failure naming its newest committed version, with a Security Alert in the patient\'s log, not a plain 404', async () => {
    const patient = await createPatient('Removed');
    const reading = await observe(patient.id!, 1);
    await settle();
    expect((await request(t.app.http).get(`/fhir/Observation/${reading.id}`)).status).toBe(200);

    deleteVersions('Observation', reading.id!);
    t.app.readCache?.clear();
    const read = await request(t.app.http).get(`/fhir/Observation/${reading.id}`);
    expect(read.status).toBe(404);
    expect(integrityIssue(read.body)).toMatch(new RegExp(`Observation/${reading.id} version 1 failed the integrity check \\(a committed version is missing from the repository`));
    const alerts = await securityAlerts(`Observation/${reading.id}/_history/1`);
    expect(alerts).toHaveLength(1);
    expect(alerts[0]).toMatchObject({ outcome: '8', outcomeDesc: expect.stringMatching(/^integrity check failed \(missing\)/) });
    expect(alerts[0]!.entity!.some((e) => e.what?.reference === `Patient/${patient.id}`)).toBe(true);
  });

  it('an id never stored, and a resource deleted through the API, still answer a plain 404 and 410 with no alert', async () => {
    const never = await request(t.app.http).get('/fhir/Observation/never-stored-here');
    expect(never.status).toBe(404);
    expect(integrityIssue(never.body)).toBeUndefined();
    const patient = await createPatient('Deleted');
    const reading = await observe(patient.id!, 2);
    expect((await request(t.app.http).delete(`/fhir/Observation/${reading.id}`)).status).toBeLessThan(300);
    const deleted = await request(t.app.http).get(`/fhir/Observation/${reading.id}`);
    expect(deleted.status).toBe(410);
    expect(integrityIssue(deleted.body)).toBeUndefined();
    expect(await securityAlerts(`Observation/${reading.id}/_history/1`)).toHaveLength(0);
  });
});

describe('alerts', () => {
  it('a version that fails is withheld on every read, with one Security Alert per hour, not one per read', async () => {
    const patient = await createPatient('Flooded');
    const reading = await observe(patient.id!, 3);
    await settle();
    flipStoredByte('Observation', reading.id!);
    t.app.readCache?.clear();
    for (let i = 0; i < 5; i++) {
      const res = await request(t.app.http).get(`/fhir/Observation/${reading.id}`);
      expect(res.status).toBe(404);
      expect(integrityIssue(res.body)).toContain('failed the integrity check');
    }
    const vread = await request(t.app.http).get(`/fhir/Observation/${reading.id}/_history/1`);
    expect(vread.status).toBe(404);
    expect(integrityIssue(vread.body)).toContain('failed the integrity check');
    const search = await request(t.app.http).get('/fhir/Observation').query({ patient: patient.id });
    expect(search.body.entry.filter((e: { search?: { mode?: string } }) => e.search?.mode === 'match')).toEqual([]);
    expect(JSON.stringify(search.body)).toContain('integrity-failed');
    expect(await securityAlerts(`Observation/${reading.id}/_history/1`)).toHaveLength(1);
  });

  it('AlertThrottle: one per key per window, again once the window has passed or when the alert could not be written', () => {
    let now = 0;
    const alerts = new AlertThrottle(3_600_000, () => now);
    expect(alerts.take('Observation/a/_history/1')).toBe(true);
    expect(alerts.take('Observation/a/_history/1')).toBe(false);
    expect(alerts.take('Observation/b/_history/1')).toBe(true);
    now += 3_599_999;
    expect(alerts.take('Observation/a/_history/1')).toBe(false);
    now += 1;
    expect(alerts.take('Observation/a/_history/1')).toBe(true);
    alerts.release('Observation/a/_history/1');
    expect(alerts.take('Observation/a/_history/1')).toBe(true);
  });

  it('stored bytes that do not authenticate are alerted as such, not as a content mismatch', async () => {
    const patient = await createPatient('Flipped');
    const reading = await observe(patient.id!, 4);
    await settle();
    flipStoredByte('Observation', reading.id!);
    t.app.readCache?.clear();
    const read = await request(t.app.http).get(`/fhir/Observation/${reading.id}`);
    expect(read.status).toBe(404);
    expect(integrityIssue(read.body)).toContain('failed the integrity check (stored data does not authenticate');
    const [alert] = await securityAlerts(`Observation/${reading.id}/_history/1`);
    expect(alert!.outcomeDesc).toMatch(/^integrity check failed \(unauthenticated\): stored data does not authenticate/);
    expect(alert!.outcomeDesc).not.toMatch(/does not match/);
  });
});

describe('versions removed together with their commitments', () => {
  it('a version and its commitment row deleted: the batch is a leaf short, placed between its neighbours; counts say missing, never a negative pending', async () => {
    const before = completeness();
    const baseline = (await before).batches.length;
    const patient = await createPatient('Vanished');
    const readings = [await observe(patient.id!, 10), await observe(patient.id!, 11), await observe(patient.id!, 12)];
    await settle();
    const victim = readings[1]!;
    const record = t.app.ledger.store.get('Observation', victim.id!, '1')!;
    const countsBefore = t.app.ledger.store.counts();
    expect(countsBefore.missing).toBe(0);

    deleteVersions('Observation', victim.id!);
    deleteCommitment('Observation', victim.id!);

    const counts = t.app.ledger.store.counts();
    expect(counts).toMatchObject({ commitments: countsBefore.commitments - 1, anchored: countsBefore.anchored - 1, missing: 1 });
    expect(counts.pending).toBeGreaterThanOrEqual(0);
    const report = await completeness();
    expect(report.batches).toHaveLength(baseline + 1);
    const gap = report.batches.find((b) => b.batch.id === record.batch)!;
    expect(gap.missing).toEqual([expect.objectContaining({
      seq: record.seq,
      position: expect.any(Number),
      // written between the readings before and after it (or their access-log AuditEvents)
      after: expect.stringMatching(/^(Observation|AuditEvent)\//),
      before: expect.stringMatching(/^(Observation|AuditEvent)\//),
      patient: patient.id,
    })]);
    expect(gap.missing[0]!.version).toBeUndefined(); // removed from the repository too
    expect(report.chain).toEqual([]);

    // the start-up log says so plainly
    const lines: string[] = [];
    const logger = createLogger('info', { write: (line: string) => { lines.push(line); } });
    const ledger = await createLedger({ dataDir: t.dataDir, chain: t.app.chain, repository: t.app.ledger.repository.adapter, logger, anchor: false });
    await ledger.close();
    const logged = lines.map((l) => JSON.parse(l) as { level: number; msg: string });
    expect(logged).toContainEqual(expect.objectContaining({ level: 50, msg: expect.stringMatching(/^ledger: 1 commitments are missing from the commitment store \(1 leaves of 1 batch \(\d+\) have no commitment row\): removed from it/) }));
    expect(logged.find((l) => /waiting to be anchored/.test(l.msg))!.msg).toMatch(/, \d+ waiting/);
  });

  it('only the commitment row deleted: the version still in the repository is named as the missing leaf and counted unverified', async () => {
    const patient = await createPatient('Uncommitted');
    const readings = [await observe(patient.id!, 20), await observe(patient.id!, 21)];
    await settle();
    const victim = readings[0]!;
    const record = t.app.ledger.store.get('Observation', victim.id!, '1')!;
    deleteCommitment('Observation', victim.id!);

    const report = await completeness();
    const gap = report.batches.find((b) => b.batch.id === record.batch)!;
    expect(gap.missing).toEqual([expect.objectContaining({ seq: record.seq, version: `Observation/${victim.id}/_history/1` })]);
    expect(report.listed).toBe(true);
    expect(report.uncommitted).toContainEqual({ ref: `Observation/${victim.id}/_history/1`, among: true });
    // as reads see it: served tagged unverified, not as proven
    t.app.readCache?.clear();
    t.app.ledger.checker.clearCache();
    const read = await request(t.app.http).get(`/fhir/Observation/${victim.id}`);
    expect(read.status).toBe(200);
    expect(read.body.meta.tag).toContainEqual(expect.objectContaining({ system: 'urn:glucoguard:integrity', code: 'unverified' }));
    // restricted to another patient, it is not theirs
    const other = await checkCompleteness({ store: t.app.ledger.store, repository: t.app.ledger.repository.adapter, patient: 'someone-else' });
    expect(other.uncommitted.map((u) => u.ref)).not.toContain(`Observation/${victim.id}/_history/1`);
  });

  it('a whole batch removed from the store: a seq range no batch covers, or (the last one) the chain\'s leaves past the store\'s end', async () => {
    const patient = await createPatient('Batches');
    await observe(patient.id!, 30);
    await settle();
    const middle = t.app.ledger.store.lastAnchoredBatchId();
    await observe(patient.id!, 31);
    await settle();
    const last = t.app.ledger.store.lastAnchoredBatchId();
    expect(last).toBeGreaterThan(middle);
    const removeBatch = (id: number) => onCommitments((db) => {
      const b = db.prepare('SELECT first_seq, last_seq FROM batches WHERE id = ?').get(id) as { first_seq: number; last_seq: number };
      db.prepare('DELETE FROM commitments WHERE seq BETWEEN ? AND ?').run(b.first_seq, b.last_seq);
      db.prepare('DELETE FROM batch_trees WHERE batch = ?').run(id);
      db.prepare('DELETE FROM batches WHERE id = ?').run(id);
      return b;
    });
    const removedMiddle = removeBatch(middle);
    const report = await completeness();
    expect(report.unbatched).toContainEqual({ from: removedMiddle.first_seq, to: removedMiddle.last_seq });
    expect(t.app.ledger.store.gaps().unbatched).toContainEqual({ from: removedMiddle.first_seq, to: removedMiddle.last_seq });
    expect(report.chain).toEqual([]);

    const removedLast = removeBatch(last);
    const tail = await completeness();
    expect(tail.chain).toEqual([expect.stringMatching(new RegExp(`the chain holds sequences \\d+–\\d+ of this authority \\(${removedLast.last_seq - removedMiddle.first_seq + 1} leaves\\) that no batch of the store covers`))]);
  });
});
