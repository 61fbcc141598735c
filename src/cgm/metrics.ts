/**
 * International-consensus CGM metrics (Battelino et al., Diabetes Care 2019) over a period.
 *
 * The consensus states times in ranges as "% of readings and time" (its Table 1); for a sensor that
 * samples at a fixed interval the two are the same number. They differ when readings are irregular:
 * LibreView exports 15-minute historic readings *and* scans (taken when the patient checks, often
 * because they feel low), and two uploaders or an overlapping second sensor put extra readings in the
 * same minutes. Counting readings would give those moments extra weight and, with readings present /
 * readings expected, push sensor activity up (scans alone could lift 60 % coverage past the 70 %
 * threshold). So each reading stands for the time until the next one, at most one nominal sampling
 * interval of the device that took it (the most common gap between that device's readings,
 * `samplingInterval`; a patient who switches from a 15-minute to a 5-minute sensor has both parts
 * weighted by their own interval): times in ranges, mean, SD, CV and GMI are weighted by that time,
 * and sensor activity is the time so covered over the period's length.
 * On a regular trace every weight is the same and all figures equal the reading-count ones (iglu,
 * Clarity). Readings at the same instant share their weight. docs/cgm-metrics.md ("Time, not
 * readings").
 *
 * Readings the sensor flags as outside its measurement range (HIGH/LOW, stored with dataAbsentReason
 * positive-/negative-infinity) are readings: the consensus computes time below and above range from
 * all sensor readings, and dropping a LOW would hide exactly the hypoglycaemia the metrics exist to
 * show. They arrive here as mgdl ±Infinity; a LOW counts as very low and a HIGH as very high, and both
 * count toward readings, days of wear and sensor activity. Mean, GMI, SD, CV and the AGP take them at
 * the sensor limits, 40 and 400 mg/dL, as Dexcom Clarity and AGP reports do — a bound, not a
 * measurement (a Libre HI is above 500), so these statistics understate the excursion rather than
 * leave it out; `belowRange`/`aboveRange` say how many readings were so substituted. Readings with
 * no value for any other reason (sensor error, unknown) never get here.
 *
 * Times in ranges compare a value with the consensus cut-offs of the unit it was measured in:
 * <54, 54–69, 70–180, 181–250, >250 mg/dL and <3.0, 3.0–3.8, 3.9–10.0, 10.1–13.9, >13.9 mmol/L. The two
 * scales are not exact conversions of each other (10.0 mmol/L is 180.16 mg/dL), so converting first
 * would put 10.0 and 13.9 mmol/L in the next range up.
 */
import { badRequest } from '../errors.js';
import { localDate, parseIso } from './time.js';
import { MGDL_PER_MMOLL, round } from './units.js';

/** The minimum a metrics computation needs of a reading. */
export interface MetricReading {
  epochMs: number;
  /**
   * Value in mg/dL; -Infinity for a reading below the sensor's measurement range (LOW), +Infinity for
   * one above it (HIGH). NaN readings are ignored.
   */
  mgdl: number;
  /** The value as measured when the source reported mmol/L; times in ranges then use the mmol/L cut-offs. */
  mmolL?: number;
  /** UTC offset of the reading's local clock, for days of wear and AGP time of day (default 0). */
  offsetMinutes?: number;
  /**
   * The device that took the reading (any stable key: its Device reference, or source and device
   * id). Each device's readings are weighted by its own sampling interval; readings without one
   * are one device.
   */
  device?: string;
}

export interface MetricsOptions {
  /** Period start (inclusive), epoch ms. Default: 14 days before the end, but not before the first reading. */
  start?: number;
  /** Period end (exclusive), epoch ms. Default: just after the last reading (last reading + sampling interval). */
  end?: number;
  /** Length of the default period in days. Default 14. */
  days?: number;
  /**
   * Instant of the patient's first reading, when the readings given are not all of them (the last
   * days fetched for the default period): that period then starts no earlier than this, rather than
   * at the first reading given, so a sensor gap at its start is not cut off.
   */
  firstReading?: number;
  /** Local calendar dates of the period's first and last day when it was asked for by dates (else taken from the readings' offsets). */
  startDate?: string;
  endDate?: string;
}

export interface TimesInRanges {
  /** < 54 mg/dL */
  veryLow: number;
  /** 54–69 mg/dL */
  low: number;
  /** 70–180 mg/dL, both bounds inclusive */
  target: number;
  /** 181–250 mg/dL */
  high: number;
  /** > 250 mg/dL */
  veryHigh: number;
}

