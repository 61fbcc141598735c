/**
 * A patient id erased, created again and erased a second time: every erasure keeps its own record
 * and that record keeps proving. The records about a patient written while their data key was
 * erased are sealed under the shared key (they stay readable), so a later erasure of the same id
 * must not overwrite the salts of their commitments either.
 */
import { afterAll, beforeAll, describe, expect, it, jest } from '@jest/globals';
import request from 'supertest';
import type { AuditEvent, Resource } from '@medplum/fhirtypes';
import { startTestApp, type TestApp } from '../support/app.js';

let t: TestApp;
beforeAll(async () => {
  t = await startTestApp();
});
afterAll(async () => {
  await t?.close();
});

const FHIR_JSON = 'application/fhir+json';
const ZERO_SALT = Buffer.alloc(32);

async function put(resource: Resource): Promise<Resource> {
  const res = await request(t.app.http).put(`/fhir/${resource.resourceType}/${resource.id}`).set('content-type', FHIR_JSON).send(resource);
  expect([200, 201]).toContain(res.status);
  return res.body as Resource;
}

async function post(resource: Resource): Promise<Resource> {
  const res = await request(t.app.http).post(`/fhir/${resource.resourceType}`).set('content-type', FHIR_JSON).send(resource);
  expect(res.status).toBe(201);
  return res.body as Resource;
}

function reading(patient: string, minute: number): Resource {
  return {
    resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] },
    subject: { reference: `Patient/${patient}` }, effectiveDateTime: new Date(Date.parse('2026-03-01T00:00:00Z') + minute * 60_000).toISOString(),
    valueQuantity: { value: 100 + minute, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
  };
}

/** The stored version as the repository reads it now, and what the integrity check says of it against its anchored root. */
async function proofOf(type: string, id: string): Promise<{ status: number; integrity: string; salted: boolean }> {
  const res = await request(t.app.http).get(`/fhir/${type}/${id}`);
  const version = t.app.ledger.store.get(type, id, res.body.meta?.versionId ?? '1');
  const check = res.status === 200 ? await t.app.ledger.checker.check(res.body as Resource) : undefined;
  return { status: res.status, integrity: check?.status ?? 'unread', salted: version !== undefined && !version.salt.equals(ZERO_SALT) };
}

