/**
 * Who may grant for a patient besides the patient: a guardian — a RelatedPerson of the patient whose
 * relationship is a legal authority to act for them (v3 RoleCode GUARD, POWATT, DPOWATT, HPOWATT,
 * SPOWATT), active. Any relative of the patient could grant before, themselves or anyone, once
 * relatives could sign in (relatives round, 2026-12-06); a relative without that authority is a
 * grantee like any other. A guardian also brings the patient's data in (session 25): CGM imports and
 * creates and updates of readings, devices, insulin doses and reports in the ward's record only —
 * never the Patient, their relatives or access log, never a delete, never another patient's record.
 */
import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { Operator } from '@medplum/core';
import type { Consent, Observation, RelatedPerson } from '@medplum/fhirtypes';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { consentOf, DAY, grant, patientToken, person, registerIdentity } from './consent-helpers.js';

let t: TestApp;
let ana: string;
let doc: string;
beforeAll(async () => {
  t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
  ana = await person(t.app, 'Patient', 'Rivera');
  doc = await person(t.app, 'Practitioner', 'Osei');
  await registerIdentity(t.app, `Practitioner/${doc}`);
}, 60_000);
afterAll(async () => t?.close());

const ROLE = 'http://terminology.hl7.org/CodeSystem/v3-RoleCode';
async function relative(code: string, active = true): Promise<string> {
  return (await t.app.repository.create<RelatedPerson>({
    resourceType: 'RelatedPerson', active, patient: { reference: `Patient/${ana}` }, name: [{ family: 'Rivera' }], relationship: [{ coding: [{ system: ROLE, code }] }],
  })).resource.id!;
}
function relativeToken(relatedPerson: string, patient = ana): string {
  return t.app.smart.tokens.signAccessToken({
    gid: randomUUID(), clientId: 'family-app', sub: `RelatedPerson/${relatedPerson}`, fhirUser: `RelatedPerson/${relatedPerson}`, patient,
    scopes: ['openid', 'fhirUser', 'launch/patient', 'patient/*.cruds'],
  }).token;
}
function grantAs(relatedPerson: string) {
  const token = relativeToken(relatedPerson);
  const now = Date.now();
  const body: Consent = { ...consentOf({ patient: ana, actor: `Practitioner/${doc}`, accessTo: now + DAY, dataFrom: now - DAY, dataTo: now }), performer: [{ reference: `RelatedPerson/${relatedPerson}` }] };
  return request(t.app.http).post('/fhir/Consent').set('Authorization', `Bearer ${token}`).set('Content-Type', 'application/fhir+json').send(body);
}

test.each([['MTH', true], ['FAMMEMB', true], ['GUARD', false]])('a relative (%s, active %s) without a legal authority in force cannot grant for the patient (403, nothing recorded)', async (code, active) => {
  const mum = await relative(code, active);
  const before = (await t.app.repository.search({ resourceType: 'Consent', count: 100, offset: 0 })).resources.length;
  const res = await grantAs(mum);
  expect(res.status).toBe(403);
  expect((await t.app.repository.search({ resourceType: 'Consent', count: 100, offset: 0 })).resources.length).toBe(before);
});

test.each(['GUARD', 'POWATT'])('a %s of the patient may grant for them', async (code) => {
  const guardian = await relative(code);
  const res = await grantAs(guardian);
  expect(res.status).toBe(201);
  expect((res.body as Consent).status).toBe('active');
});

test('a patient\'s Consent may leave out category and policyRule: the defaults are filled in before validation (they were filled after it, so base R4 refused the body)', async () => {
  const now = Date.now();
  const { category: _c, policyRule: _p, ...body } = consentOf({ patient: ana, actor: `Practitioner/${doc}`, accessTo: now + DAY, dataFrom: now - DAY, dataTo: now });
  const res = await request(t.app.http).post('/fhir/Consent').set('Authorization', `Bearer ${patientToken(t.app, ana)}`).set('Content-Type', 'application/fhir+json').send(body);
  expect(res.status).toBe(201);
  expect(res.body).toMatchObject({ status: 'active', category: [{ coding: [{ system: 'http://loinc.org', code: '59284-0' }] }], policyRule: { coding: [{ code: 'OPTIN' }] } });
});

/** `n` Nightscout readings 5 minutes apart. */
function nightscout(n: number, start: number): string {
  return JSON.stringify(Array.from({ length: n }, (_, i) => ({ type: 'sgv', sgv: 90 + i, date: start + i * 300_000, dateString: new Date(start + i * 300_000).toISOString() })));
}
const reading = (patient: string, value = 120): Observation => ({
  resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] },
  subject: { reference: `Patient/${patient}` }, effectiveDateTime: new Date().toISOString(), valueQuantity: { value, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
});
const readingsOf = async (patient: string) => (await t.app.repository.search({ resourceType: 'Observation', filters: [{ code: 'subject', operator: Operator.EQUALS, value: `Patient/${patient}` }], count: 1000, offset: 0 })).resources;

