/**
 * Property-based fuzzing of the FHIR router (src/fhir/router.ts) in-process through
 * `app.fhir.handle`: arbitrary methods, paths (including traversal strings), headers and bodies
 * (resources, batch/transaction Bundles, junk JSON). Never a 500; a rejected request stores
 * nothing (the newest repository history entry is unchanged). Path traversal over real HTTP is
 * checked at the end.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Resource } from '@medplum/fhirtypes';
import fc from 'fast-check';
import request from 'supertest';
import { OPEN_ACCESS } from '../../src/fhir/access.js';
import type { FhirRequest, HttpMethod } from '../../src/fhir/types.js';
import { startTestApp, type TestApp } from '../support/app.js';

let t: TestApp;
let patientId: string;
let observationId: string;
const statuses = new Map<number, number>();

beforeAll(async () => {
  t = await startTestApp();
  patientId = (await t.app.repository.create<Resource>({ resourceType: 'Patient', name: [{ family: 'Router' }] })).resource.id!;
  observationId = (await t.app.repository.create({ resourceType: 'Observation', status: 'final', code: { text: 'glucose' },
    subject: { reference: `Patient/${patientId}` } } as Resource)).resource.id!;
});
afterAll(async () => {
  await t?.close();
});

/** Types a request could write; AuditEvents are left out, the proxy records one for every access by design. */
const WRITABLE = ['Patient', 'Observation', 'Device', 'Consent', 'Organization', 'Practitioner', 'MedicationAdministration', 'DiagnosticReport', 'ServiceRequest'];

/** The newest history entry of each writable type: any stored change (create, update, delete) replaces one. */
async function newestChange(): Promise<string> {
  const newest = await Promise.all(WRITABLE.map(async (resourceType) => {
    const e = (await t.app.repository.history({ resourceType, count: 1, offset: 0 })).entries[0];
    return e ? `${e.resourceType}/${e.id}/${e.versionId}` : `${resourceType}:none`;
  }));
  return newest.join(' ');
}

const TYPES = ['Patient', 'Observation', 'Device', 'Consent', 'AuditEvent', 'Organization', 'Practitioner'];
const segment = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...TYPES, 'Foo', 'patient', 'Bundle', 'OperationOutcome') },
  { weight: 3, arbitrary: fc.constantFrom('__patient__', '__observation__', 'unknown-id', '1', 'a'.repeat(65), 'bad id', 'x$y') },
  { weight: 3, arbitrary: fc.constantFrom('_history', '_search', 'metadata', '$everything', '$cgm-summary', '$submit-cgm-bundle', '$meta', '$match', '$lastn', '$', '$$', '_') },
  { weight: 2, arbitrary: fc.constantFrom('..', '.', '...', '../..', '..\\..\\windows', '/etc/passwd', '%2e%2e', '%2F', '\u0000', '~', '\u202e', 'Patient%00', '%') },
  { weight: 2, arbitrary: fc.string({ maxLength: 10 }) },
);
const id = fc.constantFrom('__patient__', '__observation__', 'unknown-id', '1');
/** Well-formed FHIR paths (so requests get past routing) mixed with arbitrary segment soup. */
const shaped = fc.oneof(
  fc.constantFrom('', 'metadata', '_history'),
  fc.constantFrom(...TYPES, ...TYPES.slice(0, 3)),
  fc.tuple(fc.constantFrom(...TYPES), fc.constantFrom('_search', '_history', '$match')).map((x) => x.join('/')),
  fc.tuple(fc.constantFrom(...TYPES), id).map((x) => x.join('/')),
  fc.tuple(fc.constantFrom(...TYPES), id, fc.constantFrom('_history', '$everything', '$meta')).map((x) => x.join('/')),
  fc.tuple(fc.constantFrom(...TYPES), id, fc.constantFrom('1', '2', '0', 'x')).map(([a, b, v]) => `${a}/${b}/_history/${v}`),
);
const path = fc.oneof(
  { weight: 3, arbitrary: shaped },
  { weight: 2, arbitrary: fc.array(segment, { maxLength: 5 }).chain((segs) => fc.constantFrom('', '/', '//').map((lead) => lead + segs.join('/'))) },
).map((p) => p.replaceAll('__patient__', () => patientId).replaceAll('__observation__', () => observationId));

const nasty = fc.oneof(fc.string({ maxLength: 12 }), fc.integer(), fc.double(), fc.boolean(), fc.constant(null), fc.constant([]), fc.constant({}),
  fc.constantFrom('2026-01-01T00:00:00Z', 'not-a-date', 'Patient/__patient__', 'urn:uuid:00000000-0000-0000-0000-000000000001', '#c1'));
