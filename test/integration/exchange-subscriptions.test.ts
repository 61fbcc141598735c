/**
 * R4 backport Subscriptions (issue 7): a rest-hook subscription for a patient's CGM readings
 * delivers handshake and event notifications to a local receiver (127.0.0.1 allowed by config),
 * de-identified for a research requester, id-only for another; delivery is retried; after the
 * patient revokes, nothing more of theirs leaves; SSRF targets are refused.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, Consent, Observation, Organization, Parameters, Subscription } from '@medplum/fhirtypes';
import request from 'supertest';
import { DIGEST_EXTENSION, TOPICS } from '../../src/exchange/subscriptions.js';
import { ProfileValidator } from '../../src/fhir/validation.js';
import { PROFILES_DIR } from '../../src/paths.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { param, receiver, statusOf, typeOf, type Receiver } from '../support/hook-receiver.js';
import { DAY, grant, ingest, patientToken, person, practitionerToken, registerIdentity } from './consent-helpers.js';

// exchange settings for the app under test (read with the rest of its configuration)
const EXCHANGE_ENV: Record<string, string> = { GLUCOGUARD_SUBSCRIPTION_RETRIES: '3', GLUCOGUARD_SUBSCRIPTION_RETRY_MS: '20' };

const BACKPORT = 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/';


/**
 * A readings Subscription; `patient` adds the backport filter criteria `Observation?patient=…`. A
 * research one has none: it covers the patients who granted the study (a filter naming a patient
 * would tie that patient to its pseudonym, and is refused).
 */
function subscription(endpoint: string, patient: string | undefined, content: 'id-only' | 'full-resource'): Subscription {
  return {
    resourceType: 'Subscription', status: 'requested', reason: 'study feed', criteria: TOPICS.readings,
    ...(patient ? { _criteria: { extension: [{ url: `${BACKPORT}backport-filter-criteria`, valueString: `Observation?patient=Patient/${patient}` }] } } : {}),
    channel: {
      type: 'rest-hook', endpoint, payload: 'application/fhir+json',
      _payload: { extension: [{ url: `${BACKPORT}backport-payload-content`, valueCode: content }] },
    },
  } as Subscription;
}

