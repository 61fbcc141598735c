/**
 * The default `$cgm-summary` / `$cgm-agp` period ("the last 14 days of data") when the sensor was
 * off at the start of those 14 days: the period is still 14 days, ending one interval after the last
 * reading, and the gap counts as time without data. Found with a real LibreView export (a year of
 * data, a 16-hour gap at the start of the last 14 days): the period began at the first reading after
 * the gap, so it read "13.3 days" with a data-sufficiency warning and 97.79 % sensor active instead of
 * 92.88 %.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, Observation } from '@medplum/fhirtypes';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { agpOf } from '../support/agp.js';

const MIN = 60_000;
const DAY = 1440 * MIN;
const T0 = Date.parse('2026-02-01T00:00:00Z');
const SENSOR_ACTIVE = '104637-4';

/** Nightscout entries every 15 minutes from `from` on, `count` of them. */
function entries(from: number, count: number): object[] {
  return Array.from({ length: count }, (_, k) => {
    const date = from + k * 15 * MIN;
    return { type: 'sgv', sgv: 100 + (k % 40), date, dateString: new Date(date).toISOString(), device: 'libre-bridge' };
  });
}

describe('the default period after a sensor gap', () => {
  let t: TestApp;
  const http = () => request(t.app.http);
  let patient: string;
  // A day of readings, two and a half days without, then 1,296 readings (13.5 days) from day 3.5:
  // the last is at day 17 − 15 min, so the default period is day 3 to day 17, the first half day a gap.
  const later = entries(T0 + 3.5 * DAY, 1296);

  beforeAll(async () => {
    t = await startTestApp();
    const created = await http().post('/fhir/Patient').set('Content-Type', 'application/fhir+json').send({ resourceType: 'Patient', name: [{ family: 'Gap' }] });
    patient = created.body.id as string;
    const body = JSON.stringify([...entries(T0, 96), ...later]);
    const res = await http().post(`/cgm/ingest?patient=${patient}&format=nightscout`).set('Content-Type', 'application/json').send(body);
    expect(res.body).toMatchObject({ accepted: true, created: 96 + 1296 });
  }, 120_000);
  afterAll(async () => {
    await t?.close();
  });

  test('$cgm-summary: 14 days, the gap at the start not covered, no sufficiency warning', async () => {
    const res = await http().get(`/fhir/Patient/${patient}/$cgm-summary`);
    expect(res.status).toBe(200);
    const members = (res.body as Bundle).entry!.map((e) => e.resource as Observation);
    const active = members.find((o) => o.code.coding?.[0]?.code === SENSOR_ACTIVE)!.valueQuantity!.value!;
    // covered: each reading one 15-minute interval; the period: 14 days
    const expected = ((later.length * 15 * MIN) / (14 * DAY)) * 100;
    expect(active).toBeCloseTo(expected, 2);
    expect(members[0]!.note ?? []).toEqual([]);
  });

  test('$cgm-agp: the same 14 days', async () => {
    const res = await http().get(`/fhir/Patient/${patient}/$cgm-agp`);
    expect(res.status).toBe(200);
    expect(agpOf(res.body)).toMatchObject({
      readings: later.length,
      startTime: new Date(T0 + 3 * DAY).toISOString(),
      endTime: new Date(T0 + 17 * DAY).toISOString(),
    });
  });
});
