/**
 * Patient/$match (patient-operation-match.html): candidates graded certain, probable or possible by
 * the rules written in src/fhir/patient-match.ts; onlyCertainMatches and count; malformed input is
 * 400; and a requester only ever matches patients a search would show them.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, BundleEntry, Parameters, Patient } from '@medplum/fhirtypes';
import request from 'supertest';
import { OPEN_ACCESS } from '../../src/fhir/access.js';
import { MATCH_GRADE } from '../../src/fhir/patient-match.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { DAY, LOINC_MGDL, grant, patientToken, person, practitionerToken, registerIdentity } from './consent-helpers.js';

const MRN = 'urn:oid:2.16.840.1.113883.3.9999.1';
const now = Date.now();

describe('Patient/$match', () => {
  let t: TestApp;
  const ids: Record<string, string> = {};
  let doc: string;

  const patient = (family: string, given: string, birthDate?: string, extra: Partial<Patient> = {}): Patient =>
    ({ resourceType: 'Patient', name: [{ family, given: [given] }], ...(birthDate ? { birthDate } : {}), ...extra });
  const params = (input: Patient, more: Parameters['parameter'] = []): Parameters =>
    ({ resourceType: 'Parameters', parameter: [{ name: 'resource', resource: input }, ...more!] });
  /** In-process, unrestricted access: name → [score, grade] of each entry, best first. */
  async function match(body: unknown): Promise<[string, number, string][]> {
    const res = await t.app.fhir.handle({ method: 'POST', path: 'Patient/$match', query: {}, headers: { 'content-type': 'application/fhir+json' }, body, access: OPEN_ACCESS });
    expect(res.status).toBe(200);
    return graded(res.body as Bundle);
  }
  const names = new Map<string, string>();
  const graded = (b: Bundle): [string, number, string][] => (b.entry ?? []).filter((e: BundleEntry) => e.search?.mode === 'match')
    .map((e) => [names.get(e.resource!.id!)!, e.search!.score!, e.search!.extension!.find((x) => x.url === MATCH_GRADE)!.valueCode!]);

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
    const put = async (name: string, p: Patient) => {
      ids[name] = (await t.app.repository.create(p)).resource.id!;
      names.set(ids[name]!, name);
    };
    await put('ana', patient('Rivera', 'Ana', '1980-04-02', { gender: 'female', identifier: [{ system: MRN, value: '1001' }], telecom: [{ system: 'phone', value: '+1 (555) 010-2030' }] }));
    await put('anaTwin', patient('Rivera', 'Ana', '1980-04-02')); // the same name and birth date, no MRN
    await put('anabel', patient('Rivera', 'Anabel', '1980-04-02')); // a sibling: family and birth date
    await put('anaMoved', patient('Ríos', 'Ana', '1980-04-02', { identifier: [{ system: MRN, value: '1001' }] })); // married name, same MRN
    await put('wrongBirth', patient('Rivera', 'Ana', '1981-04-02', { identifier: [{ system: MRN, value: '1001' }] })); // same MRN, other birth date
    await put('ben', patient('Okafor', 'Ben', '1975-09-30', { identifier: [{ system: MRN, value: '2002' }] }));
    doc = await person(t.app, 'Practitioner', 'Osei');
    await registerIdentity(t.app, `Practitioner/${doc}`);
    const res = await grant(t.app, { patient: ids.ana!, actor: `Practitioner/${doc}`, accessTo: now + 3 * DAY, dataFrom: now - 14 * DAY, dataTo: now, classes: ['Observation', 'Patient'], codes: [LOINC_MGDL] });
    expect(res.status).toBe(201);
  }, 60_000);

  afterAll(async () => {
    await t?.close();
  });

  test('grades each candidate by what both sides give: identifier with birth date certain, name and birth date probable, less possible', async () => {
    const found = await match(params(patient('RIVERA', 'ana', '1980-04-02', { gender: 'female', identifier: [{ system: MRN, value: '1001' }] })));
    expect(found).toEqual([
      ['ana', 0.95, 'certain'], // identifier 0.4 + birth 0.2 + family 0.15 + given 0.15 + gender 0.05 (no phone given)
      ['anaMoved', 0.75, 'certain'], // identifier + birth + given: another family name
      ['wrongBirth', 0.7, 'possible'], // identifier + family + given, but a birth date that differs
      ['anaTwin', 0.5, 'probable'],
      ['anabel', 0.35, 'possible'],
    ]);
  });

  test('accents and case do not matter; a phone in another format counts', async () => {
    const found = await match(params(patient('Rios', 'ANA', '1980-04-02')));
    expect(found).toEqual(expect.arrayContaining([['anaMoved', 0.5, 'probable']]));
    const byPhone = await match(params(patient('Rivera', 'Ana', undefined, { telecom: [{ system: 'phone', value: '+15550102030' }] })));
    expect(byPhone[0]).toEqual(['ana', 0.35, 'possible']);
  });

  test('onlyCertainMatches answers the single certain match, or nothing when there are several; count limits the rest', async () => {
    const single = await match(params(patient('Okafor', 'Ben', '1975-09-30', { identifier: [{ system: MRN, value: '2002' }] }), [{ name: 'onlyCertainMatches', valueBoolean: true }]));
    expect(single).toEqual([['ben', 0.9, 'certain']]);
    const res = await t.app.fhir.handle({ method: 'POST', path: 'Patient/$match', query: {}, headers: { 'content-type': 'application/fhir+json' }, access: OPEN_ACCESS,
      body: params(patient('Rivera', 'Ana', '1980-04-02', { identifier: [{ system: MRN, value: '1001' }] }), [{ name: 'onlyCertainMatches', valueBoolean: true }]) });
    const bundle = res.body as Bundle;
    expect(graded(bundle)).toEqual([]);
    expect(JSON.stringify(bundle.entry)).toContain('2 certain matches');
    expect(await match(params(patient('Rivera', 'Ana', '1980-04-02'), [{ name: 'count', valueInteger: 2 }]))).toHaveLength(2);
    expect(await match(params(patient('Nobody', 'Here', '2001-01-01')))).toEqual([]);
  });

  test('malformed input is 400 and names the problem; a body that is not FHIR JSON is 415', async () => {
    const bad = async (body: unknown): Promise<string> => {
      const res = await t.app.fhir.handle({ method: 'POST', path: 'Patient/$match', query: {}, headers: { 'content-type': 'application/fhir+json' }, body, access: OPEN_ACCESS });
      expect(res.status).toBe(400);
      return JSON.stringify(res.body);
    };
    expect(await bad(patient('Rivera', 'Ana'))).toMatch(/Parameters resource/);
    expect(await bad({ resourceType: 'Parameters' })).toMatch(/needs the Patient/);
    // an empty list is no FHIR JSON (json.html): refused by the router's check of the Parameters, naming it
    expect(JSON.parse(await bad({ resourceType: 'Parameters', parameter: [] })).issue).toEqual([
      { severity: 'error', code: 'structure', diagnostics: 'Invalid empty value: parameter is an empty list (leave the element out instead)', expression: ['Parameters.parameter'] },
    ]);
    expect(await bad(params(patient('Rivera', 'Ana'), [{ name: 'count', valueInteger: 0 }]))).toMatch(/count \(1 to 100\)/);
    expect(await bad(params({ resourceType: 'Patient', gender: 'female' }))).toMatch(/needs an identifier, or a name/);
    // malformed elements are a 400, never a 500, naming the element: the router checks every
    // operation's Parameters for values of the wrong JSON kind before $match reads them (it used
    // to be $match's own "must be lists of elements", which named no element)
    const broken: [object, string][] = [
      [{ name: 'Rivera' }, 'resource.name'], [{ name: [{ family: 'Rivera', given: 'Ana' }] }, 'resource.name[0].given'],
      [{ identifier: { value: '1' } }, 'resource.identifier'], [{ telecom: [null] }, 'resource.telecom'], [{ birthDate: 19800402 }, 'resource.birthDate'],
    ];
    for (const [elements, at] of broken) {
      const outcome = JSON.parse(await bad(params({ resourceType: 'Patient', ...elements } as unknown as Patient))) as { issue: { diagnostics: string; expression: string[] }[] };
      expect(outcome.issue[0]!.diagnostics).toMatch(/^Invalid JSON type/);
      expect(outcome.issue[0]!.expression).toEqual([`Parameters.parameter[0].${at}`]);
    }
    const form = await t.app.fhir.handle({ method: 'POST', path: 'Patient/$match', query: {}, headers: { 'content-type': 'text/plain' }, body: 'x', access: OPEN_ACCESS });
    expect(form.status).toBe(415);
  });

  test('over HTTP a requester matches only the patients a search shows them: the patient themself, the practitioner the granted patient', async () => {
    const input = params(patient('Rivera', 'Ana', '1980-04-02', { identifier: [{ system: MRN, value: '1001' }] }));
    const asPatient = await request(t.app.http).post('/fhir/Patient/$match').set('Content-Type', 'application/fhir+json')
      .set('Authorization', `Bearer ${patientToken(t.app, ids.ana!)}`).send(input);
    expect(asPatient.status).toBe(200);
    expect(graded(asPatient.body)).toEqual([['ana', 0.9, 'certain']]);
    const asDoctor = await request(t.app.http).post('/fhir/Patient/$match').set('Content-Type', 'application/fhir+json')
      .set('Authorization', `Bearer ${practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs'])}`).set('X-Purpose-Of-Use', 'TREAT').send(input);
    expect(asDoctor.status).toBe(200);
    expect(graded(asDoctor.body)).toEqual([['ana', 0.9, 'certain']]);
    // Ben's patient app finds nothing of Ana's, though her MRN is given
    const asBen = await request(t.app.http).post('/fhir/Patient/$match').set('Content-Type', 'application/fhir+json')
      .set('Authorization', `Bearer ${patientToken(t.app, ids.ben!)}`).send(input);
    expect([asBen.status, graded(asBen.body)]).toEqual([200, []]);
    const meta = await request(t.app.http).get('/fhir/metadata');
    const patientOps = meta.body.rest[0].resource.find((r: { type: string }) => r.type === 'Patient').operation;
    expect(patientOps).toEqual(expect.arrayContaining([{ name: 'match', definition: 'http://hl7.org/fhir/OperationDefinition/Patient-match' }]));
  });
});
