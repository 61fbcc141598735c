/**
 * `_summary` and `_elements` (search.html#summary, #elements) over HTTP, on the embedded repository
 * and on the upstream adapter in front of a real FHIR server: subsets of the matches (and, for
 * `_summary`, of included resources) tagged SUBSETTED, on search, paging, read and vread;
 * `_summary=count` and malformed values refused with an OperationOutcome.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, Observation, OperationOutcome, Patient, Resource } from '@medplum/fhirtypes';
import type { AddressInfo } from 'node:net';
import { Client as FhirKitClient } from 'fhir-kit-client';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { REPOSITORY_ADAPTERS, type Backend } from '../support/adapters.js';

const FHIR_JSON = 'application/fhir+json';
const SUBSETTED = { system: 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue', code: 'SUBSETTED' };


function isSubsetted(resource: Resource): boolean {
  return (resource.meta?.tag ?? []).some((t) => t.system === SUBSETTED.system && t.code === SUBSETTED.code);
}

/** Top-level keys of a resource, meta left out (the server manages it), sorted. */
function keys(resource: Resource): string[] {
  return Object.keys(resource).filter((k) => k !== 'meta').sort();
}

describe.each(REPOSITORY_ADAPTERS)('_summary and _elements on the %s repository', (_adapter, startBackend) => {
  let t: TestApp;
  let backend: Backend;
  const http = () => request(t.app.http);
  let patient: Patient;
  const readings: Observation[] = [];

  beforeAll(async () => {
    backend = await startBackend();
    t = await startTestApp(backend.env);
    const p = await http().post('/fhir/Patient').set('Content-Type', FHIR_JSON).send({
      resourceType: 'Patient',
      text: { status: 'generated', div: '<div xmlns="http://www.w3.org/1999/xhtml">Noor Haddad</div>' },
      name: [{ family: 'Haddad', given: ['Noor'] }],
      birthDate: '1984-07-30',
      contact: [{ name: { family: 'Haddad', given: ['Sami'] } }], // not a summary element
    });
    expect(p.status).toBe(201);
    patient = p.body;
    for (let i = 0; i < 3; i++) {
      const r = await http().post('/fhir/Observation').set('Content-Type', FHIR_JSON).send({
        resourceType: 'Observation',
        status: 'final',
        code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] },
        subject: { reference: `Patient/${patient.id}` },
        effectiveDateTime: `2026-02-0${i + 1}T08:00:00Z`,
        valueQuantity: { value: 110 + i, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
        note: [{ text: 'after breakfast' }],
      });
      expect(r.status).toBe(201);
      readings.push(r.body);
    }
  });

  afterAll(async () => {
    await t?.close();
    await backend?.close();
  });

  const search = (query: Record<string, string>) => http().get('/fhir/Observation').query({ patient: patient.id!, _sort: 'date', ...query });

  test('_elements returns the named elements of each match plus the mandatory ones, tagged SUBSETTED', async () => {
    const res = await search({ _elements: 'valueQuantity,effectiveDateTime' });
    expect(res.status).toBe(200);
    const entries = (res.body as Bundle<Observation>).entry!;
    expect(entries).toHaveLength(3);
    for (const [i, e] of entries.entries()) {
      // status and code are mandatory in Observation (1..1): servers return them whether asked or not
      expect(keys(e.resource!)).toEqual(['code', 'effectiveDateTime', 'id', 'resourceType', 'status', 'valueQuantity']);
      expect(e.resource!.valueQuantity!.value).toBe(110 + i);
      expect(e.resource!.meta!.versionId).toBe(readings[i]!.meta!.versionId);
      expect(isSubsetted(e.resource!)).toBe(true);
    }
  });

  test('_elements names a choice element by its stem or its typed form, and may be type-qualified', async () => {
    for (const elements of ['value', 'valueQuantity', 'Observation.value']) {
      const res = await search({ _elements: elements });
      expect(res.status).toBe(200);
      expect(keys((res.body as Bundle).entry![0]!.resource!)).toEqual(['code', 'id', 'resourceType', 'status', 'valueQuantity']);
    }
  });

  test('_summary=true keeps the elements the base definition marks as summary', async () => {
    const res = await http().get('/fhir/Patient').query({ _id: patient.id!, _summary: 'true' });
    expect(res.status).toBe(200);
    const shown = (res.body as Bundle<Patient>).entry![0]!.resource!;
    expect(keys(shown)).toEqual(['birthDate', 'id', 'name', 'resourceType']); // text and contact are not summary elements
    expect(isSubsetted(shown)).toBe(true);
    const obs = (await search({ _summary: 'true' })).body as Bundle<Observation>;
    expect(keys(obs.entry![0]!.resource!)).toEqual(['code', 'effectiveDateTime', 'id', 'resourceType', 'status', 'subject', 'valueQuantity']);
  });

  test('_summary=text keeps text, id, meta and the mandatory elements; _summary=data drops only text', async () => {
    const text = await http().get(`/fhir/Patient/${patient.id}`).query({ _summary: 'text' });
    expect(text.status).toBe(200);
    expect(keys(text.body)).toEqual(['id', 'resourceType', 'text']);
    expect(text.body.text.div).toContain('Noor Haddad');
    const data = await http().get(`/fhir/Patient/${patient.id}`).query({ _summary: 'data' });
    expect(keys(data.body)).toEqual(['birthDate', 'contact', 'id', 'name', 'resourceType']);
    expect(isSubsetted(data.body)).toBe(true);
    // nothing to drop: the resource comes back whole and untagged
    const whole = await search({ _summary: 'data' });
    expect(keys((whole.body as Bundle).entry![0]!.resource!)).toEqual(keys(readings[0]!));
    expect(isSubsetted((whole.body as Bundle).entry![0]!.resource!)).toBe(false);
  });

  test('_summary=false, and no subsetting parameter, return whole resources without the tag', async () => {
    for (const query of [{ _summary: 'false' }, {}]) {
      const res = await http().get(`/fhir/Patient/${patient.id}`).query(query);
      expect(res.status).toBe(200);
      expect(keys(res.body)).toEqual(['birthDate', 'contact', 'id', 'name', 'resourceType', 'text']);
      expect(isSubsetted(res.body)).toBe(false);
    }
  });

  test('read and vread subset too, and a subsetted answer leaves the stored version whole', async () => {
    const id = readings[1]!.id!;
    const read = await http().get(`/fhir/Observation/${id}`).query({ _elements: 'note' });
    expect(read.status).toBe(200);
    expect(keys(read.body)).toEqual(['code', 'id', 'note', 'resourceType', 'status']);
    expect(read.headers.etag).toBe(`W/"${readings[1]!.meta!.versionId}"`);
    const vread = await http().get(`/fhir/Observation/${id}/_history/${readings[1]!.meta!.versionId}`).query({ _summary: 'true' });
    expect(vread.status).toBe(200);
    expect(vread.body.note).toBeUndefined();
    expect(isSubsetted(vread.body)).toBe(true);
    const again = await http().get(`/fhir/Observation/${id}`);
    expect(again.body.note).toEqual([{ text: 'after breakfast' }]);
    expect(again.body.subject).toEqual({ reference: `Patient/${patient.id}` });
    expect(isSubsetted(again.body)).toBe(false);
  });

  test('_elements narrows the matches only; included resources come whole; _summary narrows both', async () => {
    const res = await search({ _elements: 'valueQuantity', _include: 'Observation:subject', _count: '1' });
    expect(res.status).toBe(200);
    const entries = (res.body as Bundle).entry!;
    const match = entries.find((e) => e.search?.mode === 'match')!.resource!;
    const included = entries.find((e) => e.search?.mode === 'include')!.resource as Patient;
    expect(isSubsetted(match)).toBe(true);
    expect(included.contact).toHaveLength(1);
    expect(isSubsetted(included)).toBe(false);
    const summary = await search({ _summary: 'true', _include: 'Observation:subject', _count: '1' });
    const summarised = (summary.body as Bundle).entry!.find((e) => e.search?.mode === 'include')!.resource as Patient;
    expect(summarised.contact).toBeUndefined();
    expect(isSubsetted(summarised)).toBe(true);
  });

  test('the next page keeps the subsetting of the first', async () => {
    const first = await search({ _elements: 'valueQuantity', _count: '2' });
    const next = (first.body as Bundle).link!.find((l) => l.relation === 'next')!.url;
    const page = await http().get(new URL(next).pathname + new URL(next).search);
    expect(page.status).toBe(200);
    const entries = (page.body as Bundle<Observation>).entry!;
    expect(entries).toHaveLength(1);
    expect(entries[0]!.resource!.valueQuantity!.value).toBe(112);
    expect(entries[0]!.resource!.subject).toBeUndefined();
    expect(isSubsetted(entries[0]!.resource!)).toBe(true);
  });

  test.each([
    [{ _summary: 'count' }, '_summary', /never answers counts/],
    [{ _summary: 'yes' }, '_summary', /true, text, data or false/],
    [{ _elements: 'valueQuantity,notAnElement' }, '_elements', /notAnElement/],
    [{ _elements: 'subject.reference' }, '_elements', /subject\.reference/],
    [{ _elements: 'Patient.name' }, '_elements', /Patient\.name/],
    [{ _summary: 'true', _elements: 'valueQuantity' }, '_elements', /together/],
    [{ _summary: 'text', _include: 'Observation:subject' }, '_summary', /_include/],
    [{ _total: 'all' }, '_total', /none, estimate or accurate/],
  ])('refuses %j with 400 and an issue at its parameter', async (query, expression, message) => {
    const res = await search(query as Record<string, string>);
    expect(res.status).toBe(400);
    const outcome = res.body as OperationOutcome;
    expect(outcome.resourceType).toBe('OperationOutcome');
    expect(outcome.issue![0]!.expression).toEqual([expression]);
    expect(outcome.issue![0]!.diagnostics).toMatch(message);
  });

  test('a malformed _summary on read is refused too; Prefer: handling=lenient drops what it cannot honour', async () => {
    expect((await http().get(`/fhir/Patient/${patient.id}`).query({ _summary: 'count' })).status).toBe(400);
    const lenient = await search({ _elements: 'bogus,valueQuantity' }).set('Prefer', 'handling=lenient');
    expect(lenient.status).toBe(200);
    expect(keys((lenient.body as Bundle).entry![0]!.resource!)).toEqual(['code', 'id', 'resourceType', 'status', 'valueQuantity']);
    const dropped = await search({ _summary: 'count' }).set('Prefer', 'handling=lenient');
    expect(dropped.status).toBe(200);
    expect((dropped.body as Bundle).total).toBeUndefined();
    expect(isSubsetted((dropped.body as Bundle).entry![0]!.resource!)).toBe(false);
  });

  test('a real client (fhir-kit-client) asks for a subset by search and by read', async () => {
    const server = t.app.http.listen(0, '127.0.0.1');
    await new Promise((ok) => server.once('listening', ok));
    try {
      const client = new FhirKitClient({ baseUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}/fhir` });
      const bundle = await client.search({ resourceType: 'Observation', searchParams: { patient: patient.id!, _elements: 'valueQuantity' } }) as unknown as Bundle<Observation>;
      expect(bundle.entry!.map((e) => e.resource!.valueQuantity!.value).sort()).toEqual([110, 111, 112]);
      expect(bundle.entry!.every((e) => e.resource!.subject === undefined && isSubsetted(e.resource!))).toBe(true);
      const read = await client.request(`Patient/${patient.id}?_summary=true`) as unknown as Patient;
      expect(read.contact).toBeUndefined();
      expect(read.name![0]!.family).toBe('Haddad');
      expect(isSubsetted(read)).toBe(true);
    } finally {
      await new Promise((ok) => server.close(ok));
    }
  });

  test('POST _search takes the parameters as form fields', async () => {
    const res = await http().post('/fhir/Observation/_search').type('form').send({ patient: patient.id!, _elements: 'valueQuantity' });
    expect(res.status).toBe(200);
    expect(keys((res.body as Bundle).entry![0]!.resource!)).toEqual(['code', 'id', 'resourceType', 'status', 'valueQuantity']);
  });
});