describe('subscriptions (R4 backport, rest-hook)', () => {
  let t: TestApp;
  let rx: Receiver;
  /** Notifications a test set aside before clearing the receiver's list (all are checked valid at the end). */
  const seen: Bundle[] = [];
  let ana: string;
  let ben: string;
  let study: string;
  let doc: string;
  let studyToken: string;
  let anaConsent: Consent;
  const now = Date.now();
  let minute = 0;
  /** A few new readings (never seen before) ending now. */
  const fresh = (n: number) => Array.from({ length: n }, () => ({ epochMs: Math.floor(now / 60_000) * 60_000 - 3_600_000 + (++minute) * 60_000, sgv: 100 + minute }));

  const post = (body: object, token: string, purpose = 'HRESCH') => request(t.app.http).post('/fhir/Subscription')
    .set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', purpose).set('Content-Type', 'application/fhir+json').send(body);

  beforeAll(async () => {
    rx = await receiver();
    // the allow list names address and port: the receiver's, not every port on loopback
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on', ...EXCHANGE_ENV, GLUCOGUARD_SUBSCRIPTION_ALLOW: new URL(rx.url).host });
    ana = await person(t.app, 'Patient', 'Rivera');
    ben = await person(t.app, 'Patient', 'Okafor');
    study = (await t.app.repository.create<Organization>({ resourceType: 'Organization', name: 'Study 42' })).resource.id!;
    doc = await person(t.app, 'Practitioner', 'Osei');
    await registerIdentity(t.app, `Organization/${study}`);
    await registerIdentity(t.app, `Practitioner/${doc}`);
    const res = await grant(t.app, { patient: ana, actor: `Organization/${study}`, accessTo: now + DAY, dataFrom: now - DAY, dataTo: now + DAY, purposes: ['HRESCH'], classes: ['Observation'] });
    expect(res.status).toBe(201);
    anaConsent = res.body as Consent;
    expect((await grant(t.app, { patient: ben, actor: `Practitioner/${doc}`, accessTo: now + DAY, dataFrom: now - DAY, dataTo: now + DAY, purposes: ['TREAT'], classes: ['Observation'] })).status).toBe(201);
    studyToken = t.app.smart.tokens.signAccessToken({ gid: randomUUID(), clientId: 'study-client', sub: 'study-client', fhirUser: `Organization/${study}`, scopes: ['system/*.rs', 'system/Subscription.cud'] }).token;
  }, 120_000);
  afterAll(async () => {
    await t?.close();
    rx?.server.close();
  });

  test('endpoints on loopback, private, link-local or with credentials are refused (SSRF); only topics offered', async () => {
    for (const endpoint of ['https://10.1.2.3/hook', 'https://169.254.169.254/latest/meta-data', 'http://[::1]:8080/hook', 'https://192.168.1.10/x',
      'https://user:secret@example.org/hook', 'ftp://example.org/hook', 'not a url']) {
      const res = await post(subscription(endpoint, undefined, 'id-only'), studyToken);
      // a value that is no url at all fails base R4 validation (422), which every write passes before
      // the subscription module reads it; the rest are urls the module refuses (400)
      expect(res.status).toBe(endpoint === 'not a url' ? 422 : 400);
      expect(res.body.resourceType).toBe('OperationOutcome');
      expect(JSON.stringify(res.body)).not.toContain('secret');
    }
    expect((await post({ ...subscription(rx.url, undefined, 'id-only'), criteria: 'Observation?code=x' }, studyToken)).status).toBe(400);
    // a study naming a patient would learn that patient's pseudonym from the notifications
    const named = await post(subscription(rx.url, ana, 'id-only'), studyToken);
    expect(named.status).toBe(403);
    expect(named.body.issue[0].diagnostics).toMatch(/pseudonym/);
    // validated against base R4 like every write: no reason (1..1), no channel (1..1), an element of the wrong JSON kind
    const { reason: _reason, ...noReason } = subscription(rx.url, undefined, 'id-only');
    const { channel: _channel, ...noChannel } = subscription(rx.url, undefined, 'id-only');
    for (const invalid of [noReason, noChannel, { ...subscription(rx.url, undefined, 'id-only'), channel: { type: 'rest-hook', endpoint: rx.url, header: 'X-A: 1' } }]) {
      const res = await post(invalid, studyToken);
      expect(res.status).toBe(422);
      expect(res.body.resourceType).toBe('OperationOutcome');
    }
    expect(t.app.exchange.subscriptions.list()).toHaveLength(0);
  });

  let studySub: string;

  test('handshake, then de-identified full-resource notifications of new readings; $status counts events', async () => {
    const res = await post(subscription(rx.url, undefined, 'full-resource'), studyToken);
    expect(res.status).toBe(201);
    studySub = res.body.id;
    await t.app.exchange.subscriptions.idle();
    for (let i = 0; i < 50 && t.app.exchange.subscriptions.get(studySub)?.status !== 'active'; i++) await new Promise((r) => setTimeout(r, 20));
    expect(rx.bundles.map(typeOf)).toEqual(['handshake']);
    expect(t.app.exchange.subscriptions.get(studySub)?.status).toBe('active');

    await ingest(t.app, ana, fresh(3));
    await ingest(t.app, ben, fresh(2)); // ben granted the study nothing
    await t.app.exchange.subscriptions.idle();
    const events = rx.bundles.filter((b) => typeOf(b) === 'event-notification');
    expect(events).toHaveLength(1);
    const bundle = events[0]!;
    expect(bundle.type).toBe('history');
    const status = statusOf(bundle);
    expect(status.meta?.profile).toContain(`${BACKPORT}backport-subscription-status-r4`);
    expect(param(status, 'topic')?.valueCanonical).toBe(TOPICS.readings);
    expect(param(status, 'events-since-subscription-start')?.valueString).toBe('3');
    const resources = bundle.entry!.slice(1).map((e) => e.resource as Observation);
    expect(resources).toHaveLength(3);
    for (const o of resources) {
      expect(o.subject?.reference).toMatch(/^Patient\/[0-9a-f]{40}$/);
      expect(o.meta?.security?.map((c) => c.code)).toEqual(['PSEUDED', 'REDACTED']);
    }
    expect(JSON.stringify(bundle)).not.toContain(ana);

    const st = await request(t.app.http).get(`/fhir/Subscription/${studySub}/$status`).set('Authorization', `Bearer ${studyToken}`).set('X-Purpose-Of-Use', 'HRESCH');
    expect(st.status).toBe(200);
    const p = st.body.entry[0].resource as Parameters;
    expect(param(p, 'type')?.valueCode).toBe('query-status');
    expect(param(p, 'status')?.valueCode).toBe('active');
    expect(param(p, 'events-since-subscription-start')?.valueString).toBe('3');
    const other = t.app.smart.tokens.signAccessToken({ gid: randomUUID(), clientId: 'other', sub: 'other', scopes: ['system/*.rs'] }).token;
    expect((await request(t.app.http).get(`/fhir/Subscription/${studySub}/$status`).set('Authorization', `Bearer ${other}`)).status).toBe(404);
  }, 60_000);

  test('id-only payloads carry references, not resources; a failed delivery is retried with back-off', async () => {
    const token = practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs', 'user/Subscription.cud']);
    const res = await post(subscription(rx.url, ben, 'id-only'), token, 'TREAT');
    expect(res.status).toBe(201);
    await t.app.exchange.subscriptions.idle();
    for (let i = 0; i < 50 && t.app.exchange.subscriptions.get(res.body.id)?.status !== 'active'; i++) await new Promise((r) => setTimeout(r, 20));
    seen.push(...rx.bundles.splice(0));
    rx.failNext = 2;
    await ingest(t.app, ben, fresh(2));
    await t.app.exchange.subscriptions.idle();
    const events = rx.bundles.filter((b) => typeOf(b) === 'event-notification');
    expect(events).toHaveLength(1);
    const entries = events[0]!.entry!.slice(1);
    expect(entries).toHaveLength(2);
    for (const e of entries) {
      expect(e.resource).toBeUndefined();
      expect(e.fullUrl).toMatch(/\/fhir\/Observation\/[A-Za-z0-9-]+$/);
    }
    expect(t.app.exchange.subscriptions.get(res.body.id)?.failedDeliveries).toBe(2);
  }, 60_000);

  test('a daily digest sends one Bundle with the readings stored since the last one, instead of one per write', async () => {
    const token = practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs', 'user/Subscription.cud']);
    const body = subscription(rx.url, ben, 'full-resource');
    body.channel.extension = [{ url: DIGEST_EXTENSION, valueCode: 'daily' }];
    expect((await post({ ...body, criteria: TOPICS.summaries }, token, 'TREAT')).status).toBe(400);
    const res = await post(body, token, 'TREAT');
    expect(res.status).toBe(201);
    await t.app.exchange.subscriptions.idle();
    for (let i = 0; i < 50 && t.app.exchange.subscriptions.get(res.body.id)?.status !== 'active'; i++) await new Promise((r) => setTimeout(r, 20));
    const mine = () => rx.bundles.filter((b) => typeOf(b) === 'event-notification' && param(statusOf(b), 'subscription')?.valueReference?.reference?.endsWith(`/Subscription/${res.body.id}`));
    await ingest(t.app, ben, fresh(2));
    await ingest(t.app, ben, fresh(2));
    await t.app.exchange.subscriptions.idle();
    expect(mine()).toHaveLength(0);
    await t.app.exchange.subscriptions.runDigests();
    expect(mine()).toHaveLength(1);
    expect(mine()[0]!.entry!.slice(1).map((e) => (e.resource as Observation).subject?.reference)).toEqual(Array(4).fill(`Patient/${ben}`));
    await t.app.exchange.subscriptions.runDigests();
    expect(mine()).toHaveLength(1); // nothing new, nothing sent
  }, 60_000);

  test('after the patient revokes, no further data of theirs leaves', async () => {
    const revoke = await request(t.app.http).put(`/fhir/Consent/${anaConsent.id}`).set('Authorization', `Bearer ${patientToken(t.app, ana)}`)
      .set('Content-Type', 'application/fhir+json').send({ ...anaConsent, status: 'inactive' });
    expect(revoke.status).toBe(200);
    seen.push(...rx.bundles.splice(0));
    // the study's subscription has no patient filter: it has also withheld the readings of patients who never granted it
    const withheldBefore = t.app.exchange.subscriptions.get(studySub)!.withheld;
    await ingest(t.app, ana, fresh(2));
    await t.app.exchange.subscriptions.idle();
    expect(rx.bundles.filter((b) => typeOf(b) === 'event-notification')).toHaveLength(0);
    const state = t.app.exchange.subscriptions.get(studySub)!;
    expect(state.events).toBe(3);
    expect(state.withheld - withheldBefore).toBe(2);
  }, 60_000);
  test('every notification delivered, and $status, is valid R4 (the checks every write passes)', async () => {
    const validator = new ProfileValidator(PROFILES_DIR);
    const bundles = [...seen, ...rx.bundles];
    expect(bundles.length).toBeGreaterThan(3);
    const sub = (await t.app.repository.search({ resourceType: 'Subscription', count: 1, offset: 0 })).resources[0]!;
    const status = await request(t.app.http).get(`/fhir/Subscription/${sub.id}/$status`).set('Authorization', `Bearer ${studyToken}`).set('X-Purpose-Of-Use', 'HRESCH');
    expect(status.status).toBe(200);
    for (const [i, body] of [...bundles, status.body as Bundle].entries()) {
      expect([i, typeOf(body as Bundle), validator.check(body as Bundle).filter((x) => x.severity === 'error')]).toEqual([i, typeOf(body as Bundle), []]);
    }
  });
});
