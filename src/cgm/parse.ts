/**
 * The ingest pipeline up to normalised records: input → text → format (detected or given) → parser
 * → checks (impossible values, future timestamps) → de-duplication → unit policy, counting every
 * record in an IngestSummary. Streaming: `openCgm` returns an async iterable; `readCgm` collects it
 * and applies the `partial` rule.
 */
import { GlucoGuardError, badRequest, issue } from '../errors.js';
import { csvDelimiter, csvHeaderLine, detectFormat, looksLikeClarity, looksLikeLibreView } from './detect.js';
import { peekText, textChunks, type CgmInput, type Decoding } from './input.js';
import { parseDexcomClarity } from './parsers/clarity.js';
import type { ParserContext, ParserItem } from './parsers/common.js';
import { parseDexcom } from './parsers/dexcom.js';
import { parseHealthKit } from './parsers/healthkit.js';
import { parseLibreView } from './parsers/libreview.js';
import { expectedHeaders, languagesRead } from './parsers/libreview-columns.js';
import { parseNightscout } from './parsers/nightscout.js';
import { parseOpenMHealth } from './parsers/openmhealth.js';
import { parseTidepool } from './parsers/tidepool.js';
import { isTimeZone, ZoneOffsets } from './time.js';
import type { CgmFormat, CgmRecord, GlucoseRecord, GlucoseUnit, IngestIssue, IngestSummary, ParseOptions, RejectReason, SkipReason, SourcePosition } from './types.js';
import { CGM_FORMATS } from './types.js';
import { fromMgdl, round } from './units.js';

/** Largest plausible glucose; above this a value is rejected as impossible. */
export const MAX_GLUCOSE_MGDL = 1000;
/** How many recent records the in-file duplicate check remembers. */
export const DEDUPE_WINDOW = 50_000;
/** Largest plausible insulin amount (units, or units/h for basal) in one record. */
export const MAX_INSULIN_UNITS = 250;

/** A parse in progress: iterate it for records; `summary` is complete once iteration ends. */
export interface CgmStream extends AsyncIterable<CgmRecord> {
  readonly format: CgmFormat;
  readonly summary: IngestSummary;
}

/**
 * Opens a CGM source: detects (or takes) the format and returns a stream of validated records.
 * Throws `CgmInputError` (code ERR_INVALID) for an unknown format, and while iterating for malformed
 * input, naming the line or record.
 */
export async function openCgm(input: CgmInput, options: ParseOptions = {}): Promise<CgmStream> {
  if (options.format && !CGM_FORMATS.includes(options.format)) throw badRequest(`unknown format "${options.format}" (one of ${CGM_FORMATS.join(', ')})`, 'format');
  if (options.timeZone && !isTimeZone(options.timeZone)) throw badRequest(`"${options.timeZone}" is not an IANA time zone`, 'tz');
  const decoding: Decoding = { encoding: 'utf-8' };
  const peeked = await peekText(textChunks(input, decoding));
  const detection = options.format ? undefined : detectFormat(peeked.head);
  if (!options.format && !detection) {
    if (looksLikeLibreView(peeked.head)) {
      throw badRequest(`this looks like a LibreView export, but its column names are not in a language GlucoGuard reads (${languagesRead()}): `
        + `expected the columns ${expectedHeaders()}; export it from a LibreView account set to one of these languages`, 'format');
    }
    if (looksLikeClarity(peeked.head)) {
      throw badRequest('this looks like a Dexcom Clarity export, but its column names are not in a language GlucoGuard reads (English): '
        + 'expected the columns "Timestamp (YYYY-MM-DDThh:mm:ss)", "Event Type" and "Glucose Value (mg/dL)" (or mmol/L); export it from Dexcom Clarity set to English', 'format');
    }
    throw badRequest(peeked.head.trim() === '' ? 'empty input' : `cannot detect the format of this file; give it explicitly (${CGM_FORMATS.join(', ')})`, 'format');
  }
  const format = options.format ?? detection!.format;
  const zoneName = options.timeZone ?? options.defaultTimeZone ?? 'UTC';
  const ctx: ParserContext = {
    zone: new ZoneOffsets(zoneName),
    dateOrder: options.dateOrder,
    report: { usedZone: false, dst: { nonexistent: 0, ambiguous: 0, resolvedByOrder: 0, resolvedBySequence: 0 }, warnings: [] },
  };
  const delimiter = detection?.delimiter ?? csvDelimiter(csvHeaderLine(peeked.head, format) ?? ',');
  const items = parserFor(format, peeked.chunks, ctx, delimiter);
  const summary: IngestSummary = {
    format, detected: !options.format, read: 0, converted: 0, skipped: 0, rejected: 0,
    skippedByReason: {}, rejectedByReason: {}, issues: [], issuesTruncated: false, warnings: [],
  };
  return {
    format,
    summary,
    [Symbol.asyncIterator]: () => validated(items, summary, ctx, { ...options, timeZone: zoneName }, options.timeZone ? 'option' : 'default', decoding),
  };
}