export interface CgmMetrics {
  /** The period, epoch ms, [start, end). */
  start: number;
  end: number;
  /** Local calendar dates (of the readings' offset) of the first and last day of the period. */
  startDate: string;
  endDate: string;
  /** Readings in the period: readings with a value and HIGH/LOW readings. */
  readings: number;
  /** LOW readings in the period (counted as very low, and as 40 mg/dL in mean, GMI, SD and CV). */
  belowRange: number;
  /** HIGH readings in the period (counted as very high, and as 400 mg/dL in mean, GMI, SD and CV). */
  aboveRange: number;
  /** Percent of time in each range (each reading weighted by the time it stands for, see above), two decimals. */
  timeInRanges: TimesInRanges;
  meanMgdl: number;
  meanMmol: number;
  /** Glucose management indicator, %: 3.31 + 0.02392 × mean mg/dL. */
  gmi: number;
  /** Coefficient of variation, %: SD / mean × 100. */
  cv: number;
  /** Standard deviation, mg/dL: time-weighted, the weights counted in sampling intervals, so the sample SD (n − 1) on a regular trace. */
  sdMgdl: number;
  /** Days of the period with at least one reading: its local calendar days when it was asked for by dates, else 24-hour days from its start. */
  daysOfWear: number;
  /** Length of the period in days (two decimals); for a period asked for by dates, the number of those local days. */
  periodDays: number;
  /** Time covered by readings (each at most one sampling interval) over the period's length, %. */
  sensorActivePercent: number;
  /**
   * Nominal sampling interval of the period's readings taken together (see `samplingInterval`), ms.
   * Weights use each device's own interval (`samplingIntervalsMs` when there are several).
   */
  samplingIntervalMs: number;
  /** Each device's sampling interval, ms, by its key (`MetricReading.device`, `''` for none), when the period has readings of more than one device. */
  samplingIntervalsMs?: Record<string, number>;
  /** Data-sufficiency warnings (fewer than 14 days, less than 70 % active). */
  warnings: string[];
}

const DAY = 86_400_000;

/** Measurement range of common CGM sensors (Dexcom G6/G7, Libre 1), mg/dL: what a LOW/HIGH stands for in statistics. */
export const SENSOR_RANGE_MGDL = { low: 40, high: 400 } as const;

/** A reading's value for mean, SD, CV, GMI and AGP percentiles: LOW/HIGH at the sensor limits. */
export function statisticValue(mgdl: number): number {
  return mgdl === -Infinity ? SENSOR_RANGE_MGDL.low : mgdl === Infinity ? SENSOR_RANGE_MGDL.high : mgdl;
}

/**
 * The consensus range of a reading: 0 very low, 1 low, 2 target, 3 high, 4 very high. Bounds as the
 * consensus writes them: target 70–180 mg/dL / 3.9–10.0 mmol/L inclusive; a mmol/L value is judged on
 * the mmol/L scale (see the file comment).
 */
export function rangeIndex(r: MetricReading): 0 | 1 | 2 | 3 | 4 {
  const mmol = r.mmolL;
  if (mmol !== undefined && Number.isFinite(r.mgdl)) {
    return mmol < 3.0 ? 0 : mmol < 3.9 ? 1 : mmol <= 10.0 ? 2 : mmol <= 13.9 ? 3 : 4;
  }
  const g = r.mgdl; // ±Infinity (LOW/HIGH) falls in the outer ranges
  return g < 54 ? 0 : g < 70 ? 1 : g <= 180 ? 2 : g <= 250 ? 3 : 4;
}

/**
 * Computes the metrics over the period (by default the last 14 days of data). Returns undefined when
 * no reading (with a value, or HIGH/LOW) falls in the period.
 */
