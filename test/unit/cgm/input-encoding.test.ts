/**
 * What bytes a CGM export arrives in: UTF-8 (with or without BOM), UTF-16 with a BOM (Excel's
 * "Unicode text"), or Windows-1252 (Excel's CSV on Windows in a Western European locale). A file
 * that is not valid UTF-8 is read as Windows-1252, and the report says so.
 */
import { Readable } from 'node:stream';
import { describe, expect, test } from '@jest/globals';
import { detectFormat, readCgm, type CgmRecord, type GlucoseRecord } from '../../../src/cgm/index.js';

const NOW = () => Date.parse('2025-01-01T00:00:00Z');
const glucose = (records: CgmRecord[]): GlucoseRecord[] => records.filter((r): r is GlucoseRecord => r.kind === 'glucose');

/** A German LibreView export as Excel writes it (semicolons, decimal commas in mmol/L), synthetic values. */
const GERMAN = [
  'Glukose-Werte;Erstellt am;24-02-2021 12:12 UTC;Erstellt von;Synthetische Person',
  'Gerät;Seriennummer;Gerätezeitstempel;Aufzeichnungstyp;Glukosewert-Verlauf mmol/L;Glukose-Scan mmol/L;Nicht numerisches schnellwirkendes Insulin;Schnellwirkendes Insulin (Einheiten);Nicht numerische Nahrungsdaten;Kohlenhydrate (Gramm);Kohlenhydrate (Portionen);Nicht numerisches Depotinsulin;Depotinsulin (Einheiten);Notizen;Glukose-Teststreifen mmol/L;Keton mmol/L;Mahlzeiteninsulin (Einheiten);Korrekturinsulin (Einheiten);Insulin-Änderung durch Anwender (Einheiten)',
  'FreeStyle LibreLink;6A7B8C9D-0000-4000-8000-00000000DE01;23-02-2021 07:00;0;5,4;;;;;;;;;;;;;;',
  'FreeStyle LibreLink;6A7B8C9D-0000-4000-8000-00000000DE01;23-02-2021 07:15;0;5,9;;;;;;;;;;;;;;',
  'FreeStyle LibreLink;6A7B8C9D-0000-4000-8000-00000000DE01;23-02-2021 07:20;1;;6,2;;;;;;;;;;;;;',
  'FreeStyle LibreLink;6A7B8C9D-0000-4000-8000-00000000DE01;23-02-2021 07:25;6;;;;;;;;;;Müde nach dem Frühstück – 2 BE;;;;;',
].join('\r\n');

const read = (bytes: Uint8Array, chunk?: number) =>
  readCgm(chunk ? Readable.from(chunked(bytes, chunk)) : bytes, { timeZone: 'Europe/Berlin', now: NOW });

function* chunked(bytes: Uint8Array, size: number): Generator<Uint8Array> {
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, i + size);
}

describe('input encodings', () => {
  test('a German LibreView export is detected and read by its German column names', async () => {
    expect(detectFormat(GERMAN)).toEqual({ format: 'libreview', delimiter: ';' });
    const { records, summary } = await read(Buffer.from(GERMAN, 'utf8'));
    expect(glucose(records).map((r) => [r.time, r.value, r.unit, r.deviceName])).toEqual([
      ['2021-02-23T07:00:00+01:00', 5.4, 'mmol/L', 'FreeStyle LibreLink'],
      ['2021-02-23T07:15:00+01:00', 5.9, 'mmol/L', 'FreeStyle LibreLink'],
      ['2021-02-23T07:20:00+01:00', 6.2, 'mmol/L', 'FreeStyle LibreLink'],
    ]);
    expect(summary.skippedByReason).toEqual({ 'unsupported-record-type': 1 });
    expect(summary.encoding).toBeUndefined();
    expect(summary.warnings.join()).not.toMatch(/Windows-1252/);
  });

  test.each([[undefined], [7], [1]])('Windows-1252 bytes (chunks of %s) are read as Windows-1252, and the report says so', async (chunk) => {
    const bytes = Buffer.from(GERMAN, 'latin1');
    expect(bytes.includes(0xe4)).toBe(true); // "ä" as one byte: not UTF-8
    const { records, summary } = await read(bytes, chunk);
    expect(summary).toMatchObject({ format: 'libreview', detected: true, converted: 3, rejected: 0, encoding: 'windows-1252' });
    expect(glucose(records).map((r) => r.value)).toEqual([5.4, 5.9, 6.2]);
    expect(summary.warnings).toContain('the file is not valid UTF-8; it was read as Windows-1252 (as Excel saves CSV on Windows)');
  });

  test('a Windows-1252 byte far into an otherwise ASCII file switches the decoding from there on', async () => {
    const header = 'Device,Serial Number,Device Timestamp,Record Type,Historic Glucose mg/dL,Scan Glucose mg/dL,Notes';
    const rows = Array.from({ length: 400 }, (_, k) => `FreeStyle Libre 2,0F1E2D3C-1111-4222-8333-444455556666,2024-06-01 ${String(Math.floor(k / 60) % 24).padStart(2, '0')}:${String(k % 60).padStart(2, '0')},0,${100 + (k % 50)},,`);
    rows.push('FreeStyle Libre 2 Lesegerät,0F1E2D3C-1111-4222-8333-444455556666,2024-06-01 07:00,0,150,,');
    const bytes = Buffer.from([header, ...rows].join('\n'), 'latin1');
    expect(bytes.indexOf(0xe4)).toBeGreaterThan(16_384); // beyond what detection peeks at
    const { records, summary } = await readCgm(Readable.from(chunked(bytes, 4096)), { timeZone: 'UTC', now: NOW });
    expect(glucose(records).at(-1)!.deviceName).toBe('FreeStyle Libre 2 Lesegerät');
    expect(summary.encoding).toBe('windows-1252');
  });

  test('valid UTF-8 stays UTF-8, with or without a byte-order mark', async () => {
    for (const bytes of [Buffer.from(GERMAN, 'utf8'), Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(GERMAN, 'utf8')])]) {
      const { records, summary } = await read(bytes, 3);
      expect(glucose(records)).toHaveLength(3);
      expect(summary.encoding).toBeUndefined();
    }
  });

  test('UTF-16 with a byte-order mark (Excel "Unicode text") is read as UTF-16', async () => {
    const le = Buffer.from(`\uFEFF${GERMAN}`, 'utf16le');
    const be = Buffer.from(le).swap16();
    for (const bytes of [le, be]) {
      const { records, summary } = await read(bytes, 5);
      expect(glucose(records).map((r) => r.value)).toEqual([5.4, 5.9, 6.2]);
      expect(summary.encoding).toBe(bytes === le ? 'utf-16le' : 'utf-16be');
      expect(summary.warnings.join()).not.toMatch(/Windows-1252/);
    }
  });
});
