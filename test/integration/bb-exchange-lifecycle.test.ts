/**
 * Black-box checks of bulk export jobs with auth on: what a system-level or Group export holds for
 * grantees, who may see a job, `_since`, and how many jobs one requester may have waiting.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Group, Observation, Organization } from '@medplum/fhirtypes';
import request from 'supertest';
import { registerExchangeCommands } from '../../src/exchange/cli.js';
import { MAX_ACTIVE_JOBS_PER_REQUESTER } from '../../src/exchange/export.js';
import { MAX_SUBSCRIPTIONS_PER_REQUESTER } from '../../src/exchange/subscriptions.js';
import { inProcessCli } from '../support/cli.js';
import { startTestApp, tempDir, type TestApp } from '../support/app.js';
import { DAY, grant, person, practitionerToken, registerIdentity } from './consent-helpers.js';

const local = (url: string): string => url.replace(/^https?:\/\/[^/]+/, '');

describe('bulk export jobs (black box)', () => {
  let t: TestApp;
  let ana: string;
  let ben: string;
  let study: string;
  let doc: string;
  let group: string;
  let studyToken: string;
  let docToken: string;
  const now = Date.now();

  const kickOff = (url: string, token: string, purpose: string) => request(t.app.http).get(url)
    .set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', purpose).set('Prefer', 'respond-async').set('Accept', 'application/fhir+json');

  const jobOf = (res: request.Response): string => new URL(res.headers['content-location']!).searchParams.get('_job')!;

  async function files(job: string, token: string): Promise<Record<string, string>> {
    expect((await t.app.exchange.exports.whenDone(job, 50))?.status).toBe('completed');
    const manifest = await request(t.app.http).get(`/fhir/$export-status?_job=${job}`).set('Authorization', `Bearer ${token}`);
    expect(manifest.status).toBe(200);
    const out: Record<string, string> = {};
    for (const f of manifest.body.output as { type: string; url: string }[]) {
      const res = await request(t.app.http).get(local(f.url)).set('Authorization', `Bearer ${token}`).buffer(true).parse((r, cb) => {
        let data = '';
        r.on('data', (c: Buffer) => { data += c.toString(); });
        r.on('end', () => cb(null, data));
      });
      expect(res.status).toBe(200);
      out[f.type] = res.body as string;
    }
    return out;
  }

  const reading = (patient: string, at: number, value: number): Observation => ({
    resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] },
    subject: { reference: `Patient/${patient}` }, effectiveDateTime: new Date(at).toISOString(),
    valueQuantity: { value, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
  });

  beforeAll(async () => {
    t = await startTestApp({
      GLUCOGUARD_AUTH: 'on', GLUCOGUARD_EXPORT_RETRY_AFTER: '1',
      // a receiver that is never there: handshakes fail at once and are not retried
      GLUCOGUARD_SUBSCRIPTION_ALLOW: '127.0.0.1:9', GLUCOGUARD_SUBSCRIPTION_HTTP: 'true', GLUCOGUARD_SUBSCRIPTION_RETRIES: '1',
    });
    ana = await person(t.app, 'Patient', 'Rivera');
    ben = await person(t.app, 'Patient', 'Okafor');
    doc = await person(t.app, 'Practitioner', 'Osei');
    study = (await t.app.repository.create<Organization>({ resourceType: 'Organization', name: 'Study 9' })).resource.id!;
    await registerIdentity(t.app, `Organization/${study}`);
    await registerIdentity(t.app, `Practitioner/${doc}`);
    for (const p of [ana, ben]) {
      await t.app.repository.create(reading(p, now - 2 * DAY, 111));
      await t.app.repository.create(reading(p, now - 20 * DAY, 222)); // outside every grant's data period
    }
    // ana grants the study (research) and the doctor (treatment); ben grants nobody
    for (const [actor, purposes] of [[`Organization/${study}`, ['HRESCH']], [`Practitioner/${doc}`, ['TREAT']]] as const) {
      expect((await grant(t.app, { patient: ana, actor, accessTo: now + DAY, dataFrom: now - 10 * DAY, dataTo: now, purposes: [...purposes], classes: ['Observation', 'Patient'] })).status).toBe(201);
    }
    group = (await t.app.repository.create<Group>({
      resourceType: 'Group', type: 'person', actual: true, name: 'Clinic cohort',
      member: [{ entity: { reference: `Patient/${ana}` } }, { entity: { reference: `Patient/${ben}` } }],
    })).resource.id!;
    studyToken = t.app.smart.tokens.signAccessToken({ gid: randomUUID(), clientId: 'study-client', sub: 'study-client', fhirUser: `Organization/${study}`, scopes: ['system/*.rs'] }).token;
    docToken = practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs']);
  }, 120_000);
  afterAll(async () => {
    await t?.close();
  });

  test('a system-level export by a grantee holds only granted patients\' data within the data period', async () => {
    for (const [token, purpose] of [[studyToken, 'HRESCH'], [docToken, 'TREAT']] as const) {
      const kick = await kickOff('/fhir/$export?_type=Observation,Patient', token, purpose);
      expect(kick.status).toBe(202);
      const out = await files(jobOf(kick), token);
      const values = out.Observation!.trim().split('\n').map((l) => (JSON.parse(l) as Observation).valueQuantity?.value);
      expect(values).toEqual([111]);
      if (purpose === 'TREAT') expect(out.Observation).toContain(ana);
      expect(JSON.stringify(out)).not.toContain(ben);
    }
  }, 60_000);

  test('a research system-level export leaks no Group, Consent, AuditEvent or Subscription that names people who did not consent', async () => {
    for (const type of ['Group', 'Consent', 'AuditEvent', 'Subscription']) {
      const kick = await kickOff(`/fhir/$export?_type=${type}`, studyToken, 'HRESCH');
      if (process.env.BB_DEBUG) console.log(type, kick.status, JSON.stringify(kick.body));
      if (kick.status !== 202) {
        expect([type, kick.status]).toEqual([type, 403]);
        continue;
      }
      const out = await files(jobOf(kick), studyToken);
      expect([type, out]).toEqual([type, {}]);
    }
  }, 60_000);

  test('a Group export for treatment holds the consenting member\'s data only', async () => {
    // the doctor's grants name types, not Group: the Group answers as one never stored
    expect((await kickOff(`/fhir/Group/${group}/$export?_type=Observation,Patient`, docToken, 'TREAT')).status).toBe(404);
    // a grant of everything in ana's record lets another doctor read the Group; ben's data stays out
    const doc2 = await person(t.app, 'Practitioner', 'Mensah');
    await registerIdentity(t.app, `Practitioner/${doc2}`);
    expect((await grant(t.app, { patient: ana, actor: `Practitioner/${doc2}`, accessTo: now + DAY, dataFrom: now - 30 * DAY, dataTo: now, purposes: ['TREAT'] })).status).toBe(201);
    const token = practitionerToken(t.app, doc2, undefined, ['openid', 'fhirUser', 'user/*.rs']);
    const kick = await kickOff(`/fhir/Group/${group}/$export?_type=Observation,Patient`, token, 'TREAT');
    if (process.env.BB_DEBUG) console.log('group', kick.status, JSON.stringify(kick.body));
    if (kick.status === 202) {
      const out = await files(jobOf(kick), token);
      if (process.env.BB_DEBUG) console.log('group files', JSON.stringify(out));
      expect(JSON.stringify(out)).not.toContain(ben);
      expect(out.Observation).toContain(ana);
    } else {
      expect(kick.status).toBe(404);
    }
  }, 60_000);

  test('another requester, or the same client acting for someone else, cannot see a job or its files', async () => {
    const kick = await kickOff('/fhir/Patient/$export?_type=Observation', docToken, 'TREAT');
    const job = jobOf(kick);
    await files(job, docToken);
    const manifest = await request(t.app.http).get(`/fhir/$export-status?_job=${job}`).set('Authorization', `Bearer ${docToken}`);
    const url = local((manifest.body.output as { url: string }[])[0]!.url);
    const others = [
      studyToken,
      practitionerToken(t.app, await person(t.app, 'Practitioner', 'Other'), undefined, ['openid', 'fhirUser', 'user/*.rs']),
      t.app.smart.tokens.signAccessToken({ gid: randomUUID(), clientId: 'ehr-app', sub: `Practitioner/${doc}-x`, scopes: ['user/*.rs'] }).token,
    ];
    for (const token of others) {
      expect((await request(t.app.http).get(`/fhir/$export-status?_job=${job}`).set('Authorization', `Bearer ${token}`)).status).toBe(404);
      expect((await request(t.app.http).delete(`/fhir/$export-status?_job=${job}`).set('Authorization', `Bearer ${token}`)).status).toBe(404);
      expect((await request(t.app.http).get(url).set('Authorization', `Bearer ${token}`)).status).toBe(404);
    }
    expect((await request(t.app.http).get(url)).status).toBe(401);
    // still there for its owner
    expect((await request(t.app.http).get(url).set('Authorization', `Bearer ${docToken}`)).status).toBe(200);
  }, 60_000);

  test('_since is an instant with a time zone: one without (read in the server\'s zone) or a bad one is 400, before any job exists', async () => {
    const before = t.app.exchange.exports.store.all().length;
    for (const since of ['2026-12-01T00:00:00', '2026-12-01', '2026-12-01T00:00Z', '2026-12-01T00:00:00+99:00', '2026-13-01T00:00:00Z']) {
      const res = await kickOff(`/fhir/Patient/$export?_type=Observation&_since=${encodeURIComponent(since)}`, docToken, 'TREAT');
      expect([since, res.status, res.body.resourceType]).toEqual([since, 400, 'OperationOutcome']);
    }
    expect(t.app.exchange.exports.store.all().length).toBe(before);
    const offset = await kickOff(`/fhir/Patient/$export?_type=Observation&_since=${encodeURIComponent('2026-12-01T00:00:00.5+02:00')}`, docToken, 'TREAT');
    expect(offset.status).toBe(202);
    await t.app.exchange.exports.whenDone(jobOf(offset), 50);
  }, 60_000);

  test('_since: a reading stored after the previous export\'s transactionTime is in the next one, an earlier one is not', async () => {
    const first = await kickOff('/fhir/Patient/$export?_type=Observation', docToken, 'TREAT');
    await files(jobOf(first), docToken);
    const tt = (await request(t.app.http).get(`/fhir/$export-status?_job=${jobOf(first)}`).set('Authorization', `Bearer ${docToken}`)).body.transactionTime as string;
    await new Promise((r) => setTimeout(r, 20));
    await t.app.repository.create(reading(ana, now - DAY, 333));
    const next = await kickOff(`/fhir/Patient/$export?_type=Observation&_since=${encodeURIComponent(tt)}`, docToken, 'TREAT');
    const out = await files(jobOf(next), docToken);
    expect(out.Observation!.trim().split('\n').map((l) => (JSON.parse(l) as Observation).valueQuantity?.value)).toEqual([333]);
  }, 60_000);

  test('one requester cannot pile up jobs that hold back everyone else\'s: past the cap a kick-off is 429, a cancel frees a place', async () => {
    const token = practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs']);
    const first = await kickOff('/fhir/Patient/$export?_type=Observation', token, 'TREAT');
    expect(first.status).toBe(202);
    const done = await t.app.exchange.exports.whenDone(jobOf(first), 50);
    // jobs of this requester still waiting (the queue runs one job at a time for everyone): copies of
    // the finished one put back as queued, so none finishes while the test kicks off more
    const store = t.app.exchange.exports.store;
    const waiting = Array.from({ length: MAX_ACTIVE_JOBS_PER_REQUESTER }, () => randomUUID());
    for (const id of waiting) store.put({ ...done!, id, status: 'queued', outputs: [], errors: [] });
    const refused = await kickOff('/fhir/Patient/$export?_type=Observation', token, 'TREAT');
    expect(refused.status).toBe(429);
    expect(refused.headers['retry-after']).toBe('1');
    expect(refused.body.resourceType).toBe('OperationOutcome');
    // another requester is not held to this one's cap
    expect((await kickOff('/fhir/Patient/$export?_type=Observation', studyToken, 'HRESCH')).status).toBe(202);
    expect((await request(t.app.http).delete(`/fhir/$export-status?_job=${waiting[0]}`).set('Authorization', `Bearer ${token}`)).status).toBe(202);
    expect((await kickOff('/fhir/Patient/$export?_type=Observation', token, 'TREAT')).status).toBe(202);
    for (const id of waiting.slice(1)) await request(t.app.http).delete(`/fhir/$export-status?_job=${id}`).set('Authorization', `Bearer ${token}`);
  }, 60_000);

  test('glucoguard export refuses a research export of a Group, as the kick-off does, before any job exists', async () => {
    const cli = inProcessCli(registerExchangeCommands, () => t.app, { quietErrors: true });
    const clientId = t.app.smart.store.addClient({ name: 'study 9', type: 'confidential-asymmetric', jwksUrl: 'https://study.example/jwks', scopes: ['system/*.rs'] }).client.clientId;
    const before = t.app.exchange.exports.store.all().length;
    const out = tempDir('gg-bb-export-');
    await expect(cli('export', '--client', clientId, '--as', `Organization/${study}`, '--purpose', 'HRESCH', '--group', group, '--type', 'Observation', '--out', out))
      .rejects.toThrow(/Group of chosen patients/);
    expect(t.app.exchange.exports.store.all().length).toBe(before);
  }, 60_000);

  test('one requester cannot multiply every reading into unlimited notifications: past the cap a Subscription is 422', async () => {
    const body = {
      resourceType: 'Subscription', status: 'requested', reason: 'bb', criteria: 'https://glucoguard.org/fhir/SubscriptionTopic/cgm-readings',
      channel: { type: 'rest-hook', endpoint: 'http://127.0.0.1:9/hook', payload: 'application/fhir+json' },
    };
    const post = (token: string) => request(t.app.http).post('/fhir/Subscription').set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT')
      .set('Content-Type', 'application/fhir+json').send(body);
    const token = practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs', 'user/Subscription.cruds']);
    const ids: string[] = [];
    for (let i = 0; i < MAX_SUBSCRIPTIONS_PER_REQUESTER; i++) {
      const res = await post(token);
      expect(res.status).toBe(201);
      ids.push(res.body.id as string);
    }
    const refused = await post(token);
    expect(refused.status).toBe(422);
    expect(refused.body.resourceType).toBe('OperationOutcome');
    // another requester is not held to this one's cap; a deleted Subscription frees a place
    const other = practitionerToken(t.app, await person(t.app, 'Practitioner', 'Abara'), undefined, ['openid', 'fhirUser', 'user/*.rs', 'user/Subscription.cruds']);
    expect((await post(other)).status).toBe(201);
    expect((await request(t.app.http).delete(`/fhir/Subscription/${ids[0]}`).set('Authorization', `Bearer ${token}`)).status).toBe(204);
    expect((await post(token)).status).toBe(201);
  }, 120_000);
});
