/**
 * Black-box round 25: Bulk Data export and subscriptions in front of an upstream FHIR server
 * (test/support/upstream-server.ts, a real HTTP FHIR server), over HTTP.
 * - An upstream that fails part-way through an export (502) does not fail the job for good: it runs
 *   again from the start; one that keeps failing ends the job with a status that says so (502,
 *   `processing`), not "internal error", and no file is served.
 * - An export by a grantee sends the upstream no search for the patients who granted them nothing
 *   (one per patient and type: an EHR's whole population), and a page of readings costs one search.
 * - `$events` while the upstream fails answers that failure, not a bundle without the events.
 * - A notification's `events-since-subscription-start` counts the events up to its own last one.
 * - A research notification names its pseudonymised focus by a `urn:uuid:`, not by a URL on this
 *   server that would never serve it (a research read is refused, and the pseudonym is no id here).
 * - A Subscription's `channel.header` values (the receiver's bearer token) never reach the upstream:
 *   its copy names the headers only; they are still sent, and kept when an update sends them back as read.
 */
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, Organization, Subscription } from '@medplum/fhirtypes';
import request from 'supertest';
import type { ExportServiceOptions } from '../../src/exchange/export.js';
import { TOPICS } from '../../src/exchange/subscriptions.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { param, receiver, statusOf, typeOf, type Receiver } from '../support/hook-receiver.js';
import { startUpstreamFhirServer, type UpstreamFhirServer } from '../support/upstream-server.js';
import { nightscoutJson } from '../fixtures/cgm-ingest/trace.js';
import { DAY, grant, ingest, person, practitionerToken, registerIdentity } from './consent-helpers.js';

const BACKPORT = 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/';
const FAILED = { status: 502, body: { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'exception', diagnostics: 'db down' }] } };
const MINUTE = 60_000;

/** `n` readings a minute apart, from 12 hours ago, starting `offset` minutes later than 0. */
function readings(n: number, offset = 0): { epochMs: number; sgv: number }[] {
  const start = Math.floor(Date.now() / MINUTE) * MINUTE - 12 * 3_600_000;
  return Array.from({ length: n }, (_x, i) => ({ epochMs: start + (offset + i) * MINUTE, sgv: 90 + ((offset + i) % 120) }));
}

/** The job id of a kick-off's Content-Location. */
const jobOf = (res: request.Response): string => new URL(res.headers['content-location'] as string).searchParams.get('_job')!;

