/**
 * Abbott LibreView "Glucose Data" CSV export: an optional metadata line (`Glucose Data,Generated on,
 * …`), then a header (`Device,Serial Number,Device Timestamp,Record Type,Historic Glucose mg/dL,Scan
 * Glucose mg/dL,…,Strip Glucose mg/dL,…`) in the account's language (libreview-columns.ts). Record
 * type 0 (historic, every 15 min) and 1 (scan) are sensor glucose; 2 (strip) is a fingerstick value
 * measured by the reader's built-in blood glucose meter, stored as a meter reading; other types
 * (ketone, insulin, food, notes…) are skipped. Timestamps are the reader's local wall clock with
 * no offset, so a time zone is needed; the day/month order (DD-MM-YYYY vs MM-DD-YYYY) is decided from
 * the data (a day above 12), with the metadata's "Generated on" date as a second clue.
 */
import { Readable } from 'node:stream';
import { parse } from 'csv-parse';
import { GlucoGuardError } from '../../errors.js';
import { CgmInputError } from '../json-stream.js';
import { wallToUtcMs, type WallClock } from '../time.js';
import type { AbsentReason, GlucoseUnit } from '../types.js';
import { csvProblem, CUT_SHORT, glucoseRecord, isCutShort, MAX_CSV_RECORD_CHARS, reject, skip, where, type ParserContext, type ParserItem } from './common.js';
import { expectedHeaders, findColumn, headerLanguage, languagesRead } from './libreview-columns.js';
import { LocalTimes, type LocalReading } from './local-times.js';

/** Rows held back while the day/month order is still open; past this the fallback order is used. */
const MAX_UNDECIDED_ROWS = 20_000;

interface Columns {
  device: number;
  serial: number;
  timestamp: number;
  type: number;
  historic: number;
  scan: number;
  /** -1 when the export has no strip column, or its language's name for it is not known (`stripNamed` false). */
  strip: number;
  stripNamed: boolean;
  unit: GlucoseUnit;
  stripUnit: GlucoseUnit;
  language: string;
  /** Fields of the header row. */
  fields: number;
}

interface Row {
  cells: string[];
  line: number;
  record: number;
}

export async function* parseLibreView(chunks: AsyncIterable<string>, ctx: ParserContext, delimiter: string): AsyncGenerator<ParserItem> {
  const csv = parse({ delimiter, record_delimiter: ['\r\n', '\n', '\r'], relax_column_count: true, skip_empty_lines: true, info: true, raw: true, bom: true, trim: true, max_record_size: MAX_CSV_RECORD_CHARS });
  const source = Readable.from(chunks, { objectMode: false });
  source.on('error', (err) => csv.destroy(err));
  source.pipe(csv);

  let columns: Columns | undefined;
  let metadataDate: [number, number] | undefined;
  let order = ctx.dateOrder;
  ctx.report.usedZone = true;
  if (order) ctx.report.dateOrder = { order, from: 'option', ambiguous: false };
  let held: Row[] = [];
  /** A 12-hour clock (`08:00 AM`) among the undecided rows: how US exports, month first, write times. */
  let twelveHour = false;
  let record = 0;
  // A field separated by semicolons or tabs (Excel in a European locale, its "Unicode text") may hold a
  // decimal comma: there a comma cannot separate fields.
  const decimalComma = delimiter !== ',';

  // A reading in the autumn overlap is placed by the rows around it (local-times.ts), per device and record type.
  const local = new LocalTimes(ctx);
  const emit = (row: Row): ParserItem[] => local.push(toItem(row, columns!, order!, decimalComma));

  try {
    for await (const { record: cells, info, raw } of csv as AsyncIterable<{ record: string[]; info: { lines: number }; raw: string }>) {
      const line = info.lines;
      if (!columns) {
        const header = headerColumns(cells);
        if (header) {
          columns = header;
          continue;
        }
        if (line <= 1) {
          metadataDate = metadataDayMonth(cells);
          continue;
        }
        throw new CgmInputError(`line ${line}: ${NO_HEADER}`, line);
      }
      record++;
      if (isCutShort(raw, cells.length, columns.fields)) {
        const pos = { record, line };
        yield* local.push(reject(pos, 'invalid-record', `${where(pos)}: ${CUT_SHORT}`));
        continue;
      }
      const row: Row = { cells, line, record };
      if (order) {
        yield* emit(row);
        continue;
      }
      const stamp = cells[columns.timestamp] ?? '';
      if (held.length === 0 && /^\d{4}-/.test(stamp.trim())) {
        yield* local.push(toItem(row, columns, 'DMY', decimalComma)); // ISO date: the order does not matter
        continue;
      }
      const clue = dayMonthClue(stamp);
      if (clue) {
        order = clue;
        ctx.report.dateOrder = { order, from: 'data', ambiguous: false };
        for (const h of held) yield* emit(h);
        held = [];
        yield* emit(row);
        continue;
      }
      held.push(row);
      if (/[AaPp][Mm]\s*$/.test(stamp)) twelveHour = true;
      if (held.length >= MAX_UNDECIDED_ROWS) {
        order = fallbackOrder(ctx, metadataDate, twelveHour);
        for (const h of held) yield* emit(h);
        held = [];
      }
    }
  } catch (err) {
    yield* local.flush(); // rows read before the error, held for an overlap: a partial import keeps them
    // ours, from the source (an upload too large, an import stopped): as it is, not "malformed CSV"
    if (err instanceof CgmInputError || err instanceof GlucoGuardError) throw err;
    const line = (err as { lines?: number }).lines;
    throw new CgmInputError(`${line ? `line ${line}: ` : ''}malformed CSV (${csvProblem(err)})`, line);
  }
  if (!columns) throw new CgmInputError(NO_HEADER);
  if (held.length) {
    order ??= fallbackOrder(ctx, metadataDate, twelveHour);
    for (const h of held) yield* emit(h);
  }
  yield* local.flush();
}

