/**
 * patch (https://hl7.org/fhir/R4/http.html#patch) with JSON Patch (RFC 6902) and FHIRPath Patch over HTTP, on the
 * embedded repository and on the upstream adapter in front of a real FHIR server: a new version
 * with the same checks as an update; a patch that does not apply, or leaves an invalid resource,
 * stores nothing. Then the same with SMART tokens: a patch reaches only what the requester may change.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Observation, Patient } from '@medplum/fhirtypes';
import { randomUUID } from 'node:crypto';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { REPOSITORY_ADAPTERS, type Backend } from '../support/adapters.js';
import { patientToken, withTwoPatients } from './consent-helpers.js';

const FHIR_JSON = 'application/fhir+json';
const JSON_PATCH = 'application/json-patch+json';


function reading(patient: string, value: number, identifier = randomUUID()): Observation {
  return {
    resourceType: 'Observation', status: 'preliminary',
    identifier: [{ system: 'urn:test:reading', value: identifier }],
    code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] },
    subject: { reference: `Patient/${patient}` },
    effectiveDateTime: '2026-03-01T08:00:00Z',
    valueQuantity: { value, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
  };
}

describe.each(REPOSITORY_ADAPTERS)('JSON Patch on the %s repository', (_adapter, startBackend) => {
  let t: TestApp;
  let backend: Backend;
  let patientId: string;
  const http = () => request(t.app.http);
  const create = async (o: Observation): Promise<Observation> => {
    const res = await http().post('/fhir/Observation').set('Content-Type', FHIR_JSON).send(o);
    expect(res.status).toBe(201);
    return res.body as Observation;
  };
  const patch = (url: string, ops: unknown, type = JSON_PATCH) => http().patch(`/fhir/${url}`).set('Content-Type', type).send(JSON.stringify(ops));
  const current = async (id: string): Promise<Observation> => (await http().get(`/fhir/Observation/${id}`)).body as Observation;

  beforeAll(async () => {
    backend = await startBackend();
    t = await startTestApp(backend.env);
    patientId = ((await http().post('/fhir/Patient').set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', name: [{ family: 'Ito' }] })).body as Patient).id!;
  });
  afterAll(async () => {
    await t?.close();
    await backend?.close();
  });

  test('replaces and adds elements: a new version, everything else as it was', async () => {
    const o = await create(reading(patientId, 100));
    const res = await patch(`Observation/${o.id}`, [
      { op: 'test', path: '/status', value: 'preliminary' },
      { op: 'replace', path: '/status', value: 'final' },
      { op: 'replace', path: '/valueQuantity/value', value: 104 },
      { op: 'add', path: '/note', value: [{ text: 'recalibrated' }] },
    ]);
    expect(res.status).toBe(200);
    expect(res.body.meta.versionId).not.toBe(o.meta!.versionId);
    expect(res.headers.etag).toBe(`W/"${res.body.meta.versionId}"`);
    const stored = await current(o.id!);
    expect(stored).toMatchObject({ status: 'final', valueQuantity: { value: 104 }, note: [{ text: 'recalibrated' }], subject: o.subject, effectiveDateTime: o.effectiveDateTime });
  });

  test('a patch that does not apply, or leaves an invalid resource, is 422 and stores nothing', async () => {
    const o = await create(reading(patientId, 110));
    const cases: [unknown[], RegExp][] = [
      [[{ op: 'test', path: '/status', value: 'final' }, { op: 'replace', path: '/status', value: 'amended' }], /test failed/],
      [[{ op: 'remove', path: '/interpretation' }], /does not exist/],
      [[{ op: 'replace', path: '/id', value: randomUUID() }], /resourceType or id/],
      [[{ op: 'add', path: '/colour', value: 'red' }], /colour/],
      [[{ op: 'replace', path: '/effectiveDateTime', value: 'soon' }], /effective/],
    ];
    for (const [ops, message] of cases) {
      const res = await patch(`Observation/${o.id}`, ops);
      expect(res.status).toBe(422);
      expect(res.body.resourceType).toBe('OperationOutcome');
      expect(JSON.stringify(res.body.issue)).toMatch(message);
    }
    const stored = await current(o.id!);
    expect(stored.meta!.versionId).toBe(o.meta!.versionId);
    expect(stored.status).toBe('preliminary');
  });

  test.each([
    // FHIR JSON carries a FHIRPath Patch (below): a JSON Patch document sent as FHIR JSON is not a Parameters resource
    ['a JSON Patch sent as FHIR JSON', [{ op: 'replace', path: '/status', value: 'final' }], FHIR_JSON, 400],
    ['a text body', [{ op: 'replace', path: '/status', value: 'final' }], 'text/plain', 415],
    ['an empty document', [], JSON_PATCH, 400],
    ['an unknown op', [{ op: 'merge', path: '/status', value: 'final' }], JSON_PATCH, 400],
    ['a path into a prototype', [{ op: 'add', path: '/__proto__/polluted', value: true }], JSON_PATCH, 400],
    ['a from into a prototype', [{ op: 'copy', from: '/constructor/name', path: '/status' }], JSON_PATCH, 400],
    ['a null operation', [null], JSON_PATCH, 400],
    ['a document that is not a list', { op: 'replace', path: '/status', value: 'final' }, JSON_PATCH, 400],
  ])('refuses %s (%j) with %s… and changes nothing', async (_what, ops, type, status) => {
    const o = await create(reading(patientId, 120));
    const res = await patch(`Observation/${o.id}`, ops, type as string);
    expect(res.status).toBe(status);
    expect((await current(o.id!)).meta!.versionId).toBe(o.meta!.versionId);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  test('If-Match: the current version patches, a stale one is 412', async () => {
    const o = await create(reading(patientId, 130));
    const ok = await patch(`Observation/${o.id}`, [{ op: 'replace', path: '/valueQuantity/value', value: 131 }]).set('If-Match', `W/"${o.meta!.versionId}"`);
    expect(ok.status).toBe(200);
    const stale = await patch(`Observation/${o.id}`, [{ op: 'replace', path: '/valueQuantity/value', value: 999 }]).set('If-Match', `W/"${o.meta!.versionId}"`);
    expect(stale.status).toBe(412);
    expect((await current(o.id!)).valueQuantity!.value).toBe(131);
  });

  test('an id never stored is 404; a deleted resource 410', async () => {
    expect((await patch(`Observation/${randomUUID()}`, [{ op: 'replace', path: '/status', value: 'final' }])).status).toBe(404);
    const o = await create(reading(patientId, 140));
    expect((await http().delete(`/fhir/Observation/${o.id}`)).status).toBe(204);
    expect((await patch(`Observation/${o.id}`, [{ op: 'replace', path: '/status', value: 'final' }])).status).toBe(410);
  });

  test('conditional patch: the one match is patched; none is 404; more than one 412', async () => {
    const key = randomUUID();
    const o = await create(reading(patientId, 150, key));
    const res = await patch(`Observation?identifier=urn:test:reading|${key}`, [{ op: 'replace', path: '/status', value: 'final' }]);
    expect(res.status).toBe(200);
    expect(res.body.id).toBe(o.id);
    expect((await patch(`Observation?identifier=urn:test:reading|${randomUUID()}`, [{ op: 'replace', path: '/status', value: 'final' }])).status).toBe(404);
    await create(reading(patientId, 151, key));
    expect((await patch(`Observation?identifier=urn:test:reading|${key}`, [{ op: 'replace', path: '/status', value: 'amended' }])).status).toBe(412);
  });

  test('a browser app\'s CORS preflight for PATCH is allowed', async () => {
    const res = await http().options('/fhir/Observation/x').set('Origin', 'https://app.example').set('Access-Control-Request-Method', 'PATCH');
    expect(res.status).toBe(204);
    expect(res.headers['access-control-allow-methods']).toMatch(/\bPATCH\b/);
  });

  test('FHIRPath Patch (a Parameters resource as FHIR JSON): a new version; one that cannot be applied is 422, a malformed one 400, and neither stores anything', async () => {
    const o = await create(reading(patientId, 160));
    const operation = (type: string, path: string, ...parts: object[]) => ({ name: 'operation', part: [{ name: 'type', valueCode: type }, { name: 'path', valueString: path }, ...parts] });
    const fhirPatch = (url: string, ...operations: object[]) => patch(url, { resourceType: 'Parameters', parameter: operations }, FHIR_JSON);
    const res = await fhirPatch(`Observation/${o.id}`,
      operation('replace', 'Observation.status', { name: 'value', valueCode: 'final' }),
      operation('replace', 'Observation.value.value', { name: 'value', valueDecimal: 161 }),
      operation('add', 'Observation', { name: 'name', valueString: 'note' }, { name: 'value', valueAnnotation: { text: 'recalibrated' } }),
      operation('insert', 'Observation.identifier', { name: 'index', valueInteger: 0 }, { name: 'value', valueIdentifier: { system: 'urn:test:other', value: 'x1' } }));
    expect(res.status).toBe(200);
    expect(res.body.meta.versionId).not.toBe(o.meta!.versionId);
    const stored = await current(o.id!);
    expect(stored).toMatchObject({ status: 'final', valueQuantity: { value: 161 }, note: [{ text: 'recalibrated' }], subject: o.subject });
    expect(stored.identifier!.map((i) => i.system)).toEqual(['urn:test:other', 'urn:test:reading']);

    const cases: [object[], number, RegExp][] = [
      [[operation('replace', 'Observation.interpretation', { name: 'value', valueCodeableConcept: { text: 'high' } })], 422, /names no element/],
      [[operation('replace', 'Observation.status', { name: 'value', valueCode: 'amended' }), operation('delete', 'Observation.identifier')], 422, /operation 1 .*more than one element/],
      [[operation('replace', 'Observation.effective', { name: 'value', valueDateTime: 'soon' })], 422, /effective/],
      [[operation('replace', 'Observation.id', { name: 'value', valueId: 'other-id' })], 422, /resourceType or id/],
      [[operation('merge', 'Observation.status')], 400, /type must be one of/],
      [[], 400, /at least one operation/],
      // a fuzz counterexample that answered 500: JSON null where an operation was expected
      [[null as unknown as object], 400, /is not an operation/],
    ];
    for (const [operations, status, message] of cases) {
      const bad = await fhirPatch(`Observation/${o.id}`, ...operations);
      expect(bad.status).toBe(status);
      expect(bad.body.resourceType).toBe('OperationOutcome');
      expect(JSON.stringify(bad.body.issue)).toMatch(message);
    }
    const after = await current(o.id!);
    expect(after.meta!.versionId).toBe(stored.meta!.versionId);
    expect(after.status).toBe('final');
    // conditional, like JSON Patch
    const key = randomUUID();
    const c = await create(reading(patientId, 170, key));
    const cond = await fhirPatch(`Observation?identifier=urn:test:reading|${key}`, operation('replace', 'Observation.status', { name: 'value', valueCode: 'final' }));
    expect(cond.status).toBe(200);
    expect(cond.body.id).toBe(c.id);
  });

  test('a batch carries patches: FHIRPath Patch as Parameters, JSON Patch as a Binary; each entry is answered on its own', async () => {
    const a = await create(reading(patientId, 180));
    const b = await create(reading(patientId, 181));
    const jsonPatch = Buffer.from(JSON.stringify([{ op: 'replace', path: '/status', value: 'final' }])).toString('base64');
    const bundle = {
      resourceType: 'Bundle', type: 'batch', entry: [
        { request: { method: 'PATCH', url: `Observation/${a.id}` }, resource: { resourceType: 'Parameters', parameter: [{ name: 'operation', part: [
          { name: 'type', valueCode: 'replace' }, { name: 'path', valueString: 'Observation.value.value' }, { name: 'value', valueDecimal: 182 }] }] } },
        { request: { method: 'PATCH', url: `Observation/${b.id}` }, resource: { resourceType: 'Binary', contentType: JSON_PATCH, data: jsonPatch } },
        { request: { method: 'PATCH', url: `Observation/${b.id}` }, resource: { resourceType: 'Binary', contentType: JSON_PATCH, data: Buffer.from('[{"op":').toString('base64') } },
        { request: { method: 'PATCH', url: `Observation/${b.id}` }, resource: { resourceType: 'Binary', contentType: 'text/plain', data: jsonPatch } },
      ],
    };
    const res = await http().post('/fhir').set('Content-Type', FHIR_JSON).send(bundle);
    expect(res.status).toBe(200);
    expect(res.body.entry.map((e: { response: { status: string } }) => e.response.status.split(' ')[0])).toEqual(['200', '200', '400', '415']);
    expect((await current(a.id!)).valueQuantity!.value).toBe(182);
    expect((await current(b.id!)).status).toBe('final');
  });

  test('a transaction carries patches: all its writes or none; a patch that does not apply, a stale If-Match or a conditional patch fails it whole', async () => {
    const a = await create(reading(patientId, 190));
    const b = await create(reading(patientId, 191));
    const fpReplace = (path: string, value: object) => ({ resourceType: 'Parameters', parameter: [{ name: 'operation', part: [
      { name: 'type', valueCode: 'replace' }, { name: 'path', valueString: path }, { name: 'value', ...value }] }] });
    const jsonPatch = (ops: object[]) => ({ resourceType: 'Binary', contentType: JSON_PATCH, data: Buffer.from(JSON.stringify(ops)).toString('base64') });
    const newReading = reading(patientId, 192);
    const transaction = (entry: object[]) => http().post('/fhir').set('Content-Type', FHIR_JSON).send({ resourceType: 'Bundle', type: 'transaction', entry });
    const ok = await transaction([
      { request: { method: 'PATCH', url: `Observation/${a.id}` }, resource: fpReplace('Observation.value.value', { valueDecimal: 193 }) },
      { request: { method: 'PATCH', url: `Observation/${b.id}`, ifMatch: `W/"${b.meta!.versionId}"` }, resource: jsonPatch([{ op: 'replace', path: '/status', value: 'final' }]) },
      { request: { method: 'POST', url: 'Observation' }, resource: newReading },
    ]);
    expect(ok.status).toBe(200);
    expect(ok.body.type).toBe('transaction-response');
    expect(ok.body.entry.map((e: { response: { status: string } }) => e.response.status.split(' ')[0])).toEqual(['200', '200', '201']);
    expect((await current(a.id!)).valueQuantity!.value).toBe(193);
    const bNow = await current(b.id!);
    expect(bNow.status).toBe('final');
    const countOf = async () => (await http().get('/fhir/Observation').query({ identifier: `urn:test:reading|${newReading.identifier![0]!.value}` })).body.entry?.length ?? 0;
    expect(await countOf()).toBe(1);

    const failing: [object[], number, RegExp][] = [
      [[{ request: { method: 'PATCH', url: `Observation/${a.id}` }, resource: fpReplace('Observation.interpretation', { valueString: 'x' }) }], 422, /names no element.*Bundle.entry\[1\].resource.parameter\[0\]/],
      [[{ request: { method: 'PATCH', url: `Observation/${b.id}`, ifMatch: `W/"${b.meta!.versionId}"` }, resource: jsonPatch([{ op: 'replace', path: '/status', value: 'amended' }]) }], 412, /If-Match/],
      [[{ request: { method: 'PATCH', url: `Observation?identifier=urn:test:reading|${newReading.identifier![0]!.value}` }, resource: jsonPatch([{ op: 'replace', path: '/status', value: 'amended' }]) }], 400, /names one resource/],
      [[{ request: { method: 'PATCH', url: `Observation/${a.id}` }, resource: jsonPatch([{ op: 'replace', path: '/effectiveDateTime', value: 'soon' }]) }], 422, /effective/],
    ];
    for (const [entries, status, message] of failing) {
      const extra = reading(patientId, 194);
      const res = await transaction([{ request: { method: 'POST', url: 'Observation' }, resource: extra }, ...entries]);
      expect(res.status).toBe(status);
      expect(JSON.stringify(res.body.issue)).toMatch(message);
      // nothing of it was stored: neither the create beside it nor the patch
      expect((await http().get('/fhir/Observation').query({ identifier: `urn:test:reading|${extra.identifier![0]!.value}` })).body.entry ?? []).toEqual([]);
    }
    expect((await current(a.id!)).meta!.versionId).toBe(ok.body.entry[0].resource.meta.versionId);
    expect((await current(b.id!)).meta!.versionId).toBe(bNow.meta!.versionId);
  });

  test('the CapabilityStatement lists patch, except for types whose writes go through their own module', async () => {
    const meta = await http().get('/fhir/metadata');
    const codes = (type: string) => meta.body.rest[0].resource.find((r: { type: string }) => r.type === type).interaction.map((i: { code: string }) => i.code);
    expect(codes('Observation')).toContain('patch');
    expect(meta.body.patchFormat).toEqual(['application/json-patch+json', 'application/fhir+json']);
    if (_adapter === 'embedded') expect(codes('Consent')).not.toContain('patch');
  });
});

describe('JSON Patch with SMART tokens', () => {
  const ctx = withTwoPatients();

  const patch = (token: string, url: string, ops: unknown) =>
    request(ctx.t.app.http).patch(`/fhir/${url}`).set('Authorization', `Bearer ${token}`).set('Content-Type', JSON_PATCH).send(JSON.stringify(ops));

  test('a patient app patches its own readings; another patient\'s answers like an id never stored, and is not changed', async () => {
    const token = patientToken(ctx.t.app, ctx.ana);
    const mine = (await ctx.t.app.repository.create(reading(ctx.ana, 100))).resource;
    const theirs = (await ctx.t.app.repository.create(reading(ctx.ben, 100))).resource;
    expect((await patch(token, `Observation/${mine.id}`, [{ op: 'replace', path: '/status', value: 'final' }])).status).toBe(200);
    const hidden = await patch(token, `Observation/${theirs.id}`, [{ op: 'replace', path: '/status', value: 'final' }]);
    const never = await patch(token, `Observation/${randomUUID()}`, [{ op: 'replace', path: '/status', value: 'final' }]);
    expect(hidden.status).toBe(404);
    expect(hidden.body).toEqual(never.body);
    expect((await ctx.t.app.repository.read<Observation>('Observation', theirs.id!)).status).toBe('preliminary');
  });

  test('a patch may not move a reading into another patient\'s record', async () => {
    const token = patientToken(ctx.t.app, ctx.ana);
    const mine = (await ctx.t.app.repository.create(reading(ctx.ana, 100))).resource;
    const res = await patch(token, `Observation/${mine.id}`, [{ op: 'replace', path: '/subject/reference', value: `Patient/${ctx.ben}` }]);
    expect(res.status).toBe(403);
    expect((await ctx.t.app.repository.read<Observation>('Observation', mine.id!)).subject!.reference).toBe(`Patient/${ctx.ana}`);
  });

  test('a token without update scope cannot patch', async () => {
    const reader = ctx.t.app.smart.tokens.signAccessToken({ gid: randomUUID(), clientId: 'reader', sub: 'reader', scopes: ['system/Observation.rs'] }).token;
    const o = (await ctx.t.app.repository.create(reading(ctx.ana, 100))).resource;
    expect((await patch(reader, `Observation/${o.id}`, [{ op: 'replace', path: '/status', value: 'final' }])).status).toBe(403);
  });
});
