/**
 * Backport Subscriptions: what a Subscription may ask for and what the server does when things go
 * wrong — channel headers the HTTP client cannot send (refused at write time, never crash delivery,
 * a stored bad one set to `error` at start-up), `end` (refused when past, `off` when reached),
 * event numbers given when events happen (a failed delivery leaves a visible gap, `$events` fills
 * it), heartbeat minimum and the address+port allow list, and versions written by another process
 * (the CLI) notified from the commitment store.
 */
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, Observation, Parameters, Subscription } from '@medplum/fhirtypes';
import Database from 'better-sqlite3';
import request from 'supertest';
import { leaseOwner } from '../../src/lease-owner.js';
import { SubscriptionStore } from '../../src/exchange/subscription-store.js';
import { TOPICS } from '../../src/exchange/subscriptions.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { param, receiver, statusOf, typeOf, type Receiver } from '../support/hook-receiver.js';
import { DAY, grant, ingest, person, practitionerToken, registerIdentity } from './consent-helpers.js';

// exchange settings for the app under test (read with the rest of its configuration)
const EXCHANGE_ENV: Record<string, string> = { GLUCOGUARD_SUBSCRIPTION_RETRIES: '2', GLUCOGUARD_SUBSCRIPTION_RETRY_MS: '10', GLUCOGUARD_SUBSCRIPTION_POLL_MS: '100' };

const BACKPORT = 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/';

const eventNumbers = (p: Parameters) => p.parameter!.filter((x) => x.name === 'notification-event').map((x) => x.part!.find((y) => y.name === 'event-number')!.valueString);
const waitFor = async (done: () => boolean, ms = 5000) => {
  for (const until = Date.now() + ms; !done() && Date.now() < until;) await new Promise((r) => setTimeout(r, 20));
};

