/**
 * The consensus CGM metrics against an independent reference written from the sources, not from
 * src/cgm/metrics.ts (nothing of the product's metric code is imported below except what is
 * compared):
 *
 * - International Consensus on Time in Range (Battelino et al., Diabetes Care 2019;42:1593, Table 1):
 *   ranges <54, 54–69, 70–180, 181–250, >250 mg/dL and <3.0, 3.0–3.8, 3.9–10.0, 10.1–13.9, >13.9 mmol/L,
 *   "% of readings and time"; 14 days, 70 % of data from 14 days; CV = SD / mean.
 * - GMI (Bergenstal et al., Diabetes Care 2018;41:2275): GMI (%) = 3.31 + 0.02392 × mean mg/dL.
 * - AGP: 5/25/50/75/95th percentiles by local time of day (R quantile type 7).
 *
 * Readings come in as stored Observations (CGM mg/dL and mmol/L, HIGH/LOW as dataAbsentReason,
 * sensor errors, and meter readings that must not count) and go through the same path as
 * `$cgm-summary`. The reference weights each reading by the time it stands for (to the next later
 * reading, at most the sampling interval of the sensor that took it; docs/cgm-metrics.md "Time, not
 * readings"); on a regular trace that is the plain reading count, which is checked separately.
 */
import { describe, expect, test } from '@jest/globals';
import fc from 'fast-check';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { Observation, StructureDefinition } from '@medplum/fhirtypes';
import { buildCgmSummary, computeAgp, computeMetrics, metricReadingsFromObservations, parsePeriod, placePeriod, ZoneOffsets } from '../../../src/cgm/index.js';
import { inZone } from '../../../src/cgm/operations.js';
import { PROFILES_DIR } from '../../../src/paths.js';

const MIN = 60_000;
const DAY = 1440 * MIN;
const LOINC = 'http://loinc.org';
const DAR = 'http://terminology.hl7.org/CodeSystem/data-absent-reason';
/** Tidepool's molar mass (180.1559 g/mol); the IG and the consensus name no factor (see the docs). */
const MGDL_PER_MMOL = 18.01559;

// ---------------------------------------------------------------------------------------------
// Stored readings
// ---------------------------------------------------------------------------------------------

type Kind = 'mgdl' | 'mmol' | 'low' | 'high' | 'error' | 'meter-mgdl' | 'meter-mmol';
/** `device`: the Device the stored reading references (none when absent). */
interface Spec { t: number; kind: Kind; value: number; offset: number; device?: string }

function iso(t: number, offsetMinutes: number): string {
  const local = new Date(t + offsetMinutes * MIN).toISOString().slice(0, 19);
  const sign = offsetMinutes < 0 ? '-' : '+';
  const a = Math.abs(offsetMinutes);
  return `${local}${sign}${String(Math.floor(a / 60)).padStart(2, '0')}:${String(a % 60).padStart(2, '0')}`;
}

function observation(s: Spec): Observation {
  const base = {
    resourceType: 'Observation' as const, status: 'final' as const, effectiveDateTime: iso(s.t, s.offset),
    ...(s.device ? { device: { reference: s.device } } : {}),
  };
  const code = (c: string) => ({ coding: [{ system: LOINC, code: c }] });
  const absent = (c: string) => ({ dataAbsentReason: { coding: [{ system: DAR, code: c }] } });
  switch (s.kind) {
    case 'mgdl': return { ...base, code: code('99504-3'), valueQuantity: { value: s.value, unit: 'mg/dl', system: 'http://unitsofmeasure.org', code: 'mg/dL' } };
    case 'mmol': return { ...base, code: code('105272-9'), valueQuantity: { value: s.value, unit: 'mmol/l', system: 'http://unitsofmeasure.org', code: 'mmol/L' } };
    case 'low': return { ...base, code: code('99504-3'), ...absent('negative-infinity') };
    case 'high': return { ...base, code: code('99504-3'), ...absent('positive-infinity') };
    case 'error': return { ...base, code: code('99504-3'), ...absent('error') };
    // Session 22: strips and calibrations are meter Observations, LOINC 41653-7 / 14743-9.
    case 'meter-mgdl': return { ...base, code: code('41653-7'), valueQuantity: { value: s.value, code: 'mg/dL' } };
    case 'meter-mmol': return { ...base, code: code('14743-9'), valueQuantity: { value: s.value, code: 'mmol/L' } };
  }
}

// ---------------------------------------------------------------------------------------------
// The reference
// ---------------------------------------------------------------------------------------------

interface RefReading { t: number; offset: number; stat: number; range: number; device: string }