describe('export over an upstream that fails part-way (auth off)', () => {
  let upstream: UpstreamFhirServer;
  let t: TestApp;
  let ana: string;

  beforeAll(async () => {
    upstream = await startUpstreamFhirServer();
    t = await startTestApp({ UPSTREAM_FHIR_URL: upstream.url, GLUCOGUARD_EXPORT_RETRY_AFTER: '1' });
    // a job cut off by the upstream waits 15 s (then 30 s) before it runs again; here 100 ms
    (t.app.exchange.exports as unknown as { options: ExportServiceOptions }).options.unavailableRetryMs = 100;
    ana = (await request(t.app.http).post('/fhir/Patient').set('Content-Type', 'application/fhir+json')
      .send({ resourceType: 'Patient', name: [{ family: 'Rivera' }] })).body.id;
    const ingested = await request(t.app.http).post(`/cgm/ingest?patient=${ana}&format=nightscout`).send(nightscoutJson(readings(30) as never));
    expect([ingested.status, ingested.body.created]).toEqual([200, 30]);
  }, 120_000);
  afterAll(async () => {
    await t?.close();
    await upstream?.close();
  });

  const kickOff = () => request(t.app.http).get('/fhir/$export?_type=Observation').set('Prefer', 'respond-async');

  test('a job the upstream cut off runs again: the manifest holds every reading once', async () => {
    // the Observation searches fail twice, then answer
    let failures = 2;
    upstream.intercept((req) => (req.method === 'GET' && req.url.includes('/Observation?') && failures-- > 0 ? FAILED : undefined));
    try {
      const kick = await kickOff();
      expect(kick.status).toBe(202);
      const done = await t.app.exchange.exports.whenDone(jobOf(kick), 20);
      expect([done?.status, done?.attempts]).toEqual(['completed', 3]);
      const manifest = await request(t.app.http).get(`/fhir/$export-status?_job=${jobOf(kick)}`);
      expect(manifest.status).toBe(200);
      expect(manifest.body.output).toEqual([expect.objectContaining({ type: 'Observation', count: 30 })]);
    } finally {
      upstream.intercept(undefined);
    }
  }, 60_000);

  test('an upstream that keeps failing ends the job with its own status (502), not an internal error; no file is left', async () => {
    upstream.intercept((req) => (req.method === 'GET' && req.url.includes('/Observation?') ? FAILED : undefined));
    try {
      const kick = await kickOff();
      const job = jobOf(kick);
      // while it waits to run again, the status says so
      let progress: string | undefined;
      for (let i = 0; i < 100 && !progress?.startsWith('waiting'); i++) {
        await new Promise((r) => setTimeout(r, 10));
        const s = t.app.exchange.exports.store.get(job);
        progress = s?.status === 'queued' ? s.progress : undefined;
      }
      expect(progress).toMatch(/^waiting to run again: Upstream FHIR server error \(attempt 1 of 3\)/);
      const done = await t.app.exchange.exports.whenDone(job, 20);
      expect(done?.status).toBe('failed');
      const status = await request(t.app.http).get(`/fhir/$export-status?_job=${job}`);
      expect(status.status).toBe(502);
      // not `transient`: that would tell the client to poll again (Bulk Data IG), and the job has failed for good
      expect(status.body.issue[0].code).toBe('processing');
      expect(status.body.issue[0].diagnostics).toMatch(/after 3 attempts: Upstream FHIR server error/);
      expect(JSON.stringify(status.body)).not.toContain('db down');
      expect(existsSync(path.join(t.dataDir, 'exports', job))).toBe(false);
      expect(readdirSync(path.join(t.dataDir, 'exports')).filter((f) => f.includes(job))).toEqual([]);
    } finally {
      upstream.intercept(undefined);
    }
  }, 60_000);

  test('each page of readings costs one upstream search', async () => {
    const more = await request(t.app.http).post(`/cgm/ingest?patient=${ana}&format=nightscout`).send(nightscoutJson(readings(600, 30) as never));
    expect([more.status, more.body.created]).toEqual([200, 600]);
    const before = upstream.requests.length;
    const kick = await kickOff();
    expect((await t.app.exchange.exports.whenDone(jobOf(kick), 20))?.status).toBe('completed');
    const manifest = await request(t.app.http).get(`/fhir/$export-status?_job=${jobOf(kick)}`);
    expect(manifest.body.output).toEqual([expect.objectContaining({ type: 'Observation', count: 630 })]);
    // 630 readings in pages of 250: three searches (before: each page past the first was two, the
    // second a whole page of 250 for the one reading past an offset of 1)
    const searches = upstream.requests.slice(before).filter((r) => r.method === 'GET' && r.url.includes('/Observation?'));
    expect(searches.length).toBeLessThanOrEqual(3);
  }, 60_000);

  test('a job cancelled while it waits to run again stays cancelled', async () => {
    upstream.intercept((req) => (req.method === 'GET' && req.url.includes('/Observation?') ? FAILED : undefined));
    try {
      const kick = await kickOff();
      const job = jobOf(kick);
      for (let i = 0; i < 100 && t.app.exchange.exports.store.get(job)?.progress === undefined; i++) await new Promise((r) => setTimeout(r, 10));
      expect((await request(t.app.http).delete(`/fhir/$export-status?_job=${job}`)).status).toBe(202);
      upstream.intercept(undefined);
      await new Promise((r) => setTimeout(r, 400)); // past the retry's wait
      expect(t.app.exchange.exports.store.get(job)).toBeUndefined();
      expect(existsSync(path.join(t.dataDir, 'exports', job))).toBe(false);
    } finally {
      upstream.intercept(undefined);
    }
  }, 60_000);
});

