/**
 * CGM ingestion library: parse device/platform exports (streaming, format auto-detection), convert
 * to HL7 CGM IG 1.0.0 resources, compute consensus metrics and AGP data. Pure functions: no HTTP,
 * no storage.
 *
 *   const { accepted, records, summary } = await readCgm(fileOrStream, { partial, timeZone, defaultTimeZone });
 *   if (!accepted) throw rejectionError(summary);
 *   const bundle = toTransactionBundle(toResources(records, { patient: 'Patient/123' }));
 *   const metrics = computeMetrics(metricReadingsFromRecords(records));
 *   const { entries } = buildCgmSummary(metrics!, { patient: 'Patient/123' });
 *   const agp = computeAgp(metricReadingsFromObservations(storedObservations));
 */
export type {
  AbsentReason, BasalRecord, BolusRecord, CgmFormat, CgmRecord, GlucoseRecord, GlucoseUnit, IngestIssue, IngestSummary,
  ParseOptions, RejectReason, SkipReason, SourcePosition,
} from './types.js';
export { CGM_FORMATS } from './types.js';
export type { CgmInput } from './input.js';
export { CgmInputError } from './json-stream.js';
export { detectFormat, type Detection } from './detect.js';
export { openCgm, readCgm, rejectionError, MAX_GLUCOSE_MGDL, MAX_INSULIN_UNITS, type CgmStream, type ReadResult } from './parse.js';
export {
  toDevice, toObservation, toMedicationAdministration, toResources, toTransactionBundle, readingIdentifier, deviceIdentifier, deviceRole,
  stableUuid, CGM_IG, PROFILE, IDENTIFIER_SYSTEM, READING_CODE, METER_CODE, GLUCOSE_QUANTITY,
  type ConvertContext, type ConvertedEntry,
} from './fhir.js';
export {
  computeMetrics, medianInterval, parsePeriod, periodFromParams, placeByReadings, placePeriod, selectPeriod,
  type CgmMetrics, type MetricReading, type MetricsOptions, type PeriodBound, type PeriodQuery, type TimesInRanges,
} from './metrics.js';
export { computeAgp, quantileType7, type Agp, type AgpBin } from './agp.js';
export { buildCgmSummary, SUMMARY_PROFILE, SUMMARY_CODE, SUMMARY_IDENTIFIER_SYSTEM, type CgmSummaryEntries } from './summary.js';
export { metricReadingsFromRecords, metricReadingsFromObservations } from './readings.js';
export { MGDL_PER_MMOLL, toMgdl, fromMgdl } from './units.js';
export { formatWithOffset, parseIso, ZoneOffsets } from './time.js';
export { shapeCachedCheck, type ResourceCheck } from './validate.js';
