/**
 * Integrity on every read, upstream repository: a resource changed directly in the upstream FHIR
 * server (behind the proxy's back, no new version) is withheld with an OperationOutcome issue and
 * an AuditEvent; resources that predate the ledger are served tagged "unverified", or withheld
 * when GLUCOGUARD_INTEGRITY=strict.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { Operator } from '@medplum/core';
import request from 'supertest';
import type { AuditEvent, Bundle, Observation, OperationOutcome, Patient } from '@medplum/fhirtypes';
import { startTestApp, type TestApp } from '../support/app.js';
import { startUpstreamFhirServer, type UpstreamFhirServer } from '../support/upstream-server.js';

let upstream: UpstreamFhirServer;
let t: TestApp;
beforeAll(async () => {
  upstream = await startUpstreamFhirServer();
  t = await startTestApp({ UPSTREAM_FHIR_URL: upstream.url });
  await t.app.ledger.anchorer.stop(); // anchored only by flush(), so "pending" is deterministic
});
afterAll(async () => {
  await t?.close();
  await upstream?.close();
});

const tags = (r: { meta?: { tag?: { system?: string; code?: string }[] } }) =>
  (r.meta?.tag ?? []).filter((c) => c.system === 'urn:glucoguard:integrity').map((c) => c.code);

async function createPatient(family: string): Promise<Patient> {
  const res = await request(t.app.http).post('/fhir/Patient').set('content-type', 'application/fhir+json')
    .send({ resourceType: 'Patient', name: [{ family }], gender: 'female' });
  expect(res.status).toBe(201);
  return res.body as Patient;
}

describe('upstream server', () => {
  it('verifies a resource written through the proxy once anchored, although the upstream set its own meta', async () => {
    const p = await createPatient('Through');
    expect(tags((await request(t.app.http).get(`/fhir/Patient/${p.id}`)).body)).toEqual(['pending']);
    await t.app.ledger.anchorer.flush();
    const read = await request(t.app.http).get(`/fhir/Patient/${p.id}`);
    expect(read.status).toBe(200);
    expect(tags(read.body)).toEqual([]);
  });

  it('withholds a resource tampered with in the upstream server, with an issue and an AuditEvent', async () => {
    const victim = await createPatient('Honest');
    const other = await createPatient('Other');
    await t.app.ledger.anchorer.flush();
    upstream.repo.tamper('Patient', victim.id!, (r) => { (r as Patient).gender = 'male'; });

    const read = await request(t.app.http).get(`/fhir/Patient/${victim.id}`);
    expect(read.status).toBe(404);
    expect((read.body as OperationOutcome).issue!.some((i) => i.severity === 'error' && /integrity check/i.test(i.diagnostics!))).toBe(true);
    expect(JSON.stringify(read.body)).not.toContain('male');

    const search = await request(t.app.http).get(`/fhir/Patient?_id=${victim.id},${other.id}`);
    expect(search.status).toBe(200);
    const entries = (search.body as Bundle).entry!;
    expect(entries.filter((e) => e.search?.mode === 'match').map((e) => e.resource!.id)).toEqual([other.id]);
    expect(entries.some((e) => e.search?.mode === 'outcome')).toBe(true);

    const audits = await t.app.repository.search({ resourceType: 'AuditEvent', count: 50, offset: 0 });
    const about = audits.resources.filter((r) => (r as AuditEvent).entity?.some((e) => e.what?.reference?.startsWith(`Patient/${victim.id}/_history/`)));
    // the read and the search both refused it; one Security Alert per version per hour (session 22: every request used to alert)
    expect(about).toHaveLength(1);
    expect(about[0]).toMatchObject({ resourceType: 'AuditEvent', outcome: '8' });
  });

  it('serves data that was on the upstream before the proxy with an "unverified" tag, and withholds it in strict mode', async () => {
    const resource = await upstream.repo.createResource({ resourceType: 'Patient', name: [{ family: 'Legacy' }] } as Patient);
    const lenient = await request(t.app.http).get(`/fhir/Patient/${resource.id}`);
    expect(lenient.status).toBe(200);
    expect(tags(lenient.body)).toEqual(['unverified']);

    t.app.ledger.guard.mode = 'strict';
    try {
      const strict = await request(t.app.http).get(`/fhir/Patient/${resource.id}`);
      expect(strict.status).toBe(404);
      expect((strict.body as OperationOutcome).issue!.some((i) => /could not be verified/.test(i.diagnostics!))).toBe(true);
    } finally {
      t.app.ledger.guard.mode = 'lenient';
    }
  });

  it('what was written directly on the upstream stays unverified after a restart: the start-up reconcile adopts only writes GlucoGuard sent', async () => {
    const committed = await createPatient('Before');
    // written on the upstream after GlucoGuard's last write, within the window a restart reconciles
    const direct = await upstream.repo.createResource({ resourceType: 'Patient', name: [{ family: 'Direct' }] } as Patient);
    await upstream.repo.updateResource({ ...(await upstream.repo.readResource<Patient>('Patient', committed.id!)), gender: 'male' });
    await t.restart();
    await t.app.ledger.anchorer.stop();
    expect(t.app.ledger.store.has('Patient', direct.id!, '1')).toBe(false);
    expect(tags((await request(t.app.http).get(`/fhir/Patient/${direct.id}`)).body)).toEqual(['unverified']);
    expect(tags((await request(t.app.http).get(`/fhir/Patient/${committed.id}`)).body)).toEqual(['changed-outside']);
    t.app.ledger.guard.mode = 'strict';
    try {
      expect((await request(t.app.http).get(`/fhir/Patient/${direct.id}`)).status).toBe(404);
    } finally {
      t.app.ledger.guard.mode = 'lenient';
    }
  });

  it('a write GlucoGuard sent whose commitment a crash lost (its write intent outstanding) is adopted at the next start, transactions with urn:uuid references too', async () => {
    const store = t.app.ledger.store;
    // the crash window: the upstream stored the versions, the process died before recording their commitments
    store.add = () => { throw new Error('crashed before the record'); };
    try {
      await request(t.app.http).post('/fhir/Patient').set('content-type', 'application/fhir+json').send({ resourceType: 'Patient', name: [{ family: 'Crash' }] });
      await request(t.app.http).post('/fhir').set('content-type', 'application/fhir+json').send({
        resourceType: 'Bundle', type: 'transaction', entry: [
          { fullUrl: 'urn:uuid:5b0c6a8e-1d1b-4c39-9a55-0c6f4f0d2a11', resource: { resourceType: 'Patient', name: [{ family: 'CrashTx' }] }, request: { method: 'POST', url: 'Patient' } },
          { resource: { resourceType: 'Observation', status: 'final', code: { text: 'glucose' }, subject: { reference: 'urn:uuid:5b0c6a8e-1d1b-4c39-9a55-0c6f4f0d2a11' }, effectiveDateTime: '2026-01-07T08:00:00Z', valueQuantity: { value: 45, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' } }, request: { method: 'POST', url: 'Observation' } },
        ],
      });
    } finally {
      delete (store as { add?: unknown }).add;
    }
    const written = [...(await upstream.repo.searchResources<Patient>({ resourceType: 'Patient', filters: [{ code: 'family', operator: Operator.CONTAINS, value: 'Crash' }] }))];
    expect(written).toHaveLength(2);
    const observation = (await upstream.repo.searchResources<Observation>({ resourceType: 'Observation', filters: [] })).find((o) => o.valueQuantity?.value === 45)!;
    expect(observation.subject?.reference).toBe(`Patient/${written.find((p) => p.name?.[0]?.family === 'CrashTx')!.id}`);
    for (const r of [...written, observation]) expect(store.has(r.resourceType, r.id!, r.meta!.versionId!)).toBe(false);
    await t.restart();
    await t.app.ledger.anchorer.stop();
    for (const r of [...written, observation]) expect(t.app.ledger.store.has(r.resourceType, r.id!, r.meta!.versionId!)).toBe(true);
    await t.app.consent.audit.flush(); // the access log's writes in flight hold their intents until they land
    expect(t.app.ledger.store.intents()).toEqual([]);
    await t.app.ledger.anchorer.flush();
    expect(tags((await request(t.app.http).get(`/fhir/Patient/${written[0]!.id}`)).body)).toEqual([]);
  });

  it('a new version made directly on the upstream of a resource GlucoGuard committed is tagged "changed-outside", not like legacy data; withheld in strict mode', async () => {
    const p = await createPatient('Committed');
    await t.app.ledger.anchorer.flush();
    expect(tags((await request(t.app.http).get(`/fhir/Patient/${p.id}`)).body)).toEqual([]);
    // an EHR's own write (or anyone's with access to the upstream): a new version, no commitment
    await upstream.repo.updateResource({ ...(await upstream.repo.readResource<Patient>('Patient', p.id!)), gender: 'male' });

    const lenient = await request(t.app.http).get(`/fhir/Patient/${p.id}`);
    expect(lenient.status).toBe(200);
    expect((lenient.body as Patient).gender).toBe('male');
    expect(tags(lenient.body)).toEqual(['changed-outside']);
    expect(lenient.body.meta.tag.find((c: { code?: string }) => c.code === 'changed-outside').display).toBe('changed outside GlucoGuard (earlier versions are committed, this one is not)');

    t.app.ledger.guard.mode = 'strict';
    try {
      const strict = await request(t.app.http).get(`/fhir/Patient/${p.id}`);
      expect(strict.status).toBe(404);
      const issue = (strict.body as OperationOutcome).issue!.find((i) => i.details?.coding?.[0]?.code === 'changed-outside');
      expect(issue?.diagnostics).toMatch(/changed outside GlucoGuard.*withheld in strict mode/);
    } finally {
      t.app.ledger.guard.mode = 'lenient';
    }
  });
});
