/**
 * CGM ingest end to end over HTTP: a 14-day Nightscout export through `POST /cgm/ingest`, the
 * readings and `$cgm-summary` read back through `/fhir` and checked against an independent
 * computation; idempotent re-import; corrections as new versions; all-or-nothing and partial
 * imports of a file with a bad record; `$cgm-agp`; a Dexcom Clarity CSV export; stored summaries
 * replaced when a re-run computes other figures.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, Observation, OperationOutcome } from '@medplum/fhirtypes';
import express from 'express';
import request from 'supertest';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { cgmHttpRouter } from '../../src/cgm/http.js';
import { CgmIngestService } from '../../src/cgm/service.js';
import { spool } from '../../src/cgm/spool.js';
import { shapeCachedCheck } from '../../src/cgm/validate.js';
import { OPEN_ACCESS } from '../../src/fhir/access.js';
import { createLogger } from '../../src/log.js';
import { makeTrace, nightscoutJson, type TraceReading } from '../fixtures/cgm-ingest/trace.js';
import { agpOf } from '../support/agp.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { withUpstreamApp } from '../support/upstream-server.js';

const FHIR_JSON = 'application/fhir+json';
const LOINC_CGM = 'http://loinc.org|99504-3';

/** Metrics the slow, obvious way: loops over the valid mg/dL values of the trace. */
function expected(trace: TraceReading[]) {
  const values = trace.filter((r) => r.sgv >= 40).map((r) => r.sgv);
  const n = values.length;
  let sum = 0;
  for (const v of values) sum += v;
  const mean = sum / n;
  let sq = 0;
  for (const v of values) sq += (v - mean) * (v - mean);
  const sd = Math.sqrt(sq / (n - 1));
  const share = (test: (v: number) => boolean) => {
    let k = 0;
    for (const v of values) if (test(v)) k++;
    return (k / n) * 100;
  };
  const first = trace[0]!.epochMs;
  const end = trace[trace.length - 1]!.epochMs + 5 * 60_000;
  // days of the reporting period (from the first reading) with a reading, in 24 hours from its start
  const days = new Set(trace.filter((r) => r.sgv >= 40).map((r) => Math.floor((r.epochMs - first) / 86_400_000)));
  return {
    n,
    veryLow: share((v) => v < 54), low: share((v) => v >= 54 && v < 70), target: share((v) => v >= 70 && v <= 180),
    high: share((v) => v > 180 && v <= 250), veryHigh: share((v) => v > 250),
    mean, mmol: mean / 18.01559, gmi: 3.31 + 0.02392 * mean, cv: (sd / mean) * 100,
    daysOfWear: days.size, active: (n / ((end - first) / (5 * 60_000))) * 100,
  };
}

function memberValue(bundle: Bundle, loinc: string): number {
  const obs = bundle.entry!.map((e) => e.resource as Observation).find((o) => o.code?.coding?.some((c) => c.code === loinc));
  return obs!.valueQuantity!.value!;
}