const reference = fc.oneof(fc.constantFrom(`Patient/__patient__`, 'Patient/unknown', 'Patient/', '', 'urn:uuid:00000000-0000-0000-0000-000000000001',
  'http://evil.example/Patient/1', '#c1', 'Patient/__patient__/_history/1', 'Patient?identifier=urn:mrn|1', 'Patient?', 'Patient?bogus=1', 'Foo?x=1'), fc.string({ maxLength: 10 }));
const resource = fc.record({
  resourceType: fc.oneof({ weight: 5, arbitrary: fc.constantFrom(...TYPES) }, { weight: 1, arbitrary: fc.constantFrom('Foo', '', 'Bundle') }),
  id: fc.oneof(fc.constantFrom('__patient__', '__observation__', 'new-1'), fc.string({ maxLength: 8 })),
  meta: fc.oneof(fc.record({ versionId: nasty, profile: fc.array(fc.constantFrom('http://hl7.org/fhir/uv/cgm/StructureDefinition/cgm-sensor-reading-mass-per-volume', 'x'), { maxLength: 2 }) }, { requiredKeys: [] }), nasty),
  status: fc.constantFrom('final', 'active', 'bogus', ''),
  name: fc.oneof(fc.array(fc.record({ family: nasty, given: fc.array(nasty, { maxLength: 2 }) }, { requiredKeys: [] }), { maxLength: 2 }), nasty),
  subject: fc.oneof(fc.record({ reference }), nasty),
  patient: fc.oneof(fc.record({ reference }), nasty),
  code: fc.oneof(fc.record({ coding: fc.array(fc.record({ system: nasty, code: nasty }, { requiredKeys: [] }), { maxLength: 2 }), text: nasty }, { requiredKeys: [] }), nasty),
  effectiveDateTime: nasty,
  valueQuantity: fc.oneof(fc.record({ value: nasty, unit: nasty, system: nasty, code: nasty }, { requiredKeys: [] }), nasty),
  contained: fc.array(fc.record({ resourceType: fc.constantFrom('Patient', 'Observation'), id: fc.constantFrom('c1', '') }), { maxLength: 2 }),
  extension: fc.array(fc.record({ url: nasty, valueString: nasty }, { requiredKeys: [] }), { maxLength: 2 }),
  text: fc.record({ status: fc.constantFrom('generated', 'x'), div: fc.constantFrom('<div xmlns="http://www.w3.org/1999/xhtml">x</div>', '<script>alert(1)</script>', '') }),
  unknownElement: nasty,
}, { requiredKeys: ['resourceType'] });
const bundle = fc.record({
  resourceType: fc.constant('Bundle'),
  type: fc.constantFrom('transaction', 'batch', 'collection', 'searchset', 'bogus'),
  entry: fc.array(fc.record({
    fullUrl: fc.constantFrom('urn:uuid:00000000-0000-0000-0000-000000000001', 'urn:uuid:00000000-0000-0000-0000-000000000001', 'bad', `Patient/__patient__`),
    resource,
    request: fc.record({ method: fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'x'), url: path, ifNoneExist: fc.constantFrom('identifier=a|b', '_id=__patient__', '', 'bogus=1'),
      ifMatch: fc.constantFrom('W/"1"', '"1"', 'x') }, { requiredKeys: ['method', 'url'] }),
  }, { requiredKeys: [] }), { maxLength: 4 }),
}, { requiredKeys: ['resourceType'] });
/** Valid resources, so creates, updates and conditional writes succeed often enough to be exercised. */
const clean = fc.oneof(
  fc.record({ resourceType: fc.constant('Patient'), name: fc.array(fc.record({ family: fc.string({ minLength: 1, maxLength: 8 }).filter((x) => x.trim() === x && x !== '') }), { minLength: 1, maxLength: 1 }),
    identifier: fc.constant([{ system: 'urn:mrn', value: '1' }]) }, { requiredKeys: ['resourceType'] }),
  fc.record({ resourceType: fc.constant('Observation'), status: fc.constantFrom('final', 'amended'), code: fc.constant({ text: 'glucose' }),
    subject: fc.constantFrom({ reference: 'Patient/__patient__' }, { reference: 'Patient/unknown' }), effectiveDateTime: fc.constantFrom('2026-01-01T00:00:00Z', '2026-02-30') }),
  fc.record({ resourceType: fc.constant('Device'), status: fc.constant('active'), patient: fc.constant({ reference: 'Patient/__patient__' }) }),
);
/** $match input: a Parameters with a (possibly malformed) Patient and the operation's other parameters, right or wrong. */
const matchParameters = fc.record({
  resourceType: fc.constant('Parameters'),
  parameter: fc.array(fc.oneof(
    resource.map((r) => ({ name: 'resource', resource: r })),
    fc.record({ name: fc.constantFrom('onlyCertainMatches', 'count', 'other'), valueBoolean: nasty, valueInteger: nasty }, { requiredKeys: ['name'] }),
    nasty,
  ), { maxLength: 3 }),
}, { requiredKeys: ['resourceType'] });
const body = fc.oneof(
  { weight: 2, arbitrary: fc.constant(undefined) },
  { weight: 1, arbitrary: matchParameters },
  { weight: 3, arbitrary: clean },
  { weight: 4, arbitrary: resource },
  { weight: 3, arbitrary: bundle },
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 3 }) },
);
const headers = fc.record({
  'content-type': fc.oneof({ weight: 4, arbitrary: fc.constant('application/fhir+json') },
    { weight: 1, arbitrary: fc.constantFrom('application/json', 'application/x-www-form-urlencoded', 'text/plain', '', 'application/fhir+json; charset=latin1') }),
  'if-match': fc.constantFrom('W/"1"', '"1"', 'W/"999"', '*', 'W/', 'garbage'),
  'if-none-match': fc.constantFrom('W/"1"', '*'),
  'if-none-exist': fc.constantFrom('identifier=urn:mrn|1', `_id=__patient__`, 'name=Router', '', '&&', 'bogus=1', '_has:Observation:patient:code=1', 'x'),
  prefer: fc.constantFrom('return=minimal', 'return=representation', 'return=OperationOutcome', 'handling=lenient', 'handling=strict', 'junk'),
}, { requiredKeys: ['content-type'] }).chain((h) => fc.subarray(Object.keys(h), { maxLength: Math.min(2, Object.keys(h).length) }).map((keep) => Object.fromEntries(Object.entries(h).filter(([k]) => k === 'content-type' || keep.includes(k)))));

