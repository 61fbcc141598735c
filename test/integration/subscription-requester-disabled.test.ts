/**
 * A Subscription outlives the token it was made with, so disabling its client (`clients disable`)
 * or its user (`users disable`) must stop its notifications as it stops their tokens: a disabled
 * research client's Subscription went on from 12 to 271 events (subscriptions round, 2026-12-06).
 * Events are withheld (counted), not delivered; enabled again, a client's Subscription resumes.
 */
import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import type { Parameters, Subscription } from '@medplum/fhirtypes';
import request from 'supertest';
import { TOPICS } from '../../src/exchange/subscriptions.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { param, receiver, typeOf, type Receiver } from '../support/hook-receiver.js';
import { ingest, person } from './consent-helpers.js';

let t: TestApp;
let hook: Receiver;
beforeAll(async () => {
  hook = await receiver();
  t = await startTestApp({ GLUCOGUARD_AUTH: 'on', GLUCOGUARD_SUBSCRIPTION_ALLOW: new URL(hook.url).host });
}, 120_000);
afterAll(async () => {
  await t?.close();
  hook?.server.close();
});

test('a disabled client\'s Subscription delivers nothing more; enabled again it resumes', async () => {
  const patient = await person(t.app, 'Patient', 'Sub');
  const { client } = t.app.smart.store.addClient({ name: 'portal', type: 'public', redirectUris: ['https://app.example/cb'], scopes: ['openid', 'fhirUser', 'patient/*.cruds'] });
  const token = t.app.smart.tokens.signAccessToken({
    gid: randomUUID(), clientId: client.clientId, sub: `Patient/${patient}`, fhirUser: `Patient/${patient}`, patient, scopes: ['openid', 'fhirUser', 'patient/*.cruds'],
  }).token;
  const sub = await request(t.app.http).post('/fhir/Subscription').set('Authorization', `Bearer ${token}`).set('Content-Type', 'application/fhir+json').send({
    resourceType: 'Subscription', status: 'requested', reason: 'own readings', criteria: TOPICS.readings,
    channel: { type: 'rest-hook', endpoint: hook.url, payload: 'application/fhir+json' },
  } satisfies Subscription);
  expect(sub.status).toBe(201);
  const id = (sub.body as Subscription).id!;
  const events = async () => {
    const res = await request(t.app.http).get(`/fhir/Subscription/${id}/$status`).set('Authorization', `Bearer ${token}`);
    return res.status === 200 ? Number(param(res.body.entry[0].resource as Parameters, 'events-since-subscription-start')?.valueString ?? 0) : undefined;
  };
  // readings notified: the entries after the status of each event notification (id-only payload)
  const notified = () => hook.bundles.filter((b) => typeOf(b) === 'event-notification').reduce((n, b) => n + (b.entry?.length ?? 1) - 1, 0);
  const waitFor = async (cond: () => boolean | Promise<boolean>) => {
    for (let i = 0; i < 100 && !(await cond()); i++) await new Promise((r) => setTimeout(r, 50));
  };

  const t0 = Date.now() - 3_600_000;
  await ingest(t.app, patient, [{ epochMs: t0, sgv: 110 }]);
  await waitFor(() => notified() === 1);
  expect(notified()).toBe(1);

  t.app.smart.store.setDisabled(client.clientId, true);
  await ingest(t.app, patient, [{ epochMs: t0 + 300_000, sgv: 120 }, { epochMs: t0 + 600_000, sgv: 130 }]);
  await new Promise((r) => setTimeout(r, 1500));
  expect(notified()).toBe(1); // nothing after the disabling

  t.app.smart.store.setDisabled(client.clientId, false);
  await ingest(t.app, patient, [{ epochMs: t0 + 900_000, sgv: 140 }]);
  await waitFor(() => notified() === 2);
  expect(notified()).toBe(2);
  expect(await events()).toBe(2); // the withheld readings were never numbered as events
}, 60_000);
