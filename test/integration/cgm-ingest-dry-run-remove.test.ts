/**
 * `POST /cgm/ingest?dryRun=true`: the file is checked and compared with what is stored, and nothing
 * is written — no reading, no Device, no version — while the report says what the
 * import would create, leave unchanged and correct. The same on a file read twice (above the hold
 * limit), with `partial`, on a rejected file (the 422 the import would give), and on the upstream
 * repository. In the patient's access log a dry run is a search of their readings, not a create.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import type { AuditEvent, Bundle, Observation, Patient } from '@medplum/fhirtypes';
import express from 'express';
import request from 'supertest';
import { cgmHttpRouter } from '../../src/cgm/http.js';
import { CgmIngestService } from '../../src/cgm/service.js';
import { shapeCachedCheck } from '../../src/cgm/validate.js';
import { OPEN_ACCESS } from '../../src/fhir/access.js';
import { createLogger } from '../../src/log.js';
import { makeTrace, nightscoutJson } from '../fixtures/cgm-ingest/trace.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { withUpstreamApp } from '../support/upstream-server.js';

const FHIR_JSON = 'application/fhir+json';

async function newPatient(t: TestApp): Promise<string> {
  const res = await request(t.app.http).post('/fhir/Patient').set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient' });
  expect(res.status).toBe(201);
  return res.body.id as string;
}

async function stored(t: TestApp, type: 'Observation' | 'Device', patient: string): Promise<Observation[]> {
  const res = await request(t.app.http).get(`/fhir/${type}?patient=Patient/${patient}&_count=1000`);
  expect(res.status).toBe(200);
  return ((res.body as Bundle).entry ?? []).map((e) => e.resource as Observation);
}

describe('a dry run of an import stores nothing and says what the import would do', () => {
  let t: TestApp;
  const trace = makeTrace(2, { seed: 21 });
  const file = nightscoutJson(trace);
  let patient: string;
  const ingest = (body: string, query = '') =>
    request(t.app.http).post(`/cgm/ingest?patient=${patient}&format=nightscout${query}`).set('Content-Type', 'application/json').send(body);

  beforeAll(async () => {
    t = await startTestApp();
    patient = await newPatient(t);
  });
  afterAll(async () => {
    await t?.close();
  });

  test('before any import: every reading and the Device would be created; none is', async () => {
    const res = await ingest(file, '&dryRun=true');
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ accepted: true, dryRun: true, read: trace.length, created: trace.length, unchanged: 0, corrected: 0, devicesCreated: 1 });
    expect(res.body.first).toBe(new Date(trace[0]!.epochMs).toISOString());
    expect(await stored(t, 'Observation', patient)).toHaveLength(0);
    expect(await stored(t, 'Device', patient)).toHaveLength(0);
    // no version of either type was written in this app (history lists every version ever stored)
    for (const type of ['Observation', 'Device']) {
      const history = await request(t.app.http).get(`/fhir/${type}/_history`);
      expect(history.status).toBe(200);
      expect((history.body as Bundle).entry ?? []).toHaveLength(0);
    }
  });

  test('the import then creates what the dry run said; a dry run of the same file finds all of it unchanged', async () => {
    const real = await ingest(file);
    expect(real.body).toMatchObject({ accepted: true, dryRun: false, created: trace.length, devicesCreated: 1 });
    const again = await ingest(file, '&dryRun=true');
    expect(again.body).toMatchObject({ dryRun: true, created: 0, unchanged: trace.length, corrected: 0, devicesCreated: 0 });
  });

  test('a changed value would be a correction; the stored reading stays at version 1 with its value', async () => {
    const changed = trace.map((r, i) => (i === 10 ? { ...r, sgv: r.sgv + 5 } : r));
    const res = await ingest(nightscoutJson(changed), '&dryRun=true');
    expect(res.body).toMatchObject({ dryRun: true, created: 0, corrected: 1, unchanged: trace.length - 1 });
    const reading = (await stored(t, 'Observation', patient)).find((o) => Date.parse(o.effectiveDateTime!) === trace[10]!.epochMs)!;
    expect(reading.meta?.versionId).toBe('1');
    expect(reading.valueQuantity?.value).toBe(trace[10]!.sgv);
  });

  test('a file with a bad record: the 422 the import would answer; with partial=true, what it would keep; nothing stored either way', async () => {
    const other = await newPatient(t);
    const lines = nightscoutJson(makeTrace(1, { seed: 22 }).slice(0, 40)).split('\n');
    lines[5] = lines[5]!.replace(/"sgv":\d+/, '"sgv":-3');
    const bad = lines.join('\n');
    const send = (query: string) => request(t.app.http).post(`/cgm/ingest?patient=${other}&format=nightscout${query}`).send(bad);
    const rejected = await send('&dryRun=true');
    expect(rejected.status).toBe(422);
    expect(rejected.body.resourceType).toBe('OperationOutcome');
    const partial = await send('&dryRun=true&partial=true');
    expect(partial.status).toBe(200);
    expect(partial.body).toMatchObject({ accepted: true, partial: true, dryRun: true, created: 39, rejected: 1 });
    expect(await stored(t, 'Observation', other)).toHaveLength(0);
  });

  test('dryRun other than true or false is a 400 naming it, and nothing is stored', async () => {
    const other = await newPatient(t);
    const res = await request(t.app.http).post(`/cgm/ingest?patient=${other}&format=nightscout&dryRun=yes`).send(file);
    expect(res.status).toBe(400);
    expect(res.body.issue[0].diagnostics).toMatch(/dryRun must be true or false/);
    expect(await stored(t, 'Observation', other)).toHaveLength(0);
  });

  test('in the patient\'s access log the dry run is a search of their readings, the import a create', async () => {
    await t.app.consent.audit.flush();
    const log = await request(t.app.http).get(`/fhir/AuditEvent?patient=${patient}&_count=200`);
    expect(log.status).toBe(200);
    const events = ((log.body as Bundle<AuditEvent>).entry ?? []).map((e) => e.resource!);
    // a dry run's event names the query `Observation?patient=<id>` (this test's own reads add a _count)
    const dryRuns = events.filter((e) => e.entity?.some((x) => x.query && Buffer.from(x.query, 'base64').toString() === `Observation?patient=${patient}`));
    expect(dryRuns.map((e) => `${e.action} ${e.subtype?.[0]?.code}`)).toEqual(['E search-type', 'E search-type', 'E search-type']);
    // the import's is a create of the patient's data (the Patient's own create names it as the resource, role 4)
    const imports = events.filter((e) => e.action === 'C' && e.entity?.some((x) => x.role?.code === '1'));
    expect(imports).toHaveLength(1);
  });
});

describe('a dry run of an upload read twice, and on the upstream repository', () => {
  const on = withUpstreamApp();

  test('above the hold limit (checked, then compared): nothing stored, the same counts as the import', async () => {
    const service = new CgmIngestService({ repository: on.t.app.repository, check: shapeCachedCheck(() => []), defaultTimeZone: 'UTC', holdBytes: 1024 });
    const app = express();
    app.use('/cgm', cgmHttpRouter({ service, authenticate: async () => OPEN_ACCESS, mayWriteObservations: async () => true, logger: createLogger('silent') }));
    const patient = await newPatient(on.t);
    const body = nightscoutJson(makeTrace(1, { seed: 23 }).slice(0, 100));
    const dry = await request(app).post(`/cgm/ingest?patient=${patient}&format=nightscout&dryRun=true`).send(body);
    expect(dry.status).toBe(200);
    expect(dry.body).toMatchObject({ dryRun: true, created: 100, devicesCreated: 1 });
    expect(await stored(on.t, 'Observation', patient)).toHaveLength(0);
    expect(await stored(on.t, 'Device', patient)).toHaveLength(0);
    const real = await request(app).post(`/cgm/ingest?patient=${patient}&format=nightscout`).send(body);
    expect(real.body).toMatchObject({ dryRun: false, created: 100, devicesCreated: 1 });
  });

  test('on the upstream server: the Device is looked up, not created; a stored one is found; a removal deletes the readings', async () => {
    const patient = await newPatient(on.t);
    const trace = makeTrace(1, { seed: 24 }).slice(0, 60);
    const send = (body: string, query = '') => request(on.t.app.http).post(`/cgm/ingest?patient=${patient}&format=nightscout${query}`).send(body);
    expect((await send(nightscoutJson(trace), '&dryRun=true')).body).toMatchObject({ dryRun: true, created: 60, devicesCreated: 1 });
    expect(await stored(on.t, 'Device', patient)).toHaveLength(0);
    expect((await send(nightscoutJson(trace.slice(0, 30)))).body).toMatchObject({ created: 30, devicesCreated: 1 });
    expect((await send(nightscoutJson(trace), '&dryRun=true')).body).toMatchObject({ created: 30, unchanged: 30, devicesCreated: 0 });
    expect(await stored(on.t, 'Observation', patient)).toHaveLength(30);
    // and a removal there: deletes at the version compared (If-Match), the Device stays
    expect((await send(nightscoutJson(trace), '&remove=true')).body).toMatchObject({ remove: true, removed: 30, notStored: 30 });
    expect(await stored(on.t, 'Observation', patient)).toHaveLength(0);
    expect(await stored(on.t, 'Device', patient)).toHaveLength(1);
  });
});

describe('removing the readings of an imported file', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp();
  });
  afterAll(async () => {
    await t?.close();
  });

  /** A LibreView export: the reader's wall-clock times, no zone; twelve historic readings 15 minutes apart from 08:00. */
  const libre = ['Device,Serial Number,Device Timestamp,Record Type,Historic Glucose mg/dL,Scan Glucose mg/dL,Notes',
    ...Array.from({ length: 12 }, (_, i) => `FreeStyle Libre 2,0F1E2D3C-1111-4222-8333-444455556666,14-03-2026 ${String(8 + Math.floor(i / 4)).padStart(2, '0')}:${String((i % 4) * 15).padStart(2, '0')},0,${100 + i},,`),
  ].join('\n');

  test('a file imported in the wrong time zone is removed by reading it again in that zone, then imported in the right one', async () => {
    const patient = await newPatient(t);
    const send = (query: string) => request(t.app.http).post(`/cgm/ingest?patient=${patient}&format=libreview&dateOrder=DMY${query}`).set('Content-Type', 'text/csv').send(libre);
    expect((await send('&tz=UTC')).body).toMatchObject({ accepted: true, created: 12, remove: false });
    const preview = await send('&tz=UTC&remove=true&dryRun=true');
    expect(preview.status).toBe(200);
    expect(preview.body).toMatchObject({ remove: true, dryRun: true, removed: 12, changedSince: 0, notStored: 0, created: 0 });
    expect(await stored(t, 'Observation', patient)).toHaveLength(12);
    // read in Berlin (UTC+1) the file's readings are an hour earlier: 8 of those instants hold
    // readings stored from the UTC reading, with other values (kept), 4 hold none
    expect((await send('&tz=Europe/Berlin&remove=true&dryRun=true')).body).toMatchObject({ removed: 0, changedSince: 8, notStored: 4 });

    const removed = await send('&tz=UTC&remove=true');
    expect(removed.status).toBe(200);
    expect(removed.body).toMatchObject({ accepted: true, remove: true, dryRun: false, removed: 12, changedSince: 0, notStored: 0 });
    expect(await stored(t, 'Observation', patient)).toHaveLength(0);
    // removed already: a second removal finds none of them
    expect((await send('&tz=UTC&remove=true&dryRun=true')).body).toMatchObject({ removed: 0, notStored: 12 });

    expect((await send('&tz=Europe/Berlin')).body).toMatchObject({ created: 12 });
    const readings = await stored(t, 'Observation', patient);
    expect(readings).toHaveLength(12);
    expect(readings.map((o) => o.effectiveDateTime).sort()[0]).toMatch(/^2026-03-14T08:00:00(\.000)?\+01:00$|^2026-03-14T07:00:00(\.000)?Z$/);
  });

  test('a reading corrected since the import is kept; a file never imported removes nothing', async () => {
    const patient = await newPatient(t);
    const trace = makeTrace(1, { seed: 31 }).slice(0, 30);
    const send = (body: string, query = '') => request(t.app.http).post(`/cgm/ingest?patient=${patient}&format=nightscout${query}`).send(body);
    expect((await send(nightscoutJson(trace))).body).toMatchObject({ created: 30 });
    const corrected = trace.map((r, i) => (i === 3 ? { ...r, sgv: r.sgv + 9 } : r));
    expect((await send(nightscoutJson(corrected))).body).toMatchObject({ corrected: 1 });
    const res = await send(nightscoutJson(trace), '&remove=true');
    expect(res.body).toMatchObject({ remove: true, removed: 29, changedSince: 1, notStored: 0 });
    const left = await stored(t, 'Observation', patient);
    expect(left).toHaveLength(1);
    expect(left[0]!.valueQuantity?.value).toBe(trace[3]!.sgv + 9);
    const other = makeTrace(1, { seed: 32, endsBefore: 3 * 86_400_000 }).slice(0, 10); // days before the import's
    expect((await send(nightscoutJson(other), '&remove=true')).body).toMatchObject({ removed: 0, changedSince: 0, notStored: 10 });
  });

  test('a reading changed while the removal runs is kept: its chunk is not removed (412 saying what was), a second removal does the rest', async () => {
    const patient = await newPatient(t);
    const trace = makeTrace(1, { seed: 35 }).slice(0, 20);
    const body = nightscoutJson(trace);
    await request(t.app.http).post(`/cgm/ingest?patient=${patient}&format=nightscout`).send(body);
    const readings = await stored(t, 'Observation', patient);
    const last = readings.find((o) => Date.parse(o.effectiveDateTime!) === trace[19]!.epochMs)!;
    // a repository whose second transaction comes after a FHIR write changed a reading of that chunk
    let transactions = 0;
    const repository = new Proxy(t.app.repository, {
      get(target, name, receiver) {
        if (name !== 'transaction') return Reflect.get(target, name, receiver) as unknown;
        return async (bundle: Bundle) => {
          if (++transactions === 2) await target.update({ ...last, valueQuantity: { ...last.valueQuantity, value: 333 } });
          return target.transaction(bundle);
        };
      },
    });
    const service = new CgmIngestService({ repository, check: shapeCachedCheck(() => []), defaultTimeZone: 'UTC', chunkSize: 10 });
    const app = express();
    app.use('/cgm', cgmHttpRouter({ service, authenticate: async () => OPEN_ACCESS, mayWriteObservations: async () => true, logger: createLogger('silent') }));
    const res = await request(app).post(`/cgm/ingest?patient=${patient}&format=nightscout&remove=true`).send(body);
    expect(res.status).toBe(412);
    expect(res.body.issue[0].diagnostics).toBe('A reading of this file was changed while its readings were being removed: 10 readings of this file were removed before it; '
      + 'send the file again to remove the rest (a reading changed since is kept)');
    expect(await stored(t, 'Observation', patient)).toHaveLength(10);
    const again = await request(app).post(`/cgm/ingest?patient=${patient}&format=nightscout&remove=true`).send(body);
    expect(again.body).toMatchObject({ removed: 9, changedSince: 1, notStored: 10 });
    const left = await stored(t, 'Observation', patient);
    expect(left.map((o) => o.valueQuantity?.value)).toEqual([333]);
  });

  test('a removed reading answers 410 Gone; its earlier version stays readable by vread', async () => {
    const patient = await newPatient(t);
    const trace = makeTrace(1, { seed: 33 }).slice(0, 5);
    const send = (query = '') => request(t.app.http).post(`/cgm/ingest?patient=${patient}&format=nightscout${query}`).send(nightscoutJson(trace));
    await send();
    const [reading] = await stored(t, 'Observation', patient);
    expect((await send('&remove=true')).body).toMatchObject({ removed: 5 });
    expect((await request(t.app.http).get(`/fhir/Observation/${reading!.id}`)).status).toBe(410);
    const v1 = await request(t.app.http).get(`/fhir/Observation/${reading!.id}/_history/1`);
    expect(v1.status).toBe(200);
    expect(v1.body.valueQuantity.value).toBe(reading!.valueQuantity!.value);
  });
});

