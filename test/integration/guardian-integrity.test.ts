/**
 * A guardian's authority is read off a RelatedPerson the ledger vouches for: one changed on the
 * upstream behind GlucoGuard's back (a mother made a "guardian" there) gives none, as it is
 * withheld from every read; the genuine guardian's writes go on. (New-features round, session 25:
 * the authority was read through the repository, which checks nothing, while the facade withheld
 * the same version as failing integrity.)
 */
import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import type { Observation, RelatedPerson } from '@medplum/fhirtypes';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { startUpstreamFhirServer, type UpstreamFhirServer } from '../support/upstream-server.js';
import { person } from './consent-helpers.js';

const ROLE = 'http://terminology.hl7.org/CodeSystem/v3-RoleCode';
let upstream: UpstreamFhirServer;
let t: TestApp;
let ana: string;

beforeAll(async () => {
  upstream = await startUpstreamFhirServer();
  t = await startTestApp({ UPSTREAM_FHIR_URL: upstream.url, GLUCOGUARD_AUTH: 'on', GLUCOGUARD_INTEGRITY: 'strict' });
  ana = await person(t.app, 'Patient', 'Rivera');
}, 60_000);
afterAll(async () => {
  await t?.close();
  await upstream?.close();
});

async function relative(code: string): Promise<string> {
  return (await t.app.repository.create<RelatedPerson>({
    resourceType: 'RelatedPerson', patient: { reference: `Patient/${ana}` }, relationship: [{ coding: [{ system: ROLE, code }] }],
  })).resource.id!;
}
const tokenOf = (id: string) => t.app.smart.tokens.signAccessToken({
  gid: randomUUID(), clientId: 'family-app', sub: `RelatedPerson/${id}`, fhirUser: `RelatedPerson/${id}`, patient: ana,
  scopes: ['openid', 'fhirUser', 'launch/patient', 'patient/*.cruds'],
}).token;
const reading = (): Observation => ({
  resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] }, subject: { reference: `Patient/${ana}` },
  effectiveDateTime: new Date().toISOString(), valueQuantity: { value: 110, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
});
const post = (id: string) => request(t.app.http).post('/fhir/Observation').set('Authorization', `Bearer ${tokenOf(id)}`).set('Content-Type', 'application/fhir+json').send(reading());

test('a RelatedPerson made a guardian on the upstream behind GlucoGuard\'s back gives no authority; a genuine guardian\'s does', async () => {
  const guardian = await relative('GUARD');
  const mother = await relative('MTH');
  await t.app.ledger.anchorer.flush();
  expect((await post(guardian)).status).toBe(201);
  expect((await post(mother)).status).toBe(403);
  // on the upstream, the same version now says GUARD
  upstream.repo.tamper('RelatedPerson', mother, (r) => { (r as RelatedPerson).relationship = [{ coding: [{ system: ROLE, code: 'GUARD' }] }]; });
  const before = (await t.app.repository.search({ resourceType: 'Observation', count: 100, offset: 0 })).resources.length;
  expect((await post(mother)).status).toBe(403);
  expect((await t.app.repository.search({ resourceType: 'Observation', count: 100, offset: 0 })).resources.length).toBe(before);
  expect((await post(guardian)).status).toBe(201);
});
