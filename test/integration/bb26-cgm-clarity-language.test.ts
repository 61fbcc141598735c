/**
 * A Dexcom Clarity export in another language (German: `Zeitstempel (JJJJ-MM-TTThh:mm:ss)`,
 * `Glukosewert (mmol/l)`; the fixture is synthetic) is refused saying so, as a LibreView export in a
 * language not read is — not "cannot detect the format; give it explicitly (… dexcom-clarity …)",
 * which sends the user to a second refusal — and nothing is written.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { OperationOutcome } from '@medplum/fhirtypes';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import request from 'supertest';
import { PACKAGE_ROOT } from '../../src/paths.js';
import { startTestApp, type TestApp } from '../support/app.js';

const GERMAN = readFileSync(path.join(PACKAGE_ROOT, 'test/fixtures/bb26-cgm/clarity-german.csv'));

describe('a Dexcom Clarity export in a language not read', () => {
  let t: TestApp;
  const http = () => request(t.app.http);
  let patient: string;

  beforeAll(async () => {
    t = await startTestApp();
    const created = await http().post('/fhir/Patient').set('Content-Type', 'application/fhir+json').send({ resourceType: 'Patient', name: [{ family: 'Clarity' }] });
    patient = created.body.id as string;
  });
  afterAll(async () => {
    await t?.close();
  });

  const diagnostics = (body: OperationOutcome): string => body.issue.map((i) => i.diagnostics ?? '').join('\n');

  test('detected: refused as a Clarity export whose column names are not read, naming the English ones', async () => {
    const res = await http().post(`/cgm/ingest?patient=${patient}&tz=Europe/Berlin`).set('Content-Type', 'text/csv').send(GERMAN);
    expect(res.status).toBe(400);
    expect(res.body.resourceType).toBe('OperationOutcome');
    const text = diagnostics(res.body);
    expect(text).toMatch(/looks like a Dexcom Clarity export, but its column names are not in a language GlucoGuard reads \(English\)/);
    expect(text).toContain('"Timestamp (YYYY-MM-DDThh:mm:ss)"');
    expect(text).not.toMatch(/give it explicitly/);
  });

  test('with format=dexcom-clarity: the header refusal says the names must be English', async () => {
    const res = await http().post(`/cgm/ingest?patient=${patient}&tz=Europe/Berlin&format=dexcom-clarity`).set('Content-Type', 'text/csv').send(GERMAN);
    expect(res.status).toBe(400);
    expect(diagnostics(res.body)).toMatch(/line 1: no Dexcom Clarity header \(expected the English column names/);
  });

  test('re-saved by a spreadsheet (timestamps as 3/1/2026 0:05): the refusal names the timestamp format expected', async () => {
    const header = 'Index,Timestamp (YYYY-MM-DDThh:mm:ss),Event Type,Event Subtype,Patient Info,Device Info,Source Device ID,Glucose Value (mg/dL),Insulin Value (u),Carb Value (grams),Duration (hh:mm:ss),Glucose Rate of Change (mg/dL/min),Transmitter Time (Long Integer),Transmitter ID';
    const rows = [0, 1].map((k) => `${k + 1},3/1/2026 0:0${5 * k},EGV,,,,iOS G6,${120 + k},,,,,${1000 + 300 * k},8AB12C`);
    const res = await http().post(`/cgm/ingest?patient=${patient}&tz=Europe/Berlin`).set('Content-Type', 'text/csv').send([header, ...rows].join('\n') + '\n');
    expect(res.status).toBe(422);
    expect(diagnostics(res.body)).toMatch(/record 1 \(line 2\): invalid Timestamp \(expected YYYY-MM-DDThh:mm:ss/);
  });

  test('nothing was written', async () => {
    const res = await http().get(`/fhir/Observation?patient=Patient/${patient}`);
    expect(res.status).toBe(200);
    expect(res.body.entry ?? []).toEqual([]);
    const devices = await http().get(`/fhir/Device?patient=Patient/${patient}`);
    expect(devices.body.entry ?? []).toEqual([]);
  });
});