function parserFor(format: CgmFormat, chunks: AsyncIterable<string>, ctx: ParserContext, delimiter: string): AsyncIterable<ParserItem> {
  switch (format) {
    case 'dexcom': return parseDexcom(chunks);
    case 'dexcom-clarity': return parseDexcomClarity(chunks, ctx, delimiter);
    case 'nightscout': return parseNightscout(chunks);
    case 'libreview': return parseLibreView(chunks, ctx, delimiter);
    case 'tidepool': return parseTidepool(chunks);
    case 'openmhealth': return parseOpenMHealth(chunks);
    case 'healthkit': return parseHealthKit(chunks, ctx);
  }
}

async function* validated(items: AsyncIterable<ParserItem>, summary: IngestSummary, ctx: ParserContext,
  options: ParseOptions & { timeZone: string }, zoneFrom: 'option' | 'default', decoding: Decoding): AsyncGenerator<CgmRecord> {
  const now = options.now ?? Date.now;
  const tolerance = options.futureToleranceMs ?? 5 * 60_000;
  const maxIssues = options.maxIssues ?? 1000;
  /**
   * (kind, device, instant) → first record's value (NaN when absent) and position, for duplicates in
   * one file. Bounded to the last DEDUPE_WINDOW records so memory stays flat on huge files; repeats
   * further apart are still caught by the store's conditional create on the reading identifier.
   */
  let seen = new Map<string, { value: number; record: number; line?: number }>();
  let older = new Map<string, { value: number; record: number; line?: number }>();
  let first = Infinity;
  let last = -Infinity;
  const listed = { skipped: 0, rejected: 0 };

  const note = (kind: 'skipped' | 'rejected', pos: SourcePosition, reason: SkipReason | RejectReason, message: string, quiet = false): void => {
    if (kind === 'skipped') {
      summary.skipped++;
      summary.skippedByReason[reason as SkipReason] = (summary.skippedByReason[reason as SkipReason] ?? 0) + 1;
    } else {
      summary.rejected++;
      summary.rejectedByReason[reason as RejectReason] = (summary.rejectedByReason[reason as RejectReason] ?? 0) + 1;
    }
    if (quiet) return;
    // Separate caps, so a flood of skipped rows cannot hide the rejections that matter.
    if (++listed[kind] <= maxIssues) {
      const entry: IngestIssue = { kind, reason, record: pos.record, message, ...(pos.line !== undefined ? { line: pos.line } : {}) };
      summary.issues.push(entry);
    } else summary.issuesTruncated = true;
  };

  try {
    for await (const item of items) {
      summary.read++;
      if (item.type === 'skip') {
        note('skipped', item.pos, item.reason, item.message, item.quiet);
        continue;
      }
      if (item.type === 'reject') {
        note('rejected', item.pos, item.reason, item.message);
        continue;
      }
      const rec = item.record;
      const at = (): string => (rec.line !== undefined ? `record ${rec.record} (line ${rec.line})` : `record ${rec.record}`);
      const problem = impossible(rec, now(), tolerance);
      if (problem) {
        note('rejected', rec, problem[0], `${at()}: ${problem[1]}`);
        continue;
      }
      // a meter and a sensor value at one instant are two readings, and so are a scan and a historic reading
      const kind = rec.kind !== 'glucose' ? rec.kind : rec.scan ? 'scan' : rec.method;
      const key = `${kind}\u0000${rec.deviceId}\u0000${rec.epochMs}`;
      const value = rec.kind === 'glucose' ? (rec.mgdl ?? Number.NaN) : rec.kind === 'bolus' ? rec.units : rec.rate;
      // a scan of the historic reading's value in its minute adds nothing: one reading (GlucoseRecord.scan)
      const historic = rec.kind === 'glucose' && rec.scan ? `${rec.method}\u0000${rec.deviceId}\u0000${rec.epochMs}` : undefined;
      const twin = historic === undefined ? undefined : seen.get(historic) ?? older.get(historic);
      const prior = seen.get(key) ?? older.get(key) ?? (twin && (Object.is(twin.value, value) || Math.abs(twin.value - value) < 1e-9) ? twin : undefined);
      if (prior) {
        const same = Object.is(prior.value, value) || Math.abs(prior.value - value) < 1e-9;
        const firstAt = prior.line !== undefined ? `record ${prior.record} (line ${prior.line})` : `record ${prior.record}`;
        note('skipped', rec, same ? 'duplicate' : 'conflicting-duplicate',
          same ? `${at()}: duplicate of ${firstAt} (same device and time)` : `${at()}: same device and time as ${firstAt} but a different value; the first is kept`);
        continue;
      }
      seen.set(key, { value, record: rec.record, ...(rec.line !== undefined ? { line: rec.line } : {}) });
      if (seen.size >= DEDUPE_WINDOW / 2) {
        older = seen; // two generations: O(1) forgetting, between DEDUPE_WINDOW/2 and DEDUPE_WINDOW remembered
        seen = new Map();
      }
      const out = rec.kind === 'glucose' ? applyUnit(rec, options.unit ?? 'source') : rec;
      summary.converted++;
      if (rec.epochMs < first) first = rec.epochMs;
      if (rec.epochMs > last) last = rec.epochMs;
      yield out;
    }
  } finally {
    if (ctx.report.usedZone) {
      summary.timeZone = { zone: options.timeZone, from: zoneFrom };
      // nothing in the file says where the sensor was worn: a wrong zone puts every reading at the
      // wrong instant, and a second import in the right one would add readings beside them
      if (zoneFrom === 'default') {
        summary.warnings.push(`the file's times carry no time zone and were read in ${options.timeZone}, the server's default: if the sensor was worn in another zone, every reading is at the wrong instant; give the zone (tz=, --tz) when you import`);
      }
    }
    if (ctx.report.dateOrder) summary.dateOrder = ctx.report.dateOrder;
    const dst = ctx.report.dst;
    if (dst.ambiguous || dst.nonexistent) {
      summary.dstAdjusted = { ...dst };
      if (dst.ambiguous) {
        const unplaced = dst.ambiguous - dst.resolvedByOrder - dst.resolvedBySequence;
        const how = [
          ...(dst.resolvedByOrder ? [`${dst.resolvedByOrder} placed by the readings' order in the file`] : []),
          ...(dst.resolvedBySequence ? [`${dst.resolvedBySequence} placed by the transmitter's clock`] : []),
          ...(unplaced ? [`${unplaced} could not be placed and took the earlier instant`] : []),
        ];
        summary.warnings.push(`${dst.ambiguous} local times fell in the DST overlap (the hour that occurs twice): ${how.join('; ')}`);
      }
      if (dst.nonexistent) summary.warnings.push(`${dst.nonexistent} local times fell in a DST gap; they were moved forward by the gap`);
    }
    if (decoding.encoding !== 'utf-8') summary.encoding = decoding.encoding;
    if (decoding.encoding === 'windows-1252') summary.warnings.push('the file is not valid UTF-8; it was read as Windows-1252 (as Excel saves CSV on Windows)');
    if (decoding.replaced) summary.warnings.push('the file has bytes that are not valid UTF-8 after valid UTF-8 text; they were replaced');
    summary.warnings.push(...ctx.report.warnings);
    if (summary.converted) {
      summary.first = new Date(first).toISOString();
      summary.last = new Date(last).toISOString();
    }
  }
}

