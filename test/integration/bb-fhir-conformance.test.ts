/**
 * Spec deviations found by black-box testing of the FHIR facade (http.html, json.html, bundle.html),
 * each as an interface engine meets it: bodies in another charset or with a byte order mark,
 * transactions with absolute entry URLs or with `urn:uuid:` references to no entry, If-None-Exist
 * written as `Type?criteria` (HAPI clients), an upstream's 412 to a transaction. Run against the
 * embedded repository and the upstream adapter in front of a real FHIR server.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import type { Bundle, Patient } from '@medplum/fhirtypes';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { REPOSITORY_ADAPTERS, type Backend } from '../support/adapters.js';
import { startUpstreamFhirServer, type UpstreamFhirServer } from '../support/upstream-server.js';

const FHIR_JSON = 'application/fhir+json';
/** Sends a body's bytes as they are (superagent would JSON-encode a Buffer sent as JSON). */
const raw = (body: unknown): string => body as string;
const BASE = 'http://127.0.0.1:8080/fhir';

describe.each(REPOSITORY_ADAPTERS)('black-box FHIR conformance on the %s repository', (_adapter, startBackend) => {
  let t: TestApp;
  let backend: Backend;
  const http = () => request(t.app.http);
  const post = async (path: string, body: object, headers: Record<string, string> = {}) =>
    http().post(path).set('Content-Type', FHIR_JSON).set(headers).send(body);
  const byMrn = async (mrn: string): Promise<Patient[]> =>
    ((await http().get('/fhir/Patient').query({ identifier: `urn:mrn|${mrn}` })).body as Bundle<Patient>).entry?.map((e) => e.resource!) ?? [];

  beforeAll(async () => {
    backend = await startBackend();
    t = await startTestApp(backend.env);
  });

  afterAll(async () => {
    await t?.close();
    await backend?.close();
  });

  describe('charset (json.html: FHIR JSON is UTF-8)', () => {
    const latin1Body = (mrn: string): Buffer => Buffer.concat([
      Buffer.from(`{"resourceType":"Patient","identifier":[{"system":"urn:mrn","value":"${mrn}"}],"name":[{"family":"M`, 'latin1'),
      Buffer.from([0xfc]), // ü in ISO-8859-1, not UTF-8
      Buffer.from('ller"}]}', 'latin1'),
    ]);

    test('a body declared in another charset is 415 and stores nothing', async () => {
      const mrn = randomUUID();
      const res = await http().post('/fhir/Patient').set('Content-Type', `${FHIR_JSON}; charset=ISO-8859-1`).send(latin1Body(mrn)).serialize(raw);
      expect(res.status).toBe(415);
      expect(res.body.resourceType).toBe('OperationOutcome');
      expect(res.body.issue[0].diagnostics).toMatch(/UTF-8/);
      expect(await byMrn(mrn)).toEqual([]);
    });

    test('bytes that are not UTF-8 are 400, not stored as U+FFFD', async () => {
      const mrn = randomUUID();
      const res = await http().post('/fhir/Patient').set('Content-Type', `${FHIR_JSON}; charset=utf-8`).send(latin1Body(mrn)).serialize(raw);
      expect(res.status).toBe(400);
      expect(res.body.issue[0].diagnostics).toMatch(/UTF-8/);
      expect(await byMrn(mrn)).toEqual([]);
    });

    test('UTF-8 with or without a byte order mark is taken as written', async () => {
      const mrn = randomUUID();
      const text = JSON.stringify({ resourceType: 'Patient', identifier: [{ system: 'urn:mrn', value: mrn }], name: [{ family: 'Müller' }] });
      const withBom = await http().post('/fhir/Patient').set('Content-Type', `${FHIR_JSON}; charset=UTF-8`)
        .send(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(text, 'utf8')])).serialize(raw);
      expect(withBom.status).toBe(201);
      const stored = await byMrn(mrn);
      expect(stored.map((p) => p.name?.[0]?.family)).toEqual(['Müller']);
    });
  });

  describe('dates that name no day of the calendar (datatypes.html#date: dates SHALL be valid dates)', () => {
    const reading = (patientId: string, at: string): object => ({
      resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] },
      subject: { reference: `Patient/${patientId}` }, effectiveDateTime: at,
      valueQuantity: { value: 120, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
    });

    test('30 February is 422, also right after a reading laid out the same passed; 29 February of a leap year is taken', async () => {
      const patientId = (await post('/fhir/Patient', { resourceType: 'Patient' })).body.id as string;
      expect((await post('/fhir/Observation', reading(patientId, '2024-02-29T10:00:00Z'))).status).toBe(201);
      const bad = await post('/fhir/Observation', reading(patientId, '2026-02-30T10:00:00Z'));
      expect(bad.status).toBe(422);
      expect(bad.body.issue[0].expression).toEqual(['Observation.effectiveDateTime']);
      expect((await post('/fhir/Observation', reading(patientId, '2025-02-29T10:00:00Z'))).status).toBe(422);
      // nothing was stored under 2 March, where JavaScript would have read 30 February
      const march = await http().get('/fhir/Observation').query({ patient: patientId, date: ['ge2026-03-01', 'lt2026-03-04'] });
      expect(march.body.entry ?? []).toEqual([]);
    });

    test('a Patient birthDate of 31 April is 422; one inside an extension too', async () => {
      expect((await post('/fhir/Patient', { resourceType: 'Patient', birthDate: '1980-04-31' })).status).toBe(422);
      const ext = await post('/fhir/Patient', { resourceType: 'Patient', extension: [{ url: 'http://example.org/fhir/StructureDefinition/d', valueDate: '1980-06-31' }] });
      expect(ext.status).toBe(422);
      expect((await post('/fhir/Patient', { resourceType: 'Patient', birthDate: '1980-04-30' })).status).toBe(201);
    });
  });

  describe('transactions', () => {
    test('a urn:uuid reference that names no entry fails the transaction (bundle.html#references); nothing is written', async () => {
      const mrn = randomUUID();
      const res = await post('/fhir', {
        resourceType: 'Bundle', type: 'transaction', entry: [
          { fullUrl: `urn:uuid:${randomUUID()}`, resource: { resourceType: 'Patient', identifier: [{ system: 'urn:mrn', value: mrn }] }, request: { method: 'POST', url: 'Patient' } },
          {
            resource: { resourceType: 'Observation', status: 'final', code: { text: 'glucose' }, subject: { reference: `urn:uuid:${randomUUID()}` } },
            request: { method: 'POST', url: 'Observation' },
          },
        ],
      });
      expect(res.status).toBe(400);
      expect(res.body.issue[0].expression).toEqual(['Bundle.entry[1].resource']);
      expect(await byMrn(mrn)).toEqual([]);
    });

    test('urn:uuid references to entries, in any order and in extensions, are resolved', async () => {
      const patientUrl = `urn:uuid:${randomUUID()}`;
      const memberUrl = `urn:uuid:${randomUUID()}`;
      const res = await post('/fhir', {
        resourceType: 'Bundle', type: 'transaction', entry: [
          {
            resource: {
              resourceType: 'Observation', status: 'final', code: { text: 'panel' }, subject: { reference: patientUrl }, hasMember: [{ reference: memberUrl }],
              extension: [{ url: 'http://example.org/fhir/StructureDefinition/x', valueReference: { reference: patientUrl } }],
            },
            request: { method: 'POST', url: 'Observation' },
          },
          { fullUrl: memberUrl, resource: { resourceType: 'Observation', status: 'final', code: { text: 'member' }, subject: { reference: patientUrl } }, request: { method: 'POST', url: 'Observation' } },
          { fullUrl: patientUrl, resource: { resourceType: 'Patient' }, request: { method: 'POST', url: 'Patient' } },
        ],
      });
      expect(res.status).toBe(200);
      const [panel, member, patient] = (res.body as Bundle).entry!.map((e) => e.resource as unknown as Record<string, unknown> & { id: string });
      const patientRef = `Patient/${patient!.id}`;
      expect(panel!.subject).toEqual({ reference: patientRef });
      expect(panel!.hasMember).toEqual([{ reference: `Observation/${member!.id}` }]);
      expect((panel!.extension as { valueReference: unknown }[])[0]!.valueReference).toEqual({ reference: patientRef });
    });

    test('an entry URL absolute on this server\'s base is taken as the relative one (as in a batch)', async () => {
      const created = await post('/fhir/Patient', { resourceType: 'Patient', name: [{ family: 'Before' }] });
      const id = created.body.id as string;
      const res = await post('/fhir', {
        resourceType: 'Bundle', type: 'transaction', entry: [
          { resource: { resourceType: 'Patient', id, name: [{ family: 'After' }] }, request: { method: 'PUT', url: `${BASE}/Patient/${id}` } },
          { resource: { resourceType: 'Patient', name: [{ family: 'New' }] }, request: { method: 'POST', url: `${BASE}/Patient` } },
        ],
      });
      expect(res.status).toBe(200);
      expect((res.body as Bundle).entry!.map((e) => e.response!.status.slice(0, 3))).toEqual(['200', '201']);
      expect((await http().get(`/fhir/Patient/${id}`)).body.name).toEqual([{ family: 'After' }]);
    });

    test('an entry URL on another server is 400 naming the entry, and nothing is written', async () => {
      const mrn = randomUUID();
      const res = await post('/fhir', {
        resourceType: 'Bundle', type: 'transaction', entry: [
          { resource: { resourceType: 'Patient', identifier: [{ system: 'urn:mrn', value: mrn }] }, request: { method: 'POST', url: 'Patient' } },
          { resource: { resourceType: 'Patient' }, request: { method: 'POST', url: 'https://elsewhere.example/fhir/Patient' } },
        ],
      });
      expect(res.status).toBe(400);
      expect(res.body.issue[0].expression).toEqual(['Bundle.entry[1].request.url']);
      expect(await byMrn(mrn)).toEqual([]);
    });

    test('in a batch, an entry on another server is that entry\'s 400 (it asked that server); one on this base is read', async () => {
      const created = await post('/fhir/Patient', { resourceType: 'Patient', name: [{ family: 'Here' }] });
      const id = created.body.id as string;
      const res = await post('/fhir', {
        resourceType: 'Bundle', type: 'batch', entry: [
          { request: { method: 'GET', url: `https://elsewhere.example/fhir/Patient/${id}` } },
          { request: { method: 'GET', url: `${BASE}/Patient/${id}` } },
        ],
      });
      expect(res.status).toBe(200);
      const [other, own] = (res.body as Bundle).entry!;
      expect(other!.response!.status.slice(0, 3)).toBe('400');
      expect(other!.resource).toBeUndefined();
      expect(JSON.stringify(other!.response!.outcome)).toMatch(/relative to this server's FHIR base/);
      expect(own!.response!.status.slice(0, 3)).toBe('200');
      expect(own!.resource).toMatchObject({ resourceType: 'Patient', id });
    });

    test('a PUT entry whose resource lacks the URL\'s id is 400 (http.html#update), as a PUT on its own is', async () => {
      const created = await post('/fhir/Patient', { resourceType: 'Patient', name: [{ family: 'Kept' }] });
      const id = created.body.id as string;
      const res = await post('/fhir', {
        resourceType: 'Bundle', type: 'transaction', entry: [
          { resource: { resourceType: 'Patient', name: [{ family: 'NoId' }] }, request: { method: 'PUT', url: `Patient/${id}` } },
        ],
      });
      expect(res.status).toBe(400);
      expect(res.body.issue[0].expression).toEqual(['Bundle.entry[0].resource.id']);
      const read = await http().get(`/fhir/Patient/${id}`);
      expect(read.body.name).toEqual([{ family: 'Kept' }]);
      expect(read.body.meta.versionId).toBe(created.body.meta.versionId);
    });

    test('an upstream or embedded 412 to a transaction does not claim a conditional create matched several', async () => {
      const created = await post('/fhir/Patient', { resourceType: 'Patient' });
      const id = created.body.id as string;
      const res = await post('/fhir', {
        resourceType: 'Bundle', type: 'transaction', entry: [
          { resource: { resourceType: 'Patient', id }, request: { method: 'PUT', url: `Patient/${id}`, ifMatch: 'W/"no-such-version"' } },
        ],
      });
      expect(res.status).toBe(412);
      expect(JSON.stringify(res.body.issue)).not.toMatch(/conditional create/);
    });
  });

  describe('Prefer: return=… on a transaction (http.html#ops), as on a batch', () => {
    const tx = (mrn: string): object => ({
      resourceType: 'Bundle', type: 'transaction', entry: [
        { resource: { resourceType: 'Patient', identifier: [{ system: 'urn:mrn', value: mrn }] }, request: { method: 'POST', url: 'Patient' } },
      ],
    });

    test('return=minimal: entries carry the response only', async () => {
      const mrn = randomUUID();
      const res = await post('/fhir', tx(mrn), { Prefer: 'return=minimal' });
      expect(res.status).toBe(200);
      const entry = (res.body as Bundle).entry![0]!;
      expect(entry.resource).toBeUndefined();
      expect(entry.response!.status).toMatch(/^201/);
      expect(entry.response!.location).toMatch(/Patient\//);
      expect(await byMrn(mrn)).toHaveLength(1);
    });

    test('return=OperationOutcome: entries carry an outcome instead of the resource', async () => {
      const res = await post('/fhir', tx(randomUUID()), { Prefer: 'return=OperationOutcome' });
      expect(res.status).toBe(200);
      const entry = (res.body as Bundle).entry![0]!;
      expect(entry.resource).toBeUndefined();
      expect(entry.response!.outcome?.resourceType).toBe('OperationOutcome');
    });

    test('return=representation (and no Prefer): entries carry the resource written', async () => {
      const mrn = randomUUID();
      const res = await post('/fhir', tx(mrn), { Prefer: 'return=representation' });
      expect(((res.body as Bundle).entry![0]!.resource as Patient).identifier).toEqual([{ system: 'urn:mrn', value: mrn }]);
    });
  });

  describe('If-None-Exist as Type?criteria (what HAPI clients send)', () => {
    const patient = (mrn: string): Patient => ({ resourceType: 'Patient', identifier: [{ system: 'urn:mrn', value: mrn }] });

    test('on a create: the same match decides as with the criteria alone', async () => {
      const mrn = randomUUID();
      const first = await post('/fhir/Patient', patient(mrn), { 'If-None-Exist': `Patient?identifier=urn:mrn|${mrn}` });
      expect(first.status).toBe(201);
      const again = await post('/fhir/Patient', patient(mrn), { 'If-None-Exist': `Patient?identifier=urn:mrn|${mrn}` });
      expect(again.status).toBe(200);
      expect(again.body.id).toBe(first.body.id);
      expect(await byMrn(mrn)).toHaveLength(1);
    });

    test('in a transaction entry', async () => {
      const mrn = randomUUID();
      const entry = { resource: patient(mrn), request: { method: 'POST', url: 'Patient', ifNoneExist: `Patient?identifier=urn:mrn|${mrn}` } };
      const first = await post('/fhir', { resourceType: 'Bundle', type: 'transaction', entry: [entry] });
      expect(first.status).toBe(200);
      const again = await post('/fhir', { resourceType: 'Bundle', type: 'transaction', entry: [entry] });
      expect(again.status).toBe(200);
      expect(again.body.entry[0].response.status).toMatch(/^200/);
      expect(await byMrn(mrn)).toHaveLength(1);
    });

    test('a type with no criteria (`Patient?`) is 400, on its own and in a transaction; nothing is created', async () => {
      const mrn = randomUUID();
      expect((await post('/fhir/Patient', patient(mrn), { 'If-None-Exist': 'Patient?' })).status).toBe(400);
      const tx = await post('/fhir', { resourceType: 'Bundle', type: 'transaction', entry: [{ resource: patient(mrn), request: { method: 'POST', url: 'Patient', ifNoneExist: 'Patient?' } }] });
      expect(tx.status).toBe(400);
      expect(tx.body.issue[0].expression).toEqual(['Bundle.entry[0].request.ifNoneExist']);
      expect(await byMrn(mrn)).toEqual([]);
    });

    test('a transaction entry with ifNoneExist but no url is 400, not an internal error', async () => {
      const mrn = randomUUID();
      const res = await post('/fhir', { resourceType: 'Bundle', type: 'transaction', entry: [{ resource: patient(mrn), request: { method: 'POST', ifNoneExist: `Patient?identifier=urn:mrn|${mrn}` } }] });
      expect(res.status).toBe(400);
      expect(await byMrn(mrn)).toEqual([]);
    });

    test('naming another type is 400, not an unknown parameter', async () => {
      const mrn = randomUUID();
      const res = await post('/fhir/Patient', patient(mrn), { 'If-None-Exist': `Observation?identifier=urn:mrn|${mrn}` });
      expect(res.status).toBe(400);
      expect(res.body.issue[0].diagnostics).toMatch(/names Observation/);
      expect(await byMrn(mrn)).toEqual([]);
    });
  });

  describe('no empty arrays (json.html: "arrays are never empty"; Firely refuses "entry": [])', () => {
    test('a search that finds nothing and a batch\'s empty search leave entry out', async () => {
      const search = await http().get('/fhir/Patient').query({ identifier: `urn:mrn|${randomUUID()}` });
      expect(search.status).toBe(200);
      expect(search.body).toMatchObject({ resourceType: 'Bundle', type: 'searchset' });
      expect(search.text).not.toMatch(/"entry"\s*:\s*\[\s*\]/);
      expect(search.body).not.toHaveProperty('entry');
      const pretty = await http().get('/fhir/Patient').query({ identifier: `urn:mrn|${randomUUID()}`, _pretty: 'true' });
      expect(pretty.text).not.toMatch(/"entry"/);
      const batch = await post('/fhir', { resourceType: 'Bundle', type: 'batch', entry: [
        { request: { method: 'GET', url: `Patient?identifier=urn:mrn|${randomUUID()}` } },
      ] });
      expect(batch.status).toBe(200);
      expect(batch.body.entry).toHaveLength(1);
      expect(batch.body.entry[0].resource).toMatchObject({ resourceType: 'Bundle', type: 'searchset' });
      expect(batch.text).not.toMatch(/"entry"\s*:\s*\[\s*\]/);
      // one with matches still lists them
      const mrn = randomUUID();
      expect((await post('/fhir/Patient', { resourceType: 'Patient', identifier: [{ system: 'urn:mrn', value: mrn }] })).status).toBe(201);
      expect(await byMrn(mrn)).toHaveLength(1);
    });
  });
});

