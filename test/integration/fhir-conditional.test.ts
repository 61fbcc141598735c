/**
 * Conditional update (`PUT [type]?criteria`, http.html#cond-update) and conditional delete
 * (`DELETE [type]?criteria`, http.html#cdelete) over HTTP, on the embedded repository and on the
 * upstream adapter in front of a real FHIR server: the upsert an integration engine keys on a
 * business identifier. A refused request changes nothing.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, Patient } from '@medplum/fhirtypes';
import { randomUUID } from 'node:crypto';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { REPOSITORY_ADAPTERS, type Backend } from '../support/adapters.js';

const FHIR_JSON = 'application/fhir+json';
const MRN = 'urn:test:mrn';


function patient(mrn: string, family: string, extra: Partial<Patient> = {}): Patient {
  return { resourceType: 'Patient', identifier: [{ system: MRN, value: mrn }], name: [{ family }], ...extra };
}

describe.each(REPOSITORY_ADAPTERS)('conditional update and delete on the %s repository', (adapter, startBackend) => {
  let t: TestApp;
  let backend: Backend;
  const http = () => request(t.app.http);
  const put = (criteria: string, body: unknown) => http().put(`/fhir/Patient?${criteria}`).set('Content-Type', FHIR_JSON).send(body as object);
  /** The patients carrying an MRN, read back through the facade. */
  const byMrn = async (mrn: string): Promise<Patient[]> => {
    const res = await http().get('/fhir/Patient').query({ identifier: `${MRN}|${mrn}` });
    expect(res.status).toBe(200);
    return ((res.body as Bundle<Patient>).entry ?? []).map((e) => e.resource!);
  };

  beforeAll(async () => {
    backend = await startBackend();
    t = await startTestApp(backend.env);
  });
  afterAll(async () => {
    await t?.close();
    await backend?.close();
  });

  test('no match: the body is created (201, Location); the same request again updates that resource (200, version 2)', async () => {
    const mrn = randomUUID();
    const created = await put(`identifier=${MRN}|${mrn}`, patient(mrn, 'First'));
    expect(created.status).toBe(201);
    expect(created.headers.location).toMatch(new RegExp(`/fhir/Patient/${created.body.id}/_history/`));
    const updated = await put(`identifier=${MRN}|${mrn}`, patient(mrn, 'Second'));
    expect(updated.status).toBe(200);
    expect(updated.body.id).toBe(created.body.id);
    expect(updated.body.meta.versionId).not.toBe(created.body.meta.versionId);
    const stored = await byMrn(mrn);
    expect(stored.map((p) => [p.id, p.name![0]!.family])).toEqual([[created.body.id, 'Second']]);
    const history = await http().get(`/fhir/Patient/${created.body.id}/_history`);
    expect((history.body as Bundle).entry).toHaveLength(2);
  });

  test('one match and an id in the body: the id must be the match\'s (else 400, nothing changes)', async () => {
    const mrn = randomUUID();
    const first = (await put(`identifier=${MRN}|${mrn}`, patient(mrn, 'Kept'))).body as Patient;
    const same = await put(`identifier=${MRN}|${mrn}`, { ...patient(mrn, 'SameId'), id: first.id });
    expect(same.status).toBe(200);
    const other = await put(`identifier=${MRN}|${mrn}`, { ...patient(mrn, 'Other'), id: randomUUID() });
    expect(other.status).toBe(400);
    expect(other.body.resourceType).toBe('OperationOutcome');
    expect((await byMrn(mrn)).map((p) => p.name![0]!.family)).toEqual(['SameId']);
  });

  test('more than one match: 412, nothing changes', async () => {
    const mrn = randomUUID();
    for (const family of ['Twin', 'Twin']) expect((await http().post('/fhir/Patient').set('Content-Type', FHIR_JSON).send(patient(mrn, family))).status).toBe(201);
    const res = await put(`identifier=${MRN}|${mrn}`, patient(mrn, 'Overwritten'));
    expect(res.status).toBe(412);
    expect(res.body.issue[0].diagnostics).toMatch(/more than one/);
    expect((await byMrn(mrn)).map((p) => p.name![0]!.family)).toEqual(['Twin', 'Twin']);
    const del = await http().delete(`/fhir/Patient?identifier=${MRN}|${mrn}`);
    expect(del.status).toBe(412);
    expect(await byMrn(mrn)).toHaveLength(2);
  });

  test('no match and the id of an existing resource that does not match: 409, that resource is not overwritten', async () => {
    const other = (await http().post('/fhir/Patient').set('Content-Type', FHIR_JSON).send(patient(randomUUID(), 'Bystander'))).body as Patient;
    const res = await put(`identifier=${MRN}|${randomUUID()}`, { ...patient(randomUUID(), 'Intruder'), id: other.id });
    expect(res.status).toBe(409);
    const read = await http().get(`/fhir/Patient/${other.id}`);
    expect(read.body.name[0].family).toBe('Bystander');
    expect(read.body.meta.versionId).toBe(other.meta!.versionId);
  });

  test('no match and an id never stored: the update-as-create a plain PUT would do', async () => {
    const mrn = randomUUID();
    const id = randomUUID();
    const res = await put(`identifier=${MRN}|${mrn}`, { ...patient(mrn, 'Chosen'), id });
    expect(res.status).toBe(201);
    expect((await byMrn(mrn)).map((p) => p.id)).toEqual([id]);
  });

  test('If-Match on the match: a stale version is 412 and changes nothing', async () => {
    const mrn = randomUUID();
    const first = (await put(`identifier=${MRN}|${mrn}`, patient(mrn, 'V1'))).body as Patient;
    await put(`identifier=${MRN}|${mrn}`, patient(mrn, 'V2'));
    const stale = await put(`identifier=${MRN}|${mrn}`, patient(mrn, 'Stale')).set('If-Match', `W/"${first.meta!.versionId}"`);
    expect(stale.status).toBe(412);
    expect((await byMrn(mrn))[0]!.name![0]!.family).toBe('V2');
  });

  test('bad input changes nothing: an invalid body is 422, criteria with an unknown parameter 400, none at all 405', async () => {
    const mrn = randomUUID();
    const invalid = await put(`identifier=${MRN}|${mrn}`, { ...patient(mrn, 'Bad'), birthDate: 'yesterday' });
    expect(invalid.status).toBe(422);
    const unknown = await put(`no-such-param=1`, patient(mrn, 'Bad'));
    expect(unknown.status).toBe(400);
    expect(unknown.body.issue[0].expression).toEqual(['no-such-param']);
    const bare = await http().put('/fhir/Patient').set('Content-Type', FHIR_JSON).send(patient(mrn, 'Bad'));
    expect(bare.status).toBe(405);
    const wrongType = await put(`identifier=${MRN}|${mrn}`, { resourceType: 'Observation', status: 'final', code: { text: 'x' } });
    expect(wrongType.status).toBe(400);
    expect(await byMrn(mrn)).toEqual([]);
  });

  test('conditional delete: one match is deleted (then 410 on read); no match is a successful no-op', async () => {
    const mrn = randomUUID();
    const created = (await put(`identifier=${MRN}|${mrn}`, patient(mrn, 'Doomed'))).body as Patient;
    const del = await http().delete(`/fhir/Patient?identifier=${MRN}|${mrn}`);
    expect(del.status).toBe(204);
    expect((await http().get(`/fhir/Patient/${created.id}`)).status).toBe(410);
    expect(await byMrn(mrn)).toEqual([]);
    const none = await http().delete(`/fhir/Patient?identifier=${MRN}|${randomUUID()}`);
    expect(none.status).toBe(204);
    const told = await http().delete(`/fhir/Patient?identifier=${MRN}|${randomUUID()}`).set('Prefer', 'return=OperationOutcome');
    expect(told.status).toBe(200);
    expect(told.body.issue[0].diagnostics).toMatch(/nothing was deleted/);
  });

  test('a batch carries conditional updates and deletes; a transaction refuses them whole', async () => {
    const mrn = randomUUID();
    const batch = await http().post('/fhir').set('Content-Type', FHIR_JSON).send({
      resourceType: 'Bundle', type: 'batch',
      entry: [{ request: { method: 'PUT', url: `Patient?identifier=${MRN}|${mrn}` }, resource: patient(mrn, 'Batched') }],
    });
    expect(batch.status).toBe(200);
    expect((batch.body as Bundle).entry![0]!.response!.status).toMatch(/^201/);
    const again = await http().post('/fhir').set('Content-Type', FHIR_JSON).send({
      resourceType: 'Bundle', type: 'batch',
      entry: [{ request: { method: 'PUT', url: `Patient?identifier=${MRN}|${mrn}` }, resource: patient(mrn, 'Rebatched') }],
    });
    expect((again.body as Bundle).entry![0]!.response!.status).toMatch(/^200/);
    const other = randomUUID();
    const tx = await http().post('/fhir').set('Content-Type', FHIR_JSON).send({
      resourceType: 'Bundle', type: 'transaction',
      entry: [
        { fullUrl: `urn:uuid:${randomUUID()}`, request: { method: 'POST', url: 'Patient' }, resource: patient(other, 'NotWritten') },
        { request: { method: 'PUT', url: `Patient?identifier=${MRN}|${mrn}` }, resource: patient(mrn, 'NotWritten') },
      ],
    });
    expect(tx.status).toBe(400);
    expect(tx.body.issue[0].expression).toEqual(['Bundle.entry[1].request.url']);
    expect(await byMrn(other)).toEqual([]);
    expect((await byMrn(mrn))[0]!.name![0]!.family).toBe('Rebatched');
  });

  test('a match created between the search and the create is updated, not duplicated', async () => {
    const mrn = randomUUID();
    const repository = t.app.fhir.repository;
    const create = repository.create.bind(repository);
    // another writer wins the race: the criteria match nothing at the search, something at the create
    repository.create = (async (resource, options) => {
      repository.create = create;
      await create(patient(mrn, 'Racer'));
      return create(resource, options);
    }) as typeof repository.create;
    try {
      const res = await put(`identifier=${MRN}|${mrn}`, patient(mrn, 'Upserted'));
      expect(res.status).toBe(200);
    } finally {
      repository.create = create;
    }
    expect((await byMrn(mrn)).map((p) => p.name![0]!.family)).toEqual(['Upserted']);
  });

  test('a transaction resolves conditional references (Patient?identifier=…) to the one match; none or several fail it whole (412); a single write holding one is 400', async () => {
    const mrn = randomUUID();
    const owner = (await put(`identifier=${MRN}|${mrn}`, patient(mrn, 'Owner'))).body as Patient;
    const reading = (ref: string, value: number) => ({ resourceType: 'Observation', status: 'final', code: { text: 'glucose' }, subject: { reference: ref },
      valueQuantity: { value, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' } });
    const transaction = (...refs: string[]) => http().post('/fhir').set('Content-Type', FHIR_JSON).send({ resourceType: 'Bundle', type: 'transaction',
      entry: refs.map((ref, i) => ({ request: { method: 'POST', url: 'Observation' }, resource: reading(ref, 100 + i) })) });
    const readingsOf = async (ref: string): Promise<number[]> => ((await http().get('/fhir/Observation').query({ subject: ref })).body.entry ?? [])
      .map((e: { resource: { valueQuantity: { value: number } } }) => e.resource.valueQuantity.value).sort();

    const ok = await transaction(`Patient?identifier=${MRN}|${mrn}`, `Patient?identifier=${MRN}|${mrn}`);
    expect(ok.status).toBe(200);
    expect(ok.body.entry.map((e: { resource: { subject: { reference: string } } }) => e.resource.subject.reference)).toEqual([`Patient/${owner.id}`, `Patient/${owner.id}`]);
    expect(await readingsOf(`Patient/${owner.id}`)).toEqual([100, 101]);

    // no match: nothing of the transaction is written, and the criteria are not echoed
    const none = await transaction(`Patient/${owner.id}`, `Patient?identifier=${MRN}|${randomUUID()}`);
    expect(none.status).toBe(412);
    expect(none.body.issue[0].diagnostics).toMatch(/Bundle\.entry\[1\]\.resource: a conditional reference to Patient matches no resource/);
    expect(JSON.stringify(none.body)).not.toContain(MRN);
    // several matches
    const twin = randomUUID();
    for (const family of ['A', 'B']) expect((await http().post('/fhir/Patient').set('Content-Type', FHIR_JSON).send(patient(twin, family))).status).toBe(201);
    const several = await transaction(`Patient?identifier=${MRN}|${twin}`);
    expect([several.status, several.body.issue[0].diagnostics]).toEqual([412, expect.stringMatching(/matches more than one resource/)]);
    // malformed criteria are 400
    expect((await transaction('Patient?nonsense=1')).status).toBe(400);
    expect(await readingsOf(`Patient/${owner.id}`)).toEqual([100, 101]);

    // outside a transaction a conditional reference would be stored as written and link to nothing
    const single = await http().post('/fhir/Observation').set('Content-Type', FHIR_JSON).send(reading(`Patient?identifier=${MRN}|${mrn}`, 300));
    expect([single.status, single.body.issue[0].diagnostics]).toEqual([400, expect.stringMatching(/resolved only inside a transaction/)]);
    const batch = await http().post('/fhir').set('Content-Type', FHIR_JSON).send({ resourceType: 'Bundle', type: 'batch',
      entry: [{ request: { method: 'POST', url: 'Observation' }, resource: reading(`Patient?identifier=${MRN}|${mrn}`, 301) }] });
    expect(batch.body.entry[0].response.status).toMatch(/^400/);
    expect(await readingsOf(`Patient/${owner.id}`)).toEqual([100, 101]);
  });

  test('the CapabilityStatement says conditional update and single conditional delete are supported', async () => {
    const res = await http().get('/fhir/metadata');
    const patientEntry = res.body.rest[0].resource.find((r: { type: string }) => r.type === 'Patient');
    expect(patientEntry.conditionalUpdate).toBe(true);
    expect(patientEntry.conditionalDelete).toBe('single');
    if (adapter === 'embedded') {
      // Consent and Subscription writes go through their own modules: no conditional forms there
      const consent = res.body.rest[0].resource.find((r: { type: string }) => r.type === 'Consent');
      expect(consent.conditionalUpdate).toBe(false);
      expect((await http().delete('/fhir/Consent?patient=Patient/x')).status).toBe(405);
    }
  });
});
