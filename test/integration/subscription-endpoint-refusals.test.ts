/**
 * What a rest-hook endpoint answers decides what comes next: 410 Gone turns the Subscription off
 * (no more deliveries to an endpoint that said it is gone for good); another 4xx refusal of the
 * notification itself (400, 401, 403, 404…) is not retried, the Subscription turns error; 5xx,
 * 408 and 429 are retried with back-off as before (subscriptions round, 2026-12-06: every answer was
 * retried like a 5xx, and later events still went to an endpoint that said Gone).
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, expect, test } from '@jest/globals';
import type { Bundle, Parameters, Subscription } from '@medplum/fhirtypes';
import request from 'supertest';
import { TOPICS } from '../../src/exchange/subscriptions.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { param, typeOf } from '../support/hook-receiver.js';
import { ingest, person } from './consent-helpers.js';

let t: TestApp;
let server: Server;
let base: string;
/** path → the status its event notifications get, and how many came */
const answers = new Map<string, { status: number; events: number }>();

beforeAll(async () => {
  server = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => { body += c.toString(); });
    req.on('end', () => {
      const a = answers.get(req.url ?? '');
      if (!a || typeOf(JSON.parse(body) as Bundle) !== 'event-notification') return void res.writeHead(200).end();
      a.events++;
      res.writeHead(a.status).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  t = await startTestApp({ GLUCOGUARD_SUBSCRIPTION_RETRIES: '3', GLUCOGUARD_SUBSCRIPTION_RETRY_MS: '20', GLUCOGUARD_SUBSCRIPTION_ALLOW: new URL(base).host });
}, 120_000);
afterAll(async () => {
  await t?.close();
  server?.close();
});

async function subscribe(path: string, status: number): Promise<string> {
  answers.set(path, { status, events: 0 });
  const res = await request(t.app.http).post('/fhir/Subscription').set('Content-Type', 'application/fhir+json').send({
    resourceType: 'Subscription', status: 'requested', reason: 'refusals', criteria: TOPICS.readings, channel: { type: 'rest-hook', endpoint: `${base}${path}` },
  } satisfies Subscription);
  expect(res.status).toBe(201);
  return (res.body as Subscription).id!;
}
const statusOf = async (id: string) => {
  const res = await request(t.app.http).get(`/fhir/Subscription/${id}/$status`);
  return param(res.body.entry[0].resource as Parameters, 'status')?.valueCode;
};
const until = async (cond: () => Promise<boolean>) => {
  for (let i = 0; i < 200 && !(await cond()); i++) await new Promise((r) => setTimeout(r, 25));
};

test('410 turns the Subscription off at once; 401 is not retried (error); 503 is retried (error after 3 attempts)', async () => {
  const ids = { gone: await subscribe('/gone', 410), refused: await subscribe('/refused', 401), busy: await subscribe('/busy', 503) };
  for (const id of Object.values(ids)) await until(async () => (await statusOf(id)) === 'active');
  const patient = await person(t.app, 'Patient', 'Hook');
  await ingest(t.app, patient, [{ epochMs: Date.now() - 60_000, sgv: 101 }]);
  await until(async () => (await statusOf(ids.gone)) === 'off' && (await statusOf(ids.refused)) === 'error' && (await statusOf(ids.busy)) === 'error');
  expect(await statusOf(ids.gone)).toBe('off');
  expect(await statusOf(ids.refused)).toBe('error');
  expect(await statusOf(ids.busy)).toBe('error');
  expect([answers.get('/gone')!.events, answers.get('/refused')!.events, answers.get('/busy')!.events]).toEqual([1, 1, 3]);

  // later readings: nothing more to the endpoint that said Gone
  await ingest(t.app, patient, [{ epochMs: Date.now() - 30_000, sgv: 102 }]);
  await new Promise((r) => setTimeout(r, 500));
  expect(answers.get('/gone')!.events).toBe(1);
}, 60_000);
