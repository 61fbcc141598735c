/**
 * Request bodies with JSON null, or a value of the wrong JSON kind (an object, a list, a number, a
 * boolean), put in one place at a time, everywhere in a well-formed body, for every kind of body
 * the FHIR router reads: batch and transaction Bundles, operation Parameters (`$match`,
 * `$validate`, `$export`), `$submit-cgm-bundle`, creates of several types, an update, JSON Patch,
 * a Consent and a Subscription (both written through their own modules). None answers 500; a
 * refused one answers an OperationOutcome and stores nothing. (It began as a probe: 53 of the
 * first 710 bodies answered 500 — medplum's validator took an object where a primitive belongs,
 * and the router read Parameters and Bundle entries of the wrong kind — and then 12 of the
 * Subscription's, which its module read before any validation.)
 */
import { afterAll, beforeAll, expect, test } from '@jest/globals';
import type { Resource } from '@medplum/fhirtypes';
import { OPEN_ACCESS } from '../../src/fhir/access.js';
import type { FhirRequest, HttpMethod } from '../../src/fhir/types.js';
import { startTestApp, type TestApp } from '../support/app.js';

let t: TestApp;
let pid: string;
let oid: string;
beforeAll(async () => {
  t = await startTestApp();
  pid = (await t.app.repository.create<Resource>({ resourceType: 'Patient', name: [{ family: 'N' }] })).resource.id!;
  oid = (await t.app.repository.create({ resourceType: 'Observation', status: 'final', code: { text: 'g' }, subject: { reference: `Patient/${pid}` } } as Resource)).resource.id!;
});
afterAll(async () => {
  await t?.close();
});

/** The body with one value replaced by null or by a value of another JSON kind, for every value in it (to depth 4). */
function variants(v: unknown, depth = 0): unknown[] {
  const out: unknown[] = [];
  if (depth > 4) return out;
  if (Array.isArray(v)) {
    out.push(null, {}, 'x', [null], [...v, null]);
    v.forEach((item, i) => {
      for (const w of variants(item, depth + 1)) {
        const c = [...v];
        c[i] = w;
        out.push(c);
      }
    });
  } else if (v && typeof v === 'object') {
    out.push(null, [], 'x');
    for (const k of Object.keys(v)) {
      for (const w of variants((v as Record<string, unknown>)[k], depth + 1)) out.push({ ...v, [k]: w });
    }
  } else {
    out.push(null, {}, [], 12, true);
  }
  return out;
}

/** The newest stored version of each type a body here could write. */
async function newestChange(): Promise<string> {
  const types = ['Patient', 'Observation', 'Consent', 'Device', 'Practitioner'];
  const newest = await Promise.all(types.map(async (resourceType) => {
    const e = (await t.app.repository.history({ resourceType, count: 1, offset: 0 })).entries[0];
    return e ? `${e.resourceType}/${e.id}/${e.versionId}` : `${resourceType}:none`;
  }));
  return newest.join(' ');
}

