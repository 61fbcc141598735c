/**
 * Black-box findings on `POST /fhir/Consent` (src/consent/service.ts, grant):
 * - the status it was sent was ignored: a Consent sent as `draft` ("not ready to be acted upon"),
 *   `rejected`, `inactive` or `entered-in-error` was recorded as an active grant on chain and the
 *   grantee could read the data. It is now 422 and nothing is recorded;
 * - a bound given as a date-time without an offset (`2026-01-14T10:00:00`, which FHIR forbids) was
 *   taken, and read in the server's own time zone. It is now 422 naming the bound (terms.ts,
 *   unzonedBounds).
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, Consent } from '@medplum/fhirtypes';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { consentOf, DAY, ingest, patientToken, person, practitionerToken, registerIdentity, sparseTrace } from './consent-helpers.js';

describe('a Consent is granted only when sent active', () => {
  let t: TestApp;
  let ana: string;
  let doctor: string;
  const post = (body: Consent) => request(t.app.http).post('/fhir/Consent').set('Authorization', `Bearer ${patientToken(t.app, ana)}`)
    .set('Content-Type', 'application/fhir+json').send(body);
  const consents = async (): Promise<number> => (await t.app.repository.search({ resourceType: 'Consent', count: 100, offset: 0 })).resources.length;
  const doctorSees = async (): Promise<number> => {
    const res = await request(t.app.http).get(`/fhir/Observation?patient=${ana}`).set('X-Purpose-Of-Use', 'TREAT')
      .set('Authorization', `Bearer ${practitionerToken(t.app, doctor, undefined, ['openid', 'fhirUser', 'user/*.rs'])}`);
    expect(res.status).toBe(200);
    return ((res.body as Bundle).entry ?? []).filter((e) => e.resource?.resourceType === 'Observation').length;
  };
  const spec = () => ({ patient: ana, actor: `Practitioner/${doctor}`, accessTo: Date.now() + DAY, dataFrom: Date.now() - 5 * DAY, dataTo: Date.now() });

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
    ana = await person(t.app, 'Patient', 'Rivera');
    doctor = await person(t.app, 'Practitioner', 'Osei');
    await registerIdentity(t.app, `Practitioner/${doctor}`);
    await ingest(t.app, ana, sparseTrace(1));
  }, 60_000);

  afterAll(async () => {
    await t?.close();
  });

  test.each(['draft', 'rejected', 'inactive', 'entered-in-error'] as const)('status %s: 422, nothing recorded, nothing shown', async (status) => {
    const before = await consents();
    const res = await post({ ...consentOf(spec()), status });
    expect(res.status).toBe(422);
    expect(res.body.resourceType).toBe('OperationOutcome');
    expect(JSON.stringify(res.body)).toContain('Consent.status');
    expect(await consents()).toBe(before);
    expect(await doctorSees()).toBe(0);
  });

  test.each([['dataPeriod', 'start'], ['dataPeriod', 'end'], ['period', 'end']] as const)('provision.%s.%s without an offset: 422 naming it, nothing recorded', async (field, bound) => {
    const before = await consents();
    const body = consentOf(spec());
    body.provision![field]![bound] = bound === 'start' ? '2026-01-14T10:00:00' : `${new Date(Date.now() + DAY).toISOString().slice(0, 10)}T10:00:00`;
    const res = await post(body);
    expect(res.status).toBe(422);
    expect(JSON.stringify(res.body)).toContain(`Consent.provision.${field}.${bound}`);
    expect(await consents()).toBe(before);
    expect(await doctorSees()).toBe(0);
  });

  test('status active is granted (the refusals above are about the status alone)', async () => {
    const res = await post(consentOf(spec()));
    expect(res.status).toBe(201);
    expect(await doctorSees()).toBeGreaterThan(0);
  });
});