export function computeMetrics(all: readonly MetricReading[], options: MetricsOptions = {}): CgmMetrics | undefined {
  const period = selectPeriod(all, options);
  if (!period) return undefined;
  const { start, end, readings: inPeriod } = period;
  const n = inPeriod.length;

  const interval = samplingInterval(inPeriod) || period.intervalAll;
  // Each device's own interval; one with a single instant in the period takes the period's.
  const byDevice = deviceIntervals(inPeriod, interval || DEFAULT_INTERVAL_MS);
  const caps = inPeriod.map((r) => byDevice.get(r.device ?? '')!);
  const weights = timeWeights(inPeriod, caps);
  const counts = [0, 0, 0, 0, 0];
  let covered = 0, sum = 0, belowRange = 0, aboveRange = 0, intervals = 0;
  for (let i = 0; i < n; i++) {
    const r = inPeriod[i]!, w = weights[i]!;
    counts[rangeIndex(r)]! += w;
    if (r.mgdl === -Infinity) belowRange++;
    else if (r.mgdl === Infinity) aboveRange++;
    covered += w;
    intervals += w / caps[i]!;
    sum += w * statisticValue(r.mgdl);
  }
  const [veryLow, low, target, high, veryHigh] = counts as [number, number, number, number, number];
  const mean = sum / covered;
  // Time-weighted variance, the weights counted in sampling intervals (each reading w / its
  // device's interval readings' worth, `intervals` in all): Σw(x−m)² / W × intervals /
  // (intervals − 1). With one interval that is Σw(x−m)² / (W − interval): the sample variance
  // (n − 1) on a regular trace, unchanged when the same readings are stored twice.
  let squares = 0;
  for (let i = 0; i < n; i++) squares += weights[i]! * (statisticValue(inPeriod[i]!.mgdl) - mean) ** 2;
  const sd = intervals > 1 + 1e-9 ? Math.sqrt((squares / covered) * (intervals / (intervals - 1))) : 0;
  const pct = (k: number): number => round((k / covered) * 100, 2);

  const activeExact = Math.min(100, (covered / (end - start)) * 100);
  const active = round(activeExact, 2);
  const days = countDays(inPeriod, start, end, options);

  const warnings: string[] = [];
  // Consensus (Battelino 2019, Table 1): "Number of days CGM worn (recommend 14 days)" and
  // "Percentage of time CGM is active (recommend 70% of data from 14 days)": the period should span
  // 14 days, and 70 % of it be covered (about 10 days of data). Compared before rounding, so
  // 69.996 % (shown as 70 %) still warns.
  if (days.periodDays < 14) warnings.push(`only ${days.periodDays} ${days.periodDays === 1 ? 'day' : 'days'} in the reporting period; at least 14 days are recommended`);
  if (activeExact < 70) warnings.push(`sensor active ${active} % of the period; at least 70 % is recommended`);

  return {
    start,
    end,
    startDate: options.startDate ?? localDate(start, inPeriod[0]!.offsetMinutes ?? 0),
    endDate: options.endDate ?? localDate(end - 1, inPeriod[n - 1]!.offsetMinutes ?? 0),
    readings: n,
    belowRange,
    aboveRange,
    timeInRanges: { veryLow: pct(veryLow), low: pct(low), target: pct(target), high: pct(high), veryHigh: pct(veryHigh) },
    meanMgdl: round(mean, 2),
    meanMmol: round(mean / MGDL_PER_MMOLL, 2),
    gmi: round(3.31 + 0.02392 * mean, 2),
    cv: round((sd / mean) * 100, 2),
    sdMgdl: round(sd, 2),
    daysOfWear: days.worn,
    periodDays: days.periodDays,
    sensorActivePercent: active,
    samplingIntervalMs: interval,
    ...(byDevice.size > 1 ? { samplingIntervalsMs: Object.fromEntries(byDevice) } : {}),
    warnings,
  };
}

/** Sampling interval assumed when a period's readings give none (a single reading): the usual 5-minute CGM. */
const DEFAULT_INTERVAL_MS = 5 * 60_000;

/**
 * The time each reading (sorted) stands for: until the next reading at a later instant, at most
 * `cap` (the nominal sampling interval: one for all, or each reading's own, that of its device);
 * the last one a full interval, as a reading count has it. Readings at the same instant share that
 * time equally.
 */
export function timeWeights(sorted: readonly { epochMs: number }[], cap: number | ArrayLike<number>): Float64Array {
  const n = sorted.length;
  const out = new Float64Array(n);
  const capOf = typeof cap === 'number' ? (): number => cap : (k: number): number => cap[k]!;
  let i = 0;
  while (i < n) {
    const t = sorted[i]!.epochMs;
    let j = i + 1;
    while (j < n && sorted[j]!.epochMs === t) j++;
    const gap = j < n ? sorted[j]!.epochMs - t : Infinity;
    for (let k = i; k < j; k++) out[k] = Math.min(gap, capOf(k)) / (j - i);
    i = j;
  }
  return out;
}

/**
 * The sampling interval of each device (`MetricReading.device`, `''` for readings without one)
 * among sorted readings: the most common gap between its own consecutive readings
 * (`samplingInterval`), or `fallback` for a device with fewer than two instants.
 */