/** Replaces the id placeholders deep inside generated values. */
function fill<T>(value: T): T {
  return value === undefined ? value : JSON.parse(JSON.stringify(value).replaceAll('__patient__', patientId).replaceAll('__observation__', observationId)) as T;
}

describe('FHIR router never answers 500 and a rejected request stores nothing', () => {
  test('arbitrary method × path × headers × body', async () => {
    await fc.assert(fc.asyncProperty(fc.constantFrom<HttpMethod>('GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD'), path, headers, body, fc.boolean(),
      async (method, p, h, b, aligned) => {
        const filled = fill(b);
        // Often make the body's type and id match the path, so writes get past the first checks.
        const [type, id] = p.split('/').filter(Boolean);
        if (aligned && type && TYPES.includes(type) && filled && typeof filled === 'object' && !Array.isArray(filled) && 'resourceType' in filled && filled.resourceType !== 'Bundle') {
          Object.assign(filled, { resourceType: type }, id ? { id } : {});
        }
        const req: FhirRequest = { method, path: p, query: {}, headers: fill(h), body: filled, access: OPEN_ACCESS };
        const before = await newestChange();
        const res = await t.app.fhir.handle(req);
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
        if (res.status >= 500 && res.status !== 501) throw new Error(`status ${res.status} for ${JSON.stringify(req)}: ${JSON.stringify(res.body)}`);
        if (res.status >= 400 || method === 'GET' || method === 'HEAD') expect(await newestChange()).toBe(before);
        if (res.status >= 400) expect((res.body as { resourceType?: string })?.resourceType).toBe('OperationOutcome');
      }), { numRuns: 1800 });
    process.stdout.write(`router fuzz statuses: ${JSON.stringify(Object.fromEntries([...statuses].sort((a, b) => a[0] - b[0])))}\n`);
    // Not a vacuous run: successes, client errors and not-founds were all reached.
    expect(statuses.get(404) ?? 0).toBeGreaterThan(50);
    expect([...statuses].filter(([s]) => s >= 400 && s < 500 && s !== 404).reduce((a, [, n]) => a + n, 0)).toBeGreaterThan(50);
    expect([...statuses].filter(([s]) => s < 300).reduce((a, [, n]) => a + n, 0)).toBeGreaterThan(50);
  });

  test('writes: create, update (incl. update-as-create, If-Match), conditional create and delete with valid and hostile bodies', async () => {
    const writes = new Map<number, number>();
    const target = fc.oneof(
      fc.constantFrom('Patient', 'Observation', 'Device').map((type) => ({ method: 'POST' as const, path: type, type, id: undefined as string | undefined })),
      fc.tuple(fc.constantFrom('Patient', 'Observation', 'Device'), fc.constantFrom('__patient__', '__observation__', 'new-1', 'new-2'), fc.constantFrom<HttpMethod>('PUT', 'DELETE'))
        .map(([type, id, method]) => ({ method, path: `${type}/${id}`, type, id })),
    );
    await fc.assert(fc.asyncProperty(target, fc.oneof({ weight: 3, arbitrary: clean }, { weight: 2, arbitrary: resource }), headers, fc.boolean(),
      async (tgt, b, h, aligned) => {
        const path = fill(tgt.path);
        const id = tgt.id ? fill(tgt.id) : undefined;
        const resourceBody = fill(b) as Record<string, unknown>;
        if (aligned) Object.assign(resourceBody, { resourceType: tgt.type }, id ? { id } : {});
        const req: FhirRequest = { method: tgt.method, path, query: {}, headers: { ...fill(h), 'content-type': 'application/fhir+json' },
          body: tgt.method === 'DELETE' ? undefined : resourceBody, access: OPEN_ACCESS };
        const before = await newestChange();
        const res = await t.app.fhir.handle(req);
        writes.set(res.status, (writes.get(res.status) ?? 0) + 1);
        if (res.status >= 500) throw new Error(`status ${res.status} for ${JSON.stringify(req)}: ${JSON.stringify(res.body)}`);
        if (res.status >= 400) expect(await newestChange()).toBe(before);
        if (res.status === 201) expect(await newestChange()).not.toBe(before);
      }), { numRuns: 800 });
    process.stdout.write(`router write fuzz statuses: ${JSON.stringify(Object.fromEntries([...writes].sort((a, b) => a[0] - b[0])))}\n`);
    expect((writes.get(201) ?? 0) + (writes.get(200) ?? 0)).toBeGreaterThan(50);
    expect((writes.get(400) ?? 0) + (writes.get(422) ?? 0)).toBeGreaterThan(100);
  });

  test('a transaction with one bad entry is rejected whole and stores nothing', async () => {
    await fc.assert(fc.asyncProperty(fc.array(resource, { minLength: 1, maxLength: 3 }), async (rs) => {
      const entries = [
        { fullUrl: 'urn:uuid:11111111-1111-1111-1111-111111111111', resource: { resourceType: 'Patient', name: [{ family: 'Good' }] }, request: { method: 'POST', url: 'Patient' } },
        ...fill(rs).map((r) => ({ resource: { ...r, resourceType: 'Observation', status: 'not-a-status' }, request: { method: 'POST', url: 'Observation' } })),
      ];
      const before = await newestChange();
      const res = await t.app.fhir.handle({ method: 'POST', path: '', query: {}, headers: { 'content-type': 'application/fhir+json' },
        body: { resourceType: 'Bundle', type: 'transaction', entry: entries }, access: OPEN_ACCESS });
      expect(res.status).toBeGreaterThanOrEqual(400);
      expect(res.status).toBeLessThan(500);
      expect(await newestChange()).toBe(before);
    }), { numRuns: 200 });
  });
});

