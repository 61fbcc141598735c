/**
 * Black-box round 25: literal references that name nothing a reference there may name. An
 * Observation whose subject was `Practitioner/1`, `Foo/1`, `Patient/a b` or `Patient` was stored
 * (201) and indexed as written; a base R4 validator refuses each (Reference.reference, the
 * element's target types, the id syntax). Now 422 with the element's path, nothing stored, on a
 * create, an update, in a transaction and by $validate. Forms resolved elsewhere (absolute URLs,
 * `#contained`, `urn:uuid:` entries, conditional references) are untouched.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, Observation, Patient } from '@medplum/fhirtypes';
import { randomUUID } from 'node:crypto';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';

const FHIR_JSON = 'application/fhir+json';

describe('literal references are checked on every write', () => {
  let t: TestApp;
  let patient: string;
  const http = () => request(t.app.http);
  const reading = (subject: string, extra: Partial<Observation> = {}): Observation => ({
    resourceType: 'Observation', status: 'final', identifier: [{ system: 'urn:test', value: randomUUID() }],
    code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] }, subject: { reference: subject }, ...extra,
  });
  const stored = async (o: Observation): Promise<number> =>
    ((await http().get('/fhir/Observation').query({ identifier: `urn:test|${o.identifier![0]!.value}` })).body as Bundle).entry?.length ?? 0;

  beforeAll(async () => {
    t = await startTestApp();
    patient = (await t.app.repository.create<Patient>({ resourceType: 'Patient', name: [{ family: 'Refs' }] })).resource.id!;
  });
  afterAll(async () => {
    await t?.close();
  });

  test.each([
    ['a type the element may not name', 'Practitioner/1', /may refer to Patient, Group, Device, Location, not Practitioner/],
    ['no resource type', 'Foo/1', /not a FHIR resource type/],
    ['an id no resource can have', 'Patient/a b', /not a FHIR id/],
    ['a type without an id', 'Patient', /must be Type\/id/],
  ])('%s (%s) is 422 naming the element; nothing is stored', async (_what, subject, message) => {
    const o = reading(subject);
    const res = await http().post('/fhir/Observation').set('Content-Type', FHIR_JSON).send(o);
    expect(res.status).toBe(422);
    expect(res.body.resourceType).toBe('OperationOutcome');
    expect(res.body.issue[0].expression).toEqual(['Observation.subject.reference']);
    expect(res.body.issue[0].diagnostics).toMatch(message);
    expect(await stored(o)).toBe(0);
  });

  test('in a list, in a transaction, and as $validate reports it', async () => {
    const listed = reading(`Patient/${patient}`, { performer: [{ reference: 'Practitioner/p1' }, { reference: 'Observation/o1' }] });
    const res = await http().post('/fhir/Observation').set('Content-Type', FHIR_JSON).send(listed);
    expect(res.status).toBe(422);
    expect(res.body.issue[0].expression).toEqual(['Observation.performer[1].reference']);

    const mrn = randomUUID();
    const tx = await http().post('/fhir').set('Content-Type', FHIR_JSON).send({
      resourceType: 'Bundle', type: 'transaction', entry: [
        { resource: { resourceType: 'Patient', identifier: [{ system: 'urn:mrn', value: mrn }] }, request: { method: 'POST', url: 'Patient' } },
        { resource: reading('Practitioner/1'), request: { method: 'POST', url: 'Observation' } },
      ],
    });
    expect(tx.status).toBe(422);
    expect(((await http().get('/fhir/Patient').query({ identifier: `urn:mrn|${mrn}` })).body as Bundle).entry ?? []).toEqual([]);

    const validated = await http().post('/fhir/Observation/$validate').set('Content-Type', FHIR_JSON).send(reading('Foo/1'));
    expect(validated.status).toBe(200);
    expect(validated.body.issue).toContainEqual(expect.objectContaining({ severity: 'error', expression: ['Observation.subject.reference'] }));
  });

  test('an update to such a reference is refused and leaves the resource as it was', async () => {
    const o = reading(`Patient/${patient}`);
    const created = await http().post('/fhir/Observation').set('Content-Type', FHIR_JSON).send(o);
    expect(created.status).toBe(201);
    const res = await http().put(`/fhir/Observation/${created.body.id}`).set('Content-Type', FHIR_JSON).send({ ...o, id: created.body.id, subject: { reference: 'Practitioner/1' } });
    expect(res.status).toBe(422);
    const now = await http().get(`/fhir/Observation/${created.body.id}`);
    expect(now.body.meta.versionId).toBe(created.body.meta.versionId);
    expect(now.body.subject.reference).toBe(`Patient/${patient}`);
  });

  test('references resolved elsewhere, versioned ones and any-type ones are taken', async () => {
    for (const o of [
      reading(`Patient/${patient}`, { extension: [{ url: 'http://example.org/x', valueReference: { reference: 'Practitioner/any' } }] }),
      reading(`Patient/${patient}/_history/1`),
      reading('http://other.example/fhir/Patient/1'),
      reading('Device/sensor-1'),
      reading('#p1', { contained: [{ resourceType: 'Patient', id: 'p1' }] }),
    ]) {
      const res = await http().post('/fhir/Observation').set('Content-Type', FHIR_JSON).send(o);
      expect([res.status, res.body.issue]).toEqual([201, undefined]);
    }
  });
});