describe('a grantee\'s export over an upstream reads only the patients who granted them', () => {
  let upstream: UpstreamFhirServer;
  let t: TestApp;
  let ana: string;
  let token: string;
  const others: string[] = [];

  beforeAll(async () => {
    upstream = await startUpstreamFhirServer();
    t = await startTestApp({ UPSTREAM_FHIR_URL: upstream.url, GLUCOGUARD_AUTH: 'on', GLUCOGUARD_EXPORT_RETRY_AFTER: '1' });
    ana = await person(t.app, 'Patient', 'Rivera');
    for (let i = 0; i < 5; i++) others.push(await person(t.app, 'Patient', `Other${i}`));
    const doc = await person(t.app, 'Practitioner', 'Osei');
    await registerIdentity(t.app, `Practitioner/${doc}`);
    const now = Date.now();
    expect((await grant(t.app, { patient: ana, actor: `Practitioner/${doc}`, accessTo: now + DAY, dataFrom: now - DAY, dataTo: now + DAY })).status).toBe(201);
    token = practitionerToken(t.app, doc);
  }, 120_000);
  afterAll(async () => {
    await t?.close();
    await upstream?.close();
  });

  test('no upstream search for a patient who granted nothing', async () => {
    const before = upstream.requests.length;
    const kick = await request(t.app.http).get('/fhir/Patient/$export').set('Prefer', 'respond-async')
      .set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT');
    expect(kick.status).toBe(202);
    expect((await t.app.exchange.exports.whenDone(jobOf(kick), 20))?.status).toBe('completed');
    const sent = upstream.requests.slice(before).map((r) => decodeURIComponent(r.url));
    // the granted patient's data was read …
    expect(sent.some((u) => u.includes(`patient=Patient/${ana}`))).toBe(true);
    // … and nothing of the five others' (before: a search per type for each)
    for (const other of others) expect(sent.filter((u) => u.includes(`patient=Patient/${other}`))).toEqual([]);
    // … nor were all the upstream's patients listed to find the granted one (before: once per type)
    expect(sent.filter((u) => /\/Patient\?.*_sort=_id/.test(u))).toEqual([]);
    const manifest = await request(t.app.http).get(`/fhir/$export-status?_job=${jobOf(kick)}`).set('Authorization', `Bearer ${token}`);
    expect(manifest.body.output).toEqual([expect.objectContaining({ type: 'Patient', count: 1 })]);
  }, 60_000);
});

