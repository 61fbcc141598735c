/**
 * `$cgm-summary` periods given as dates are the patient's local days: in `timeZone` when given,
 * else at the UTC offset the patient's readings record — not UTC days.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, Observation } from '@medplum/fhirtypes';
import request from 'supertest';
import { midnightNightscout } from '../fixtures/cgm-ingest/midnight.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { agpOf } from '../support/agp.js';

const MEAN_MGDL = '97507-8';

describe('$cgm-summary with date bounds', () => {
  let t: TestApp;
  const http = () => request(t.app.http);
  let local: string; // readings stored with −05:00
  let utc: string; // the same readings stored in UTC

  const newPatient = async (family: string): Promise<string> => {
    const res = await http().post('/fhir/Patient').set('Content-Type', 'application/fhir+json').send({ resourceType: 'Patient', name: [{ family }] });
    return res.body.id as string;
  };
  const summary = (patient: string, query: string) => http().get(`/fhir/Patient/${patient}/$cgm-summary?${query}`);
  const mean = (bundle: Bundle): number => bundle.entry!.map((e) => e.resource as Observation).find((o) => o.code.coding?.[0]?.code === MEAN_MGDL)!.valueQuantity!.value!;
  const panel = (bundle: Bundle): Observation => bundle.entry![0]!.resource as Observation;

  beforeAll(async () => {
    t = await startTestApp();
    local = await newPatient('Local');
    utc = await newPatient('Utc');
    for (const [patient, offset] of [[local, 'local'], [utc, 'utc']] as const) {
      const res = await http().post(`/cgm/ingest?patient=${patient}&format=nightscout`).set('Content-Type', 'application/json').send(midnightNightscout(offset));
      expect(res.body).toMatchObject({ accepted: true, created: 72 });
    }
  });
  afterAll(async () => {
    await t?.close();
  });

  test('a date is the local day of the readings\' own offset: 2026-01-02 in New York starts at 05:00Z', async () => {
    const res = await summary(local, 'start=2026-01-02&end=2026-01-02');
    expect(res.status).toBe(200);
    expect(mean(res.body)).toBe(200); // only the readings after local midnight
    expect(panel(res.body).effectivePeriod).toEqual({ start: '2026-01-02', end: '2026-01-02' });
    const evening = await summary(local, 'start=2026-01-01&end=2026-01-01');
    expect(mean(evening.body)).toBe(100);
  });

  test('timeZone places the dates in that zone, whatever offset the readings were stored with', async () => {
    expect(mean((await summary(utc, 'start=2026-01-02&end=2026-01-02')).body)).toBe(150); // UTC readings: the UTC day
    const res = await summary(utc, 'start=2026-01-02&end=2026-01-02&timeZone=America/New_York');
    expect(res.status).toBe(200);
    expect(mean(res.body)).toBe(200);
    expect(panel(res.body).effectivePeriod).toEqual({ start: '2026-01-02', end: '2026-01-02' });
    expect(mean((await summary(local, 'start=2026-01-02&end=2026-01-02&timeZone=UTC')).body)).toBe(150);
  });

  test('a date-time with an offset is an instant, as before', async () => {
    expect(mean((await summary(local, 'start=2026-01-02T00:00:00Z&end=2026-01-03T00:00:00Z')).body)).toBe(150);
  });

  test('an unknown timeZone is 400 naming the parameter', async () => {
    const res = await summary(local, 'start=2026-01-02&timeZone=Mars/Olympus');
    expect(res.status).toBe(400);
    expect(res.body.issue[0].expression).toEqual(['timeZone']);
  });

  test('a parameter neither operation defines is 400 naming it (a misspelt start would otherwise give the default period), or left out with Prefer: handling=lenient', async () => {
    const misspelt = await summary(local, 'startDate=2026-01-02');
    expect(misspelt.status).toBe(400);
    expect(misspelt.body.issue[0].expression).toEqual(['startDate']);
    expect(misspelt.body.issue[0].diagnostics).toBe('startDate is not a parameter of $cgm-summary (it takes start, end, timeZone, store)');
    const agp = await http().get(`/fhir/Patient/${local}/$cgm-agp?start=2026-01-02&bins=60`);
    expect(agp.status).toBe(400);
    expect(agp.body.issue[0].expression).toEqual(['bins']);
    const lenient = await http().get(`/fhir/Patient/${local}/$cgm-summary?start=2026-01-02&end=2026-01-02&startDate=2026-01-02`).set('Prefer', 'handling=lenient');
    expect(lenient.status).toBe(200);
  });

  test('$cgm-agp takes the same local days', async () => {
    const res = await http().get(`/fhir/Patient/${local}/$cgm-agp?start=2026-01-02&end=2026-01-02&bin=60`);
    expect(res.status).toBe(200);
    expect(agpOf(res.body).startTime).toBe('2026-01-02T05:00:00.000Z');
    expect(agpOf(res.body).endTime).toBe('2026-01-03T05:00:00.000Z');
  });

  test('$cgm-agp with timeZone draws readings stored in UTC at the patient\'s time of day', async () => {
    // The 100s are 21:00–23:55 in New York (02:00–04:55Z); without timeZone they are drawn in UTC.
    const hours = (body: unknown) => agpOf(body).bins.filter((b) => b.n > 0).map((b) => [b.time, b.p50]);
    const zoned = await http().get(`/fhir/Patient/${utc}/$cgm-agp?bin=60&timeZone=America/New_York`);
    expect(zoned.status).toBe(200);
    expect(hours(zoned.body)).toEqual([['00:00', 200], ['01:00', 200], ['02:00', 200], ['21:00', 100], ['22:00', 100], ['23:00', 100]]);
    const asStored = await http().get(`/fhir/Patient/${utc}/$cgm-agp?bin=60`);
    expect(hours(asStored.body)).toEqual([['02:00', 100], ['03:00', 100], ['04:00', 100], ['05:00', 200], ['06:00', 200], ['07:00', 200]]);
  });
});
