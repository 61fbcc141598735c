import { describe, expect, test } from '@jest/globals';
import type { Observation } from '@medplum/fhirtypes';
import {
  buildCgmSummary, computeAgp, computeMetrics, metricReadingsFromObservations, metricReadingsFromRecords, parsePeriod, placeByReadings, placePeriod,
  quantileType7, readCgm, toResources, ZoneOffsets, type MetricReading,
} from '../../../src/cgm/index.js';

const MIN = 60_000;
const DAY = 1440 * MIN;
const START = Date.parse('2024-05-01T00:02:30Z');

/** A deterministic multi-day 5-minute trace (LCG noise on a daily curve) with gaps and a local offset. */
function trace(days: number, seed = 42, offsetMinutes = 120): MetricReading[] {
  let s = seed;
  const rand = (): number => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  const out: MetricReading[] = [];
  for (let i = 0; i < days * 288; i++) {
    const t = START + i * 5 * MIN;
    const hour = ((t / 3_600_000) % 24);
    if (i % 997 > 960) continue; // sensor gaps
    const base = 140 + 70 * Math.sin((hour / 24) * 2 * Math.PI) + (rand() - 0.5) * 120;
    const mgdl = Math.max(40, Math.min(400, Math.round(base)));
    out.push({ epochMs: t, mgdl, offsetMinutes });
  }
  return out;
}

/** Independent reference: straightforward loops over values sorted ascending. */
function reference(readings: MetricReading[], start: number, end: number) {
  const inside = readings.filter((r) => r.epochMs >= start && r.epochMs < end);
  const values = inside.map((r) => r.mgdl).sort((a, b) => a - b);
  const n = values.length;
  let i = 0;
  const countWhile = (pred: (v: number) => boolean): number => {
    let k = 0;
    while (i < n && pred(values[i]!)) { k++; i++; }
    return k;
  };
  const veryLow = countWhile((v) => v < 54);
  const low = countWhile((v) => v <= 69);
  const target = countWhile((v) => v <= 180);
  const high = countWhile((v) => v <= 250);
  const veryHigh = n - i;
  let sum = 0, sumSq = 0;
  for (const v of values) { sum += v; sumSq += v * v; }
  const mean = sum / n;
  const sd = Math.sqrt((sumSq - n * mean * mean) / (n - 1));
  const times = inside.map((r) => r.epochMs).sort((a, b) => a - b);
  const diffs: number[] = [];
  for (let k = 1; k < times.length; k++) diffs.push(times[k]! - times[k - 1]!);
  diffs.sort((a, b) => a - b);
  const median = diffs.length % 2 ? diffs[(diffs.length - 1) / 2]! : (diffs[diffs.length / 2 - 1]! + diffs[diffs.length / 2]!) / 2;
  // days of the reporting period with a reading, counted in 24 hours from its start (at most its length)
  const days = new Set(inside.map((r) => Math.floor((r.epochMs - start) / (1440 * MIN))));
  const pct = (k: number): number => (100 * k) / n;
  return {
    veryLow: pct(veryLow), low: pct(low), target: pct(target), high: pct(high), veryHigh: pct(veryHigh),
    mean, mmol: mean / 18.01559, gmi: 3.31 + 0.02392 * mean, cv: (100 * sd) / mean, days: days.size,
    active: Math.min(100, (100 * n) / ((end - start) / median)), n,
  };
}

