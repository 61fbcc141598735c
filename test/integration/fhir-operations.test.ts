/**
 * Patient/$everything, Observation/$lastn and $meta: shapes, and their output limited exactly as a
 * read is — by patient scopes and by consent (granted patient, code and data period only).
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, Observation, Resource } from '@medplum/fhirtypes';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { DAY, LOINC_MGDL, grant, patientToken, person, practitionerToken, registerIdentity } from './consent-helpers.js';

const now = Date.now();
const iso = (t: number): string => new Date(t).toISOString();

function reading(patient: string, at: number, code = '99504-3', value = 120): Observation {
  return {
    resourceType: 'Observation', status: 'final',
    code: { coding: [{ system: 'http://loinc.org', code }] },
    subject: { reference: `Patient/${patient}` },
    effectiveDateTime: iso(at),
    valueQuantity: { value, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
  };
}

describe('standard operations under scopes and consent', () => {
  let t: TestApp;
  let ana: string;
  let ben: string;
  let doc: string;
  const ids: Record<string, string> = {};
  const types = (b: Bundle): string[] => (b.entry ?? []).map((e) => `${e.resource!.resourceType}/${e.resource!.id}`);

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
    const repo = t.app.repository;
    ana = await person(t.app, 'Patient', 'Rivera');
    ben = await person(t.app, 'Patient', 'Okafor');
    doc = await person(t.app, 'Practitioner', 'Osei');
    await registerIdentity(t.app, `Practitioner/${doc}`);
    const put = async (name: string, o: Observation) => {
      ids[name] = (await repo.create(o)).resource.id!;
    };
    for (let i = 0; i < 3; i++) await put(`ana${i}`, reading(ana, now - (1 + i) * DAY, '99504-3', 100 + i));
    await put('anaOther', { ...reading(ana, now - DAY, '2339-0'), identifier: [{ system: 'urn:test', value: 'hidden-1' }] });
    await put('anaOld', reading(ana, now - 30 * DAY));
    await put('ben', reading(ben, now - DAY));
    const res = await grant(t.app, { patient: ana, actor: `Practitioner/${doc}`, accessTo: now + 3 * DAY, dataFrom: now - 14 * DAY, dataTo: now, classes: ['Observation', 'Patient'], codes: [LOINC_MGDL] });
    expect(res.status).toBe(201);
  }, 60_000);

  afterAll(async () => {
    await t?.close();
  });

  test('the patient: $everything gives their Patient and all their readings, never another patient\'s', async () => {
    const own = await request(t.app.http).get(`/fhir/Patient/${ana}/$everything`).set('Authorization', `Bearer ${patientToken(t.app, ana)}`);
    expect(own.status).toBe(200);
    expect(types(own.body)).toEqual(expect.arrayContaining([`Patient/${ana}`, ...['ana0', 'ana1', 'ana2', 'anaOther', 'anaOld'].map((n) => `Observation/${ids[n]}`)]));
    expect(types(own.body)).not.toContain(`Observation/${ids.ben}`);
    expect(own.body.total).toBeUndefined();
    const other = await request(t.app.http).get(`/fhir/Patient/${ben}/$everything`).set('Authorization', `Bearer ${patientToken(t.app, ana)}`);
    expect(other.status).toBe(404);
  });

  test('a practitioner with a grant: $everything holds only granted codes inside the data period', async () => {
    const res = await request(t.app.http).get(`/fhir/Patient/${ana}/$everything`)
      .set('Authorization', `Bearer ${practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs'])}`).set('X-Purpose-Of-Use', 'TREAT');
    expect(res.status).toBe(200);
    const seen = types(res.body);
    expect(seen).toEqual(expect.arrayContaining(['ana0', 'ana1', 'ana2'].map((n) => `Observation/${ids[n]}`)));
    expect(seen).not.toContain(`Observation/${ids.anaOther}`);
    expect(seen).not.toContain(`Observation/${ids.anaOld}`);
    const ungranted = await request(t.app.http).get(`/fhir/Patient/${ben}/$everything`)
      .set('Authorization', `Bearer ${practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs'])}`).set('X-Purpose-Of-Use', 'TREAT');
    expect(ungranted.status).toBe(404);
  });

  test('$everything pages with _count across types, next links only while something visible is left, tokens bound to the requester', async () => {
    const asAna = { Authorization: `Bearer ${patientToken(t.app, ana)}` };
    const seen: string[] = [];
    const sizes: number[] = [];
    let url: string | undefined = `/fhir/Patient/${ana}/$everything?_count=2`;
    let firstNext: string | undefined;
    while (url) {
      const res: { status: number; body: Bundle } = await request(t.app.http).get(url.replace(/^https?:\/\/[^/]+/, '')).set(asAna);
      expect(res.status).toBe(200);
      seen.push(...types(res.body));
      sizes.push(res.body.entry!.length);
      url = (res.body as Bundle).link?.find((l) => l.relation === 'next')?.url?.replace(/^.*\/fhir/, '/fhir');
      firstNext ??= url;
    }
    // the Patient first, then 2 per page: each of Ana's readings once
    expect(seen[0]).toBe(`Patient/${ana}`);
    expect(new Set(seen).size).toBe(seen.length);
    expect(seen).toEqual(expect.arrayContaining(['ana0', 'ana1', 'ana2', 'anaOther', 'anaOld'].map((n) => `Observation/${ids[n]}`)));
    expect(sizes.slice(0, -1).every((n, i) => n === (i === 0 ? 3 : 2))).toBe(true);
    expect(sizes.at(-1)).toBeGreaterThan(0);
    const all = await request(t.app.http).get(`/fhir/Patient/${ana}/$everything`).set(asAna);
    expect(types(all.body).sort()).toEqual([...seen].sort());
    // the same token from another requester is refused
    const stolen = await request(t.app.http).get(firstNext!).set('Authorization', `Bearer ${patientToken(t.app, ben)}`);
    expect(stolen.status).toBe(400);
    // start/end bound the readings' dates (whole days: the day of now − 2 days holds ana1, the day before it ana2); _type the types
    const recent = await request(t.app.http).get(`/fhir/Patient/${ana}/$everything`).query({ start: iso(now - 2 * DAY).slice(0, 10), _type: 'Observation' }).set(asAna);
    expect(types(recent.body).filter((x) => x.startsWith('Observation/')).sort()).toEqual(['ana0', 'ana1', 'anaOther'].map((n) => `Observation/${ids[n]}`).sort());
    const none = await request(t.app.http).get(`/fhir/Patient/${ana}/$everything`).query({ end: '2000-01-01' }).set(asAna);
    expect(types(none.body)).toEqual([`Patient/${ana}`]);
    for (const bad of [{ start: 'yesterday' }, { _since: 'x' }, { _count: '0' }, { _type: 'AuditEvent' }]) {
      expect([bad, (await request(t.app.http).get(`/fhir/Patient/${ana}/$everything`).query(bad).set(asAna)).status]).toEqual([bad, 400]);
    }
  });

  test('$everything paged for a practitioner holds only what the grant shows, the same as unpaged', async () => {
    const asDoc = { Authorization: `Bearer ${practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs'])}`, 'X-Purpose-Of-Use': 'TREAT' };
    const unpaged = types((await request(t.app.http).get(`/fhir/Patient/${ana}/$everything`).set(asDoc)).body);
    const paged: string[] = [];
    let url: string | undefined = `/fhir/Patient/${ana}/$everything?_count=1`;
    while (url) {
      const res: { status: number; body: Bundle } = await request(t.app.http).get(url).set(asDoc);
      expect(res.status).toBe(200);
      expect(res.body.entry!.length).toBeGreaterThan(0);
      paged.push(...types(res.body));
      url = (res.body as Bundle).link?.find((l) => l.relation === 'next')?.url?.replace(/^.*\/fhir/, '/fhir');
    }
    expect(paged.sort()).toEqual(unpaged.sort());
    expect(paged).not.toContain(`Observation/${ids.anaOther}`);
    expect(paged).not.toContain(`Observation/${ids.anaOld}`);
  });

  test('$lastn returns the most recent readings per code, only of what may be seen', async () => {
    const own = await request(t.app.http).get(`/fhir/Observation/$lastn?patient=Patient/${ana}&max=2`).set('Authorization', `Bearer ${patientToken(t.app, ana)}`);
    expect(own.status).toBe(200);
    const obs = (own.body as Bundle).entry!.map((e) => e.resource as Observation);
    expect(obs.filter((o) => o.code.coding![0]!.code === '99504-3').map((o) => o.id)).toEqual([ids.ana0, ids.ana1]);
    expect(obs.filter((o) => o.code.coding![0]!.code === '2339-0').map((o) => o.id)).toEqual([ids.anaOther]);
    const doctor = await request(t.app.http).get(`/fhir/Observation/$lastn?patient=Patient/${ana}&max=5`)
      .set('Authorization', `Bearer ${practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs'])}`).set('X-Purpose-Of-Use', 'TREAT');
    expect((doctor.body as Bundle).entry!.map((e) => e.resource!.id).sort()).toEqual([ids.ana0, ids.ana1, ids.ana2].sort());
    // with codes, each code's newest readings by a search of their own; a code named twice counts once
    const byCode = await request(t.app.http).get(`/fhir/Observation/$lastn`).query({ patient: `Patient/${ana}`, max: '2', code: 'http://loinc.org|99504-3,99504-3,http://loinc.org|2339-0' })
      .set('Authorization', `Bearer ${patientToken(t.app, ana)}`);
    expect((byCode.body as Bundle).entry!.map((e) => e.resource!.id)).toEqual([ids.ana0, ids.ana1, ids.anaOther]);
    const doctorByCode = await request(t.app.http).get(`/fhir/Observation/$lastn`).query({ patient: `Patient/${ana}`, max: '5', code: 'http://loinc.org|2339-0,http://loinc.org|99504-3' })
      .set('Authorization', `Bearer ${practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs'])}`).set('X-Purpose-Of-Use', 'TREAT');
    expect((doctorByCode.body as Bundle).entry!.map((e) => e.resource!.id)).toEqual([ids.ana0, ids.ana1, ids.ana2]);
    const badMax = await request(t.app.http).get(`/fhir/Observation/$lastn?patient=Patient/${ana}&max=zero`).set('Authorization', `Bearer ${patientToken(t.app, ana)}`);
    expect(badMax.status).toBe(400);
  });

  test('$lastn narrows by the Observation search parameters given with it, and refuses what it would otherwise ignore', async () => {
    const lastn = (query: Record<string, string | string[]>) => request(t.app.http).get('/fhir/Observation/$lastn').query(query)
      .set('Authorization', `Bearer ${patientToken(t.app, ana)}`);
    const found = (res: request.Response) => (res.body as Bundle).entry!.filter((e) => e.resource!.resourceType === 'Observation').map((e) => e.resource!.id);
    // the newest reading of each code before two days ago: ana's older glucose readings only (the other code is newer)
    const before = await lastn({ patient: `Patient/${ana}`, max: '2', date: `lt${new Date(now - 1.5 * DAY).toISOString()}` });
    expect(before.status).toBe(200);
    expect(found(before)).toEqual([ids.ana1, ids.ana2]);
    const coded = await lastn({ patient: `Patient/${ana}`, max: '1', code: '99504-3', date: `lt${new Date(now - 1.5 * DAY).toISOString()}` });
    expect(found(coded)).toEqual([ids.ana1]);
    // a parameter no Observation search knows is refused, as in a search, and so are the result parameters $lastn answers itself
    for (const [name, value] of [['colour', 'blue'], ['_sort', 'date'], ['_count', '5'], ['_include', 'Observation:subject'], ['_include:iterate', 'Observation:subject']] as const) {
      const res = await lastn({ patient: `Patient/${ana}`, [name]: value });
      expect(res.status).toBe(400);
      expect(res.body.resourceType).toBe('OperationOutcome');
      expect(JSON.stringify(res.body.issue)).toContain(name);
    }
    // with Prefer: handling=lenient a parameter no search knows is left out
    const lenient = await request(t.app.http).get('/fhir/Observation/$lastn').query({ patient: `Patient/${ana}`, max: '2', colour: 'blue' })
      .set('Authorization', `Bearer ${patientToken(t.app, ana)}`).set('Prefer', 'handling=lenient');
    expect(lenient.status).toBe(200);
    expect(found(lenient)).toEqual(found(await lastn({ patient: `Patient/${ana}`, max: '2' })));
    // a parameter given twice where $lastn takes one
    const twice = await lastn({ patient: `Patient/${ana}`, code: ['99504-3', '2339-0'] });
    expect(twice.status).toBe(400);
    expect(twice.body.issue[0].diagnostics).toContain('list the codes with commas');
  });

  test('$everything refuses a parameter it does not define, or leaves it out with Prefer: handling=lenient', async () => {
    const everything = (query: string, prefer?: string) => {
      const r = request(t.app.http).get(`/fhir/Patient/${ana}/$everything?${query}`).set('Authorization', `Bearer ${patientToken(t.app, ana)}`);
      return prefer ? r.set('Prefer', prefer) : r;
    };
    const refused = await everything('code=99504-3');
    expect(refused.status).toBe(400);
    expect(refused.body.issue[0].diagnostics).toBe('code is not a parameter of $everything (it takes start, end, _since, _type, _count)');
    // $meta takes none
    const meta = await request(t.app.http).get(`/fhir/Patient/${ana}/$meta?versionId=1`).set('Authorization', `Bearer ${patientToken(t.app, ana)}`);
    expect(meta.status).toBe(400);
    expect(meta.body.issue[0].diagnostics).toBe('versionId is not a parameter of $meta (it takes none)');
    const lenient = await everything('code=99504-3', 'handling=lenient');
    expect(lenient.status).toBe(200);
    expect((await everything('')).body.entry.length).toBe(lenient.body.entry.length);
  });

  test('$meta answers the meta of a readable resource and 404 for one that may not be seen', async () => {
    const own = await request(t.app.http).get(`/fhir/Observation/${ids.ana0}/$meta`).set('Authorization', `Bearer ${patientToken(t.app, ana)}`);
    expect(own.status).toBe(200);
    expect(own.body.resourceType).toBe('Parameters');
    expect(own.body.parameter[0].valueMeta.versionId).toBe('1');
    const hidden = await request(t.app.http).get(`/fhir/Observation/${ids.ben}/$meta`).set('Authorization', `Bearer ${patientToken(t.app, ana)}`);
    expect(hidden.status).toBe(404);
    expect(JSON.stringify(hidden.body as Resource)).not.toContain('versionId');
  });

  test('conditional create is no oracle: a match the requester may not see is never answered as "exists"', async () => {
    const body = { ...reading(ana, now - DAY, '2339-0'), identifier: [{ system: 'urn:test', value: 'hidden-1' }] };
    // The patient, who sees the reading, gets the existing one back.
    const own = await request(t.app.http).post('/fhir/Observation').set('Authorization', `Bearer ${patientToken(t.app, ana)}`)
      .set('Content-Type', 'application/fhir+json').set('If-None-Exist', 'identifier=urn:test|hidden-1').send(body);
    expect(own.status).toBe(200);
    expect(own.body.id).toBe(ids.anaOther);
    // The practitioner, whose grant does not cover that code, learns nothing about it.
    const docToken = practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.cruds']);
    const res = await request(t.app.http).post('/fhir/Observation').set('Authorization', `Bearer ${docToken}`).set('X-Purpose-Of-Use', 'TREAT')
      .set('Content-Type', 'application/fhir+json').set('If-None-Exist', 'identifier=urn:test|hidden-1').send(body);
    expect(res.status).not.toBe(200);
    expect(JSON.stringify(res.body ?? {})).not.toContain(ids.anaOther);
  });

  test('consent decisions are counted by outcome on /metrics', async () => {
    await request(t.app.http).get(`/fhir/Patient/${ana}/$everything`)
      .set('Authorization', `Bearer ${practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs'])}`).set('X-Purpose-Of-Use', 'TREAT');
    const text = (await request(t.app.http).get("/metrics")).text;
    const count = (outcome: string): number => Number(new RegExp(`glucoguard_consent_decisions_total\\{outcome="${outcome}"[^}]*\\} (\\d+)`).exec(text)?.[1] ?? 0);
    expect(count('permit')).toBeGreaterThan(0);
    expect(count('deny')).toBeGreaterThan(0);
  });

  test('the CapabilityStatement lists the operations', async () => {
    const res = await request(t.app.http).get('/fhir/metadata');
    const patient = res.body.rest[0].resource.find((r: { type: string }) => r.type === 'Patient');
    expect(patient.operation.map((o: { name: string }) => o.name)).toEqual(expect.arrayContaining(['everything', 'meta']));
    const obs = res.body.rest[0].resource.find((r: { type: string }) => r.type === 'Observation');
    expect(obs.operation.map((o: { name: string }) => o.name)).toContain('lastn');
  });
});
