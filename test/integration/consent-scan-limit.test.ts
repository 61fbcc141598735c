/**
 * The scan limit also bounds what the guards withhold: a limited requester's search whose matches
 * are mostly withheld (here by a code-limited grant beside an unlimited one, so the search cannot be
 * narrowed to the granted codes) is re-paged past them only up to GLUCOGUARD_SEARCH_SCAN_LIMIT, then
 * refused with the same too-costly words as non-matches get, so the refusal does not say which.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, Observation } from '@medplum/fhirtypes';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { DAY, LOINC_MGDL, codeLimitedAndWholeGrants } from './consent-helpers.js';

const now = Date.now();
let t: TestApp;
let ana: string;
let ben: string;
let token: string;

const reading = (patient: string, at: number, code: string): Observation => ({
  resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code }] },
  subject: { reference: `Patient/${patient}` }, effectiveDateTime: new Date(at).toISOString(),
  valueQuantity: { value: 120, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
});
const get = (query: Record<string, string>) => request(t.app.http).get('/fhir/Observation').query(query)
  .set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT');

beforeAll(async () => {
  t = await startTestApp({ GLUCOGUARD_AUTH: 'on', GLUCOGUARD_SEARCH_SCAN_LIMIT: '5' });
  ({ ana, ben, token } = await codeLimitedAndWholeGrants(t.app, now));
  // ana: 12 readings of a code she did not grant, 2 she did; ben: 3, all granted
  for (let i = 0; i < 12; i++) await t.app.repository.create(reading(ana, now - DAY - i * 60_000, '2339-0'));
  for (let i = 0; i < 2; i++) await t.app.repository.create(reading(ana, now - 2 * DAY - i * 60_000, '99504-3'));
  for (let i = 0; i < 3; i++) await t.app.repository.create(reading(ben, now - DAY - i * 60_000, '99504-3'));
}, 60_000);

afterAll(async () => {
  await t?.close();
});

describe('the scan limit and withheld matches (limit 5 here)', () => {
  test('12 withheld readings are more than the limit: 400 too-costly, in the words non-matches get', async () => {
    const res = await get({ _count: '50' });
    expect(res.status).toBe(400);
    expect(res.body.resourceType).toBe('OperationOutcome');
    expect(res.body.issue[0].code).toBe('too-costly');
    expect(res.body.issue[0].diagnostics).toMatch(/^This search would examine more than 5 Observation resources that do not make up the page: narrow it/);
    expect(JSON.stringify(res.body)).not.toContain('2339-0');
  });

  test('narrowed to the granted code or to the unlimited patient, the same data is answered', async () => {
    const cgm = await get({ code: LOINC_MGDL, _count: '50' });
    expect(cgm.status).toBe(200);
    expect((cgm.body as Bundle).entry).toHaveLength(5);
    const bens = await get({ patient: `Patient/${ben}`, _count: '50' });
    expect(bens.status).toBe(200);
    expect((bens.body as Bundle).entry).toHaveLength(3);
  });
});
