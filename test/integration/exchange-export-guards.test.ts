/**
 * Bulk $export still decides every resource it writes (issue 7): the export streams each patient's
 * readings in chunks, but a reading changed behind the repository's back is withheld (with an
 * OperationOutcome in the manifest's `error` files, no health data in it) and readings outside the
 * granted data period never reach the file — for the clinician's consent-filtered export and for
 * the operator's export alike.
 */
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { AuditEvent, Bundle, Observation, OperationOutcome } from '@medplum/fhirtypes';
import Database from 'better-sqlite3';
import { Operator } from '@medplum/core';
import request from 'supertest';
import type { ExportJob } from '../../src/exchange/jobs.js';
import { OPEN_ACCESS } from '../../src/fhir/access.js';
import { canonicalResourceText } from '../../src/ledger/canonical.js';
import { seal } from '../../src/repository/embedded/keys.js';
import { keyRingOf } from '../support/tamper.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { DAY, grant, ingest, patientToken, person, practitionerToken, registerIdentity, sparseTrace } from './consent-helpers.js';

// exchange settings for the app under test (read with the rest of its configuration)
const EXCHANGE_ENV: Record<string, string> = { GLUCOGUARD_EXPORT_RETRY_AFTER: '1' };

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Rewrites a stored Observation with the store's own encryption: it decrypts, but differs from what was committed. */
function tamper(dataDir: string, patientId: string, obs: Observation, value: number): void {
  const db = new Database(path.join(dataDir, 'store', 'glucoguard.db'));
  try {
    const keys = keyRingOf(db, dataDir);
    const changed: Observation = { ...structuredClone(obs), valueQuantity: { ...obs.valueQuantity, value } };
    const version = Number(obs.meta!.versionId);
    const body = seal(keys.keyFor(patientId).key, Buffer.from(canonicalResourceText(changed)), `Observation/${obs.id}/${version}`);
    expect(db.prepare('UPDATE versions SET body = ? WHERE type = ? AND id = ? AND version = ?').run(body, 'Observation', obs.id, version).changes).toBe(1);
  } finally {
    db.close();
  }
}

/** Flips one byte of a stored Observation's ciphertext: it no longer authenticates, its data key is still there. */
function flipStoredByte(dataDir: string, obs: Observation): void {
  const db = new Database(path.join(dataDir, 'store', 'glucoguard.db'));
  try {
    const row = db.prepare("SELECT seq, body FROM versions WHERE type = 'Observation' AND id = ? AND version = ?").get(obs.id, Number(obs.meta!.versionId)) as { seq: number; body: Buffer };
    const body = Buffer.from(row.body);
    body[body.length >> 1]! ^= 0x01;
    expect(db.prepare('UPDATE versions SET body = ? WHERE seq = ?').run(body, row.seq).changes).toBe(1);
  } finally {
    db.close();
  }
}

