/**
 * Dexcom Clarity "Export" CSV (G6, G7): a header (`Index,Timestamp (YYYY-MM-DDThh:mm:ss),Event Type,
 * Event Subtype,Patient Info,Device Info,Source Device ID,Glucose Value (mg/dL),…,Transmitter ID`;
 * columns are found by name, as exports differ in which ones they have), then rows without a
 * timestamp that describe the patient, the device and the alert settings, then the events. `EGV` rows
 * are sensor readings; `High`/`Low` for a reading beyond the sensor's range. `Calibration` rows are
 * fingerstick values from a blood glucose meter, entered to calibrate the sensor: stored as meter
 * readings, as LibreView's strip records are, with no Device (the export does not name the meter; the
 * receiver only took the value). Every other event (insulin, carbs, exercise, health, device and
 * alert events) is skipped. Timestamps are the receiver's local wall clock with no offset, so a time
 * zone is needed (the `timeZone` option, as for LibreView).
 *
 * The rows without a timestamp hold the patient's name and date of birth: they are not records. They
 * are passed over unread (no cell of them is kept), never counted, reported or put in a message.
 */
import { Readable } from 'node:stream';
import { parse } from 'csv-parse';
import { GlucoGuardError } from '../../errors.js';
import { CgmInputError } from '../json-stream.js';
import { parseIso } from '../time.js';
import type { AbsentReason, GlucoseUnit } from '../types.js';
import { csvProblem, CUT_SHORT, glucoseRecord, isCutShort, MAX_CSV_RECORD_CHARS, reject, skip, where, type ParserContext, type ParserItem } from './common.js';
import { LocalTimes, type LocalReading } from './local-times.js';

interface Columns {
  timestamp: number;
  eventType: number;
  glucose: number;
  sourceDevice: number;
  transmitter: number;
  /** `Transmitter Time (Long Integer)`: seconds on the transmitter's own clock. */
  transmitterTime: number;
  unit: GlucoseUnit;
}

/** Event types of Clarity exports that are not glucose, named in skip messages (anything else is not echoed). */
const OTHER_EVENTS = new Set(['insulin', 'carbs', 'exercise', 'health', 'device', 'alert', 'notes', 'note']);

export async function* parseDexcomClarity(chunks: AsyncIterable<string>, ctx: ParserContext, delimiter: string): AsyncGenerator<ParserItem> {
  const csv = parse({ delimiter, record_delimiter: ['\r\n', '\n', '\r'], relax_column_count: true, skip_empty_lines: true, info: true, raw: true, bom: true, trim: true, max_record_size: MAX_CSV_RECORD_CHARS });
  const source = Readable.from(chunks, { objectMode: false });
  source.on('error', (err) => csv.destroy(err));
  source.pipe(csv);

  let columns: Columns | undefined;
  let headerFields = 0;
  let record = 0;
  ctx.report.usedZone = true;
  // A field separated by semicolons or tabs (Excel in a European locale, its "Unicode text") may hold a
  // decimal comma: there a comma cannot separate fields.
  const decimalComma = delimiter !== ',';
  // A reading in the autumn overlap is placed by its transmitter's clock or the rows around it (local-times.ts).
  const local = new LocalTimes(ctx);
  try {
    for await (const { record: cells, info, raw } of csv as AsyncIterable<{ record: string[]; info: { lines: number }; raw: string }>) {
      const line = info.lines;
      if (!columns) {
        columns = headerColumns(cells);
        if (!columns) throw new CgmInputError(`line ${line}: no Dexcom Clarity header (expected the English column names "Timestamp", "Event Type" and "Glucose Value")`, line);
        headerFields = cells.length;
        continue;
      }
      const type = (cells[columns.eventType] ?? '').trim().toLowerCase();
      const stamp = (cells[columns.timestamp] ?? '').trim();
      // Patient, device and alert-setting rows: no timestamp. Not records; nothing of them is kept.
      if (stamp === '' && type !== 'egv' && type !== 'calibration') continue;
      record++;
      const item = isCutShort(raw, cells.length, headerFields)
        ? reject({ record, line }, 'invalid-record', `${where({ record, line })}: ${CUT_SHORT}`)
        : toItem(cells, { record, line }, type, stamp, columns, decimalComma);
      yield* local.push(item);
    }
  } catch (err) {
    yield* local.flush(); // rows read before the error, held for an overlap: a partial import keeps them
    // ours, from the source (an upload too large, an import stopped): as it is, not "malformed CSV"
    if (err instanceof CgmInputError || err instanceof GlucoGuardError) throw err;
    const line = (err as { lines?: number }).lines;
    throw new CgmInputError(`${line ? `line ${line}: ` : ''}malformed CSV (${csvProblem(err)})`, line);
  }
  if (!columns) throw new CgmInputError('no Dexcom Clarity header found (expected the English column names "Timestamp", "Event Type" and "Glucose Value")');
  yield* local.flush();
}

