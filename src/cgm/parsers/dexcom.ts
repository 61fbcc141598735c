/**
 * Dexcom API `GET /v3/users/self/egvs` response: `{ recordType, recordVersion, userId, records[] }`,
 * each record with its `unit`; and the v2 response (`GET /v2/users/self/egvs`): `{ unit, rateUnit,
 * egvs[] }`, the unit given once for all readings (Dexcom moved it into each record in v3).
 * `systemTime` is UTC (no designator, or with one from the mobile apps), `displayTime` the device's
 * local clock; their difference is the source offset. `status` "high"/"low" marks readings outside
 * the sensor range.
 */
import { peekText } from '../input.js';
import { jsonArrayElements } from '../json-stream.js';
import { parseIso } from '../time.js';
import type { AbsentReason } from '../types.js';
import { parseGlucoseUnit } from '../units.js';
import { glucoseRecord, isObject, numeric, reject, text, where, type ParserItem } from './common.js';

export async function* parseDexcom(chunks: AsyncIterable<string>): AsyncGenerator<ParserItem> {
  // v2: the unit of every reading is the root's `unit`, which Dexcom writes before the `egvs` array.
  // A v2 response without it there is refused rather than read as mg/dL (its values may be mmol/L).
  const peeked = await peekText(chunks);
  const egvsAt = peeked.head.search(/"egvs"\s*:\s*\[/);
  const v2 = egvsAt >= 0;
  const rootUnit = v2 ? /"unit"\s*:\s*"([^"]*)"/.exec(peeked.head.slice(0, egvsAt))?.[1] : undefined;
  for await (const el of jsonArrayElements(peeked.chunks, ['records', 'egvs'])) {
    const pos = { record: el.record, line: el.line };
    const r = el.value;
    if (!isObject(r) || (r.systemTime === undefined && r.records !== undefined)) {
      yield reject(pos, 'invalid-record', `${where(pos)}: not an EGV record`);
      continue;
    }
    const system = typeof r.systemTime === 'string' ? parseIso(r.systemTime) : undefined;
    if (!system) {
      yield reject(pos, 'invalid-timestamp', `${where(pos)}: missing or invalid systemTime`);
      continue;
    }
    const epochMs = system.epochMs;
    const display = typeof r.displayTime === 'string' ? parseIso(r.displayTime) : undefined;
    let offsetMinutes = display?.offsetMinutes ?? 0;
    if (display && display.offsetMinutes === undefined) {
      // displayTime is local wall clock: offset = local − UTC, to the nearest quarter hour.
      const diff = Math.round((display.epochMs - epochMs) / 900_000) * 15;
      offsetMinutes = Math.abs(diff) <= 14 * 60 ? diff : 0;
    }
    const unit = parseGlucoseUnit(r.unit ?? (v2 ? rootUnit : 'mg/dL'));
    if (!unit) {
      yield reject(pos, 'unknown-unit', `${where(pos)}: ${v2 && r.unit === undefined && rootUnit === undefined ? 'no "unit" before the "egvs" array (Dexcom API v2)' : 'unknown unit'}`);
      continue;
    }
    const status = text(r.status)?.toLowerCase();
    const value = numeric(r.value);
    let absent: AbsentReason | undefined;
    if (status === 'high') absent = { code: 'positive-infinity', text: 'Above the sensor measurement range (HIGH)' };
    else if (status === 'low') absent = { code: 'negative-infinity', text: 'Below the sensor measurement range (LOW)' };
    else if (r.value === null || r.value === undefined) absent = { code: 'unknown', text: 'No value reported by the sensor' };
    else if (value === undefined) {
      yield reject(pos, 'invalid-value', `${where(pos)}: value is not a number`);
      continue;
    }
    const transmitter = text(r.transmitterId);
    const generation = text(r.transmitterGeneration);
    yield glucoseRecord(pos, {
      source: 'dexcom',
      method: 'cgm',
      deviceId: transmitter ?? text(r.displayDevice) ?? 'dexcom',
      deviceName: `Dexcom ${generation ? generation.toUpperCase() : 'CGM'}`,
      ...(transmitter ? { serialNumber: transmitter } : {}),
      epochMs,
      offsetMinutes,
      unit,
      ...(absent ? { absent } : { value }),
      ...(text(r.trend) ? { trend: text(r.trend) } : {}),
    });
  }
}
