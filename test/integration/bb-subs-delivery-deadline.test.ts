/**
 * A rest-hook endpoint that answers 200 and then trickles its body a byte at a time, never ending
 * it, must not hold a Subscription's delivery forever: the socket's idle timeout never fires, so
 * each attempt needs a bound on the whole exchange. Without it the notification stayed "in flight"
 * for good — no retry, no `error` status, heartbeats and later events stuck behind it, and a
 * graceful shutdown waiting on it (black-box round, 2026-12-06).
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
let url: string;
const types: string[] = [];
const open = new Set<NodeJS.Timeout>();

beforeAll(async () => {
  server = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => { body += c.toString(); });
    req.on('end', () => {
      const type = typeOf(JSON.parse(body) as Bundle) ?? '?';
      types.push(type);
      if (type !== 'event-notification') {
        res.writeHead(200).end();
        return;
      }
      // headers at once, then a byte every 200 ms, never the end of the body
      res.writeHead(200);
      const drip = setInterval(() => res.write('.'), 200);
      open.add(drip);
      req.socket.on('close', () => {
        clearInterval(drip);
        open.delete(drip);
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
  t = await startTestApp({ GLUCOGUARD_SUBSCRIPTION_RETRIES: '2', GLUCOGUARD_SUBSCRIPTION_RETRY_MS: '20', GLUCOGUARD_SUBSCRIPTION_ALLOW: new URL(url).host });
}, 120_000);

afterAll(async () => {
  for (const d of open) clearInterval(d);
  await t?.close();
  server?.closeAllConnections();
  server?.close();
});

test('a receiver that never finishes its answer fails the attempt within the delivery timeout, and the Subscription turns error', async () => {
  const patient = await person(t.app, 'Patient', 'Drip');
  const sub = await request(t.app.http).post('/fhir/Subscription').set('Content-Type', 'application/fhir+json').send({
    resourceType: 'Subscription', status: 'requested', reason: 'bb', criteria: TOPICS.readings,
    channel: { type: 'rest-hook', endpoint: url },
  } satisfies Subscription);
  expect(sub.status).toBe(201);
  const id = (sub.body as Subscription).id!;
  const status = async () => {
    const res = await request(t.app.http).get(`/fhir/Subscription/${id}/$status`);
    return param(res.body.entry[0].resource as Parameters, 'status')?.valueCode;
  };
  for (let i = 0; i < 100 && (await status()) !== 'active'; i++) await new Promise((r) => setTimeout(r, 50));
  expect(await status()).toBe('active');

  await ingest(t.app, patient, [{ epochMs: Date.now() - 60_000, sgv: 123 }]);
  // two attempts of at most 10 s each (the delivery timeout), then error
  const started = Date.now();
  while (Date.now() - started < 30_000 && (await status()) !== 'error') await new Promise((r) => setTimeout(r, 250));
  expect(await status()).toBe('error');
  expect(types.filter((x) => x === 'event-notification')).toHaveLength(2);
  const res = await request(t.app.http).get(`/fhir/Subscription/${id}/$status`);
  expect(param(res.body.entry[0].resource as Parameters, 'error')?.valueCodeableConcept?.text).toBe('Delivery failed after 2 attempts');
}, 60_000);
