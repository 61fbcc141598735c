/**
 * Integrity on every read, embedded repository: versions are committed at write time and anchored
 * in Merkle batches; a resource changed behind the repository's back — re-encrypted with the
 * store's own keys, so it decrypts fine — is withheld on read, vread, search and history with an
 * OperationOutcome issue, and an AuditEvent is written.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import path from 'node:path';
import Database from 'better-sqlite3';
import request from 'supertest';
import { parseSearchRequest } from '@medplum/core';
import type { AuditEvent, Bundle, Observation, OperationOutcome, Patient } from '@medplum/fhirtypes';
import { OPEN_ACCESS } from '../../src/fhir/access.js';
import type { Contract } from 'ethers';
import { canonicalResourceText } from '../../src/ledger/canonical.js';
import { IntegrityChecker } from '../../src/ledger/integrity.js';
import { isDeferred } from '../../src/repository/deferred.js';
import { seal } from '../../src/repository/embedded/keys.js';
import { keyRingOf } from '../support/tamper.js';
import { startTestApp, type TestApp } from '../support/app.js';

let t: TestApp;
beforeAll(async () => {
  t = await startTestApp();
});
afterAll(async () => {
  await t?.close();
});

const FHIR_JSON = 'application/fhir+json';

async function createPatient(family: string): Promise<Patient> {
  const res = await request(t.app.http).post('/fhir/Patient').set('content-type', FHIR_JSON)
    .send({ resourceType: 'Patient', name: [{ family, given: ['Ada'] }], birthDate: '1970-01-01' });
  expect(res.status).toBe(201);
  return res.body as Patient;
}

/** Rewrites a stored version in SQLite with the store's own encryption: it decrypts, but differs. */
function tamperEmbedded(dataDir: string, resource: Patient, change: (p: Patient) => void): void {
  const db = new Database(path.join(dataDir, 'store', 'glucoguard.db'));
  try {
    const keys = keyRingOf(db, dataDir);
    const changed = structuredClone(resource);
    change(changed);
    const version = Number(resource.meta!.versionId);
    const body = seal(keys.keyFor(resource.id).key, Buffer.from(canonicalResourceText(changed)), `Patient/${resource.id}/${version}`);
    const result = db.prepare('UPDATE versions SET body = ? WHERE type = ? AND id = ? AND version = ?').run(body, 'Patient', resource.id, version);
    expect(result.changes).toBe(1);
  } finally {
    db.close();
  }
}

/** Flips one byte of a stored version's ciphertext: it no longer authenticates (AES-GCM), its data key is still there. */
function flipStoredByte(dataDir: string, type: string, id: string, version = 1): void {
  const db = new Database(path.join(dataDir, 'store', 'glucoguard.db'));
  try {
    const row = db.prepare('SELECT seq, body FROM versions WHERE type = ? AND id = ? AND version = ?').get(type, id, version) as { seq: number; body: Buffer };
    const body = Buffer.from(row.body);
    body[body.length >> 1]! ^= 0x01;
    expect(db.prepare('UPDATE versions SET body = ? WHERE seq = ?').run(body, row.seq).changes).toBe(1);
  } finally {
    db.close();
  }
}

/** The security alerts (DICOM 110113) recorded about one version. */
async function securityAlerts(versionRef: string): Promise<number> {
  const audits = await t.app.repository.search({ resourceType: 'AuditEvent', count: 10_000, offset: 0 });
  return audits.resources.filter((r) => (r as AuditEvent).type?.code === '110113'
    && (r as AuditEvent).entity?.some((e) => e.what?.reference === versionRef)).length;
}

/** The integrity issues of a Bundle's `search.mode = outcome` entry that name `ref` (`Type/id`). */
function integrityIssuesAbout(bundle: Bundle, ref: string): OperationOutcome['issue'] {
  const outcomes = (bundle.entry ?? []).filter((e) => e.search?.mode === 'outcome').map((e) => e.resource as OperationOutcome);
  return outcomes.flatMap((o) => o.issue).filter((i) => i.details?.coding?.some((c) => c.code === 'integrity-failed')
    && i.diagnostics!.includes(`${ref} version`));
}

function integrityTags(resource: { meta?: { tag?: { system?: string; code?: string }[] } }): string[] {
  return (resource.meta?.tag ?? []).filter((c) => c.system === 'urn:glucoguard:integrity').map((c) => c.code!);
}

