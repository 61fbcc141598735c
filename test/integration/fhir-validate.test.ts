/**
 * `$validate` (https://hl7.org/fhir/R4/operation-resource-validate.html): an integration engine
 * checks a resource against base R4 and the HL7 CGM IG profiles before it sends it, and stores
 * nothing by asking. Modes create, update and delete check what that write would check, with the
 * requester's own permissions.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Observation, OperationOutcome, Parameters } from '@medplum/fhirtypes';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { patientToken, withTwoPatients } from './consent-helpers.js';

const FHIR_JSON = 'application/fhir+json';
const CGM_READING = 'http://hl7.org/fhir/uv/cgm/StructureDefinition/cgm-sensor-reading-mass-per-volume';
const example = (): Observation => {
  const o = JSON.parse(readFileSync(path.join(process.cwd(), 'test/fixtures/cgm-ig/Observation-cgmSensorReadingMassPerVolumeExample.json'), 'utf8')) as Observation;
  delete o.id;
  return o;
};
const errors = (o: OperationOutcome) => (o.issue ?? []).filter((i) => i.severity === 'error' || i.severity === 'fatal');

describe('$validate, open access', () => {
  let t: TestApp;
  const validate = (url: string, body: unknown) => request(t.app.http).post(`/fhir/${url}`).set('Content-Type', FHIR_JSON).send(body as object);
  const stored = async () => (await t.app.repository.search({ resourceType: 'Observation', count: 1000, offset: 0 })).resources.length;

  beforeAll(async () => {
    t = await startTestApp();
  });
  afterAll(async () => {
    await t?.close();
  });

  test('the IG\'s own example validates against the CGM profile; nothing is stored', async () => {
    const before = await stored();
    const res = await validate('Observation/$validate', { ...example(), meta: { profile: [CGM_READING] } });
    expect(res.status).toBe(200);
    expect(res.body.resourceType).toBe('OperationOutcome');
    expect(errors(res.body)).toEqual([]);
    expect(res.body.issue[0].diagnostics).toBe('No issues found');
    expect(await stored()).toBe(before);
  });

  test('a broken copy is reported issue by issue, with expression paths, and is not stored', async () => {
    const before = await stored();
    const broken = { ...example(), meta: { profile: [CGM_READING] }, colour: 'red', effectiveDateTime: 'yesterday' };
    const res = await validate('Observation/$validate', broken);
    expect(res.status).toBe(200);
    const found = errors(res.body);
    expect(found.length).toBeGreaterThanOrEqual(2);
    expect(found.flatMap((i) => i.expression ?? []).join(' ')).toMatch(/colour/);
    expect(found.flatMap((i) => i.expression ?? []).join(' ')).toMatch(/effective/);
    // the same body as a create is refused with the same kind of issues: $validate says what a write meets
    const create = await request(t.app.http).post('/fhir/Observation').set('Content-Type', FHIR_JSON).send(broken);
    expect(create.status).toBe(422);
    expect(await stored()).toBe(before);
  });

  test('a Parameters body names the profile: the example without meta.profile is checked against it', async () => {
    const plain = { ...example(), valueQuantity: { value: 6.7, unit: 'mmol/L', system: 'http://unitsofmeasure.org', code: 'mmol/L' } };
    const general = await validate('Observation/$validate', plain);
    expect(errors(general.body)).toEqual([]); // fine as a base R4 Observation
    const params: Parameters = { resourceType: 'Parameters', parameter: [{ name: 'resource', resource: plain }, { name: 'profile', valueUri: CGM_READING }] };
    const profiled = await validate('Observation/$validate', params);
    expect(profiled.status).toBe(200);
    expect(errors(profiled.body).length).toBeGreaterThan(0); // mg/dL is fixed by the mass-per-volume profile
    const inUrl = await validate(`Observation/$validate?mode=profile&profile=${encodeURIComponent(CGM_READING)}`, plain);
    expect(errors(inUrl.body).length).toBe(errors(profiled.body).length);
  });

  test('mode update checks the id against the instance; mode delete checks no content', async () => {
    const created = await request(t.app.http).post('/fhir/Observation').set('Content-Type', FHIR_JSON).send(example());
    expect(created.status).toBe(201);
    const id = created.body.id as string;
    const same = await validate(`Observation/${id}/$validate?mode=update`, { ...example(), id });
    expect(errors(same.body)).toEqual([]);
    const other = await validate(`Observation/${id}/$validate?mode=update`, { ...example(), id: randomUUID() });
    expect(errors(other.body).map((i) => i.expression)).toContainEqual(['id']);
    const del = await request(t.app.http).post(`/fhir/Observation/${id}/$validate?mode=delete`).set('Content-Type', FHIR_JSON);
    expect(del.status).toBe(200);
    expect(errors(del.body)).toEqual([]);
    expect((await request(t.app.http).get(`/fhir/Observation/${id}`)).status).toBe(200); // still there
  });

  test.each([
    ['Observation/$validate?mode=update', example(), /instance/],
    ['Observation/$validate?mode=sideways', example(), /mode must be/],
    ['Observation/$validate', { resourceType: 'Patient' }, /must be a Observation/],
    ['Observation/$validate?mode=profile', example(), /needs a profile/],
    ['Observation/$validate?profile=http://example.org/StructureDefinition/unknown', example(), /does not hold it/],
    ['Observation/$validate', { resourceType: 'Parameters', parameter: [{ name: 'resource', resource: example() }, { name: 'bogus', valueString: 'x' }] }, /no parameter "bogus"/],
  ])('refuses POST %s with 400', async (url, body, message) => {
    const res = await validate(url, body);
    expect(res.status).toBe(400);
    expect(res.body.issue[0].diagnostics).toMatch(message);
  });

  test('a body that is not FHIR JSON is 415, as for a write', async () => {
    for (const [type, body] of [['text/plain', 'hello'], ['application/x-www-form-urlencoded', 'resourceType=Observation']]) {
      const res = await request(t.app.http).post('/fhir/Observation/$validate').set('Content-Type', type).send(body);
      expect(res.status).toBe(415);
      expect(res.body.resourceType).toBe('OperationOutcome');
    }
  });

  test('is listed in the CapabilityStatement with its canonical definition; GET is 405', async () => {
    const meta = await request(t.app.http).get('/fhir/metadata');
    const obs = meta.body.rest[0].resource.find((r: { type: string }) => r.type === 'Observation');
    expect(obs.operation).toContainEqual({ name: 'validate', definition: 'http://hl7.org/fhir/OperationDefinition/Resource-validate' });
    expect((await request(t.app.http).get('/fhir/Observation/$validate')).status).toBe(405);
  });
});

describe('empty values and failed invariants: every write refuses them, stores nothing, and $validate says so', () => {
  let t: TestApp;
  const http = () => request(t.app.http);
  const count = async (resourceType: 'Patient' | 'Observation') => (await t.app.repository.search({ resourceType, count: 1000, offset: 0 })).resources.length;
  const at = (o: OperationOutcome) => errors(o).map((i) => i.expression?.[0]);

  beforeAll(async () => {
    t = await startTestApp();
  });
  afterAll(async () => {
    await t?.close();
  });

  test('a create with an empty string or list is 422 with an issue per empty value, and nothing is stored', async () => {
    const before = await count('Patient');
    const res = await http().post('/fhir/Patient').set('Content-Type', FHIR_JSON)
      .send({ resourceType: 'Patient', name: [{ family: '', given: [] }], telecom: [] });
    expect(res.status).toBe(422);
    expect(res.body.resourceType).toBe('OperationOutcome');
    expect(at(res.body)).toEqual(['Patient.name[0].family', 'Patient.name[0].given', 'Patient.telecom']);
    expect(errors(res.body)[0]!.diagnostics).toBe('Invalid empty value: family is an empty string (leave the element out instead)');
    expect(await count('Patient')).toBe(before);

    const obs = await http().post('/fhir/Observation').set('Content-Type', FHIR_JSON)
      .send({ resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '' }] } });
    expect(obs.status).toBe(422);
    expect(at(obs.body)).toEqual(['Observation.code.coding[0].code']);
    expect(await count('Observation')).toBe(0);
  });

  test('an update or a patch that would leave an empty value is 422, and the stored version stays', async () => {
    const created = await http().post('/fhir/Patient').set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', name: [{ family: 'Rivera', given: ['Ana'] }] });
    expect(created.status).toBe(201);
    const id = created.body.id as string;
    const put = await http().put(`/fhir/Patient/${id}`).set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', id, name: [{ family: 'Rivera', given: [''] }] });
    expect(put.status).toBe(422);
    expect(at(put.body)).toEqual(['Patient.name[0].given[0]']);
    const patch = await http().patch(`/fhir/Patient/${id}`).set('Content-Type', 'application/json-patch+json').send([{ op: 'replace', path: '/name/0/family', value: '' }]);
    expect(patch.status).toBe(422);
    expect(at(patch.body)).toEqual(['Patient.name[0].family']);
    const read = await http().get(`/fhir/Patient/${id}`);
    expect(read.body.meta.versionId).toBe(created.body.meta.versionId);
    expect(read.body.name).toEqual([{ family: 'Rivera', given: ['Ana'] }]);
  });

  test('$validate reports an empty string instead of "No issues found"', async () => {
    const res = await http().post('/fhir/Patient/$validate').set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', name: [{ family: '' }] });
    expect(res.status).toBe(200);
    expect(at(res.body)).toEqual(['Patient.name[0].family']);
  });

  test('a failed invariant is 422 naming the constraint, its description, its FHIRPath and the profile; nothing is stored', async () => {
    const before = await count('Observation');
    const reading = { ...example(), meta: { profile: [CGM_READING] } };
    delete reading.valueQuantity;
    const res = await http().post('/fhir/Observation').set('Content-Type', FHIR_JSON).send(reading);
    expect(res.status).toBe(422);
    expect(errors(res.body)).toEqual([{
      severity: 'error', code: 'invariant', expression: ['Observation'],
      diagnostics: 'Constraint cgm-sensor-value-or-dar not met: A sensor reading must have a valueQuantity or a dataAbsentReason. '
        + '(FHIRPath: value.exists() or dataAbsentReason.exists()) (profile CGMSensorReadingMassPerVolume)',
    }]);
    expect(await count('Observation')).toBe(before);
  });
});

describe('$validate with SMART tokens: the requester\'s own write permissions', () => {
  const ctx = withTwoPatients();

  const validate = (token: string, body: unknown, url = 'Observation/$validate?mode=create') =>
    request(ctx.t.app.http).post(`/fhir/${url}`).set('Authorization', `Bearer ${token}`).set('Content-Type', FHIR_JSON).send(body as object);
  const reading = (patient: string) => ({ ...example(), subject: { reference: `Patient/${patient}` } });

  test('an uploader with only system/Observation.c may validate; a read-only client may not', async () => {
    const uploader = ctx.t.app.smart.tokens.signAccessToken({ gid: randomUUID(), clientId: 'uploader', sub: 'uploader', scopes: ['system/Observation.c'] }).token;
    const ok = await validate(uploader, reading(ctx.ana));
    expect(ok.status).toBe(200);
    expect(errors(ok.body)).toEqual([]);
    const reader = ctx.t.app.smart.tokens.signAccessToken({ gid: randomUUID(), clientId: 'reader', sub: 'reader', scopes: ['system/Observation.rs'] }).token;
    expect((await validate(reader, reading(ctx.ana))).status).toBe(403);
  });

  test('a patient app may create readings for its patient only: another patient\'s reading is an issue', async () => {
    const token = patientToken(ctx.t.app, ctx.ana);
    expect(errors((await validate(token, reading(ctx.ana))).body)).toEqual([]);
    const theirs = await validate(token, reading(ctx.ben));
    expect(theirs.status).toBe(200);
    expect(errors(theirs.body).map((i) => i.code)).toContain('forbidden');
  });

  test('mode update on a resource the requester cannot see answers 404, as the update would', async () => {
    const bens = (await ctx.t.app.repository.create(reading(ctx.ben))).resource.id!;
    const token = patientToken(ctx.t.app, ctx.ana);
    const hidden = await validate(token, { ...reading(ctx.ana), id: bens }, `Observation/${bens}/$validate?mode=update`);
    const never = randomUUID();
    const absent = await validate(token, { ...reading(ctx.ana), id: never }, `Observation/${never}/$validate?mode=update`);
    expect(hidden.status).toBe(404);
    expect(absent.status).toBe(404);
    expect(hidden.body).toEqual(absent.body);
  });
});
