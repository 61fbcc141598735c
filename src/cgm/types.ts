/**
 * The normalised shapes every CGM source parser produces. Parsers know about file formats; the
 * converters (fhir.ts), metrics and AGP know only these types.
 */

/** Source formats the parsers understand. */
export type CgmFormat = 'dexcom' | 'dexcom-clarity' | 'nightscout' | 'libreview' | 'tidepool' | 'openmhealth' | 'healthkit';

export const CGM_FORMATS: readonly CgmFormat[] = ['dexcom', 'dexcom-clarity', 'nightscout', 'libreview', 'tidepool', 'openmhealth', 'healthkit'];

export type GlucoseUnit = 'mg/dL' | 'mmol/L';

/**
 * Why a reading has no value. Codes are from http://terminology.hl7.org/CodeSystem/data-absent-reason:
 * `error` for sensor error codes, `positive-infinity`/`negative-infinity` for readings the sensor
 * flags as above/below its measurement range ("HIGH"/"LOW").
 */
export interface AbsentReason {
  code: 'error' | 'positive-infinity' | 'negative-infinity' | 'unknown';
  /** Human-readable detail, e.g. `Sensor error code 5 (?NC)`. */
  text: string;
}

/** Where in the source a record came from (for messages and identifiers). */
export interface SourcePosition {
  /** 1-based ordinal of the record in the source (array element, CSV data row, XML record). */
  record: number;
  /** 1-based line where the record starts (JSON, XML) or ends (CSV), when known. */
  line?: number;
}

interface RecordBase extends SourcePosition {
  source: CgmFormat;
  /** Stable device identifier within the source (transmitter id, serial number, device string). */
  deviceId: string;
  /** Human-readable device name (manufacturer and model when known). */
  deviceName: string;
  /** Serial number when the source gives one. */
  serialNumber?: string;
  /**
   * Whether the source names the device (false: `deviceId`/`deviceName` are a stand-in such as
   * `nightscout`). A meter reading references a Device only when it is named (fhir.ts).
   */
  deviceNamed?: boolean;
}

/** One glucose measurement: a CGM sensor reading or a fingerstick (SMBG) value. */
export interface GlucoseRecord extends RecordBase {
  kind: 'glucose';
  /** `cgm` for interstitial sensor readings, `smbg` for capillary meter readings. */
  method: 'cgm' | 'smbg';
  /** Instant of the measurement. */
  epochMs: number;
  /** UTC offset of the source clock at that instant, in minutes east of UTC. */
  offsetMinutes: number;
  /** ISO 8601 date-time with the source offset (what `effectiveDateTime` carries). */
  time: string;
  /** Unit the value is kept in (and the profile chosen). */
  unit: GlucoseUnit;
  /** Value in `unit`; absent when `absent` is set. */
  value?: number;
  /** Value in mg/dL (for metrics); absent when `absent` is set. */
  mgdl?: number;
  absent?: AbsentReason;
  /** Trend arrow as the source states it (Dexcom `trend`, Nightscout `direction`). */
  trend?: string;
  /**
   * An on-demand sensor reading taken beside the periodic ones (a LibreView scan, record type 1):
   * one in the same minute as a historic reading is a second reading, not a duplicate of it.
   */
  scan?: true;
}

/** An insulin bolus (possibly with an extended part). */
export interface BolusRecord extends RecordBase {
  kind: 'bolus';
  epochMs: number;
  offsetMinutes: number;
  time: string;
  /** Total delivered units (normal + extended). */
  units: number;
  /** End of an extended (square-wave) part, when there is one. */
  endTime?: string;
  endEpochMs?: number;
}

/** A basal insulin segment: a rate over a period. */
export interface BasalRecord extends RecordBase {
  kind: 'basal';
  epochMs: number;
  offsetMinutes: number;
  time: string;
  endEpochMs: number;
  endTime: string;
  /** Units per hour (0 for a suspension). */
  rate: number;
  deliveryType?: string;
}

