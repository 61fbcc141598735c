/**
 * The scan limit over HTTP (GLUCOGUARD_SEARCH_SCAN_LIMIT, SearchOptions.scanLimit): a search the
 * embedded store cannot narrow by an index is refused with an OperationOutcome (400, too-costly)
 * once it would examine more resources than its page needs.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Observation, Patient } from '@medplum/fhirtypes';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';

const FHIR_JSON = 'application/fhir+json';
let t: TestApp;
let patientId: string;
const http = () => request(t.app.http);

beforeAll(async () => {
  t = await startTestApp({ GLUCOGUARD_SEARCH_SCAN_LIMIT: '8' });
  patientId = (await t.app.repository.create<Patient>({ resourceType: 'Patient', name: [{ family: 'Limit' }] })).resource.id!;
  for (let i = 0; i < 12; i++) {
    const o: Observation = {
      resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] },
      subject: { reference: `Patient/${patientId}` }, effectiveDateTime: new Date(Date.UTC(2026, 0, 1, 0, 5 * i)).toISOString(),
      valueQuantity: { value: 100 + i, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
    };
    expect((await http().post('/fhir/Observation').set('Content-Type', FHIR_JSON).send(o)).status).toBe(201);
  }
});
afterAll(async () => {
  await t?.close();
});

describe('search scan limit (8 here)', () => {
  test('a search that would look at 12 non-matching readings is 400 too-costly, and says how to narrow it', async () => {
    // (`:not` has no index lookup: every reading is a candidate, and all are glucose readings)
    const res = await http().get('/fhir/Observation').query({ 'code:not': 'http://loinc.org|99504-3' });
    expect(res.status).toBe(400);
    expect(res.body.resourceType).toBe('OperationOutcome');
    expect(res.body.issue[0].code).toBe('too-costly');
    expect(res.body.issue[0].diagnostics).toMatch(/more than 8 Observation resources.*narrow it/);
    // and it is counted for the operator (GET /metrics), by resource type
    const metrics = await http().get('/metrics');
    expect(metrics.text).toMatch(/glucoguard_searches_too_costly_total\{[^}]*type="Observation"[^}]*\} [1-9]/);
  });

  test('a sort that needs every match read is named as the cause, not the filters (the search is already narrowed by patient)', async () => {
    const res = await http().get('/fhir/Observation').query({ patient: patientId, _sort: '_id', _count: '2' });
    expect(res.status).toBe(400);
    expect(res.body.issue[0].code).toBe('too-costly');
    expect(res.body.issue[0].diagnostics).toMatch(/_sort=_id has every match read and sorted/);
    expect(res.body.issue[0].diagnostics).not.toMatch(/indexed parameter \(patient/);
    // in the index's order it is answered
    expect((await http().get('/fhir/Observation').query({ patient: patientId, _sort: '-date', _count: '2' })).status).toBe(200);
  });

  test('searches whose candidates mostly make up the page are answered, however many they return', async () => {
    const all = await http().get('/fhir/Observation').query({ patient: patientId, _count: '100' });
    expect(all.status).toBe(200);
    expect(all.body.entry).toHaveLength(12);
    // a threshold alone is looked up in the quantity index: nothing to examine in vain
    const none = await http().get('/fhir/Observation').query({ 'value-quantity': 'gt1000' });
    expect(none.status).toBe(200);
    expect(none.body.entry ?? []).toEqual([]);
    const high = await http().get('/fhir/Observation').query({ patient: patientId, 'value-quantity': 'ge106', _count: '100' });
    expect(high.status).toBe(200);
    expect(high.body.entry).toHaveLength(6); // 6 of 12 examined did not match: under the limit
    const paged = await http().get('/fhir/Observation').query({ 'code:not': 'http://loinc.org|2339-0', _count: '2' });
    expect(paged.status).toBe(200);
    expect(paged.body.entry).toHaveLength(2);
    const next = paged.body.link.find((l: { relation: string }) => l.relation === 'next').url as string;
    expect((await http().get(new URL(next).pathname + new URL(next).search)).status).toBe(200);
  });

  test('$everything, which reads every reading of the patient, is answered whole: all its candidates match', async () => {
    const everything = await http().get(`/fhir/Patient/${patientId}/$everything`);
    expect(everything.status).toBe(200);
    expect(everything.body.entry.filter((e: { resource: { resourceType: string } }) => e.resource.resourceType === 'Observation')).toHaveLength(12);
  });
});
