/**
 * Conformance details an integration engineer meets (found by exploratory testing, session 20):
 * `:iterate` includes, operations by POST, DELETE with If-Match, server-only tags on writes, the
 * links of lenient and `_count=0` searches, the include lists of the CapabilityStatement, ids a PUT
 * cannot create, result parameters in conditional writes, `fhirVersion` in Accept, history
 * statuses, later `$everything` pages and Bundle-entry references outside transactions. Run against
 * the embedded repository and the upstream adapter in front of a real FHIR server.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, CapabilityStatement, Observation, Patient } from '@medplum/fhirtypes';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { REPOSITORY_ADAPTERS, type Backend } from '../support/adapters.js';

const FHIR_JSON = 'application/fhir+json';

function reading(patientId: string, at: string, value: number, deviceId?: string): Observation {
  return {
    resourceType: 'Observation',
    status: 'final',
    code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] },
    subject: { reference: `Patient/${patientId}` },
    ...(deviceId ? { device: { reference: `Device/${deviceId}` } } : {}),
    effectiveDateTime: at,
    valueQuantity: { value, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
  };
}

describe.each(REPOSITORY_ADAPTERS)('FHIR conformance details on the %s repository', (adapter, startBackend) => {
  let t: TestApp;
  let backend: Backend;
  const http = () => request(t.app.http);
  let patientId: string;
  let deviceId: string;

  const post = async (path: string, body: object, headers: Record<string, string> = {}) =>
    http().post(path).set('Content-Type', FHIR_JSON).set(headers).send(body);

  beforeAll(async () => {
    backend = await startBackend();
    t = await startTestApp({ ...backend.env, GLUCOGUARD_MAX_PAGE_SIZE: '50' });
    patientId = (await post('/fhir/Patient', { resourceType: 'Patient', name: [{ family: 'Okafor', given: ['Ngozi'] }] })).body.id;
    deviceId = (await post('/fhir/Device', { resourceType: 'Device', patient: { reference: `Patient/${patientId}` }, deviceName: [{ name: 'G7', type: 'model-name' }] })).body.id;
    for (let i = 0; i < 3; i++) {
      expect((await post('/fhir/Observation', reading(patientId, `2026-03-0${i + 1}T08:00:00Z`, 100 + i, deviceId))).status).toBe(201);
    }
  });

  afterAll(async () => {
    await t?.close();
    await backend?.close();
  });

  test('_revinclude:iterate is taken (search.html#revinclude): what the first include added is followed once more', async () => {
    const res = await http().get('/fhir/Patient').query({ _id: patientId, _revinclude: 'Device:patient', '_revinclude:iterate': 'Observation:device' });
    expect(res.status).toBe(200);
    const included = (res.body as Bundle).entry!.filter((e) => e.search?.mode === 'include').map((e) => e.resource!.resourceType);
    expect(included.filter((x) => x === 'Device')).toHaveLength(1);
    // what an upstream server does with :iterate is its own (@medplum/fhir-router's does not follow it)
    if (adapter === 'embedded') expect(included.filter((x) => x === 'Observation')).toHaveLength(3);
    // another modifier of _include is still refused
    expect((await http().get('/fhir/Patient').query({ _id: patientId, '_include:recurse': 'Patient:organization' })).status).toBe(400);
  });

  test('operations invoked by GET take POST with a Parameters body, answered as that GET', async () => {
    const byGet = await http().get(`/fhir/Patient/${patientId}/$everything`).query({ _type: 'Observation' });
    const byPost = await post(`/fhir/Patient/${patientId}/$everything`, { resourceType: 'Parameters', parameter: [{ name: '_type', valueString: 'Observation' }] });
    expect(byGet.status).toBe(200);
    expect(byPost.status).toBe(200);
    const ids = (b: Bundle) => b.entry!.map((e) => `${e.resource!.resourceType}/${e.resource!.id}`).sort();
    expect(ids(byPost.body)).toEqual(ids(byGet.body));
    expect(ids(byPost.body)).toHaveLength(4); // the Patient and its three readings
    const lastn = await post('/fhir/Observation/$lastn', { resourceType: 'Parameters', parameter: [{ name: 'patient', valueString: patientId }, { name: 'max', valueInteger: 2 }] });
    expect(lastn.status).toBe(200);
    expect((lastn.body as Bundle).entry).toHaveLength(2);
    // no body at all: the operation without parameters
    expect((await http().post(`/fhir/Patient/${patientId}/$everything`)).status).toBe(200);
    // a parameter that is not one primitive value cannot become a query parameter
    const nested = await post(`/fhir/Patient/${patientId}/$everything`, { resourceType: 'Parameters', parameter: [{ name: '_type', part: [{ name: 'x', valueString: 'y' }] }] });
    expect(nested.status).toBe(400);
    expect(nested.body.resourceType).toBe('OperationOutcome');
    expect((await post(`/fhir/Patient/${patientId}/$everything`, { resourceType: 'Patient' })).status).toBe(400);
    // an operation that takes POST only still refuses GET
    expect((await http().get('/fhir/$submit-cgm-bundle')).status).toBe(405);
  });

  test('DELETE with If-Match deletes only the version named (RFC 9110 §13.1.1): otherwise 412 and nothing changes', async () => {
    const created = await post('/fhir/Organization', { resourceType: 'Organization', name: 'Clinic A' });
    const id = created.body.id;
    const updated = await http().put(`/fhir/Organization/${id}`).set('Content-Type', FHIR_JSON).send({ resourceType: 'Organization', id, name: 'Clinic A2' });
    expect(updated.status).toBe(200);
    const stale = await http().delete(`/fhir/Organization/${id}`).set('If-Match', created.headers.etag!);
    expect(stale.status).toBe(412);
    expect(stale.body.resourceType).toBe('OperationOutcome');
    expect((await http().get(`/fhir/Organization/${id}`)).status).toBe(200);
    if (adapter === 'embedded') {
      // the same in a transaction: the whole transaction fails (an upstream server runs its transactions itself)
      const tx = await post('/fhir', {
        resourceType: 'Bundle', type: 'transaction',
        entry: [
          { request: { method: 'DELETE', url: `Organization/${id}`, ifMatch: 'W/"1"' } },
          { resource: { resourceType: 'Organization', name: 'Clinic B' }, request: { method: 'POST', url: 'Organization' } },
        ],
      });
      expect(tx.status).toBe(412);
      expect((await http().get(`/fhir/Organization/${id}`)).status).toBe(200);
      expect((await http().get('/fhir/Organization').query({ name: 'Clinic B' })).body.entry ?? []).toHaveLength(0);
    }
    // an id never stored has no current version to match
    expect((await http().delete('/fhir/Organization/never-stored').set('If-Match', 'W/"1"')).status).toBe(412);
    expect((await http().delete(`/fhir/Organization/${id}`).set('If-Match', updated.headers.etag!)).status).toBe(204);
    expect((await http().get(`/fhir/Organization/${id}`)).status).toBe(410);
    expect((await http().delete(`/fhir/Organization/${id}`).set('If-Match', 'nonsense')).status).toBe(400);
  });

  test('tags only the server writes (urn:glucoguard:integrity) are dropped from written resources; other tags stay', async () => {
    const tags = [{ system: 'urn:glucoguard:integrity', code: 'pending' }, { system: 'urn:test:mine', code: 'kept' }];
    const created = await post('/fhir/Patient', { resourceType: 'Patient', meta: { tag: tags }, name: [{ family: 'Tagged' }] });
    expect(created.status).toBe(201);
    const id = created.body.id as string;
    // read, modify, write back: the read may carry the server's tag; it is not stored
    const read = (await http().get(`/fhir/Patient/${id}`)).body as Patient;
    const back = await http().put(`/fhir/Patient/${id}`).set('Content-Type', FHIR_JSON)
      .send({ ...read, meta: { ...read.meta, tag: [...(read.meta?.tag ?? []), { system: 'urn:glucoguard:integrity', code: 'unverified' }] }, gender: 'female' });
    expect(back.status).toBe(200);
    for (const code of ['pending', 'unverified']) {
      const found = await http().get('/fhir/Patient').query({ _id: id, _tag: `urn:glucoguard:integrity|${code}` });
      expect(found.status).toBe(200);
      expect(found.body.entry ?? []).toHaveLength(0);
    }
    const mine = await http().get('/fhir/Patient').query({ _id: id, _tag: 'urn:test:mine|kept' });
    expect(mine.body.entry).toHaveLength(1);
    // in a transaction too
    const tx = await post('/fhir', {
      resourceType: 'Bundle', type: 'transaction',
      entry: [{ resource: { resourceType: 'Organization', name: 'Tagged Org', meta: { tag: [tags[0]] } }, request: { method: 'POST', url: 'Organization' } }],
    });
    expect(tx.status).toBe(200);
    expect((await http().get('/fhir/Organization').query({ _tag: 'urn:glucoguard:integrity|pending' })).body.entry ?? []).toHaveLength(0);
  });

  test('the self link of a lenient search names the parameters used (search.html#errors), with _count as served', async () => {
    const res = await http().get('/fhir/Observation').set('Prefer', 'handling=lenient')
      .query({ patient: patientId, colour: 'blue', _count: '5000', _sort: 'date,-no-such-key' });
    expect(res.status).toBe(200);
    const self = new URL((res.body as Bundle).link!.find((l) => l.relation === 'self')!.url!);
    expect(self.searchParams.get('colour')).toBeNull();
    expect(self.searchParams.get('patient')).toBe(patientId);
    expect(self.searchParams.get('_count')).toBe('50');
    expect(self.searchParams.get('_sort')).toBe('date');
    // following it asks the same question strictly
    const again = await http().get(`${self.pathname}${self.search}`);
    expect(again.status).toBe(200);
    expect(again.body.entry).toHaveLength(3);
  });

  test('_count=0 gives no next link, for searches and history (it would name this page again)', async () => {
    for (const path of ['/fhir/Observation', '/fhir/Observation/_history']) {
      const res = await http().get(path).query({ _count: '0' });
      expect(res.status).toBe(200);
      expect((res.body as Bundle).entry ?? []).toHaveLength(0);
      expect((res.body as Bundle).link!.map((l) => l.relation)).toEqual(['self']);
    }
  });

  test('the CapabilityStatement lists the _include and _revinclude values it takes, and they work', async () => {
    const cs = (await http().get('/fhir/metadata')).body as CapabilityStatement;
    const observation = cs.rest![0]!.resource!.find((r) => r.type === 'Observation')!;
    const patient = cs.rest![0]!.resource!.find((r) => r.type === 'Patient')!;
    expect(observation.searchInclude).toEqual(expect.arrayContaining(['Observation:patient', 'Observation:subject', 'Observation:device']));
    expect(observation.searchInclude).not.toContain('*');
    expect(patient.searchRevInclude).toEqual(expect.arrayContaining(['Observation:patient', 'Device:patient']));
    for (const value of observation.searchInclude!) {
      expect((await http().get('/fhir/Observation').query({ patient: patientId, _include: value })).status).toBe(200);
    }
    expect((await http().get('/fhir/Observation').query({ patient: patientId, _include: '*' })).status).toBe(400);
  });

  test('PUT to an id that is not a FHIR id is 400, not 404', async () => {
    for (const id of ['a_b', 'x'.repeat(65)]) {
      const res = await http().put(`/fhir/Patient/${id}`).set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', id });
      expect(res.status).toBe(400);
      expect(res.body.issue[0].diagnostics).toMatch(/not a valid FHIR id/);
    }
    expect((await http().get('/fhir/Patient/a_b')).status).toBe(404);
  });

  test('result parameters are not criteria of a conditional delete: alone they are none (405), beside a filter they do not hide a second match (412)', async () => {
    const a = (await post('/fhir/Organization', { resourceType: 'Organization', name: 'Twin Clinic' })).body.id;
    const b = (await post('/fhir/Organization', { resourceType: 'Organization', name: 'Twin Clinic' })).body.id;
    expect((await http().delete('/fhir/Organization').query({ _count: '1' })).status).toBe(405);
    expect((await http().delete('/fhir/Organization').query({ name: 'Twin Clinic', _count: '1' })).status).toBe(412);
    expect((await http().put('/fhir/Organization').query({ name: 'Twin Clinic', _sort: '_id', _count: '1' }).set('Content-Type', FHIR_JSON)
      .send({ resourceType: 'Organization', name: 'Twin Clinic' })).status).toBe(412);
    for (const id of [a, b]) expect((await http().get(`/fhir/Organization/${id}`)).status).toBe(200);
  });

  test('Accept with a fhirVersion other than R4 is 406 (http.html#version-parameter); 4.0 is served', async () => {
    const other = await http().get(`/fhir/Patient/${patientId}`).set('Accept', 'application/fhir+json; fhirVersion=3.0');
    expect(other.status).toBe(406);
    expect(other.body.resourceType).toBe('OperationOutcome');
    expect((await http().get(`/fhir/Patient/${patientId}`).set('Accept', 'application/fhir+json; fhirVersion=4.0')).status).toBe(200);
    expect((await http().get(`/fhir/Patient/${patientId}`).set('Accept', 'application/fhir+json; fhirVersion=3.0, application/fhir+json; fhirVersion=4.0.1')).status).toBe(200);
  });

  // an upstream server's version ids are its own (@medplum/fhir-router's are UUIDs): which version came first is not in them
  (adapter === 'embedded' ? test : test.skip)('history says 201 Created for a version a PUT created (update as create) [embedded only: upstream version ids are opaque]', async () => {
    const id = `put-made-${adapter}`;
    expect((await http().put(`/fhir/Organization/${id}`).set('Content-Type', FHIR_JSON).send({ resourceType: 'Organization', id, name: 'Made by PUT' })).status).toBe(201);
    expect((await http().put(`/fhir/Organization/${id}`).set('Content-Type', FHIR_JSON).send({ resourceType: 'Organization', id, name: 'Changed by PUT' })).status).toBe(200);
    const history = (await http().get(`/fhir/Organization/${id}/_history`)).body as Bundle;
    expect(history.entry!.map((e) => e.response!.status)).toEqual(['200 OK', '201 Created']);
  });

  test('a later $everything page names itself in its self link', async () => {
    const first = (await http().get(`/fhir/Patient/${patientId}/$everything`).query({ _count: '2' })).body as Bundle;
    const next = first.link!.find((l) => l.relation === 'next')!.url!;
    const nextUrl = new URL(next);
    const second = (await http().get(`${nextUrl.pathname}${nextUrl.search}`)).body as Bundle;
    expect(second.link!.find((l) => l.relation === 'self')!.url).toBe(next);
  });

  test('urn:uuid references outside a transaction are 400 (http.html#brules); inside one they are resolved', async () => {
    const single = await post('/fhir/Observation', { ...reading(patientId, '2026-03-09T08:00:00Z', 99), device: { reference: 'urn:uuid:0b7a4c1e-1111-4111-8111-111111111111' } });
    expect(single.status).toBe(400);
    expect(single.body.issue[0].diagnostics).toMatch(/urn:uuid/);
    const batch = await post('/fhir', {
      resourceType: 'Bundle', type: 'batch',
      entry: [
        { fullUrl: 'urn:uuid:0b7a4c1e-2222-4222-8222-222222222222', resource: { resourceType: 'Device', deviceName: [{ name: 'Batch', type: 'model-name' }] }, request: { method: 'POST', url: 'Device' } },
        { resource: { ...reading(patientId, '2026-03-09T08:00:00Z', 99), device: { reference: 'urn:uuid:0b7a4c1e-2222-4222-8222-222222222222' } }, request: { method: 'POST', url: 'Observation' } },
      ],
    });
    expect(batch.status).toBe(200);
    expect((batch.body as Bundle).entry!.map((e) => e.response!.status.split(' ')[0])).toEqual(['201', '400']);
    const tx = await post('/fhir', {
      resourceType: 'Bundle', type: 'transaction',
      entry: [
        { fullUrl: 'urn:uuid:0b7a4c1e-3333-4333-8333-333333333333', resource: { resourceType: 'Device', deviceName: [{ name: 'Tx', type: 'model-name' }] }, request: { method: 'POST', url: 'Device' } },
        { resource: { ...reading(patientId, '2026-03-09T08:00:00Z', 99), device: { reference: 'urn:uuid:0b7a4c1e-3333-4333-8333-333333333333' } }, request: { method: 'POST', url: 'Observation' } },
      ],
    });
    expect(tx.status).toBe(200);
    const observation = (tx.body as Bundle).entry![1]!.resource as Observation;
    expect(observation.device!.reference).toMatch(/^Device\/[A-Za-z0-9\-.]+$/);
  });

  test('a transaction whose read entry fails is not applied (http.html#transaction: all actions or none)', async () => {
    const before = (await http().get('/fhir/Organization').query({ name: 'Never-applied' })).body as Bundle;
    expect(before.total ?? before.entry?.length ?? 0).toBe(0);
    const tx = await post('/fhir', {
      resourceType: 'Bundle', type: 'transaction',
      entry: [
        { resource: { resourceType: 'Organization', name: 'Never-applied' }, request: { method: 'POST', url: 'Organization' } },
        { request: { method: 'GET', url: 'Patient/no-such-patient' } },
      ],
    });
    expect(tx.status).toBe(404);
    expect(tx.body.resourceType).toBe('OperationOutcome');
    expect(tx.body.issue[0].diagnostics).toMatch(/^Bundle\.entry\[1\]: .*the transaction was not applied$/);
    expect(tx.body.issue[0].expression[0]).toBe('Bundle.entry[1]');
    const after = (await http().get('/fhir/Organization').query({ name: 'Never-applied' })).body as Bundle;
    expect(after.entry ?? []).toHaveLength(0);
    // a search entry with a parameter the server does not know fails it the same way
    const bad = await post('/fhir', {
      resourceType: 'Bundle', type: 'transaction',
      entry: [
        { resource: { resourceType: 'Organization', name: 'Never-applied' }, request: { method: 'POST', url: 'Organization' } },
        { request: { method: 'GET', url: 'Patient?no-such-parameter=1' } },
      ],
    });
    expect(bad.status).toBe(400);
    expect(((await http().get('/fhir/Organization').query({ name: 'Never-applied' })).body as Bundle).entry ?? []).toHaveLength(0);
  });

  test('a transaction that reads what it deletes is refused and deletes nothing', async () => {
    const org = (await post('/fhir/Organization', { resourceType: 'Organization', name: 'Kept' })).body;
    const tx = await post('/fhir', {
      resourceType: 'Bundle', type: 'transaction',
      entry: [
        { request: { method: 'DELETE', url: `Organization/${org.id}` } },
        { request: { method: 'GET', url: `Organization/${org.id}` } },
      ],
    });
    expect(tx.status).toBe(400);
    expect(tx.body.issue[0].diagnostics).toContain('which this transaction deletes');
    expect((await http().get(`/fhir/Organization/${org.id}`)).status).toBe(200);
  });

  test("a transaction's read of a type it writes sees the writes", async () => {
    const tx = await post('/fhir', {
      resourceType: 'Bundle', type: 'transaction',
      entry: [
        { resource: { resourceType: 'Organization', name: 'Seen-by-read' }, request: { method: 'POST', url: 'Organization' } },
        { request: { method: 'GET', url: 'Organization?name=Seen-by-read' } },
      ],
    });
    expect(tx.status).toBe(200);
    const found = (tx.body as Bundle).entry![1]!.resource as Bundle;
    expect(found.entry?.map((e) => e.resource!.id)).toEqual([(tx.body as Bundle).entry![0]!.resource!.id]);
  });

  // an upstream server pages its own history (by its own next links, src/repository/upstream/paging.ts)
  (adapter === 'embedded' ? test : test.skip)('a history walk sees history as its first page found it: versions written meanwhile neither repeat nor push entries off [embedded only]', async () => {
    const made: string[] = [];
    for (let i = 0; i < 7; i++) made.push((await post('/fhir/Organization', { resourceType: 'Organization', name: `Walked ${i}` })).body.id);
    const local = (url: string) => url.replace(/^https?:\/\/[^/]+/, '');
    for (const path of ['/fhir/Organization/_history', '/fhir/_history']) {
      const seen: string[] = [];
      let next: string | undefined = `${path}?_count=3`;
      let pages = 0;
      while (next && pages++ < 10) {
        const page = await http().get(local(next));
        expect(page.status).toBe(200);
        const bundle = page.body as Bundle;
        for (const e of bundle.entry ?? []) if (e.resource?.resourceType === 'Organization') seen.push(`${e.resource.id}/${e.response!.etag}`);
        // every page read, two more Organizations are written: newest first, they would shift every later page
        for (let k = 0; k < 2; k++) await post('/fhir/Organization', { resourceType: 'Organization', name: `Meanwhile ${pages}.${k}` });
        next = bundle.link?.find((l) => l.relation === 'next')?.url;
        if (path === '/fhir/_history' && seen.length >= 40) break;
      }
      expect(new Set(seen).size).toBe(seen.length);
      if (path.startsWith('/fhir/Organization')) for (const id of made) expect(seen).toContain(`${id}/W/"1"`);
    }
  });

  // an upstream server answers its transactions itself
  (adapter === 'embedded' ? test : test.skip)("a transaction's entries give the version's own lastModified, to the millisecond [embedded only: upstream answers transactions itself]", async () => {
    const tx = await post('/fhir', {
      resourceType: 'Bundle', type: 'transaction',
      entry: [
        { resource: { resourceType: 'Organization', name: 'Timed' }, request: { method: 'POST', url: 'Organization' } },
        { request: { method: 'GET', url: `Patient/${patientId}` } },
      ],
    });
    expect(tx.status).toBe(200);
    for (const e of (tx.body as Bundle).entry!) expect(e.response!.lastModified).toBe(e.resource!.meta!.lastUpdated);
  });
});