describe('subscriptions over an upstream (auth off)', () => {
  let upstream: UpstreamFhirServer;
  let t: TestApp;
  let rx: Receiver;
  let ana: string;
  let sub: string;

  beforeAll(async () => {
    upstream = await startUpstreamFhirServer();
    rx = await receiver();
    t = await startTestApp({
      UPSTREAM_FHIR_URL: upstream.url, GLUCOGUARD_SUBSCRIPTION_ALLOW: new URL(rx.url).host, GLUCOGUARD_SUBSCRIPTION_HTTP: 'true',
      GLUCOGUARD_SUBSCRIPTION_RETRIES: '3', GLUCOGUARD_SUBSCRIPTION_RETRY_MS: '20',
    });
    ana = (await request(t.app.http).post('/fhir/Patient').set('Content-Type', 'application/fhir+json')
      .send({ resourceType: 'Patient', name: [{ family: 'Rivera' }] })).body.id;
    const body: Subscription = {
      resourceType: 'Subscription', status: 'requested', reason: 'bb25', criteria: TOPICS.readings,
      _criteria: { extension: [{ url: `${BACKPORT}backport-filter-criteria`, valueString: `Observation?patient=Patient/${ana}` }] },
      channel: { type: 'rest-hook', endpoint: rx.url, payload: 'application/fhir+json', _payload: { extension: [{ url: `${BACKPORT}backport-payload-content`, valueCode: 'id-only' }] } },
    } as Subscription;
    const created = await request(t.app.http).post('/fhir/Subscription').set('Content-Type', 'application/fhir+json').send(body);
    expect(created.status).toBe(201);
    sub = created.body.id;
    await t.app.exchange.subscriptions.idle();
    for (let i = 0; i < 50 && t.app.exchange.subscriptions.get(sub)?.status !== 'active'; i++) await new Promise((r) => setTimeout(r, 20));
  }, 120_000);
  afterAll(async () => {
    upstream?.intercept(undefined);
    await t?.close();
    await upstream?.close();
    rx?.server.close();
  });

  const eventNumbers = (b: Bundle): number[] => statusOf(b).parameter!.filter((p) => p.name === 'notification-event')
    .map((p) => Number(p.part!.find((x) => x.name === 'event-number')!.valueString));
  const sinceStart = (b: Bundle): number => Number(param(statusOf(b), 'events-since-subscription-start')!.valueString);

  test('each notification counts the events up to its own last one, not those numbered after it', async () => {
    // 250 readings at once: three notifications (100 events each at most), all numbered before the first is sent
    const res = await request(t.app.http).post(`/cgm/ingest?patient=${ana}&format=nightscout`).send(nightscoutJson(readings(250) as never));
    expect([res.status, res.body.created]).toEqual([200, 250]);
    await t.app.exchange.subscriptions.idle();
    const events = rx.bundles.filter((b) => typeOf(b) === 'event-notification');
    expect(events.length).toBe(3);
    expect(events.flatMap(eventNumbers)).toEqual(Array.from({ length: 250 }, (_x, i) => i + 1));
    for (const b of events) expect(sinceStart(b)).toBe(Math.max(...eventNumbers(b)));
    // $status still tells the total
    const status = await request(t.app.http).get(`/fhir/Subscription/${sub}/$status`);
    expect(param(status.body.entry[0].resource, 'events-since-subscription-start')?.valueString).toBe('250');
  }, 60_000);

  test('channel.header values stay out of the upstream, are still sent, and an update that sends them back as read keeps them', async () => {
    const secret = 'Bearer hook-s3cret-bb25';
    const body = {
      resourceType: 'Subscription', status: 'requested', reason: 'secret', criteria: TOPICS.readings,
      _criteria: { extension: [{ url: `${BACKPORT}backport-filter-criteria`, valueString: `Observation?patient=Patient/${ana}` }] },
      channel: { type: 'rest-hook', endpoint: rx.url, payload: 'application/fhir+json', header: [`Authorization: ${secret}`, 'X-Api-Key: k-42'] },
    };
    const created = await request(t.app.http).post('/fhir/Subscription').set('Content-Type', 'application/fhir+json').send(body);
    expect(created.status).toBe(201);
    const id = created.body.id as string;
    expect(created.body.channel.header).toEqual(['Authorization: [sealed]', 'X-Api-Key: [sealed]']);
    await t.app.exchange.subscriptions.idle();
    for (let i = 0; i < 50 && t.app.exchange.subscriptions.get(id)?.status !== 'active'; i++) await new Promise((r) => setTimeout(r, 20));
    const sentToUpstream = () => JSON.stringify(upstream.requests.filter((r) => r.url.includes('Subscription')).map((r) => r.body));
    expect(sentToUpstream()).not.toContain('hook-s3cret');
    expect(sentToUpstream()).not.toContain('k-42');
    expect(JSON.stringify((await upstream.repo.readHistory('Subscription', id)).entry)).not.toContain('hook-s3cret');

    const mine = () => rx.headers.filter((_h, i) => typeOf(rx.bundles[i]!) === 'event-notification'
      && param(statusOf(rx.bundles[i]!), 'subscription')?.valueReference?.reference?.endsWith(`/Subscription/${id}`));
    await request(t.app.http).post(`/cgm/ingest?patient=${ana}&format=nightscout`).send(nightscoutJson(readings(1, 400) as never));
    await t.app.exchange.subscriptions.idle();
    expect(mine().map((h) => [h.authorization, h['x-api-key']])).toEqual([[secret, 'k-42']]);

    // the resource as read, sent back with a new reason and a changed key: the token is kept
    const read = await request(t.app.http).get(`/fhir/Subscription/${id}`);
    expect(read.body.channel.header).toEqual(['Authorization: [sealed]', 'X-Api-Key: [sealed]']);
    const { meta: _meta, ...asRead } = read.body;
    const updated = await request(t.app.http).put(`/fhir/Subscription/${id}`).set('Content-Type', 'application/fhir+json')
      .send({ ...asRead, reason: 'renamed', channel: { ...asRead.channel, header: ['Authorization: [sealed]', 'X-Api-Key: k-43'] } });
    expect(updated.status).toBe(200);
    await t.app.exchange.subscriptions.idle();
    for (let i = 0; i < 50 && t.app.exchange.subscriptions.get(id)?.status !== 'active'; i++) await new Promise((r) => setTimeout(r, 20));
    await request(t.app.http).post(`/cgm/ingest?patient=${ana}&format=nightscout`).send(nightscoutJson(readings(1, 401) as never));
    await t.app.exchange.subscriptions.idle();
    expect(mine().map((h) => [h.authorization, h['x-api-key']])).toEqual([[secret, 'k-42'], [secret, 'k-43']]);
    expect(sentToUpstream()).not.toContain('hook-s3cret');
    // a sealed value with nothing to keep is refused
    const unknown = await request(t.app.http).put(`/fhir/Subscription/${id}`).set('Content-Type', 'application/fhir+json')
      .send({ ...asRead, channel: { ...asRead.channel, header: ['X-Other: [sealed]'] } });
    expect(unknown.status).toBe(422);
    await request(t.app.http).delete(`/fhir/Subscription/${id}`);
  }, 60_000);

  test('$events while the upstream fails answers the failure (502), not a bundle without the events', async () => {
    const ok = await request(t.app.http).get(`/fhir/Subscription/${sub}/$events?eventsSinceNumber=1&eventsUntilNumber=3`);
    expect(ok.status).toBe(200);
    expect(eventNumbers(ok.body)).toEqual([1, 2, 3]);
    upstream.intercept((req) => (req.method === 'GET' && req.url.includes('/_history/') ? FAILED : undefined));
    try {
      const res = await request(t.app.http).get(`/fhir/Subscription/${sub}/$events?eventsSinceNumber=1&eventsUntilNumber=3`);
      expect(res.status).toBe(502);
      expect(res.body.resourceType).toBe('OperationOutcome');
      expect(JSON.stringify(res.body)).not.toContain('db down');
    } finally {
      upstream.intercept(undefined);
    }
  }, 60_000);
});

