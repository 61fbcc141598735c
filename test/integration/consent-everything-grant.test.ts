/**
 * A grant of every type ("everything in my record": no provision.class, no provision.code) covers
 * the patient's timeless records too — the Patient resource, so the clinician's report can name whom
 * it is about — but not the patient's Consents (their grants to others). A grant that lists types
 * covers the Patient only when it names it. Found by exploratory testing: the clinician viewer
 * showed nothing for the widest grant, because `$cgm-summary` reads the Patient first.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle } from '@medplum/fhirtypes';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { DAY, grant, ingest, person, practitionerToken, registerIdentity, sparseTrace } from './consent-helpers.js';

describe('a grant of every type', () => {
  let t: TestApp;
  let ana: string;
  let everything: string;
  let readingsOnly: string;
  const now = Date.now();
  const trace = sparseTrace(3, 120);

  const get = (url: string, doc: string) => request(t.app.http).get(url)
    .set('Authorization', `Bearer ${practitionerToken(t.app, doc)}`).set('X-Purpose-Of-Use', 'TREAT');

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
    ana = await person(t.app, 'Patient', 'Rivera');
    everything = await person(t.app, 'Practitioner', 'Osei');
    readingsOnly = await person(t.app, 'Practitioner', 'Lund');
    for (const doc of [everything, readingsOnly]) await registerIdentity(t.app, `Practitioner/${doc}`);
    await ingest(t.app, ana, trace);
    expect((await grant(t.app, { patient: ana, actor: `Practitioner/${everything}`, accessTo: now + DAY, dataFrom: now - 10 * DAY, dataTo: now, purposes: ['TREAT'] })).status).toBe(201);
    expect((await grant(t.app, { patient: ana, actor: `Practitioner/${readingsOnly}`, accessTo: now + DAY, dataFrom: now - 10 * DAY, dataTo: now, purposes: ['TREAT'], classes: ['Observation'] })).status).toBe(201);
  }, 120_000);
  afterAll(async () => {
    await t?.close();
  });

  test('covers the Patient record, so the CGM report is served', async () => {
    const patient = await get(`/fhir/Patient/${ana}`, everything);
    expect(patient.status).toBe(200);
    expect(patient.body.name[0].family).toBe('Rivera');
    const summary = await get(`/fhir/Patient/${ana}/$cgm-summary`, everything);
    expect(summary.status).toBe(200);
    expect(JSON.stringify(summary.body)).toContain('cgm-summary');
  });

  test("does not cover the patient's Consents (whom else they share with)", async () => {
    const consents = await get(`/fhir/Consent?patient=${ana}`, everything);
    expect(consents.status).toBe(200);
    expect((consents.body as Bundle).entry?.filter((e) => e.search?.mode === 'match') ?? []).toEqual([]);
  });

  test('without a purpose of use a grantee sees no patient data, and is told why (searches, history, reads); with one, no such note', async () => {
    const token = practitionerToken(t.app, everything);
    const bare = (url: string, purpose?: string) => {
      const r = request(t.app.http).get(url).set('Authorization', `Bearer ${token}`);
      return purpose === undefined ? r : r.set('X-Purpose-Of-Use', purpose);
    };
    const note = /No purpose of use was stated/;
    const search = await bare(`/fhir/Observation?patient=${ana}`);
    expect(search.status).toBe(200);
    const entries = (search.body as Bundle).entry ?? [];
    expect(entries.filter((e) => e.search?.mode === 'match')).toEqual([]);
    expect(JSON.stringify(entries.filter((e) => e.search?.mode === 'outcome'))).toMatch(note);
    const read = await bare(`/fhir/Patient/${ana}`);
    expect(read.status).toBe(404);
    expect(JSON.stringify(read.body)).toMatch(note);
    // the same 404, note included, for an id never stored: the note tells nothing about the data
    const never = await bare('/fhir/Patient/never-stored');
    expect(never.body).toEqual(read.body);
    expect(JSON.stringify((await bare('/fhir/Observation/_history')).body)).toMatch(note);
    const unreadable = await bare(`/fhir/Observation?patient=${ana}`, 'treatment please');
    expect(JSON.stringify(unreadable.body)).toMatch(/not a purpose-of-use code/);
    const stated = await bare(`/fhir/Observation?patient=${ana}`, 'TREAT');
    expect((stated.body as Bundle).entry!.some((e) => e.search?.mode === 'match')).toBe(true);
    expect(JSON.stringify(stated.body)).not.toMatch(/purpose of use was stated|purpose-of-use code/);
  });

  test('a grant listing types covers the Patient only when it names it', async () => {
    expect((await get(`/fhir/Patient/${ana}`, readingsOnly)).status).toBe(404);
    const readings = await get(`/fhir/Observation?patient=${ana}&_count=1000`, readingsOnly);
    expect(readings.status).toBe(200);
    expect((readings.body as Bundle).entry!.length).toBeGreaterThan(0);
  });
});