/** Consensus range, 0 very low … 4 very high, on the scale the reading was measured in. */
function consensusRange(s: Spec): number {
  if (s.kind === 'low') return 0; // below the sensor's range, so below 54 mg/dL
  if (s.kind === 'high') return 4; // above the sensor's range, so above 250 mg/dL
  const v = s.value;
  if (s.kind === 'mmol') {
    if (v < 3.0) return 0;
    if (v >= 3.0 && v < 3.9) return 1;
    if (v >= 3.9 && v <= 10.0) return 2;
    if (v > 10.0 && v <= 13.9) return 3;
    return 4;
  }
  if (v < 54) return 0;
  if (v >= 54 && v < 70) return 1;
  if (v >= 70 && v <= 180) return 2;
  if (v > 180 && v <= 250) return 3;
  return 4;
}

/** The readings that count: CGM sensor readings with a value, and HIGH/LOW (at 400 / 40 mg/dL). */
function refReadings(specs: Spec[]): RefReading[] {
  const out: RefReading[] = [];
  for (const s of specs) {
    if (s.kind === 'error' || s.kind === 'meter-mgdl' || s.kind === 'meter-mmol') continue;
    const stat = s.kind === 'low' ? 40 : s.kind === 'high' ? 400 : s.kind === 'mmol' ? s.value * MGDL_PER_MMOL : s.value;
    out.push({ t: s.t, offset: s.offset, stat, range: consensusRange(s), device: s.device ?? '' });
  }
  return out;
}

function median(xs: number[]): number {
  const v = [...xs].sort((a, b) => a - b);
  if (v.length === 0) return 0;
  return v.length % 2 ? v[(v.length - 1) / 2]! : (v[v.length / 2 - 1]! + v[v.length / 2]!) / 2;
}

/**
 * The sampling interval: the most common gap to the minute (gaps under 30 s left out), as the
 * longest gap of that minute, ties to the longer; else the median gap between distinct instants.
 */
function nominalGap(rs: { t: number }[]): number {
  const times = rs.map((r) => r.t).sort((a, b) => a - b);
  const gaps = times.slice(1).map((t, k) => t - times[k]!);
  const byMinute: Record<number, number[]> = {};
  for (const g of gaps.filter((x) => x >= 30_000)) (byMinute[Math.round(g / MIN)] ??= []).push(g);
  const minutes = Object.keys(byMinute).map(Number).sort((a, b) => byMinute[b]!.length - byMinute[a]!.length || b - a);
  if (minutes.length) return Math.max(...byMinute[minutes[0]!]!);
  return median(gaps.filter((g) => g > 0));
}

function reference(specs: Spec[], start: number, end: number, dates?: { startDate: string; endDate: string }) {
  const all = refReadings(specs);
  const rs = all.filter((r) => r.t >= start && r.t < end);
  // A sensor samples at its own fixed interval, so "% of readings and time" are the same number for
  // each sensor: a reading stands for its sensor's interval. A patient who changed sensors in the
  // period has each sensor's interval; a sensor with one instant takes the period's.
  const periodGap = nominalGap(rs) || nominalGap(all) || 5 * MIN;
  const gapOf = new Map<string, number>();
  for (const device of new Set(rs.map((r) => r.device))) gapOf.set(device, nominalGap(rs.filter((r) => r.device === device)) || periodGap);
  const times = [...new Set(rs.map((r) => r.t))].sort((a, b) => a - b);
  const at = new Map<number, number>();
  for (const r of rs) at.set(r.t, (at.get(r.t) ?? 0) + 1);
  const w = rs.map((r) => {
    const next = times.find((t) => t > r.t);
    const gap = gapOf.get(r.device)!;
    return (next === undefined ? gap : Math.min(next - r.t, gap)) / at.get(r.t)!;
  });
  const W = w.reduce((a, b) => a + b, 0);
  const mean = rs.reduce((a, r, k) => a + w[k]! * r.stat, 0) / W;
  // weights in sampling intervals are frequency weights: N = Σ w / (its sensor's interval)
  // readings' worth, and the unbiased variance divides by N − 1 of them
  const N = rs.reduce((a, r, k) => a + w[k]! / gapOf.get(r.device)!, 0);
  const sd = N - 1 > 1e-9 ? Math.sqrt((rs.reduce((a, r, k) => a + w[k]! * (r.stat - mean) ** 2, 0) / W) * (N / (N - 1))) : 0;
  const tir = [0, 1, 2, 3, 4].map((range) => (100 * rs.reduce((a, r, k) => a + (r.range === range ? w[k]! : 0), 0)) / W);
  let days: Set<number>;
  let periodDays: number;
  if (dates) {
    periodDays = (Date.parse(dates.endDate) - Date.parse(dates.startDate)) / DAY + 1;
    days = new Set(rs.map((r) => new Date(r.t + r.offset * MIN).toISOString().slice(0, 10)).map((d) => Date.parse(d)));
  } else {
    periodDays = (end - start) / DAY;
    days = new Set(rs.map((r) => Math.floor((r.t - start) / DAY)));
  }
  const active = Math.min(100, (100 * W) / (end - start));
  return { n: rs.length, mean, sd, cv: (100 * sd) / mean, gmi: 3.31 + 0.02392 * mean, mmol: mean / MGDL_PER_MMOL, tir, active, days: days.size, periodDays };
}