describe('research notifications over an upstream (auth on)', () => {
  let upstream: UpstreamFhirServer;
  let t: TestApp;
  let rx: Receiver;
  let ana: string;
  let token: string;
  let sub: string;

  beforeAll(async () => {
    upstream = await startUpstreamFhirServer();
    rx = await receiver();
    t = await startTestApp({
      UPSTREAM_FHIR_URL: upstream.url, GLUCOGUARD_AUTH: 'on', GLUCOGUARD_SUBSCRIPTION_ALLOW: new URL(rx.url).host, GLUCOGUARD_SUBSCRIPTION_HTTP: 'true',
    });
    ana = await person(t.app, 'Patient', 'Rivera');
    const study = (await t.app.repository.create<Organization>({ resourceType: 'Organization', name: 'Study 25' })).resource.id!;
    await registerIdentity(t.app, `Organization/${study}`);
    const now = Date.now();
    expect((await grant(t.app, {
      patient: ana, actor: `Organization/${study}`, accessTo: now + DAY, dataFrom: now - DAY, dataTo: now + DAY, purposes: ['HRESCH'], classes: ['Observation'],
    })).status).toBe(201);
    token = t.app.smart.tokens.signAccessToken({ gid: 'bb25-study', clientId: 'study-client', sub: 'study-client', fhirUser: `Organization/${study}`, scopes: ['system/*.rs', 'system/Subscription.cud'] }).token;
    const body = {
      resourceType: 'Subscription', status: 'requested', reason: 'study feed', criteria: TOPICS.readings,
      channel: { type: 'rest-hook', endpoint: rx.url, payload: 'application/fhir+json', _payload: { extension: [{ url: `${BACKPORT}backport-payload-content`, valueCode: 'full-resource' }] } },
    };
    const created = await request(t.app.http).post('/fhir/Subscription').set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'HRESCH')
      .set('Content-Type', 'application/fhir+json').send(body);
    expect(created.status).toBe(201);
    sub = created.body.id;
    await t.app.exchange.subscriptions.idle();
    for (let i = 0; i < 50 && t.app.exchange.subscriptions.get(sub)?.status !== 'active'; i++) await new Promise((r) => setTimeout(r, 20));
  }, 120_000);
  afterAll(async () => {
    await t?.close();
    await upstream?.close();
    rx?.server.close();
  });

  test('the pseudonymised focus is named by a urn:uuid, the same in $events; no URL of this server or of the upstream', async () => {
    await ingest(t.app, ana, readings(2));
    await t.app.exchange.subscriptions.idle();
    const [bundle] = rx.bundles.filter((b) => typeOf(b) === 'event-notification');
    expect(bundle).toBeDefined();
    const entries = bundle!.entry!.slice(1);
    expect(entries).toHaveLength(2);
    const focus = statusOf(bundle!).parameter!.filter((p) => p.name === 'notification-event')
      .map((p) => p.part!.find((x) => x.name === 'focus')!.valueReference!.reference);
    for (const e of entries) {
      expect(e.fullUrl).toMatch(/^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
      expect(e.resource?.id).toMatch(/^[0-9a-f]{40}$/);
      expect(e.fullUrl!.replace(/-/g, '').slice(9, 21)).toBe(e.resource!.id!.slice(0, 12));
    }
    expect(focus).toEqual(entries.map((e) => e.fullUrl));
    const text = JSON.stringify(bundle);
    expect(text).not.toContain(upstream.url);
    expect(text).not.toContain(`/fhir/Observation/`);
    // $events names the same resources the same way
    const events = await request(t.app.http).get(`/fhir/Subscription/${sub}/$events?eventsSinceNumber=1&eventsUntilNumber=2`)
      .set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'HRESCH');
    expect(events.status).toBe(200);
    expect((events.body as Bundle).entry!.slice(1).map((e) => e.fullUrl)).toEqual(entries.map((e) => e.fullUrl));
  }, 60_000);
});
