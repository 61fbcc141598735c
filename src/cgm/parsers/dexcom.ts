/**
 * Dexcom API v3 `GET /v3/users/self/egvs` response: `{ recordType, recordVersion, userId, records[] }`.
 * `systemTime` is UTC (no designator), `displayTime` the receiver's local clock; their difference is
 * the source offset. `status` "high"/"low" marks readings outside the sensor range.
 */
import { jsonArrayElements } from '../json-stream.js';
import { parseIso } from '../time.js';
import type { AbsentReason } from '../types.js';
import { parseGlucoseUnit } from '../units.js';
import { glucoseRecord, isObject, numeric, reject, text, where, type ParserItem } from './common.js';

export async function* parseDexcom(chunks: AsyncIterable<string>): AsyncGenerator<ParserItem> {
  for await (const el of jsonArrayElements(chunks, 'records')) {
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
    const unit = parseGlucoseUnit(r.unit ?? 'mg/dL');
    if (!unit) {
      yield reject(pos, 'unknown-unit', `${where(pos)}: unknown unit`);
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
