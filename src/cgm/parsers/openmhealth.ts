/**
 * Open mHealth `omh:blood-glucose:4.0` data points: a JSON array of data points (`{header, body}`)
 * or bare bodies, or a single one. `specimen_source` "interstitial fluid" is a CGM reading and
 * "capillary blood" a meter reading; one with no specimen is taken as a CGM reading (what CGM apps
 * export); any other specimen (plasma, whole blood, tears…) is neither — a laboratory or other
 * test, not sensor data — and is skipped, named in the report, rather than counted as CGM.
 */
import { jsonArrayElements } from '../json-stream.js';
import { parseIso } from '../time.js';
import { parseGlucoseUnit } from '../units.js';
import { glucoseRecord, isObject, numeric, reject, skip, text, where, type ParserItem } from './common.js';

export async function* parseOpenMHealth(chunks: AsyncIterable<string>): AsyncGenerator<ParserItem> {
  for await (const el of jsonArrayElements(chunks)) {
    const pos = { record: el.record, line: el.line };
    const point = el.value;
    if (!isObject(point)) {
      yield reject(pos, 'invalid-record', `${where(pos)}: not a JSON object`);
      continue;
    }
    const header = isObject(point.header) ? point.header : undefined;
    const body = isObject(point.body) ? point.body : point;
    const schema = header && isObject(header.schema_id) ? text(header.schema_id.name) : undefined;
    if ((schema && schema !== 'blood-glucose') || !isObject(body.blood_glucose)) {
      yield skip(pos, 'not-glucose', `${where(pos)}: not a blood-glucose data point`);
      continue;
    }
    const frame = isObject(body.effective_time_frame) ? body.effective_time_frame : {};
    const interval = isObject(frame.time_interval) ? frame.time_interval : undefined;
    const stamp = text(frame.date_time) ?? (interval ? text(interval.start_date_time) ?? text(interval.end_date_time) : undefined);
    const t = stamp ? parseIso(stamp) : undefined;
    if (!t || t.offsetMinutes === undefined) {
      yield reject(pos, 'invalid-timestamp', `${where(pos)}: missing or invalid effective_time_frame (RFC 3339 with offset required)`);
      continue;
    }
    let epochMs = t.epochMs;
    if (interval && stamp === text(interval.end_date_time) && interval.duration !== undefined) {
      // an interval given by its end and duration: the reading is at its start, as for the other forms
      const ms = durationMs(interval.duration);
      if (ms === undefined) {
        yield reject(pos, 'invalid-timestamp', `${where(pos)}: time_interval duration is not a fixed length (a number with unit ps, ns, us, ms, sec, min, h, d or wk)`);
        continue;
      }
      epochMs -= ms;
    }
    const unit = parseGlucoseUnit(body.blood_glucose.unit);
    if (!unit) {
      yield reject(pos, 'unknown-unit', `${where(pos)}: unknown blood_glucose unit`);
      continue;
    }
    const value = numeric(body.blood_glucose.value);
    if (value === undefined) {
      yield reject(pos, body.blood_glucose.value === undefined ? 'missing-value' : 'invalid-value', `${where(pos)}: missing or invalid blood_glucose value`);
      continue;
    }
    const provenance = header && isObject(header.acquisition_provenance) ? header.acquisition_provenance : {};
    const named = text(provenance.source_name);
    const device = named ?? 'openmhealth';
    const specimen = text(body.specimen_source)?.toLowerCase();
    if (specimen !== undefined && specimen !== 'interstitial fluid' && specimen !== 'capillary blood') {
      yield skip(pos, 'unsupported-record-type', `${where(pos)}: specimen_source "${specimen.slice(0, 40)}" is neither a sensor (interstitial fluid) nor a meter (capillary blood) reading`);
      continue;
    }
    yield glucoseRecord(pos, {
      source: 'openmhealth',
      method: specimen === 'capillary blood' ? 'smbg' : 'cgm',
      deviceId: device,
      deviceName: device,
      deviceNamed: named !== undefined,
      epochMs,
      offsetMinutes: t.offsetMinutes,
      unit,
      value,
    });
  }
}

/** Milliseconds in one of Open mHealth's duration units of fixed length (months and years are not). */
const DURATION_UNIT_MS: Record<string, number> = { ps: 1e-9, ns: 1e-6, us: 1e-3, ms: 1, sec: 1000, min: 60_000, h: 3_600_000, d: 86_400_000, wk: 604_800_000 };

/** An omh duration-unit-value (`{value, unit}`) in whole milliseconds; undefined when it is not one of fixed length. */
function durationMs(duration: unknown): number | undefined {
  if (!isObject(duration)) return undefined;
  const value = numeric(duration.value);
  const unit = text(duration.unit);
  if (value === undefined || value < 0 || unit === undefined || !Object.hasOwn(DURATION_UNIT_MS, unit)) return undefined;
  return Math.round(value * DURATION_UNIT_MS[unit]!);
}
