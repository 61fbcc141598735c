/**
 * A grant's data period holds the same way on every path (read, vread, instance and type history,
 * search, `$everything`): a resource is shown only when its clinically relevant time lies wholly
 * inside the period (src/consent/clinical-time.ts). A span reaching past either end, a date whose
 * day reaches past it, a Period open at one end, a Timing, or a reading with no `effective[x]` at
 * all (only `issued`) is withheld everywhere — never readable by id while a search hides it.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, Resource } from '@medplum/fhirtypes';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { DAY, grant, person, practitionerToken, registerIdentity } from './consent-helpers.js';

/** The granted data period: fixed UTC instants, so that day-precision dates fall where intended. */
const FROM = Date.parse('2025-03-01T00:00:00.000Z');
const TO = Date.parse('2025-03-10T12:00:00.000Z');
const iso = (t: number): string => new Date(t).toISOString();
const CODE = { coding: [{ system: 'http://loinc.org', code: '99504-3' }] };

interface Case {
  name: string;
  visible: boolean;
  resource: (patient: string) => Resource;
}

const observation = (time: object) => (patient: string): Resource =>
  ({ resourceType: 'Observation', status: 'final', code: CODE, subject: { reference: `Patient/${patient}` }, ...time }) as Resource;
const report = (time: object) => (patient: string): Resource =>
  ({ resourceType: 'DiagnosticReport', status: 'final', code: CODE, subject: { reference: `Patient/${patient}` }, ...time }) as Resource;
const administration = (time: object) => (patient: string): Resource => ({
  resourceType: 'MedicationAdministration', status: 'completed', subject: { reference: `Patient/${patient}` },
  medicationCodeableConcept: { coding: [{ system: 'http://www.nlm.nih.gov/research/umls/rxnorm', code: '253182' }] }, ...time,
}) as Resource;
const order = (time: object) => (patient: string): Resource =>
  ({ resourceType: 'ServiceRequest', status: 'active', intent: 'order', code: CODE, subject: { reference: `Patient/${patient}` }, ...time }) as Resource;

const CASES: Case[] = [
  { name: 'reading at an instant inside', visible: true, resource: observation({ effectiveDateTime: iso(FROM + DAY) }) },
  { name: 'reading over a period inside', visible: true, resource: observation({ effectivePeriod: { start: iso(FROM + DAY), end: iso(FROM + 2 * DAY) } }) },
  { name: 'reading on a day inside (date only)', visible: true, resource: observation({ effectiveDateTime: '2025-03-05' }) },
  { name: 'summary whose period reaches past the end', visible: false, resource: observation({ effectivePeriod: { start: iso(TO - 3_600_000), end: iso(TO + DAY) } }) },
  { name: 'summary whose period starts before the start', visible: false, resource: observation({ effectivePeriod: { start: iso(FROM - DAY), end: iso(FROM + DAY) } }) },
  { name: 'reading with only a period end', visible: false, resource: observation({ effectivePeriod: { end: iso(FROM + DAY) } }) },
  { name: 'reading with only issued', visible: false, resource: observation({ issued: iso(FROM + DAY) }) },
  { name: 'reading with a Timing', visible: false, resource: observation({ effectiveTiming: { event: [iso(FROM + DAY)] } }) },
  { name: 'reading on the last day, which runs past the end (date only)', visible: false, resource: observation({ effectiveDateTime: '2025-03-10' }) },
  { name: 'reading in the month (month only)', visible: false, resource: observation({ effectiveDateTime: '2025-03' }) },
  { name: 'report over a period inside', visible: true, resource: report({ effectivePeriod: { start: iso(FROM + DAY), end: iso(FROM + 3 * DAY) } }) },
  { name: 'report with only issued', visible: false, resource: report({ issued: iso(FROM + DAY) }) },
  { name: 'administration inside', visible: true, resource: administration({ effectiveDateTime: iso(FROM + DAY) }) },
  { name: 'administration over a period across the start', visible: false, resource: administration({ effectivePeriod: { start: iso(FROM - DAY), end: iso(FROM + DAY) } }) },
  { name: 'order authored and due inside', visible: true, resource: order({ authoredOn: iso(FROM + DAY), occurrenceDateTime: iso(FROM + 2 * DAY) }) },
  { name: 'order authored inside, due after the end', visible: false, resource: order({ authoredOn: iso(FROM + DAY), occurrenceDateTime: iso(TO + DAY) }) },
  { name: 'order with an open occurrence period', visible: false, resource: order({ authoredOn: iso(FROM + DAY), occurrencePeriod: { start: iso(FROM + DAY) } }) },
  { name: 'order with no time at all', visible: false, resource: order({}) },
];

describe('the data period on every path', () => {
  let t: TestApp;
  let ben: string;
  let token: string;
  const ids = new Map<string, { type: string; id: string }>();
  const get = (url: string) => request(t.app.http).get(url).set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT');
  const idsIn = (b: Bundle): string[] => (b.entry ?? []).filter((e) => e.resource && e.resource.resourceType !== 'OperationOutcome').map((e) => e.resource!.id!);

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
    ben = await person(t.app, 'Patient', 'Okafor');
    const doc = await person(t.app, 'Practitioner', 'Osei');
    await registerIdentity(t.app, `Practitioner/${doc}`);
    for (const c of CASES) {
      const stored = (await t.app.repository.create(c.resource(ben))).resource;
      ids.set(c.name, { type: stored.resourceType, id: stored.id! });
    }
    const res = await grant(t.app, {
      patient: ben, actor: `Practitioner/${doc}`, accessTo: Date.now() + DAY, dataFrom: FROM, dataTo: TO,
      classes: ['Patient', 'Observation', 'DiagnosticReport', 'MedicationAdministration', 'ServiceRequest'],
    });
    expect(res.status).toBe(201);
    token = practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs']);
  }, 120_000);
  afterAll(async () => {
    await t?.close();
  });

  test.each(CASES.map((c) => [c.name, c.visible] as const))('%s: shown %s by read, vread and instance history alike', async (name, visible) => {
    const { type, id } = ids.get(name)!;
    expect((await get(`/fhir/${type}/${id}`)).status).toBe(visible ? 200 : 404);
    expect((await get(`/fhir/${type}/${id}/_history/1`)).status).toBe(visible ? 200 : 404);
    const history = await get(`/fhir/${type}/${id}/_history`);
    expect(visible ? idsIn(history.body) : history.status).toEqual(visible ? [id] : 404);
  });

  test('searches, type history and $everything show exactly what a read shows', async () => {
    const expected = CASES.filter((c) => c.visible).map((c) => ids.get(c.name)!.id).sort();
    const searched: string[] = [];
    const history: string[] = [];
    for (const type of ['Observation', 'DiagnosticReport', 'MedicationAdministration', 'ServiceRequest']) {
      const byPatient = await get(`/fhir/${type}?patient=Patient/${ben}&_count=100`);
      const unscoped = await get(`/fhir/${type}?_count=100`);
      expect([byPatient.status, unscoped.status]).toEqual([200, 200]);
      expect(idsIn(unscoped.body).sort()).toEqual(idsIn(byPatient.body).sort());
      searched.push(...idsIn(byPatient.body));
      const h = await get(`/fhir/${type}/_history?_count=100`);
      history.push(...idsIn(h.body));
    }
    expect(searched.sort()).toEqual(expected);
    expect(history.sort()).toEqual(expected);
    const everything = await get(`/fhir/Patient/${ben}/$everything?_count=100`);
    expect(everything.status).toBe(200);
    expect(idsIn(everything.body).filter((id) => id !== ben).sort()).toEqual(expected);
  });
});
