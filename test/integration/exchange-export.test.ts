/**
 * Bulk Data $export (issue 7): a research study's Backend Services client exports de-identified
 * readings of consenting patients only; a clinician's export holds only granted patients and data
 * periods; files go only to the requester's own token; polling too fast is a 429; DELETE cancels;
 * a job cut off by a restart runs again and is never half-served.
 */
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { get as httpGet } from 'node:http';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Group, Observation, Organization } from '@medplum/fhirtypes';
import request from 'supertest';
import { GuardedReader } from '../../src/exchange/reader.js';
import { OPEN_ACCESS } from '../../src/fhir/access.js';
import { OPEN_POLICY } from '../../src/fhir/policy.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { DAY, grant, ingest, patientToken, person, practitionerToken, registerIdentity, sparseTrace } from './consent-helpers.js';

process.env.GLUCOGUARD_EXPORT_RETRY_AFTER = '1';

interface Manifest {
  transactionTime: string;
  request: string;
  requiresAccessToken: boolean;
  output: { type: string; url: string; count: number }[];
  error: unknown[];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('bulk $export', () => {
  let t: TestApp;
  let ana: string;
  let ben: string;
  let carl: string;
  let study: string;
  let doc: string;
  let studyToken: string;
  const trace = sparseTrace(3, 120);
  const now = Date.now();

  const backendToken = (clientId: string, fhirUser?: string) => t.app.smart.tokens.signAccessToken({
    gid: randomUUID(), clientId, sub: clientId, ...(fhirUser ? { fhirUser } : {}), scopes: ['system/*.rs'],
  }).token;

  const kickOff = (url: string, token: string, purpose = 'HRESCH') => request(t.app.http).get(url)
    .set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', purpose).set('Prefer', 'respond-async').set('Accept', 'application/fhir+json');

  const statusPath = (contentLocation: string) => contentLocation.replace('http://127.0.0.1:8080', '');

  async function manifestOf(contentLocation: string, token: string): Promise<Manifest> {
    for (let i = 0; i < 40; i++) {
      const res = await request(t.app.http).get(statusPath(contentLocation)).set('Authorization', `Bearer ${token}`);
      if (res.status === 200) return res.body as Manifest;
      expect(res.status).toBe(202);
      expect(res.headers['retry-after']).toBe('1');
      await sleep(1050);
    }
    throw new Error('export did not complete');
  }

  async function download(url: string, token: string): Promise<Observation[]> {
    const res = await request(t.app.http).get(url.replace('http://127.0.0.1:8080', '')).set('Authorization', `Bearer ${token}`).buffer(true).parse((r, cb) => {
      let data = '';
      r.on('data', (c: Buffer) => { data += c.toString(); });
      r.on('end', () => cb(null, data));
    });
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toContain('application/fhir+ndjson');
    return (res.body as string).trim().split('\n').map((l) => JSON.parse(l) as Observation);
  }

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
    ana = await person(t.app, 'Patient', 'Rivera');
    ben = await person(t.app, 'Patient', 'Okafor');
    carl = await person(t.app, 'Patient', 'Lindqvist');
    study = (await t.app.repository.create<Organization>({ resourceType: 'Organization', name: 'Study 42' })).resource.id!;
    doc = await person(t.app, 'Practitioner', 'Osei');
    await registerIdentity(t.app, `Organization/${study}`);
    await registerIdentity(t.app, `Practitioner/${doc}`);
    for (const p of [ana, ben, carl]) await ingest(t.app, p, trace);
    // ana consents to the study (research); ben only lets the study treat him; carl grants nothing
    expect((await grant(t.app, { patient: ana, actor: `Organization/${study}`, accessTo: now + DAY, dataFrom: now - 10 * DAY, dataTo: now, purposes: ['HRESCH'], classes: ['Observation'] })).status).toBe(201);
    expect((await grant(t.app, { patient: ben, actor: `Organization/${study}`, accessTo: now + DAY, dataFrom: now - 10 * DAY, dataTo: now, purposes: ['TREAT'], classes: ['Observation'] })).status).toBe(201);
    // the clinician sees ben's last day only
    expect((await grant(t.app, { patient: ben, actor: `Practitioner/${doc}`, accessTo: now + DAY, dataFrom: now - DAY, dataTo: now, purposes: ['TREAT'], classes: ['Observation'] })).status).toBe(201);
    studyToken = backendToken('study-client', `Organization/${study}`);
  }, 120_000);
  afterAll(async () => {
    await t?.close();
  });