/** The product's figure is the exact one rounded to two decimals. */
function close(actual: number, expected: number, label: string): void {
  if (!(Math.abs(actual - expected) <= 0.005 + 1e-9 * Math.max(1, Math.abs(expected)))) {
    throw new Error(`${label}: product ${actual}, reference ${expected}`);
  }
}

function compare(specs: Spec[], opts: { start?: number; end?: number; startDate?: string; endDate?: string } = {}) {
  const m = computeMetrics(metricReadingsFromObservations(specs.map(observation)), opts);
  const counted = refReadings(specs);
  if (!m) {
    expect(counted.filter((r) => (opts.start === undefined || r.t >= opts.start) && (opts.end === undefined || r.t < opts.end))).toHaveLength(0);
    return undefined;
  }
  const dates = opts.startDate && opts.endDate ? { startDate: opts.startDate, endDate: opts.endDate } : undefined;
  const ref = reference(specs, m.start, m.end, dates);
  expect(m.readings).toBe(ref.n);
  expect(m.belowRange).toBe(specs.filter((s) => s.kind === 'low' && s.t >= m.start && s.t < m.end).length);
  expect(m.aboveRange).toBe(specs.filter((s) => s.kind === 'high' && s.t >= m.start && s.t < m.end).length);
  close(m.meanMgdl, ref.mean, 'mean mg/dL');
  close(m.meanMmol, ref.mmol, 'mean mmol/L');
  close(m.gmi, ref.gmi, 'GMI');
  close(m.sdMgdl, ref.sd, 'SD');
  close(m.cv, ref.cv, 'CV');
  const t = m.timeInRanges;
  [t.veryLow, t.low, t.target, t.high, t.veryHigh].forEach((v, k) => close(v, ref.tir[k]!, `time in range ${k}`));
  close(m.sensorActivePercent, ref.active, 'sensor active');
  close(m.periodDays, ref.periodDays, 'period days');
  expect(m.daysOfWear).toBe(ref.days);
  // Against the exact period: m.periodDays is rounded to two decimals, so a period of 1.003 days
  // reads 1.00 and still holds readings on two 24-hour days (fast-check seed 388078407 in CI).
  expect(m.daysOfWear).toBeLessThanOrEqual(Math.max(1, Math.ceil((dates ? ref.periodDays * DAY : m.end - m.start) / DAY)));
  expect(m.warnings.some((w) => /14 days/.test(w))).toBe(ref.periodDays < 14);
  expect(m.warnings.some((w) => /70 %/.test(w))).toBe(ref.active < 70);
  return { m, ref };
}

// ---------------------------------------------------------------------------------------------
// Generated traces
// ---------------------------------------------------------------------------------------------

const T0 = Date.parse('2026-03-01T00:00:00Z');
const BOUNDARIES_MGDL = [39, 40, 53, 53.9, 54, 69, 69.9, 70, 180, 180.1, 181, 250, 250.5, 251, 400, 401];
const BOUNDARIES_MMOL = [2.2, 2.9, 3.0, 3.8, 3.85, 3.9, 10.0, 10.05, 10.1, 13.9, 13.95, 14.0, 22.2];

