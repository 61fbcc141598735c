/**
 * Property-based fuzzing of the FHIR search parser (src/fhir/search.ts `parseSearch`) and the
 * embedded search behind it, driven in-process through `app.fhir.handle` (no HTTP, for speed):
 * arbitrary query objects of known and unknown parameters, modifiers, prefixes, lists and page
 * tokens must answer 200 (a searchset Bundle) or 400 (an OperationOutcome) — never 500.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Resource } from '@medplum/fhirtypes';
import fc from 'fast-check';
import { OPEN_ACCESS } from '../../src/fhir/access.js';
import type { FhirRequest, FhirResponse } from '../../src/fhir/types.js';
import { startTestApp, type TestApp } from '../support/app.js';

let t: TestApp;
let patientId: string;
const statuses = new Map<number, number>();

beforeAll(async () => {
  t = await startTestApp();
  const patient = await t.app.repository.create<Resource>({ resourceType: 'Patient', name: [{ family: 'Fuzz', given: ['Search'] }], birthDate: '1970-01-01',
    identifier: [{ system: 'urn:mrn', value: '1' }] });
  patientId = patient.resource.id!;
  for (let i = 0; i < 5; i++) {
    await t.app.repository.create({ resourceType: 'Observation', status: 'final', subject: { reference: `Patient/${patientId}` },
      code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] }, effectiveDateTime: `2026-01-0${i + 1}T10:00:00Z`,
      valueQuantity: { value: 100 + i, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' } } as Resource);
  }
});
afterAll(async () => {
  await t?.close();
});

const TYPES = ['Observation', 'Patient', 'Device', 'Consent', 'AuditEvent', 'MedicationAdministration'];
const PARAMS = ['patient', 'subject', 'code', 'date', 'category', 'device', 'status', 'identifier', 'name', 'family', 'given', 'birthdate',
  'gender', 'active', '_id', '_lastUpdated', 'value-quantity', 'effective-time', 'period', 'actor', 'encounter', 'based-on', 'performer',
  'component-value-quantity', 'component-code', '_tag', '_security', '_profile', 'address', 'telecom', 'phone', 'email', 'deceased', 'language',
  'code-value-quantity', 'component-code-value-quantity', 'combo-code-value-quantity', 'code-value-concept'];
const CONTROL = ['_count', '_sort', '_include', '_revinclude', '_format', '_pretty', '_pageToken', '_offset', '_summary', '_total', '_elements',
  '_has:Observation:patient:code', '_type', '_filter', '_contained', '_list', '_text', '_content', '_query'];
const MODIFIERS = ['', '', '', ':exact', ':contains', ':missing', ':not', ':above', ':below', ':text', ':iterate', ':Patient', ':of-type',
  ':identifier', ':in', ':not-in', ':', '::', ':PATIENT'];

const name = fc.oneof(
  { weight: 6, arbitrary: fc.tuple(fc.constantFrom(...PARAMS), fc.constantFrom(...MODIFIERS)).map(([p, m]) => p + m) },
  { weight: 2, arbitrary: fc.constantFrom(...CONTROL) },
  { weight: 1, arbitrary: fc.constantFrom('subject.name', 'patient.identifier', 'subject:Patient.name', '__proto__', 'constructor', 'toString', 'hasOwnProperty') },
  { weight: 1, arbitrary: fc.string({ maxLength: 12 }) },
);
const dateish = fc.tuple(fc.constantFrom('', 'eq', 'ne', 'gt', 'lt', 'ge', 'le', 'sa', 'eb', 'ap', 'xx'),
  fc.constantFrom('2026', '2026-01', '2026-01-03', '2026-01-03T10:00', '2026-01-03T10:00:00Z', '2026-01-03T10:00:00.123+14:00',
    '2026-13-45', '0000-00-00', '9999-12-31T23:59:59Z', '-2026', '2026-01-03T25:61:61Z', 'now', '', 'T', '1e10'))
  .map(([p, d]) => p + d);
const value = fc.oneof(
  dateish,
  fc.constantFrom('http://loinc.org|99504-3', '|99504-3', 'http://loinc.org|', '|', '||', 'urn:mrn|1', `Patient/${'x'}`, 'Patient/', 'Patient//1',
    'http://example.org/fhir/Patient/1', 'true', 'false', 'male', '100', '1e309', '-0', 'ge100|http://unitsofmeasure.org|mg/dL', 'lt-1',
    'Observation:patient', 'Observation:subject:Patient', '*', '*:*', 'Patient:organization:iterate', 'date', '-date', '_id,-_lastUpdated',
    'birthdate', 'value-quantity', '-', ',', ',,,', 'a,b,c', '%', '%00', '\u0000', '\uFFFF', '\uD800', '../../etc/passwd', "' OR 1=1 --",
    '0', '00', '999999999999', '-1', '1.5', ' 1', 'NaN', 'json', 'xml', 'text/html', 'application/fhir+json; charset=utf-8',
    'gt100||mg/dL', 'ap1e2', 'eb-0.5|http://unitsofmeasure.org|', '5.4||', '1e-400', '.5', '5.', 'sa1E2|a|b|c', 'ne103', 'le1e308',
    'http://hl7.org/fhir/uv/cgm/StructureDefinition/cgm-sensor-reading-mass-per-volume', 'urn:source|dexcom',
    'http://loinc.org|99504-3$gt100', '99504-3$le5||mg/dL', '$', '$$', 'a$b$c', '99504-3$', '$gt5', '99504-3\\$5', 'http://loinc.org|99504-3$http://loinc.org|LA1',
    '99504-3$gt100,2339-0$ne5', '|$|', 'x$1e400'),
  fc.string({ maxLength: 30 }),
  fc.string({ unit: 'grapheme', maxLength: 10 }),
  fc.nat({ max: 5000 }).map(String),
  fc.base64String({ maxLength: 80 }),
);
const query = fc.dictionary(name, fc.oneof({ weight: 4, arbitrary: value }, { weight: 1, arbitrary: fc.array(value, { minLength: 1, maxLength: 3 }) }),
  { maxKeys: 5 });

function request(method: 'GET' | 'POST', type: string, q: Record<string, string | string[]>, asForm: boolean): FhirRequest {
  return asForm
    ? { method: 'POST', path: `${type}/_search`, query: {}, headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: q, access: OPEN_ACCESS }
    : { method, path: type, query: q, headers: {}, access: OPEN_ACCESS };
}

function expectSearchAnswer(res: FhirResponse, context: unknown): void {
  statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
  if (res.status !== 200 && res.status !== 400) throw new Error(`status ${res.status} for ${JSON.stringify(context)}: ${JSON.stringify(res.body)}`);
  expect((res.body as { resourceType: string }).resourceType).toBe(res.status === 200 ? 'Bundle' : 'OperationOutcome');
}

describe('FHIR search parser never answers 500', () => {
  test('arbitrary query objects on GET type?… and POST type/_search → 200 searchset or 400 OperationOutcome', async () => {
    await fc.assert(fc.asyncProperty(fc.constantFrom(...TYPES), query, fc.boolean(), fc.boolean(), async (type, q, asForm, lenient) => {
      const req = request('GET', type, q, asForm);
      if (lenient) req.headers.prefer = 'handling=lenient';
      expectSearchAnswer(await t.app.fhir.handle(req), { type, q, asForm, lenient });
    }), { numRuns: 2500 });
    // Not a vacuous run: both outcomes were reached many times.
    expect(statuses.get(200) ?? 0).toBeGreaterThan(100);
    expect(statuses.get(400) ?? 0).toBeGreaterThan(100);
  });

  test('the patient+date index path: patient=<id> with arbitrary date filters and counts', async () => {
    await fc.assert(fc.asyncProperty(fc.array(dateish, { maxLength: 3 }), fc.option(fc.nat({ max: 20 }).map(String)), fc.constantFrom('date', '-date', undefined),
      async (dates, count, sort) => {
        const q: Record<string, string | string[]> = { patient: patientId };
        if (dates.length) q.date = dates.length === 1 ? dates[0]! : dates;
        if (count) q._count = count;
        if (sort) q._sort = sort;
        const res = await t.app.fhir.handle(request('GET', 'Observation', q, false));
        expectSearchAnswer(res, q);
        if (res.status === 200) {
          const entries = ((res.body as { entry?: { resource: { subject?: { reference?: string } } }[] }).entry ?? []);
          for (const e of entries) expect(e.resource.subject?.reference).toBe(`Patient/${patientId}`);
        }
      }), { numRuns: 1000 });
  });
});
