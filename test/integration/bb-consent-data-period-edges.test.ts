/**
 * Black-box finding: the chain keeps a grant's bounds in whole seconds, and the decision point used
 * them as they are. A data period ending on a date ("last day included whole",
 * `glucoguard consent grant --data-to 2026-01-14`) then ended at 23:59:59.000, withholding a
 * reading taken in that day's last second; a start at .500 began half a second early, showing a
 * reading taken before it. The Consent's exact instants now decide (src/consent/decisions.ts,
 * grantTimes), on read and search alike.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, Consent, Observation } from '@medplum/fhirtypes';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { consentOf, DAY, patientToken, person, practitionerToken, registerIdentity } from './consent-helpers.js';

const CODE = { coding: [{ system: 'http://loinc.org', code: '99504-3' }] };
/** Reading time → whether the grantee may see it. */
const READINGS: [string, boolean][] = [
  ['2025-03-01T00:00:00.200Z', false], // before a start of .500
  ['2025-03-01T00:00:00.500Z', true], // the start itself
  ['2025-03-10T23:59:59.500Z', true], // the last second of the last day
  ['2025-03-10T23:59:59.999Z', true], // its last millisecond
  ['2025-03-11T00:00:00.000Z', false], // the next day
];

describe('a grant’s data period holds to the millisecond', () => {
  let t: TestApp;
  let token: string;
  let ben: string;
  const ids = new Map<string, string>();
  const get = (url: string) => request(t.app.http).get(url).set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT');

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
    ben = await person(t.app, 'Patient', 'Okafor');
    const doc = await person(t.app, 'Practitioner', 'Osei');
    await registerIdentity(t.app, `Practitioner/${doc}`);
    for (const [at] of READINGS) {
      const stored = (await t.app.repository.create({
        resourceType: 'Observation', status: 'final', code: CODE, subject: { reference: `Patient/${ben}` }, effectiveDateTime: at,
        valueQuantity: { value: 120, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
      } as Observation)).resource;
      ids.set(at, stored.id!);
    }
    const consent: Consent = consentOf({ patient: ben, actor: `Practitioner/${doc}`, accessTo: Date.now() + DAY, dataFrom: 0, dataTo: 0, classes: ['Observation'] });
    // as `glucoguard consent grant --data-to 2025-03-10` writes it: the end a date, included whole
    consent.provision!.dataPeriod = { start: '2025-03-01T00:00:00.500Z', end: '2025-03-10' };
    const res = await request(t.app.http).post('/fhir/Consent').set('Authorization', `Bearer ${patientToken(t.app, ben)}`)
      .set('Content-Type', 'application/fhir+json').send(consent);
    expect(res.status).toBe(201);
    token = practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs']);
  }, 60_000);

  afterAll(async () => {
    await t?.close();
  });

  test.each(READINGS)('reading at %s: visible %s, by id and in a search', async (at, visible) => {
    const read = await get(`/fhir/Observation/${ids.get(at)}`);
    expect(read.status).toBe(visible ? 200 : 404);
    const search = await get(`/fhir/Observation?patient=${ben}&_count=50`);
    expect(search.status).toBe(200);
    const found = ((search.body as Bundle).entry ?? []).map((e) => e.resource!.id);
    expect(found.includes(ids.get(at))).toBe(visible);
  });
});
