/**
 * Backport Subscriptions across processes sharing one data directory (two servers, or a server and
 * CLI commands): one holds the delivery lease and delivers; a Subscription created, updated or
 * deleted through another is taken up by the holder at its next poll — not only after the holder
 * restarts — and the event numbering carries on across processes and across a lease handover.
 * The chain runs on its own (as `glucoguard chain node` would), so either app can stop.
 */
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Parameters, Subscription } from '@medplum/fhirtypes';
import request from 'supertest';
import { startEmbeddedChain, type EmbeddedChain } from '../../chain/node/index.js';
import { TOPICS } from '../../src/exchange/subscriptions.js';
import { startTestApp, tempDir, type TestApp } from '../support/app.js';
import { param, receiver, statusOf, typeOf, type Receiver } from '../support/hook-receiver.js';
import { DAY, grant, ingest, person, practitionerToken, registerIdentity } from './consent-helpers.js';

const BACKPORT = 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/';

const eventNumbers = (p: Parameters) => p.parameter!.filter((x) => x.name === 'notification-event').map((x) => x.part!.find((y) => y.name === 'event-number')!.valueString);
const waitFor = async (done: () => boolean, ms = 10_000) => {
  for (const until = Date.now() + ms; !done() && Date.now() < until;) await new Promise((r) => setTimeout(r, 20));
};