function headerColumns(cells: string[]): Columns | undefined {
  const find = (re: RegExp): number => cells.findIndex((c) => re.test(c.trim()));
  const timestamp = find(/^timestamp\b/i);
  const eventType = find(/^event type$/i);
  const glucose = find(/^glucose value\b/i);
  if (timestamp < 0 || eventType < 0 || glucose < 0) return undefined;
  const unit: GlucoseUnit = /mmol/i.test(cells[glucose]!) ? 'mmol/L' : 'mg/dL';
  return {
    timestamp, eventType, glucose, sourceDevice: find(/^source device id$/i), transmitter: find(/^transmitter id$/i),
    transmitterTime: find(/^transmitter time\b/i), unit,
  };
}

function toItem(cells: string[], pos: { record: number; line: number }, type: string, stamp: string, cols: Columns,
  decimalComma: boolean): ParserItem | LocalReading {
  if (type !== 'egv' && type !== 'calibration') {
    const named = OTHER_EVENTS.has(type) ? `event type ${JSON.stringify((cells[cols.eventType] ?? '').trim())}` : 'an unrecognised event type';
    return skip(pos, 'unsupported-record-type', `${where(pos)}: ${named} is not a glucose reading`);
  }
  const meter = type === 'calibration';
  const parsed = parseIso(stamp);
  // Clarity writes ISO local times; a spreadsheet that re-saved the file may have rewritten them (3/1/2026 0:05).
  if (!parsed) return reject(pos, 'invalid-timestamp', `${where(pos)}: invalid Timestamp (expected YYYY-MM-DDThh:mm:ss, as Clarity writes it; a file re-saved by a spreadsheet may have rewritten it)`);
  const raw = (cells[cols.glucose] ?? '').trim();
  if (raw === '') return reject(pos, 'missing-value', `${where(pos)}: no ${meter ? 'calibration ' : ''}glucose value`);
  const range = meter ? 'meter' : 'sensor';
  let absent: AbsentReason | undefined;
  let value: number | undefined;
  if (/^high$/i.test(raw)) absent = { code: 'positive-infinity', text: `Above the ${range} measurement range (High)` };
  else if (/^low$/i.test(raw)) absent = { code: 'negative-infinity', text: `Below the ${range} measurement range (Low)` };
  else {
    const normalised = decimalComma ? raw.replace(',', '.') : raw;
    value = /^[+-]?\d+(\.\d+)?$/.test(normalised) ? Number(normalised) : undefined;
    if (value === undefined) return reject(pos, 'invalid-value', `${where(pos)}: glucose value is not a number`);
  }
  const transmitter = cols.transmitter >= 0 ? (cells[cols.transmitter] ?? '').trim() : '';
  const sourceDevice = cols.sourceDevice >= 0 ? (cells[cols.sourceDevice] ?? '').trim() : '';
  const generation = /\bG(\d)\b/i.exec(sourceDevice)?.[1];
  const deviceId = transmitter || sourceDevice || 'dexcom';
  const build = (epochMs: number, offsetMinutes: number): ParserItem => glucoseRecord(pos, {
    source: 'dexcom-clarity',
    method: meter ? 'smbg' : 'cgm',
    deviceId,
    deviceName: `Dexcom ${generation ? `G${generation}` : 'CGM'}`,
    ...(transmitter ? { serialNumber: transmitter } : {}),
    // The meter a calibration came from is not in the export: the reading gets no Device (fhir.ts deviceRole).
    ...(meter ? { deviceNamed: false } : {}),
    epochMs,
    offsetMinutes,
    unit: cols.unit,
    ...(absent ? { absent } : { value }),
  });
  if (parsed.offsetMinutes !== undefined) return build(parsed.epochMs, parsed.offsetMinutes);
  // The receiver's wall clock: an instant only in the patient's zone. Calibrations are entered now and
  // then, a run apart from the transmitter's readings, and carry no transmitter time.
  const clock = cols.transmitterTime >= 0 && !meter ? (cells[cols.transmitterTime] ?? '').trim() : '';
  return {
    type: 'local', pos, wallMs: parsed.epochMs, series: meter ? `${deviceId}\u0000calibration` : deviceId, build,
    ...(/^\d+$/.test(clock) ? { sequence: Number(clock) } : {}),
  };
}
