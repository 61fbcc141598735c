/**
 * A rest-hook Subscription's `channel.header` values are often secrets (the receiver's bearer token,
 * an API key). The repository seals the Subscription resource; the subscription store's copy kept
 * them in plain text in exports/subscriptions.sqlite (subscriptions round, 2026-12-06). They are now
 * sealed there too, bound to the Subscription's id, and still sent, after a restart as well.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, expect, test } from '@jest/globals';
import Database from 'better-sqlite3';
import type { Subscription } from '@medplum/fhirtypes';
import request from 'supertest';
import { TOPICS } from '../../src/exchange/subscriptions.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { receiver, typeOf, type Receiver } from '../support/hook-receiver.js';
import { ingest, person } from './consent-helpers.js';

const SECRET = 'Bearer hook-s3cret-7f2a9c';
let t: TestApp;
let hook: Receiver;
beforeAll(async () => {
  hook = await receiver();
  t = await startTestApp({ GLUCOGUARD_SUBSCRIPTION_ALLOW: new URL(hook.url).host });
}, 120_000);
afterAll(async () => {
  await t?.close();
  hook?.server.close();
});

const until = async (cond: () => boolean) => {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 25));
};
const notifications = () => hook.headers.filter((_, i) => typeOf(hook.bundles[i]!) === 'event-notification');

test('channel headers are sealed in the subscription store and still sent, before and after a restart', async () => {
  const res = await request(t.app.http).post('/fhir/Subscription').set('Content-Type', 'application/fhir+json').send({
    resourceType: 'Subscription', status: 'requested', reason: 'secret header', criteria: TOPICS.readings,
    channel: { type: 'rest-hook', endpoint: hook.url, header: [`Authorization: ${SECRET}`] },
  } satisfies Subscription);
  expect(res.status).toBe(201);
  const patient = await person(t.app, 'Patient', 'Header');
  await ingest(t.app, patient, [{ epochMs: Date.now() - 120_000, sgv: 111 }]);
  await until(() => notifications().length === 1);
  expect(notifications()[0]!.authorization).toBe(SECRET);

  const file = path.join(t.dataDir, 'exports', 'subscriptions.sqlite');
  const db = new Database(file, { readonly: true });
  const rows = db.prepare('SELECT json FROM subscription_state').all() as { json: string }[];
  db.close();
  expect(rows.length).toBeGreaterThan(0);
  expect(rows.some((r) => r.json.includes('hook-s3cret'))).toBe(false);
  expect(rows.some((r) => r.json.includes('sealedHeaders'))).toBe(true);
  for (const f of [file, `${file}-wal`]) {
    let bytes: Buffer;
    try {
      bytes = readFileSync(f);
    } catch {
      continue;
    }
    expect(bytes.includes(Buffer.from('hook-s3cret'))).toBe(false);
  }

  await t.restart();
  await ingest(t.app, patient, [{ epochMs: Date.now() - 60_000, sgv: 112 }]);
  await until(() => notifications().length === 2);
  expect(notifications()[1]!.authorization).toBe(SECRET);
}, 60_000);