export type CgmRecord = GlucoseRecord | BolusRecord | BasalRecord;

/** Stable codes for why a record was skipped (ignored on purpose) or rejected (bad data). */
export type SkipReason = 'not-glucose' | 'unsupported-record-type' | 'duplicate' | 'conflicting-duplicate' | 'outside-period';
export type RejectReason =
  | 'invalid-timestamp' | 'future-timestamp' | 'missing-value' | 'invalid-value' | 'negative-value'
  | 'value-too-high' | 'unknown-unit' | 'invalid-record'
  /** The source became unreadable part way (truncated or malformed): only with `partial`, the rest was not read. */
  | 'unreadable-input';

export interface IngestIssue extends SourcePosition {
  kind: 'skipped' | 'rejected';
  reason: SkipReason | RejectReason;
  /** Message without glucose values or other health data (safe to log). */
  message: string;
}

export interface IngestSummary {
  format: CgmFormat;
  /** True when the format was detected from the content, false when given explicitly. */
  detected: boolean;
  /** Records seen in the source (every row/element/record, including skipped and rejected ones). */
  read: number;
  /** Records that passed and were returned. */
  converted: number;
  skipped: number;
  rejected: number;
  skippedByReason: Partial<Record<SkipReason, number>>;
  rejectedByReason: Partial<Record<RejectReason, number>>;
  /** Individual issues in source order (the first `maxIssues` skipped and the first `maxIssues` rejected; counts above are complete). */
  issues: IngestIssue[];
  /** True when `issues` was cut at `maxIssues`. */
  issuesTruncated: boolean;
  /** Time zone applied to device-local timestamps (LibreView, Dexcom Clarity), and whether it came from the option or the default. */
  timeZone?: { zone: string; from: 'option' | 'default' };
  /** LibreView day/month order used, how it was decided, and whether the data alone left it ambiguous. */
  dateOrder?: { order: 'DMY' | 'MDY'; from: 'option' | 'data' | 'fallback'; ambiguous: boolean };
  /**
   * Local times that fell in a DST gap (moved forward) or in the overlap (the hour that occurs
   * twice). Of the ambiguous ones, `resolvedByOrder` were placed in their pass by the readings' order
   * in the file and `resolvedBySequence` by a per-device clock (Clarity's Transmitter Time); the
   * rest took the earlier instant (docs/cgm-formats.md).
   */
  dstAdjusted?: { nonexistent: number; ambiguous: number; resolvedByOrder: number; resolvedBySequence: number };
  /** Set when the input was not UTF-8: `windows-1252` (not valid UTF-8, with a warning) or UTF-16 (by its byte-order mark). */
  encoding?: 'windows-1252' | 'utf-16le' | 'utf-16be';
  /** First and last instants of returned records (ISO, UTC). */
  first?: string;
  last?: string;
  warnings: string[];
}

export interface ParseOptions {
  /** Skip detection and use this format. */
  format?: CgmFormat;
  /** IANA zone for device-local timestamps (LibreView, Dexcom Clarity); wins over `defaultTimeZone`. */
  timeZone?: string;
  /** Zone used when `timeZone` is not given (the lead passes config.defaultTimeZone). Default `UTC`. */
  defaultTimeZone?: string;
  /** LibreView day/month order; detected from the data when absent. */
  dateOrder?: 'DMY' | 'MDY';
  /** Clock for the future-timestamp check (tests freeze it). Default `Date.now`. */
  now?: () => number;
  /** Readings up to this far in the future are accepted (device clock skew). Default 5 minutes. */
  futureToleranceMs?: number;
  /** Largest number of individual skipped, and of rejected, issues listed in the summary. Default 1000 each. */
  maxIssues?: number;
  /**
   * Unit policy for glucose values: keep the source unit (default), or convert everything to one unit.
   * Tidepool stores mg/dL data as mmol/L, so under `source` Tidepool values go back to mg/dL.
   */
  unit?: 'source' | GlucoseUnit;
}
