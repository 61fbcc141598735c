/**
 * Black-box finding: a grantee whose grants are all limited to codes searched a type that has no
 * `code` search parameter (`AuditEvent?patient=…`, also Device and Consent) and got 400 "Unsupported search parameter for
 * AuditEvent: code" — a parameter it never sent, added by the consent narrowing, which also told it
 * that its grant is code-limited. Such a search is now answered like any other: the guards decide
 * each resource (src/consent/policy.ts, narrowSearch), so it finds nothing it was not granted.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle } from '@medplum/fhirtypes';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { DAY, grant, ingest, LOINC_MGDL, patientToken, person, practitionerToken, registerIdentity, sparseTrace } from './consent-helpers.js';

describe('a code-limited grantee searching a type without a code parameter', () => {
  let t: TestApp;
  let ana: string;
  let token: string;
  const get = (url: string) => request(t.app.http).get(url).set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT');
  const resourcesOf = (b: Bundle) => (b.entry ?? []).map((e) => e.resource!).filter((r) => r.resourceType !== 'OperationOutcome');

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
    ana = await person(t.app, 'Patient', 'Rivera');
    const doc = await person(t.app, 'Practitioner', 'Osei');
    await registerIdentity(t.app, `Practitioner/${doc}`);
    await ingest(t.app, ana, sparseTrace(2));
    const now = Date.now();
    const res = await grant(t.app, { patient: ana, actor: `Practitioner/${doc}`, accessTo: now + DAY, dataFrom: now - 10 * DAY, dataTo: now, codes: [LOINC_MGDL] });
    expect(res.status).toBe(201);
    token = practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs']);
    // Ana reads her own log once, so it holds events (the grantee's search must still find none)
    expect((await request(t.app.http).get(`/fhir/AuditEvent?patient=${ana}`).set('Authorization', `Bearer ${patientToken(t.app, ana)}`)).status).toBe(200);
  }, 60_000);

  afterAll(async () => {
    await t?.close();
  });

  test.each(['AuditEvent', 'Device', 'Consent'])('%s?patient=… is an empty searchset, not a 400 naming `code`', async (type) => {
    const res = await get(`/fhir/${type}?patient=${ana}`);
    expect(res.status).toBe(200);
    expect(JSON.stringify(res.body)).not.toContain('code');
    expect(resourcesOf(res.body as Bundle)).toEqual([]);
  });

  test('the granted readings are still found, and only those', async () => {
    const res = await get(`/fhir/Observation?patient=${ana}&_count=200`);
    expect(res.status).toBe(200);
    const found = resourcesOf(res.body as Bundle);
    expect(found.length).toBeGreaterThan(0);
    for (const r of found) expect((r as { code: { coding: { code: string }[] } }).code.coding[0]!.code).toBe('99504-3');
  });
});
