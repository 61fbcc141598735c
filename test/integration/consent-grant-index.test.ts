/**
 * The grant index: a requester's grants and registered addresses are found after a restart by
 * reading only the blocks since the index last looked (no eth_getLogs from genesis by anyone); grants made while the proxy was down are
 * found too; and a grant found in the index still has to hold on chain (a revoked one permits nothing).
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Consent } from '@medplum/fhirtypes';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { DAY, grant, patientToken, person, practitionerToken, registerIdentity } from './consent-helpers.js';

describe('grant index', () => {
  let t: TestApp;
  let ana: string;
  let doc: string;
  let address: string;
  const now = Date.now();

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
    ana = await person(t.app, 'Patient', 'Rivera');
    doc = await person(t.app, 'Practitioner', 'Osei');
    address = await registerIdentity(t.app, `Practitioner/${doc}`);
  });
  afterAll(async () => {
    await t?.close();
  });

  test('after a restart, lookups read only blocks after the last indexed one, and still find every grant', async () => {
    const first = await grant(t.app, { patient: ana, actor: `Practitioner/${doc}`, accessTo: now + DAY, dataFrom: now - 14 * DAY, dataTo: now });
    expect(first.status).toBe(201);
    const headBefore = await t.app.chain.head();
    const [firstId] = await t.app.consent.grants.grantIdsTo(address);
    expect(firstId).toMatch(/^0x[0-9a-f]{64}$/);
    expect(await t.app.consent.identity.granteesOf(`Practitioner/${doc}`)).toEqual([address]);

    const app = await t.restart();
    const froms: number[] = [];
    const provider = app.chain.provider;
    const getLogs = provider.getLogs.bind(provider);
    provider.getLogs = (async (filter: Parameters<typeof getLogs>[0]) => {
      froms.push(Number((filter as { fromBlock?: number }).fromBlock ?? 0));
      return getLogs(filter);
    }) as typeof provider.getLogs;
    // a second grant after the restart is found along with the first
    const second = await grant(app, { patient: ana, actor: `Practitioner/${doc}`, accessTo: now + 2 * DAY, dataFrom: now - 7 * DAY, dataTo: now });
    expect(second.status).toBe(201);
    const ids = await app.consent.grants.grantIdsTo(address);
    expect(ids).toHaveLength(2);
    expect(ids[0]).toBe(firstId);
    expect(await app.consent.identity.granteesOf(`Practitioner/${doc}`)).toEqual([address]);
    expect(froms.length).toBeGreaterThan(0);
    // (the last indexed block itself may be read again: the cursor sits inside it)
    expect(headBefore).toBeGreaterThan(3);
    expect(Math.min(...froms)).toBeGreaterThanOrEqual(headBefore);
    provider.getLogs = getLogs;
  });

  test('an indexed grant that was revoked permits nothing', async () => {
    const app = t.app;
    const consents = await request(app.http).get(`/fhir/Consent?patient=Patient/${ana}`).set('Authorization', `Bearer ${patientToken(app, ana)}`);
    expect(consents.status).toBe(200);
    for (const e of consents.body.entry ?? []) {
      const c = e.resource as Consent;
      const res = await request(app.http).delete(`/fhir/Consent/${c.id}`).set('Authorization', `Bearer ${patientToken(app, ana)}`);
      expect([200, 204]).toContain(res.status);
    }
    expect(await app.consent.grants.grantIdsTo(address)).toHaveLength(2);
    const read = await request(app.http).get(`/fhir/Observation?patient=Patient/${ana}`)
      .set('Authorization', `Bearer ${practitionerToken(app, doc)}`).set('X-Purpose-Of-Use', 'TREAT');
    expect(JSON.stringify(read.body)).not.toContain('"Observation"');
    const perms = await app.consent.decisions.permissions({ kind: 'token', fhirUser: `Practitioner/${doc}`, subject: `Practitioner/${doc}`, clientId: 'c', scopes: [], purposeOfUse: 'TREAT' } as never);
    expect(perms.byPatient.size).toBe(0);
  });
});