describe('CGM ingest over HTTP', () => {
  let t: TestApp;
  const http = () => request(t.app.http);
  const trace = makeTrace(14);
  const file = nightscoutJson(trace);
  let patientId: string;

  const newPatient = async (family: string): Promise<string> => {
    const res = await http().post('/fhir/Patient').set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', name: [{ family }] });
    expect(res.status).toBe(201);
    return res.body.id as string;
  };
  const ingest = (patient: string, body: string, query = '') =>
    http().post(`/cgm/ingest?patient=${patient}&format=nightscout${query}`).set('Content-Type', 'application/json').send(body);
  const readingsOf = async (patient: string): Promise<Observation[]> => {
    const out: Observation[] = [];
    let url: string | undefined = `/fhir/Observation?patient=Patient/${patient}&code=${encodeURIComponent(LOINC_CGM)}&_count=1000`;
    while (url) {
      const res = await http().get(url);
      expect(res.status).toBe(200);
      out.push(...((res.body as Bundle).entry ?? []).map((e) => e.resource as Observation));
      url = (res.body as Bundle).link?.find((l) => l.relation === 'next')?.url?.replace(/^https?:\/\/[^/]+/, '');
    }
    return out;
  };

  beforeAll(async () => {
    t = await startTestApp();
    patientId = await newPatient('Rivera');
  });
  afterAll(async () => {
    await t?.close();
  });

  test('imports a 14-day Nightscout export and reports what it stored', async () => {
    const res = await ingest(patientId, file);
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({
      accepted: true, format: 'nightscout', read: trace.length, created: trace.length, unchanged: 0, corrected: 0, rejected: 0, devicesCreated: 1,
    });
  });

  test('the readings read back through /fhir as CGM IG sensor readings, error codes without a value', async () => {
    const stored = await readingsOf(patientId);
    expect(stored).toHaveLength(trace.length);
    const byTime = new Map(stored.map((o) => [Date.parse(o.effectiveDateTime!), o]));
    const sample = trace[123]!;
    const obs = byTime.get(sample.epochMs)!;
    expect(obs.meta?.profile).toContain('http://hl7.org/fhir/uv/cgm/StructureDefinition/cgm-sensor-reading-mass-per-volume');
    expect(obs.valueQuantity).toEqual({ value: sample.sgv, unit: 'mg/dl', system: 'http://unitsofmeasure.org', code: 'mg/dL' });
    expect(obs.effectiveDateTime).toMatch(/\+01:00$/);
    expect(obs.device?.reference).toMatch(/^Device\/[A-Za-z0-9-]+$/);
    const device = await http().get(`/fhir/${obs.device!.reference}`);
    expect(device.status).toBe(200);
    const error = byTime.get(trace.find((r) => r.sgv < 40)!.epochMs)!;
    expect(error.valueQuantity).toBeUndefined();
    expect(error.dataAbsentReason?.coding?.[0]?.code).toBe('error');
  });

  test('$cgm-summary agrees with an independent computation to 0.01', async () => {
    const res = await http().get(`/fhir/Patient/${patientId}/$cgm-summary`);
    expect(res.status).toBe(200);
    const bundle = res.body as Bundle;
    expect(bundle.type).toBe('collection');
    const panel = bundle.entry![0]!.resource as Observation;
    expect(panel.meta?.profile).toContain('http://hl7.org/fhir/uv/cgm/StructureDefinition/cgm-summary');
    expect(panel.hasMember).toHaveLength(7);
    const want = expected(trace);
    const tir = bundle.entry!.map((e) => e.resource as Observation).find((o) => o.code?.coding?.[0]?.code === '106793-3')!;
    const component = (code: string) => tir.component!.find((c) => c.code.coding?.[0]?.code === code)!.valueQuantity!.value!;
    expect(Math.abs(component('104642-4') - want.veryLow)).toBeLessThanOrEqual(0.01);
    expect(Math.abs(component('104641-6') - want.low)).toBeLessThanOrEqual(0.01);
    expect(Math.abs(component('97510-2') - want.target)).toBeLessThanOrEqual(0.01);
    expect(Math.abs(component('104640-8') - want.high)).toBeLessThanOrEqual(0.01);
    expect(Math.abs(component('104639-0') - want.veryHigh)).toBeLessThanOrEqual(0.01);
    expect(Math.abs(memberValue(bundle, '97507-8') - want.mean)).toBeLessThanOrEqual(0.01);
    expect(Math.abs(memberValue(bundle, '105273-7') - want.mmol)).toBeLessThanOrEqual(0.01);
    expect(Math.abs(memberValue(bundle, '97506-0') - want.gmi)).toBeLessThanOrEqual(0.01);
    expect(Math.abs(memberValue(bundle, '104638-2') - want.cv)).toBeLessThanOrEqual(0.01);
    expect(memberValue(bundle, '104636-6')).toBe(want.daysOfWear);
    expect(Math.abs(memberValue(bundle, '104637-4') - want.active)).toBeLessThanOrEqual(0.01);
  });

  test('$cgm-summary?store=true stores the panel and members once', async () => {
    const first = await http().get(`/fhir/Patient/${patientId}/$cgm-summary?store=true`);
    expect(first.status).toBe(200);
    const panel = first.body.entry[0].resource as Observation;
    expect(panel.id).toBeDefined();
    expect(panel.hasMember!.every((m) => /^Observation\/[A-Za-z0-9-]+$/.test(m.reference!))).toBe(true);
    const again = await http().get(`/fhir/Patient/${patientId}/$cgm-summary?store=true`);
    expect(again.body.entry[0].resource.id).toBe(panel.id);
    const stored = await http().get(`/fhir/Observation?patient=Patient/${patientId}&code=http://loinc.org|107931-8`);
    expect(stored.body.entry).toHaveLength(1);
  });

  test('$cgm-summary over an explicit period, and 404 when it holds no readings', async () => {
    const day = new Date(trace[2000]!.epochMs).toISOString().slice(0, 10);
    const res = await http().get(`/fhir/Patient/${patientId}/$cgm-summary?start=${day}&end=${day}`);
    expect(res.status).toBe(200);
    expect(res.body.entry[0].resource.effectivePeriod.start).toBe(day);
    const empty = await http().get(`/fhir/Patient/${patientId}/$cgm-summary?start=2001-01-01&end=2001-01-02`);
    expect(empty.status).toBe(404);
    expect(empty.body.resourceType).toBe('OperationOutcome');
    const bad = await http().get(`/fhir/Patient/${patientId}/$cgm-summary?start=yesterday`);
    expect(bad.status).toBe(400);
  });

  test('$cgm-agp returns 96 bins of percentiles for the clinician app', async () => {
    const res = await http().get(`/fhir/Patient/${patientId}/$cgm-agp`);
    expect(res.status).toBe(200);
    const agp = agpOf(res.body);
    expect(agp.bins).toHaveLength(96);
    const bin = agp.bins.find((b) => b.n > 0)!;
    expect(bin.p5).toBeLessThanOrEqual(bin.p25!);
    expect(bin.p25).toBeLessThanOrEqual(bin.p50!);
    expect(bin.p50).toBeLessThanOrEqual(bin.p75!);
    expect(bin.p75).toBeLessThanOrEqual(bin.p95!);
    expect(agp.readings).toBe(expected(trace).n);
  });

  test('re-importing the same file creates nothing new', async () => {
    const res = await ingest(patientId, file);
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ created: 0, unchanged: trace.length, corrected: 0, devicesCreated: 0 });
    expect(await readingsOf(patientId)).toHaveLength(trace.length);
  });

  test('a changed value becomes version 2; version 1 stays readable by vread', async () => {
    const changed = trace.map((r, i) => (i === 200 ? { ...r, sgv: r.sgv + 7 } : r));
    const res = await ingest(patientId, nightscoutJson(changed));
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ created: 0, corrected: 1, unchanged: trace.length - 1 });
    const obs = (await readingsOf(patientId)).find((o) => Date.parse(o.effectiveDateTime!) === trace[200]!.epochMs)!;
    expect(obs.meta?.versionId).toBe('2');
    expect(obs.valueQuantity?.value).toBe(trace[200]!.sgv + 7);
    const v1 = await http().get(`/fhir/Observation/${obs.id}/_history/1`);
    expect(v1.status).toBe(200);
    expect(v1.body.valueQuantity.value).toBe(trace[200]!.sgv);
  });

  test('a file with a bad record stores nothing and names the line; partial stores the good ones', async () => {
    const other = await newPatient('Okafor');
    const small = makeTrace(1, { seed: 7 }).slice(0, 50);
    const lines = nightscoutJson(small).split('\n');
    lines[11] = lines[11]!.replace(/"sgv":\d+/, '"sgv":-20'); // entry 11, on line 12
    const bad = lines.join('\n');
    const rejected = await ingest(other, bad);
    expect(rejected.status).toBe(422);
    const outcome = rejected.body as OperationOutcome;
    expect(outcome.resourceType).toBe('OperationOutcome');
    expect(outcome.issue.map((i) => i.diagnostics).join(' ')).toMatch(/line 12/);
    expect(await readingsOf(other)).toHaveLength(0);

    const partial = await ingest(other, bad, '&partial=true');
    expect(partial.status).toBe(200);
    expect(partial.body).toMatchObject({ accepted: true, partial: true, created: 49, rejected: 1 });
    expect(partial.body.issues[0]).toMatchObject({ kind: 'rejected', reason: 'negative-value', line: 12 });
    expect(await readingsOf(other)).toHaveLength(49);
  });

  test('a file cut short: all-or-nothing stores nothing (400); partial keeps what came before the cut and says where it stopped (200)', async () => {
    const other = await newPatient('Mensah');
    const text = nightscoutJson(makeTrace(12, { seed: 11 }).slice(0, 3000));
    const cut = text.slice(0, text.length - 30);
    const whole = await ingest(other, cut);
    expect(whole.status).toBe(400);
    expect(whole.body.issue[0].diagnostics).toMatch(/unexpected end of input/);
    expect(await readingsOf(other)).toHaveLength(0);

    const partial = await ingest(other, cut, '&partial=true');
    expect(partial.status).toBe(200);
    expect(partial.body).toMatchObject({ accepted: true, partial: true, rejected: 1 });
    const issue = (partial.body.issues as { reason: string; message: string }[]).find((i) => i.reason === 'unreadable-input');
    expect(issue?.message).toMatch(/unexpected end of input.*the rest of the source was not read/);
    const kept = await readingsOf(other);
    expect(kept.length).toBeGreaterThan(2900); // what was read before the cut, stored chunk by chunk
    expect(kept.length).toBe(partial.body.created);
  });

  test('dateOrder orders an ambiguous LibreView export (MDY or DMY); any other value is 400', async () => {
    const other = await newPatient('Osei');
    const csv = ['Device,Serial Number,Device Timestamp,Record Type,Historic Glucose mg/dL,Scan Glucose mg/dL,Notes',
      'FreeStyle Libre 2,0F1E2D3C-1111-4222-8333-444455556666,03-02-2026 08:00,0,101,,'].join('\n');
    const libre = (query: string) => http().post(`/cgm/ingest?patient=${other}&format=libreview&tz=UTC${query}`).set('Content-Type', 'text/csv').send(csv);
    const bad = await libre('&dateOrder=YMD');
    expect(bad.status).toBe(400);
    expect(bad.body.issue[0].diagnostics).toMatch(/dateOrder must be DMY or MDY/);
    expect(await readingsOf(other)).toHaveLength(0);
    const res = await libre('&dateOrder=MDY');
    expect(res.status).toBe(200);
    expect(res.body.dateOrder).toEqual({ order: 'MDY', from: 'option', ambiguous: false });
    expect((await readingsOf(other))[0]!.effectiveDateTime).toMatch(/^2026-03-02T08:00:00/);
  });

  test('a Dexcom Clarity CSV export is detected and read in the given zone; HIGH/LOW stored beyond range; the calibration a meter reading outside the metrics; the patient rows stored nowhere', async () => {
    const other = await newPatient('Lindqvist');
    const csv = readFileSync(path.join(import.meta.dirname, '../fixtures/cgm/dexcom-clarity-mgdl.csv'), 'utf8');
    const clarity = (query = '') => http().post(`/cgm/ingest?patient=${other}&tz=America/Los_Angeles${query}`).set('Content-Type', 'text/csv').send(csv);
    const res = await clarity();
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({
      // 6 EGVs and 1 calibration stored; insulin, carbs, exercise, health, device and alert events skipped
      accepted: true, format: 'dexcom-clarity', detected: true, read: 13, created: 7, skipped: 6, rejected: 0, devicesCreated: 1,
      skippedByReason: { 'unsupported-record-type': 6 }, timeZone: { zone: 'America/Los_Angeles', from: 'option' },
    });
    const stored = await readingsOf(other);
    expect(stored.map((o) => o.effectiveDateTime).sort()).toEqual([
      '2024-03-10T01:45:00-08:00', '2024-03-10T01:50:00-08:00', '2024-03-10T01:55:00-08:00',
      '2024-03-10T03:05:00-07:00', '2024-03-10T03:10:30-07:00', '2024-03-10T03:40:00-07:00',
    ]);
    const at = (time: string) => stored.find((o) => o.effectiveDateTime === time)!;
    expect(at('2024-03-10T01:45:00-08:00').valueQuantity).toMatchObject({ value: 112, code: 'mg/dL' });
    expect(at('2024-03-10T01:55:00-08:00').dataAbsentReason?.coding?.[0]?.code).toBe('positive-infinity');
    expect(at('2024-03-10T03:10:30-07:00').dataAbsentReason?.coding?.[0]?.code).toBe('negative-infinity');
    const device = await http().get(`/fhir/${stored[0]!.device!.reference}`);
    expect(device.body).toMatchObject({ serialNumber: '8AB12C', deviceName: [{ name: 'Dexcom G6' }] });
    // the calibration: a capillary meter reading (no CGM profile, no Device: the export does not name the meter)
    const meter = await http().get(`/fhir/Observation?patient=Patient/${other}&code=${encodeURIComponent('http://loinc.org|41653-7')}`);
    const calibrations = ((meter.body as Bundle).entry ?? []).map((e) => e.resource as Observation);
    expect(calibrations).toEqual([expect.objectContaining({ effectiveDateTime: '2024-03-10T03:10:00-07:00', valueQuantity: expect.objectContaining({ value: 130, code: 'mg/dL' }) })]);
    expect(calibrations[0]!.meta?.profile ?? []).toEqual([]);
    expect(calibrations[0]!.device).toBeUndefined();
    const everything = JSON.stringify([res.body, stored, device.body]);
    for (const word of ['Averyzz', 'Quillfeather', '1979-04-12', 'PhoneModelQ7']) expect(everything).not.toContain(word);
    // the LOW and the HIGH count in the summary, which says so; the calibration is not a sensor reading (6, not 7)
    const summary = await http().get(`/fhir/Patient/${other}/$cgm-summary`);
    expect(summary.status).toBe(200);
    const notes = (summary.body.entry[0].resource as Observation).note!.map((n) => n.text).join(' ');
    expect(notes).toMatch(/1 of 6 readings below/);
    expect(notes).toMatch(/1 of 6 readings above/);
    // idempotent, and the explicit format says the same
    expect((await clarity('&format=dexcom-clarity')).body).toMatchObject({ detected: false, created: 0, unchanged: 7, linked: 0 });
  });

  test('bad requests answer OperationOutcomes and store nothing', async () => {
    const unknown = await ingest('no-such-patient', file);
    expect(unknown.status).toBe(404);
    const format = await http().post(`/cgm/ingest?patient=${patientId}&format=csv-ish`).send('x');
    expect(format.status).toBe(400);
    expect(format.body.issue[0].diagnostics).toMatch(/format must be one of/);
    const noPatient = await http().post('/cgm/ingest').send(file);
    expect(noPatient.status).toBe(400);
    // a parameter the endpoint does not take (a misspelt tz would store every reading at the default zone's instants)
    const fresh = await newPatient('Lund');
    const misspelt = await http().post(`/cgm/ingest?patient=${fresh}&timezone=America/Chicago`).set('Content-Type', 'application/json').send(file);
    expect(misspelt.status).toBe(400);
    expect(misspelt.body.issue[0].expression).toEqual(['timezone']);
    expect(misspelt.body.issue[0].diagnostics).toBe('timezone is not a parameter of /cgm/ingest (it takes patient, format, tz, dateOrder, partial, remove, dryRun; tz is the IANA time zone of local timestamps)');
    expect(await readingsOf(fresh)).toHaveLength(0);
    const garbage = await http().post(`/cgm/ingest?patient=${patientId}`).set('Content-Type', 'text/plain').send('hello, world');
    expect(garbage.status).toBe(400);
    expect(garbage.body.resourceType).toBe('OperationOutcome');
    // a LibreView export whose header is in a language not read: 400 naming the languages and columns expected
    const foreign = ['Dispositivo,Numero di serie,Timestamp del dispositivo,Tipo di registrazione,Storico del glucosio mg/dL',
      'FreeStyle LibreLink,7C8D9E0F-1234-4567-89AB-CDEF01234567,13-05-2024 08:00,0,101'].join('\n');
    for (const query of ['', '&format=libreview']) {
      const res = await http().post(`/cgm/ingest?patient=${patientId}&tz=Europe/Rome${query}`).set('Content-Type', 'text/csv').send(foreign);
      expect(res.status).toBe(400);
      expect(res.body.issue[0].diagnostics).toMatch(/in a language GlucoGuard reads \(English, German, Spanish, Dutch or French\).*"Device Timestamp" and "Record Type" \(English\)/);
    }
  });
});

