/** Format detection from the first few kilobytes of a source. */
import { isLibreViewHeaderLine } from './parsers/libreview-columns.js';
import type { CgmFormat } from './types.js';

export interface Detection {
  format: CgmFormat;
  /** CSV delimiter (the CSV formats: LibreView, Dexcom Clarity). */
  delimiter?: string;
}

/** The format a source's head looks like, or undefined when it matches none. */
export function detectFormat(head: string): Detection | undefined {
  const text = head.replace(/^\uFEFF/, '').trimStart();
  if (text.startsWith('<')) {
    return /<HealthData[\s>]|<!DOCTYPE\s+HealthData/.test(text) ? { format: 'healthkit' } : undefined;
  }
  if (text.startsWith('{') || text.startsWith('[')) {
    if (/"records"\s*:/.test(text) && /"(systemTime|displayTime|transmitterGeneration)"\s*:/.test(text)) return { format: 'dexcom' };
    if (/"recordType"\s*:\s*"egvs?"/.test(text)) return { format: 'dexcom' };
    // Dexcom API v2: { "unit": …, "rateUnit": …, "egvs": [ { "systemTime", "displayTime", "value", … } ] }
    if (/"egvs"\s*:/.test(text) && /"(systemTime|displayTime)"\s*:/.test(text)) return { format: 'dexcom' };
    if (/"blood_glucose"\s*:/.test(text) || /"schema_id"\s*:\s*\{[^}]*"blood-glucose"/.test(text)) return { format: 'openmhealth' };
    if (/"type"\s*:\s*"(cbg|smbg|bolus|basal|upload|pumpSettings|wizard|cgmSettings|deviceEvent|food)"/.test(text)
      && /"(time|deviceTime|timezoneOffset|uploadId)"\s*:/.test(text)) return { format: 'tidepool' };
    if (/"(sgv|mbg)"\s*:/.test(text) || (/"dateString"\s*:/.test(text) && /"date"\s*:/.test(text))) return { format: 'nightscout' };
    return undefined;
  }
  for (const line of headLines(text)) {
    for (const [format, isHeader] of CSV_HEADERS) if (isHeader(line)) return { format, delimiter: csvDelimiter(line) };
  }
  return undefined;
}

/**
 * What the header line of each CSV format looks like. LibreView may have a metadata line (and an
 * empty line) before it, and names its columns in the export's language: the languages of
 * parsers/libreview-columns.ts are recognised.
 */
const CSV_HEADERS: readonly [CgmFormat, (line: string) => boolean][] = [
  ['libreview', isLibreViewHeaderLine],
  ['dexcom-clarity', (line) => /(^|[,;\t"])\s*Timestamp \(YYYY-MM-DD/i.test(line) && /Event Type/i.test(line) && /Glucose Value/i.test(line)],
];

/** The delimiter of a CSV header line: the most frequent of comma, semicolon and tab. */
export function csvDelimiter(headerLine: string): string {
  const count = (c: string): number => headerLine.split(c).length - 1;
  return [',', ';', '\t'].reduce((best, c) => (count(c) > count(best) ? c : best), ',');
}

/** Header line of a CSV format's head (for the delimiter when the format was given explicitly). */
export function csvHeaderLine(head: string, format: CgmFormat): string | undefined {
  const isHeader = CSV_HEADERS.find(([f]) => f === format)?.[1];
  return isHeader ? headLines(head).find(isHeader) : undefined;
}

/** The first three non-empty lines: where a CSV header may be. */
function headLines(text: string): string[] {
  return text.split(/\r?\n/, 6).filter((line) => line.trim() !== '').slice(0, 3);
}

/**
 * Whether an undetected head still looks like a LibreView export — a row naming a FreeStyle Libre
 * device or reader, whatever the language — so the refusal can say its header language is not read.
 */
export function looksLikeLibreView(head: string): boolean {
  return head.replace(/^\uFEFF/, '').split(/\r?\n/, 8).some((line) => /^"?FreeStyle\s?Libre/i.test(line.trim()));
}

/**
 * Whether an undetected head still looks like a Dexcom Clarity export, in a language whose column
 * names are not read: a header names its timestamp column by the format in the export's letters
 * (German `Zeitstempel (JJJJ-MM-TTThh:mm:ss)`), so the refusal can say why.
 */
export function looksLikeClarity(head: string): boolean {
  return headLines(head.replace(/^\uFEFF/, '').trimStart()).some((line) => /\(\p{L}{4}-\p{L}{2}-\p{L}{2}T ?hh:mm:ss\)/iu.test(line));
}
