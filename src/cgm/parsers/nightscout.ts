/**
 * Nightscout `entries` (API v1 JSON array). `sgv` entries are CGM readings in mg/dL (`sgv` may be a
 * string); values below 40 are Dexcom sensor codes, not glucose: 39 is "LOW" (below range), the
 * others are errors. `mbg` entries are meter readings. `date` (epoch ms) is the instant; the offset
 * comes from `dateString`, or from `utcOffset` when `dateString` is in UTC or absent.
 */
import { jsonArrayElements } from '../json-stream.js';
import { parseIso, parseOffset } from '../time.js';
import type { AbsentReason } from '../types.js';
import { glucoseRecord, isObject, numeric, reject, skip, text, where, type ParserItem } from './common.js';

/** Dexcom special glucose values as Nightscout stores them (cgm-remote-monitor errorcodes). */
const ERROR_CODES: Record<number, string> = {
  0: '??0', 1: '?SN (sensor not active)', 2: '??2 (minimal deviation)', 3: '?NA (no antenna)',
  5: '?NC (not calibrated)', 6: '?CD (counts deviation)', 9: '?AD (absolute deviation)',
  10: '??? (power deviation)', 12: '?RF (bad RF)',
};

export async function* parseNightscout(chunks: AsyncIterable<string>): AsyncGenerator<ParserItem> {
  for await (const el of jsonArrayElements(chunks)) {
    const pos = { record: el.record, line: el.line };
    const e = el.value;
    if (!isObject(e)) {
      yield reject(pos, 'invalid-record', `${where(pos)}: not a JSON object`);
      continue;
    }
    const type = text(e.type) ?? (e.sgv !== undefined ? 'sgv' : e.mbg !== undefined ? 'mbg' : undefined);
    if (type !== 'sgv' && type !== 'mbg') {
      yield skip(pos, 'not-glucose', `${where(pos)}: entry type ${JSON.stringify(type ?? null)} is not a glucose reading`);
      continue;
    }
    const when = instant(e);
    if (!when) {
      yield reject(pos, 'invalid-timestamp', `${where(pos)}: missing or invalid date/dateString`);
      continue;
    }
    const raw = type === 'sgv' ? e.sgv : e.mbg;
    if (raw === undefined || raw === null || raw === '') {
      yield reject(pos, 'missing-value', `${where(pos)}: missing ${type}`);
      continue;
    }
    const value = numeric(raw);
    if (value === undefined) {
      yield reject(pos, 'invalid-value', `${where(pos)}: ${type} is not a number`);
      continue;
    }
    const named = text(e.device);
    const device = named ?? 'nightscout';
    let absent: AbsentReason | undefined;
    if (type === 'sgv' && value >= 0 && value < 40) {
      absent = value === 39
        ? { code: 'negative-infinity', text: 'Below the sensor measurement range (LOW)' }
        : { code: 'error', text: `Sensor error code ${value}${ERROR_CODES[value] ? ` ${ERROR_CODES[value]}` : ''}` };
    }
    yield glucoseRecord(pos, {
      source: 'nightscout',
      method: type === 'sgv' ? 'cgm' : 'smbg',
      deviceId: device,
      deviceName: device,
      deviceNamed: named !== undefined,
      epochMs: when.epochMs,
      offsetMinutes: when.offsetMinutes,
      unit: 'mg/dL',
      ...(absent ? { absent } : { value }),
      ...(text(e.direction) ? { trend: text(e.direction) } : {}),
    });
  }
}

function instant(e: Record<string, unknown>): { epochMs: number; offsetMinutes: number } | undefined {
  const fromString = typeof e.dateString === 'string' ? parseIso(e.dateString) : undefined;
  const date = numeric(e.date);
  const epochMs = date ?? fromString?.epochMs;
  if (epochMs === undefined || !Number.isFinite(epochMs) || Math.abs(epochMs) > 8.64e15) return undefined;
  // `utcOffset` is the entry's local offset (Nightscout API v3 stores `date` in UTC and moves the
  // offset there). A `dateString` in UTC (`…Z`, as uploaders write it with toISOString) says nothing
  // about the local clock, so it does not override `utcOffset`; a non-zero offset in it does.
  let offsetMinutes = fromString?.offsetMinutes ? fromString.offsetMinutes : undefined;
  if (offsetMinutes === undefined) {
    const utcOffset = numeric(e.utcOffset);
    if (utcOffset !== undefined) offsetMinutes = utcOffset;
    else if (typeof e.utcOffset === 'string' && /^[+-]\d{2}:?\d{2}$/.test(e.utcOffset.trim())) offsetMinutes = parseOffset(e.utcOffset.trim());
    else offsetMinutes = fromString?.offsetMinutes;
  }
  if (fromString && fromString.offsetMinutes === undefined && date === undefined) return undefined; // local time with no zone
  return { epochMs, offsetMinutes: offsetMinutes !== undefined && Math.abs(offsetMinutes) <= 18 * 60 ? offsetMinutes : 0 };
}