/**
 * Earliest plausible time of a record: no CGM or home meter kept readings before 1990. Earlier is a
 * time in seconds where milliseconds are expected (1.7e9 ms is January 1970), or an unset clock.
 */
const EARLIEST_DEVICE_TIME_MS = Date.UTC(1990, 0, 1);

function impossible(rec: CgmRecord, now: number, tolerance: number): [RejectReason, string] | undefined {
  if (rec.epochMs > now + tolerance) return ['future-timestamp', 'timestamp is in the future'];
  if (rec.epochMs < EARLIEST_DEVICE_TIME_MS) return ['invalid-timestamp', 'timestamp before 1990 is not a device time (epoch seconds where milliseconds are expected?)'];
  if (rec.kind === 'glucose') {
    if (rec.mgdl === undefined) return undefined;
    if (rec.mgdl < 0) return ['negative-value', 'negative glucose value'];
    // No meter or sensor reports 0 (below-range readings are flagged LO, not 0); "-0" and 0 are garbage.
    if (rec.mgdl === 0) return ['invalid-value', 'glucose value 0 is not a measurement'];
    if (rec.mgdl > MAX_GLUCOSE_MGDL) return ['value-too-high', `glucose value above ${MAX_GLUCOSE_MGDL} mg/dL`];
    return undefined;
  }
  const amount = rec.kind === 'bolus' ? rec.units : rec.rate;
  if (amount < 0) return ['negative-value', 'negative insulin amount'];
  if (amount > MAX_INSULIN_UNITS) return ['value-too-high', `insulin amount above ${MAX_INSULIN_UNITS} units`];
  if (rec.endEpochMs !== undefined && rec.endEpochMs < rec.epochMs) return ['invalid-record', 'end before start'];
  return undefined;
}

