/** Metric inputs from parsed records or from stored sensor-reading Observations. */
import type { Observation } from '@medplum/fhirtypes';
import { READING_CODE } from './fhir.js';
import type { MetricReading } from './metrics.js';
import { parseIso } from './time.js';
import type { CgmRecord } from './types.js';
import { parseGlucoseUnit, toMgdl } from './units.js';

/** CGM readings with a value (meter readings, insulin and value-less readings are left out). */
export function metricReadingsFromRecords(records: Iterable<CgmRecord>): MetricReading[] {
  const out: MetricReading[] = [];
  for (const r of records) {
    if (r.kind === 'glucose' && r.method === 'cgm' && r.mgdl !== undefined) out.push({ epochMs: r.epochMs, mgdl: r.mgdl, offsetMinutes: r.offsetMinutes });
  }
  return out;
}

const CGM_CODES = new Set(Object.values(READING_CODE).map((c) => c.code));

/**
 * CGM sensor-reading Observations (LOINC 99504-3 / 105272-9, with a value and an effectiveDateTime)
 * as metric inputs; the offset written in effectiveDateTime gives the local time of day. Anything
 * else (other codes, dataAbsentReason, entered-in-error) is ignored.
 */
export function metricReadingsFromObservations(observations: Iterable<Observation>): MetricReading[] {
  const out: MetricReading[] = [];
  for (const o of observations) {
    if (o.status === 'entered-in-error' || o.status === 'cancelled') continue;
    if (!o.code?.coding?.some((c) => c.system === 'http://loinc.org' && CGM_CODES.has(c.code ?? ''))) continue;
    const q = o.valueQuantity;
    const unit = parseGlucoseUnit(q?.code ?? q?.unit);
    if (!q || typeof q.value !== 'number' || !unit || !o.effectiveDateTime) continue;
    const t = parseIso(o.effectiveDateTime);
    if (!t) continue;
    out.push({ epochMs: t.epochMs, mgdl: toMgdl(q.value, unit), offsetMinutes: t.offsetMinutes ?? 0 });
  }
  return out;
}
