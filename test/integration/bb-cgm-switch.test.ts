/**
 * Black-box (session bb-cgm): a patient who switched from a 15-minute sensor (a LibreView export,
 * French account) to a 5-minute one (the Dexcom API, v2 response) in the reporting period, both
 * imported over `POST /cgm/ingest` with the format detected. `$cgm-summary` weighs each week by
 * its own sensor's sampling interval: both weeks are fully covered, and each is half the time.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, Observation } from '@medplum/fhirtypes';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';

const MIN = 60_000;
const DAY = 1440 * MIN;
const T0 = Date.parse('2026-03-01T00:00:00Z');

/** A French LibreView export (semicolons, as Excel writes it in France): 7 days of historic readings every 15 min, 100 mg/dL, in UTC. */
function libreViewWeek(): string {
  const lines = ["Appareil;Numéro de série;Horodatage de l'appareil;Type d'enregistrement;Historique de la glycémie mg/dL;Numérisation de la glycémie mg/dL;Glycémie par bandelette mg/dL"];
  for (let t = T0; t < T0 + 7 * DAY; t += 15 * MIN) {
    const d = new Date(t);
    const stamp = `${String(d.getUTCDate()).padStart(2, '0')}-${String(d.getUTCMonth() + 1).padStart(2, '0')}-${d.getUTCFullYear()} ${d.toISOString().slice(11, 16)}`;
    lines.push(`FreeStyle Libre 2;LIBRE-SERIAL-1;${stamp};0;100;;`);
  }
  return lines.join('\r\n');
}

/** A Dexcom API v2 egvs response for the next 7 days: every 5 min, 200 mg/dL. */
function dexcomV2Week(): string {
  const egvs = [];
  for (let t = T0 + 7 * DAY; t < T0 + 14 * DAY; t += 5 * MIN) {
    const time = new Date(t).toISOString().slice(0, 19);
    egvs.push({ systemTime: time, displayTime: time, value: 200, realtimeValue: 200, smoothedValue: null, status: null, trend: 'flat', trendRate: 0 });
  }
  return JSON.stringify({ unit: 'mg/dL', rateUnit: 'mg/dL/min', egvs });
}

describe('a sensor change in the reporting period (15-minute LibreView, then 5-minute Dexcom)', () => {
  let t: TestApp;
  let patient: string;
  const http = () => request(t.app.http);

  beforeAll(async () => {
    t = await startTestApp();
    const res = await http().post('/fhir/Patient').set('Content-Type', 'application/fhir+json').send({ resourceType: 'Patient', name: [{ family: 'Switch' }] });
    patient = res.body.id as string;
  });
  afterAll(async () => {
    await t?.close();
  });

  test('both exports are detected and stored', async () => {
    const libre = await http().post(`/cgm/ingest?patient=${patient}&tz=UTC`).set('Content-Type', 'text/csv').send(libreViewWeek());
    expect(libre.status).toBe(200);
    expect(libre.body).toMatchObject({ format: 'libreview', detected: true, created: 7 * 96, rejected: 0 });
    const dexcom = await http().post(`/cgm/ingest?patient=${patient}`).set('Content-Type', 'application/json').send(dexcomV2Week());
    expect(dexcom.status).toBe(200);
    expect(dexcom.body).toMatchObject({ format: 'dexcom', detected: true, created: 7 * 288, rejected: 0 });
  });

  test('$cgm-summary: sensor active 100 %, each week half the time (mean 150, not 175)', async () => {
    const res = await http().get(`/fhir/Patient/${patient}/$cgm-summary?start=2026-03-01T00:00:00Z&end=2026-03-15T00:00:00Z`);
    expect(res.status).toBe(200);
    const members = (res.body as Bundle).entry!.map((e) => e.resource as Observation);
    const value = (code: string) => members.find((o) => o.code.coding?.[0]?.code === code)!.valueQuantity!.value;
    expect(value('97507-8')).toBe(150); // mean glucose mg/dL
    expect(value('104637-4')).toBe(100); // sensor active %
    expect(value('104636-6')).toBe(14); // days of wear
    expect((members[0]!.note ?? []).map((n) => n.text)).toEqual([]); // no data-sufficiency warning
  });
});
