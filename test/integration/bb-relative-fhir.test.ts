/**
 * RelatedPerson (a patient's relative: parent, partner, carer) through the FHIR facade, auth on:
 * served and searched (`_id`, `patient`, `identifier`, `name`) on the embedded store, listed in
 * the CapabilityStatement (embedded and upstream), and in the Patient compartment by its `patient`:
 * the patient reads and writes their own relatives, another patient or a clinician without a grant
 * sees none, a grant lets its grantee read them as it reads the patient's other data.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, CapabilityStatement, RelatedPerson } from '@medplum/fhirtypes';
import request from 'supertest';
import { buildCapabilityStatement } from '../../src/fhir/capability.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { startUpstreamFhirServer, type UpstreamFhirServer } from '../support/upstream-server.js';
import { DAY, grant, patientToken, person, practitionerToken, registerIdentity } from './consent-helpers.js';

const IDENTIFIER_SYSTEM = 'urn:example:family-registry';

let t: TestApp;
let ana: string;
let ben: string;
let mum: string;

const fhir = (method: 'get' | 'post' | 'put' | 'delete', path: string, token: string) => {
  const r = request(t.app.http)[method](`/fhir/${path}`).set('Authorization', `Bearer ${token}`);
  return method === 'post' || method === 'put' ? r.set('Content-Type', 'application/fhir+json') : r;
};
const ids = (body: unknown): string[] => ((body as Bundle).entry ?? []).filter((e) => e.resource?.resourceType === 'RelatedPerson').map((e) => e.resource!.id!);
const relative = (patient: string, given: string, family: string, value: string): RelatedPerson => ({
  resourceType: 'RelatedPerson', patient: { reference: `Patient/${patient}` }, active: true,
  identifier: [{ system: IDENTIFIER_SYSTEM, value }], name: [{ given: [given], family }],
  relationship: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-RoleCode', code: 'MTH' }] }],
});

beforeAll(async () => {
  t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
  ana = await person(t.app, 'Patient', 'Rivera');
  ben = await person(t.app, 'Patient', 'Okafor');
  const created = await fhir('post', 'RelatedPerson', patientToken(t.app, ana)).send(relative(ana, 'Lucia', 'Rivera', 'fam-1'));
  expect(created.status).toBe(201);
  mum = (created.body as RelatedPerson).id!;
  // Ben's own relative, that nobody but Ben (or a grantee of his) may see
  expect((await fhir('post', 'RelatedPerson', patientToken(t.app, ben)).send(relative(ben, 'Kofi', 'Okafor', 'fam-2'))).status).toBe(201);
}, 60_000);
afterAll(async () => t?.close());

describe('RelatedPerson in the FHIR facade', () => {
  test('the CapabilityStatement lists RelatedPerson with _id, patient, identifier and name (embedded and upstream)', async () => {
    const res = await request(t.app.http).get('/fhir/metadata');
    expect(res.status).toBe(200);
    const entry = (res.body as CapabilityStatement).rest![0]!.resource!.find((r) => r.type === 'RelatedPerson');
    expect(entry).toBeDefined();
    const names = entry!.searchParam!.map((p) => p.name);
    for (const code of ['_id', 'patient', 'identifier', 'name']) expect(names).toContain(code);
    expect(entry!.interaction!.map((i) => i.code)).toEqual(expect.arrayContaining(['read', 'search-type', 'create', 'update']));
    // RelatedPerson:patient is an _include of it, and a _revinclude of Patient
    expect(entry!.searchInclude).toContain('RelatedPerson:patient');
    // upstream: the standard parameters said for it
    const upstream = buildCapabilityStatement({ fhirBase: 'https://gg.example/fhir', version: 't', searchParams: undefined, operations: [], date: '2026-01-01' });
    const up = upstream.rest![0]!.resource!.find((r) => r.type === 'RelatedPerson');
    expect(up?.searchParam?.map((p) => p.name)).toEqual(expect.arrayContaining(['_id', 'patient', 'identifier', 'name']));
  });

  test('the patient reads and finds their relative by _id, patient, identifier and name', async () => {
    const token = patientToken(t.app, ana);
    const read = await fhir('get', `RelatedPerson/${mum}`, token);
    expect(read.status).toBe(200);
    expect((read.body as RelatedPerson).name?.[0]?.family).toBe('Rivera');
    for (const query of [`_id=${mum}`, `patient=Patient/${ana}`, `patient=${ana}`, `identifier=${IDENTIFIER_SYSTEM}|fam-1`, 'identifier=fam-1', 'name=luc', 'name=Rivera']) {
      const res = await fhir('get', `RelatedPerson?${query}`, token);
      expect([query, res.status]).toEqual([query, 200]);
      expect([query, ids(res.body)]).toEqual([query, [mum]]);
    }
    // a value naming nobody matches nothing
    expect(ids((await fhir('get', `RelatedPerson?identifier=${IDENTIFIER_SYSTEM}|fam-9`, token)).body)).toEqual([]);
    expect(ids((await fhir('get', 'RelatedPerson?name=Okafor', token)).body)).toEqual([]);
  });

  test("another patient neither reads nor finds a patient's relative, nor writes one for them", async () => {
    const token = patientToken(t.app, ben);
    expect((await fhir('get', `RelatedPerson/${mum}`, token)).status).toBe(404);
    const all = await fhir('get', 'RelatedPerson', token);
    expect(all.status).toBe(200);
    expect(ids(all.body)).not.toContain(mum);
    expect(ids(all.body)).toHaveLength(1); // his own
    const byId = await fhir('get', `RelatedPerson?_id=${mum}`, token);
    expect(ids(byId.body)).toEqual([]);
    const forAna = await fhir('post', 'RelatedPerson', token).send(relative(ana, 'Eve', 'Mallory', 'fam-3'));
    expect(forAna.status).toBeGreaterThanOrEqual(400);
    expect(forAna.status).toBeLessThan(500);
    expect(ids((await fhir('get', 'RelatedPerson?identifier=fam-3', patientToken(t.app, ana))).body)).toEqual([]);
  });

  test("a clinician sees a patient's relatives only under a grant that covers them", async () => {
    const doc = await person(t.app, 'Practitioner', 'Osei');
    await registerIdentity(t.app, `Practitioner/${doc}`);
    const token = practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs']);
    const look = async () => ({
      read: (await fhir('get', `RelatedPerson/${mum}`, token).set('X-Purpose-Of-Use', 'TREAT')).status,
      search: ids((await fhir('get', `RelatedPerson?patient=${ana}`, token).set('X-Purpose-Of-Use', 'TREAT')).body),
    });
    expect(await look()).toEqual({ read: 404, search: [] });
    const now = Date.now();
    // readings only: the relatives stay hidden
    expect((await grant(t.app, { patient: ana, actor: `Practitioner/${doc}`, accessTo: now + DAY, dataFrom: now - DAY, dataTo: now, classes: ['Observation'] })).status).toBe(201);
    expect(await look()).toEqual({ read: 404, search: [] });
    // a grant naming RelatedPerson: Ana's relative, never Ben's
    expect((await grant(t.app, { patient: ana, actor: `Practitioner/${doc}`, accessTo: now + DAY, dataFrom: now - DAY, dataTo: now, classes: ['RelatedPerson'] })).status).toBe(201);
    expect(await look()).toEqual({ read: 200, search: [mum] });
    const everyone = await fhir('get', 'RelatedPerson', token).set('X-Purpose-Of-Use', 'TREAT');
    expect(everyone.status).toBe(200);
    expect(ids(everyone.body)).toEqual([mum]);
    // and a grantee writes none
    const update = await fhir('put', `RelatedPerson/${mum}`, token).set('X-Purpose-Of-Use', 'TREAT').send({ ...relative(ana, 'Lucia', 'Changed', 'fam-1'), id: mum });
    expect(update.status).toBe(403);
    expect((await fhir('get', `RelatedPerson/${mum}`, patientToken(t.app, ana))).body.name[0].family).toBe('Rivera');
  });
});

describe('RelatedPerson through an upstream FHIR server', () => {
  let upstream: UpstreamFhirServer;
  let u: TestApp;
  beforeAll(async () => {
    upstream = await startUpstreamFhirServer();
    u = await startTestApp({ GLUCOGUARD_AUTH: 'on', UPSTREAM_FHIR_URL: upstream.url });
  }, 60_000);
  afterAll(async () => {
    await u?.close();
    await upstream?.close();
  });

  test("is served and searched, in its patient's compartment; the portal offers the patient's own relatives only", async () => {
    const call = (method: 'get' | 'post', path: string, token: string) => {
      const r = request(u.app.http)[method](`/fhir/${path}`).set('Authorization', `Bearer ${token}`);
      return method === 'post' ? r.set('Content-Type', 'application/fhir+json') : r;
    };
    const cleo = await person(u.app, 'Patient', 'Dubois');
    const dan = await person(u.app, 'Patient', 'Moreau');
    const created = await call('post', 'RelatedPerson', patientToken(u.app, cleo)).send(relative(cleo, 'Maud', 'Dubois', 'up-1'));
    expect(created.status).toBe(201);
    const sister = (created.body as RelatedPerson).id!;
    const theirs = await call('post', 'RelatedPerson', patientToken(u.app, dan)).send(relative(dan, 'Marc', 'Moreau', 'up-2'));
    expect(theirs.status).toBe(201);
    for (const query of [`_id=${sister}`, `patient=${cleo}`, `identifier=${IDENTIFIER_SYSTEM}|up-1`, 'name=Maud']) {
      const res = await call('get', `RelatedPerson?${query}`, patientToken(u.app, cleo));
      expect([query, res.status, ids(res.body)]).toEqual([query, 200, [sister]]);
    }
    expect((await call('get', `RelatedPerson/${sister}`, patientToken(u.app, dan))).status).toBe(404);
    expect(ids((await call('get', 'RelatedPerson?name=Maud', patientToken(u.app, dan))).body)).toEqual([]);
    for (const r of [sister, (theirs.body as RelatedPerson).id!]) await registerIdentity(u.app, `RelatedPerson/${r}`);
    const picker = await request(u.app.http).get('/apps/api/grantees').set('Authorization', `Bearer ${patientToken(u.app, cleo)}`);
    expect(picker.status).toBe(200);
    expect((picker.body as { grantees: unknown[] }).grantees).toEqual([{ reference: `RelatedPerson/${sister}`, name: 'Maud Dubois', kind: 'relative' }]);
  }, 60_000);
});
