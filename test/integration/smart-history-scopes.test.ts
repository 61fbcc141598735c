/**
 * History by SMART v2 permission through the FHIR facade (SMART App Launch 2.2 "Scopes for
 * requesting clinical data"): `r` allows instance read, vread and instance history; type-level and
 * system-level history list resources like a search, so they need `s`. A v1 `.read` is `.rs`.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, Observation } from '@medplum/fhirtypes';
import { randomUUID } from 'node:crypto';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { person } from './consent-helpers.js';

let t: TestApp;
let ana: string;
let reading: string;

beforeAll(async () => {
  t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
  ana = await person(t.app, 'Patient', 'Rivera');
  reading = (await t.app.repository.create<Observation>({
    resourceType: 'Observation', status: 'final', subject: { reference: `Patient/${ana}` },
    code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] }, effectiveDateTime: new Date().toISOString(),
    valueQuantity: { value: 120, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
  })).resource.id!;
});
afterAll(async () => t?.close());

/** Ana's own token with exactly these resource scopes. */
function get(path: string, scopes: string[]) {
  const token = t.app.smart.tokens.signAccessToken({
    gid: randomUUID(), clientId: 'patient-app', sub: `Patient/${ana}`, fhirUser: `Patient/${ana}`, patient: ana, scopes: ['launch/patient', ...scopes],
  }).token;
  return request(t.app.http).get(path).set('Authorization', `Bearer ${token}`);
}

describe('history and SMART v2 permissions', () => {
  test('patient/Observation.r: read, vread and instance history, but no type or system history (403, like a search)', async () => {
    const r = ['patient/Observation.r'];
    expect((await get(`/fhir/Observation/${reading}`, r)).status).toBe(200);
    expect((await get(`/fhir/Observation/${reading}/_history/1`, r)).status).toBe(200);
    const instance = await get(`/fhir/Observation/${reading}/_history`, r);
    expect(instance.status).toBe(200);
    expect((instance.body as Bundle).entry).toHaveLength(1);
    expect((await get('/fhir/Observation', r)).status).toBe(403);
    const typeHistory = await get('/fhir/Observation/_history?_count=1000', r);
    expect(typeHistory.status).toBe(403);
    expect(typeHistory.body.resourceType).toBe('OperationOutcome');
    expect(JSON.stringify(typeHistory.body)).not.toContain(reading);
    expect((await get('/fhir/_history', ['patient/*.r'])).status).toBe(403);
  });

  test('patient/Observation.rs and v1 patient/Observation.read: type history lists the reading', async () => {
    for (const scopes of [['patient/Observation.rs'], ['patient/Observation.read']]) {
      const res = await get('/fhir/Observation/_history', scopes);
      expect(res.status).toBe(200);
      expect(((res.body as Bundle).entry ?? []).map((e) => e.resource?.id)).toContain(reading);
    }
    expect((await get('/fhir/_history', ['patient/*.rs'])).status).toBe(200);
  });
});