describe('stored $cgm-summary after the figures change', () => {
  let t: TestApp;
  const http = () => request(t.app.http);
  const trace = makeTrace(2, { seed: 5 });
  const period = `start=${new Date(trace[0]!.epochMs).toISOString()}&end=${new Date(trace[trace.length - 1]!.epochMs + 5 * 60_000).toISOString()}`;
  let patient: string;
  const store = async (): Promise<Observation[]> => {
    const res = await http().get(`/fhir/Patient/${patient}/$cgm-summary?${period}&store=true`);
    expect(res.status).toBe(200);
    return (res.body as Bundle).entry!.map((e) => e.resource as Observation);
  };
  const byCode = (obs: Observation[], code: string) => obs.find((o) => o.code?.coding?.[0]?.code === code)!;
  const storedPanels = async () => (await http().get(`/fhir/Observation?patient=Patient/${patient}&code=http://loinc.org|107931-8`)).body.entry as unknown[];

  beforeAll(async () => {
    t = await startTestApp();
    patient = (await http().post('/fhir/Patient').set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient' })).body.id as string;
    const res = await http().post(`/cgm/ingest?patient=${patient}&format=nightscout`).send(nightscoutJson(trace));
    expect(res.body).toMatchObject({ accepted: true, created: trace.length });
  });
  afterAll(async () => {
    await t?.close();
  });

  test('a re-run computing the same figures leaves the stored summary as it is (same ids, versions and issued)', async () => {
    const first = await store();
    expect(first).toHaveLength(8);
    expect(first.every((o) => o.meta?.versionId === '1')).toBe(true);
    const again = await store();
    expect(again.map((o) => [o.id, o.meta?.versionId, o.issued])).toEqual(first.map((o) => [o.id, o.meta?.versionId, o.issued]));
    expect(await storedPanels()).toHaveLength(1);
  });

  test('after readings are corrected, a re-run stores new versions of what changed (the same resources); the rest stays', async () => {
    const before = await store();
    const changed = trace.map((r, i) => (i % 10 === 0 && r.sgv >= 40 ? { ...r, sgv: Math.min(399, r.sgv + 60) } : r));
    const corrected = await http().post(`/cgm/ingest?patient=${patient}&format=nightscout`).send(nightscoutJson(changed));
    expect(corrected.body.corrected).toBeGreaterThan(0);
    const after = await store();
    expect(after.map((o) => o.id)).toEqual(before.map((o) => o.id)); // the same resources, not new ones
    const mean = byCode(after, '97507-8');
    const meanBefore = byCode(before, '97507-8');
    expect(mean.valueQuantity!.value).toBeGreaterThan(meanBefore.valueQuantity!.value!);
    expect(mean.meta?.versionId).toBe('2');
    expect(byCode(after, '107931-8').meta?.versionId).toBe('1'); // the panel's members are the same resources: unchanged
    expect(byCode(after, '104636-6').meta?.versionId).toBe('1'); // days of wear did not change
    const v1 = await http().get(`/fhir/Observation/${mean.id}/_history/1`);
    expect(v1.body.valueQuantity.value).toBe(meanBefore.valueQuantity!.value);
    const current = await http().get(`/fhir/Observation/${mean.id}`);
    expect(current.body.valueQuantity.value).toBe(mean.valueQuantity!.value);
    expect(await storedPanels()).toHaveLength(1);
  });

  test('a stored summary from older metrics (a stale figure) is replaced by the recomputed one', async () => {
    const before = await store();
    const gmi = byCode(before, '97506-0');
    const stale = { ...gmi, valueQuantity: { ...gmi.valueQuantity!, value: gmi.valueQuantity!.value! - 1.5 } };
    const put = await http().put(`/fhir/Observation/${gmi.id}`).set('Content-Type', FHIR_JSON).send(stale);
    expect(put.status).toBe(200);
    const staleVersion = Number(put.body.meta.versionId);
    const after = byCode(await store(), '97506-0');
    expect(after.id).toBe(gmi.id);
    expect(after.valueQuantity!.value).toBe(gmi.valueQuantity!.value);
    expect(Number(after.meta!.versionId)).toBe(staleVersion + 1);
  });
});

describe('CGM ingest with authentication on', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
  });
  afterAll(async () => {
    await t?.close();
  });

  test('POST /cgm/ingest without a token is 401 with a challenge', async () => {
    const res = await request(t.app.http).post('/cgm/ingest?patient=p1&format=nightscout').send('[]');
    expect(res.status).toBe(401);
    expect(res.headers['www-authenticate']).toMatch(/^Bearer/);
    expect(res.body.resourceType).toBe('OperationOutcome');
  });
});

