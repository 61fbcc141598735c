/** What each parser yields, and small helpers shared by the parsers. */
import type { AbsentReason, CgmFormat, CgmRecord, GlucoseRecord, GlucoseUnit, RejectReason, SkipReason, SourcePosition } from '../types.js';
import { formatWithOffset, ZoneOffsets } from '../time.js';
import { toMgdl } from '../units.js';

export type ParserItem =
  | { type: 'record'; record: CgmRecord }
  | { type: 'skip'; pos: SourcePosition; reason: SkipReason; message: string; quiet?: boolean }
  | { type: 'reject'; pos: SourcePosition; reason: RejectReason; message: string };

/** Settings the parsers need, resolved once from ParseOptions. */
export interface ParserContext {
  zone: ZoneOffsets;
  dateOrder?: 'DMY' | 'MDY';
  /** Filled in by parsers that decide things the summary reports. */
  report: {
    usedZone: boolean;
    dateOrder?: { order: 'DMY' | 'MDY'; from: 'option' | 'data' | 'fallback'; ambiguous: boolean };
    /** DST gap and overlap times; the ambiguous ones placed by file order or a per-device clock (the rest took the earlier instant). */
    dst: { nonexistent: number; ambiguous: number; resolvedByOrder: number; resolvedBySequence: number };
    warnings: string[];
  };
}

export const skip = (pos: SourcePosition, reason: SkipReason, message: string): ParserItem => ({ type: 'skip', pos, reason, message });
export const reject = (pos: SourcePosition, reason: RejectReason, message: string): ParserItem => ({ type: 'reject', pos, reason, message });

export function where(pos: SourcePosition): string {
  return pos.line !== undefined ? `record ${pos.record} (line ${pos.line})` : `record ${pos.record}`;
}

export interface GlucoseInit {
  source: CgmFormat;
  method: 'cgm' | 'smbg';
  deviceId: string;
  deviceName: string;
  serialNumber?: string;
  /** False when deviceId/deviceName are a stand-in because the source names no device. */
  deviceNamed?: boolean;
  epochMs: number;
  offsetMinutes: number;
  unit: GlucoseUnit;
  value?: number;
  absent?: AbsentReason;
  trend?: string;
  scan?: true;
}

export function glucoseRecord(pos: SourcePosition, init: GlucoseInit): ParserItem {
  const record: GlucoseRecord = {
    kind: 'glucose',
    record: pos.record,
    ...(pos.line !== undefined ? { line: pos.line } : {}),
    source: init.source,
    method: init.method,
    deviceId: init.deviceId,
    deviceName: init.deviceName,
    ...(init.serialNumber ? { serialNumber: init.serialNumber } : {}),
    ...(init.deviceNamed !== undefined ? { deviceNamed: init.deviceNamed } : {}),
    epochMs: init.epochMs,
    offsetMinutes: init.offsetMinutes,
    time: formatWithOffset(init.epochMs, init.offsetMinutes),
    unit: init.unit,
    ...(init.absent ? { absent: init.absent } : { value: init.value, mgdl: toMgdl(init.value!, init.unit) }),
    ...(init.trend ? { trend: init.trend } : {}),
    ...(init.scan ? { scan: true as const } : {}),
  };
  return { type: 'record', record };
}

export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A number from a JSON number or numeric string; undefined for anything else. */
export function numeric(v: unknown): number | undefined {
  if (typeof v === 'number') return Number.isFinite(v) ? v : undefined;
  if (typeof v === 'string' && v.trim() !== '' && /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(v.trim())) return Number(v);
  return undefined;
}

export function text(v: unknown): string | undefined {
  return typeof v === 'string' && v.trim() !== '' ? v.trim() : undefined;
}

/**
 * Longest CSV record read (csv-parse `max_record_size`, characters). An export row is well under a
 * kilobyte (a LibreView note a few hundred characters); without a bound a single line of a 512 MB
 * upload is held whole, then copied into fields.
 */
export const MAX_CSV_RECORD_CHARS = 1024 * 1024;

/**
 * Whether a CSV row is the cut-off end of a truncated export (an interrupted download): fewer fields
 * than the header and no line break after it (`raw`: csv-parse's text of the row, line break
 * included), so it is the last line. A value cut short there reads as another number (145 mg/dL as
 * 14), so the row is rejected with `CUT_SHORT`, never read.
 */
export function isCutShort(raw: string, fields: number, headerFields: number): boolean {
  return fields < headerFields && !/[\r\n]$/.test(raw);
}

export const CUT_SHORT = 'the last line is cut short (fewer fields than the header, no line break after it): is the file truncated?';

/**
 * What a CSV parse error says, safe to show and log: from csv-parse's error code, since its messages
 * quote the field being read (a patient's name, a note). Other errors (the source failing) keep
 * their first line.
 */
export function csvProblem(err: unknown): string {
  switch ((err as { code?: unknown }).code) {
    case 'INVALID_OPENING_QUOTE': return 'a quote inside an unquoted field';
    case 'CSV_INVALID_CLOSING_QUOTE':
    case 'CSV_NON_TRIMABLE_CHAR_AFTER_CLOSING_QUOTE': return 'text after a closing quote';
    case 'CSV_QUOTE_NOT_CLOSED': return 'a quote that is never closed';
    case 'CSV_MAX_RECORD_SIZE': return 'a record too large';
    default: {
      const code = (err as { code?: unknown }).code;
      if (typeof code === 'string' && /^(CSV_|INVALID_)/.test(code)) return 'unreadable record';
      return String((err as Error).message ?? err).split('\n')[0]!;
    }
  }
}