/**
 * The order when no reading settles it: the export's "Generated on" date if that does, else a
 * 12-hour clock (`08:00 AM`, as US exports write times) means month first, else day first.
 */
function fallbackOrder(ctx: ParserContext, metadataDate: [number, number] | undefined, twelveHour: boolean): 'DMY' | 'MDY' {
  const fromMeta = metadataDate ? decide(metadataDate[0], metadataDate[1]) : undefined;
  const order = fromMeta ?? (twelveHour ? 'MDY' : 'DMY');
  ctx.report.dateOrder = { order, from: fromMeta ? 'data' : 'fallback', ambiguous: true };
  ctx.report.warnings.push(fromMeta
    ? `day/month order ambiguous in the readings; ${order} taken from the export's "Generated on" date`
    : twelveHour
      ? 'day/month order ambiguous (no day above 12); MM-DD-YYYY assumed from the 12-hour clock (a US export) — pass dateOrder (--date-order) to be sure'
      : 'day/month order ambiguous (no day above 12); DD-MM-YYYY assumed — pass dateOrder (--date-order) to be sure');
  return order;
}

/** Why a file is not read as LibreView: its header is missing or in a language not read. */
const NO_HEADER = `no LibreView header in a language GlucoGuard reads (${languagesRead()}): expected the columns ${expectedHeaders()}; `
  + 'an export in another language is not read — export it from a LibreView account set to one of these languages';

/**
 * Columns by their names in the header's language (libreview-columns.ts). The unit of each glucose
 * column is the one in its name.
 */
function headerColumns(cells: string[]): Columns | undefined {
  const lang = headerLanguage(cells);
  if (!lang) return undefined;
  const historic = findColumn(cells, lang.historic, true);
  const scan = findColumn(cells, lang.scan, true);
  const strip = lang.strip.length ? findColumn(cells, lang.strip, true) : -1;
  const unitOf = (column: number, fallback: GlucoseUnit = 'mg/dL'): GlucoseUnit =>
    column < 0 ? fallback : /mmol/i.test(cells[column] ?? '') ? 'mmol/L' : 'mg/dL';
  const unit = unitOf(historic >= 0 ? historic : scan);
  return {
    device: findColumn(cells, lang.device), serial: findColumn(cells, lang.serial),
    timestamp: findColumn(cells, lang.timestamp), type: findColumn(cells, lang.recordType),
    historic, scan, strip, stripNamed: lang.strip.length > 0, unit, stripUnit: unitOf(strip, unit), language: lang.language, fields: cells.length,
  };
}

const STAMP_RE = /^(\d{1,4})[-/.](\d{1,2})[-/.](\d{1,4})[ T](\d{1,2}):(\d{2})(?::(\d{2}))?\s*([AaPp][Mm])?$/;

/** `05-12-2019` says nothing; `13-12-2019` says DMY; `12-13-2019` says MDY; `2019-12-05` is ISO. */
function dayMonthClue(stamp: string): 'DMY' | 'MDY' | undefined {
  const m = STAMP_RE.exec(stamp);
  if (!m || m[1]!.length === 4) return undefined;
  return decide(+m[1]!, +m[2]!);
}

function decide(a: number, b: number): 'DMY' | 'MDY' | undefined {
  if (a > 12 && b <= 12) return 'DMY';
  if (b > 12 && a <= 12) return 'MDY';
  return undefined;
}

