/** Metric inputs from parsed records or from stored sensor-reading Observations. */
import type { Observation } from '@medplum/fhirtypes';
import { DATA_ABSENT_REASON, READING_CODE } from './fhir.js';
import type { MetricReading } from './metrics.js';
import { parseIso } from './time.js';
import type { CgmRecord } from './types.js';
import { parseGlucoseUnit, toMgdl } from './units.js';

/**
 * CGM readings with a value, and HIGH/LOW readings as mgdl ±Infinity (see metrics.ts). Meter readings,
 * insulin and readings without a value for another reason (sensor error, unknown) are left out.
 */
export function metricReadingsFromRecords(records: Iterable<CgmRecord>): MetricReading[] {
  const out: MetricReading[] = [];
  for (const r of records) {
    if (r.kind !== 'glucose' || r.method !== 'cgm') continue;
    if (r.absent) {
      const mgdl = OUT_OF_RANGE[r.absent.code];
      if (mgdl !== undefined) out.push({ epochMs: r.epochMs, mgdl, offsetMinutes: r.offsetMinutes, device: recordDevice(r) });
    } else if (r.mgdl !== undefined) {
      const reading: MetricReading = { epochMs: r.epochMs, mgdl: r.mgdl, offsetMinutes: r.offsetMinutes, device: recordDevice(r) };
      if (r.unit === 'mmol/L' && r.value !== undefined) reading.mmolL = r.value;
      out.push(reading);
    }
  }
  return out;
}

/** A record's device as a metric key (each device is weighted by its own sampling interval). */
function recordDevice(r: CgmRecord): string {
  return `${r.source}\u0000${r.deviceId}`;
}

/** A stored reading's device as a metric key: its Device reference (or identifier); none when it names none. */
function observationDevice(o: Observation): string | undefined {
  const d = o.device;
  if (!d) return undefined;
  if (d.reference) return d.reference;
  return d.identifier?.value !== undefined ? `${d.identifier.system ?? ''}|${d.identifier.value}` : undefined;
}

/** dataAbsentReason codes that mean "outside the sensor's measurement range", as metric values. */
const OUT_OF_RANGE: Partial<Record<string, number>> = { 'negative-infinity': -Infinity, 'positive-infinity': Infinity };

const CGM_CODES = new Set(Object.values(READING_CODE).map((c) => c.code));

/**
 * CGM sensor-reading Observations (LOINC 99504-3 / 105272-9, with an effectiveDateTime) as metric
 * inputs; the offset written in effectiveDateTime gives the local time of day. A reading counts when
 * it has a glucose value, or a dataAbsentReason (data-absent-reason code system) of
 * negative-infinity (LOW: -Infinity) or positive-infinity (HIGH: +Infinity) — how every parser stores
 * HI/LO. Anything else (other codes, other absent reasons such as `error`, entered-in-error) is ignored.
 */
export function metricReadingsFromObservations(observations: Iterable<Observation>): MetricReading[] {
  const out: MetricReading[] = [];
  for (const o of observations) {
    if (o.status === 'entered-in-error' || o.status === 'cancelled') continue;
    if (!o.code?.coding?.some((c) => c.system === 'http://loinc.org' && CGM_CODES.has(c.code ?? ''))) continue;
    if (!o.effectiveDateTime) continue;
    const q = o.valueQuantity;
    const unit = parseGlucoseUnit(q?.code ?? q?.unit);
    let mgdl: number | undefined;
    if (q) {
      if (typeof q.value === 'number' && unit) mgdl = toMgdl(q.value, unit);
    } else {
      const code = o.dataAbsentReason?.coding?.find((c) => c.system === DATA_ABSENT_REASON)?.code;
      if (code !== undefined) mgdl = OUT_OF_RANGE[code];
    }
    if (mgdl === undefined) continue;
    const t = parseIso(o.effectiveDateTime);
    if (!t) continue;
    const reading: MetricReading = { epochMs: t.epochMs, mgdl, offsetMinutes: t.offsetMinutes ?? 0 };
    const device = observationDevice(o);
    if (device !== undefined) reading.device = device;
    if (unit === 'mmol/L' && q) reading.mmolL = q.value;
    out.push(reading);
  }
  return out;
}