describe('regressions found by fuzzing', () => {
  test('POST _search with a form content type but a body that is not a map of fields answers 400, not 500', async () => {
    // (the last two found in session 13: a field whose value is not text reached the search matcher, a TypeError's 500)
    for (const body of [null, 'name=x', 42, ['name', 'x'], { patient: { reference: 'Patient/x' } }, { name: ['x', 1] }]) {
      const res = await t.app.fhir.handle({ method: 'POST', path: 'Patient/_search', query: {}, headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body, access: OPEN_ACCESS });
      expect(res.status).toBe(400);
      expect((res.body as { resourceType: string }).resourceType).toBe('OperationOutcome');
    }
  });
});

describe('path traversal over HTTP', () => {
  test.each([
    '/fhir/..%2f..%2f..%2fetc%2fpasswd', '/fhir/Patient/..%2F..%2Fetc%2Fpasswd', '/fhir/%2e%2e/%2e%2e/etc/passwd', '/fhir/Patient/%00',
    '/fhir/Patient/..%5c..%5cwindows%5cwin.ini', '/fhir/Binary/..%252f..%252fetc%252fpasswd', '/fhir/Patient/%E0%A4%A', '/fhir/%',
    '/../../etc/passwd', '/fhir/Patient/$export?_outputFormat=../../x', '/fhir/Patient/1/_history/..%2f..',
  ])('GET %s answers a 4xx and reveals no file', async (url) => {
    const res = await request(t.app.http).get(url);
    expect(res.status).toBeGreaterThanOrEqual(400);
    expect(res.status).toBeLessThan(500);
    expect(res.text).not.toMatch(/root:|\[fonts\]|ENOENT|\/work\/|node_modules/);
  });
});
