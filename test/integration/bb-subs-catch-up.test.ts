/**
 * Readings another process wrote (`glucoguard ingest`) that the delivering server had not yet
 * polled for when it stopped — killed between a write and its next poll, or not running at all —
 * must still be notified when a server delivers again, under new event numbers and once only.
 * Before, a newly started holder began at the newest commitment: those readings were never
 * numbered, so the subscriber could not even see a gap to fill with `$events` (black-box round,
 * 2026-12-06: `kill -9` within a poll interval of a CLI ingest lost its readings silently).
 * The chain runs on its own (as `glucoguard chain node` would), so either app can stop.
 */
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, expect, test } from '@jest/globals';
import type { Parameters, Subscription } from '@medplum/fhirtypes';
import request from 'supertest';
import { startEmbeddedChain, type EmbeddedChain } from '../../chain/node/index.js';
import { SubscriptionStore } from '../../src/exchange/subscription-store.js';
import { TOPICS } from '../../src/exchange/subscriptions.js';
import { startTestApp, tempDir, type TestApp } from '../support/app.js';
import { param, receiver, statusOf, typeOf, type Receiver } from '../support/hook-receiver.js';
import { ingest, person } from './consent-helpers.js';

const eventNumbers = (p: Parameters) => p.parameter!.filter((x) => x.name === 'notification-event').map((x) => x.part!.find((y) => y.name === 'event-number')!.valueString);
const waitFor = async (done: () => boolean, ms = 10_000) => {
  for (const until = Date.now() + ms; !done() && Date.now() < until;) await new Promise((r) => setTimeout(r, 20));
};

const dataDir = tempDir();
const chainDir = tempDir('gg-test-chain-');
let chain: EmbeddedChain;
let rx: Receiver;
let env: Record<string, string>;
let a: TestApp;
let subscriptionId: string;
const now = Date.now();
let minute = 0;
const fresh = (n: number) => Array.from({ length: n }, () => ({ epochMs: Math.floor(now / 60_000) * 60_000 - 3_600_000 + (++minute) * 60_000, sgv: 100 + minute }));
const notified = () => rx.bundles.filter((b) => typeOf(b) === 'event-notification');
const numbers = () => notified().flatMap((b) => eventNumbers(statusOf(b)));
const focusCount = () => notified().reduce((n, b) => n + b.entry!.length - 1, 0);

beforeAll(async () => {
  rx = await receiver();
  chain = await startEmbeddedChain({ dataDir: chainDir, port: 0, blockPeriod: 0, chainId: 1337 });
  env = {
    CHAIN_RPC_URL: chain.rpcUrl, CHAIN_AUTHORITY_KEY_FILE: path.join(chainDir, 'chain', 'signer.key'), CHAIN_DEPLOYMENT_FILE: path.join(chainDir, 'chain', 'deployment.json'),
    GLUCOGUARD_MASTER_KEY: randomBytes(32).toString('base64'),
    // the holder looks for other processes' writes at start-up only: the poll interval is where a crash loses them
    GLUCOGUARD_SUBSCRIPTION_RETRIES: '2', GLUCOGUARD_SUBSCRIPTION_RETRY_MS: '10', GLUCOGUARD_SUBSCRIPTION_POLL_MS: '60000',
    GLUCOGUARD_SUBSCRIPTION_ALLOW: new URL(rx.url).host,
  };
  a = await startTestApp(env, dataDir);
}, 120_000);

afterAll(async () => {
  await a?.app.close();
  await chain?.close();
  rmSync(dataDir, { recursive: true, force: true });
  rmSync(chainDir, { recursive: true, force: true });
  rx?.server.close();
}, 60_000);

test('readings another process wrote before the holder polled are numbered and sent by the next holder, once, after what was sent', async () => {
  const ben = await person(a.app, 'Patient', 'Okafor');
  const created = await request(a.app.http).post('/fhir/Subscription').set('Content-Type', 'application/fhir+json').send({
    resourceType: 'Subscription', status: 'requested', reason: 'follow-up', criteria: TOPICS.readings,
    channel: { type: 'rest-hook', endpoint: rx.url, payload: 'application/fhir+json' },
  } satisfies Subscription);
  expect(created.status).toBe(201);
  const id = created.body.id as string;
  subscriptionId = id;
  await waitFor(() => a.app.exchange.subscriptions.get(id)?.status === 'active');
  expect(a.app.exchange.subscriptions.delivering).toBe(true);

  // the server's own writes: numbered at once
  await ingest(a.app, ben, fresh(2));
  await waitFor(() => numbers().length === 2);
  expect(numbers()).toEqual(['1', '2']);

  // a passive process (as `glucoguard ingest` beside the server) writes 3 readings; the holder has not polled yet
  const cli = await startTestApp(env, dataDir);
  expect(cli.app.exchange.subscriptions.delivering).toBe(false);
  await ingest(cli.app, ben, fresh(3));
  await cli.app.close();
  await a.app.exchange.subscriptions.idle();
  expect(numbers()).toEqual(['1', '2']);

  // the server stops before its next poll and starts again: it goes on from where it had numbered
  await a.restart();
  await waitFor(() => numbers().length === 5);
  await a.app.exchange.subscriptions.idle();
  expect(numbers()).toEqual(['1', '2', '3', '4', '5']);
  expect(focusCount()).toBe(5);

  // nothing it had numbered already is numbered again by a later restart (the mark, and the event log)
  await a.restart();
  await ingest(a.app, ben, fresh(1));
  await waitFor(() => numbers().length === 6);
  await a.app.exchange.subscriptions.idle();
  expect(numbers()).toEqual(['1', '2', '3', '4', '5', '6']);
  const status = await request(a.app.http).get(`/fhir/Subscription/${id}/$status`);
  expect(param(status.body.entry[0].resource as Parameters, 'events-since-subscription-start')?.valueString).toBe('6');
}, 120_000);

test('a holder that stops records how far it numbered: over its own writes, up to the first one another process wrote', async () => {
  const ben = await person(a.app, 'Patient', 'Mensah');
  await a.app.exchange.subscriptions.idle();
  await ingest(a.app, ben, fresh(2)); // own writes, numbered at once; no poll runs before the close
  await a.app.exchange.subscriptions.idle();
  const ownEnd = a.app.ledger.store.lastSeq();
  const cli = await startTestApp(env, dataDir);
  await ingest(cli.app, ben, fresh(1)); // another process's reading, not yet polled for
  await cli.app.close();
  const foreign = a.app.ledger.store.after(ownEnd, 100).find((r) => r.type === 'Observation')!;
  expect(foreign).toBeDefined();
  await a.app.close();
  const store = new SubscriptionStore(path.join(dataDir, 'exports'));
  try {
    // stopped right before the other process's reading (versions that are no reading, e.g. its Device, are passed too)
    expect(store.commitmentsSeen()).toBe(foreign.seq - 1);
    expect(store.commitmentsSeen()).toBeGreaterThanOrEqual(ownEnd);
    expect(store.events(subscriptionId, 1, 100, 100)).toHaveLength(8);
  } finally {
    store.close();
  }
  a = await startTestApp(env, dataDir);
  await waitFor(() => numbers().length === 9);
  await a.app.exchange.subscriptions.idle();
  expect(numbers()).toEqual(['1', '2', '3', '4', '5', '6', '7', '8', '9']);
}, 120_000);