describe('erasing a patient id a second time', () => {
  it('keeps the first erasure\'s record readable and proven, with its own salt, and overwrites only the re-created data\'s salts', async () => {
    const patient = 'erase-twice';
    await put({ resourceType: 'Patient', id: patient, name: [{ family: 'Twice' }] });
    for (let i = 0; i < 3; i++) await post(reading(patient, i));
    await t.app.ledger.anchorer.flush();

    const first = await t.app.erasePatient!(patient, 'ops@example (first)');
    // the Patient, its readings and the access log's records of writing them: one version each
    expect(first.resources).toBeGreaterThanOrEqual(4);
    expect(first.commitments).toBe(first.resources);
    // a record about the patient written while their key is erased (as an access log entry would be)
    const between = (await t.app.repository.create<AuditEvent>({
      resourceType: 'AuditEvent', type: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110110' }, recorded: new Date().toISOString(),
      source: { observer: { display: 'test' } }, outcome: '0', agent: [{ who: { display: 'test' }, requestor: true }],
      entity: [{ what: { reference: `Patient/${patient}` } }],
    })).resource.id!;
    await t.app.ledger.anchorer.flush();
    expect(await proofOf('AuditEvent', first.auditEvent)).toEqual({ status: 200, integrity: 'verified', salted: true });
    expect(await proofOf('AuditEvent', between)).toEqual({ status: 200, integrity: 'verified', salted: true });

    // the same id comes back with new data, and is erased again
    await put({ resourceType: 'Patient', id: patient, name: [{ family: 'Twice' }] });
    const again = (await post(reading(patient, 10))).id!;
    await t.app.ledger.anchorer.flush();
    const second = await t.app.erasePatient!(patient, 'ops@example (second)');
    expect(second.auditEvent).not.toBe(first.auditEvent);
    await t.app.ledger.anchorer.flush();

    // every erasure record (and the record written between them) reads and proves against its anchored root
    for (const id of [first.auditEvent, between, second.auditEvent]) {
      expect({ id, ...(await proofOf('AuditEvent', id)) }).toEqual({ id, status: 200, integrity: 'verified', salted: true });
    }
    // only what was written under the new key (the re-created Patient, its reading, their access
    // records); not the salts the first erasure overwrote, nor those of the records written since
    expect(second.resources).toBeGreaterThanOrEqual(2);
    expect(second.commitments).toBe(second.resources);
    const first1 = await request(t.app.http).get(`/fhir/AuditEvent/${first.auditEvent}`);
    expect(first1.body.outcomeDesc).toBe(`erasure: data key destroyed, ${first.resources} current resources unreadable; salts of ${first.commitments} commitments overwritten`);
    // both erasures stay in the patient's access log
    const log = await request(t.app.http).get('/fhir/AuditEvent').query({ patient, _count: '1000' });
    expect(log.body.entry.map((e: { resource: { id: string } }) => e.resource.id)).toEqual(expect.arrayContaining([first.auditEvent, between, second.auditEvent]));
    // the re-created data is gone, its salts overwritten
    expect((await request(t.app.http).get(`/fhir/Observation/${again}`)).status).toBe(410);
    expect(t.app.ledger.store.get('Observation', again, '1')!.salt.equals(ZERO_SALT)).toBe(true);
    expect(t.app.ledger.store.get('Patient', patient, '2')!.salt.equals(ZERO_SALT)).toBe(true);

    // a restart changes none of it
    await t.restart();
    for (const id of [first.auditEvent, between, second.auditEvent]) {
      expect({ id, ...(await proofOf('AuditEvent', id)) }).toEqual({ id, status: 200, integrity: 'verified', salted: true });
    }
  });
});

describe('an erasure that stopped after the data key was destroyed', () => {
  it('is finished by a repeat: the salts are overwritten then, and the repeat is recorded as finishing it', async () => {
    const patient = 'erase-stopped';
    await put({ resourceType: 'Patient', id: patient, name: [{ family: 'Stopped' }] });
    const obs = (await post(reading(patient, 1))).id!;
    await t.app.ledger.anchorer.flush();
    // the process dies between destroying the key and overwriting the salts
    const forget = jest.spyOn(t.app.ledger.repository, 'forgetUnreadableSalts').mockRejectedValueOnce(new Error('killed'));
    await expect(t.app.erasePatient!(patient, 'ops@example')).rejects.toThrow('killed');
    forget.mockRestore();
    expect((await request(t.app.http).get(`/fhir/Observation/${obs}`)).status).toBe(410);
    expect(t.app.ledger.store.get('Observation', obs, '1')!.salt.equals(ZERO_SALT)).toBe(false);

    const repeat = await t.app.erasePatient!(patient, 'ops@example');
    expect(repeat.finished).toBe(true);
    expect(repeat.commitments).toBeGreaterThanOrEqual(2); // the Patient and its reading at least
    expect(t.app.ledger.store.get('Observation', obs, '1')!.salt.equals(ZERO_SALT)).toBe(true);
    expect(t.app.ledger.store.get('Patient', patient, '1')!.salt.equals(ZERO_SALT)).toBe(true);
    await t.app.ledger.anchorer.flush();
    const record = await request(t.app.http).get(`/fhir/AuditEvent/${repeat.auditEvent}`);
    expect(record.body.outcomeDesc).toBe(`erasure finished: the data key had been destroyed by an erasure that stopped; salts of ${repeat.commitments} commitments overwritten`);
    expect(await proofOf('AuditEvent', repeat.auditEvent)).toEqual({ status: 200, integrity: 'verified', salted: true });

    // with nothing left to do, a further repeat changes nothing (the adapter's ERR_GONE, which the CLI reports as already erased)
    await expect(t.app.erasePatient!(patient, 'ops@example')).rejects.toMatchObject({ code: 'ERR_GONE' });
  });
});