export function deviceIntervals(sorted: readonly MetricReading[], fallback: number): Map<string, number> {
  const groups = new Map<string, MetricReading[]>();
  for (const r of sorted) {
    const key = r.device ?? '';
    let g = groups.get(key);
    if (!g) groups.set(key, (g = []));
    g.push(r);
  }
  const out = new Map<string, number>();
  for (const [key, g] of groups) out.set(key, samplingInterval(g) || fallback);
  return out;
}

/**
 * Days of wear and period length. A period asked for by local dates counts its local calendar days
 * (each reading's date at its own offset), so a 14-day period across a DST change has 14 days, not
 * 13.96 or 14.04 with a 15th day of wear; otherwise 24-hour days from the start, so a rolling 14-day
 * window that starts mid-day has at most 14.
 */
function countDays(readings: readonly MetricReading[], start: number, end: number, options: MetricsOptions): { worn: number; periodDays: number } {
  const keys = new Set<number>();
  if (options.startDate && options.endDate) {
    const first = Date.parse(`${options.startDate}T00:00:00Z`);
    const periodDays = Math.round((Date.parse(`${options.endDate}T00:00:00Z`) - first) / DAY) + 1;
    for (const r of readings) {
      const day = Math.floor((r.epochMs + (r.offsetMinutes ?? 0) * 60_000 - first) / DAY);
      keys.add(Math.min(Math.max(day, 0), periodDays - 1));
    }
    return { worn: keys.size, periodDays };
  }
  for (const r of readings) keys.add(Math.floor((r.epochMs - start) / DAY));
  return { worn: keys.size, periodDays: round((end - start) / DAY, 2) };
}

/**
 * Readings of the period, sorted by time, and the period itself; undefined when there are none.
 * HIGH/LOW readings (mgdl ±Infinity) are readings of the period; NaN ones are not.
 */
export function selectPeriod(all: readonly MetricReading[], options: MetricsOptions = {}):
  { start: number; end: number; intervalAll: number; readings: MetricReading[] } | undefined {
  let sorted = all.filter((r) => !Number.isNaN(r.mgdl));
  if (sorted.length === 0) return undefined;
  let ordered = true;
  for (let i = 1; i < sorted.length && ordered; i++) ordered = sorted[i - 1]!.epochMs <= sorted[i]!.epochMs;
  if (!ordered) sorted = sorted.sort((a, b) => a.epochMs - b.epochMs);
  const intervalAll = samplingInterval(sorted);
  const end = options.end ?? sorted[sorted.length - 1]!.epochMs + (intervalAll || 1);
  const start = options.start ?? Math.max(end - (options.days ?? 14) * DAY, Math.min(options.firstReading ?? Infinity, sorted[0]!.epochMs));
  const readings = sorted.filter((r) => r.epochMs >= start && r.epochMs < end);
  return readings.length ? { start, end, intervalAll, readings } : undefined;
}

/**
 * The nominal sampling interval of sorted readings: the most common gap between consecutive readings,
 * to the minute (gaps under 30 s, between a reading and its copy from a second uploader, left out),
 * as the longest gap of that minute so a sensor's few seconds of jitter are not lost; ties go to the
 * longer interval. Unlike the median it stays 15 min for LibreView however many scans fall between
 * the historic readings (each scan splits a 15-minute gap in two shorter ones, so 48 scans a day
 * would pull the median under 15). The median when no gap is 30 s or longer; 0 with fewer than two
 * readings at different instants.
 */
export function samplingInterval(sorted: readonly { epochMs: number }[]): number {
  const counts = new Map<number, { n: number; max: number }>();
  for (let i = 1; i < sorted.length; i++) {
    const gap = sorted[i]!.epochMs - sorted[i - 1]!.epochMs;
    if (gap < 30_000) continue;
    const key = Math.round(gap / 60_000);
    const c = counts.get(key);
    if (c) {
      c.n++;
      if (gap > c.max) c.max = gap;
    } else counts.set(key, { n: 1, max: gap });
  }
  let best: { key: number; n: number; max: number } | undefined;
  for (const [key, c] of counts) if (!best || c.n > best.n || (c.n === best.n && key > best.key)) best = { key, ...c };
  return best ? best.max : medianInterval(sorted);
}

/** Median of the positive gaps between consecutive (sorted) readings; 0 with fewer than two readings. */
export function medianInterval(sorted: readonly { epochMs: number }[]): number {
  const gaps: number[] = [];
  for (let i = 1; i < sorted.length; i++) {
    const gap = sorted[i]!.epochMs - sorted[i - 1]!.epochMs;
    if (gap > 0) gaps.push(gap);
  }
  if (gaps.length === 0) return 0;
  gaps.sort((a, b) => a - b);
  const mid = gaps.length >> 1;
  return gaps.length % 2 ? gaps[mid]! : (gaps[mid - 1]! + gaps[mid]!) / 2;
}