function metadataDayMonth(cells: string[]): [number, number] | undefined {
  for (const c of cells) {
    const m = /^(\d{1,2})[-/.](\d{1,2})[-/.]\d{4}/.exec(c);
    if (m) return [+m[1]!, +m[2]!];
  }
  return undefined;
}

/** Record types that carry glucose: the column each reads, and what it is. */
const GLUCOSE_TYPES: Record<string, { column: 'historic' | 'scan' | 'strip'; label: string; method: 'cgm' | 'smbg' }> = {
  0: { column: 'historic', label: 'historic', method: 'cgm' },
  1: { column: 'scan', label: 'scan', method: 'cgm' },
  2: { column: 'strip', label: 'strip', method: 'smbg' },
};

function toItem(row: Row, cols: Columns, order: 'DMY' | 'MDY', decimalComma: boolean): ParserItem | LocalReading {
  const pos = { record: row.record, line: row.line };
  const type = (row.cells[cols.type] ?? '').trim();
  const kind = Object.hasOwn(GLUCOSE_TYPES, type) ? GLUCOSE_TYPES[type]! : undefined;
  if (!kind) return skip(pos, 'unsupported-record-type', `${where(pos)}: record type ${JSON.stringify(type)} is not glucose`);
  const column = cols[kind.column];
  if (kind.column === 'strip' && !cols.stripNamed) {
    // A strip value whose column this language's header does not name (libreview-columns.ts): said, not guessed.
    return skip(pos, 'unsupported-record-type', `${where(pos)}: record type "2" (strip glucose) not read: no strip glucose column known in a ${cols.language} header`);
  }
  const wall = parseStamp(row.cells[cols.timestamp] ?? '', order);
  const wallMs = wall ? wallToUtcMs(wall) : undefined;
  if (wallMs === undefined) return reject(pos, 'invalid-timestamp', `${where(pos)}: invalid Device Timestamp`);
  const raw = column >= 0 ? (row.cells[column] ?? '').trim() : '';
  if (raw === '') return reject(pos, 'missing-value', `${where(pos)}: no ${kind.label} glucose value`);
  const range = kind.method === 'cgm' ? 'sensor' : 'meter';
  let absent: AbsentReason | undefined;
  let value: number | undefined;
  if (/^(hi|high)$/i.test(raw)) absent = { code: 'positive-infinity', text: `Above the ${range} measurement range (HI)` };
  else if (/^(lo|low)$/i.test(raw)) absent = { code: 'negative-infinity', text: `Below the ${range} measurement range (LO)` };
  else {
    const normalised = decimalComma ? raw.replace(',', '.') : raw;
    value = /^[+-]?\d+(\.\d+)?$/.test(normalised) ? Number(normalised) : undefined;
    if (value === undefined) return reject(pos, 'invalid-value', `${where(pos)}: glucose value is not a number`);
  }
  const serial = (row.cells[cols.serial] ?? '').trim();
  const deviceName = (row.cells[cols.device] ?? '').trim() || 'FreeStyle Libre';
  const deviceId = serial || deviceName;
  return {
    type: 'local',
    pos,
    wallMs,
    // Historic readings (every 15 min), scans and strips (when the patient takes them) are separate runs of one clock.
    series: `${deviceId}\u0000${type}`,
    build: (epochMs, offsetMinutes) => glucoseRecord(pos, {
      source: 'libreview',
      method: kind.method,
      deviceId,
      deviceName,
      ...(serial ? { serialNumber: serial } : {}),
      // A strip is read by the reader the row names (its built-in meter): the meter is named.
      ...(kind.method === 'smbg' ? { deviceNamed: true } : {}),
      ...(kind.column === 'scan' ? { scan: true as const } : {}),
      epochMs,
      offsetMinutes,
      unit: kind.column === 'strip' ? cols.stripUnit : cols.unit,
      ...(absent ? { absent } : { value }),
    }),
  };
}

function parseStamp(stamp: string, order: 'DMY' | 'MDY'): WallClock | undefined {
  const m = STAMP_RE.exec(stamp.trim());
  if (!m) return undefined;
  let year: number, month: number, day: number;
  if (m[1]!.length === 4) [year, month, day] = [+m[1]!, +m[2]!, +m[3]!];
  else if (order === 'DMY') [day, month, year] = [+m[1]!, +m[2]!, +m[3]!];
  else [month, day, year] = [+m[1]!, +m[2]!, +m[3]!];
  if (year < 100) year += 2000;
  let hour = +m[4]!;
  const ampm = m[7]?.toLowerCase();
  if (ampm) {
    if (hour < 1 || hour > 12) return undefined;
    hour = (hour % 12) + (ampm === 'pm' ? 12 : 0);
  }
  return { year, month, day, hour, minute: +m[5]!, second: m[6] ? +m[6] : 0, ms: 0 };
}