describe('removal needs delete access', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
  });
  afterAll(async () => {
    await t?.close();
  });

  test('a patient token with create and update but not delete may import, not remove (403, nothing removed); with delete it may', async () => {
    const { resource } = await t.app.repository.create({ resourceType: 'Patient', name: [{ family: 'Remove' }] } as Patient);
    const patient = resource.id!;
    const token = (scopes: string[]) => t.app.smart.tokens.signAccessToken({
      gid: randomUUID(), clientId: 'patient-app', sub: `Patient/${patient}`, fhirUser: `Patient/${patient}`, patient, scopes: ['openid', 'fhirUser', 'launch/patient', ...scopes],
    }).token;
    const body = nightscoutJson(makeTrace(1, { seed: 34 }).slice(0, 8));
    const send = (bearer: string, query = '') => request(t.app.http).post(`/cgm/ingest?patient=${patient}&format=nightscout${query}`).set('Authorization', `Bearer ${bearer}`).send(body);
    const writer = token(['patient/Observation.cru']);
    expect((await send(writer)).body).toMatchObject({ created: 8 });
    const refused = await send(writer, '&remove=true');
    expect(refused.status).toBe(403);
    expect(refused.body.issue[0].diagnostics).toMatch(/scopes do not allow delete on Observation/);
    expect((await send(writer, '&remove=true&dryRun=true')).status).toBe(403);
    expect((await send(token(['patient/Observation.cruds']), '&remove=true')).body).toMatchObject({ removed: 8 });
    expect((await send(writer, '&dryRun=true')).body).toMatchObject({ created: 8, unchanged: 0 });
  });
});