describe('CGM metrics', () => {
  const readings = trace(20);

  test('default period is the last 14 days of data and agrees with an independent computation to 0.01', () => {
    const m = computeMetrics(readings)!;
    const last = readings[readings.length - 1]!.epochMs;
    expect(m.end).toBe(last + 5 * MIN);
    expect(m.start).toBe(m.end - 14 * DAY);
    const ref = reference(readings, m.start, m.end);
    expect(m.readings).toBe(ref.n);
    expect(m.timeInRanges.veryLow).toBeCloseTo(ref.veryLow, 2);
    expect(m.timeInRanges.low).toBeCloseTo(ref.low, 2);
    expect(m.timeInRanges.target).toBeCloseTo(ref.target, 2);
    expect(m.timeInRanges.high).toBeCloseTo(ref.high, 2);
    expect(m.timeInRanges.veryHigh).toBeCloseTo(ref.veryHigh, 2);
    expect(m.meanMgdl).toBeCloseTo(ref.mean, 2);
    expect(m.meanMmol).toBeCloseTo(ref.mmol, 2);
    expect(m.gmi).toBeCloseTo(ref.gmi, 2);
    expect(m.cv).toBeCloseTo(ref.cv, 2);
    expect(m.daysOfWear).toBe(ref.days);
    expect(m.sensorActivePercent).toBeCloseTo(ref.active, 2);
    expect(m.periodDays).toBe(14);
    // All five ranges are populated by this trace, so every boundary is exercised.
    expect(Object.values(m.timeInRanges).every((v) => v > 0)).toBe(true);
  });

  test('an explicit period is honoured', () => {
    const start = Date.parse('2024-05-03T00:00:00Z');
    const end = Date.parse('2024-05-10T00:00:00Z');
    const m = computeMetrics(readings, { start, end })!;
    const ref = reference(readings, start, end);
    expect([m.timeInRanges.target, m.meanMgdl, m.cv, m.sensorActivePercent, m.daysOfWear])
      .toEqual([ref.target, ref.mean, ref.cv, ref.active, ref.days].map((v, k) => (k === 4 ? v : expect.closeTo(v, 2))));
    expect(m.warnings).toEqual([expect.stringMatching(/only 7 days/)]);
  });

  test('range boundaries: 54 is low, 69/70 split low and target, 180 is target, 181 high, 250 high, 251 very high', () => {
    const values = [53, 54, 69, 70, 180, 181, 250, 251];
    const m = computeMetrics(values.map((mgdl, k) => ({ epochMs: START + k * 5 * MIN, mgdl })))!;
    expect(m.timeInRanges).toEqual({ veryLow: 12.5, low: 25, target: 25, high: 25, veryHigh: 12.5 });
  });

  test('too little data gets both sufficiency warnings', () => {
    const sparse = trace(3).filter((r) => r.epochMs < START + DAY); // one day of wear in a three-day period
    const m = computeMetrics(sparse, { start: START, end: START + 3 * DAY })!;
    expect(m.sensorActivePercent).toBeLessThan(70);
    expect(m.warnings).toHaveLength(2);
  });

  test('no readings → undefined', () => {
    expect(computeMetrics([])).toBeUndefined();
  });

  test('readings from stored Observations use the value, unit and the offset in effectiveDateTime', () => {
    const r = metricReadingsFromObservations([
      { resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '105272-9' }] }, effectiveDateTime: '2024-05-01T08:00:00+02:00', valueQuantity: { value: 5.5, code: 'mmol/L' } },
      { resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] }, effectiveDateTime: '2024-05-01T08:05:00+02:00', dataAbsentReason: { text: 'x' } },
      { resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '41653-7' }] }, effectiveDateTime: '2024-05-01T08:05:00+02:00', valueQuantity: { value: 90, code: 'mg/dL' } },
    ]);
    expect(r).toEqual([{ epochMs: Date.parse('2024-05-01T06:00:00Z'), mgdl: 5.5 * 18.01559, mmolL: 5.5, offsetMinutes: 120 }]);
  });
});

/** Stored readings as $cgm-summary sees them: parse an export, convert to Observations, read them back. */
async function storedReadings(text: string, format: 'libreview' | 'nightscout' | 'dexcom'): Promise<MetricReading[]> {
  const { records } = await readCgm({ text }, { format, timeZone: 'UTC', now: () => Date.parse('2027-01-01T00:00:00Z') });
  const observations = toResources(records, { patient: 'Patient/p1' }).map((e) => e.resource).filter((r): r is Observation => r.resourceType === 'Observation');
  return metricReadingsFromObservations(observations);
}