describe('subscription rules and failures (R4 backport, rest-hook)', () => {
  let t: TestApp;
  let rx: Receiver;
  let ben: string;
  let doc: string;
  let token: string;
  const now = Date.now();
  let minute = 0;
  const fresh = (n: number) => Array.from({ length: n }, () => ({ epochMs: Math.floor(now / 60_000) * 60_000 - 3_600_000 + (++minute) * 60_000, sgv: 100 + minute }));

  const subscription = (extra: Partial<Subscription> = {}, channel: Partial<Subscription['channel']> = {}): Subscription => ({
    resourceType: 'Subscription', status: 'requested', reason: 'follow-up', criteria: TOPICS.readings,
    _criteria: { extension: [{ url: `${BACKPORT}backport-filter-criteria`, valueString: `Observation?patient=Patient/${ben}` }] },
    channel: {
      type: 'rest-hook', endpoint: rx.url, payload: 'application/fhir+json',
      _payload: { extension: [{ url: `${BACKPORT}backport-payload-content`, valueCode: 'id-only' }] }, ...channel,
    },
    ...extra,
  } as Subscription);
  const post = (body: object) => request(t.app.http).post('/fhir/Subscription').set('Authorization', `Bearer ${token}`)
    .set('X-Purpose-Of-Use', 'TREAT').set('Content-Type', 'application/fhir+json').send(body);
  const subs = () => t.app.exchange.subscriptions;
  const active = async (body: Subscription): Promise<string> => {
    const res = await post(body);
    expect(res.status).toBe(201);
    await waitFor(() => subs().get(res.body.id)?.status === 'active');
    expect(subs().get(res.body.id)?.status).toBe('active');
    return res.body.id as string;
  };
  const mine = (id: string) => rx.bundles.filter((b) => param(statusOf(b), 'subscription')?.valueReference?.reference?.endsWith(`/Subscription/${id}`));

  beforeAll(async () => {
    rx = await receiver();
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on', ...EXCHANGE_ENV, GLUCOGUARD_SUBSCRIPTION_ALLOW: new URL(rx.url).host });
    ben = await person(t.app, 'Patient', 'Okafor');
    doc = await person(t.app, 'Practitioner', 'Osei');
    await registerIdentity(t.app, `Practitioner/${doc}`);
    expect((await grant(t.app, { patient: ben, actor: `Practitioner/${doc}`, accessTo: now + DAY, dataFrom: now - DAY, dataTo: now + DAY, purposes: ['TREAT'], classes: ['Observation'] })).status).toBe(201);
    token = practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs', 'user/Subscription.cruds']);
  }, 120_000);
  afterAll(async () => {
    await t?.close();
    rx?.server.close();
  });

  test('a DiagnosticReport filter on the readings topic is refused (400): that topic notifies Observations only (it was taken as a patient filter alone)', async () => {
    const res = await post(subscription({ _criteria: { extension: [{ url: `${BACKPORT}backport-filter-criteria`, valueString: `DiagnosticReport?patient=Patient/${ben}` }] } } as Partial<Subscription>));
    expect(res.status).toBe(400);
    expect(res.body.issue[0].diagnostics).toMatch(/readings topic notifies Observations/);
    // on the summaries topic, which carries DiagnosticReports, the same filter is taken
    expect((await post(subscription({ criteria: TOPICS.summaries, _criteria: { extension: [{ url: `${BACKPORT}backport-filter-criteria`, valueString: `DiagnosticReport?patient=Patient/${ben}` }] } } as Partial<Subscription>))).status).toBe(201);
  });

  test('channel.header: refuses values that are not visible ASCII, bad names, and headers the proxy sets or that frame the request (422 naming the entry)', async () => {
    const before = subs().list().length;
    for (const bad of ['X-Uni: café ☃', 'X-Del: a\u007fb', 'Bad Name: x', ': x', 'Content-Length: 5', 'Host: evil.example', 'Transfer-Encoding: chunked',
      'connection: close', 'Proxy-Authorization: Basic eA==', 'Content-Type: text/plain', `X-Long: ${'a'.repeat(2000)}`]) {
      const res = await post(subscription({}, { header: ['Authorization: Bearer abc', bad] }));
      expect(res.status).toBe(422);
      expect(res.body.resourceType).toBe('OperationOutcome');
      expect(res.body.issue[0].expression).toEqual(['Subscription.channel.header[1]']);
    }
    const many = await post(subscription({}, { header: Array.from({ length: 11 }, (_, i) => `X-H${i}: ${i}`) }));
    expect(many.status).toBe(422);
    expect(subs().list()).toHaveLength(before);
  });

  test('a valid header is sent as given, after the proxy\'s own framing headers', async () => {
    rx.headers.length = 0;
    const id = await active(subscription({}, { header: ['Authorization: Bearer abc', 'X-Tenant:\tward 7'] }));
    const sent = rx.headers.at(-1)!;
    expect(sent.authorization).toBe('Bearer abc');
    expect(sent['x-tenant']).toBe('ward 7');
    expect(sent['content-type']).toBe('application/fhir+json');
    expect(Number(sent['content-length'])).toBe(Buffer.byteLength(JSON.stringify(mine(id).at(-1))));
    expect((await request(t.app.http).delete(`/fhir/Subscription/${id}`).set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT')).status).toBe(204);
  });

  test('a header the HTTP client refuses is a failed attempt, never an exception out of delivery', async () => {
    const id = await active(subscription());
    const state = { ...subs().get(id)!, headers: ['X-Uni: café ☃'] };
    // the private sender, as delivery and handshake call it
    const post = (subs() as unknown as { post(s: unknown, b: Bundle): Promise<{ ok: boolean; reason?: string }> }).post.bind(subs());
    await expect(post(state, { resourceType: 'Bundle', type: 'history' })).resolves.toMatchObject({ ok: false });
  });

  test('a stored Subscription that cannot be used (bad header from an older version) is set to error at start-up, instead of crashing every start', async () => {
    const id = await active(subscription());
    const handshakes = mine(id).length;
    // what an older version stored: the header it let through
    const db = new Database(path.join(t.dataDir, 'exports', 'subscriptions.sqlite'));
    const row = db.prepare('SELECT json FROM subscription_state WHERE id = ?').get(id) as { json: string };
    db.prepare('UPDATE subscription_state SET json = ? WHERE id = ?').run(JSON.stringify({ ...JSON.parse(row.json), status: 'requested', headers: ['X-Uni: café ☃'] }), id);
    db.close();
    await t.restart();
    const state = subs().get(id)!;
    expect(state.status).toBe('error');
    expect(state.lastError).toMatch(/channel\.header\[0\]/);
    expect((await t.app.repository.read<Subscription>('Subscription', id)).status).toBe('error');
    // nothing is sent for it, and the server works on
    await ingest(t.app, ben, fresh(1));
    await subs().idle();
    expect(mine(id)).toHaveLength(handshakes);
    const st = await request(t.app.http).get(`/fhir/Subscription/${id}/$status`).set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT');
    expect(param(st.body.entry[0].resource as Parameters, 'status')?.valueCode).toBe('error');
    await request(t.app.http).delete(`/fhir/Subscription/${id}`).set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT');
  }, 60_000);

  test('end: one already past is refused (422); the Subscription turns off when its end comes and nothing more is sent', async () => {
    const past = await post(subscription({ end: '2020-01-01T00:00:00Z' }));
    expect(past.status).toBe(422);
    expect(past.body.issue[0].expression).toEqual(['Subscription.end']);
    const id = await active(subscription({ end: new Date(Date.now() + 1500).toISOString() }));
    await waitFor(() => subs().get(id)?.status === 'off');
    expect(subs().get(id)?.status).toBe('off');
    expect((await t.app.repository.read<Subscription>('Subscription', id)).status).toBe('off');
    const sent = mine(id).length;
    await ingest(t.app, ben, fresh(2));
    await subs().idle();
    expect(mine(id)).toHaveLength(sent);
  }, 30_000);

  test('events are numbered when they happen: readings whose delivery failed leave a gap the subscriber sees, and $events returns them', async () => {
    const id = await active(subscription());
    rx.down = true;
    await ingest(t.app, ben, fresh(2));
    await subs().idle();
    expect(subs().get(id)?.status).toBe('error');
    rx.down = false;
    await ingest(t.app, ben, fresh(2));
    await subs().idle();
    const events = mine(id).filter((b) => typeOf(b) === 'event-notification');
    expect(events).toHaveLength(1);
    const status = statusOf(events[0]!);
    expect(param(status, 'events-since-subscription-start')?.valueString).toBe('4');
    expect(eventNumbers(status)).toEqual(['3', '4']);
    const st = await request(t.app.http).get(`/fhir/Subscription/${id}/$status`).set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT');
    expect(param(st.body.entry[0].resource as Parameters, 'events-since-subscription-start')?.valueString).toBe('4');
    // the missed events, recovered
    const missed = await request(t.app.http).get(`/fhir/Subscription/${id}/$events?eventsSinceNumber=1&eventsUntilNumber=2`)
      .set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT');
    expect(missed.status).toBe(200);
    const q = statusOf(missed.body as Bundle);
    expect(param(q, 'type')?.valueCode).toBe('query-event');
    expect(eventNumbers(q)).toEqual(['1', '2']);
    expect((missed.body as Bundle).entry!.slice(1).map((e) => e.fullUrl)).toEqual(expect.arrayContaining([expect.stringMatching(/\/fhir\/Observation\//)]));
    const other = t.app.smart.tokens.signAccessToken({ gid: randomUUID(), clientId: 'other', sub: 'other', scopes: ['system/*.rs'] }).token;
    expect((await request(t.app.http).get(`/fhir/Subscription/${id}/$events`).set('Authorization', `Bearer ${other}`)).status).toBe(404);
  }, 30_000);

  test('a heartbeat period below the minimum is refused (422); the allow list admits the receiver\'s port, not the address\'s other ports', async () => {
    const fast = await post(subscription({}, { extension: [{ url: `${BACKPORT}backport-heartbeat-period`, valueUnsignedInt: 1 }] }));
    expect(fast.status).toBe(422);
    const port = Number(new URL(rx.url).port);
    const elsewhere = await post(subscription({}, { endpoint: `http://127.0.0.1:${port === 65535 ? port - 1 : port + 1}/` }));
    expect(elsewhere.status).toBe(400);
    expect(elsewhere.body.issue[0].expression).toEqual(['Subscription.channel.endpoint']);
  });

  test('versions another process commits to the same data directory (CLI ingest) are notified; only one process delivers', async () => {
    const id = await active(subscription());
    const before = mine(id).filter((b) => typeOf(b) === 'event-notification').length;
    // another process's write: stored and committed, never seen by this process's write listeners
    const reading: Observation = {
      resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] },
      subject: { reference: `Patient/${ben}` }, effectiveDateTime: new Date(now - 30 * 60_000).toISOString(),
      valueQuantity: { value: 123, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
    };
    const { resource } = await t.app.ledger.repository.create(reading);
    await waitFor(() => mine(id).filter((b) => typeOf(b) === 'event-notification').length > before);
    const events = mine(id).filter((b) => typeOf(b) === 'event-notification');
    expect(events).toHaveLength(before + 1);
    expect(events.at(-1)!.entry![1]!.fullUrl).toMatch(new RegExp(`/Observation/${resource.id}$`));
    // this process's own writes are not notified twice (once by the listener, once by the poll)
    await ingest(t.app, ben, fresh(1));
    await subs().idle();
    await new Promise((r) => setTimeout(r, 300));
    expect(mine(id).filter((b) => typeOf(b) === 'event-notification')).toHaveLength(before + 2);
    // a second process on the data directory cannot take the delivery lease while this one runs
    const other = new SubscriptionStore(path.join(t.dataDir, 'exports'));
    try {
      expect(other.holdLease(leaseOwner(randomUUID()), 15_000)).toBe(false);
    } finally {
      other.close();
    }
  }, 30_000);
});