describe('CGM ingest limits', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp();
  });
  afterAll(async () => {
    await t?.close();
  });

  test('an export over the configured limit is refused with 413 and nothing is stored', async () => {
    const app = express();
    app.use('/cgm', cgmHttpRouter({
      service: t.app.cgm.ingest, authenticate: async () => OPEN_ACCESS, mayWriteObservations: async () => true, maxBytes: 4096, logger: createLogger('silent'),
    }));
    const patient = (await request(t.app.http).post('/fhir/Patient').set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient' })).body.id as string;
    const res = await request(app).post(`/cgm/ingest?patient=${patient}&format=nightscout`).send(nightscoutJson(makeTrace(1)));
    expect(res.status).toBe(413);
    expect(res.body.resourceType).toBe('OperationOutcome');
    const stored = await request(t.app.http).get(`/fhir/Observation?patient=Patient/${patient}`);
    expect(stored.body.entry ?? []).toHaveLength(0);
  });
});

describe('large uploads are parked encrypted and read twice', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp();
  });
  afterAll(async () => {
    await t?.close();
  });

  test('spool: the bytes on disk are not the upload; reopen gives them back; release removes the file', async () => {
    const text = nightscoutJson(makeTrace(1));
    const parked = await spool((async function* () { yield Buffer.from(text); })());
    expect(parked.size).toBe(Buffer.byteLength(text));
    expect(readFileSync(parked.file).includes(Buffer.from('"sgv"'))).toBe(false);
    const chunks: Buffer[] = [];
    for await (const c of parked.reopen()) chunks.push(Buffer.from(c));
    expect(Buffer.concat(chunks).toString('utf8')).toBe(text);
    await parked.release();
    expect(existsSync(parked.file)).toBe(false);
  });

  test('an upload above the hold limit is checked whole before anything is stored', async () => {
    const service = new CgmIngestService({ repository: t.app.repository, check: shapeCachedCheck(() => []), defaultTimeZone: 'UTC', holdBytes: 1024 });
    const app = express();
    app.use('/cgm', cgmHttpRouter({ service, authenticate: async () => OPEN_ACCESS, mayWriteObservations: async () => true, logger: createLogger('silent') }));
    const patient = (await request(t.app.http).post('/fhir/Patient').set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient' })).body.id as string;
    const lines = nightscoutJson(makeTrace(1, { seed: 4 })).split('\n');
    const bad = [...lines.slice(0, 280), lines[280]!.replace(/"sgv":\d+/, '"sgv":"high-ish"'), ...lines.slice(281)].join('\n');
    const rejected = await request(app).post(`/cgm/ingest?patient=${patient}&format=nightscout`).send(bad);
    expect(rejected.status).toBe(422);
    const none = await request(t.app.http).get(`/fhir/Observation?patient=Patient/${patient}`);
    expect(none.body.entry ?? []).toHaveLength(0);
    const ok = await request(app).post(`/cgm/ingest?patient=${patient}&format=nightscout`).send(lines.join('\n'));
    expect(ok.status).toBe(200);
    expect(ok.body.created).toBe(288);
  });
});

describe('CGM ingest on the upstream repository', () => {
  const on = withUpstreamApp();

  test('import, idempotent re-import and a correction go through the upstream server', async () => {
    const http = () => request(on.t.app.http);
    const patient = (await http().post('/fhir/Patient').set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient' })).body.id as string;
    const trace = makeTrace(1, { seed: 2 }).slice(0, 120);
    const send = (body: string) => http().post(`/cgm/ingest?patient=${patient}&format=nightscout`).send(body);
    expect((await send(nightscoutJson(trace))).body).toMatchObject({ accepted: true, created: 120, devicesCreated: 1 });
    expect((await send(nightscoutJson(trace))).body).toMatchObject({ created: 0, unchanged: 120 });
    const changed = trace.map((r, i) => (i === 5 ? { ...r, sgv: r.sgv + 1 } : r));
    expect((await send(nightscoutJson(changed))).body).toMatchObject({ created: 0, unchanged: 119, corrected: 1 });
    const summary = await http().get(`/fhir/Patient/${patient}/$cgm-summary`);
    expect(summary.status).toBe(200);
    expect(memberValue(summary.body as Bundle, '97507-8')).toBeGreaterThan(0);
  });
});