const value = fc.oneof(
  { weight: 6, arbitrary: fc.record({ kind: fc.constant<Kind>('mgdl'), value: fc.integer({ min: 40, max: 400 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant<Kind>('mgdl'), value: fc.constantFrom(...BOUNDARIES_MGDL) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant<Kind>('mmol'), value: fc.integer({ min: 22, max: 222 }).map((v) => v / 10) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant<Kind>('mmol'), value: fc.constantFrom(...BOUNDARIES_MMOL) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constantFrom<Kind>('low', 'high', 'error'), value: fc.constant(0) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constantFrom<Kind>('meter-mgdl', 'meter-mmol'), value: fc.integer({ min: 20, max: 30 }) }) },
);

/**
 * A trace: a regular stream (1, 5 or 15 min) with dropped readings and gaps, optionally with extra
 * readings in between (LibreView scans, a second uploader), exact duplicates, and a DST-like offset
 * change part way.
 */
const trace = fc.record({
  interval: fc.constantFrom(1, 5, 15),
  count: fc.integer({ min: 1, max: 400 }),
  values: fc.array(value, { minLength: 400, maxLength: 400 }),
  dropEvery: fc.integer({ min: 0, max: 9 }),
  gapAt: fc.integer({ min: 0, max: 400 }),
  gapLength: fc.integer({ min: 0, max: 300 }),
  extras: fc.array(fc.record({ at: fc.integer({ min: 0, max: 399 }), minute: fc.integer({ min: 0, max: 14 }), v: value }), { maxLength: 60 }),
  duplicates: fc.array(fc.integer({ min: 0, max: 399 }), { maxLength: 20 }),
  offsets: fc.tuple(fc.constantFrom(-300, -240, 0, 60, 120, 330), fc.constantFrom(0, 60)),
  offsetChangeAt: fc.integer({ min: 0, max: 400 }),
}).map((g): Spec[] => {
  const specs: Spec[] = [];
  const time = (i: number): number => T0 + i * g.interval * MIN + (i >= g.gapAt ? g.gapLength * MIN : 0);
  const offset = (i: number): number => g.offsets[0] + (i >= g.offsetChangeAt ? g.offsets[1] : 0);
  for (let i = 0; i < g.count; i++) {
    if (g.dropEvery && i % (g.dropEvery + 2) === 1) continue;
    specs.push({ t: time(i), offset: offset(i), ...g.values[i]! });
  }
  for (const e of g.extras) if (e.at < g.count) specs.push({ t: time(e.at) + e.minute * MIN + 7_000, offset: offset(e.at), ...e.v });
  for (const d of g.duplicates) {
    const s = specs[d % Math.max(1, specs.length)];
    if (s) specs.push({ ...s });
  }
  return specs;
});

/**
 * Two sensors of different intervals (1, 5 or 15 min): the second starts after, during or before the
 * first (a patient who changed sensors, or wore both for a while), each with dropped readings; some
 * readings of either may name no Device.
 */
const switching = fc.record({
  intervals: fc.tuple(fc.constantFrom(1, 5, 15), fc.constantFrom(1, 5, 15)),
  counts: fc.tuple(fc.integer({ min: 1, max: 300 }), fc.integer({ min: 1, max: 300 })),
  secondAt: fc.integer({ min: -600, max: 4000 }),
  values: fc.array(value, { minLength: 600, maxLength: 600 }),
  dropEvery: fc.integer({ min: 0, max: 9 }),
  unnamed: fc.constantFrom(0, 0, 7),
}).map((g): Spec[] => {
  const specs: Spec[] = [];
  for (const k of [0, 1] as const) {
    for (let i = 0; i < g.counts[k]; i++) {
      if (g.dropEvery && i % (g.dropEvery + 2) === 1) continue;
      const t = T0 + (k === 1 ? g.secondAt * MIN + 20_000 : 0) + i * g.intervals[k] * MIN;
      const named = !(g.unnamed && i % g.unnamed === 3);
      specs.push({ t, offset: 0, ...g.values[k * 300 + i]!, ...(named ? { device: `Device/sensor-${k}` } : {}) });
    }
  }
  return specs;
});

describe('consensus metrics agree with an independent reference', () => {
  test('generated traces with two sensors of different sampling intervals (a sensor change, an overlap)', () => {
    fc.assert(fc.property(switching, (specs) => { compare(specs); }), { numRuns: 300 });
  });

  test('two sensors over explicit periods cutting through the data', () => {
    fc.assert(fc.property(switching, fc.integer({ min: -600, max: 3000 }), fc.integer({ min: 30, max: 20_000 }), (specs, from, length) => {
      compare(specs, { start: T0 + from * MIN, end: T0 + (from + length) * MIN });
    }), { numRuns: 200 });
  });

  test('generated traces (mixed units, HIGH/LOW, sensor errors, meter readings, gaps, scans, duplicates): default period', () => {
    fc.assert(fc.property(trace, (specs) => { compare(specs); }), { numRuns: 300 });
  });

  test('a period just over a whole number of days holds readings on one more 24-hour day than its rounded length (fast-check seed 388078407)', () => {
    fc.assert(fc.property(trace, (specs) => { compare(specs); }), { numRuns: 300, seed: 388078407 });
  });

  test('generated traces over explicit periods cutting through the data', () => {
    fc.assert(fc.property(trace, fc.integer({ min: -600, max: 3000 }), fc.integer({ min: 30, max: 20_000 }), (specs, from, length) => {
      compare(specs, { start: T0 + from * MIN, end: T0 + (from + length) * MIN });
    }), { numRuns: 300 });
  });

  test('on a regular trace the time-weighted figures are the plain reading-count ones (consensus: % of readings and time)', () => {
    const counted = value.filter((v) => !['error', 'meter-mgdl', 'meter-mmol'].includes(v.kind));
    const regular = fc.record({ interval: fc.constantFrom(5, 15), values: fc.array(counted, { minLength: 2, maxLength: 600 }) });
    fc.assert(fc.property(regular, ({ interval, values }) => {
      const specs = values.map((v, i): Spec => ({ t: T0 + i * interval * MIN, offset: 0, ...v }));
      const m = computeMetrics(metricReadingsFromObservations(specs.map(observation)));
      const rs = refReadings(specs);
      if (rs.length === 0) return expect(m).toBeUndefined();
      const n = rs.length;
      const mean = rs.reduce((a, r) => a + r.stat, 0) / n;
      const sd = n > 1 ? Math.sqrt(rs.reduce((a, r) => a + (r.stat - mean) ** 2, 0) / (n - 1)) : 0;
      close(m!.meanMgdl, mean, 'mean');
      close(m!.sdMgdl, sd, 'sample SD');
      close(m!.cv, (100 * sd) / mean, 'CV');
      close(m!.gmi, 3.31 + 0.02392 * mean, 'GMI');
      const t = m!.timeInRanges;
      [t.veryLow, t.low, t.target, t.high, t.veryHigh].forEach((v, k) => close(v, (100 * rs.filter((r) => r.range === k).length) / n, `share of readings in range ${k}`));
    }), { numRuns: 200 });
  });
});

// ---------------------------------------------------------------------------------------------
// Hand-made cases
// ---------------------------------------------------------------------------------------------

const mgdl = (values: number[], interval = 5, t0 = T0): Spec[] => values.map((value, i) => ({ t: t0 + i * interval * MIN, offset: 0, kind: 'mgdl', value }));
const metricsOf = (specs: Spec[], opts = {}) => computeMetrics(metricReadingsFromObservations(specs.map(observation)), opts)!;

describe('range boundaries (consensus: 70 and 180 in range, 54 in 54–69, 250 in 181–250)', () => {
  test('mg/dL: 53 | 54 69 | 70 180 | 181 250 | 251', () => {
    expect(metricsOf(mgdl([53, 54, 69, 70, 180, 181, 250, 251])).timeInRanges).toEqual({ veryLow: 12.5, low: 25, target: 25, high: 25, veryHigh: 12.5 });
  });

  test('mmol/L on its own scale: 2.9 | 3.0 3.8 | 3.9 10.0 | 10.1 13.9 | 14.0', () => {
    const specs = [2.9, 3.0, 3.8, 3.9, 10.0, 10.1, 13.9, 14.0].map((value, i): Spec => ({ t: T0 + i * 5 * MIN, offset: 0, kind: 'mmol', value }));
    const m = metricsOf(specs);
    expect(m.timeInRanges).toEqual({ veryLow: 12.5, low: 25, target: 25, high: 25, veryHigh: 12.5 });
    // A period all in mmol/L reports the mean of the mmol/L values exactly, whatever the factor.
    expect(m.meanMmol).toBeCloseTo((2.9 + 3.0 + 3.8 + 3.9 + 10.0 + 10.1 + 13.9 + 14.0) / 8, 2);
  });
});

describe('HIGH/LOW, sensor errors and meter readings', () => {
  test('LOW counts as very low and enters the mean at 40 mg/dL, HIGH as very high at 400; a sensor error is no reading', () => {
    const specs: Spec[] = [
      { t: T0, offset: 0, kind: 'mgdl', value: 100 },
      { t: T0 + 5 * MIN, offset: 0, kind: 'low', value: 0 },
      { t: T0 + 10 * MIN, offset: 0, kind: 'high', value: 0 },
      { t: T0 + 15 * MIN, offset: 0, kind: 'mgdl', value: 120 },
      { t: T0 + 20 * MIN, offset: 0, kind: 'error', value: 0 },
      { t: T0 + 25 * MIN, offset: 0, kind: 'mgdl', value: 140 },
    ];
    const { m } = compare(specs)!;
    expect(m.readings).toBe(5);
    expect(m.timeInRanges.veryLow).toBeGreaterThan(0);
    expect(m.timeInRanges.veryHigh).toBeGreaterThan(0);
  });

  test('meter readings (LOINC 41653-7 / 14743-9) change nothing', () => {
    const cgm = mgdl([100, 110, 120, 130, 140, 150]);
    const meters: Spec[] = [
      { t: T0 + 2 * MIN, offset: 0, kind: 'meter-mgdl', value: 40 },
      { t: T0 + 12 * MIN, offset: 0, kind: 'meter-mmol', value: 2.0 },
      { t: T0 + 5 * MIN, offset: 0, kind: 'meter-mgdl', value: 45 }, // a calibration at a sensor reading's instant
    ];
    expect(metricsOf([...cgm, ...meters])).toEqual(metricsOf(cgm));
  });
});

describe('time, not readings: irregular sampling', () => {
  const DAYS = 14;
  /** LibreView: a 15-minute historic reading, 120 mg/dL, for `days` days. */
  const historic = (days: number, t0 = T0): Spec[] => mgdl(Array.from({ length: days * 96 }, () => 120), 15, t0);

  test('LibreView scans taken during a low count for the time they cover, not once each', () => {
    // Each day one 15-minute slot is low: the historic reading says 60, and the patient scans
    // four times in that slot. Time below range is 15 min a day (1.04 %); counting readings
    // would say 5 of 100 a day (5 %).
    const specs = historic(DAYS);
    for (let d = 0; d < DAYS; d++) {
      const slot = T0 + d * DAY + 3 * 60 * MIN; // 03:00
      specs[d * 96 + 12] = { t: slot, offset: 0, kind: 'mgdl', value: 60 };
      for (const m of [3, 6, 9, 12]) specs.push({ t: slot + m * MIN, offset: 0, kind: 'mgdl', value: 60 });
    }
    const { m } = compare(specs, { start: T0, end: T0 + DAYS * DAY })!;
    expect(m.timeInRanges.low).toBeCloseTo((100 * 15) / 1440, 2);
    expect(m.sensorActivePercent).toBe(100);
  });

  test('scans do not lift a 60 %-covered period over the 70 % sensor-activity threshold', () => {
    // Historic data for about 60 % of each day (58 readings, 14.5 h), and 20 scans a day inside that time.
    const specs: Spec[] = [];
    for (let d = 0; d < DAYS; d++) {
      for (let k = 0; k < 96 * 0.6; k++) specs.push({ t: T0 + d * DAY + k * 15 * MIN, offset: 0, kind: 'mgdl', value: 120 });
      for (let s = 0; s < 20; s++) specs.push({ t: T0 + d * DAY + s * 40 * MIN + 7 * MIN, offset: 0, kind: 'mgdl', value: 130 });
    }
    const { m } = compare(specs, { start: T0, end: T0 + DAYS * DAY })!;
    // 58 historic readings a day cover 870 of 1440 minutes; readings / expected would say (58 + 20) / 96 = 81.25 %
    expect(m.sensorActivePercent).toBe(60.42);
    expect(m.warnings).toContainEqual('sensor active 60.42 % of the period; at least 70 % is recommended');
  });

  test('a heavy scanner (60 scans a day) still has 15-minute historic readings covering the whole day', () => {
    const specs = historic(DAYS);
    for (let d = 0; d < DAYS; d++) for (let s = 0; s < 60; s++) specs.push({ t: T0 + d * DAY + s * 24 * MIN + 5 * MIN, offset: 0, kind: 'mgdl', value: 130 });
    const { m } = compare(specs, { start: T0, end: T0 + DAYS * DAY })!;
    expect([m.samplingIntervalMs, m.sensorActivePercent, m.warnings]).toEqual([15 * MIN, 100, []]);
  });

  test('the same readings stored twice (two uploaders) give the same figures as once', () => {
    const once = mgdl(Array.from({ length: 14 * 288 }, (_, i) => 60 + (i % 200)));
    const twice = [...once, ...once.map((s) => ({ ...s }))];
    const a = metricsOf(once, { start: T0, end: T0 + 14 * DAY });
    const b = metricsOf(twice, { start: T0, end: T0 + 14 * DAY });
    expect({ ...b, readings: a.readings }).toEqual(a);
    expect(b.readings).toBe(2 * a.readings);
  });

  test('a second sensor overlapping for two days weighs those days as much as any other', () => {
    // 14 days of one sensor at 5 min, 150 mg/dL; for the last 2 days a second sensor (2.5 min
    // later) reads 300. Each of its readings covers half the 5 minutes: the overlap's mean is 225.
    const first = mgdl(Array.from({ length: 14 * 288 }, () => 150));
    const second = mgdl(Array.from({ length: 2 * 288 }, () => 300), 5, T0 + 12 * DAY + 150_000);
    const { m } = compare([...first, ...second], { start: T0, end: T0 + 14 * DAY })!;
    expect(m.meanMgdl).toBeCloseTo((12 * 150 + 2 * 225) / 14, 1); // by reading count: 171.4
    expect(m.sensorActivePercent).toBe(100);
  });

  test('a patient who switched from a 15-minute to a 5-minute sensor: each week weighs as much as the other', () => {
    // 7 days of a 15-minute sensor reading 100, then 7 days of a 5-minute sensor reading 200. With
    // one interval for the period (5 min, the more common gap) the 15-minute week covered a third of
    // its time and weighed a third of the other (sensor active 66.67 %, mean 175).
    const slow = mgdl(Array.from({ length: 7 * 96 }, () => 100), 15).map((s) => ({ ...s, device: 'Device/libre' }));
    const fast = mgdl(Array.from({ length: 7 * 288 }, () => 200), 5, T0 + 7 * DAY).map((s) => ({ ...s, device: 'Device/dexcom' }));
    const { m } = compare([...slow, ...fast], { start: T0, end: T0 + 14 * DAY })!;
    expect([m.meanMgdl, m.sensorActivePercent, m.warnings]).toEqual([150, 100, []]);
    expect(m.samplingIntervalsMs).toEqual({ 'Device/libre': 15 * MIN, 'Device/dexcom': 5 * MIN });
    // half the time at 100, half at 200: SD 50, as a sample SD over the 672 + 2,016 readings
    const n = 7 * 96 + 7 * 288;
    expect(m.sdMgdl).toBeCloseTo(50 * Math.sqrt(n / (n - 1)), 2);
  });

  test('one reading in a 14-day period is not 100 % sensor activity', () => {
    const m = metricsOf(mgdl([120]), { start: T0, end: T0 + 14 * DAY });
    expect(m.sensorActivePercent).toBeLessThan(1);
    expect(m.warnings).toContainEqual(expect.stringMatching(/at least 70 %/));
  });
});

describe('data sufficiency (consensus: 14 days, 70 % of data)', () => {
  test('exactly 70 % active does not warn; just under does', () => {
    const period = { start: T0, end: T0 + 20 * DAY };
    const specs = mgdl(Array.from({ length: 4032 }, () => 120)); // 4,032 of 20 × 288 = 5,760
    expect(metricsOf(specs, period).warnings).toEqual([]);
    expect(metricsOf(specs.slice(1), period).warnings).toEqual([expect.stringMatching(/^sensor active 69\.9\d % of the period; at least 70 % is recommended$/)]);
  });

  test('a 14-day period does not warn; 13 days does', () => {
    const specs = mgdl(Array.from({ length: 14 * 288 }, () => 120));
    expect(metricsOf(specs, { start: T0, end: T0 + 14 * DAY }).warnings).toEqual([]);
    expect(metricsOf(specs, { start: T0, end: T0 + 13 * DAY }).warnings).toEqual([expect.stringMatching(/^only 13 days in the reporting period; at least 14 days are recommended$/)]);
  });

  test.each([
    ['spring forward', '2026-03-01', '2026-03-14'],
    ['fall back', '2026-10-25', '2026-11-07'],
  ])('14 local days across the %s change are 14 days of wear at most and no short-period warning', (_label, startDate, endDate) => {
    const zone = new ZoneOffsets('America/New_York');
    const period = placePeriod(parsePeriod({ start: startDate, end: endDate }), (w) => zone.resolve(w).epochMs);
    const specs: Spec[] = [];
    for (let t = period.start!; t < period.end!; t += 5 * MIN) specs.push({ t, offset: zone.offsetAt(t), kind: 'mgdl', value: 120 });
    const { m } = compare(specs, period)!;
    expect([m.periodDays, m.daysOfWear, m.sensorActivePercent, m.warnings]).toEqual([14, 14, 100, []]);
  });
});

// ---------------------------------------------------------------------------------------------
// AGP
// ---------------------------------------------------------------------------------------------

/** R type 7, 1-based as R's documentation writes it. */
function type7(sorted: number[], p: number): number {
  const h = (sorted.length - 1) * p + 1;
  const lo = Math.floor(h);
  return sorted[lo - 1]! + (h - lo) * ((sorted[Math.min(lo, sorted.length - 1)] ?? sorted[lo - 1]!) - sorted[lo - 1]!);
}

describe('AGP: percentiles by local time of day', () => {
  test('generated traces: every bin holds the readings of its local time of day, percentiles type 7', () => {
    fc.assert(fc.property(trace, fc.constantFrom(15, 30, 60), (specs, binMinutes) => {
      const agp = computeAgp(metricReadingsFromObservations(specs.map(observation)), { binMinutes });
      const rs = refReadings(specs);
      if (!agp) return expect(rs).toHaveLength(0);
      const inPeriod = rs.filter((r) => r.t >= agp.start && r.t < agp.end);
      expect(agp.readings).toBe(inPeriod.length);
      for (const bin of agp.bins) {
        const values = inPeriod.filter((r) => {
          const local = new Date(r.t + r.offset * MIN);
          const minute = local.getUTCHours() * 60 + local.getUTCMinutes();
          return minute >= bin.minute && minute < bin.minute + binMinutes;
        }).map((r) => r.stat).sort((a, b) => a - b);
        expect(bin.n).toBe(values.length);
        if (values.length === 0) continue;
        close(bin.p5!, type7(values, 0.05), 'p5');
        close(bin.p25!, type7(values, 0.25), 'p25');
        close(bin.p50!, type7(values, 0.5), 'p50');
        close(bin.p75!, type7(values, 0.75), 'p75');
        close(bin.p95!, type7(values, 0.95), 'p95');
      }
    }), { numRuns: 150 });
  });

  test('07:00 local is the 07:00 bin on both sides of a DST change', () => {
    const zone = new ZoneOffsets('Europe/Berlin');
    const specs: Spec[] = [];
    for (const date of ['2026-03-27', '2026-03-28', '2026-03-29', '2026-03-30', '2026-03-31']) {
      const t = zone.resolve(Date.parse(`${date}T07:00:00Z`)).epochMs;
      specs.push({ t, offset: zone.offsetAt(t), kind: 'mgdl', value: 77 });
    }
    const agp = computeAgp(metricReadingsFromObservations(specs.map(observation)), { binMinutes: 60 })!;
    expect(agp.bins.filter((b) => b.n > 0).map((b) => [b.time, b.n, b.p50])).toEqual([['07:00', 5, 77]]);
  });

  test('with a timeZone, readings stored in UTC are drawn at the patient\'s local time (inZone)', () => {
    // A Nightscout entry at 08:00Z is 03:00 in New York in January (−05:00) and 04:00 in July (−04:00).
    const zone = new ZoneOffsets('America/New_York');
    const stored = metricReadingsFromObservations([
      observation({ t: Date.parse('2026-01-15T08:00:00Z'), offset: 0, kind: 'mgdl', value: 50 }),
      observation({ t: Date.parse('2026-07-15T08:00:00Z'), offset: 0, kind: 'mgdl', value: 60 }),
    ]);
    const agp = computeAgp(inZone(stored, zone), { binMinutes: 60, start: Date.parse('2026-01-01T00:00:00Z'), end: Date.parse('2026-08-01T00:00:00Z') })!;
    expect(agp.bins.filter((b) => b.n > 0).map((b) => [b.time, b.p50])).toEqual([['03:00', 50], ['04:00', 60]]);
  });
});

// ---------------------------------------------------------------------------------------------
// Emitted Observations: codes and units as the IG's profiles fix them
// ---------------------------------------------------------------------------------------------

describe('cgm-summary members carry the codes and units the IG profiles fix', () => {
  const profile = (id: string): StructureDefinition => JSON.parse(readFileSync(path.join(PROFILES_DIR, 'cgm-ig', `StructureDefinition-${id}.json`), 'utf8'));
  const pattern = (sd: StructureDefinition, elementId: string): unknown => {
    const e = sd.snapshot!.element.find((x) => x.id === elementId)!;
    return e.patternCodeableConcept ?? e.patternQuantity;
  };

  test('each member\'s code is its profile\'s pattern; times in ranges by slice; quantities in UCUM', () => {
    const m = metricsOf(mgdl([50, 60, 100, 200, 300, 120, 130]));
    const { summary, members } = buildCgmSummary(m, { patient: 'Patient/p' });
    for (const o of [summary, ...members]) {
      const id = o.meta!.profile![0]!.split('/').pop()!;
      const coding = (pattern(profile(id), 'Observation.code') as { coding: { system: string; code: string }[] }).coding[0]!;
      expect(o.code.coding).toEqual([coding]);
    }
    const tir = members.find((o) => o.code.coding![0]!.code === '106793-3')!;
    const sd = profile('cgm-summary-times-in-ranges');
    const slices = ['timeInVeryLow', 'timeInLow', 'timeInTarget', 'timeInHigh', 'timeInVeryHigh'];
    expect(tir.component!.map((c) => c.code.coding![0]!.code)).toEqual(slices.map((s) => (pattern(sd, `Observation.component:${s}.code`) as { coding: { code: string }[] }).coding[0]!.code));
    expect(tir.component!.map((c) => c.valueQuantity!.value)).toEqual([m.timeInRanges.veryLow, m.timeInRanges.low, m.timeInRanges.target, m.timeInRanges.high, m.timeInRanges.veryHigh]);
    const byCode = (code: string) => members.find((o) => o.code.coding![0]!.code === code)!.valueQuantity!;
    expect(byCode('97507-8')).toEqual({ value: m.meanMgdl, unit: 'mg/dl', system: 'http://unitsofmeasure.org', code: 'mg/dL' });
    expect(byCode('105273-7')).toEqual({ value: m.meanMmol, unit: 'mmol/l', system: 'http://unitsofmeasure.org', code: 'mmol/L' });
    expect(byCode('97506-0')).toEqual({ value: m.gmi, unit: '%', system: 'http://unitsofmeasure.org', code: '%' });
    expect(byCode('104638-2')).toEqual({ value: m.cv, unit: '%', system: 'http://unitsofmeasure.org', code: '%' });
    expect(byCode('104637-4')).toEqual({ value: m.sensorActivePercent, unit: '%', system: 'http://unitsofmeasure.org', code: '%' });
    expect(byCode('104636-6')).toEqual({ value: m.daysOfWear, ...(pattern(profile('cgm-summary-days-of-wear'), 'Observation.value[x]:valueQuantity') as object) });
  });
});
