/**
 * Done-when scenario of issue 6: a patient ingests CGM data and grants a practitioner 3 days of
 * access to 14 days of readings; the practitioner (EHR launch token) sees exactly those readings;
 * the patient revokes; the next request on a second replica sharing Redis and the chain is denied;
 * the patient's access log shows every access and denial.
 */
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { AuditEvent, Bundle, Consent, Observation } from '@medplum/fhirtypes';
import request from 'supertest';
import type { App } from '../../src/app.js';
import { createApp } from '../../src/app.js';
import { loadConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { testRedisUrl } from '../support/process.js';
import {
  DAY, LOINC_MGDL, grant, ingest, patientToken, person, practitionerToken, registerIdentity, sparseTrace,
} from './consent-helpers.js';

const REDIS_URL = await testRedisUrl();
if (!REDIS_URL) console.warn('SKIPPED consent-e2e: no Redis (set REDIS_TEST_URL or run `redis-server --daemonize yes --bind 127.0.0.1`).');
const describeRedis = REDIS_URL ? describe : describe.skip;

describeRedis('consent end to end across two replicas', () => {
  let a: TestApp;
  let b: App;
  let ana: string;
  let doc: string;
  let consent: Consent;
  const trace = sparseTrace(20, 120);
  const now = Date.now();
  const dataFrom = now - 14 * DAY;
  const masterKey = randomBytes(32).toString('base64');

  beforeAll(async () => {
    a = await startTestApp({ GLUCOGUARD_AUTH: 'on', REDIS_URL: REDIS_URL!, GLUCOGUARD_MASTER_KEY: masterKey });
    ana = await person(a.app, 'Patient', 'Rivera');
    doc = await person(a.app, 'Practitioner', 'Osei');
    await registerIdentity(a.app, `Practitioner/${doc}`);
    await ingest(a.app, ana, trace);
    const chainDir = path.join(a.dataDir, 'chain');
    b = await createApp(loadConfig({
      GLUCOGUARD_DATA_DIR: a.dataDir, GLUCOGUARD_BASE_URL: 'http://127.0.0.1:8080', GLUCOGUARD_AUTH: 'on', LOG_LEVEL: 'silent',
      REDIS_URL: REDIS_URL!, GLUCOGUARD_MASTER_KEY: masterKey, CHAIN_RPC_URL: a.app.chain.description.location,
      CHAIN_AUTHORITY_KEY_FILE: path.join(chainDir, 'signer.key'), CHAIN_DEPLOYMENT_FILE: path.join(chainDir, 'deployment.json'),
    }), { logger: createLogger('silent') });
  }, 120_000);
  // Closing two replicas stops two anchorers that may be waiting on receipts; slow on a loaded machine.
  afterAll(async () => {
    await b?.close();
    await a?.close();
  }, 120_000);

  const asDoc = (app: App, url: string) => request(app.http).get(url)
    .set('Authorization', `Bearer ${practitionerToken(app, doc, ana)}`).set('X-Purpose-Of-Use', 'TREAT');

  test('before any grant the practitioner sees nothing', async () => {
    const res = await asDoc(a.app, `/fhir/Observation?patient=Patient/${ana}&_count=500`);
    expect(res.status).toBe(200);
    expect(res.body.entry ?? []).toHaveLength(0);
  });

  test('the patient grants 3 days of access to 14 days of CGM readings; the Consent is active once on chain', async () => {
    const res = await grant(a.app, {
      patient: ana, actor: `Practitioner/${doc}`, accessTo: now + 3 * DAY, dataFrom, dataTo: now, classes: ['Observation'], codes: [LOINC_MGDL],
    });
    expect(res.status).toBe(201);
    consent = res.body as Consent;
    expect(consent.status).toBe('active');
    const grantId = consent.identifier?.find((i) => i.system === 'urn:glucoguard:consent-grant')?.value;
    expect(grantId).toMatch(/^0x[0-9a-f]{64}$/);
    const onChain = await a.app.consent.registry.getGrant(grantId!);
    expect(onChain?.revoked).toBe(false);
  });

  test('the practitioner sees exactly the readings of the data period, on both replicas', async () => {
    const expected = trace.filter((r) => r.epochMs >= Math.floor(dataFrom / 1000) * 1000 && r.epochMs <= Math.floor(now / 1000) * 1000).length;
    expect(expected).toBeLessThan(trace.length);
    for (const app of [a.app, b]) {
      const res = await asDoc(app, `/fhir/Observation?patient=Patient/${ana}&_count=500`);
      expect(res.status).toBe(200);
      const obs = ((res.body as Bundle).entry ?? []).map((e) => e.resource as Observation);
      expect(obs).toHaveLength(expected);
      for (const o of obs) expect(Date.parse(o.effectiveDateTime!)).toBeGreaterThanOrEqual(dataFrom - 1000);
      expect(obs.every((o) => o.code.coding?.some((c) => c.code === '99504-3'))).toBe(true);
    }
    // Other types and a missing purpose: nothing.
    expect((await asDoc(a.app, `/fhir/Patient/${ana}`)).status).toBe(404);
    const noPurpose = await request(a.app.http).get(`/fhir/Observation?patient=Patient/${ana}`).set('Authorization', `Bearer ${practitionerToken(a.app, doc, ana)}`);
    // no data, and an outcome saying why (no purpose of use), so the empty answer is not taken for "nothing there"
    expect((noPurpose.body.entry ?? []).filter((e: { search?: { mode?: string } }) => e.search?.mode !== 'outcome')).toHaveLength(0);
    expect(JSON.stringify(noPurpose.body)).toContain('No purpose of use was stated');
  });

  test('after the patient revokes, the next request on the second replica is denied', async () => {
    const res = await request(a.app.http).delete(`/fhir/Consent/${consent.id}`).set('Authorization', `Bearer ${patientToken(a.app, ana)}`);
    expect(res.status).toBe(204);
    const after = await asDoc(b, `/fhir/Observation?patient=Patient/${ana}&_count=500`);
    expect(after.status).toBe(200);
    expect(after.body.entry ?? []).toHaveLength(0);
    const stored = await a.app.repository.read<Consent>('Consent', consent.id!);
    expect(stored.status).toBe('inactive');
  });

  test("the patient's access log shows every access and denial", async () => {
    await a.app.consent.audit.flush();
    await b.consent.audit.flush();
    // initial empty search, 2 permitted searches, Patient read (404), no-purpose search, search after revocation
    let byDoc: AuditEvent[] = [];
    for (let attempt = 0; attempt < 50 && byDoc.length < 6; attempt++) {
      if (attempt) await new Promise((r) => setTimeout(r, 100));
      const res = await request(a.app.http).get(`/fhir/AuditEvent?patient=Patient/${ana}&_count=200`).set('Authorization', `Bearer ${patientToken(a.app, ana)}`);
      expect(res.status).toBe(200);
      const events = ((res.body as Bundle).entry ?? []).map((e) => e.resource as AuditEvent);
      byDoc = events.filter((e) => e.agent.some((g) => g.who?.reference === `Practitioner/${doc}`));
    }
    expect(byDoc).toHaveLength(6);
    const permitted = byDoc.filter((e) => e.entity?.some((x) => x.what?.identifier?.system === 'urn:glucoguard:consent-grant'));
    expect(permitted).toHaveLength(2);
    expect(byDoc.filter((e) => e.outcome === '4')).toHaveLength(1); // the Patient read answered 404
    expect(byDoc.every((e) => e.purposeOfEvent?.[0]?.coding?.[0]?.code === 'TREAT' || !e.purposeOfEvent)).toBe(true);
  });
});
