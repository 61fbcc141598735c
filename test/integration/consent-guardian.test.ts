/**
 * Who may grant for a patient besides the patient: a guardian — a RelatedPerson of the patient whose
 * relationship is a legal authority to act for them (v3 RoleCode GUARD, POWATT, DPOWATT, HPOWATT,
 * SPOWATT), active. Any relative of the patient could grant before, themselves or anyone, once
 * relatives could sign in (relatives round, 2026-12-06); a relative without that authority is a
 * grantee like any other.
 */
import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import type { Consent, RelatedPerson } from '@medplum/fhirtypes';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { consentOf, DAY, patientToken, person, registerIdentity } from './consent-helpers.js';

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
function grantAs(relatedPerson: string) {
  const token = t.app.smart.tokens.signAccessToken({
    gid: randomUUID(), clientId: 'family-app', sub: `RelatedPerson/${relatedPerson}`, fhirUser: `RelatedPerson/${relatedPerson}`, patient: ana,
    scopes: ['openid', 'fhirUser', 'launch/patient', 'patient/*.cruds'],
  }).token;
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