/** Applies the unit policy: Tidepool's mmol/L storage goes back to mg/dL under `source`. */
function applyUnit(rec: GlucoseRecord, policy: 'source' | GlucoseUnit): GlucoseRecord {
  const target: GlucoseUnit = policy === 'source' ? (rec.source === 'tidepool' ? 'mg/dL' : rec.unit) : policy;
  // Tidepool values are mg/dL readings stored converted to mmol/L: always re-derived from mg/dL.
  if (target === rec.unit && rec.source !== 'tidepool') return rec;
  if (rec.mgdl === undefined) return { ...rec, unit: target };
  // Keep one decimal in mg/dL so Tidepool's 18.01559 round trip (e.g. 3.9965… → 72) stays exact.
  const value = target === 'mg/dL' ? round(rec.mgdl, 1) : fromMgdl(rec.mgdl, target);
  return { ...rec, unit: target, value };
}

export interface ReadResult {
  /** False when records were rejected and `partial` was not set: `records` is then empty. */
  accepted: boolean;
  records: CgmRecord[];
  summary: IngestSummary;
}

/**
 * Reads a whole source into memory. With `partial: false` (default) any rejected record makes the
 * whole file rejected (`accepted: false`, no records) — nothing of a bad file gets stored; with
 * `partial: true` the good records are returned and the summary lists the rest.
 */
export async function readCgm(input: CgmInput, options: ParseOptions & { partial?: boolean } = {}): Promise<ReadResult> {
  const stream = await openCgm(input, options);
  const records: CgmRecord[] = [];
  for await (const r of stream) records.push(r);
  const accepted = options.partial === true || stream.summary.rejected === 0;
  return { accepted, records: accepted ? records : [], summary: stream.summary };
}

/** The error to answer a rejected file with (422, one issue per rejected record, lines named). */
export function rejectionError(summary: IngestSummary): GlucoGuardError {
  const rejected = summary.issues.filter((i) => i.kind === 'rejected');
  const issues = rejected.map((i) => issue('ERR_UNPROCESSABLE', i.message));
  if (summary.rejected > rejected.length) issues.push(issue('ERR_UNPROCESSABLE', `${summary.rejected - rejected.length} more rejected records not listed`));
  const message = `${summary.rejected} of ${summary.read} records rejected; nothing was imported (send it again with partial=true to keep the good records)`;
  return new GlucoGuardError('ERR_UNPROCESSABLE', message, [issue('ERR_UNPROCESSABLE', message), ...issues]);
}
