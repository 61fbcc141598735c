/**
 * A patient's conditional creates are decided over what they may see, while the repository
 * re-checks the criteria as it writes (so the same request sent twice at once makes one resource,
 * bb26-race-replicas.test.ts): a match only another patient's record holds is still no match to
 * them — their resource is created (201) and nothing names the hidden one — whether the store
 * holds one such match or several, on a single POST, a conditional update or in a transaction.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import type { Bundle, Observation } from '@medplum/fhirtypes';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { DAY, person, patientToken } from './consent-helpers.js';

const FHIR_JSON = 'application/fhir+json';
const SYSTEM = 'urn:test:reading';

describe('a patient\'s conditional create whose only matches are in another patient\'s record', () => {
  let t: TestApp;
  let ana: string;
  let ben: string;
  const now = Date.now();
  const reading = (patient: string, value: string): Observation => ({
    resourceType: 'Observation', status: 'final', identifier: [{ system: SYSTEM, value }],
    code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] }, subject: { reference: `Patient/${patient}` },
    effectiveDateTime: new Date(now - DAY / 2).toISOString(),
    valueQuantity: { value: 120, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
  });
  const as = (req: request.Test) => req.set('Authorization', `Bearer ${patientToken(t.app, ana)}`).set('Content-Type', FHIR_JSON);
  /** Ben's readings under a fresh identifier value, `n` of them: Ana cannot see any. */
  const hiddenMatches = async (n: number) => {
    const value = randomUUID();
    const ids: string[] = [];
    for (let i = 0; i < n; i++) ids.push((await t.app.repository.create(reading(ben, value))).resource.id!);
    return { value, ids };
  };
  const anasMatches = async (value: string) => {
    const res = await as(request(t.app.http).get(`/fhir/Observation?identifier=${SYSTEM}|${value}`));
    expect(res.status).toBe(200);
    return ((res.body as Bundle).entry ?? []).filter((e) => e.search?.mode === 'match').map((e) => e.resource as Observation);
  };

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
    ana = await person(t.app, 'Patient', 'Rivera');
    ben = await person(t.app, 'Patient', 'Okafor');
  });
  afterAll(async () => {
    await t?.close();
  });

  test.each([1, 2])('POST with If-None-Exist, %i hidden match(es): created in her record, the hidden ones not named', async (n) => {
    const { value, ids } = await hiddenMatches(n);
    const res = await as(request(t.app.http).post('/fhir/Observation').set('If-None-Exist', `identifier=${SYSTEM}|${value}`)).send(reading(ana, value));
    expect(res.status).toBe(201);
    for (const id of ids) expect(JSON.stringify(res.body)).not.toContain(id);
    expect((await anasMatches(value)).map((o) => o.id)).toEqual([res.body.id]);
  });

  test.each([1, 2])('conditional update (PUT Observation?identifier=…), %i hidden match(es): created in her record, the hidden ones unchanged', async (n) => {
    const { value, ids } = await hiddenMatches(n);
    const res = await as(request(t.app.http).put(`/fhir/Observation?identifier=${SYSTEM}|${value}`)).send(reading(ana, value));
    expect(res.status).toBe(201);
    for (const id of ids) {
      expect(JSON.stringify(res.body)).not.toContain(id);
      expect((await t.app.repository.read('Observation', id)).meta!.versionId).toBe('1');
    }
    expect((await anasMatches(value)).map((o) => o.id)).toEqual([res.body.id]);
  });

  test.each([1, 2])('transaction entry with ifNoneExist, %i hidden match(es): 201 Created in her record, the hidden ones not named', async (n) => {
    const { value, ids } = await hiddenMatches(n);
    const res = await as(request(t.app.http).post('/fhir')).send({
      resourceType: 'Bundle', type: 'transaction',
      entry: [{ fullUrl: `urn:uuid:${randomUUID()}`, resource: reading(ana, value), request: { method: 'POST', url: 'Observation', ifNoneExist: `identifier=${SYSTEM}|${value}` } }],
    });
    expect(res.status).toBe(200);
    expect((res.body as Bundle).entry![0]!.response!.status).toMatch(/^201/);
    for (const id of ids) expect(JSON.stringify(res.body)).not.toContain(id);
    expect(await anasMatches(value)).toHaveLength(1);
  });

  test('her own match, sent again: answered with it (200), nothing new', async () => {
    const value = randomUUID();
    const first = await as(request(t.app.http).post('/fhir/Observation').set('If-None-Exist', `identifier=${SYSTEM}|${value}`)).send(reading(ana, value));
    expect(first.status).toBe(201);
    const again = await as(request(t.app.http).post('/fhir/Observation').set('If-None-Exist', `identifier=${SYSTEM}|${value}`)).send(reading(ana, value));
    expect(again.status).toBe(200);
    expect(again.body.id).toBe(first.body.id);
    expect(await anasMatches(value)).toHaveLength(1);
  });
});
