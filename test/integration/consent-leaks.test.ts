/**
 * Every leak vector of issue 6 part 5, each its own test, against one practitioner with a grant
 * from patient "12" (Observations and Patient, any code) and from Ana (CGM mg/dL readings only),
 * 14 days of data, and nothing from Ben or patient "123".
 */
import { afterAll, beforeAll, describe, expect, jest, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import type { AuditEvent, Bundle, Observation, OperationOutcome, Resource } from '@medplum/fhirtypes';
import { parseSearchRequest } from '@medplum/core';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { DAY, LOINC_MGDL, consentOf, grant, patientToken, person, practitionerToken, registerIdentity } from './consent-helpers.js';
import { agpOf } from '../support/agp.js';

const now = Date.now();
const iso = (t: number): string => new Date(t).toISOString();

function reading(patient: string, at: number, code = '99504-3', identifier?: string): Observation {
  return {
    resourceType: 'Observation', status: 'final',
    ...(identifier ? { identifier: [{ system: 'urn:test', value: identifier }] } : {}),
    code: { coding: [{ system: 'http://loinc.org', code }] },
    ...(patient ? { subject: { reference: `Patient/${patient}` } } : {}),
    effectiveDateTime: iso(at),
    valueQuantity: { value: 120, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
  };
}

describe('consent enforcement on every FHIR path', () => {
  let t: TestApp;
  let ana: string;
  let ben: string;
  let doc: string;
  const ids: Record<string, string> = {};
  let docToken: string;
  const get = (url: string, purpose = 'TREAT') => request(t.app.http).get(url).set('Authorization', `Bearer ${docToken}`).set('X-Purpose-Of-Use', purpose);
  const entries = (b: Bundle, mode = 'match'): Resource[] => (b.entry ?? []).filter((e) => e.search?.mode === mode).map((e) => e.resource!);

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
    const repo = t.app.repository;
    ana = await person(t.app, 'Patient', 'Rivera');
    ben = await person(t.app, 'Patient', 'Okafor');
    await repo.update({ resourceType: 'Patient', id: '12', name: [{ family: 'Twelve' }] });
    await repo.update({ resourceType: 'Patient', id: '123', name: [{ family: 'OneTwoThree' }] });
    doc = await person(t.app, 'Practitioner', 'Osei');
    await registerIdentity(t.app, `Practitioner/${doc}`);
    const put = async (name: string, o: Observation): Promise<void> => {
      ids[name] = (await repo.create(o)).resource.id!;
    };
    // Ana: CGM readings inside the data period interleaved with another code, one old reading.
    for (let i = 0; i < 3; i++) {
      await put(`ana${i}`, reading(ana, now - (2 + i) * DAY));
      await put(`anaOther${i}a`, reading(ana, now - (2 + i) * DAY + 60_000, '2339-0'));
      await put(`anaOther${i}b`, reading(ana, now - (2 + i) * DAY + 120_000, '2339-0'));
    }
    await put('anaOld', reading(ana, now - 20 * DAY));
    await put('ben', reading(ben, now - 2 * DAY, '99504-3', 'ben-1'));
    await put('p12', reading('12', now - 2 * DAY));
    await put('p123', reading('123', now - 2 * DAY));
    await put('orphan', reading('', now - 2 * DAY));
    // A reading corrected into the period: version 1 is outside it.
    const moved = await repo.create(reading(ana, now - 30 * DAY));
    ids.moved = moved.resource.id!;
    await repo.update({ ...moved.resource, effectiveDateTime: iso(now - 3 * DAY) });

    const base = { actor: `Practitioner/${doc}`, accessTo: now + 3 * DAY, dataFrom: now - 14 * DAY, dataTo: now };
    expect((await grant(t.app, { ...base, patient: ana, classes: ['Observation'], codes: [LOINC_MGDL] })).status).toBe(201);
    expect((await grant(t.app, { ...base, patient: '12', classes: ['Observation', 'Patient'] })).status).toBe(201);
    docToken = practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.cruds']);
  });
  afterAll(async () => {
    await t?.close();
  });

  test('read: a granted reading is 200; an ungranted patient, another code or a reading outside the data period is 404', async () => {
    expect((await get(`/fhir/Observation/${ids.ana0}`)).status).toBe(200);
    for (const name of ['ben', 'anaOther0a', 'anaOld']) {
      const res = await get(`/fhir/Observation/${ids[name]}`);
      expect(res.status).toBe(404);
      expect(JSON.stringify(res.body)).not.toContain('valueQuantity');
    }
    // the same answer as an id that does not exist
    const absent = await get('/fhir/Observation/does-not-exist');
    expect(absent.status).toBe(404);
  });

  test('exact reference parsing: a grant from Patient/12 shows nothing of Patient/123', async () => {
    expect((await get('/fhir/Patient/12')).status).toBe(200);
    expect((await get('/fhir/Patient/123')).status).toBe(404);
    expect((await get(`/fhir/Observation/${ids.p123}`)).status).toBe(404);
    const search = await get('/fhir/Observation?patient=Patient/123');
    expect(entries(search.body)).toHaveLength(0);
  });

  test('vread of an old version outside the data period is 404; instance history lists only the permitted version', async () => {
    expect((await get(`/fhir/Observation/${ids.moved}/_history/1`)).status).toBe(404);
    expect((await get(`/fhir/Observation/${ids.moved}/_history/2`)).status).toBe(200);
    const history = await get(`/fhir/Observation/${ids.moved}/_history`);
    expect(history.status).toBe(200);
    const versions = (history.body as Bundle).entry!.filter((e) => e.resource).map((e) => e.resource!.meta!.versionId);
    expect(versions).toEqual(['2']);
  });

  test('type history shows only permitted versions', async () => {
    const history = await get('/fhir/Observation/_history?_count=100');
    const seen = (history.body as Bundle).entry!.filter((e) => e.resource).map((e) => e.resource!.id);
    expect(seen).toEqual(expect.arrayContaining([ids.ana0, ids.p12]));
    for (const hidden of ['ben', 'p123', 'anaOld', 'anaOther0a', 'orphan']) expect(seen).not.toContain(ids[hidden]);
  });

  test('search GET and POST: narrowed to granted patients, period and codes; an ungranted patient gives an empty Bundle without total', async () => {
    const all = await get('/fhir/Observation?_count=100');
    const seen = entries(all.body).map((r) => r.id).sort();
    expect(seen).toEqual([ids.ana0, ids.ana1, ids.ana2, ids.moved, ids.p12].sort());
    const posted = await request(t.app.http).post('/fhir/Observation/_search').set('Authorization', `Bearer ${docToken}`).set('X-Purpose-Of-Use', 'TREAT')
      .type('form').send({ patient: `Patient/${ben}` });
    expect(posted.status).toBe(200);
    expect(entries(posted.body)).toHaveLength(0);
    expect(posted.body.total).toBeUndefined();
  });

  test('paging is re-paged after filtering: full pages, no empty last page, no next link after the last visible entry', async () => {
    const pages: number[] = [];
    let url: string | undefined = `/fhir/Observation?patient=Patient/${ana}&_sort=date&_count=2`;
    while (url) {
      const res = await get(url.replace('http://127.0.0.1:8080', ''));
      expect(res.status).toBe(200);
      pages.push(entries(res.body).length);
      url = (res.body as Bundle).link?.find((l) => l.relation === 'next')?.url;
    }
    // ana0..2 and the moved reading = 4 visible among 10 stored
    expect(pages).toEqual([2, 2]);
  });

  test('conditional read: a hidden version is 404 whatever If-None-Match or If-Modified-Since say; a visible one can be 304', async () => {
    for (const name of ['ben', 'anaOther0a', 'anaOld']) {
      expect((await get(`/fhir/Observation/${ids[name]}`).set('If-None-Match', '*')).status).toBe(404);
      expect((await get(`/fhir/Observation/${ids[name]}`).set('If-None-Match', 'W/"1"')).status).toBe(404);
      expect((await get(`/fhir/Observation/${ids[name]}`).set('If-Modified-Since', new Date(now + DAY).toUTCString())).status).toBe(404);
      expect((await get(`/fhir/Observation/${ids[name]}/_history/1`).set('If-None-Match', '*')).status).toBe(404);
    }
    expect((await get(`/fhir/Observation/${ids.ana0}`).set('If-None-Match', 'W/"1"')).status).toBe(304);
  });

  test('_summary=count is refused; _total is a hint never honoured: no Bundle.total, and the answer says so', async () => {
    expect((await get('/fhir/Observation?_summary=count')).status).toBe(400);
    for (const total of ['accurate', 'estimate']) {
      const res = await get(`/fhir/Observation?_total=${total}`);
      expect(res.status).toBe(200);
      expect(res.body.total).toBeUndefined();
      const outcome = (res.body as Bundle).entry!.find((e) => e.search?.mode === 'outcome')?.resource as OperationOutcome;
      expect(outcome.issue!.map((i) => i.diagnostics)).toContainEqual(expect.stringMatching(/Bundle\.total is not given/));
      // the same readings as without it
      expect(entries(res.body).map((r) => r.id).sort()).toEqual(entries((await get('/fhir/Observation')).body).map((r) => r.id).sort());
    }
    const none = await get('/fhir/Observation?_total=none');
    expect([none.status, none.body.total, (none.body as Bundle).entry!.some((e) => e.search?.mode === 'outcome')]).toEqual([200, undefined, false]);
    expect((await get('/fhir/Observation?_total=all')).status).toBe(400);
  });

  test('chains and _has select only by resources the requester may see themself', async () => {
    const matched = async (url: string): Promise<string[]> => {
      const res = await get(url);
      expect([url, res.status]).toEqual([url, 200]);
      return entries(res.body).map((r) => r.id!).sort();
    };
    // Patient 12 is granted with its Patient resource: its name selects its readings
    expect(await matched('/fhir/Observation?patient.name=Twelve')).toEqual([ids.p12]);
    // Ana's readings are visible but her Patient resource is not: her name must select nothing,
    // or a chain would tell her name (the same as for Ben, who granted nothing)
    expect(await matched('/fhir/Observation?patient.name=Rivera')).toEqual([]);
    expect(await matched(`/fhir/Observation?patient._id=${ana}`)).toEqual([]);
    expect(await matched('/fhir/Observation?patient.name=Okafor')).toEqual([]);
    expect(await matched('/fhir/Observation?patient.name=OneTwoThree')).toEqual([]);
    // _has: only visible readings count, and only visible Patients come back
    expect(await matched('/fhir/Patient?_has:Observation:patient:code=99504-3')).toEqual(['12']);
    expect(await matched('/fhir/Patient?_has:Observation:patient:code=2339-0')).toEqual([]);
    expect(await matched('/fhir/Patient?_has:Observation:patient:identifier=urn:test|ben-1')).toEqual([]);
    expect(await matched('/fhir/Patient?_has:Observation:patient:date=lt' + iso(now - 15 * DAY))).toEqual([]);
  });

  test('_include and _revinclude never bring in an ungranted patient or type', async () => {
    const inc = await get(`/fhir/Observation?patient=Patient/${ana}&_include=Observation:subject`);
    expect(entries(inc.body, 'include')).toHaveLength(0); // Patient is not granted by Ana
    const rev = await get('/fhir/Patient?_id=12,123&_revinclude=Observation:subject');
    expect(entries(rev.body).map((r) => r.id)).toEqual(['12']);
    expect(entries(rev.body, 'include').map((r) => r.id)).toEqual([ids.p12]);
  });

  test('contained resources and nested Bundles: a contained resource of another patient denies its container; a stored Bundle is never shown', async () => {
    const withBen = (await t.app.repository.create({
      ...reading(ana, now - 2 * DAY), contained: [{ resourceType: 'Observation', id: 'c1', status: 'final', code: { text: 'x' }, subject: { reference: `Patient/${ben}` } }],
    } as Observation)).resource;
    expect((await get(`/fhir/Observation/${withBen.id}`)).status).toBe(404);
    const bundle = (await t.app.repository.create({ resourceType: 'Bundle', type: 'collection', entry: [{ resource: reading(ana, now - 2 * DAY) }] } as Bundle)).resource;
    expect((await get(`/fhir/Bundle/${bundle.id}`)).status).toBe(404);
    expect(entries((await get('/fhir/Bundle')).body)).toHaveLength(0);
  });

  test('system tokens are confined to the grants of their own client, and audited', async () => {
    await registerIdentity(t.app, 'Client/lab-app');
    const c = consentOf({ patient: ana, actor: 'x', accessTo: now + DAY, dataFrom: now - 14 * DAY, dataTo: now, classes: ['Observation'] });
    c.provision!.actor![0]!.reference = { identifier: { system: 'urn:glucoguard:client', value: 'lab-app' } };
    const granted = await request(t.app.http).post('/fhir/Consent').set('Authorization', `Bearer ${patientToken(t.app, ana)}`)
      .set('Content-Type', 'application/fhir+json').send(c);
    expect(granted.status).toBe(201);
    const system = (clientId: string): string => t.app.smart.tokens.signAccessToken({ gid: randomUUID(), clientId, sub: clientId, scopes: ['system/Observation.rs'] }).token;
    const as = (clientId: string, id: string) => request(t.app.http).get(`/fhir/Observation/${id}`).set('Authorization', `Bearer ${system(clientId)}`).set('X-Purpose-Of-Use', 'TREAT');
    expect((await as('lab-app', ids.ana0!)).status).toBe(200);
    expect((await as('lab-app', ids.ben!)).status).toBe(404);
    expect((await as('other-app', ids.ana0!)).status).toBe(404);
    await t.app.consent.audit.flush();
    let clients: string[] = [];
    for (let i = 0; i < 30 && clients.length < 3; i++) {
      if (i) await new Promise((r) => setTimeout(r, 100));
      const all = await t.app.repository.search({ resourceType: 'AuditEvent', count: 1000, offset: 0 });
      clients = (all.resources as AuditEvent[]).flatMap((e) => e.agent.map((a) => a.who?.identifier?.value ?? '')).filter((v) => v.endsWith('-app') && v !== 'ehr-app' && v !== 'patient-app');
    }
    expect(clients.sort()).toEqual(['lab-app', 'lab-app', 'other-app']);
  });

  test('a resource with no patient link is denied, even to its reader by search', async () => {
    expect((await get(`/fhir/Observation/${ids.orphan}`)).status).toBe(404);
    expect((await get(`/fhir/Practitioner/${doc}`)).status).toBe(404);
  });

  test('missing identity or purpose is a denial', async () => {
    expect((await get(`/fhir/Observation/${ids.ana0}`, '')).status).toBe(404);
    expect((await get(`/fhir/Observation/${ids.ana0}`, 'ETREAT')).status).toBe(404); // purpose not granted
    // a research purpose is refused by the REST API whatever the grants (consent-research.test.ts)
    expect((await get(`/fhir/Observation/${ids.ana0}`, 'HRESCH')).status).toBe(403);
    const stranger = await person(t.app, 'Practitioner', 'Nobody');
    const res = await request(t.app.http).get(`/fhir/Observation/${ids.ana0}`).set('X-Purpose-Of-Use', 'TREAT')
      .set('Authorization', `Bearer ${practitionerToken(t.app, stranger, undefined, ['user/*.rs'])}`);
    expect(res.status).toBe(404);
  });

  test('batch GET entries are decided one by one', async () => {
    const res = await request(t.app.http).post('/fhir').set('Authorization', `Bearer ${docToken}`).set('X-Purpose-Of-Use', 'TREAT')
      .set('Content-Type', 'application/fhir+json').send({
        resourceType: 'Bundle', type: 'batch',
        entry: [{ request: { method: 'GET', url: `Observation/${ids.ben}` } }, { request: { method: 'GET', url: `Observation/${ids.ana1}` } },
          { request: { method: 'GET', url: `Observation?patient=Patient/${ben}` } }],
      });
    expect(res.status).toBe(200);
    const [benRead, anaRead, benSearch] = (res.body as Bundle).entry!;
    expect(benRead!.response!.status).toMatch(/^404/);
    expect(anaRead!.response!.status).toMatch(/^200/);
    expect(((benSearch!.resource as Bundle).entry ?? []).filter((e) => e.search?.mode === 'match')).toHaveLength(0);
  });

  test('a conditional create that matches an ungranted resource neither echoes it nor says it exists', async () => {
    const res = await request(t.app.http).post('/fhir/Observation').set('Authorization', `Bearer ${docToken}`).set('X-Purpose-Of-Use', 'TREAT')
      .set('Content-Type', 'application/fhir+json').set('If-None-Exist', 'identifier=urn:test|ben-1').send(reading(ben, now - DAY, '99504-3', 'ben-1'));
    // 200 would mean "a match exists" — an oracle on data the requester may not see.
    expect(res.status).not.toBe(200);
    expect(JSON.stringify(res.body ?? {})).not.toContain(ids.ben);
  });

  test('a conditional create inside a transaction that matches an ungranted resource neither says it exists nor where', async () => {
    // The new reading is Ana's (a patient the practitioner may write for); its condition matches Ben's reading.
    const res = await request(t.app.http).post('/fhir').set('Authorization', `Bearer ${docToken}`).set('X-Purpose-Of-Use', 'TREAT')
      .set('Content-Type', 'application/fhir+json').send({
        resourceType: 'Bundle', type: 'transaction',
        entry: [{
          fullUrl: `urn:uuid:${randomUUID()}`,
          request: { method: 'POST', url: 'Observation', ifNoneExist: 'identifier=urn:test|ben-1' },
          resource: reading(ana, now - DAY, '99504-3', 'ben-1'),
        }],
      });
    const text = JSON.stringify(res.body ?? {});
    expect(text).not.toContain(ids.ben);
    if (res.status === 200) {
      const [entry] = (res.body as Bundle).entry!;
      // created as new, not "200 OK, it exists"
      expect(entry!.response!.status).toMatch(/^201/);
    } else {
      expect(res.status).toBe(403);
    }
  });

  // Until session 22 the grantee's conditional create was answered with the match (200): a grant's
  // action is `access`, not `collect`, so a grantee creates no patient data, matched or not.
  test('a conditional create inside a transaction: the patient\'s own matching one answers the match; a grantee\'s is refused', async () => {
    const mine = reading(ana, now - 3 * DAY, '99504-3', 'ana-tx-1');
    const first = (await t.app.repository.create(mine)).resource.id!;
    const tx = (token: string) => request(t.app.http).post('/fhir').set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT')
      .set('Content-Type', 'application/fhir+json').send({
        resourceType: 'Bundle', type: 'transaction',
        entry: [{ fullUrl: `urn:uuid:${randomUUID()}`, request: { method: 'POST', url: 'Observation', ifNoneExist: 'identifier=urn:test|ana-tx-1' }, resource: mine }],
      });
    const byGrantee = await tx(docToken);
    expect(byGrantee.status).toBe(403);
    expect(byGrantee.body.resourceType).toBe('OperationOutcome');
    const res = await tx(patientToken(t.app, ana));
    expect(res.status).toBe(200);
    const [entry] = (res.body as Bundle).entry!;
    expect(entry!.response!.status).toMatch(/^200/);
    expect(entry!.response!.location).toContain(`Observation/${first}`);
  });

  test('$cgm-agp and $cgm-summary compute only over permitted readings', async () => {
    // Patient 12 has one reading in the period; a stored reading outside it must not count.
    await t.app.repository.create(reading('12', now - 20 * DAY));
    const agp = await get(`/fhir/Patient/12/$cgm-agp?start=${iso(now - 30 * DAY)}&end=${iso(now)}`);
    expect(agp.status).toBe(200);
    expect(agpOf(agp.body).readings).toBe(1);
    const res = await get(`/fhir/Patient/${ben}/$cgm-summary`);
    expect([403, 404]).toContain(res.status);
    expect(JSON.stringify(res.body)).not.toContain('Okafor');
  });

  test('a Consent cannot be written through a transaction', async () => {
    const res = await request(t.app.http).post('/fhir').set('Authorization', `Bearer ${docToken}`).set('Content-Type', 'application/fhir+json').send({
      resourceType: 'Bundle', type: 'transaction',
      entry: [{ request: { method: 'POST', url: 'Consent' }, resource: { resourceType: 'Consent', status: 'active', scope: { text: 'x' }, category: [{ text: 'x' }], policyRule: { text: 'x' } } }],
    });
    // 400 since session 24: a Consent (any type whose writes a module handles) is refused in a
    // transaction for every requester, before permissions are looked at (it was 403 for this
    // grantee, and stored as plain data for requesters who may write: transaction-handled-types.test.ts)
    expect(res.status).toBe(400);
    expect(res.body.issue[0].diagnostics).toMatch(/a Consent is written on its own/);
  });

  // Found by test/fuzz/consent-enforcement.fuzz.test.ts.
  test('a hidden id answers exactly like an id never stored: read, vread, instance _history and $meta', async () => {
    const madeUp = randomUUID();
    for (const [hidden, absent] of [
      [`Observation/${ids.ben}`, `Observation/${madeUp}`],
      [`Observation/${ids.ben}/_history/1`, `Observation/${madeUp}/_history/1`],
      [`Observation/${ids.ben}/_history`, `Observation/${madeUp}/_history`],
      [`Observation/${ids.anaOld}/_history`, `Observation/${madeUp}/_history`],
      [`Observation/${ids.ben}/$meta`, `Observation/${madeUp}/$meta`],
    ] as const) {
      const [a, b] = [await get(`/fhir/${hidden}`), await get(`/fhir/${absent}`)];
      expect(a.status).toBe(404);
      expect({ status: a.status, body: JSON.stringify(a.body).replaceAll(ids.ben!, 'X').replaceAll(ids.anaOld!, 'X') })
        .toEqual({ status: b.status, body: JSON.stringify(b.body).replaceAll(madeUp, 'X') });
    }
  });

  test('a deleted resource of an ungranted patient answers 404 like an id never stored; a deleted granted reading answers 410', async () => {
    const benGone = (await t.app.repository.create(reading(ben, now - 2 * DAY))).resource.id!;
    await t.app.repository.delete('Observation', benGone);
    const anaGone = (await t.app.repository.create(reading(ana, now - 2 * DAY))).resource.id!;
    await t.app.repository.delete('Observation', anaGone);
    const hidden = await get(`/fhir/Observation/${benGone}`);
    const absent = await get(`/fhir/Observation/${randomUUID()}`);
    expect(hidden.status).toBe(404);
    expect(hidden.body).toEqual(absent.body);
    expect((await get(`/fhir/Observation/${anaGone}`)).status).toBe(410);
    // Type history: the deletion of the hidden reading is not listed (its fullUrl would name it); Ana's is.
    const history = await get('/fhir/Observation/_history?_count=1000');
    expect(JSON.stringify(history.body)).not.toContain(benGone);
    expect(((history.body as Bundle).entry ?? []).filter((e) => e.request?.method === 'DELETE').map((e) => e.fullUrl)).toEqual([expect.stringContaining(anaGone)]);
  });

  test('history pages are re-paged after filtering: no page is empty, so page counts say nothing of hidden versions', async () => {
    const sizes: number[] = [];
    let url: string | undefined = '/fhir/Observation/_history?_count=2';
    while (url && sizes.length < 50) {
      const res = await get(url.replace('http://127.0.0.1:8080', ''));
      expect(res.status).toBe(200);
      sizes.push(((res.body as Bundle).entry ?? []).length);
      url = (res.body as Bundle).link?.find((l) => l.relation === 'next')?.url;
    }
    expect(sizes.length).toBeGreaterThan(1);
    expect(sizes.slice(0, -1).every((n) => n === 2)).toBe(true);
    expect(sizes.at(-1)).toBeGreaterThan(0);
  });

  test('_count=0 gives no next link: it would say whether hidden matches exist', async () => {
    // Ana's reading, inside the grant's patient, code and period, but also about Ben: narrowed in, guarded out.
    const shared = (await t.app.repository.create({ ...reading(ana, now - 2 * DAY), performer: [{ reference: `Patient/${ben}` }] } as Observation)).resource.id!;
    expect((await get(`/fhir/Observation/${shared}`)).status).toBe(404);
    const res = await get(`/fhir/Observation?_id=${shared}&_count=0`);
    expect(res.status).toBe(200);
    expect((res.body as Bundle).link?.some((l) => l.relation === 'next')).toBe(false);
  });

  test('a contained resource about the granting patient must be granted itself (a contained Device under a CGM-readings-only grant)', async () => {
    const withDevice = (await t.app.repository.create({
      ...reading(ana, now - 2 * DAY), device: { reference: '#d1' },
      contained: [{ resourceType: 'Device', id: 'd1', status: 'active', serialNumber: 'SN-ANA-1', patient: { reference: `Patient/${ana}` } }],
    } as Observation)).resource;
    expect((await get(`/fhir/Observation/${withDevice.id}`)).status).toBe(404);
    const search = await get(`/fhir/Observation?patient=Patient/${ana}&_count=100`);
    expect(JSON.stringify(search.body)).not.toContain('SN-ANA-1');
  });

  test('writes: a read grant is no licence to change another patient\'s data, and a hidden id answers like one never stored', async () => {
    const send = (method: 'put' | 'delete', url: string, body?: unknown) => {
      const r = request(t.app.http)[method](url).set('Authorization', `Bearer ${docToken}`).set('X-Purpose-Of-Use', 'TREAT');
      return body ? r.set('content-type', 'application/fhir+json').send(body) : r;
    };
    const shape = (res: request.Response) => ({ status: res.status, body: res.body, headers: Object.keys(res.headers).filter((h) => !['date', 'x-request-id', 'etag', 'content-length'].includes(h)).sort() });
    const benReading = () => t.app.repository.read<Observation>('Observation', ids.ben!);
    const before = await benReading();
    const never = randomUUID();
    // update: Ben's reading is hidden, so it is as absent as a made-up id; neither is written (no update-as-create)
    const putHidden = await send('put', `/fhir/Observation/${ids.ben}`, { ...before, valueQuantity: { ...before.valueQuantity, value: 40 } });
    const putNever = await send('put', `/fhir/Observation/${never}`, { ...reading(ben, now - DAY), id: never });
    expect(putHidden.status).toBe(404);
    expect(shape(putHidden)).toEqual(shape(putNever));
    expect((await benReading()).valueQuantity?.value).toBe(120);
    expect((await benReading()).meta?.versionId).toBe(before.meta?.versionId);
    await expect(t.app.repository.read('Observation', never)).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
    // delete: answers like deleting an id never stored, and deletes nothing
    const delHidden = await send('delete', `/fhir/Observation/${ids.ben}`);
    const delNever = await send('delete', `/fhir/Observation/${never}`);
    expect(shape(delHidden)).toEqual(shape(delNever));
    expect((await benReading()).meta?.versionId).toBe(before.meta?.versionId);
    // a transaction is refused whole, the same for a hidden and a never-stored id
    const tx = (id: string) => request(t.app.http).post('/fhir').set('Authorization', `Bearer ${docToken}`).set('X-Purpose-Of-Use', 'TREAT')
      .set('content-type', 'application/fhir+json')
      .send({ resourceType: 'Bundle', type: 'transaction', entry: [{ request: { method: 'DELETE', url: `Observation/${id}` } }] });
    const txHidden = await tx(ids.ben!);
    const txNever = await tx(never);
    expect(txHidden.status).toBe(404);
    expect(shape(txHidden)).toEqual(shape(txNever));
    expect((await benReading()).meta?.versionId).toBe(before.meta?.versionId);
    // What the requester can see it still may not change: the grant is for access (until session
    // 22 a grantee could rewrite a reading it could read); the patient can.
    const mine = await t.app.repository.read<Observation>('Observation', ids.ana2!);
    const refused = await send('put', `/fhir/Observation/${ids.ana2}`, { ...mine, valueQuantity: { ...mine.valueQuantity, value: 130 } });
    expect(refused.status).toBe(403);
    expect(refused.body.resourceType).toBe('OperationOutcome');
    expect((await send('delete', `/fhir/Observation/${ids.ana2}`)).status).toBe(403);
    // nor inside a transaction, whose DELETE entry names only type and id: judged on the version it deletes
    const txDelete = await request(t.app.http).post('/fhir').set('Authorization', `Bearer ${docToken}`).set('X-Purpose-Of-Use', 'TREAT')
      .set('content-type', 'application/fhir+json')
      .send({ resourceType: 'Bundle', type: 'transaction', entry: [{ request: { method: 'DELETE', url: `Observation/${ids.ana2}` } }] });
    expect(txDelete.status).toBe(403);
    expect((await t.app.repository.read<Observation>('Observation', ids.ana2!)).meta?.versionId).toBe(mine.meta?.versionId);
    const updated = await request(t.app.http).put(`/fhir/Observation/${ids.ana2}`).set('Authorization', `Bearer ${patientToken(t.app, ana)}`)
      .set('content-type', 'application/fhir+json').send({ ...mine, valueQuantity: { ...mine.valueQuantity, value: 130 } });
    expect(updated.status).toBe(200);
    expect((await t.app.repository.read<Observation>('Observation', ids.ana2!)).valueQuantity?.value).toBe(130);
  });

  test('creates: a grantee adds no patient data, a patient only to their own record; system clients create by scope', async () => {
    const post = (body: object, token = docToken) => request(t.app.http).post('/fhir/Observation').set('Authorization', `Bearer ${token}`)
      .set('X-Purpose-Of-Use', 'TREAT').set('content-type', 'application/fhir+json').send(body);
    const countOf = async (patient: string) => (await t.app.repository.search(parseSearchRequest(`Observation?patient=Patient/${patient}&_count=1000`))).resources.length;
    const bens = await countOf(ben);
    const forBen = await post(reading(ben, now - DAY));
    expect(forBen.status).toBe(403);
    expect(forBen.body.resourceType).toBe('OperationOutcome');
    // inside a transaction too, and nothing of it is written
    const tx = await request(t.app.http).post('/fhir').set('Authorization', `Bearer ${docToken}`).set('X-Purpose-Of-Use', 'TREAT')
      .set('content-type', 'application/fhir+json')
      .send({ resourceType: 'Bundle', type: 'transaction', entry: [
        { fullUrl: 'urn:uuid:1', resource: reading(ana, now - DAY), request: { method: 'POST', url: 'Observation' } },
        { fullUrl: 'urn:uuid:2', resource: reading(ben, now - DAY), request: { method: 'POST', url: 'Observation' } },
      ] });
    expect(tx.status).toBe(403);
    expect(await countOf(ben)).toBe(bens);
    // not even a reading the grant from Ana covers (until session 22 it could be added: a grant is
    // for access, not collect); Ana herself adds to her own record, not to Ben's
    expect((await post(reading(ana, now - DAY))).status).toBe(403);
    expect((await post(reading(ana, now - DAY, '2339-0'))).status).toBe(403);
    expect((await post(reading(ana, now - DAY), patientToken(t.app, ana))).status).toBe(201);
    expect((await post(reading(ben, now - DAY), patientToken(t.app, ana))).status).toBe(403);
    // a system client (a device or EHR integration) brings data in by its scopes
    const system = t.app.smart.tokens.signAccessToken({ gid: randomUUID(), clientId: 'uploader', sub: 'uploader', scopes: ['system/Observation.c'] }).token;
    expect((await post(reading(ben, now - DAY), system)).status).toBe(201);
  });

  test('updates: a visible reading cannot be rewritten into another patient\'s record, or out of the grant (found by the write fuzz)', async () => {
    const put = (id: string, body: object) => request(t.app.http).put(`/fhir/Observation/${id}`).set('Authorization', `Bearer ${docToken}`)
      .set('X-Purpose-Of-Use', 'TREAT').set('content-type', 'application/fhir+json').send(body);
    const before = await t.app.repository.read<Observation>('Observation', ids.ana1!);
    const bensBefore = (await t.app.repository.search(parseSearchRequest(`Observation?patient=Patient/${ben}&_count=1000`))).resources.length;
    // the reading is Ana's and visible, but the new version would be Ben's: a person writes only what they could read back
    const intoBen = await put(ids.ana1!, { ...before, subject: { reference: `Patient/${ben}` } });
    expect(intoBen.status).toBe(403);
    expect(intoBen.body.resourceType).toBe('OperationOutcome');
    // nor into a code the grant does not cover
    expect((await put(ids.ana1!, { ...before, code: { coding: [{ system: 'http://loinc.org', code: '2339-0' }] } })).status).toBe(403);
    // inside a transaction too, and nothing of it is written
    const tx = await request(t.app.http).post('/fhir').set('Authorization', `Bearer ${docToken}`).set('X-Purpose-Of-Use', 'TREAT')
      .set('content-type', 'application/fhir+json')
      .send({ resourceType: 'Bundle', type: 'transaction', entry: [
        { fullUrl: 'urn:uuid:1', resource: reading(ana, now - DAY), request: { method: 'POST', url: 'Observation' } },
        { resource: { ...before, subject: { reference: `Patient/${ben}` } }, request: { method: 'PUT', url: `Observation/${ids.ana1}` } },
      ] });
    expect(tx.status).toBe(403);
    const after = await t.app.repository.read<Observation>('Observation', ids.ana1!);
    expect(after.meta?.versionId).toBe(before.meta?.versionId);
    expect(after.subject?.reference).toBe(`Patient/${ana}`);
    expect((await t.app.repository.search(parseSearchRequest(`Observation?patient=Patient/${ben}&_count=1000`))).resources.length).toBe(bensBefore);
    // nor one that stays readable (until session 22 it was allowed: a grant is for access)
    expect((await put(ids.ana1!, { ...before, valueQuantity: { ...before.valueQuantity, value: 125 } })).status).toBe(403);
    // Ana may change her reading, but not make it data about nobody (a patch deleting subject),
    // which no consent would then cover: found by the write fuzz
    const asAna = (method: 'put' | 'patch', body: object, type = 'application/fhir+json') => request(t.app.http)[method](`/fhir/Observation/${ids.ana1}`)
      .set('Authorization', `Bearer ${patientToken(t.app, ana)}`).set('content-type', type).send(body);
    expect((await asAna('patch', [{ op: 'remove', path: '/subject' }], 'application/json-patch+json')).status).toBe(403);
    const { subject: _subject, ...orphan } = before;
    expect((await asAna('put', orphan)).status).toBe(403);
    expect((await t.app.repository.read<Observation>('Observation', ids.ana1!)).subject?.reference).toBe(`Patient/${ana}`);
    expect((await asAna('put', { ...before, valueQuantity: { ...before.valueQuantity, value: 125 } })).status).toBe(200);
  });

  test('type and system history of a limited requester read only the granting patients\' versions from the repository', async () => {
    const history = jest.spyOn(t.app.repository, 'history');
    try {
      for (const url of ['/fhir/Observation/_history?_count=5', '/fhir/_history?_count=5']) {
        history.mockClear();
        const res = await get(url);
        expect(res.status).toBe(200);
        // the page's own reads (instance histories behind deletion entries are looked up by id)
        const pages = history.mock.calls.map(([request], i) => ({ request, result: history.mock.results[i]!.value as ReturnType<typeof t.app.repository.history> }))
          .filter((c) => c.request.id === undefined);
        expect(pages.length).toBeGreaterThan(0);
        for (const { request } of pages) expect([...request.patients!].sort()).toEqual([ana, '12'].sort());
        // nothing of Ben's was even read: the repository was asked for the granting patients' versions only
        const read = (await Promise.all(pages.map((p) => p.result))).flatMap((r) => r.entries);
        expect(read.length).toBeGreaterThan(0);
        expect(read.filter((e) => e.id === ids.ben)).toEqual([]);
      }
    } finally {
      history.mockRestore();
    }
  });

  test('expiry by the clock: the same cached permissions deny once the access window has ended', async () => {
    expect((await get(`/fhir/Observation/${ids.ana0}`)).status).toBe(200);
    const decisions = t.app.consent.decisions as unknown as { now: () => number };
    const real = decisions.now;
    decisions.now = () => now + 4 * DAY;
    try {
      expect((await get(`/fhir/Observation/${ids.ana0}`)).status).toBe(404);
    } finally {
      decisions.now = real;
    }
  });

  test('fail closed: 503 when the KV store or the chain cannot decide, and service resumes by itself', async () => {
    const kv = t.app.kv as unknown as { get: (k: string) => Promise<string | undefined> };
    const realGet = kv.get;
    kv.get = async () => { throw Object.assign(new (await import('../../src/errors.js')).GlucoGuardError('ERR_UNAVAILABLE', 'Redis down')); };
    try {
      const res = await get(`/fhir/Observation/${ids.ana0}`);
      expect(res.status).toBe(503);
      expect(res.body.resourceType).toBe('OperationOutcome');
      expect(JSON.stringify(res.body)).not.toContain('valueQuantity');
    } finally {
      kv.get = realGet;
    }
    const provider = t.app.chain.provider as unknown as { send: (...a: unknown[]) => Promise<unknown> };
    const realSend = provider.send;
    provider.send = () => Promise.reject(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }));
    t.app.consent.decisions.dropAll();
    try {
      const res = await get(`/fhir/Observation/${ids.ana0}`);
      expect(res.status).toBe(503);
    } finally {
      provider.send = realSend;
    }
    expect((await get(`/fhir/Observation/${ids.ana0}`)).status).toBe(200);
  });

  // Last: its grant from a further patient would change what the history test above expects to be asked for.
  test('updates: a deleted Patient the grant covered answers like a never-stored one, whatever the body says (found by the write fuzz)', async () => {
    // A Patient body names its own id, so judging the body before finding the id absent told the two apart (404 vs 403).
    const dee = await person(t.app, 'Patient', 'Dee');
    expect((await grant(t.app, { actor: `Practitioner/${doc}`, accessTo: now + 3 * DAY, dataFrom: now - 14 * DAY, dataTo: now, patient: dee, classes: ['Patient'] })).status).toBe(201);
    await t.app.repository.delete('Patient', dee);
    const never = randomUUID();
    const put = (id: string) => request(t.app.http).put(`/fhir/Patient/${id}`).set('Authorization', `Bearer ${docToken}`)
      .set('X-Purpose-Of-Use', 'TREAT').set('content-type', 'application/fhir+json').send({ resourceType: 'Patient', id, name: [{ family: 'Changed' }] });
    const shape = (res: request.Response, id: string) => ({ status: res.status, body: JSON.parse(JSON.stringify(res.body).replaceAll(id, '<id>')) as unknown,
      headers: Object.keys(res.headers).filter((h) => !['date', 'x-request-id', 'etag', 'content-length'].includes(h)).sort() });
    const deleted = await put(dee);
    const made = await put(never);
    expect(deleted.status).toBe(404);
    expect(shape(deleted, dee)).toEqual(shape(made, never));
    // and neither was written (no update-as-create)
    await expect(t.app.repository.read('Patient', dee)).rejects.toMatchObject({ code: 'ERR_GONE' });
    await expect(t.app.repository.read('Patient', never)).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
  });
  // last: it leaves a deletion of a visible reading in the type history the tests above count
  // Ana's own token since session 22 (a grantee writes no patient data; its conditional PUTs are
  // refused alike, matched or not, below).
  test('conditional update and delete decide over what the requester may see: a hidden match is neither changed nor revealed', async () => {
    const send = (method: 'put' | 'delete', url: string, body?: unknown, token = patientToken(t.app, ana)) => {
      const r = request(t.app.http)[method](url).set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT');
      return body ? r.set('content-type', 'application/fhir+json').send(body) : r;
    };
    // Ben's reading (hidden from the practitioner) under an identifier nothing else carries
    const hiddenId = `cond-ben-${randomUUID()}`;
    const benId = (await t.app.repository.create(reading(ben, now - 2 * DAY, '99504-3', hiddenId))).resource.id!;
    const benReading = () => t.app.repository.read<Observation>('Observation', benId);
    const before = await benReading();
    const nothing = `cond-${randomUUID()}`;
    const byGrantee = [hiddenId, nothing].map((idf) => send('put', `/fhir/Observation?identifier=urn:test|${idf}`, reading(ana, now - DAY, '99504-3', idf), docToken));
    expect((await Promise.all(byGrantee)).map((r) => r.status)).toEqual([403, 403]);
    // Criteria that match only Ben's (hidden) reading answer as criteria that match nothing: Ana's
    // reading is created, Ben's stays as it was, and nothing names it.
    const putHidden = await send('put', `/fhir/Observation?identifier=urn:test|${hiddenId}`, reading(ana, now - DAY, '99504-3', hiddenId));
    const putNothing = await send('put', `/fhir/Observation?identifier=urn:test|${nothing}`, reading(ana, now - DAY, '99504-3', nothing));
    expect(putHidden.status).toBe(201);
    expect(putNothing.status).toBe(201);
    expect(JSON.stringify(putHidden.body)).not.toContain(benId);
    expect(putHidden.body.subject.reference).toBe(`Patient/${ana}`);
    expect((await benReading()).meta?.versionId).toBe(before.meta?.versionId);
    const delHidden = await send('delete', `/fhir/Observation?identifier=urn:test|${randomUUID()}&_id=${benId}`);
    const delNothing = await send('delete', `/fhir/Observation?identifier=urn:test|${randomUUID()}&_id=${randomUUID()}`);
    const delOnlyBen = await send('delete', `/fhir/Observation?_id=${benId}`);
    expect([delHidden.status, delNothing.status, delOnlyBen.status]).toEqual([204, 204, 204]);
    expect((await benReading()).meta?.versionId).toBe(before.meta?.versionId);
    // What they can see, they may upsert: the reading created above is the one match now
    const again = await send('put', `/fhir/Observation?identifier=urn:test|${hiddenId}`, { ...reading(ana, now - DAY, '99504-3', hiddenId), valueQuantity: { value: 140, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' } });
    expect(again.status).toBe(200);
    expect(again.body.id).toBe(putHidden.body.id);
    expect((await benReading()).valueQuantity?.value).toBe(120);
    // and conditional delete removes that one, not Ben's
    expect((await send('delete', `/fhir/Observation?identifier=urn:test|${hiddenId}`)).status).toBe(204);
    await expect(t.app.repository.read('Observation', putHidden.body.id)).rejects.toMatchObject({ code: 'ERR_GONE' });
    expect((await benReading()).meta?.versionId).toBe(before.meta?.versionId);
  });

  test('subject:identifier finds only what the grants cover: an MRN of an ungranted patient, or of nobody, selects nothing', async () => {
    const withMrn = (patient: string, mrn: string): Observation => {
      const o = reading(patient, now - 2 * DAY);
      return { ...o, subject: { ...o.subject, identifier: { system: 'urn:mrn', value: mrn } } };
    };
    const p12 = (await t.app.repository.create(withMrn('12', 'MRN-12'))).resource.id!;
    await t.app.repository.create(withMrn(ben, 'MRN-BEN'));
    // a logical reference alone: the reading is in no patient's compartment, so no grant covers it
    await t.app.repository.create({ ...reading('', now - 2 * DAY), subject: { identifier: { system: 'urn:mrn', value: 'MRN-LOGICAL' } } });
    const matched = async (url: string): Promise<string[]> => {
      const res = await get(url);
      expect([url, res.status]).toEqual([url, 200]);
      return entries(res.body).map((r) => r.id!).sort();
    };
    expect(await matched('/fhir/Observation?subject:identifier=urn:mrn|MRN-12')).toEqual([p12]);
    expect(await matched('/fhir/Observation?subject:identifier=urn:mrn|MRN-BEN')).toEqual([]);
    expect(await matched('/fhir/Observation?subject:identifier=MRN-LOGICAL')).toEqual([]);
    expect(await matched('/fhir/Observation?subject:identifier=urn:mrn|')).toEqual([p12]);
  });
});