describe('bulk $export: consent and integrity on every exported resource', () => {
  let t: TestApp;
  let ben: string;
  let carl: string;
  let doc: string;
  let tampered: Observation;
  /** Inside the granted day too, its stored bytes altered so they no longer authenticate. */
  let flipped: Observation;
  const trace = sparseTrace(3, 120);
  const now = Date.now();
  const TAMPERED_VALUE = 417;

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on', ...EXCHANGE_ENV });
    ben = await person(t.app, 'Patient', 'Okafor');
    carl = await person(t.app, 'Patient', 'Lindqvist');
    doc = await person(t.app, 'Practitioner', 'Osei');
    await registerIdentity(t.app, `Practitioner/${doc}`);
    for (const p of [ben, carl]) await ingest(t.app, p, trace);
    // ben lets the clinician see his last day only; carl grants nothing
    expect((await grant(t.app, { patient: ben, actor: `Practitioner/${doc}`, accessTo: now + DAY, dataFrom: now - DAY, dataTo: now, purposes: ['TREAT'], classes: ['Observation'] })).status).toBe(201);
    await t.app.ledger.anchorer.flush();
    const bens = await t.app.repository.search({
      resourceType: 'Observation', filters: [{ code: 'patient', operator: Operator.EQUALS, value: `Patient/${ben}` }], count: 1000, offset: 0,
    });
    // a reading inside the granted day, rewritten in the store after it was committed and anchored
    tampered = (bens.resources as Observation[]).find((o) => Date.parse(o.effectiveDateTime!) >= now - DAY / 2)!;
    expect(tampered).toBeDefined();
    expect(tampered.valueQuantity?.value).not.toBe(TAMPERED_VALUE);
    tamper(t.dataDir, ben, tampered, TAMPERED_VALUE);
    flipped = (bens.resources as Observation[]).find((o) => o !== tampered && Date.parse(o.effectiveDateTime!) >= now - DAY / 2)!;
    expect(flipped).toBeDefined();
    flipStoredByte(t.dataDir, flipped);
    t.app.readCache?.clear();
  }, 120_000);

  /** The security alerts (DICOM 110113) recorded about the flipped reading. */
  async function alertsAboutFlipped(): Promise<number> {
    const audits = await t.app.repository.search({ resourceType: 'AuditEvent', count: 10_000, offset: 0 });
    return audits.resources.filter((r) => (r as AuditEvent).type?.code === '110113'
      && (r as AuditEvent).entity?.some((e) => e.what?.reference === `Observation/${flipped.id}/_history/1`)).length;
  }
  afterAll(async () => {
    await t?.close();
  });

  async function download(url: string, token: string): Promise<string> {
    const res = await request(t.app.http).get(url.replace('http://127.0.0.1:8080', '')).set('Authorization', `Bearer ${token}`).buffer(true).parse((r, cb) => {
      let data = '';
      r.on('data', (c: Buffer) => { data += c.toString(); });
      r.on('end', () => cb(null, data));
    });
    expect(res.status).toBe(200);
    return res.body as string;
  }

  test('the clinician export withholds the tampered reading and everything outside the granted day, and says so in error[]', async () => {
    const token = practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs']);
    const kick = await request(t.app.http).get('/fhir/$export?_type=Observation').set('Authorization', `Bearer ${token}`)
      .set('X-Purpose-Of-Use', 'TREAT').set('Prefer', 'respond-async');
    expect(kick.status).toBe(202);
    const status = kick.headers['content-location']!.replace('http://127.0.0.1:8080', '');
    let manifest: { output: { type: string; url: string; count: number }[]; error: { type: string; url: string; count: number }[] } | undefined;
    for (let i = 0; i < 40 && !manifest; i++) {
      const res = await request(t.app.http).get(status).set('Authorization', `Bearer ${token}`);
      if (res.status === 200) manifest = res.body;
      else await sleep(1050);
    }
    expect(manifest).toBeDefined();
    const lines = (await download(manifest!.output[0]!.url, token)).trim().split('\n').map((l) => JSON.parse(l) as Observation);
    const granted = trace.filter((r) => r.epochMs >= now - DAY && r.epochMs <= now);
    expect(lines).toHaveLength(granted.length - 2);
    expect(manifest!.output[0]!.count).toBe(granted.length - 2);
    expect(lines.map((o) => o.id)).not.toContain(tampered.id);
    expect(lines.map((o) => o.id)).not.toContain(flipped.id);
    expect(lines.map((o) => o.valueQuantity?.value)).not.toContain(TAMPERED_VALUE);
    expect(new Set(lines.map((o) => o.subject?.reference))).toEqual(new Set([`Patient/${ben}`]));
    for (const o of lines) expect(Date.parse(o.effectiveDateTime!)).toBeGreaterThanOrEqual(now - DAY - 1000);

    expect(manifest!.error).toHaveLength(1);
    const errors = await download(manifest!.error[0]!.url, token);
    const outcome = JSON.parse(errors.trim().split('\n')[0]!) as OperationOutcome;
    expect(outcome.resourceType).toBe('OperationOutcome');
    expect(outcome.issue.some((i) => i.details?.coding?.some((c) => c.code === 'integrity-failed') && i.diagnostics?.includes(tampered.id!))).toBe(true);
    expect(errors).not.toContain('valueQuantity'); // names the version, carries none of its content
    // bytes that do not authenticate leave no code or time a grant could be checked against: a
    // grantee is not told of them, and, consent coming first, they raise no alert for one
    expect(errors).not.toContain(flipped.id);
    expect(await alertsAboutFlipped()).toBe(0);
  }, 60_000);

  test('a clinician\'s search: the content mismatch it may see is reported, the reading whose bytes do not authenticate is left out unnamed', async () => {
    const token = practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs']);
    const res = await request(t.app.http).get('/fhir/Observation').query({ patient: ben, _count: '1000' })
      .set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT');
    expect(res.status).toBe(200);
    const bundle = res.body as Bundle;
    const ids = bundle.entry!.filter((e) => e.search?.mode === 'match').map((e) => e.resource!.id);
    expect(ids).not.toContain(flipped.id);
    expect(ids).not.toContain(tampered.id);
    const outcome = bundle.entry!.find((e) => e.search?.mode === 'outcome')?.resource as OperationOutcome;
    expect(outcome.issue.some((i) => i.details?.coding?.some((c) => c.code === 'integrity-failed') && i.diagnostics?.includes(tampered.id!))).toBe(true);
    expect(JSON.stringify(bundle)).not.toContain(flipped.id);
    expect(await alertsAboutFlipped()).toBe(0);
  });

  test('the patient\'s own search: the reading whose bytes do not authenticate is withheld, named in an outcome entry, and alerted (it is theirs, by its commitment)', async () => {
    const res = await request(t.app.http).get('/fhir/Observation').query({ patient: ben, _count: '1000' })
      .set('Authorization', `Bearer ${patientToken(t.app, ben)}`);
    expect(res.status).toBe(200);
    const bundle = res.body as Bundle;
    const ids = bundle.entry!.filter((e) => e.search?.mode === 'match').map((e) => e.resource!.id);
    expect(ids).toHaveLength(trace.length - 2);
    expect(ids).not.toContain(flipped.id);
    const outcome = bundle.entry!.find((e) => e.search?.mode === 'outcome')?.resource as OperationOutcome;
    for (const victim of [tampered, flipped]) {
      expect(outcome.issue.filter((i) => i.details?.coding?.some((c) => c.code === 'integrity-failed') && i.diagnostics?.includes(`Observation/${victim.id} version`))).toHaveLength(1);
    }
    const alerts = (await t.app.repository.search({ resourceType: 'AuditEvent', count: 10_000, offset: 0 })).resources as AuditEvent[];
    const about = alerts.filter((e) => e.type?.code === '110113' && e.entity?.some((x) => x.what?.reference === `Observation/${flipped.id}/_history/1`));
    expect(about).toHaveLength(1);
    // in the patient's own access log: the alert names them
    expect(about[0]!.entity!.some((x) => x.what?.reference === `Patient/${ben}`)).toBe(true);
    // and a read by id says the same
    const read = await request(t.app.http).get(`/fhir/Observation/${flipped.id}`).set('Authorization', `Bearer ${patientToken(t.app, ben)}`);
    expect(read.status).toBe(404);
    expect(JSON.stringify(read.body)).toContain('integrity-failed');
    // refused again with its issue, but alerted once per version per hour, not once per request
    expect(await alertsAboutFlipped()).toBe(1);
    // another patient learns nothing of it
    const other = await request(t.app.http).get(`/fhir/Observation/${flipped.id}`).set('Authorization', `Bearer ${patientToken(t.app, carl)}`);
    expect(other.status).toBe(404);
    expect(JSON.stringify(other.body)).not.toContain('integrity');
    expect(await alertsAboutFlipped()).toBe(1);
  });

  test('the operator export (open access) writes every patient\'s readings but the tampered and the flipped one, names both in its error file and alerts', async () => {
    const job = t.app.exchange.exports.submit(OPEN_ACCESS, { level: 'system', types: ['Observation'], explicitTypes: true, typeFilters: {} }, `test-${randomUUID()}`);
    const done = (await t.app.exchange.exports.whenDone(job.id, 50)) as ExportJob;
    expect(done.status).toBe('completed');
    let text = '';
    for await (const chunk of t.app.exchange.exports.openFile(job.id, 'Observation.ndjson')) text += chunk;
    const lines = text.trim().split('\n').map((l) => JSON.parse(l) as Observation);
    expect(lines).toHaveLength(2 * trace.length - 2);
    expect(new Set(lines.map((o) => o.id)).size).toBe(lines.length);
    expect(lines.map((o) => o.id)).not.toContain(tampered.id);
    expect(lines.map((o) => o.id)).not.toContain(flipped.id);
    expect(new Set(lines.map((o) => o.subject?.reference))).toEqual(new Set([`Patient/${ben}`, `Patient/${carl}`]));
    expect(done.errors).toEqual([{ type: 'OperationOutcome', file: 'errors.ndjson', count: expect.any(Number) }]);
    let errors = '';
    for await (const chunk of t.app.exchange.exports.openFile(job.id, 'errors.ndjson')) errors += chunk;
    const issues = errors.trim().split('\n').flatMap((l) => (JSON.parse(l) as OperationOutcome).issue);
    for (const victim of [tampered, flipped]) {
      expect(issues.filter((i) => i.details?.coding?.some((c) => c.code === 'integrity-failed') && i.diagnostics?.includes(`Observation/${victim.id} version`))).toHaveLength(1);
    }
    expect(errors).not.toContain('valueQuantity');
    expect(await alertsAboutFlipped()).toBe(1); // alerted already within the hour
  }, 60_000);
});