test('a guardian imports the ward\'s CGM export and creates and corrects their readings; a relative without legal authority may not (403, nothing stored)', async () => {
  const guardian = await relative('GUARD');
  const mum = await relative('MTH');
  const before = (await readingsOf(ana)).length;
  const refused = await request(t.app.http).post(`/cgm/ingest?format=nightscout&patient=${ana}`).set('Authorization', `Bearer ${relativeToken(mum)}`)
    .set('Content-Type', 'application/json').send(nightscout(6, Date.UTC(2026, 9, 1)));
  expect(refused.status).toBe(403);
  expect((await request(t.app.http).post('/fhir/Observation').set('Authorization', `Bearer ${relativeToken(mum)}`).set('Content-Type', 'application/fhir+json').send(reading(ana))).status).toBe(403);
  expect((await readingsOf(ana)).length).toBe(before);

  const imported = await request(t.app.http).post(`/cgm/ingest?format=nightscout&patient=${ana}`).set('Authorization', `Bearer ${relativeToken(guardian)}`)
    .set('Content-Type', 'application/json').send(nightscout(6, Date.UTC(2026, 9, 1)));
  expect(imported.status).toBe(200);
  expect(imported.body).toMatchObject({ created: 6 });
  const created = await request(t.app.http).post('/fhir/Observation').set('Authorization', `Bearer ${relativeToken(guardian)}`).set('Content-Type', 'application/fhir+json').send(reading(ana));
  expect(created.status).toBe(201);
  expect((await readingsOf(ana)).length).toBe(before + 7);
  // the ward sees both in their access log, by whom: the import and the create (session 25 round:
  // an import wrote no AuditEvent, and the guardian's create named no patient)
  await t.app.consent.audit.flush();
  const log = await request(t.app.http).get(`/fhir/AuditEvent?patient=${ana}&_count=200`).set('Authorization', `Bearer ${patientToken(t.app, ana)}`);
  expect(log.status).toBe(200);
  const byGuardian = ((log.body as { entry?: { resource: { agent?: { who?: { reference?: string } }[]; subtype?: { code?: string }[] } }[] }).entry ?? [])
    .map((e) => e.resource).filter((e) => e.agent?.some((a) => a.who?.reference === `RelatedPerson/${guardian}`));
  expect(byGuardian.filter((e) => e.subtype?.some((c) => c.code === 'create')).length).toBeGreaterThanOrEqual(2);
});

test('a guardian writes nothing outside the ward\'s clinical data: not another patient\'s record, the Patient, relatives or access log, and deletes nothing', async () => {
  const guardian = await relative('GUARD');
  const ben = await person(t.app, 'Patient', 'Okafor');
  const token = relativeToken(guardian);
  const send = (method: 'post' | 'put' | 'delete', path: string, body?: object) => {
    const r = request(t.app.http)[method](`/fhir/${path}`).set('Authorization', `Bearer ${token}`).set('Content-Type', 'application/fhir+json');
    return body ? r.send(body) : r;
  };
  const benBefore = (await readingsOf(ben)).length;
  expect((await send('post', 'Observation', reading(ben))).status).toBe(403);
  expect((await request(t.app.http).post(`/cgm/ingest?format=nightscout&patient=${ben}`).set('Authorization', `Bearer ${relativeToken(guardian, ben)}`)
    .set('Content-Type', 'application/json').send(nightscout(3, Date.UTC(2026, 9, 2)))).status).toBe(403);
  expect((await readingsOf(ben)).length).toBe(benBefore);
  // moving one of the ward's readings into another record is a write in that record
  const own = (await t.app.repository.create(reading(ana))).resource;
  expect((await send('put', `Observation/${own.id}`, { ...reading(ben), id: own.id })).status).toBeGreaterThanOrEqual(403);
  expect((await t.app.repository.read<Observation>('Observation', own.id!)).subject?.reference).toBe(`Patient/${ana}`);
  // a reading they cannot see (no grant to themselves) answers a delete as an id never stored would (204), and stays
  expect([204, 403, 404]).toContain((await send('delete', `Observation/${own.id}`)).status);
  expect((await t.app.repository.read<Observation>('Observation', own.id!)).id).toBe(own.id);
  // one they can see (the patient granted them) is refused: a guardian deletes nothing
  await registerIdentity(t.app, `RelatedPerson/${guardian}`);
  const now = Date.now();
  expect((await grant(t.app, { patient: ana, actor: `RelatedPerson/${guardian}`, accessTo: now + DAY, dataFrom: now - DAY, dataTo: now + DAY })).status).toBe(201);
  const seen = await request(t.app.http).get(`/fhir/Observation/${own.id}`).set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT');
  expect(seen.status).toBe(200);
  const deleted = await request(t.app.http).delete(`/fhir/Observation/${own.id}`).set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT');
  expect(deleted.status).toBe(403);
  expect((await t.app.repository.read<Observation>('Observation', own.id!)).id).toBe(own.id);
  expect((await send('post', 'RelatedPerson', { resourceType: 'RelatedPerson', patient: { reference: `Patient/${ana}` }, relationship: [{ coding: [{ system: ROLE, code: 'GUARD' }] }] })).status).toBe(403);
  expect((await send('post', 'AuditEvent', { resourceType: 'AuditEvent', type: { code: 'rest' }, recorded: new Date().toISOString(), agent: [{ requestor: true }], source: { observer: { display: 'x' } }, entity: [{ what: { reference: `Patient/${ana}` } }] })).status).toBeGreaterThanOrEqual(403);
  const patient = await t.app.repository.read('Patient', ana);
  expect((await send('put', `Patient/${ana}`, { ...patient, gender: 'other' })).status).toBeGreaterThanOrEqual(403);
  expect((await t.app.repository.read('Patient', ana)).meta?.versionId).toBe(patient.meta?.versionId);
});