  test('the reader pages a patient by date keyset without losing or repeating readings (ties at one instant too)', async () => {
    const at = new Date(now - 3600_000).toISOString();
    for (let i = 0; i < 5; i++) {
      await t.app.repository.create<Observation>({ resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] }, subject: { reference: `Patient/${carl}` }, effectiveDateTime: at, valueQuantity: { value: 100 + i } });
    }
    const reader = new GuardedReader({ fhir: t.app.fhir, policy: OPEN_POLICY, repository: t.app.repository, pageSize: 3 });
    const ids: string[] = [];
    for await (const page of reader.pages(OPEN_ACCESS, 'Observation', {}, [carl])) ids.push(...page.resources.map((r) => r.id!));
    expect(ids.length).toBe(trace.length + 5);
    expect(new Set(ids).size).toBe(ids.length);
  }, 30_000);

  test('kick-off needs Prefer: respond-async', async () => {
    const res = await request(t.app.http).get('/fhir/Patient/$export').set('Authorization', `Bearer ${studyToken}`).set('X-Purpose-Of-Use', 'HRESCH');
    expect(res.status).toBe(400);
    expect(JSON.stringify(res.body)).toContain('respond-async');
  });

  test('the CapabilityStatement declares $export', async () => {
    const res = await request(t.app.http).get('/fhir/metadata');
    expect(JSON.stringify(res.body.rest[0].operation)).toContain('http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export');
  });

  test('a research client exports de-identified readings of the consenting patient only; files only for its own token', async () => {
    const res = await kickOff('/fhir/Patient/$export?_type=Observation', studyToken);
    expect(res.status).toBe(202);
    const location = res.headers['content-location']!;
    expect(location).toMatch(/\/fhir\/\$export-status\?_job=/);
    const manifest = await manifestOf(location, studyToken);
    expect(manifest.requiresAccessToken).toBe(true);
    expect(manifest.request).toContain('/Patient/$export');
    expect(Date.parse(manifest.transactionTime)).toBeGreaterThan(now - 60_000);
    expect(manifest.output.map((o) => o.type)).toEqual(['Observation']);
    const expected = trace.filter((r) => r.epochMs >= now - 10 * DAY).length;
    expect(manifest.output[0]!.count).toBe(expected);
    const lines = await download(manifest.output[0]!.url, studyToken);
    expect(lines).toHaveLength(expected);
    // the file leaves gzip-coded to a client that accepts it (supertest inflates it back)
    const coded = await request(t.app.http).get(manifest.output[0]!.url.replace('http://127.0.0.1:8080', '')).set('Authorization', `Bearer ${studyToken}`).set('Accept-Encoding', 'gzip');
    expect(coded.status).toBe(200);
    expect(coded.headers['content-encoding']).toBe('gzip');
    expect(String(coded.text ?? coded.body).trim().split('\n')).toHaveLength(expected);
    const subjects = new Set(lines.map((o) => o.subject?.reference));
    expect(subjects.size).toBe(1);
    expect([...subjects][0]).toMatch(/^Patient\/[0-9a-f]{40}$/);
    for (const o of lines) expect(o.meta?.security?.map((c) => c.code)).toEqual(['PSEUDED', 'REDACTED']);
    const text = JSON.stringify(lines);
    for (const secret of [ana, ben, carl, 'Rivera', 'Okafor', 'Lindqvist', 'urn:glucoguard:cgm-reading']) expect(text).not.toContain(secret);

    const other = backendToken('other-client');
    const refused = await request(t.app.http).get(manifest.output[0]!.url.replace('http://127.0.0.1:8080', '')).set('Authorization', `Bearer ${other}`);
    expect(refused.status).toBe(404);
    expect(refused.text).not.toContain('valueQuantity');
    expect((await request(t.app.http).get(manifest.output[0]!.url.replace('http://127.0.0.1:8080', ''))).status).toBe(401);
    expect((await request(t.app.http).get(statusPath(location)).set('Authorization', `Bearer ${other}`)).status).toBe(404);
  }, 60_000);

  test('a clinician export holds only the granted patient and data period, not de-identified', async () => {
    const token = practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs']);
    const res = await kickOff('/fhir/$export?_type=Observation,Patient', token, 'TREAT');
    expect(res.status).toBe(202);
    const manifest = await manifestOf(res.headers['content-location']!, token);
    const obs = manifest.output.find((o) => o.type === 'Observation')!;
    const lines = await download(obs.url, token);
    expect(lines.length).toBe(trace.filter((r) => r.epochMs >= now - DAY).length);
    expect(new Set(lines.map((o) => o.subject?.reference))).toEqual(new Set([`Patient/${ben}`]));
    for (const o of lines) expect(Date.parse(o.effectiveDateTime!)).toBeGreaterThanOrEqual(now - DAY - 1000);
    expect(manifest.output.find((o) => o.type === 'Patient')).toBeUndefined(); // the grant covers Observations only
  }, 60_000);

  test('Group/ID/$export exports the members only (and only what they granted); an unknown Group is 404', async () => {
    const group = (await t.app.repository.create<Group>({ resourceType: 'Group', type: 'person', actual: true, member: [{ entity: { reference: `Patient/${carl}` } }, { entity: { reference: `Patient/${ben}` } }] })).resource;
    const token = practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs']);
    expect((await kickOff('/fhir/Group/nope/$export', token, 'TREAT')).status).toBe(404);
    const res = await kickOff(`/fhir/Group/${group.id}/$export?_type=Observation`, token, 'TREAT');
    expect(res.status).toBe(202);
    const manifest = await manifestOf(res.headers['content-location']!, token);
    const lines = await download(manifest.output[0]!.url, token);
    expect(new Set(lines.map((o) => o.subject?.reference))).toEqual(new Set([`Patient/${ben}`]));
    // ben is granted but not a member of this one
    const carlOnly = (await t.app.repository.create<Group>({ resourceType: 'Group', type: 'person', actual: true, member: [{ entity: { reference: `Patient/${carl}` } }] })).resource;
    const second = await kickOff(`/fhir/Group/${carlOnly.id}/$export?_type=Observation`, token, 'TREAT');
    const m2 = await manifestOf(second.headers['content-location']!, token);
    expect(m2.output).toEqual([]);
  }, 60_000);

  test('_since and _typeFilter narrow the export; a bad _outputFormat is refused', async () => {
    expect((await kickOff('/fhir/$export?_outputFormat=text/csv', studyToken)).status).toBe(400);
    const future = new Date(now + DAY).toISOString();
    const res = await kickOff(`/fhir/$export?_type=Observation&_since=${encodeURIComponent(future)}`, studyToken);
    expect(res.status).toBe(202);
    expect((await manifestOf(res.headers['content-location']!, studyToken)).output).toEqual([]);
    const filtered = await kickOff(`/fhir/$export?_type=Observation&_typeFilter=${encodeURIComponent('Observation?code=http://loinc.org|00000-0')}`, studyToken);
    expect((await manifestOf(filtered.headers['content-location']!, studyToken)).output).toEqual([]);
    // quantity and meta parameters filter too (matched on the decrypted readings)
    const none = await kickOff(`/fhir/Patient/$export?_type=Observation&_typeFilter=${encodeURIComponent('Observation?value-quantity=gt100000')}`, studyToken);
    expect((await manifestOf(none.headers['content-location']!, studyToken)).output).toEqual([]);
    const all = await kickOff(`/fhir/Patient/$export?_type=Observation&_typeFilter=${encodeURIComponent('Observation?value-quantity=ge0')}`, studyToken);
    expect((await manifestOf(all.headers['content-location']!, studyToken)).output[0]!.count).toBe(trace.filter((r) => r.epochMs >= now - 10 * DAY).length);
    const tagged = await kickOff(`/fhir/Patient/$export?_type=Observation&_typeFilter=${encodeURIComponent('Observation?_tag=urn:example|none')}`, studyToken);
    expect(tagged.status).toBe(202);
    expect((await manifestOf(tagged.headers['content-location']!, studyToken)).output).toEqual([]);
    expect((await kickOff(`/fhir/$export?_type=Observation&_typeFilter=${encodeURIComponent('Observation?_count=5')}`, studyToken)).status).toBe(400);
    // Under a research purpose a patient filter is refused: the study would learn that patient's
    // pseudonym (consent-research.test.ts). (This test used to run the two exports below as the
    // study, a re-identification it should not have allowed.)
    const byPatient = (id: string) => `/fhir/Patient/$export?_type=Observation&_typeFilter=${encodeURIComponent(`Observation?patient=Patient/${id}`)}`;
    expect((await kickOff(byPatient(ana), studyToken)).status).toBe(403);
    // For a clinician it narrows the patients the export walks, it does not give way to them:
    // ana's readings are not the clinician's to export, and ben's (granted) are
    const clinician = practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs']);
    const anas = await kickOff(byPatient(ana), clinician, 'TREAT');
    expect((await manifestOf(anas.headers['content-location']!, clinician)).output).toEqual([]);
    const bens = await kickOff(byPatient(ben), clinician, 'TREAT');
    expect((await manifestOf(bens.headers['content-location']!, clinician)).output[0]!.count).toBe(trace.filter((r) => r.epochMs >= now - DAY).length);
  }, 90_000);

  test('_typeFilter takes chains, resolved as the requester\'s own search would resolve them', async () => {
    const enc = (q: string): string => encodeURIComponent(q);
    // A chain is an identified search (the requester's own): under a research purpose it would pick
    // pseudonymised readings by who they are about (a name), so it is refused at kick-off, no job made.
    const byName = await kickOff(`/fhir/Patient/$export?_type=Observation&_typeFilter=${enc('Observation?patient.name=Rivera')}`, studyToken);
    expect(byName.status).toBe(403);
    expect(JSON.stringify(byName.body)).toContain('research purpose');
    const own = patientToken(t.app, ana);
    // a malformed chain is refused at kick-off, before a job exists
    const bad = await kickOff(`/fhir/Patient/$export?_type=Observation&_typeFilter=${enc('Observation?patient.no-such-param=1')}`, own, 'TREAT');
    expect(bad.status).toBe(400);
    expect(bad.body.resourceType).toBe('OperationOutcome');
    // ana reads her own Patient resource: the same chain selects her readings, and another name none
    const mine = await kickOff(`/fhir/Patient/$export?_type=Observation&_typeFilter=${enc('Observation?patient.name=Rivera')}`, own, 'TREAT');
    expect(mine.status).toBe(202);
    expect((await manifestOf(mine.headers['content-location']!, own)).output[0]!.count).toBe(trace.length);
    const other = await kickOff(`/fhir/Patient/$export?_type=Observation&_typeFilter=${enc('Observation?patient.name=Okafor')}`, own, 'TREAT');
    expect((await manifestOf(other.headers['content-location']!, own)).output).toEqual([]);
  }, 90_000);

  test('a Patient _typeFilter on _id narrows a system export of Patients too (open access, in-process reader)', async () => {
    const reader = new GuardedReader({ fhir: t.app.fhir, policy: OPEN_POLICY, repository: t.app.repository, pageSize: 3 });
    const seen: string[] = [];
    for await (const page of reader.pages(OPEN_ACCESS, 'Patient', { _id: ben }, [ana, ben, carl])) seen.push(...page.resources.map((r) => r.id!));
    expect(seen).toEqual([ben]);
    const none: string[] = [];
    for await (const page of reader.pages(OPEN_ACCESS, 'Observation', { patient: `Patient/${carl}` }, [ana, ben])) none.push(...page.resources.map((r) => r.id!));
    expect(none).toEqual([]);
  });

  test('while running: 202 with X-Progress; polling sooner than Retry-After is a 429; DELETE cancels (202, then 404)', async () => {
    const res = await kickOff('/fhir/Patient/$export?_type=Observation', studyToken);
    await manifestOf(res.headers['content-location']!, studyToken);
    // a job that stays queued (recorded, not picked up) so the in-progress answers can be seen
    const store = t.app.exchange.exports.store;
    const jobId = randomUUID();
    store.put({ ...store.get(new URL(res.headers['content-location']!).searchParams.get('_job')!)!, id: jobId, status: 'queued', outputs: [] });
    const status = `/fhir/$export-status?_job=${jobId}`;
    const first = await request(t.app.http).get(status).set('Authorization', `Bearer ${studyToken}`);
    expect(first.status).toBe(202);
    expect(first.headers['x-progress']).toBeDefined();
    expect(first.headers['retry-after']).toBe('1');
    const second = await request(t.app.http).get(status).set('Authorization', `Bearer ${studyToken}`);
    expect(second.status).toBe(429);
    expect(second.headers['retry-after']).toBe('1');
    expect((await request(t.app.http).delete(status).set('Authorization', `Bearer ${backendToken('other-client')}`)).status).toBe(404);
    expect((await request(t.app.http).delete(status).set('Authorization', `Bearer ${studyToken}`)).status).toBe(202);
    expect((await request(t.app.http).get(status).set('Authorization', `Bearer ${studyToken}`)).status).toBe(404);
  }, 30_000);

  test('files are sealed at rest: no health data in clear on disk; an altered or cut-short file fails its download instead of serving', async () => {
    const location = (await kickOff('/fhir/Patient/$export?_type=Observation', studyToken)).headers['content-location']!;
    const manifest = await manifestOf(location, studyToken);
    const jobId = new URL(location).searchParams.get('_job')!;
    const file = path.join(t.dataDir, 'exports', jobId, 'Observation.ndjson');
    const raw = readFileSync(file);
    expect(raw.includes('Observation')).toBe(false);
    expect(raw.includes('valueQuantity')).toBe(false);
    expect(raw.includes('mg/dL')).toBe(false);
    const served = await download(manifest.output[0]!.url, studyToken);
    expect(served).toHaveLength(manifest.output[0]!.count);

    const fetchFile = () => new Promise<{ status: number; complete: boolean }>((resolve) => {
      const url = new URL(manifest.output[0]!.url);
      const server = t.app.http.listen(0, '127.0.0.1', () => {
        const { port } = server.address() as { port: number };
        const req = httpGet({ host: '127.0.0.1', port, path: url.pathname, headers: { Authorization: `Bearer ${studyToken}` } }, (res) => {
          res.on('data', () => undefined);
          res.on('end', () => { server.close(); resolve({ status: res.statusCode!, complete: res.complete }); });
          res.on('error', () => undefined);
          res.on('aborted', () => undefined);
          res.on('close', () => { server.close(); resolve({ status: res.statusCode!, complete: res.complete }); });
        });
        req.on('error', () => { server.close(); resolve({ status: 0, complete: false }); });
      });
    });
    // one byte changed in the middle of the file
    const altered = Buffer.from(raw);
    altered[Math.floor(altered.length / 2)]! ^= 0x01;
    writeFileSync(file, altered);
    expect((await fetchFile()).complete).toBe(false);
    // the file cut before its end frame
    writeFileSync(file, raw.subarray(0, raw.length - 40));
    expect((await fetchFile()).complete).toBe(false);
    // the original again: whole
    writeFileSync(file, raw);
    expect(await fetchFile()).toEqual({ status: 200, complete: true });
  }, 60_000);

  test('a finished export is deleted, files and all, once the retention its manifest\'s Expires names has passed', async () => {
    const location = (await kickOff('/fhir/Patient/$export?_type=Observation', studyToken)).headers['content-location']!;
    const manifest = await manifestOf(location, studyToken);
    const jobId = new URL(location).searchParams.get('_job')!;
    const store = t.app.exchange.exports.store;
    const job = store.get(jobId)!;
    const served = await request(t.app.http).get(statusPath(location)).set('Authorization', `Bearer ${studyToken}`);
    expect(Date.parse(served.headers.expires!)).toBe(Math.floor((Date.parse(job.completedAt!) + 168 * 3_600_000) / 1000) * 1000);
    const dir = path.join(t.dataDir, 'exports', jobId);
    expect(existsSync(dir)).toBe(true);
    const others = store.byStatus('completed').filter((j) => j.id !== jobId).map((j) => j.id);

    // a week and a minute later (the job's record moved back in time): gone for its owner too, before any sweep
    store.put({ ...job, completedAt: new Date(Date.now() - 168 * 3_600_000 - 60_000).toISOString() });
    expect((await request(t.app.http).get(statusPath(location)).set('Authorization', `Bearer ${studyToken}`)).status).toBe(404);
    const file = manifest.output[0]!.url.replace('http://127.0.0.1:8080', '');
    expect((await request(t.app.http).get(file).set('Authorization', `Bearer ${studyToken}`)).status).toBe(404);
    // the sweep deletes it from disk; jobs still within their week stay
    expect(t.app.exchange.exports.sweep()).toBe(1);
    expect(existsSync(dir)).toBe(false);
    expect(store.get(jobId)).toBeUndefined();
    expect(store.byStatus('completed').map((j) => j.id).sort()).toEqual(others.sort());
  }, 60_000);

  test('a job cut off by a restart runs again from the start; partial files are never served', async () => {
    const res = await kickOff('/fhir/Patient/$export?_type=Observation', studyToken);
    const location = res.headers['content-location']!;
    const done = await manifestOf(location, studyToken);
    const jobId = new URL(location).searchParams.get('_job')!;
    // simulate a crash mid-job: the record says running, a half-written file lies on disk
    const store = t.app.exchange.exports.store;
    store.put({ ...store.get(jobId)!, status: 'running', outputs: [], errors: [] });
    const dir = path.join(t.dataDir, 'exports', jobId);
    writeFileSync(path.join(dir, 'Observation.ndjson.part'), '{"resourceType":"Observation","id":"half');
    await t.restart();
    const again = await manifestOf(location, studyToken);
    expect(again.output).toEqual(done.output);
    expect(existsSync(path.join(dir, 'Observation.ndjson.part'))).toBe(false);
    const lines = await download(again.output[0]!.url, studyToken);
    expect(lines).toHaveLength(done.output[0]!.count);
  }, 90_000);
});