/** A period bound from a query parameter: an instant, or a local wall-clock time (read as if UTC) still to be placed in the patient's zone. */
export type PeriodBound = { instant: number } | { wallMs: number };

/** `start`/`end` as given: bounds, and the calendar dates they name when given as dates. */
export interface PeriodQuery {
  start?: PeriodBound;
  end?: PeriodBound;
  startDate?: string;
  endDate?: string;
}

/**
 * Reads the period parameters (`$cgm-summary?start=&end=`): FHIR dates or date-times. A date-time
 * with an offset is an instant. A date, or a date-time without offset, is the patient's local time:
 * a date-only `start` is the first instant of that day and a date-only `end` includes the whole day
 * (up to the next day's midnight) — placed in a zone by `placePeriod`. Either may be absent (then
 * the default applies). Throws ERR_INVALID naming the parameter for unreadable values or an empty period.
 */
export function parsePeriod(params: { start?: string; end?: string }): PeriodQuery {
  const read = (name: 'start' | 'end', text: string): PeriodBound => {
    const dateOnly = /^\d{4}-\d{2}-\d{2}$/.test(text);
    const parsed = parseIso(dateOnly ? `${text}T00:00:00` : text);
    if (!parsed) throw badRequest(`${name} must be a date (YYYY-MM-DD) or date-time`, name);
    if (parsed.offsetMinutes !== undefined) return { instant: parsed.epochMs };
    return { wallMs: dateOnly && name === 'end' ? parsed.epochMs + DAY : parsed.epochMs };
  };
  const out: PeriodQuery = {};
  if (params.start) {
    out.start = read('start', params.start);
    if (/^\d{4}-\d{2}-\d{2}$/.test(params.start)) out.startDate = params.start;
  }
  if (params.end) {
    out.end = read('end', params.end);
    if (/^\d{4}-\d{2}-\d{2}$/.test(params.end)) out.endDate = params.end;
  }
  // Both of a kind compare as they are; a local and an absolute bound only once placed.
  const { start, end } = out;
  if (start && end && ('instant' in start) === ('instant' in end) && boundValue(end) <= boundValue(start)) throw badRequest('end must be after start', 'end');
  return out;
}

/**
 * The period in instants: local bounds placed by `place` (wall clock read as UTC → instant), e.g.
 * `ZoneOffsets.resolve` or `placeByReadings`. Throws ERR_INVALID for an empty period.
 */
export function placePeriod(query: PeriodQuery, place: (wallMs: number) => number): Pick<MetricsOptions, 'start' | 'end' | 'startDate' | 'endDate'> {
  const at = (b: PeriodBound): number => ('instant' in b ? b.instant : place(b.wallMs));
  const out: Pick<MetricsOptions, 'start' | 'end' | 'startDate' | 'endDate'> = {};
  if (query.start) out.start = at(query.start);
  if (query.end) out.end = at(query.end);
  if (out.start !== undefined && out.end !== undefined && out.end <= out.start) throw badRequest('end must be after start', 'end');
  if (query.startDate && query.start && !('instant' in query.start)) out.startDate = query.startDate;
  if (query.endDate && query.end && !('instant' in query.end)) out.endDate = query.endDate;
  return out;
}

/**
 * Places local wall-clock times by the patient's clock as the readings record it: at the offset of
 * the reading nearest to where the time falls (the offset in effect at that moment, DST included).
 * Without readings, the wall time is read as UTC.
 */
export function placeByReadings(readings: readonly MetricReading[]): (wallMs: number) => number {
  return (wallMs) => {
    let best: number | undefined;
    let bestGap = Infinity;
    for (const r of readings) {
      const instant = wallMs - (r.offsetMinutes ?? 0) * 60_000;
      const gap = Math.abs(r.epochMs - instant);
      if (gap < bestGap) {
        bestGap = gap;
        best = instant;
      }
    }
    return best ?? wallMs;
  };
}

function boundValue(b: PeriodBound): number {
  return 'instant' in b ? b.instant : b.wallMs;
}

/**
 * A reporting period from query parameters with local times read at a fixed offset (default UTC);
 * see `parsePeriod` and `placePeriod`.
 */
export function periodFromParams(params: { start?: string; end?: string }, offsetMinutes = 0): Pick<MetricsOptions, 'start' | 'end' | 'startDate' | 'endDate'> {
  return placePeriod(parsePeriod(params), (wallMs) => wallMs - offsetMinutes * 60_000);
}
