/**
 * Black-box round 25 on the FHIR facade: search values and request media types as a client sends
 * them (search.html#combining, http.html#paging, http.html#version-parameter).
 * - a comma list of dates or quantities is OR, as for every other parameter type;
 * - `_offset` (not R4; HAPI clients send it) is refused rather than answered with the first page;
 * - a body declared in another FHIR version is 415 and stores nothing;
 * - a query or form whose %-escapes are not UTF-8 is 400 (it was searched as U+FFFD).
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, Observation, Patient } from '@medplum/fhirtypes';
import { randomUUID } from 'node:crypto';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { withUpstreamApp } from '../support/upstream-server.js';

const FHIR_JSON = 'application/fhir+json';
const reading = (patient: string, when: string, value: number, unit = 'mg/dL'): Observation => ({
  resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] },
  subject: { reference: `Patient/${patient}` }, effectiveDateTime: when,
  valueQuantity: { value, unit, system: 'http://unitsofmeasure.org', code: unit },
});

describe('embedded store', () => {
  let t: TestApp;
  let patient: string;
  /** reading ids by their label */
  const ids: Record<string, string> = {};
  const http = () => request(t.app.http);
  const found = async (query: Record<string, string | string[]>): Promise<string[]> => {
    const res = await http().get('/fhir/Observation').query({ patient, _sort: 'date', ...query });
    expect(res.status).toBe(200);
    const byId = Object.fromEntries(Object.entries(ids).map(([label, id]) => [id, label]));
    return ((res.body as Bundle).entry ?? []).map((e) => byId[e.resource!.id!]!);
  };

  beforeAll(async () => {
    t = await startTestApp();
    patient = (await t.app.repository.create<Patient>({ resourceType: 'Patient', name: [{ family: 'Comma' }] })).resource.id!;
    const readings: [string, Observation][] = [
      ['jan1', reading(patient, '2026-01-01T08:00:00Z', 100)],
      ['jan2', reading(patient, '2026-01-02T08:00:00Z', 260)],
      ['jan3', reading(patient, '2026-01-03T08:00:00Z', 55)],
      ['jan4', reading(patient, '2026-01-04T08:00:00Z', 10, 'mmol/L')],
    ];
    for (const [label, o] of readings) {
      const res = await http().post('/fhir/Observation').set('Content-Type', FHIR_JSON).send(o);
      expect(res.status).toBe(201);
      ids[label] = res.body.id;
    }
  });
  afterAll(async () => {
    await t?.close();
  });

  test('PUT with If-None-Match: * creates only: 412 when the resource exists, 201 when it does not (RFC 9110 §13.1.2)', async () => {
    const body = { resourceType: 'Patient', id: 'create-only-1', name: [{ family: 'Once' }] };
    const first = await http().put('/fhir/Patient/create-only-1').set('Content-Type', FHIR_JSON).set('If-None-Match', '*').send(body);
    expect(first.status).toBe(201);
    const again = await http().put('/fhir/Patient/create-only-1').set('Content-Type', FHIR_JSON).set('If-None-Match', '*').send({ ...body, gender: 'other' });
    expect(again.status).toBe(412);
    expect((await http().get('/fhir/Patient/create-only-1')).body.meta.versionId).toBe(first.body.meta.versionId);
  });

  test('system-level _search is a 400 saying so, not a 404 for a type named "_search"', async () => {
    for (const res of [await http().get('/fhir/_search'), await http().post('/fhir/_search').type('form').send('_id=x')]) {
      expect(res.status).toBe(400);
      expect(res.body.issue[0].diagnostics).toMatch(/System-level search is not supported/);
    }
  });

  describe('a comma list of dates or quantities is OR (search.html#combining)', () => {
    test('days', async () => {
      expect(await found({ date: '2026-01-01,2026-01-03' })).toEqual(['jan1', 'jan3']);
      expect(await found({ date: 'eq2026-01-02,eq2026-01-04' })).toEqual(['jan2', 'jan4']);
    });

    test('ANDed with another date filter', async () => {
      expect(await found({ date: ['2026-01-01,2026-01-03', 'ge2026-01-02'] })).toEqual(['jan3']);
    });

    test('quantities, each in its own unit', async () => {
      expect(await found({ 'value-quantity': '55,100' })).toEqual(['jan1', 'jan3']);
      // 10 mmol/L is 180 mg/dL: only the mmol/L reading is within 9.5–10.5 mmol/L
      expect(await found({ 'value-quantity': '260||mg/dL,10|http://unitsofmeasure.org|mmol/L' })).toEqual(['jan2', 'jan4']);
    });

    test('beside a chain', async () => {
      expect(await found({ 'patient._id': patient, date: '2026-01-02,2026-01-04' })).toEqual(['jan2', 'jan4']);
    });

    test('prefixed alternatives and malformed ones are 400 naming the parameter', async () => {
      for (const query of [{ date: 'lt2026-01-02,gt2026-01-03' }, { 'value-quantity': 'lt70,gt180' }, { date: '2026-01-01,soon' }, { date: '2026-01-01,' }]) {
        const res = await http().get('/fhir/Observation').query({ patient, ...query });
        expect(res.status).toBe(400);
        expect(res.body.resourceType).toBe('OperationOutcome');
        expect(res.body.issue[0].diagnostics).toMatch(Object.keys(query)[0] === 'date' ? /date/ : /value-quantity/);
      }
    });
  });

  describe('_offset (http.html#paging: pages are the server\'s links)', () => {
    test('is 400, not the first page again', async () => {
      const res = await http().get('/fhir/Observation').query({ patient, _count: '1', _offset: '2' });
      expect(res.status).toBe(400);
      expect(res.body.issue[0].diagnostics).toMatch(/_offset.*next links/);
    });

    test('is left out under handling=lenient, and the self link says so', async () => {
      const res = await http().get('/fhir/Observation').set('Prefer', 'handling=lenient').query({ patient, _count: '1', _offset: '2' });
      expect(res.status).toBe(200);
      const self = (res.body as Bundle).link!.find((l) => l.relation === 'self')!.url;
      expect(self).not.toMatch(/_offset/);
      expect((res.body as Bundle).entry?.[0]?.resource?.id).toBe(ids.jan1);
    });
  });

  describe('a %-escape that is not UTF-8', () => {
    test('in the query string or a _search form is 400, not a search for U+FFFD', async () => {
      // supertest would re-encode a query object: the path is sent as written
      const inQuery = await http().get(`/fhir/Patient?name=%E0%A4%A`);
      expect(inQuery.status).toBe(400);
      expect(inQuery.body.issue[0].diagnostics).toMatch(/Malformed query string/);
      const inForm = await http().post('/fhir/Patient/_search').set('Content-Type', 'application/x-www-form-urlencoded').send('name=%E0%A4');
      expect(inForm.status).toBe(400);
      expect(inForm.body.issue[0].diagnostics).toMatch(/Malformed form body/);
      // well-formed escapes, UTF-8 included, are taken
      expect((await http().get('/fhir/Patient?name=S%C3%B8ren&identifier=a%7Cb')).status).toBe(200);
      expect((await http().post('/fhir/Patient/_search').set('Content-Type', 'application/x-www-form-urlencoded').send('name=S%C3%B8ren')).status).toBe(200);
    });
  });

  describe('a body in another FHIR version (http.html#version-parameter)', () => {
    test('is 415 and stores nothing; fhirVersion=4.0 is taken', async () => {
      const mrn = randomUUID();
      const body = { resourceType: 'Patient', identifier: [{ system: 'urn:mrn', value: mrn }] };
      const refused = await http().post('/fhir/Patient').set('Content-Type', `${FHIR_JSON}; fhirVersion=3.0`).send(JSON.stringify(body));
      expect(refused.status).toBe(415);
      expect(refused.body.issue[0].diagnostics).toMatch(/fhirVersion 3\.0/);
      const stored = await http().get('/fhir/Patient').query({ identifier: `urn:mrn|${mrn}` });
      expect((stored.body as Bundle).entry ?? []).toEqual([]);
      const taken = await http().post('/fhir/Patient').set('Content-Type', `${FHIR_JSON}; fhirVersion=4.0`).send(JSON.stringify(body));
      expect(taken.status).toBe(201);
    });
  });
});

describe('upstream adapter', () => {
  const on = withUpstreamApp();

  test('a comma list of dates goes upstream as one OR list of the parameter', async () => {
    // (the stand-in upstream, @medplum/fhir-router, itself refuses date lists; what matters is what it was asked)
    await request(on.t.app.http).get('/fhir/Observation').query({ patient: 'Patient/p1', date: '2026-01-01,2026-01-03' });
    const sent = on.upstream.requests.filter((r) => r.method === 'GET' && r.url.startsWith('/fhir/Observation?'));
    expect(sent.length).toBeGreaterThan(0);
    expect(new URL(sent.at(-1)!.url, on.upstream.origin).searchParams.getAll('date')).toEqual(['2026-01-01,2026-01-03']);
  });

  test('_offset is 400 and never reaches the upstream', async () => {
    const before = on.upstream.requests.length;
    const res = await request(on.t.app.http).get('/fhir/Observation').query({ patient: 'Patient/p1', _offset: '2' });
    expect(res.status).toBe(400);
    expect(on.upstream.requests.length).toBe(before);
  });
});