describe('an upstream that names itself by another address (an internal host behind its load balancer)', () => {
  let upstream: UpstreamFhirServer;
  let t: TestApp;
  const INTERNAL = 'http://hapi-internal.hospital.local:8080';

  beforeAll(async () => {
    upstream = await startUpstreamFhirServer();
    // what the upstream writes into its answers: its own idea of its address, not UPSTREAM_FHIR_URL
    upstream.transform((_req, _status, body) => JSON.parse(JSON.stringify(body).split(upstream.origin).join(INTERNAL)));
    t = await startTestApp({ UPSTREAM_FHIR_URL: upstream.url });
  });

  afterAll(async () => {
    await t?.close();
    await upstream?.close();
  });

  test('a transaction-response names the proxy only: fullUrl on its base, location relative', async () => {
    const res = await request(t.app.http).post('/fhir').set('Content-Type', FHIR_JSON).send({
      resourceType: 'Bundle', type: 'transaction', entry: [
        { fullUrl: `urn:uuid:${randomUUID()}`, resource: { resourceType: 'Patient', name: [{ family: 'Alias' }] }, request: { method: 'POST', url: 'Patient' } },
      ],
    });
    expect(res.status).toBe(200);
    expect(JSON.stringify(res.body)).not.toContain('hapi-internal');
    const entry = (res.body as Bundle).entry![0]!;
    const id = entry.resource!.id!;
    expect(entry.fullUrl).toBe(`${BASE}/Patient/${id}`);
    expect(entry.response!.location).toMatch(new RegExp(`^Patient/${id}(/_history/[^/]+)?$`));
    expect(entry.response!.status).toMatch(/^201/);
  });
});