const SEEDS: [HttpMethod, string, Record<string, string>, unknown][] = [
  ['POST', '', {}, { resourceType: 'Bundle', type: 'batch', entry: [{ request: { method: 'POST', url: 'Patient' }, resource: { resourceType: 'Patient', name: [{ family: 'X' }] } }, { request: { method: 'GET', url: 'Patient/__p__' } }] }],
  ['POST', '', {}, { resourceType: 'Bundle', type: 'transaction', entry: [{ fullUrl: 'urn:uuid:1', request: { method: 'POST', url: 'Patient' }, resource: { resourceType: 'Patient' } }, { request: { method: 'PUT', url: 'Observation/__o__' }, resource: { resourceType: 'Observation', id: '__o__', status: 'final', code: { text: 'g' }, subject: { reference: 'urn:uuid:1' } } }] }],
  ['POST', 'Patient/$match', {}, { resourceType: 'Parameters', parameter: [{ name: 'resource', resource: { resourceType: 'Patient', name: [{ family: 'N', given: ['A'] }], birthDate: '1970-01-01', identifier: [{ system: 'urn:a', value: '1' }] } }, { name: 'count', valueInteger: 3 }, { name: 'onlyCertainMatches', valueBoolean: true }] }],
  ['POST', 'Observation/$validate', {}, { resourceType: 'Parameters', parameter: [{ name: 'resource', resource: { resourceType: 'Observation', status: 'final', code: { text: 'g' }, meta: { profile: ['http://x'] } } }, { name: 'mode', valueCode: 'create' }, { name: 'profile', valueUri: 'http://x' }] }],
  ['POST', '$submit-cgm-bundle', {}, { resourceType: 'Bundle', type: 'collection', entry: [{ resource: { resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] }, subject: { reference: 'Patient/__p__' }, effectiveDateTime: '2026-01-01T00:00:00Z', valueQuantity: { value: 100, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' } } }] }],
  ['POST', 'Patient', {}, { resourceType: 'Patient', meta: { profile: ['http://x'], tag: [{ system: 's', code: 'c' }] }, name: [{ family: 'A', given: ['B'] }], identifier: [{ system: 'urn:a', value: '2' }], telecom: [{ system: 'phone', value: '1' }], birthDate: '1970-01-01' }],
  ['PUT', 'Observation/__o__', {}, { resourceType: 'Observation', id: '__o__', meta: { versionId: '1' }, status: 'final', code: { text: 'g' }, subject: { reference: 'Patient/__p__' }, component: [{ code: { text: 'c' }, valueString: 'v' }] }],
  ['PATCH', 'Observation/__o__', { 'content-type': 'application/json-patch+json' }, [{ op: 'replace', path: '/status', value: 'amended' }, { op: 'add', path: '/note', value: [{ text: 'n' }] }]],
  ['POST', 'Consent', {}, { resourceType: 'Consent', status: 'active', scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] }, category: [{ coding: [{ system: 'http://loinc.org', code: '59284-0' }] }], patient: { reference: 'Patient/__p__' }, provision: { type: 'permit', period: { start: '2026-01-01', end: '2026-02-01' }, actor: [{ role: { coding: [{ code: 'GRANTEE' }] }, reference: { reference: 'Practitioner/1' } }], data: [{ meaning: 'related', reference: { reference: 'Patient/__p__' } }] } }],
  ['POST', 'Patient/$export', {}, { resourceType: 'Parameters', parameter: [{ name: '_type', valueString: 'Observation' }, { name: '_since', valueInstant: '2026-01-01T00:00:00Z' }] }],
  ['POST', 'Subscription', {}, { resourceType: 'Subscription', status: 'requested', reason: 'r', criteria: 'https://glucoguard.org/fhir/SubscriptionTopic/cgm-readings',
    _criteria: { extension: [{ url: 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria', valueString: 'Observation?patient=Patient/__p__' }] },
    channel: { type: 'rest-hook', endpoint: 'http://127.0.0.1:9/hook', payload: 'application/fhir+json', header: ['X-A: 1'],
      extension: [{ url: 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period', valueUnsignedInt: 60 }],
      _payload: { extension: [{ url: 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content', valueCode: 'id-only' }] } } }],
  ['POST', 'Device', {}, { resourceType: 'Device', status: 'active', deviceName: [{ name: 'G7', type: 'user-friendly-name' }], patient: { reference: 'Patient/__p__' }, identifier: [{ system: 'urn:d', value: '1' }] }],
  ['POST', 'MedicationAdministration', {}, { resourceType: 'MedicationAdministration', status: 'completed', subject: { reference: 'Patient/__p__' }, effectiveDateTime: '2026-01-01T08:00:00Z',
    medicationCodeableConcept: { coding: [{ system: 'http://www.nlm.nih.gov/research/umls/rxnorm', code: '311034' }] }, dosage: { dose: { value: 4, unit: 'U', system: 'http://unitsofmeasure.org', code: '[iU]' } } }],
  ['POST', 'DiagnosticReport', {}, { resourceType: 'DiagnosticReport', status: 'final', code: { text: 'AGP' }, subject: { reference: 'Patient/__p__' }, effectivePeriod: { start: '2026-01-01', end: '2026-01-14' }, result: [{ reference: 'Observation/__o__' }] }],
  ['PATCH', 'Observation/__o__', {}, { resourceType: 'Parameters', parameter: [
    { name: 'operation', part: [{ name: 'type', valueCode: 'replace' }, { name: 'path', valueString: 'Observation.status' }, { name: 'value', valueCode: 'amended' }] },
    { name: 'operation', part: [{ name: 'type', valueCode: 'add' }, { name: 'path', valueString: 'Observation' }, { name: 'name', valueString: 'note' }, { name: 'value', part: [{ name: 'text', valueString: 'n' }] }] }] }],
  ['POST', 'Observation/$validate', {}, { resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] }, subject: { reference: 'Patient/__p__' }, valueQuantity: { value: 1, unit: 'mg/dL' } }],
  ['POST', '', {}, { resourceType: 'Bundle', type: 'batch', entry: [
    { request: { method: 'PATCH', url: 'Observation/__o__' }, resource: { resourceType: 'Binary', contentType: 'application/json-patch+json', data: Buffer.from(JSON.stringify([{ op: 'replace', path: '/status', value: 'final' }])).toString('base64') } },
    { request: { method: 'PUT', url: 'Patient/__p__', ifMatch: 'W/"1"' }, resource: { resourceType: 'Patient', id: '__p__', name: [{ family: 'N' }] } },
    { request: { method: 'DELETE', url: 'Device?identifier=urn:d|none' } }] }],
  ['PUT', 'Patient?identifier=urn:a|9', {}, { resourceType: 'Patient', identifier: [{ system: 'urn:a', value: '9' }], name: [{ family: 'C' }] }],
  ['POST', 'Observation/_search', { 'content-type': 'application/x-www-form-urlencoded' }, { patient: '__p__', date: 'ge2026-01-01' }],
];

test('null or a value of the wrong JSON kind anywhere in a request body is never a 500; a refusal stores nothing', async () => {
  const failures: string[] = [];
  let n = 0;
  for (const [method, path, headers, seed] of SEEDS) {
    const fill = (x: unknown): unknown => JSON.parse(JSON.stringify(x).replaceAll('__p__', pid).replaceAll('__o__', oid));
    for (const body of variants(seed)) {
      n++;
      const before = await newestChange();
      const req: FhirRequest = { method, path: path.replace('__o__', oid), query: {}, headers: { 'content-type': 'application/fhir+json', ...headers }, body: fill(body), access: OPEN_ACCESS };
      const res = await t.app.fhir.handle(req);
      const what = `${method} ${path} ${res.status}: ${JSON.stringify(body).slice(0, 300)}`;
      if (res.status >= 500 && res.status !== 501) failures.push(what);
      else if (res.status >= 400 && (res.body as { resourceType?: string })?.resourceType !== 'OperationOutcome') failures.push(`${what} (not an OperationOutcome)`);
      else if (res.status >= 400 && (await newestChange()) !== before) failures.push(`${what} (stored something)`);
    }
  }
  expect(n).toBeGreaterThan(600);
  expect(failures).toEqual([]);
}, 600_000);
