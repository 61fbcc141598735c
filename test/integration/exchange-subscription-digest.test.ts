/**
 * Daily digest Subscriptions and event numbers (R4 Backport IG: `eventsSinceSubscriptionStart`,
 * `notificationEvent.eventNumber`): a digest's readings are numbered once, when it gathers them; a
 * digest that cannot be delivered is sent again with the next one under the same numbers and
 * timestamps — also after a restart — never numbered again, so the subscriber sees each event once,
 * under one number.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, Parameters, Subscription } from '@medplum/fhirtypes';
import request from 'supertest';
import { DIGEST_EXTENSION, TOPICS } from '../../src/exchange/subscriptions.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { param, receiver, statusOf, typeOf, type Receiver } from '../support/hook-receiver.js';
import { DAY, grant, ingest, person, practitionerToken, registerIdentity } from './consent-helpers.js';

const BACKPORT = 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/';

const notificationEvents = (p: Parameters) => p.parameter!.filter((x) => x.name === 'notification-event');
const eventNumbers = (p: Parameters) => notificationEvents(p).map((x) => x.part!.find((y) => y.name === 'event-number')!.valueString);
const waitFor = async (done: () => boolean, ms = 5000) => {
  for (const until = Date.now() + ms; !done() && Date.now() < until;) await new Promise((r) => setTimeout(r, 20));
};

describe('daily digest: a failed digest keeps its event numbers', () => {
  let t: TestApp;
  let rx: Receiver;
  let ben: string;
  let token: string;
  let id: string;
  const now = Date.now();
  let minute = 0;
  const fresh = (n: number) => Array.from({ length: n }, () => ({ epochMs: Math.floor(now / 60_000) * 60_000 - 3_600_000 + (++minute) * 60_000, sgv: 100 + minute }));
  const subs = () => t.app.exchange.subscriptions;
  const digests = () => rx.bundles.filter((b) => typeOf(b) === 'event-notification' && param(statusOf(b), 'subscription')?.valueReference?.reference?.endsWith(`/Subscription/${id}`));
  /** Event number → the focus it names, in a notification. */
  const focusByNumber = (b: Bundle) => Object.fromEntries(notificationEvents(statusOf(b)).map((e) => [
    e.part!.find((y) => y.name === 'event-number')!.valueString, e.part!.find((y) => y.name === 'focus')!.valueReference!.reference,
  ]));
  const timestampByNumber = (b: Bundle) => Object.fromEntries(notificationEvents(statusOf(b)).map((e) => [
    e.part!.find((y) => y.name === 'event-number')!.valueString, e.part!.find((y) => y.name === 'timestamp')!.valueInstant,
  ]));

  beforeAll(async () => {
    rx = await receiver();
    t = await startTestApp({
      GLUCOGUARD_AUTH: 'on', GLUCOGUARD_SUBSCRIPTION_RETRIES: '2', GLUCOGUARD_SUBSCRIPTION_RETRY_MS: '10', GLUCOGUARD_SUBSCRIPTION_ALLOW: new URL(rx.url).host,
    });
    ben = await person(t.app, 'Patient', 'Okafor');
    const doc = await person(t.app, 'Practitioner', 'Osei');
    await registerIdentity(t.app, `Practitioner/${doc}`);
    expect((await grant(t.app, { patient: ben, actor: `Practitioner/${doc}`, accessTo: now + DAY, dataFrom: now - DAY, dataTo: now + DAY, purposes: ['TREAT'], classes: ['Observation'] })).status).toBe(201);
    token = practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs', 'user/Subscription.cruds']);
    const body = {
      resourceType: 'Subscription', status: 'requested', reason: 'daily push', criteria: TOPICS.readings,
      _criteria: { extension: [{ url: `${BACKPORT}backport-filter-criteria`, valueString: `Observation?patient=Patient/${ben}` }] },
      channel: {
        type: 'rest-hook', endpoint: rx.url, payload: 'application/fhir+json', extension: [{ url: DIGEST_EXTENSION, valueCode: 'daily' }],
        _payload: { extension: [{ url: `${BACKPORT}backport-payload-content`, valueCode: 'id-only' }] },
      },
    } as Subscription;
    const res = await request(t.app.http).post('/fhir/Subscription').set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT')
      .set('Content-Type', 'application/fhir+json').send(body);
    expect(res.status).toBe(201);
    id = res.body.id as string;
    await waitFor(() => subs().get(id)?.status === 'active');
    expect(subs().get(id)?.status).toBe('active');
  }, 120_000);
  afterAll(async () => {
    await t?.close();
    rx?.server.close();
  });

  test('a digest that fails every attempt is sent with the next one under its original numbers and timestamps; new readings are numbered after it', async () => {
    await ingest(t.app, ben, fresh(2));
    rx.down = true;
    await subs().runDigests();
    expect(subs().get(id)?.status).toBe('error');
    expect(subs().get(id)?.events).toBe(2); // numbered when gathered, though not delivered
    expect(digests()).toHaveLength(0);
    // what the failed digest held, as the event log recorded it
    const logged = await request(t.app.http).get(`/fhir/Subscription/${id}/$events?eventsSinceNumber=1&eventsUntilNumber=2`)
      .set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT');
    expect(logged.status).toBe(200);
    const failed = logged.body as Bundle;
    expect(eventNumbers(statusOf(failed))).toEqual(['1', '2']);

    rx.down = false;
    await ingest(t.app, ben, fresh(1));
    await subs().runDigests();
    expect(digests()).toHaveLength(1);
    const sent = statusOf(digests()[0]!);
    expect(eventNumbers(sent)).toEqual(['1', '2', '3']);
    expect(param(sent, 'events-since-subscription-start')?.valueString).toBe('3');
    expect(focusByNumber(digests()[0]!)).toMatchObject(focusByNumber(failed));
    expect(timestampByNumber(digests()[0]!)).toMatchObject(timestampByNumber(failed));
    expect(subs().get(id)?.status).toBe('active');

    // delivered: nothing is owed, nothing new, nothing sent
    await subs().runDigests();
    expect(digests()).toHaveLength(1);
  }, 60_000);

  test('what a failed digest owes survives a restart and goes out under the same numbers', async () => {
    await ingest(t.app, ben, fresh(2));
    rx.down = true;
    await subs().runDigests();
    expect(subs().get(id)?.events).toBe(5);
    await t.restart();
    rx.down = false;
    await waitFor(() => subs().delivering);
    await subs().runDigests();
    expect(digests()).toHaveLength(2);
    expect(eventNumbers(statusOf(digests()[1]!))).toEqual(['4', '5']);
    expect(param(statusOf(digests()[1]!), 'events-since-subscription-start')?.valueString).toBe('5');
  }, 60_000);
});
