/**
 * Upgrade round (session 25): a Subscription created by the previous release (bcbb3ac) has its
 * `channel.header` values in clear in the repository's copy — that release stored the resource as
 * the client sent it (the values were sealed in exports/subscriptions.sqlite only). This release
 * writes `[sealed]` in their place, but when its deliverer records a status change of such a
 * Subscription (active → error after failed deliveries) it copies the current repository version
 * and writes it again: the receiver's secret goes into a new version written by this code — on an
 * upstream, into the EHR's database — in clear.
 *
 * The earlier release's copy is made here as it made it: the state sealed in the subscription
 * store (what a create does in both releases) and a repository version holding the clear values.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Subscription } from '@medplum/fhirtypes';
import request from 'supertest';
import { TOPICS } from '../../src/exchange/subscriptions.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { receiver, type Receiver } from '../support/hook-receiver.js';
import { ingest, patientToken, person } from './consent-helpers.js';

const BACKPORT = 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/';
const SECRET = 'hook-secret-bb25-upgrade';

describe('upgrade: a Subscription stored by the previous release with clear header values', () => {
  let t: TestApp;
  let rx: Receiver;
  let ana: string;

  beforeAll(async () => {
    rx = await receiver();
    t = await startTestApp({
      GLUCOGUARD_AUTH: 'on', GLUCOGUARD_SUBSCRIPTION_RETRIES: '2', GLUCOGUARD_SUBSCRIPTION_RETRY_MS: '20',
      GLUCOGUARD_SUBSCRIPTION_ALLOW: new URL(rx.url).host,
    });
    ana = await person(t.app, 'Patient', 'Rivera');
  }, 120_000);
  afterAll(async () => {
    await t?.close();
    rx?.server.close();
  });

  test('a status change the deliverer records does not write the header values in clear again', async () => {
    const sub = {
      resourceType: 'Subscription', status: 'requested', reason: 'upgrade', criteria: TOPICS.readings,
      _criteria: { extension: [{ url: `${BACKPORT}backport-filter-criteria`, valueString: `Observation?patient=Patient/${ana}` }] },
      channel: {
        type: 'rest-hook', endpoint: rx.url, payload: 'application/fhir+json', header: [`Authorization: Bearer ${SECRET}`],
        _payload: { extension: [{ url: `${BACKPORT}backport-payload-content`, valueCode: 'id-only' }] },
      },
    } as Subscription;
    const created = await request(t.app.http).post('/fhir/Subscription').set('Authorization', `Bearer ${patientToken(t.app, ana)}`)
      .set('Content-Type', 'application/fhir+json').send(sub);
    expect(created.status).toBe(201);
    const id = created.body.id as string;
    const subs = t.app.exchange.subscriptions;
    await subs.idle();
    for (let i = 0; i < 100 && subs.get(id)?.status !== 'active'; i++) await new Promise((r) => setTimeout(r, 20));
    expect(subs.get(id)?.status).toBe('active');

    // the repository's copy as the previous release kept it: the header values in clear
    const current = await t.app.repository.read<Subscription>('Subscription', id);
    const old = await t.app.repository.update<Subscription>({ ...current, channel: { ...current.channel, header: [`Authorization: Bearer ${SECRET}`] } });
    const oldVersion = Number(old.resource.meta!.versionId);

    // the receiver fails every delivery: the deliverer turns the Subscription to error and records it
    rx.down = true;
    await ingest(t.app, ana, [{ epochMs: Math.floor(Date.now() / 60_000) * 60_000 - 60_000, sgv: 123 }]);
    await subs.idle();
    for (let i = 0; i < 200 && subs.get(id)?.status !== 'error'; i++) await new Promise((r) => setTimeout(r, 20));
    expect(subs.get(id)?.status).toBe('error');
    let latest = await t.app.repository.read<Subscription>('Subscription', id);
    for (let i = 0; i < 100 && latest.status !== 'error'; i++) {
      await new Promise((r) => setTimeout(r, 20));
      latest = await t.app.repository.read<Subscription>('Subscription', id);
    }
    expect(latest.status).toBe('error');
    expect(Number(latest.meta!.versionId)).toBeGreaterThan(oldVersion);
    // the version this release wrote names the header only
    expect(JSON.stringify(latest)).not.toContain(SECRET);
    expect(latest.channel.header).toEqual(['Authorization: [sealed]']);
  }, 60_000);

  test('at start, the delivering server seals the header values of copies an earlier release stored in clear', async () => {
    const [state] = t.app.exchange.subscriptions.list();
    expect(state).toBeDefined();
    const current = await t.app.repository.read<Subscription>('Subscription', state!.id);
    await t.app.repository.update<Subscription>({ ...current, channel: { ...current.channel, header: [`Authorization: Bearer ${SECRET}`] } });
    await t.restart();
    let latest = await t.app.repository.read<Subscription>('Subscription', state!.id);
    for (let i = 0; i < 100 && JSON.stringify(latest).includes(SECRET); i++) {
      await new Promise((r) => setTimeout(r, 20));
      latest = await t.app.repository.read<Subscription>('Subscription', state!.id);
    }
    expect(latest.channel.header).toEqual(['Authorization: [sealed]']);
    // the value itself is still the one sent to the receiver
    expect(t.app.exchange.subscriptions.get(state!.id)?.headers).toEqual([`Authorization: Bearer ${SECRET}`]);
  }, 60_000);
});
