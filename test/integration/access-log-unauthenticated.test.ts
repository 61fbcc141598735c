/**
 * Requests refused before anyone was identified (401: no token, or a forged, expired or revoked
 * one) are in the access log too: the patient they name reads "no valid access token" in her log.
 * Anyone can send them, so at most one event per named patient (and one naming none) per minute is
 * written; the rest only reach the request log. The event keeps no query text.
 */
import { afterAll, beforeAll, expect, test } from '@jest/globals';
import type { AuditEvent, Bundle } from '@medplum/fhirtypes';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { patientToken, person } from './consent-helpers.js';

let t: TestApp;
let ana: string;
beforeAll(async () => {
  t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
  ana = await person(t.app, 'Patient', 'Rivera');
}, 60_000);
afterAll(async () => {
  await t?.close();
});

const refusedEvents = async (): Promise<AuditEvent[]> => {
  await t.app.consent.audit.flush();
  const all = (await t.app.repository.search({ resourceType: 'AuditEvent', count: 1000, offset: 0 })).resources as AuditEvent[];
  return all.filter((e) => e.agent?.some((a) => a.who?.display === 'no valid access token'));
};

test('a request without a valid token naming a patient is in her log, once a minute however often it comes', async () => {
  for (const auth of [undefined, 'Bearer forged.token.value', 'Basic dXNlcjpwdw==']) {
    const req = request(t.app.http).get(`/fhir/Observation?patient=${ana}&code=99504-3`);
    const res = auth ? await req.set('Authorization', auth) : await req;
    expect(res.status).toBe(401);
  }
  expect((await request(t.app.http).get(`/fhir/Patient/${ana}`)).status).toBe(401);
  const events = await refusedEvents();
  expect(events).toHaveLength(1);
  const [event] = events;
  expect(event).toMatchObject({ outcome: '4', outcomeDesc: 'HTTP 401: no valid access token' });
  expect(event!.entity?.map((e) => e.what?.reference)).toContain(`Patient/${ana}`);
  expect(JSON.stringify(event)).not.toContain('99504-3'); // no query text from someone unidentified

  // the patient reads it in her own log
  const log = await request(t.app.http).get(`/fhir/AuditEvent?patient=${ana}&_count=1000`).set('Authorization', `Bearer ${patientToken(t.app, ana)}`);
  expect(log.status).toBe(200);
  expect(((log.body as Bundle).entry ?? []).some((e) => e.resource?.id === event!.id)).toBe(true);

  // a request naming no patient: one event of its own; made-up ids write at most one each per minute
  expect((await request(t.app.http).get('/fhir/Device')).status).toBe(401);
  expect((await request(t.app.http).get('/fhir/Device')).status).toBe(401);
  expect((await request(t.app.http).get('/fhir/metadata')).status).toBe(200); // public: nothing to log
  expect((await request(t.app.http).get('/fhir/Patient/%E0%A4%A')).status).toBe(401); // a path that does not decode: still 401, recording it changes nothing
  const after = await refusedEvents();
  expect(after).toHaveLength(2); // the requests naming no patient (an undecodable id names none) share one event a minute
  expect(after.filter((e) => !e.entity?.some((x) => x.what?.reference?.startsWith('Patient/')))).toHaveLength(1);
});
