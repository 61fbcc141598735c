/**
 * Tidepool data export (JSON array of data objects). `cbg` (CGM) and `smbg` (meter) carry glucose;
 * Tidepool keeps values in mmol/L converted from mg/dL with 18.01559. `bolus` and `basal` become
 * insulin records. `time` is UTC; `timezoneOffset` (minutes) is the device's offset. A reading the
 * device could not measure carries the annotation `{ code: 'bg/out-of-range', value: 'low' | 'high',
 * threshold }` beside the threshold as its value: stored as below / above the measurement range
 * (data-absent-reason negative- / positive-infinity), as Dexcom and LibreView LOW/HIGH are, never as
 * a measured 40 or 400.
 */
import { jsonArrayElements } from '../json-stream.js';
import { formatWithOffset, parseIso } from '../time.js';
import { parseGlucoseUnit } from '../units.js';
import type { AbsentReason } from '../types.js';
import { glucoseRecord, isObject, numeric, reject, skip, text, where, type ParserItem } from './common.js';

export async function* parseTidepool(chunks: AsyncIterable<string>): AsyncGenerator<ParserItem> {
  for await (const el of jsonArrayElements(chunks)) {
    const pos = { record: el.record, line: el.line };
    const d = el.value;
    if (!isObject(d)) {
      yield reject(pos, 'invalid-record', `${where(pos)}: not a JSON object`);
      continue;
    }
    const type = text(d.type);
    if (type !== 'cbg' && type !== 'smbg' && type !== 'bolus' && type !== 'basal') {
      yield skip(pos, 'not-glucose', `${where(pos)}: data type ${JSON.stringify(type ?? null)} is not glucose or insulin`);
      continue;
    }
    const t = typeof d.time === 'string' ? parseIso(d.time) : undefined;
    if (!t) {
      yield reject(pos, 'invalid-timestamp', `${where(pos)}: missing or invalid time`);
      continue;
    }
    const tzo = numeric(d.timezoneOffset);
    const offsetMinutes = tzo !== undefined && Math.abs(tzo) <= 18 * 60 ? Math.round(tzo) : t.offsetMinutes ?? 0;
    const deviceId = text(d.deviceId) ?? 'tidepool';
    const base = { source: 'tidepool' as const, deviceId, deviceName: deviceId, epochMs: t.epochMs, offsetMinutes };
    const deviceNamed = text(d.deviceId) !== undefined;

    if (type === 'cbg' || type === 'smbg') {
      const unit = parseGlucoseUnit(d.units);
      if (!unit) {
        yield reject(pos, 'unknown-unit', `${where(pos)}: unknown units`);
        continue;
      }
      const method = type === 'cbg' ? 'cgm' : 'smbg';
      const outOfRange = outOfRangeOf(d.annotations);
      if (outOfRange) {
        yield glucoseRecord(pos, { ...base, deviceNamed, method, unit, absent: outOfRange });
        continue;
      }
      const value = numeric(d.value);
      if (value === undefined) {
        yield reject(pos, d.value === undefined ? 'missing-value' : 'invalid-value', `${where(pos)}: missing or invalid value`);
        continue;
      }
      yield glucoseRecord(pos, { ...base, deviceNamed, method, unit, value });
      continue;
    }

    const time = formatWithOffset(t.epochMs, offsetMinutes);
    const durationMs = numeric(d.duration) ?? 0;
    if (durationMs < 0) {
      yield reject(pos, 'invalid-record', `${where(pos)}: negative duration`);
      continue;
    }
    if (type === 'bolus') {
      const normal = numeric(d.normal) ?? 0;
      const extended = numeric(d.extended) ?? 0;
      if (d.normal === undefined && d.extended === undefined) {
        yield reject(pos, 'missing-value', `${where(pos)}: bolus without normal or extended amount`);
        continue;
      }
      const ext = extended > 0 && durationMs > 0;
      yield {
        type: 'record',
        record: {
          kind: 'bolus', ...pos, ...base, time, units: normal + extended,
          ...(ext ? { endEpochMs: t.epochMs + durationMs, endTime: formatWithOffset(t.epochMs + durationMs, offsetMinutes) } : {}),
        },
      };
      continue;
    }
    const deliveryType = text(d.deliveryType);
    const rate = numeric(d.rate) ?? (deliveryType === 'suspend' ? 0 : undefined);
    if (rate === undefined) {
      yield reject(pos, 'missing-value', `${where(pos)}: basal without rate`);
      continue;
    }
    yield {
      type: 'record',
      record: {
        kind: 'basal', ...pos, ...base, time, rate,
        endEpochMs: t.epochMs + durationMs, endTime: formatWithOffset(t.epochMs + durationMs, offsetMinutes),
        ...(deliveryType ? { deliveryType } : {}),
      },
    };
  }
}

/** The measurement-range annotation of a Tidepool glucose datum (`bg/out-of-range`), as why it has no value. */
function outOfRangeOf(annotations: unknown): AbsentReason | undefined {
  if (!Array.isArray(annotations)) return undefined;
  for (const a of annotations) {
    if (!isObject(a) || a.code !== 'bg/out-of-range') continue;
    if (a.value === 'low') return { code: 'negative-infinity', text: 'Below the device measurement range (Tidepool bg/out-of-range low)' };
    if (a.value === 'high') return { code: 'positive-infinity', text: 'Above the device measurement range (Tidepool bg/out-of-range high)' };
  }
  return undefined;
}
