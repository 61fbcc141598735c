/**
 * Chained parameters and `_has` over HTTP (src/fhir/chains.ts), on the embedded repository and on
 * the upstream adapter in front of a real FHIR server: forward chains of one and two links, with
 * and without a `:Type`, reverse chains (nested too), AND of repeated chains, paging, POST
 * `_search`, lenient handling, and the refusals.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, Observation, OperationOutcome, Resource } from '@medplum/fhirtypes';
import type { AddressInfo } from 'node:net';
import { Client as FhirKitClient } from 'fhir-kit-client';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { REPOSITORY_ADAPTERS, type Backend } from '../support/adapters.js';

const FHIR_JSON = 'application/fhir+json';
const MRN = 'urn:test:mrn';

function reading(patientId: string, at: string, code: string, device?: string): Observation {
  return {
    resourceType: 'Observation',
    status: 'final',
    code: { coding: [{ system: 'http://loinc.org', code }] },
    subject: { reference: `Patient/${patientId}` },
    ...(device ? { device: { reference: `Device/${device}` } } : {}),
    effectiveDateTime: at,
    valueQuantity: { value: 120, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
  };
}

describe.each(REPOSITORY_ADAPTERS)('chained and reverse-chained search on the %s repository', (adapter, startBackend) => {
  let t: TestApp;
  let backend: Backend;
  const http = () => request(t.app.http);
  const ids: Record<string, string> = {};
  const tag = `chains-${adapter}-${Date.now()}`;
  const create = async (name: string, resource: Resource): Promise<void> => {
    const res = await http().post(`/fhir/${resource.resourceType}`).set('Content-Type', FHIR_JSON).send(resource);
    expect(res.status).toBe(201);
    ids[name] = res.body.id;
  };
  const matches = (body: Bundle): string[] => (body.entry ?? []).filter((e) => e.search?.mode === 'match').map((e) => e.resource!.id!).sort();
  const expectIds = (body: Bundle, names: string[]): void => expect(matches(body)).toEqual(names.map((n) => ids[n]!).sort());

  beforeAll(async () => {
    backend = await startBackend();
    t = await startTestApp(backend.env);
    await create('lee', { resourceType: 'Practitioner', name: [{ family: `Lee${tag}` }] });
    await create('ana', { resourceType: 'Patient', name: [{ family: `Rivera${tag}` }], identifier: [{ system: MRN, value: `A-${tag}` }],
      generalPractitioner: [{ reference: `Practitioner/${ids.lee}` }] });
    await create('ben', { resourceType: 'Patient', name: [{ family: `Okafor${tag}` }], identifier: [{ system: MRN, value: `B-${tag}` }] });
    await create('anaSensor', { resourceType: 'Device', patient: { reference: `Patient/${ids.ana}` }, identifier: [{ system: 'urn:test:serial', value: `S-${tag}` }] });
    await create('ana1', reading(ids.ana!, '2026-01-01T10:00:00Z', '99504-3', ids.anaSensor));
    await create('ana2', reading(ids.ana!, '2026-01-01T10:05:00Z', '99504-3', ids.anaSensor));
    await create('ben1', reading(ids.ben!, '2026-01-01T10:00:00Z', '2339-0'));
    await create('ben2', reading(ids.ben!, '2026-01-01T10:05:00Z', '99504-3'));
  });

  afterAll(async () => {
    await t?.close();
    await backend?.close();
  });

  test('a forward chain selects by the referenced resource: patient.identifier, subject:Patient.name, subject.name', async () => {
    const byMrn = await http().get('/fhir/Observation').query({ 'patient.identifier': `${MRN}|A-${tag}` });
    expect(byMrn.status).toBe(200);
    expectIds(byMrn.body, ['ana1', 'ana2']);
    // the self link keeps the question as asked
    expect(byMrn.body.link[0].url).toContain('patient.identifier=');
    expectIds((await http().get('/fhir/Observation').query({ 'subject:Patient.name': `Okafor${tag}` })).body, ['ben1', 'ben2']);
    // without :Type, every target type of `subject` that has `name` (here: Patient)
    expectIds((await http().get('/fhir/Observation').query({ 'subject.name': `Okafor${tag}` })).body, ['ben1', 'ben2']);
    // a comma is OR inside the chain
    expectIds((await http().get('/fhir/Observation').query({ 'patient.identifier': `${MRN}|A-${tag},${MRN}|B-${tag}` })).body, ['ana1', 'ana2', 'ben1', 'ben2']);
  });

  test('a type modifier on a reference parameter types its ids: subject:Patient=<id>', async () => {
    expectIds((await http().get('/fhir/Observation').query({ 'subject:Patient': ids.ana! })).body, ['ana1', 'ana2']);
    expectIds((await http().get('/fhir/Observation').query({ 'subject:Patient': `Patient/${ids.ben},${ids.ana}` })).body, ['ana1', 'ana2', 'ben1', 'ben2']);
    // a value naming another type matches nothing; with a plain filter of the same parameter both apply
    expect(matches((await http().get('/fhir/Observation').query({ 'subject:Patient': `Device/${ids.anaSensor}` })).body)).toEqual([]);
    expect(matches((await http().get('/fhir/Observation').query({ 'subject:Patient': ids.ana!, subject: `Patient/${ids.ben}` })).body)).toEqual([]);
    expectIds((await http().get('/fhir/Observation').query({ 'subject:Patient': ids.ben!, code: 'http://loinc.org|2339-0' })).body, ['ben1']);
    const wrongType = await http().get('/fhir/Observation').query({ 'subject:Medication': '1' });
    expect(wrongType.status).toBe(400);
    expect(wrongType.body.issue[0].diagnostics).toContain('cannot refer to');
  });

  test('chains of two links, and chains combined with other parameters', async () => {
    expectIds((await http().get('/fhir/Observation').query({ 'device.patient.identifier': `${MRN}|A-${tag}` })).body, ['ana1', 'ana2']);
    expectIds((await http().get('/fhir/Observation').query({ 'subject:Patient.general-practitioner.name': `Lee${tag}` })).body, ['ana1', 'ana2']);
    // three links, the most a chain may follow
    expectIds((await http().get('/fhir/Observation').query({ 'device.patient.general-practitioner.name': `Lee${tag}` })).body, ['ana1', 'ana2']);
    expectIds((await http().get('/fhir/Observation').query({ 'patient.identifier': `${MRN}|B-${tag}`, code: 'http://loinc.org|2339-0' })).body, ['ben1']);
    expectIds((await http().get('/fhir/Observation').query({ 'patient.identifier': `${MRN}|B-${tag}`, date: 'ge2026-01-01T10:01:00Z' })).body, ['ben2']);
  });

  test('a repeated chain is AND; a chain that selects nothing gives an empty searchset', async () => {
    const both = await http().get(`/fhir/Observation?patient.identifier=${encodeURIComponent(`${MRN}|A-${tag}`)}&patient.name=Okafor${tag}`);
    expect(both.status).toBe(200);
    expect(matches(both.body)).toEqual([]);
    // with a plain filter of the same parameter, both apply
    expect(matches((await http().get('/fhir/Observation').query({ 'patient.identifier': `${MRN}|A-${tag}`, patient: `Patient/${ids.ben}` })).body)).toEqual([]);
    expectIds((await http().get('/fhir/Observation').query({ 'patient.identifier': `${MRN}|A-${tag}`, patient: `Patient/${ids.ana}` })).body, ['ana1', 'ana2']);
    const none = await http().get('/fhir/Observation').query({ 'patient.identifier': `${MRN}|nobody-${tag}` });
    expect(none.status).toBe(200);
    expect(none.body.resourceType).toBe('Bundle');
    expect(none.body.type).toBe('searchset');
    expect(matches(none.body)).toEqual([]);
  });

  test('_has keeps the resources that resources of another type refer to; _has nests', async () => {
    const withCode = await http().get('/fhir/Patient').query({ '_has:Observation:patient:code': 'http://loinc.org|2339-0' });
    expect(withCode.status).toBe(200);
    expectIds(withCode.body, ['ben']);
    expectIds((await http().get('/fhir/Patient').query({ '_has:Observation:patient:code': '99504-3', name: `Rivera${tag}` })).body, ['ana']);
    expectIds((await http().get('/fhir/Device').query({ '_has:Observation:device:patient': `Patient/${ids.ana}` })).body, ['anaSensor']);
    // a Practitioner whose patients have a 99504-3 reading: _has inside _has
    expectIds((await http().get('/fhir/Practitioner').query({ '_has:Patient:general-practitioner:_has:Observation:patient:code': '99504-3', name: `Lee${tag}` })).body, ['lee']);
    // and a chain inside _has
    expectIds((await http().get('/fhir/Patient').query({ '_has:Observation:patient:device.identifier': `urn:test:serial|S-${tag}` })).body, ['ana']);
    expect(matches((await http().get('/fhir/Patient').query({ '_has:Observation:patient:code': `no-such-code-${tag}` })).body)).toEqual([]);
  });

  test('pages of a chained search follow their next links; POST _search takes chains too', async () => {
    const first = await http().get('/fhir/Observation').query({ 'patient.identifier': `${MRN}|A-${tag}`, _count: '1', _sort: 'date' });
    expect(first.status).toBe(200);
    expect(matches(first.body)).toEqual([ids.ana1]);
    const next = (first.body as Bundle).link!.find((l) => l.relation === 'next')!.url;
    const second = await http().get(new URL(next).pathname + new URL(next).search);
    expect(second.status).toBe(200);
    expect(matches(second.body)).toEqual([ids.ana2]);
    expect((second.body as Bundle).link!.some((l) => l.relation === 'next')).toBe(false);
    const posted = await http().post('/fhir/Observation/_search').type('form').send({ 'subject:Patient.identifier': `${MRN}|B-${tag}` });
    expect(posted.status).toBe(200);
    expectIds(posted.body, ['ben1', 'ben2']);
  });

  test('conditional create, update, patch and delete take chains', async () => {
    const body = (at: string): Observation => ({ ...reading(ids.ben!, at, '2339-0'), identifier: [{ system: 'urn:test:obs', value: `${tag}-${at}` }] });
    // If-None-Exist: two of Ana's readings match, one of them at 10:00, none of a patient not stored
    const two = await http().post('/fhir/Observation').set('Content-Type', FHIR_JSON).set('If-None-Exist', `patient.identifier=${MRN}|A-${tag}&code=99504-3`).send(body('2026-01-02T00:00:00Z'));
    expect(two.status).toBe(412);
    const one = await http().post('/fhir/Observation').set('Content-Type', FHIR_JSON).set('If-None-Exist', `patient.identifier=${MRN}|A-${tag}&date=2026-01-01T10:00:00Z`).send(body('2026-01-02T00:00:00Z'));
    expect(one.status).toBe(200);
    expect(one.body.id).toBe(ids.ana1);
    const none = await http().post('/fhir/Observation').set('Content-Type', FHIR_JSON).set('If-None-Exist', `patient.identifier=${MRN}|nobody-${tag}`).send(body('2026-01-02T00:00:00Z'));
    expect(none.status).toBe(201);
    const created = none.body.id as string;
    // conditional update of the one of Ben's readings at that time, found through his MRN
    const updated = await http().put('/fhir/Observation').query({ 'patient.identifier': `${MRN}|B-${tag}`, date: '2026-01-02T00:00:00Z' })
      .set('Content-Type', FHIR_JSON).send({ ...body('2026-01-02T00:00:00Z'), status: 'amended' });
    expect(updated.status).toBe(200);
    expect(updated.body.id).toBe(created);
    expect(updated.body.status).toBe('amended');
    const patched = await http().patch('/fhir/Observation').query({ 'patient.identifier': `${MRN}|B-${tag}`, date: '2026-01-02T00:00:00Z' })
      .set('Content-Type', 'application/json-patch+json').send([{ op: 'replace', path: '/status', value: 'corrected' }]);
    expect(patched.status).toBe(200);
    expect(patched.body.status).toBe('corrected');
    // a chain that selects nothing deletes nothing; one that selects the reading deletes it
    expect((await http().delete('/fhir/Observation').query({ 'patient.identifier': `${MRN}|nobody-${tag}` })).status).toBe(204);
    expect((await http().get(`/fhir/Observation/${created}`)).status).toBe(200);
    expect((await http().delete('/fhir/Observation').query({ 'patient.identifier': `${MRN}|B-${tag}`, date: '2026-01-02T00:00:00Z' })).status).toBe(204);
    expect((await http().get(`/fhir/Observation/${created}`)).status).toBe(410);
    // a malformed chain in the criteria is a 400 that writes nothing
    const bad = await http().post('/fhir/Observation').set('Content-Type', FHIR_JSON).set('If-None-Exist', 'patient.no-such-param=x').send(body('2026-01-03T00:00:00Z'));
    expect(bad.status).toBe(400);
    expect(matches((await http().get('/fhir/Observation').query({ patient: `Patient/${ids.ben}`, date: '2026-01-03T00:00:00Z' })).body)).toEqual([]);
  });

  test('a batch GET entry takes chains as a search does', async () => {
    const res = await http().post('/fhir').set('Content-Type', FHIR_JSON).send({ resourceType: 'Bundle', type: 'batch', entry: [
      { request: { method: 'GET', url: `Observation?patient.identifier=${encodeURIComponent(`${MRN}|A-${tag}`)}&code=99504-3` } },
      { request: { method: 'GET', url: 'Observation?patient.no-such-param=x' } },
    ] });
    expect(res.status).toBe(200);
    expect(res.body.entry[0].response.status).toMatch(/^200/);
    expectIds(res.body.entry[0].resource, ['ana1', 'ana2']);
    expect(res.body.entry[1].response.status).toMatch(/^400/);
  });

  test('a real client (fhir-kit-client) sends chains and _has as any other parameter', async () => {
    const server = t.app.http.listen(0, '127.0.0.1');
    await new Promise((ok) => server.once('listening', ok));
    try {
      const client = new FhirKitClient({ baseUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}/fhir` });
      expectIds(await client.search({ resourceType: 'Observation', searchParams: { 'patient.identifier': `${MRN}|B-${tag}` } }) as unknown as Bundle, ['ben1', 'ben2']);
      expectIds(await client.search({ resourceType: 'Patient', searchParams: { '_has:Observation:patient:code': 'http://loinc.org|2339-0' } }) as unknown as Bundle, ['ben']);
      const refused = await client.search({ resourceType: 'Observation', searchParams: { 'patient.no-such-param': 'x' } }).then(() => undefined, (err: { response?: { status: number } }) => err);
      expect(refused?.response?.status).toBe(400);
    } finally {
      await new Promise((ok) => server.close(ok));
    }
  });

  test('chains that cannot be answered are 400 OperationOutcomes, or dropped under handling=lenient', async () => {
    const refused: [string, string][] = [
      ['patient.no-such-param', 'x'],
      ['code.name', 'x'], // not a reference
      ['subject:Medication.code', 'x'], // not a target of subject
      ['patient.', 'x'],
      ['patient._count', '5'], // a result parameter is not a filter
      ['patient.organization.partof.partof.name', 'x'], // four links
      ['_has:NoSuchType:patient:code', 'x'],
      ['_has:Observation:patient', 'x'],
      ['_has:Observation:code:status', 'final'], // code is not a reference
      ['_has:DiagnosticReport:result:status', 'final'], // result refers to Observations, not Patients
      ['_has:Observation:patient:no-such-param', 'x'],
    ];
    for (const [name, value] of refused) {
      const res = await http().get(name.startsWith('_has') ? '/fhir/Patient' : '/fhir/Observation').query({ [name]: value });
      expect([name, res.status]).toEqual([name, 400]);
      expect((res.body as OperationOutcome).resourceType).toBe('OperationOutcome');
      expect((res.body as OperationOutcome).issue[0]!.diagnostics).toBeTruthy();
    }
    // the rest of the query is checked first
    expect((await http().get('/fhir/Observation').query({ 'patient.identifier': `${MRN}|A-${tag}`, bogus: '1' })).status).toBe(400);
    const lenient = await http().get('/fhir/Observation').set('Prefer', 'handling=lenient')
      .query({ 'patient.no-such-param': 'x', 'patient.identifier': `${MRN}|A-${tag}` });
    expect(lenient.status).toBe(200);
    expectIds(lenient.body, ['ana1', 'ana2']);
  });
});
