/** Format detection from the first few kilobytes of a source. */
import type { CgmFormat } from './types.js';

export interface Detection {
  format: CgmFormat;
  /** CSV delimiter (LibreView only). */
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
    if (/"blood_glucose"\s*:/.test(text) || /"schema_id"\s*:\s*\{[^}]*"blood-glucose"/.test(text)) return { format: 'openmhealth' };
    if (/"type"\s*:\s*"(cbg|smbg|bolus|basal|upload|pumpSettings|wizard|cgmSettings|deviceEvent|food)"/.test(text)
      && /"(time|deviceTime|timezoneOffset|uploadId)"\s*:/.test(text)) return { format: 'tidepool' };
    if (/"(sgv|mbg)"\s*:/.test(text) || (/"dateString"\s*:/.test(text) && /"date"\s*:/.test(text))) return { format: 'nightscout' };
    return undefined;
  }
  const lines = text.split(/\r?\n/, 3);
  for (const line of lines.slice(0, 2)) {
    if (/Device Timestamp/i.test(line) && /Record Type/i.test(line)) return { format: 'libreview', delimiter: csvDelimiter(line) };
  }
  return undefined;
}

/** The delimiter of a LibreView header line: the most frequent of comma, semicolon and tab. */
export function csvDelimiter(headerLine: string): string {
  const count = (c: string): number => headerLine.split(c).length - 1;
  return [',', ';', '\t'].reduce((best, c) => (count(c) > count(best) ? c : best), ',');
}

/** Header line of a LibreView head (for the delimiter when the format was given explicitly). */
export function libreViewHeaderLine(head: string): string | undefined {
  return head.split(/\r?\n/, 3).find((l) => /Device Timestamp/i.test(l) && /Record Type/i.test(l));
}