const reading = (code: string, at: string, body: Partial<Observation>): Observation => ({
  resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code }] }, effectiveDateTime: at, ...body,
});
const absent = (code: string): Partial<Observation> => ({ dataAbsentReason: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/data-absent-reason', code }] } });

describe('HIGH/LOW readings in the consensus metrics', () => {
  const LIBRE_HILO = [
    'Device,Serial Number,Device Timestamp,Record Type,Historic Glucose mg/dL,Scan Glucose mg/dL',
    'FSL,HL1,2026-11-07 08:00,0,120,',
    'FSL,HL1,2026-11-07 08:15,0,HI,',
    'FSL,HL1,2026-11-07 08:30,0,LO,',
    'FSL,HL1,2026-11-07 08:45,0,LO,',
  ].join('\n');

  test('a LO reading counts as very low and a HI as very high (LibreView 120, HI, LO, LO: 50 % very low, not 100 % in target)', async () => {
    const m = computeMetrics(await storedReadings(LIBRE_HILO, 'libreview'))!;
    expect(m.timeInRanges).toEqual({ veryLow: 50, low: 0, target: 25, high: 0, veryHigh: 25 });
    expect([m.readings, m.belowRange, m.aboveRange]).toEqual([4, 2, 1]);
  });

  test('mean, GMI, SD and CV take LOW as 40 and HIGH as 400 mg/dL', async () => {
    const m = computeMetrics(await storedReadings(LIBRE_HILO, 'libreview'))!;
    const values = [120, 400, 40, 40];
    const mean = 150;
    const sd = Math.sqrt(values.reduce((a, v) => a + (v - mean) ** 2, 0) / 3);
    expect(m.meanMgdl).toBe(150);
    expect(m.sdMgdl).toBeCloseTo(sd, 2);
    expect(m.cv).toBeCloseTo((100 * sd) / mean, 2);
    expect(m.gmi).toBeCloseTo(3.31 + 0.02392 * mean, 2);
  });

  test('HIGH/LOW readings count toward readings, days of wear and sensor activity', async () => {
    const m = computeMetrics(await storedReadings(LIBRE_HILO, 'libreview'))!;
    expect(m.samplingIntervalMs).toBe(15 * MIN);
    expect(m.sensorActivePercent).toBe(100);
    expect(m.daysOfWear).toBe(1);
    // A day of only LOW readings is still a day with data, not "no readings in the period".
    const lows = computeMetrics([{ epochMs: START, mgdl: -Infinity }, { epochMs: START + 5 * MIN, mgdl: -Infinity }])!;
    expect(lows.timeInRanges.veryLow).toBe(100);
    expect(lows.meanMgdl).toBe(40);
  });

  test('Dexcom status high/low is HIGH/LOW', async () => {
    const egvs = JSON.stringify({ records: [
      { systemTime: '2026-11-07T08:00:00', displayTime: '2026-11-07T08:00:00', value: 120, status: null, unit: 'mg/dL', transmitterId: 'T1' },
      { systemTime: '2026-11-07T08:05:00', displayTime: '2026-11-07T08:05:00', value: null, status: 'high', unit: 'mg/dL', transmitterId: 'T1' },
      { systemTime: '2026-11-07T08:10:00', displayTime: '2026-11-07T08:10:00', value: null, status: 'low', unit: 'mg/dL', transmitterId: 'T1' },
      { systemTime: '2026-11-07T08:15:00', displayTime: '2026-11-07T08:15:00', value: 100, status: null, unit: 'mg/dL', transmitterId: 'T1' },
    ] });
    const m = computeMetrics(await storedReadings(egvs, 'dexcom'))!;
    expect(m.timeInRanges).toEqual({ veryLow: 25, low: 0, target: 50, high: 0, veryHigh: 25 });
  });

  test('Nightscout sgv 39 is LOW; a sensor error code (sgv 5) is neither low nor a reading', async () => {
    const entries = JSON.stringify([
      { type: 'sgv', sgv: 120, date: Date.parse('2026-11-07T08:00:00Z'), device: 'xDrip' },
      { type: 'sgv', sgv: 39, date: Date.parse('2026-11-07T08:05:00Z'), device: 'xDrip' },
      { type: 'sgv', sgv: 5, date: Date.parse('2026-11-07T08:10:00Z'), device: 'xDrip' },
    ]);
    const m = computeMetrics(await storedReadings(entries, 'nightscout'))!;
    expect(m.readings).toBe(2);
    expect(m.timeInRanges).toEqual({ veryLow: 50, low: 0, target: 50, high: 0, veryHigh: 0 });
  });

  test('only negative-/positive-infinity mean LOW/HIGH: error, unknown and a text-only reason are not readings', () => {
    const r = metricReadingsFromObservations([
      reading('99504-3', '2026-11-07T08:00:00Z', absent('negative-infinity')),
      reading('99504-3', '2026-11-07T08:05:00Z', absent('positive-infinity')),
      reading('99504-3', '2026-11-07T08:10:00Z', absent('error')),
      reading('99504-3', '2026-11-07T08:15:00Z', absent('unknown')),
      reading('99504-3', '2026-11-07T08:20:00Z', { dataAbsentReason: { text: 'LOW' } }),
      reading('41653-7', '2026-11-07T08:25:00Z', absent('negative-infinity')), // a meter reading
      { ...reading('99504-3', '2026-11-07T08:30:00Z', absent('negative-infinity')), status: 'entered-in-error' },
    ]);
    expect(r.map((x) => x.mgdl)).toEqual([-Infinity, Infinity]);
  });

  test('parsed records give the same inputs as the stored Observations', async () => {
    const { records } = await readCgm({ text: LIBRE_HILO }, { format: 'libreview', timeZone: 'UTC', now: () => Date.parse('2027-01-01T00:00:00Z') });
    // the sensor each reading came from is keyed differently by design (the file's device serial,
    // the stored Device reference: src/cgm/readings.ts); one sensor either way, and the rest the same
    const parsed = metricReadingsFromRecords(records);
    const stored = await storedReadings(LIBRE_HILO, 'libreview');
    expect(new Set(parsed.map((r) => r.device)).size).toBe(1);
    expect(new Set(stored.map((r) => r.device)).size).toBe(1);
    expect(parsed.map(({ device: _, ...r }) => r)).toEqual(stored.map(({ device: _, ...r }) => r));
  });

  test('the cgm-summary panel says how HIGH/LOW readings were counted', async () => {
    const { summary } = buildCgmSummary(computeMetrics(await storedReadings(LIBRE_HILO, 'libreview'))!, { patient: 'Patient/p1' });
    const notes = summary.note!.map((n) => n.text);
    expect(notes).toContainEqual(expect.stringMatching(/^Sensor range: 2 of 4 readings below .*\(LOW\).*very low.*40 mg\/dL/));
    expect(notes).toContainEqual(expect.stringMatching(/^Sensor range: 1 of 4 readings above .*\(HIGH\).*very high.*400 mg\/dL/));
    const plain = buildCgmSummary(computeMetrics([{ epochMs: START, mgdl: 120 }, { epochMs: START + 5 * MIN, mgdl: 130 }])!, { patient: 'Patient/p1' });
    expect((plain.summary.note ?? []).some((n) => n.text?.startsWith('Sensor range'))).toBe(false);
  });

  test('the AGP draws LOW at 40 and HIGH at 400 mg/dL', () => {
    const agp = computeAgp([
      { epochMs: START, mgdl: -Infinity }, { epochMs: START + DAY, mgdl: Infinity }, { epochMs: START + 2 * DAY, mgdl: 100 },
    ], { binMinutes: 60 })!;
    const bin = agp.bins[0]!;
    expect([agp.readings, bin.n, bin.p50, bin.mean]).toEqual([3, 3, 100, 180]);
    expect(bin.p5).toBeCloseTo(46, 6);
    expect(bin.p95).toBeCloseTo(370, 6);
  });
});

describe('time in ranges in mmol/L', () => {
  const obs = (values: number[], unit: 'mmol/L' | 'mg/dL'): Observation[] => values.map((value, k) =>
    reading(unit === 'mmol/L' ? '105272-9' : '99504-3', new Date(START + k * 5 * MIN).toISOString(), { valueQuantity: { value, code: unit } }));

  test('the consensus mmol/L cut-offs apply to mmol/L readings (3.0, 3.9, 10.0, 13.9, 2.9, 14.0, 5.5, 7.2: target 50 %, very high 12.5 %)', () => {
    const m = computeMetrics(metricReadingsFromObservations(obs([3.0, 3.9, 10.0, 13.9, 2.9, 14.0, 5.5, 7.2], 'mmol/L')))!;
    expect(m.timeInRanges).toEqual({ veryLow: 12.5, low: 12.5, target: 50, high: 12.5, veryHigh: 12.5 });
  });

  test('mmol/L boundaries: 2.9 very low, 3.0/3.8 low, 3.9/10.0 target, 10.1/13.9 high, 14.0 very high', () => {
    const m = computeMetrics(metricReadingsFromObservations(obs([2.9, 3.0, 3.8, 3.9, 10.0, 10.1, 13.9, 14.0], 'mmol/L')))!;
    expect(m.timeInRanges).toEqual({ veryLow: 12.5, low: 25, target: 25, high: 25, veryHigh: 12.5 });
  });

  test('mg/dL boundaries from stored Observations: 53 very low, 54/69 low, 70/180 target, 181/250 high, 251 very high', () => {
    const m = computeMetrics(metricReadingsFromObservations(obs([53, 54, 69, 70, 180, 181, 250, 251], 'mg/dL')))!;
    expect(m.timeInRanges).toEqual({ veryLow: 12.5, low: 25, target: 25, high: 25, veryHigh: 12.5 });
  });

  test('a LibreView mmol/L export (decimal comma) is binned on the mmol/L scale end to end', async () => {
    const csv = [
      'Device;Serial Number;Device Timestamp;Record Type;Historic Glucose mmol/L;Scan Glucose mmol/L',
      ...['3,0', '3,9', '10,0', '13,9', '2,9', '14,0', '5,5', '7,2'].map((v, k) => `FSL;M1;07-11-2026 08:${String(k * 5).padStart(2, '0')};0;${v};`),
    ].join('\n');
    const m = computeMetrics(await storedReadings(csv, 'libreview'))!;
    expect(m.timeInRanges).toEqual({ veryLow: 12.5, low: 12.5, target: 50, high: 12.5, veryHigh: 12.5 });
    // mean and the other statistics stay in mg/dL from the exact conversion
    expect(m.meanMgdl).toBeCloseTo(((3.0 + 3.9 + 10.0 + 13.9 + 2.9 + 14.0 + 5.5 + 7.2) / 8) * 18.01559, 2);
  });
});

describe('AGP', () => {
  test('quantile type 7 matches R on a small vector', () => {
    const x = [1, 2, 3, 4, 10];
    expect(quantileType7(x, 0.95)).toBeCloseTo(8.8, 10); // R: quantile(c(1,2,3,4,10), .95) = 8.8
    expect(quantileType7(x, 0.25)).toBe(2);
    expect(quantileType7([7], 0.05)).toBe(7);
  });

  test('per 15-minute local time-of-day bin, percentiles agree with a straightforward type-7 computation', () => {
    const readings = trace(20);
    const agp = computeAgp(readings)!;
    expect(agp.bins).toHaveLength(96);
    // R type 7, 1-based: h = (n − 1)p + 1; x[⌊h⌋] + (h − ⌊h⌋)(x[⌊h⌋+1] − x[⌊h⌋])
    const r7 = (sorted: number[], p: number): number => {
      const h = (sorted.length - 1) * p + 1;
      const j = Math.floor(h);
      const lower = sorted[j - 1]!;
      const upper = j < sorted.length ? sorted[j]! : lower;
      return lower + (h - j) * (upper - lower);
    };
    for (const bin of agp.bins) {
      const values: number[] = [];
      for (const r of readings) {
        if (r.epochMs < agp.start || r.epochMs >= agp.end) continue;
        const local = new Date(r.epochMs + 120 * MIN);
        const minute = local.getUTCHours() * 60 + local.getUTCMinutes();
        if (minute >= bin.minute && minute < bin.minute + 15) values.push(r.mgdl);
      }
      values.sort((a, b) => a - b);
      expect(bin.n).toBe(values.length);
      expect(bin.p5).toBeCloseTo(r7(values, 0.05), 2);
      expect(bin.p25).toBeCloseTo(r7(values, 0.25), 2);
      expect(bin.p50).toBeCloseTo(r7(values, 0.5), 2);
      expect(bin.p75).toBeCloseTo(r7(values, 0.75), 2);
      expect(bin.p95).toBeCloseTo(r7(values, 0.95), 2);
    }
    expect(agp.bins[8]!.time).toBe('02:00');
  });

  test('bin width is configurable and must divide the day', () => {
    expect(computeAgp(trace(2), { binMinutes: 60 })!.bins).toHaveLength(24);
    expect(() => computeAgp(trace(2), { binMinutes: 7 })).toThrow(RangeError);
  });
});

describe('period bounds given as dates are local days', () => {
  const H = 3_600_000;
  // Readings at 23:30 and 00:30 local in New York (−05:00), around the start of 2026-01-02.
  const around = [Date.parse('2026-01-02T04:30:00Z'), Date.parse('2026-01-02T05:30:00Z')].map((epochMs) => ({ epochMs, mgdl: 100, offsetMinutes: -300 }));

  test('a date-only start is local midnight and a date-only end the next local midnight, at the readings\' offset', () => {
    const period = placePeriod(parsePeriod({ start: '2026-01-02', end: '2026-01-02' }), placeByReadings(around));
    expect(period).toEqual({ start: Date.parse('2026-01-02T05:00:00Z'), end: Date.parse('2026-01-03T05:00:00Z'), startDate: '2026-01-02', endDate: '2026-01-02' });
    const m = computeMetrics(around, period)!;
    expect(m.readings).toBe(1); // 23:30 local on 2026-01-01 is the day before
    expect([m.startDate, m.endDate]).toEqual(['2026-01-02', '2026-01-02']);
  });

  test('in a named zone a DST day is 23 or 25 hours long', () => {
    const zone = new ZoneOffsets('America/New_York');
    const fallBack = placePeriod(parsePeriod({ start: '2026-11-01', end: '2026-11-01' }), (w) => zone.resolve(w).epochMs);
    expect((fallBack.end! - fallBack.start!) / H).toBe(25);
    const springForward = placePeriod(parsePeriod({ start: '2026-03-08', end: '2026-03-08' }), (w) => zone.resolve(w).epochMs);
    expect((springForward.end! - springForward.start!) / H).toBe(23);
  });

  test('a date-time with an offset is an instant; bounds out of order are refused naming end', () => {
    expect(placePeriod(parsePeriod({ start: '2026-01-02T00:00:00Z' }), placeByReadings(around))).toEqual({ start: Date.parse('2026-01-02T00:00:00Z') });
    expect(() => parsePeriod({ start: '2026-01-03', end: '2026-01-02' })).toThrow(/end must be after start/);
    expect(() => parsePeriod({ start: '2026-01-32' })).toThrow(/start must be a date/);
  });
});
