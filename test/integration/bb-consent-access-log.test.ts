/**
 * Black-box findings on the access log a patient reads (`GET /fhir/AuditEvent?patient=…`):
 * - an access naming two patients (a clinician's `Observation?patient=A,B`) was one AuditEvent
 *   naming both, which consent then withheld from both patients: neither saw it in their log
 *   (`glucoguard audit` did). It is now one event per patient, each with that patient's grants only
 *   (src/audit/recorder.ts, eventsOf), the other patients left out of its query;
 * - another patient's attempt on a patient's data was withheld from that patient's log, because
 *   the requester (agent) is a patient too. An AuditEvent is now about its Patient entities, not its
 *   agents (src/consent/decision.ts, auditSubjects);
 * - a patient reading their own log, when it held events withheld from them, was recorded as an
 *   access to the other patients those events named: each reading cascaded into another patient's
 *   log (and was withheld there too). It now names no one else (src/consent/policy.ts, guard);
 * - a create (a patient's `POST /fhir/Consent`) did not name the resource it made; it now does, from
 *   the Location, as a conditional write did (src/audit/recorder.ts);
 * - the entries of a batch share its access context, and the consent notes gathered over them: an
 *   entry's event named the patients of the entries before it (a clinician's search of Ben's
 *   Devices was in Ana's log). Each entry's event now takes its own notes (takeConsentNotes).
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { AuditEvent, Bundle } from '@medplum/fhirtypes';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { DAY, grant, ingest, patientToken, person, practitionerToken, registerIdentity, sparseTrace } from './consent-helpers.js';

describe('a patient’s access log', () => {
  let t: TestApp;
  let ana: string;
  let ben: string;
  let doctor: string;
  const grantIds = new Map<string, string>();

  const logOf = async (patient: string): Promise<AuditEvent[]> => {
    const res = await request(t.app.http).get(`/fhir/AuditEvent?patient=${patient}&_count=1000`).set('Authorization', `Bearer ${patientToken(t.app, patient)}`);
    expect(res.status).toBe(200);
    return ((res.body as Bundle).entry ?? []).map((e) => e.resource!).filter((r): r is AuditEvent => r.resourceType === 'AuditEvent');
  };
  const queryOf = (e: AuditEvent): string | undefined => {
    const q = e.entity?.find((x) => x.query)?.query;
    return q === undefined ? undefined : Buffer.from(q, 'base64').toString('utf8');
  };
  const subjectsOf = (e: AuditEvent): string[] => (e.entity ?? []).filter((x) => x.role?.code === '1').map((x) => x.what!.reference!);
  const grantsOf = (e: AuditEvent): string[] => (e.entity ?? []).flatMap((x) => (x.what?.identifier?.system === 'urn:glucoguard:consent-grant' ? [x.what.identifier.value!] : []));

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
    ana = await person(t.app, 'Patient', 'Rivera');
    ben = await person(t.app, 'Patient', 'Okafor');
    doctor = await person(t.app, 'Practitioner', 'Osei');
    await registerIdentity(t.app, `Practitioner/${doctor}`);
    const now = Date.now();
    for (const p of [ana, ben]) {
      await ingest(t.app, p, sparseTrace(1));
      const res = await grant(t.app, { patient: p, actor: `Practitioner/${doctor}`, accessTo: now + DAY, dataFrom: now - 5 * DAY, dataTo: now });
      expect(res.status).toBe(201);
      grantIds.set(p, (res.body as { identifier: { system: string; value: string }[] }).identifier.find((i) => i.system === 'urn:glucoguard:consent-grant')!.value);
    }
  }, 90_000);

  afterAll(async () => {
    await t?.close();
  });

  test('a clinician’s search of two patients is in each one’s log, naming that patient and their grant only', async () => {
    const token = practitionerToken(t.app, doctor, undefined, ['openid', 'fhirUser', 'user/*.rs']);
    const res = await request(t.app.http).get(`/fhir/Observation?patient=${ana},${ben}&_count=500`).set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT');
    expect(res.status).toBe(200);
    expect(((res.body as Bundle).entry ?? []).length).toBeGreaterThan(0);
    for (const [me, other] of [[ana, ben], [ben, ana]] as const) {
      const mine = (await logOf(me)).filter((e) => queryOf(e) === `Observation?patient=${me}&_count=500`);
      expect(mine).toHaveLength(1);
      expect(queryOf(mine[0]!)).not.toContain(other);
      const event = mine[0]!;
      expect(event.agent[0]!.who?.reference).toBe(`Practitioner/${doctor}`);
      expect(subjectsOf(event)).toEqual([`Patient/${me}`]);
      expect(grantsOf(event)).toEqual([grantIds.get(me)]);
      expect(JSON.stringify(event)).not.toContain(grantIds.get(other)!);
    }
  });

  test('the copy of a search by ids (`Patient?_id=A,B`) reads “(another patient)” for the others', async () => {
    const token = practitionerToken(t.app, doctor, undefined, ['openid', 'fhirUser', 'user/*.rs']);
    const res = await request(t.app.http).get(`/fhir/Patient?_id=${ana},${ben}`).set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT');
    expect(((res.body as Bundle).entry ?? []).filter((e) => e.resource?.resourceType === 'Patient')).toHaveLength(2);
    const mine = (await logOf(ana)).filter((e) => queryOf(e)?.startsWith('Patient?_id='));
    expect(mine.map(queryOf)).toEqual([`Patient?_id=${ana},(another patient)`]);
  });

  test('a batch’s entries are each in the log of the patient they were about, not of an earlier entry’s', async () => {
    const token = practitionerToken(t.app, doctor, undefined, ['openid', 'fhirUser', 'user/*.rs']);
    const res = await request(t.app.http).post('/fhir').set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT')
      .set('Content-Type', 'application/fhir+json').send({ resourceType: 'Bundle', type: 'batch', entry: [
        { request: { method: 'GET', url: `Observation?patient=${ana}&_count=7` } },
        { request: { method: 'GET', url: `Device?patient=${ben}&_count=7` } },
      ] });
    expect(res.status).toBe(200);
    const entryEvents = async (p: string) => (await logOf(p)).filter((e) => /_count=7$/.test(queryOf(e) ?? '')).map(queryOf);
    expect(await entryEvents(ana)).toEqual([`Observation?patient=${ana}&_count=7`]);
    expect(await entryEvents(ben)).toEqual([`Device?patient=${ben}&_count=7`]);
  });

  test('another patient’s attempt on a patient’s data is in that patient’s log', async () => {
    const res = await request(t.app.http).get(`/fhir/Observation?patient=${ana}`).set('Authorization', `Bearer ${patientToken(t.app, ben)}`);
    expect(res.status).toBe(200);
    expect(((res.body as Bundle).entry ?? []).filter((e) => e.resource?.resourceType === 'Observation')).toEqual([]);
    const attempts = (await logOf(ana)).filter((e) => e.agent[0]!.who?.reference === `Patient/${ben}`);
    expect(attempts.map(queryOf)).toEqual([`Observation?patient=${ana}`]);
  });

  test('a patient’s grant (a create) names the Consent it made', async () => {
    const consents = (await t.app.repository.search({ resourceType: 'Consent', count: 10, offset: 0 })).resources;
    const anasConsent = consents.find((c) => (c as { patient?: { reference?: string } }).patient?.reference === `Patient/${ana}`)!;
    const creates = (await logOf(ana)).filter((e) => e.subtype?.[0]?.code === 'create' && e.agent[0]!.who?.reference === `Patient/${ana}`);
    // Her CGM import is a create in her log too since session 25 (it wrote no AuditEvent before),
    // about her and naming no one resource; every create naming one is her grant's.
    const named = creates.map((e) => e.entity?.find((x) => x.role?.code === '4')?.what?.reference);
    expect(named.filter((r) => r !== undefined)).toEqual([`Consent/${anasConsent.id}`]);
    expect(creates.filter((e, i) => named[i] === undefined).every((e) => e.entity?.some((x) => x.what?.reference === `Patient/${ana}`))).toBe(true);
  });

  test('reading one’s own log is not recorded in anyone else’s', async () => {
    await logOf(ben);
    await logOf(ben);
    const anaLog = await logOf(ana);
    expect(anaLog.filter((e) => e.agent[0]!.who?.reference === `Patient/${ben}` && queryOf(e)?.startsWith('AuditEvent'))).toEqual([]);
    // and the stored log agrees: no event of Ben's reading names Ana
    const stored = (await t.app.repository.search({ resourceType: 'AuditEvent', count: 5000, offset: 0 })).resources as AuditEvent[];
    const benReading = stored.filter((e) => e.agent[0]!.who?.reference === `Patient/${ben}` && queryOf(e)?.startsWith('AuditEvent'));
    expect(benReading.length).toBeGreaterThan(0);
    for (const e of benReading) expect(subjectsOf(e)).toEqual([`Patient/${ben}`]);
  });
});