describe('embedded store', () => {
  it('serves a version that is not anchored yet with a visible pending tag', async () => {
    // the background loop would anchor within ~1 s; the tests below anchor with flush()
    await t.app.ledger.anchorer.stop();
    const created = await createPatient('Pending');
    const read = await request(t.app.http).get(`/fhir/Patient/${created.id}`);
    expect(read.status).toBe(200);
    expect(integrityTags(read.body)).toEqual(['pending']);
    expect(t.app.ledger.store.get('Patient', created.id!, '1')).toMatchObject({ batch: null });
  });

  it('anchors versions in a Merkle batch and serves them untagged once the proof checks against the chain', async () => {
    const a = await createPatient('Anchored');
    const b = await createPatient('Batched');
    await t.app.ledger.anchorer.flush();
    const ra = t.app.ledger.store.get('Patient', a.id!, '1')!;
    const rb = t.app.ledger.store.get('Patient', b.id!, '1')!;
    expect(ra.batch).not.toBeNull();
    expect(ra.batch).toBe(rb.batch);
    const batch = t.app.ledger.store.batch(ra.batch!)!;
    expect(batch).toMatchObject({ status: 'anchored' });
    expect(batch.tx).toMatch(/^0x[0-9a-f]{64}$/);
    const onChain = await t.app.chain.contract('ResourceAnchor').getBatch(batch.chainBatchId);
    expect(onChain.merkleRoot).toBe('0x' + batch.root.toString('hex'));

    const read = await request(t.app.http).get(`/fhir/Patient/${a.id}`);
    expect(read.status).toBe(200);
    expect(integrityTags(read.body)).toEqual([]);
    expect(read.body.name[0].family).toBe('Anchored');
  });

  it('reads the anchored roots ahead from the contract\'s BatchAnchored events on the node, not one getBatch call per batch', async () => {
    const ids: string[] = [];
    for (let k = 0; k < 3; k++) {
      ids.push((await createPatient(`Warm${k}`)).id!);
      await t.app.ledger.anchorer.flush();
    }
    const batches = new Set(ids.map((id) => t.app.ledger.store.get('Patient', id, '1')!.batch));
    expect(batches.size).toBe(3);
    const contract = t.app.chain.contract('ResourceAnchor', t.app.chain.provider);
    let getBatchCalls = 0;
    const counted = {
      filters: contract.filters,
      queryFilter: contract.queryFilter.bind(contract),
      getBatch: (id: bigint | number) => {
        getBatchCalls++;
        return contract.getBatch(id);
      },
    } as unknown as Contract;
    const checker = new IntegrityChecker(t.app.ledger.store, counted);
    const anchored = t.app.ledger.store.anchoredBatches(0, Number.MAX_SAFE_INTEGER).length;
    expect(await checker.warmRoots()).toBe(anchored);
    expect(getBatchCalls).toBe(0);
    const resources = await Promise.all(ids.map((id) => t.app.repository.read('Patient', id)));
    expect((await checker.checkMany(resources)).map((r) => r.status)).toEqual(['verified', 'verified', 'verified']);
    expect(getBatchCalls).toBe(0);
  });

  it('withholds a version tampered with in the store: read, vread, search and history, with an issue and an AuditEvent', async () => {
    const victim = await createPatient('Original');
    const bystander = await createPatient('Bystander');
    await t.app.ledger.anchorer.flush();
    expect((await request(t.app.http).get(`/fhir/Patient/${victim.id}`)).status).toBe(200);

    tamperEmbedded(t.dataDir, victim, (p) => { p.name![0]!.family = 'Mallory'; });

    const read = await request(t.app.http).get(`/fhir/Patient/${victim.id}`);
    expect(read.status).toBe(404);
    expect(JSON.stringify(read.body)).not.toContain('Mallory');
    const issues = (read.body as OperationOutcome).issue!;
    expect(issues.some((i) => i.severity === 'error' && /integrity check/i.test(i.diagnostics!) && /failed/.test(i.diagnostics!))).toBe(true);

    const vread = await request(t.app.http).get(`/fhir/Patient/${victim.id}/_history/1`);
    expect(vread.status).toBe(404);

    const search = await request(t.app.http).get(`/fhir/Patient?_id=${victim.id},${bystander.id}`);
    expect(search.status).toBe(200);
    const bundle = search.body as Bundle;
    const matches = bundle.entry!.filter((e) => e.search?.mode === 'match').map((e) => e.resource!.id);
    expect(matches).toEqual([bystander.id]);
    const outcome = bundle.entry!.find((e) => e.search?.mode === 'outcome')?.resource as OperationOutcome;
    expect(outcome.issue!.some((i) => /integrity check/i.test(i.diagnostics!))).toBe(true);

    const history = await request(t.app.http).get(`/fhir/Patient/${victim.id}/_history`);
    expect(history.status).toBe(200);
    expect(JSON.stringify(history.body)).not.toContain('Mallory');

    const audits = await t.app.repository.search({ resourceType: 'AuditEvent', count: 100, offset: 0 });
    const about = audits.resources.filter((r) => (r as AuditEvent).entity?.some((e) => e.what?.reference === `Patient/${victim.id}/_history/1`)) as AuditEvent[];
    // four reads refused, one Security Alert: one per version per hour (session 22: every read used to alert)
    expect(about).toHaveLength(1);
    expect(about[0]).toMatchObject({ outcome: '8', type: { code: '110113' } });
    expect(JSON.stringify(about[0])).not.toContain('Mallory');
  });

  it('answers a search page from the stored text (deferred resources) exactly as from parsed ones, and still withholds a tampered version', async () => {
    const patient = await createPatient('Deferred');
    const reading = (minute: number) => ({
      resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '99504-3', display: 'Glucose \u2028 "CGM"' }] },
      subject: { reference: `Patient/${patient.id}` }, effectiveDateTime: new Date(Date.parse('2026-04-01T00:00:00Z') + minute * 300_000).toISOString(),
      valueQuantity: { value: 100.5 + minute, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
      ...(minute === 2 ? { meta: { security: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-Confidentiality', code: 'N' }] } } : {}),
    });
    const created: Observation[] = [];
    for (let i = 0; i < 6; i++) {
      const res = await request(t.app.http).post('/fhir/Observation').set('content-type', FHIR_JSON).send(reading(i));
      expect(res.status).toBe(201);
      created.push(res.body as Observation);
    }
    await t.app.ledger.anchorer.flush();
    t.app.readCache?.clear();
    const query = { patient: patient.id!, date: ['ge2026-04-01', 'lt2026-04-02'] };
    // the router hands the page on deferred: never parsed whole on the way out
    const routed = await t.app.fhir.handle({ method: 'GET', path: 'Observation', query, headers: {}, access: OPEN_ACCESS });
    const routedEntries = (routed.body as Bundle).entry!;
    expect(routedEntries).toHaveLength(6);
    expect(routedEntries.every((e) => isDeferred(e.resource!))).toBe(true);

    t.app.readCache?.clear();
    const search = await request(t.app.http).get('/fhir/Observation').query(query);
    expect(search.status).toBe(200);
    const entries = (search.body as Bundle<Observation>).entry!;
    // the same members in the same order as the repository's parsed versions, and as the creates answered
    const direct = await t.app.repository.search(parseSearchRequest(`Observation?patient=${patient.id}&date=ge2026-04-01&date=lt2026-04-02`));
    expect(direct.resources.some((r) => isDeferred(r))).toBe(false);
    expect(entries.map((e) => JSON.stringify(e.resource))).toEqual(direct.resources.map((r) => JSON.stringify(r)));
    expect(entries.map((e) => e.resource!.id)).toEqual(created.map((c) => c.id));
    expect(entries.map((e) => integrityTags(e.resource!))).toEqual(created.map(() => []));
    expect(entries[2]!.resource!.meta).toEqual(created[2]!.meta);

    // changed behind the store's back: withheld on the deferred path too
    const victim = created[4]!;
    const db = new Database(path.join(t.dataDir, 'store', 'glucoguard.db'));
    try {
      const keys = keyRingOf(db, t.dataDir);
      const changed = { ...victim, valueQuantity: { ...victim.valueQuantity, value: 39 } };
      const body = seal(keys.keyFor(patient.id).key, Buffer.from(canonicalResourceText(changed)), `Observation/${victim.id}/1`);
      expect(db.prepare("UPDATE versions SET body = ? WHERE type = 'Observation' AND id = ? AND version = 1").run(body, victim.id).changes).toBe(1);
    } finally {
      db.close();
    }
    t.app.readCache?.clear();
    t.app.ledger.checker.clearCache();
    const after = await request(t.app.http).get('/fhir/Observation').query(query);
    const matches = (after.body as Bundle).entry!.filter((e) => e.search?.mode === 'match').map((e) => e.resource!.id);
    expect(matches).toEqual(created.filter((c) => c !== victim).map((c) => c.id));
    expect(JSON.stringify(after.body)).not.toContain('"value":39');
    const outcome = (after.body as Bundle).entry!.find((e) => e.search?.mode === 'outcome')?.resource as OperationOutcome;
    expect(outcome.issue!.some((i) => /integrity check/i.test(i.diagnostics!) && i.diagnostics!.includes(victim.id!))).toBe(true);
  });

  it('a stored body whose bytes no longer authenticate (a byte flipped on disk) is an integrity failure, not an erasure: withheld with an issue and an AuditEvent; verify counts it failed', async () => {
    const victim = await createPatient('Flipped');
    await t.app.ledger.anchorer.flush();
    const db = new Database(path.join(t.dataDir, 'store', 'glucoguard.db'));
    try {
      const row = db.prepare("SELECT seq, body FROM versions WHERE type = 'Patient' AND id = ? AND version = 1").get(victim.id) as { seq: number; body: Buffer };
      const body = Buffer.from(row.body);
      body[body.length >> 1]! ^= 0x01;
      expect(db.prepare('UPDATE versions SET body = ? WHERE seq = ?').run(body, row.seq).changes).toBe(1);
    } finally {
      db.close();
    }
    t.app.readCache?.clear();
    for (const path of [`/fhir/Patient/${victim.id}`, `/fhir/Patient/${victim.id}/_history/1`]) {
      const res = await request(t.app.http).get(path);
      expect(res.status).toBe(404); // not 410 "no longer available", as for an erased patient
      expect((res.body as OperationOutcome).issue!.some((i) => /integrity check/i.test(i.diagnostics!) && /failed/.test(i.diagnostics!))).toBe(true);
    }
    const audits = await t.app.repository.search({ resourceType: 'AuditEvent', count: 1000, offset: 0 });
    const about = audits.resources.filter((r) => (r as AuditEvent).entity?.some((e) => e.what?.reference === `Patient/${victim.id}/_history/1`)) as AuditEvent[];
    // read and vread refused, one Security Alert (one per version per hour), saying what was found
    expect(about).toHaveLength(1);
    expect(about[0]).toMatchObject({ outcome: '8', type: { code: '110113' }, outcomeDesc: expect.stringMatching(/stored data does not authenticate/) });
    const { verifyStore } = await import('../../src/ledger/verify.js');
    const report = await verifyStore({ store: t.app.ledger.store, repository: t.app.ledger.repository.adapter, checker: t.app.ledger.checker }, victim.id);
    expect(report.gone).toBe(0);
    expect(report.failures).toEqual([expect.objectContaining({ resource: `Patient/${victim.id}/_history/1`, reason: expect.stringMatching(/does not authenticate/) })]);
  });

  it('a stored body that no longer authenticates is withheld from searches, _include, _revinclude and history like a content mismatch: an outcome entry and a security AuditEvent each time', async () => {
    const victim = await createPatient('Swapped');
    const bystander = await createPatient('Unharmed');
    const observe = async (patient: string, minute: number): Promise<Observation> => {
      const res = await request(t.app.http).post('/fhir/Observation').set('content-type', FHIR_JSON).send({
        resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] },
        subject: { reference: `Patient/${patient}` }, effectiveDateTime: new Date(Date.parse('2026-05-01T00:00:00Z') + minute * 300_000).toISOString(),
        valueQuantity: { value: 120 + minute, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
      });
      expect(res.status).toBe(201);
      return res.body as Observation;
    };
    const aboutVictim = await observe(victim.id!, 0);
    const flipped = await observe(bystander.id!, 1);
    const intact = await observe(bystander.id!, 2);
    await t.app.ledger.anchorer.flush();
    flipStoredByte(t.dataDir, 'Patient', victim.id!);
    flipStoredByte(t.dataDir, 'Observation', flipped.id!);
    t.app.readCache?.clear();
    const victimRef = `Patient/${victim.id}`;
    const flippedRef = `Observation/${flipped.id}`;
    const alerts = { [victimRef]: await securityAlerts(`${victimRef}/_history/1`), [flippedRef]: await securityAlerts(`${flippedRef}/_history/1`) };
    /**
     * GETs `url`: 200, the entries' ids, and exactly one integrity issue about `ref`; its one security
     * alert is written by the first request that finds it (one per version per hour, not one per request).
     */
    const withheldFrom = async (url: string, ref: string): Promise<{ matches: string[]; included: string[]; entries: string[] }> => {
      const res = await request(t.app.http).get(url);
      expect(res.status).toBe(200);
      const bundle = res.body as Bundle;
      expect(integrityIssuesAbout(bundle, ref)).toHaveLength(1);
      const alerted = await securityAlerts(`${ref}/_history/1`);
      expect(alerted).toBe(1);
      alerts[ref] = alerted;
      const ids = (mode?: string) => (bundle.entry ?? []).filter((e) => e.resource?.resourceType !== 'OperationOutcome' && (!mode || e.search?.mode === mode)).map((e) => e.resource!.id!);
      return { matches: ids('match'), included: ids('include'), entries: ids() };
    };

    expect((await withheldFrom(`/fhir/Patient?_id=${victim.id},${bystander.id}`, victimRef)).matches).toEqual([bystander.id]);
    // the patient+date index, answered deferred (parsed only as far as the guards read)
    expect((await withheldFrom(`/fhir/Observation?patient=${bystander.id}&date=ge2026-05-01`, flippedRef)).matches).toEqual([intact.id]);
    // in a sorted search it is withheld all the same (nothing of it can be sorted on)
    expect((await withheldFrom(`/fhir/Observation?patient=${bystander.id}&_sort=-date`, flippedRef)).matches).toEqual([intact.id]);
    const included = await withheldFrom(`/fhir/Observation?_id=${aboutVictim.id}&_include=Observation:subject`, victimRef);
    expect(included).toMatchObject({ matches: [aboutVictim.id], included: [] });
    const revIncluded = await withheldFrom(`/fhir/Patient?_id=${bystander.id}&_revinclude=Observation:subject`, flippedRef);
    expect(revIncluded).toMatchObject({ matches: [bystander.id], included: [intact.id] });
    expect((await withheldFrom(`/fhir/Patient/${victim.id}/_history`, victimRef)).entries).toEqual([]);
    const since = encodeURIComponent(aboutVictim.meta!.lastUpdated!);
    expect((await withheldFrom(`/fhir/Observation/_history?_since=${since}`, flippedRef)).entries).toEqual([intact.id, aboutVictim.id]);
    // operations that answer a searchset say so too
    const everything = await withheldFrom(`/fhir/Patient/${bystander.id}/$everything?_type=Observation`, flippedRef);
    expect(everything.matches).toEqual([bystander.id, intact.id]);
    expect((await withheldFrom(`/fhir/Observation/$lastn?patient=${bystander.id}&max=5`, flippedRef)).matches).toEqual([intact.id]);
    expect((await withheldFrom(`/fhir/Observation/$lastn?patient=${bystander.id}&max=5&code=http://loinc.org|99504-3`, flippedRef)).matches).toEqual([intact.id]);
  });

  it('a store rolled back to an older version (its newer committed version removed) is not served as current: withheld with an issue and an AuditEvent', async () => {
    const created = await createPatient('Before');
    const updated = await request(t.app.http).put(`/fhir/Patient/${created.id}`).set('content-type', FHIR_JSON).send({ ...created, name: [{ family: 'Corrected' }] });
    expect(updated.status).toBe(200);
    await t.app.ledger.anchorer.flush();
    const db = new Database(path.join(t.dataDir, 'store', 'glucoguard.db'));
    try {
      expect(db.prepare("DELETE FROM versions WHERE type = 'Patient' AND id = ? AND version = 2").run(created.id).changes).toBe(1);
      expect(db.prepare("UPDATE versions SET current = 1 WHERE type = 'Patient' AND id = ? AND version = 1").run(created.id).changes).toBe(1);
    } finally {
      db.close();
    }
    t.app.readCache?.clear();
    const read = await request(t.app.http).get(`/fhir/Patient/${created.id}`);
    expect(read.status).toBe(404);
    expect(JSON.stringify(read.body)).not.toContain('Before');
    expect((read.body as OperationOutcome).issue!.some((i) => /integrity check/i.test(i.diagnostics!) && /failed/.test(i.diagnostics!))).toBe(true);
    const audits = await t.app.repository.search({ resourceType: 'AuditEvent', count: 1000, offset: 0 });
    expect(audits.resources.some((r) => (r as AuditEvent).type?.code === '110113'
      && (r as AuditEvent).entity?.some((e) => e.what?.reference === `Patient/${created.id}/_history/1`))).toBe(true);
    // the older version itself, asked for by its version id, is what it was
    expect((await request(t.app.http).get(`/fhir/Patient/${created.id}/_history/1`)).status).toBe(200);
    // the removed version, asked for by its version id, is an integrity failure too (it was committed), not a version that never was
    const removed = await request(t.app.http).get(`/fhir/Patient/${created.id}/_history/2`);
    expect(removed.status).toBe(404);
    expect((removed.body as OperationOutcome).issue!.some((i) => /integrity check/i.test(i.diagnostics!) && i.diagnostics!.includes('version 2'))).toBe(true);
    const after = await t.app.repository.search({ resourceType: 'AuditEvent', count: 1000, offset: 0 });
    expect(after.resources.some((r) => (r as AuditEvent).type?.code === '110113'
      && (r as AuditEvent).entity?.some((e) => e.what?.reference === `Patient/${created.id}/_history/2`))).toBe(true);
    // a version never written is still a plain 404
    const never = await request(t.app.http).get(`/fhir/Patient/${created.id}/_history/3`);
    expect(never.status).toBe(404);
    expect(JSON.stringify(never.body)).not.toContain('integrity');
  });

  it('keeps a version tampered with before it was anchored from being served as verified later', async () => {
    const victim = await createPatient('Early');
    tamperEmbedded(t.dataDir, victim, (p) => { p.birthDate = '1999-09-09'; });
    const read = await request(t.app.http).get(`/fhir/Patient/${victim.id}`);
    expect(read.status).toBe(404);
    await t.app.ledger.anchorer.flush();
    expect((await request(t.app.http).get(`/fhir/Patient/${victim.id}`)).status).toBe(404);
  });

  it('proves the whole version before cutting a subset: a change in an element the subset leaves out still withholds it', async () => {
    const victim = await createPatient('Whole');
    await t.app.ledger.anchorer.flush();
    t.app.ledger.checker.clearCache();
    tamperEmbedded(t.dataDir, victim, (p) => { p.birthDate = '2001-01-01'; });
    for (const query of ['_elements=name', '_summary=text']) {
      const read = await request(t.app.http).get(`/fhir/Patient/${victim.id}?${query}`);
      expect(read.status).toBe(404);
      const search = await request(t.app.http).get(`/fhir/Patient?_id=${victim.id}&${query}`);
      expect(search.status).toBe(200);
      expect((search.body as Bundle).entry!.filter((e) => e.search?.mode === 'match')).toEqual([]);
    }
  });

  it('does not let a changed commitment store vouch for changed content', async () => {
    const a = await createPatient('LeafA');
    const b = await createPatient('LeafB');
    await t.app.ledger.anchorer.flush();
    t.app.ledger.checker.clearCache();
    // rewrite A's content AND its recorded leaf so they agree locally; the chain root no longer does
    tamperEmbedded(t.dataDir, a, (p) => { p.name![0]!.family = 'Rewritten'; });
    const db = new Database(path.join(t.dataDir, 'ledger', 'commitments.db'));
    try {
      const rec = t.app.ledger.store.get('Patient', a.id!, '1')!;
      const { commitmentOf } = await import('../../src/ledger/canonical.js');
      const forged = commitmentOf(rec.salt, canonicalResourceText({ ...a, name: [{ family: 'Rewritten', given: ['Ada'] }] } as Patient));
      db.prepare("UPDATE commitments SET leaf = ? WHERE type = 'Patient' AND id = ? AND version = '1'").run(forged, a.id);
    } finally {
      db.close();
    }
    expect((await request(t.app.http).get(`/fhir/Patient/${a.id}`)).status).toBe(404);
    const ok = await request(t.app.http).get(`/fhir/Patient/${b.id}`);
    expect(ok.status).toBe(200);
    expect(integrityTags(ok.body)).toEqual([]);
  });

  it('erasure: the patient\'s data becomes unreadable and the salts of their commitments are destroyed; others still prove', async () => {
    const began = new Date().toISOString();
    const erased = await createPatient('Erased');
    const kept = await createPatient('Kept');
    const reading = (patient: string, minute: number) => ({
      resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] },
      subject: { reference: `Patient/${patient}` }, effectiveDateTime: new Date(Date.parse('2026-03-01T00:00:00Z') + minute * 60_000).toISOString(),
      valueQuantity: { value: 100 + minute, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
    });
    const ids: Record<string, string[]> = { [erased.id!]: [], [kept.id!]: [] };
    for (let i = 0; i < 10; i++) {
      for (const p of [erased.id!, kept.id!]) {
        const res = await request(t.app.http).post('/fhir/Observation').set('content-type', FHIR_JSON).send(reading(p, i));
        expect(res.status).toBe(201);
        ids[p]!.push(res.body.id);
      }
    }
    await t.app.ledger.anchorer.flush();
    const rec = t.app.ledger.store.get('Observation', ids[erased.id!]![0]!, '1')!;
    expect(rec.salt.equals(Buffer.alloc(32))).toBe(false);

    // the readings' access-log events are written in the background: all of them stored first, so the
    // count below is exact (one still queued would be stored after the erasure, under the shared key)
    await t.app.consent.audit.flush();
    const erasure = await t.app.erasePatient!(erased.id!, 'ops@example (test)');
    // the Patient, its 10 readings, and the access-log events of their creation, which are in the
    // patient's compartment: the Patient's since session 24 (a create's event names what it wrote),
    // each reading's since session 25 (a create's event names the patients of what it wrote)
    expect(erasure).toEqual({ resources: 22, commitments: 22, auditEvent: expect.any(String) });
    // the erasure is on record: readable (under the patient's next key), in their compartment, counts only
    const event = await request(t.app.http).get(`/fhir/AuditEvent/${erasure.auditEvent}`);
    expect(event.status).toBe(200);
    expect(event.body).toMatchObject({
      action: 'D', outcome: '0', subtype: [{ code: 'destroy' }],
      agent: [{ who: { display: 'ops@example (test)' }, requestor: true }],
      entity: [{ what: { reference: `Patient/${erased.id}` } }],
    });
    expect(event.body.outcomeDesc).toBe('erasure: data key destroyed, 22 current resources unreadable; salts of 22 commitments overwritten'); // as above
    const log = await request(t.app.http).get('/fhir/AuditEvent').query({ patient: erased.id, _count: '1000' });
    expect(log.body.entry.map((e: { resource: { id: string } }) => e.resource.id)).toContain(erasure.auditEvent);

    expect((await request(t.app.http).get(`/fhir/Patient/${erased.id}`)).status).toBe(410);
    expect((await request(t.app.http).get(`/fhir/Observation/${ids[erased.id!]![3]}`)).status).toBe(410);
    // erased, not altered: its history leaves it out with no integrity issue and no security alert
    const history = await request(t.app.http).get(`/fhir/Observation/${ids[erased.id!]![3]}/_history`);
    expect(history.status).toBe(200);
    expect(history.body.entry ?? []).toEqual([]);
    const since = await request(t.app.http).get('/fhir/Observation/_history').query({ _since: began, _count: '1000' });
    expect(JSON.stringify(since.body)).not.toContain('integrity-failed');
    expect(await securityAlerts(`Observation/${ids[erased.id!]![3]}/_history/1`)).toBe(0);
    const search = await request(t.app.http).get('/fhir/Observation').query({ patient: erased.id });
    expect(search.body.entry ?? []).toHaveLength(0);
    for (const id of [erased.id!, ...ids[erased.id!]!]) {
      const type = id === erased.id ? 'Patient' : 'Observation';
      expect(t.app.ledger.store.get(type, id, '1')!.salt.equals(Buffer.alloc(32))).toBe(true);
    }
    const db = new Database(path.join(t.dataDir, 'ledger', 'commitments.db'), { readonly: true });
    try {
      const tree = db.prepare('SELECT b.first_seq AS first, t.salts, t.positions FROM batches b JOIN batch_trees t ON t.batch = b.id WHERE b.id = ?').get(rec.batch) as { first: number; salts: Buffer; positions: Buffer | null };
      // the two patients' readings were written taking turns; the tree holds each patient's together
      expect(tree.positions).not.toBeNull();
      const saltAt = (seq: number): Buffer => {
        const at = tree.positions!.readUInt32LE(4 * (seq - tree.first));
        return tree.salts.subarray(32 * at, 32 * at + 32);
      };
      expect(saltAt(rec.seq).equals(Buffer.alloc(32))).toBe(true);
      const keptRec = t.app.ledger.store.get('Observation', ids[kept.id!]![0]!, '1')!;
      expect(saltAt(keptRec.seq).equals(keptRec.salt)).toBe(true);
    } finally {
      db.close();
    }
    // the other patient's readings, in the same batch, are still proven (the checker forgot what it had proven)
    const others = await request(t.app.http).get('/fhir/Observation').query({ patient: kept.id, _count: '50' });
    expect(others.status).toBe(200);
    expect(others.body.entry).toHaveLength(10);
    for (const e of others.body.entry) expect(integrityTags(e.resource)).toEqual([]);
  });

  it('a restarted server proves the newest anchored versions ahead: their first reads look nothing up; a version changed on disk since is still withheld; an erasure proves them again', async () => {
    const ahead = await createPatient('Ahead');
    const changed = await createPatient('Changed');
    await t.app.ledger.anchorer.flush();
    const app = await t.restart();
    await app.ledger.warmed();
    const proven = app.ledger.checker.provenAhead();
    expect(proven).toBeGreaterThanOrEqual(2);
    const metrics = await request(app.http).get('/metrics');
    expect(Number(/^glucoguard_integrity_proven_ahead_versions(?:\{[^}]*\})? (\d+)$/m.exec(metrics.text)?.[1])).toBe(proven);
    tamperEmbedded(t.dataDir, changed, (p) => { p.name![0]!.family = 'Mallory'; });
    const store = app.ledger.store;
    const lookedUp: string[] = [];
    const treeGroups = store.treeGroups.bind(store);
    const proofsOf = store.proofsOf.bind(store);
    store.treeGroups = (keys, options) => { lookedUp.push(...keys.map((k) => k.id)); return treeGroups(keys, options); };
    store.proofsOf = (keys) => { lookedUp.push(...keys.map((k) => k.id)); return proofsOf(keys); };

    const search = await request(app.http).get(`/fhir/Patient?_id=${ahead.id},${changed.id}`);
    expect(search.status).toBe(200);
    const entries = (search.body as Bundle).entry!;
    expect(entries.filter((e) => e.search?.mode === 'match').map((e) => [e.resource!.id, integrityTags(e.resource!)])).toEqual([[ahead.id, []]]);
    expect((entries.find((e) => e.search?.mode === 'outcome')?.resource as OperationOutcome).issue!.some((i) => /integrity check/i.test(i.diagnostics!))).toBe(true);
    expect(JSON.stringify(search.body)).not.toContain('Mallory');
    expect([...new Set(lookedUp)]).toEqual([changed.id]); // checked the usual way, which found the change

    // an erasure forgets them, with their salts, and proves them again (reading the overwritten salts)
    const checker = app.ledger.checker;
    const calls: string[] = [];
    const clearCache = checker.clearCache.bind(checker);
    const proveAhead = checker.proveAhead.bind(checker);
    checker.clearCache = () => { calls.push('clearCache'); clearCache(); };
    checker.proveAhead = (versions, signal) => { calls.push('proveAhead'); return proveAhead(versions, signal); };
    await app.erasePatient!(changed.id!, 'ops@example (test)');
    expect(calls).toEqual(['clearCache', 'proveAhead']);
    await app.ledger.warmed();
    expect(app.ledger.checker.provenAhead()).toBeGreaterThanOrEqual(proven);
    lookedUp.length = 0;
    const again = await request(app.http).get(`/fhir/Patient/${ahead.id}`);
    expect(again.status).toBe(200);
    expect(integrityTags(again.body)).toEqual([]);
    expect(lookedUp).toEqual([]);
  });
});
