/**
 * Research access (DESIGN §4 Research): data a patient granted for research (purpose HRESCH) leaves
 * only de-identified, by bulk `$export` and rest-hook Subscriptions. The FHIR REST API refuses a
 * grantee stating a research purpose on every path (403 pointing to `$export`), before anything is
 * read; and a research grant never serves a request that states no purpose or another one.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, Device, Group, Observation, OperationOutcome } from '@medplum/fhirtypes';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { DAY, consentOf, patientToken, person, registerIdentity } from './consent-helpers.js';

// exchange settings for the app under test (read with the rest of its configuration)
const EXCHANGE_ENV: Record<string, string> = { GLUCOGUARD_EXPORT_RETRY_AFTER: '1' };

const now = Date.now();
const iso = (t: number): string => new Date(t).toISOString();
const CLIENT = 'study-client';

describe('research access through the REST API', () => {
  let t: TestApp;
  let ana: string;
  let ben: string;
  const ids: Record<string, string> = {};
  let token: string;

  const as = (purpose: string | undefined) => {
    const withHeaders = <T extends request.Test>(r: T): T => {
      r.set('Authorization', `Bearer ${token}`);
      if (purpose !== undefined) r.set('X-Purpose-Of-Use', purpose);
      return r;
    };
    return {
      get: (url: string) => withHeaders(request(t.app.http).get(url)),
      send: (method: 'post' | 'put' | 'patch' | 'delete', url: string, body?: object, type = 'application/fhir+json') =>
        withHeaders(request(t.app.http)[method](url)).set('Content-Type', type).send(body ? JSON.stringify(body) : ''),
    };
  };
  const matches = (b: Bundle): string[] => (b.entry ?? []).filter((e) => e.search?.mode === 'match').map((e) => e.resource!.id!);

  /** A grant to the backend client (named by its client id) from `patient` for `purposes`. */
  async function grantToClient(patient: string, purposes: string[]): Promise<void> {
    const c = consentOf({ patient, actor: 'x', accessTo: now + DAY, dataFrom: now - 10 * DAY, dataTo: now, purposes, classes: ['Observation', 'Patient', 'Device'] });
    c.provision!.actor![0]!.reference = { identifier: { system: 'urn:glucoguard:client', value: CLIENT } };
    const res = await request(t.app.http).post('/fhir/Consent').set('Authorization', `Bearer ${patientToken(t.app, patient)}`)
      .set('Content-Type', 'application/fhir+json').send(c);
    expect(res.status).toBe(201);
  }

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on', ...EXCHANGE_ENV });
    ana = await person(t.app, 'Patient', 'Rivera');
    ben = await person(t.app, 'Patient', 'Okafor');
    await registerIdentity(t.app, `Client/${CLIENT}`);
    const device = (await t.app.repository.create<Device>({ resourceType: 'Device', status: 'active', patient: { reference: `Patient/${ben}` } })).resource;
    ids.device = device.id!;
    const reading = (patient: string, identifier: string): Observation => ({
      resourceType: 'Observation', status: 'final', identifier: [{ system: 'urn:test:reading', value: identifier }],
      code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] }, subject: { reference: `Patient/${patient}` },
      ...(patient === ben ? { device: { reference: `Device/${device.id}` } } : {}),
      effectiveDateTime: iso(now - 2 * DAY), valueQuantity: { value: 120, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
    });
    ids.ben = (await t.app.repository.create(reading(ben, 'ben-1'))).resource.id!;
    ids.ana = (await t.app.repository.create(reading(ana, 'ana-1'))).resource.id!;
    // Ben consents to research only; Ana lets the same client treat her.
    await grantToClient(ben, ['HRESCH']);
    await grantToClient(ana, ['TREAT']);
    token = t.app.smart.tokens.signAccessToken({ gid: randomUUID(), clientId: CLIENT, sub: CLIENT, scopes: ['system/*.cruds'] }).token;
  }, 120_000);
  afterAll(async () => {
    await t?.close();
  });

  test('a research purpose is refused on every REST path with a 403 that points to $export, and shows nothing of the patient', async () => {
    const research = as('HRESCH');
    const answers = [
      await research.get(`/fhir/Observation/${ids.ben}`),
      await research.get(`/fhir/Observation/${ids.ben}/_history/1`),
      await research.get(`/fhir/Observation/${ids.ben}/_history`),
      await research.get('/fhir/Observation/_history'),
      await research.get('/fhir/_history'),
      await research.get('/fhir/Observation?_count=1'),
      await research.get(`/fhir/Observation?patient=Patient/${ben}&_include=Observation:device&_include=Observation:patient`),
      await research.send('post', '/fhir/Observation/_search', undefined, 'application/x-www-form-urlencoded'),
      await research.get(`/fhir/Patient/${ben}`),
      await research.get(`/fhir/Device/${ids.device}`),
      await research.get(`/fhir/Patient/${ben}/$everything`),
      await research.get(`/fhir/Observation/$lastn?patient=Patient/${ben}`),
      await research.get(`/fhir/Observation/${ids.ben}/$meta`),
      // writes echo what they store or match: refused too
      await research.send('patch', `/fhir/Observation/${ids.ben}`, [], 'application/json-patch+json'),
      await research.send('put', `/fhir/Observation/${ids.ben}`, { resourceType: 'Observation', id: ids.ben, status: 'final', code: { text: 'x' } }),
      await research.send('delete', `/fhir/Observation/${ids.ben}`),
    ];
    for (const res of answers) {
      expect(res.status).toBe(403);
      expect((res.body as OperationOutcome).resourceType).toBe('OperationOutcome');
      expect((res.body as OperationOutcome).issue[0]!.code).toBe('forbidden');
      expect(JSON.stringify(res.body)).toContain('$export');
      expect(JSON.stringify(res.body)).not.toContain(ben);
      expect(JSON.stringify(res.body)).not.toContain('ben-1');
    }
    // nothing was changed by the refused writes
    expect((await t.app.repository.read('Observation', ids.ben!)).meta?.versionId).toBe('1');
  });

  test('batch entries under a research purpose are refused one by one', async () => {
    const res = await as('HRESCH').send('post', '/fhir', {
      resourceType: 'Bundle', type: 'batch',
      entry: [{ request: { method: 'GET', url: `Observation/${ids.ben}` } }, { request: { method: 'GET', url: `Observation?patient=Patient/${ben}` } }],
    });
    expect(res.status).toBe(200);
    expect((res.body as Bundle).entry!.map((e) => e.response!.status)).toEqual([expect.stringMatching(/^403/), expect.stringMatching(/^403/)]);
    expect(JSON.stringify(res.body)).not.toContain('ben-1');
  });

  test('the refusal is decided on the purpose alone: a stored id and a made-up one answer alike', async () => {
    const stored = await as('HRESCH').get(`/fhir/Observation/${ids.ben}`);
    const madeUp = await as('HRESCH').get(`/fhir/Observation/${randomUUID()}`);
    expect([stored.status, stored.body]).toEqual([madeUp.status, madeUp.body]);
    // every code under HRESCH is research too (v3 ActReason), also written with its system
    for (const purpose of ['CLINTRCH', 'http://terminology.hl7.org/CodeSystem/v3-ActReason|HRESCH']) {
      expect((await as(purpose).get(`/fhir/Observation/${ids.ben}`)).status).toBe(403);
    }
  });

  test('a research grant serves no request without its purpose: no header, or another purpose, shows none of its data', async () => {
    for (const purpose of [undefined, '', 'TREAT', 'hresch', 'TREAT,HRESCH']) {
      expect((await as(purpose).get(`/fhir/Observation/${ids.ben}`)).status).toBe(404);
      expect((await as(purpose).get(`/fhir/Patient/${ben}`)).status).toBe(404);
      const search = await as(purpose).get('/fhir/Observation?_count=100');
      expect(search.status).toBe(200);
      expect(matches(search.body)).not.toContain(ids.ben);
    }
    // the client's other grant (Ana's, for treatment) still serves treatment, identified
    const treat = await as('TREAT').get('/fhir/Observation?_count=100');
    expect(matches(treat.body)).toEqual([ids.ana]);
    expect((await as('TREAT').get(`/fhir/Observation/${ids.ana}`)).body.subject.reference).toBe(`Patient/${ana}`);
  });

  test('patients are not research requesters: stating HRESCH, they still read their own data', async () => {
    const res = await request(t.app.http).get(`/fhir/Observation/${ids.ben}`).set('Authorization', `Bearer ${patientToken(t.app, ben)}`).set('X-Purpose-Of-Use', 'HRESCH');
    expect(res.status).toBe(200);
  });

  test('the research route is open: $export under HRESCH delivers Ben\'s reading de-identified, and none of Ana\'s', async () => {
    const kick = await as('HRESCH').get('/fhir/Patient/$export?_type=Observation').set('Prefer', 'respond-async').set('Accept', 'application/fhir+json');
    expect(kick.status).toBe(202);
    const job = new URL(kick.headers['content-location']!).searchParams.get('_job')!;
    const done = await t.app.exchange.exports.whenDone(job, 50);
    expect(done?.status).toBe('completed');
    const manifest = await as(undefined).get(`/fhir/$export-status?_job=${job}`);
    expect(manifest.status).toBe(200);
    const url = (manifest.body.output as { url: string }[])[0]!.url.replace(/^https?:\/\/[^/]+/, '');
    const file = await request(t.app.http).get(url).set('Authorization', `Bearer ${token}`).buffer(true).parse((r, cb) => {
      let data = '';
      r.on('data', (c: Buffer) => { data += c.toString(); });
      r.on('end', () => cb(null, data));
    });
    expect(file.status).toBe(200);
    const lines = (file.body as string).trim().split('\n').map((l) => JSON.parse(l) as Observation);
    expect(lines).toHaveLength(1);
    expect(lines[0]!.subject?.reference).toMatch(/^Patient\/[0-9a-f]{40}$/);
    expect(lines[0]!.identifier).toBeUndefined();
    expect(lines[0]!.meta?.security?.map((c) => c.code)).toEqual(['PSEUDED', 'REDACTED']);
    expect(file.body).not.toContain(ben);
    expect(file.body).not.toContain(ids.ben);
    expect(file.body).not.toContain('ben-1');
  }, 30_000);

  test('a research export selects by nobody: a Group of chosen patients, or a _typeFilter by id, reference or identifier, is 403', async () => {
    const kick = (url: string) => as('HRESCH').get(url).set('Prefer', 'respond-async').set('Accept', 'application/fhir+json');
    const group = (await t.app.repository.create<Group>({ resourceType: 'Group', type: 'person', actual: true, member: [{ entity: { reference: `Patient/${ben}` } }] })).resource;
    const refused = [
      await kick(`/fhir/Group/${group.id}/$export?_type=Observation`),
      ...['patient=Patient/' + ben, `subject=Patient/${ben}`, `_id=${ids.ben}`, 'identifier=urn:test:reading|ben-1', `device=Device/${ids.device}`].map((f) =>
        kick(`/fhir/Patient/$export?_type=Observation&_typeFilter=${encodeURIComponent(`Observation?${f}`)}`)),
    ];
    for (const res of await Promise.all(refused)) {
      expect(res.status).toBe(403);
      expect(res.body.issue[0].diagnostics).toMatch(/a Group of chosen patients|_typeFilter cannot select by/);
    }
    // filters on what was measured are fine
    expect((await kick(`/fhir/Patient/$export?_type=Observation&_typeFilter=${encodeURIComponent('Observation?code=http://loinc.org|99504-3')}`)).status).toBe(202);
    // the same Group export for treatment is not a research export: not refused as one, it answers as
    // a read of the Group does (these grants do not cover Group: 404, as for a Group never stored)
    const treat = await as('TREAT').get(`/fhir/Group/${group.id}/$export?_type=Observation`).set('Prefer', 'respond-async').set('Accept', 'application/fhir+json');
    expect(treat.status).toBe((await as('TREAT').get(`/fhir/Group/${group.id}`)).status);
    expect(treat.status).toBe(404);
  }, 30_000);
});