describe('subscriptions on processes sharing a data directory (delivery lease)', () => {
  const dataDir = tempDir();
  const chainDir = tempDir('gg-test-chain-');
  let chain: EmbeddedChain;
  let rx: Receiver;
  let rx2: Receiver;
  let env: Record<string, string>;
  /** The process that starts first: it holds the delivery lease. */
  let a: TestApp;
  /** A second process on the same data directory: passive while `a` runs. */
  let b: TestApp;
  let ben: string;
  let token: string;
  const now = Date.now();
  let minute = 0;
  const fresh = (n: number) => Array.from({ length: n }, () => ({ epochMs: Math.floor(now / 60_000) * 60_000 - 3_600_000 + (++minute) * 60_000, sgv: 100 + minute }));

  const subscription = (endpoint: string): Subscription => ({
    resourceType: 'Subscription', status: 'requested', reason: 'follow-up', criteria: TOPICS.readings,
    _criteria: { extension: [{ url: `${BACKPORT}backport-filter-criteria`, valueString: `Observation?patient=Patient/${ben}` }] },
    channel: {
      type: 'rest-hook', endpoint, payload: 'application/fhir+json',
      _payload: { extension: [{ url: `${BACKPORT}backport-payload-content`, valueCode: 'id-only' }] },
    },
  } as Subscription);
  const as = (req: request.Test) => req.set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT').set('Content-Type', 'application/fhir+json');
  const mine = (r: Receiver, id: string) => r.bundles.filter((x) => param(statusOf(x), 'subscription')?.valueReference?.reference?.endsWith(`/Subscription/${id}`));
  const notified = (r: Receiver, id: string) => mine(r, id).filter((x) => typeOf(x) === 'event-notification');
  /** The event numbers notified, in the order sent (however the deliverer batched them). */
  const numbers = (r: Receiver, id: string) => notified(r, id).flatMap((x) => eventNumbers(statusOf(x)));
  const statusVia = async (t: TestApp, id: string) => {
    const res = await as(request(t.app.http).get(`/fhir/Subscription/${id}/$status`));
    expect(res.status).toBe(200);
    const p = res.body.entry[0].resource as Parameters;
    return { status: param(p, 'status')?.valueCode, events: param(p, 'events-since-subscription-start')?.valueString };
  };

  beforeAll(async () => {
    rx = await receiver();
    rx2 = await receiver();
    chain = await startEmbeddedChain({ dataDir: chainDir, port: 0, blockPeriod: 0, chainId: 1337 });
    env = {
      CHAIN_RPC_URL: chain.rpcUrl, CHAIN_AUTHORITY_KEY_FILE: path.join(chainDir, 'chain', 'signer.key'), CHAIN_DEPLOYMENT_FILE: path.join(chainDir, 'chain', 'deployment.json'),
      GLUCOGUARD_MASTER_KEY: randomBytes(32).toString('base64'),
      GLUCOGUARD_AUTH: 'on', GLUCOGUARD_SUBSCRIPTION_RETRIES: '2', GLUCOGUARD_SUBSCRIPTION_RETRY_MS: '10', GLUCOGUARD_SUBSCRIPTION_POLL_MS: '100',
      GLUCOGUARD_SUBSCRIPTION_ALLOW: `${new URL(rx.url).host},${new URL(rx2.url).host}`,
    };
    a = await startTestApp(env, dataDir);
    ben = await person(a.app, 'Patient', 'Okafor');
    const doc = await person(a.app, 'Practitioner', 'Osei');
    await registerIdentity(a.app, `Practitioner/${doc}`);
    expect((await grant(a.app, { patient: ben, actor: `Practitioner/${doc}`, accessTo: now + DAY, dataFrom: now - DAY, dataTo: now + DAY, purposes: ['TREAT'], classes: ['Observation'] })).status).toBe(201);
    token = practitionerToken(a.app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs', 'user/Subscription.cruds']);
    b = await startTestApp(env, dataDir);
  }, 120_000);
  // closing two apps stops two anchorers that may be waiting on receipts
  afterAll(async () => {
    await a?.app.close();
    await b?.app.close();
    await chain?.close();
    rmSync(dataDir, { recursive: true, force: true });
    rmSync(chainDir, { recursive: true, force: true });
    rx?.server.close();
    rx2?.server.close();
  }, 60_000);

  let id: string;

  test('a Subscription created through the passive process is delivered by the holder without a restart: handshake, then events it numbers', async () => {
    expect(a.app.exchange.subscriptions.delivering).toBe(true);
    expect(b.app.exchange.subscriptions.delivering).toBe(false);
    const created = await as(request(b.app.http).post('/fhir/Subscription')).send(subscription(rx.url));
    expect(created.status).toBe(201);
    id = created.body.id as string;
    await waitFor(() => a.app.exchange.subscriptions.get(id)?.status === 'active');
    expect(a.app.exchange.subscriptions.get(id)?.status).toBe('active');
    expect(mine(rx, id).map(typeOf)).toEqual(['handshake']);
    // the passive process answers $status from the store: what the holder did shows there
    expect(await statusVia(b, id)).toEqual({ status: 'active', events: '0' });

    // readings written through either process are numbered and delivered once, by the holder
    await ingest(b.app, ben, fresh(2));
    await waitFor(() => numbers(rx, id).length === 2);
    await ingest(a.app, ben, fresh(1));
    await waitFor(() => numbers(rx, id).length === 3);
    expect(numbers(rx, id)).toEqual(['1', '2', '3']);
    expect(await statusVia(b, id)).toEqual({ status: 'active', events: '3' });
  }, 30_000);

  test('an update through the passive process is taken up by the holder (new endpoint, new handshake); the numbering carries on', async () => {
    const current = (await a.app.repository.read<Subscription>('Subscription', id));
    const updated = await as(request(b.app.http).put(`/fhir/Subscription/${id}`)).send({ ...subscription(rx2.url), id, meta: current.meta });
    expect(updated.status).toBe(200);
    await waitFor(() => a.app.exchange.subscriptions.get(id)?.endpoint === rx2.url && a.app.exchange.subscriptions.get(id)?.status === 'active');
    expect(a.app.exchange.subscriptions.get(id)).toMatchObject({ endpoint: rx2.url, status: 'active', events: 3 });
    expect(mine(rx2, id).map(typeOf)).toEqual(['handshake']);
    const before = mine(rx, id).length;
    await ingest(a.app, ben, fresh(1));
    await a.app.exchange.subscriptions.idle();
    expect(numbers(rx2, id)).toEqual(['4']);
    expect(mine(rx, id)).toHaveLength(before); // the old endpoint hears nothing more
  }, 30_000);

  test('a delete through the passive process stops the holder\'s delivery, and the holder does not bring the Subscription back', async () => {
    expect((await as(request(b.app.http).delete(`/fhir/Subscription/${id}`))).status).toBe(204);
    await waitFor(() => a.app.exchange.subscriptions.get(id) === undefined);
    expect(a.app.exchange.subscriptions.get(id)).toBeUndefined();
    const sent = mine(rx2, id).length;
    await ingest(a.app, ben, fresh(1));
    await a.app.exchange.subscriptions.idle();
    expect(mine(rx2, id)).toHaveLength(sent);
    expect(b.app.exchange.subscriptions.get(id)).toBeUndefined();
    expect((await as(request(b.app.http).get(`/fhir/Subscription/${id}/$status`))).status).toBe(404);
  }, 30_000);

  test('when the holder stops, the other process takes over delivery, numbering on; Subscriptions created through the stopped one\'s successor are taken up too', async () => {
    const created = await as(request(b.app.http).post('/fhir/Subscription')).send(subscription(rx.url));
    expect(created.status).toBe(201);
    const kept = created.body.id as string;
    await waitFor(() => a.app.exchange.subscriptions.get(kept)?.status === 'active');
    await ingest(a.app, ben, fresh(1));
    await a.app.exchange.subscriptions.idle();
    expect(numbers(rx, kept)).toEqual(['1']);

    // a clean stop gives the lease up; the other process takes it at its next poll
    await a.app.close();
    await waitFor(() => b.app.exchange.subscriptions.delivering);
    expect(b.app.exchange.subscriptions.delivering).toBe(true);
    await ingest(b.app, ben, fresh(1));
    await b.app.exchange.subscriptions.idle();
    expect(numbers(rx, kept)).toEqual(['1', '2']);

    // the stopped process comes back: passive now; what is created through it, the new holder delivers
    a = await startTestApp(env, dataDir);
    expect(a.app.exchange.subscriptions.delivering).toBe(false);
    const later = await as(request(a.app.http).post('/fhir/Subscription')).send(subscription(rx2.url));
    expect(later.status).toBe(201);
    await waitFor(() => b.app.exchange.subscriptions.get(later.body.id)?.status === 'active');
    expect(mine(rx2, later.body.id).map(typeOf)).toEqual(['handshake']);
    await ingest(a.app, ben, fresh(1));
    await waitFor(() => numbers(rx2, later.body.id).length === 1 && numbers(rx, kept).length === 3);
    expect(numbers(rx2, later.body.id)).toEqual(['1']);
    expect(numbers(rx, kept)).toEqual(['1', '2', '3']);
  }, 60_000);
});
