/**
 * A revocation takes access away before the chain confirms it: once the patient's signed revocation
 * is in hand the grant is withdrawn on every replica (KV mark + invalidation), while the on-chain
 * grant is still unrevoked; the later confirmation changes nothing for the requester.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, Consent } from '@medplum/fhirtypes';
import request from 'supertest';
import { GRANT_ID_SYSTEM } from '../../src/consent/terms.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { DAY, grant, person, practitionerToken, registerIdentity } from './consent-helpers.js';

describe('revocation before chain confirmation', () => {
  let t: TestApp;
  let ana: string;
  let doc: string;
  const now = Date.now();

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
    ana = await person(t.app, 'Patient', 'Rivera');
    doc = await person(t.app, 'Practitioner', 'Osei');
    await registerIdentity(t.app, `Practitioner/${doc}`);
    await t.app.repository.create({
      resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] },
      subject: { reference: `Patient/${ana}` }, effectiveDateTime: new Date(now - DAY).toISOString(),
      valueQuantity: { value: 120, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
    });
  });
  afterAll(async () => {
    await t?.close();
  });

  const readings = async (): Promise<number> => {
    const res = await request(t.app.http).get(`/fhir/Observation?patient=Patient/${ana}`)
      .set('Authorization', `Bearer ${practitionerToken(t.app, doc)}`).set('X-Purpose-Of-Use', 'TREAT');
    expect(res.status).toBe(200);
    return ((res.body as Bundle).entry ?? []).filter((e) => e.search?.mode === 'match').length;
  };

  test('a withdrawn grant permits nothing while the chain still holds it', async () => {
    const granted = await grant(t.app, { patient: ana, actor: `Practitioner/${doc}`, accessTo: now + DAY, dataFrom: now - 14 * DAY, dataTo: now });
    expect(granted.status).toBe(201);
    const grantId = (granted.body as Consent).identifier!.find((i) => i.system === GRANT_ID_SYSTEM)!.value!;
    expect(await readings()).toBe(1);

    await t.app.consent.decisions.withdraw(grantId);
    expect((await t.app.consent.registry.getGrant(grantId))?.revoked).toBe(false);
    expect(await readings()).toBe(0);
  });
});
