/**
 * The CGM entry points with authentication on: `/cgm/ingest` needs what creating and updating the
 * patient's Observations through the FHIR API needs (the token's scopes, then consent), whoever the
 * user is; `$cgm-summary` and `$cgm-agp` compute only over what the token may read, and answer 404
 * for a patient it may not see.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { Operator } from '@medplum/core';
import request from 'supertest';
import { makeTrace, nightscoutJson } from '../fixtures/cgm-ingest/trace.js';
import { startTestApp, type TestApp } from '../support/app.js';

describe('CGM entry points with authentication on', () => {
  let t: TestApp;
  const http = () => request(t.app.http);
  const file = nightscoutJson(makeTrace(1, { seed: 5 }));
  let ana: string;
  let ben: string;
  const token = (scopes: string[], extra: { patient?: string; fhirUser?: string } = {}): string =>
    // A patient's own login always carries fhirUser (src/smart/authorize.ts); mint tokens the same way.
    t.app.smart.tokens.signAccessToken({ gid: randomUUID(), clientId: 'test-client', sub: 'tester', scopes,
      ...(extra.patient && !extra.fhirUser ? { fhirUser: `Patient/${extra.patient}` } : {}), ...extra }).token;
  let admin: string;

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
    admin = token(['system/*.cruds']);
    const create = async (family: string): Promise<string> => {
      const res = await http().post('/fhir/Patient').set('Authorization', `Bearer ${admin}`).set('Content-Type', 'application/fhir+json')
        .send({ resourceType: 'Patient', name: [{ family }] });
      expect(res.status).toBe(201);
      return res.body.id as string;
    };
    ana = await create('Rivera');
    ben = await create('Okafor');
  });
  afterAll(async () => {
    await t?.close();
  });

  const ingest = (patient: string, bearer: string) =>
    http().post(`/cgm/ingest?patient=${patient}&format=nightscout`).set('Authorization', `Bearer ${bearer}`).send(file);

  test('a read-only token may not ingest (403), and nothing is stored', async () => {
    const res = await ingest(ana, token(['system/Observation.rs']));
    expect(res.status).toBe(403);
    expect(res.body.resourceType).toBe('OperationOutcome');
    // asked of the store itself: a grantee's search (the admin token states no purpose of use) would show nothing either way
    const stored = await t.app.repository.search({ resourceType: 'Observation', filters: [{ code: 'patient', operator: Operator.EQUALS, value: `Patient/${ana}` }], count: 10, offset: 0 });
    expect(stored.resources).toHaveLength(0);
  });

  test('a patient-context token writes its own patient only', async () => {
    const anaToken = token(['patient/Observation.cruds', 'patient/Patient.r'], { patient: ana });
    expect((await ingest(ben, anaToken)).status).toBe(403);
    const own = await ingest(ana, anaToken);
    expect(own.status).toBe(200);
    expect(own.body.created).toBe(288);
  });

  // Was "the patient themself may ingest with a fhirUser token": a sign-in-only token (or a read-only
  // one) let any app the patient signed in to write and overwrite their readings. Scopes are what
  // the patient allowed the app to do (SMART App Launch, scopes-and-launch-context).
  test('the patient themself ingests only through an app allowed to write Observations; sign-in or read-only scopes get 403', async () => {
    for (const scopes of [['openid', 'fhirUser'], ['openid', 'fhirUser', 'patient/Observation.rs'], ['openid', 'fhirUser', 'patient/Observation.c']]) {
      const res = await ingest(ben, token(scopes, { patient: ben, fhirUser: `Patient/${ben}` }));
      expect({ scopes, status: res.status }).toEqual({ scopes, status: 403 });
    }
    const stored = await t.app.repository.search({ resourceType: 'Observation', filters: [{ code: 'patient', operator: Operator.EQUALS, value: `Patient/${ben}` }], count: 10, offset: 0 });
    expect(stored.resources).toHaveLength(0);
    const res = await ingest(ben, token(['openid', 'fhirUser', 'patient/Observation.cu'], { patient: ben, fhirUser: `Patient/${ben}` }));
    expect(res.status).toBe(200);
    expect(res.body.created).toBe(288);
  });

  test('a practitioner with write scopes and no grant from the patient may not ingest; a system client with write scopes may', async () => {
    const doc = await http().post('/fhir/Practitioner').set('Authorization', `Bearer ${admin}`).set('Content-Type', 'application/fhir+json')
      .send({ resourceType: 'Practitioner', name: [{ family: 'Osei' }] });
    const practitioner = token(['openid', 'fhirUser', 'user/Observation.cruds'], { fhirUser: `Practitioner/${doc.body.id}` });
    const res = await http().post(`/cgm/ingest?patient=${ana}&format=nightscout`).set('Authorization', `Bearer ${practitioner}`)
      .set('X-Purpose-Of-Use', 'TREAT').send(file);
    expect(res.status).toBe(403);
    expect(res.body.resourceType).toBe('OperationOutcome');
    const device = await ingest(ana, token(['system/Observation.cu']));
    expect(device.status).toBe(200);
  });

  test('$cgm-summary and $cgm-agp follow the token: own patient yes, another patient 404', async () => {
    const anaToken = token(['patient/Observation.rs', 'patient/Patient.r'], { patient: ana });
    const own = await http().get(`/fhir/Patient/${ana}/$cgm-summary`).set('Authorization', `Bearer ${anaToken}`);
    expect(own.status).toBe(200);
    expect(own.body.entry[0].resource.subject.reference).toBe(`Patient/${ana}`);
    const other = await http().get(`/fhir/Patient/${ben}/$cgm-summary`).set('Authorization', `Bearer ${anaToken}`);
    expect(other.status).toBe(404);
    const agp = await http().get(`/fhir/Patient/${ben}/$cgm-agp`).set('Authorization', `Bearer ${anaToken}`);
    expect(agp.status).toBe(404);
    const noObservations = token(['patient/Patient.r'], { patient: ana });
    const denied = await http().get(`/fhir/Patient/${ana}/$cgm-summary`).set('Authorization', `Bearer ${noObservations}`);
    expect(denied.status).toBe(403);
  });
});
