/**
 * Black-box round (session 25) on the access log kept apart (GLUCOGUARD_AUDIT_STORE=local) behind an
 * upstream that refuses AuditEvent (405): a patient and a clinician with a grant see what consent
 * lets them see of it — by search, type and instance history — and nothing of another patient's
 * log; nothing about AuditEvents is sent upstream. Found as it is (no fix needed here).
 */
import { afterAll, beforeAll, expect, test } from '@jest/globals';
import type { Bundle, Patient, Practitioner } from '@medplum/fhirtypes';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { startUpstreamFhirServer, type UpstreamFhirServer } from '../support/upstream-server.js';
import { DAY, grant, patientToken, practitionerToken, registerIdentity } from './consent-helpers.js';

let upstream: UpstreamFhirServer;
let t: TestApp;
beforeAll(async () => {
  upstream = await startUpstreamFhirServer();
  upstream.intercept((req) => (/\/AuditEvent(?:[/?]|$)/.test(req.url) ? { status: 405, body: { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'not-supported' }] } } : undefined));
  t = await startTestApp({ UPSTREAM_FHIR_URL: upstream.url, GLUCOGUARD_AUTH: 'on', GLUCOGUARD_AUDIT_STORE: 'local' });
}, 60_000);
afterAll(async () => { await t?.close(); await upstream?.close(); });

const entries = (b: unknown) => ((b as Bundle).entry ?? []).map((e) => e.resource!);

test('kept apart: each sees the events about the patients consent lets them see, by search and history; nothing of it goes upstream', async () => {
  const before = upstream.requests.length;
  const ana = (await t.app.repository.create<Patient>({ resourceType: 'Patient', name: [{ family: 'A' }] })).resource.id!;
  const ben = (await t.app.repository.create<Patient>({ resourceType: 'Patient', name: [{ family: 'B' }] })).resource.id!;
  const doc = (await t.app.repository.create<Practitioner>({ resourceType: 'Practitioner', name: [{ family: 'D' }] })).resource.id!;
  await registerIdentity(t.app, `Practitioner/${doc}`);
  const now = Date.now();
  expect((await grant(t.app, { patient: ana, actor: `Practitioner/${doc}`, accessTo: now + DAY, dataFrom: now - DAY, dataTo: now + DAY })).status).toBe(201);
  const [pa, pb, dt] = [patientToken(t.app, ana), patientToken(t.app, ben), practitionerToken(t.app, doc, ana)];
  const get = (path: string, token: string) => request(t.app.http).get(`/fhir/${path}`).set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT');
  expect((await get(`Patient/${ana}`, pa)).status).toBe(200);
  expect((await get(`Patient/${ben}`, pb)).status).toBe(200);
  expect((await get(`Patient/${ana}`, dt)).status).toBe(200);
  await t.app.consent.audit.flush();

  const names = (r: unknown) => JSON.stringify(r);
  for (const token of [pa, dt]) {
    const mine = entries((await get(`AuditEvent?patient=${ana}`, token)).body);
    expect(mine.length).toBeGreaterThanOrEqual(2);
    for (const path of ['AuditEvent', 'AuditEvent/_history', `AuditEvent?patient=${ana}&_include=AuditEvent:patient`]) {
      const res = await get(path, token);
      expect([path, res.status]).toEqual([path, 200]);
      expect(entries(res.body).length).toBeGreaterThan(0);
      expect([path, entries(res.body).filter((e) => names(e).includes(ben))]).toEqual([path, []]);
    }
    expect(entries((await get(`AuditEvent?patient=${ben}`, token)).body)).toEqual([]);
  }
  const bens = (await t.app.repository.search({ resourceType: 'AuditEvent', count: 500, offset: 0 })).resources.filter((e) => names(e).includes(`Patient/${ben}`));
  expect(bens.length).toBeGreaterThan(0);
  for (const token of [pa, dt]) {
    expect((await get(`AuditEvent/${bens[0]!.id}`, token)).status).toBe(404);
    expect(entries((await get(`AuditEvent/${bens[0]!.id}/_history`, token)).body)).toEqual([]);
  }
  expect(upstream.requests.slice(before).filter((r) => /AuditEvent/.test(r.url))).toEqual([]);
});
