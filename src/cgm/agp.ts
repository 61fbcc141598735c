/**
 * Ambulatory Glucose Profile data: readings folded onto one day by local time of day, in bins
 * (15 minutes by default), with the 5th/25th/50th/75th/95th percentiles per bin computed as R's
 * quantile type 7 (linear interpolation between order statistics). HIGH/LOW readings are in the
 * profile at the sensor limits (400 / 40 mg/dL), as AGP reports draw them.
 */
import type { Parameters, ParametersParameter } from '@medplum/fhirtypes';
import { selectPeriod, statisticValue, type MetricReading, type MetricsOptions } from './metrics.js';
import { localDate } from './time.js';
import { round } from './units.js';

export interface AgpBin {
  /** Start of the bin, local time `hh:mm`. */
  time: string;
  /** Minutes after local midnight. */
  minute: number;
  /** Readings in the bin over the whole period. */
  n: number;
  p5?: number;
  p25?: number;
  p50?: number;
  p75?: number;
  p95?: number;
  mean?: number;
}

export interface Agp {
  unit: 'mg/dL';
  binMinutes: number;
  start: number;
  end: number;
  startDate: string;
  endDate: string;
  readings: number;
  bins: AgpBin[];
}

/** R's quantile type 7 of an ascending array: x[h] interpolated, h = (n − 1)·p. */
export function quantileType7(sorted: ArrayLike<number>, p: number): number {
  const n = sorted.length;
  if (n === 0) return Number.NaN;
  const h = (n - 1) * p;
  const lo = Math.floor(h);
  const hi = Math.min(lo + 1, n - 1);
  return sorted[lo]! + (h - lo) * (sorted[hi]! - sorted[lo]!);
}

/**
 * AGP data over the same period as the metrics (default: the last 14 days of data). Empty bins have
 * `n: 0` and no percentiles. Values are mg/dL, rounded to two decimals.
 */
export function computeAgp(all: readonly MetricReading[], options: MetricsOptions & { binMinutes?: number } = {}): Agp | undefined {
  const binMinutes = options.binMinutes ?? 15;
  if (!(binMinutes > 0) || 1440 % binMinutes !== 0) throw new RangeError('binMinutes must divide 1440');
  const period = selectPeriod(all, options);
  if (!period) return undefined;
  const count = 1440 / binMinutes;
  const values: number[][] = Array.from({ length: count }, () => []);
  for (const r of period.readings) {
    const local = r.epochMs + (r.offsetMinutes ?? 0) * 60_000;
    const minuteOfDay = Math.floor((((local % 86_400_000) + 86_400_000) % 86_400_000) / 60_000);
    values[Math.floor(minuteOfDay / binMinutes)]!.push(statisticValue(r.mgdl));
  }
  const bins = values.map((v, i): AgpBin => {
    const minute = i * binMinutes;
    const time = `${String(Math.floor(minute / 60)).padStart(2, '0')}:${String(minute % 60).padStart(2, '0')}`;
    if (v.length === 0) return { time, minute, n: 0 };
    const sorted = Float64Array.from(v).sort();
    let sum = 0;
    for (const x of sorted) sum += x;
    return {
      time, minute, n: sorted.length,
      p5: round(quantileType7(sorted, 0.05), 2),
      p25: round(quantileType7(sorted, 0.25), 2),
      p50: round(quantileType7(sorted, 0.5), 2),
      p75: round(quantileType7(sorted, 0.75), 2),
      p95: round(quantileType7(sorted, 0.95), 2),
      mean: round(sum / sorted.length, 2),
    };
  });
  return {
    unit: 'mg/dL', binMinutes, start: period.start, end: period.end,
    // the dates asked for, when the period was asked for by dates, as the summary gives them
    startDate: options.startDate ?? localDate(period.start, period.readings[0]!.offsetMinutes ?? 0),
    endDate: options.endDate ?? localDate(period.end - 1, period.readings[period.readings.length - 1]!.offsetMinutes ?? 0),
    readings: period.readings.length, bins,
  };
}

/** The percentiles and mean of a bin, in the order they are written. */
const BIN_FIGURES = ['p5', 'p25', 'p50', 'p75', 'p95', 'mean'] as const;

/**
 * `$cgm-agp`'s answer: the CGM IG defines no AGP resource, so the figures go out as a FHIR
 * Parameters resource, one parameter per figure named as in Agp — `patient` (valueReference),
 * `startTime`/`endTime` (valueInstant), `startDate`/`endDate` (valueDate), `unit` (valueCode),
 * `binMinutes` and `readings` (valueInteger) — and one `bin` per bin, in time-of-day order, whose
 * parts are `time` (valueString, local `hh:mm`), `minute` and `n` (valueInteger) and, for a bin
 * with readings, `p5` … `p95` and `mean` (valueDecimal, mg/dL).
 */
export function agpParameters(patient: string, agp: Agp): Parameters {
  const bins: ParametersParameter[] = agp.bins.map((b) => ({
    name: 'bin',
    part: [
      { name: 'time', valueString: b.time }, { name: 'minute', valueInteger: b.minute }, { name: 'n', valueInteger: b.n },
      ...BIN_FIGURES.flatMap((k) => (b[k] === undefined ? [] : [{ name: k, valueDecimal: b[k] }])),
    ],
  }));
  return {
    resourceType: 'Parameters',
    parameter: [
      { name: 'patient', valueReference: { reference: patient } },
      { name: 'startTime', valueInstant: new Date(agp.start).toISOString() }, { name: 'endTime', valueInstant: new Date(agp.end).toISOString() },
      { name: 'startDate', valueDate: agp.startDate }, { name: 'endDate', valueDate: agp.endDate },
      { name: 'unit', valueCode: agp.unit }, { name: 'binMinutes', valueInteger: agp.binMinutes }, { name: 'readings', valueInteger: agp.readings },
      ...bins,
    ],
  };
}
