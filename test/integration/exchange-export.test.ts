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
import { ProfileValidator } from '../../src/fhir/validation.js';
import { PROFILES_DIR } from '../../src/paths.js';

// exchange settings for the app under test (read with the rest of its configuration)
const EXCHANGE_ENV: Record<string, string> = { GLUCOGUARD_EXPORT_RETRY_AFTER: '1' };

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
  const validator = new ProfileValidator(PROFILES_DIR);
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
    const lines = (res.body as string).trim().split('\n').map((l) => JSON.parse(l) as Observation);
    // what an export writes (de-identified or not, and its error file) is valid R4, as every write must be
    for (const line of lines) expect([line.id, validator.check(line).filter((i) => i.severity === 'error')]).toEqual([line.id, []]);
    return lines;
  }

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on', ...EXCHANGE_ENV });
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
    // ben also lets the clinician read Groups he is in (what a read of Group/<id> needs)
    expect((await grant(t.app, { patient: ben, actor: `Practitioner/${doc}`, accessTo: now + DAY, dataFrom: now - DAY, dataTo: now, purposes: ['TREAT'], classes: ['Group'] })).status).toBe(201);
    const group = (await t.app.repository.create<Group>({ resourceType: 'Group', type: 'person', actual: true, member: [{ entity: { reference: `Patient/${ben}` } }] })).resource;
    const token = practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs']);
    expect((await request(t.app.http).get(`/fhir/Group/${group.id}`).set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT')).status).toBe(200);
    expect((await kickOff('/fhir/Group/nope/$export', token, 'TREAT')).status).toBe(404);
    const res = await kickOff(`/fhir/Group/${group.id}/$export?_type=Observation`, token, 'TREAT');
    expect(res.status).toBe(202);
    const manifest = await manifestOf(res.headers['content-location']!, token);
    const lines = await download(manifest.output[0]!.url, token);
    expect(new Set(lines.map((o) => o.subject?.reference))).toEqual(new Set([`Patient/${ben}`]));
    expect(lines.length).toBe(trace.filter((r) => r.epochMs >= now - DAY).length);
  }, 60_000);

  test('a Group the requester cannot read answers Group/ID/$export exactly like a Group never stored (no existence oracle)', async () => {
    const token = practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs']);
    // carl shares nothing with the clinician: a Group of him is not the clinician's to read, nor to learn of
    const carlOnly = (await t.app.repository.create<Group>({ resourceType: 'Group', type: 'person', actual: true, member: [{ entity: { reference: `Patient/${carl}` } }] })).resource;
    expect((await request(t.app.http).get(`/fhir/Group/${carlOnly.id}`).set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT')).status).toBe(404);
    const hidden = await kickOff(`/fhir/Group/${carlOnly.id}/$export?_type=Observation`, token, 'TREAT');
    const missing = await kickOff(`/fhir/Group/${randomUUID()}/$export?_type=Observation`, token, 'TREAT');
    expect(hidden.status).toBe(404);
    expect(hidden.body).toEqual(missing.body);
    expect(hidden.headers['content-location']).toBeUndefined();
  }, 30_000);

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

  describe('_typeFilter with several queries (Bulk Data IG: comma-separated or repeated, OR\'ed per type)', () => {
    const enc = (q: string): string => encodeURIComponent(q);
    /** The ids of ana's readings her own export holds for these _typeFilter parameters (already encoded). */
    async function exported(filterParams: string): Promise<string[]> {
      const own = patientToken(t.app, ana);
      const res = await kickOff(`/fhir/Patient/$export?_type=Observation&${filterParams}`, own, 'TREAT');
      expect(res.status).toBe(202);
      const manifest = await manifestOf(res.headers['content-location']!, own);
      expect(manifest.error).toEqual([]);
      if (manifest.output.length === 0) return [];
      const lines = await download(manifest.output[0]!.url, own);
      expect(lines).toHaveLength(manifest.output[0]!.count);
      return lines.map((o) => o.id!);
    }
    const sorted = (ids: Iterable<string>): string[] => [...ids].sort();

    test('comma-separated queries for one type are OR\'ed, and repeating _typeFilter means the same', async () => {
      const high = await exported(`_typeFilter=${enc('Observation?value-quantity=gt150')}`);
      const low = await exported(`_typeFilter=${enc('Observation?value-quantity=lt90')}`);
      expect(high.length).toBeGreaterThan(0);
      expect(low.length).toBeGreaterThan(0);
      const either = sorted(new Set([...high, ...low]));
      // the IG's own shape: one value, queries joined by a comma
      expect(sorted(await exported(`_typeFilter=${enc('Observation?value-quantity=gt150,Observation?value-quantity=lt90')}`))).toEqual(either);
      // repeated: as if the values were comma-separated
      expect(sorted(await exported(`_typeFilter=${enc('Observation?value-quantity=gt150')}&_typeFilter=${enc('Observation?value-quantity=lt90')}`))).toEqual(either);
    }, 90_000);

    test('a resource matching several of the queries is exported once', async () => {
      const ids = await exported(`_typeFilter=${enc('Observation?value-quantity=ge0,Observation?value-quantity=gt150')}`);
      expect(ids).toHaveLength(trace.length);
      expect(new Set(ids).size).toBe(ids.length);
    }, 60_000);

    test('a comma inside a query\'s own value (encoded within the _typeFilter value) is that parameter\'s OR, not a new query', async () => {
      const high = sorted(await exported(`_typeFilter=${enc('Observation?value-quantity=gt150')}`));
      expect(high.length).toBeGreaterThan(0);
      // each query's value encoded as a query value, then the whole _typeFilter value encoded again
      const codes = (...c: string[]): string => enc(c.map((one) => `http://loinc.org|${one}`).join(','));
      const noneOrHigh = `Observation?code=${codes('00000-0', '11111-1')},Observation?value-quantity=gt150`;
      expect(noneOrHigh).toContain('%2C');
      expect(sorted(await exported(`_typeFilter=${enc(noneOrHigh)}`))).toEqual(high);
      const allOrHigh = `Observation?code=${codes('00000-0', '99504-3')},Observation?value-quantity=gt150`;
      expect(await exported(`_typeFilter=${enc(allOrHigh)}`)).toHaveLength(trace.length);
      // a client that encoded only the inner comma: it reaches the server as a plain comma inside code=,
      // which stays in its query (no Type? follows it)
      const raw = `_typeFilter=Observation?code=http://loinc.org|00000-0%2Chttp://loinc.org|11111-1,Observation?value-quantity=gt150`;
      expect(sorted(await exported(raw.replaceAll('|', '%7C')))).toEqual(high);
    }, 90_000);

    test('an invalid query is refused at kick-off with a 400 OperationOutcome naming it; no job is made', async () => {
      const own = patientToken(t.app, ana);
      const jobs = t.app.exchange.exports.store.all().length;
      for (const bad of ['Observation?foo=1', 'Observation?value-quantity=not-a-number', 'Observation?status=final,Observation?foo=1']) {
        const res = await kickOff(`/fhir/Patient/$export?_type=Observation&_typeFilter=${enc(bad)}`, own, 'TREAT');
        expect(res.status).toBe(400);
        expect(res.body.resourceType).toBe('OperationOutcome');
        expect(res.body.issue[0].code).toBe('invalid');
        expect(res.body.issue[0].diagnostics).toContain(bad.includes('foo') ? '"Observation?foo=1"' : `"${bad}"`);
        expect(res.body.issue[0].expression).toEqual(['_typeFilter']);
      }
      expect(t.app.exchange.exports.store.all()).toHaveLength(jobs);
    }, 30_000);
  });

  test('a job that still fails on a client\'s filter answers its status with that error (400 OperationOutcome), not a 500 exception', async () => {
    const exports = t.app.exchange.exports;
    // a filter the kick-off would have refused, recorded straight into a job (as one from an older version could be)
    const job = exports.submit(OPEN_ACCESS, { level: 'system', types: ['Observation'], explicitTypes: true, typeFilters: { Observation: [{ 'value-quantity': 'not-a-number' }] } }, `test-${randomUUID()}`);
    expect((await exports.whenDone(job.id))?.status).toBe('failed');
    const res = await exports.status({ method: 'GET', path: '$export-status', query: { _job: job.id }, headers: {}, access: OPEN_ACCESS });
    expect(res.status).toBe(400);
    expect(res.body).toMatchObject({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'invalid' }] });
    expect(JSON.stringify(res.body)).toContain('value-quantity');
  }, 30_000);

  test('Patient/$export of a type outside the patient compartment is a 400 saying so; with handling=lenient it is left out and the error file says why', async () => {
    const own = patientToken(t.app, ana);
    const only = await kickOff('/fhir/Patient/$export?_type=Practitioner', own, 'TREAT');
    expect(only.status).toBe(400);
    expect(only.body.issue[0]).toMatchObject({ code: 'invalid', expression: ['_type'] });
    expect(only.body.issue[0].diagnostics).toContain('Practitioner is not in the patient compartment');
    const mixed = await kickOff('/fhir/Patient/$export?_type=Practitioner,Observation', own, 'TREAT');
    expect(mixed.status).toBe(400);
    expect(mixed.body.issue[0].diagnostics).toContain('Practitioner is not in the patient compartment');
    // lenient: even then a request of nothing but such types is an error
    const lenientOnly = await kickOff('/fhir/Patient/$export?_type=Practitioner', own, 'TREAT').set('Prefer', 'respond-async, handling=lenient');
    expect(lenientOnly.status).toBe(400);
    const lenient = await kickOff('/fhir/Patient/$export?_type=Practitioner,Observation', own, 'TREAT').set('Prefer', 'respond-async, handling=lenient');
    expect(lenient.status).toBe(202);
    const manifest = await manifestOf(lenient.headers['content-location']!, own);
    expect(manifest.output.map((o) => o.type)).toEqual(['Observation']);
    expect(manifest.error).toEqual([expect.objectContaining({ type: 'OperationOutcome', count: 1 })]);
    const [outcome] = await download((manifest.error[0] as { url: string }).url, own) as unknown as { resourceType: string; issue: { severity: string; code: string; diagnostics: string }[] }[];
    expect(outcome!.resourceType).toBe('OperationOutcome');
    expect(outcome!.issue[0]).toMatchObject({ severity: 'warning', code: 'not-supported' });
    expect(outcome!.issue[0]!.diagnostics).toContain('Practitioner');
    expect(outcome!.issue[0]!.diagnostics).toContain('not in the patient compartment');
  }, 60_000);

  test('the complete status answers Content-Type application/json (Bulk Data IG: the manifest is no FHIR resource)', async () => {
    const res = await kickOff('/fhir/Patient/$export?_type=Observation', studyToken);
    await manifestOf(res.headers['content-location']!, studyToken);
    const done = await request(t.app.http).get(statusPath(res.headers['content-location']!)).set('Authorization', `Bearer ${studyToken}`);
    expect(done.status).toBe(200);
    expect(done.headers['content-type']).toMatch(/^application\/json(;|$)/);
    expect(done.body.output).toBeDefined();
  }, 30_000);

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
