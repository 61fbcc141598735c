/**
 * Black-box findings on the CGM source formats (session bb-cgm): what the vendors' exports mean,
 * read through `readCgm` as `/cgm/ingest` and `glucoguard ingest` read them. Fixtures are written
 * here (synthetic values); the column names and field layouts are the vendors' (sources in
 * src/cgm/parsers/*.ts).
 */
import { describe, expect, test } from '@jest/globals';
import { CgmInputError, computeMetrics, detectFormat, readCgm, type CgmRecord, type GlucoseRecord } from '../../../src/cgm/index.js';
import { MAX_ELEMENT_CHARS } from '../../../src/cgm/json-stream.js';
import { MAX_CSV_RECORD_CHARS } from '../../../src/cgm/parsers/common.js';

const NOW = () => Date.parse('2027-01-01T00:00:00Z');
const glucose = (records: CgmRecord[]): GlucoseRecord[] => records.filter((r): r is GlucoseRecord => r.kind === 'glucose');

describe('LibreView export with a French header', () => {
  // The 19 columns of a French "Glucose Data" export, in LibreView's order (libreview-columns.ts).
  const HEADER = ['Appareil', 'Numéro de série', "Horodatage de l'appareil", "Type d'enregistrement", 'Historique de la glycémie mg/dL',
    'Numérisation de la glycémie mg/dL', 'Insuline à action rapide sans valeur numérique', 'Insuline à action rapide (unités)',
    'Alimentation sans valeur numérique', 'Glucides (grammes)', 'Glucides (portions)', 'Insuline à action longue sans valeur numérique',
    'Insuline à action longue (unités)', 'Remarques', 'Glycémie par bandelette mg/dL', 'Cétone mmol/L', 'Insuline repas (unités)',
    'Correction insuline (unités)', "Insuline modifiée par l'utilisateur (unités)"];
  const row = (stamp: string, type: number, cells: Record<number, string>, delimiter = ','): string =>
    ['FreeStyle LibreLink', 'A1B2C3D4-0000-4000-8000-000000000001', stamp, String(type),
      ...Array.from({ length: 15 }, (_, k) => cells[k + 4] ?? '')].join(delimiter);

  test('historic, scan and strip readings are read, HI/LO beyond the range, other record types skipped', async () => {
    const text = [
      'Données de glycémie,Généré le,13-05-2024 10:00 UTC,Généré par,X',
      HEADER.join(','),
      row('13-05-2024 08:00', 0, { 4: '101' }),
      row('13-05-2024 08:15', 0, { 4: 'HI' }),
      row('13-05-2024 08:20', 1, { 5: '110' }),
      row('13-05-2024 08:25', 2, { 14: '98' }),
      row('13-05-2024 08:30', 0, { 4: 'LO' }),
      row('13-05-2024 08:31', 5, { 9: '30' }),
    ].join('\r\n');
    expect(detectFormat(text)?.format).toBe('libreview');
    const { accepted, records, summary } = await readCgm({ text }, { timeZone: 'Europe/Paris', now: NOW });
    expect(accepted).toBe(true);
    expect(glucose(records).map((r) => [r.method, r.value ?? r.absent?.code, r.time, r.unit])).toEqual([
      ['cgm', 101, '2024-05-13T08:00:00+02:00', 'mg/dL'],
      ['cgm', 'positive-infinity', '2024-05-13T08:15:00+02:00', 'mg/dL'],
      ['cgm', 110, '2024-05-13T08:20:00+02:00', 'mg/dL'],
      ['smbg', 98, '2024-05-13T08:25:00+02:00', 'mg/dL'],
      ['cgm', 'negative-infinity', '2024-05-13T08:30:00+02:00', 'mg/dL'],
    ]);
    expect(summary.skippedByReason).toEqual({ 'unsupported-record-type': 1 });
    expect(summary.dateOrder).toMatchObject({ order: 'DMY', from: 'data' });
  });

  test('a semicolon-separated French export in mmol/L with decimal commas', async () => {
    const mmol = HEADER.map((h) => h.replace('mg/dL', 'mmol/L'));
    const text = [mmol.join(';'), row('13.05.2024 08:00', 0, { 4: '5,6' }, ';'), row('13.05.2024 08:15', 1, { 5: '6,1' }, ';')].join('\n');
    const { accepted, records } = await readCgm({ text }, { timeZone: 'Europe/Paris', now: NOW });
    expect(accepted).toBe(true);
    expect(glucose(records).map((r) => [r.value, r.unit])).toEqual([[5.6, 'mmol/L'], [6.1, 'mmol/L']]);
  });
});

describe('Dexcom API v2 egvs', () => {
  const v2 = (unit: string | undefined, values: number[]): string => JSON.stringify({
    ...(unit ? { unit, rateUnit: `${unit}/min` } : {}),
    egvs: values.map((value, i) => ({
      systemTime: `2026-03-08T09:${String(50 + i).padStart(2, '0')}:00`, displayTime: `2026-03-08T01:${String(50 + i).padStart(2, '0')}:00`,
      value, realtimeValue: value, smoothedValue: null, status: null, trend: 'flat', trendRate: 0.1,
    })),
  });

  test('is detected, with the unit given once at the root and the offset from displayTime', async () => {
    const text = v2('mg/dL', [120, 121]);
    expect(detectFormat(text)?.format).toBe('dexcom');
    const { accepted, records } = await readCgm({ text }, { now: NOW });
    expect(accepted).toBe(true);
    expect(glucose(records).map((r) => [r.value, r.unit, r.time])).toEqual([[120, 'mg/dL', '2026-03-08T01:50:00-08:00'], [121, 'mg/dL', '2026-03-08T01:51:00-08:00']]);
  });

  test('a root unit of mmol/L is the unit of every reading', async () => {
    const { records } = await readCgm({ text: v2('mmol/L', [6.7]) }, { now: NOW });
    expect(glucose(records).map((r) => [r.value, r.unit])).toEqual([[6.7, 'mmol/L']]);
  });

  test('without a unit before the egvs array the readings are refused, not taken as mg/dL', async () => {
    const { accepted, summary } = await readCgm({ text: v2(undefined, [6.7]) }, { now: NOW });
    expect(accepted).toBe(false);
    expect(summary.issues).toEqual([expect.objectContaining({ reason: 'unknown-unit', message: expect.stringMatching(/no "unit" before the "egvs" array/) })]);
  });
});

describe('Nightscout offsets', () => {
  const entry = (extra: Record<string, unknown>) => ({ type: 'sgv', sgv: 120, date: Date.parse('2026-03-08T09:50:00Z'), device: 'xDrip-DexcomG6', ...extra });

  test('utcOffset gives the local offset when dateString is written in UTC', async () => {
    const text = JSON.stringify([entry({ dateString: '2026-03-08T09:50:00.000Z', utcOffset: -480 })]);
    const { records } = await readCgm({ text }, { now: NOW });
    expect(glucose(records).map((r) => r.time)).toEqual(['2026-03-08T01:50:00-08:00']);
  });

  test('a dateString with a local offset still gives it; neither gives UTC', async () => {
    const text = JSON.stringify([
      entry({ dateString: '2026-03-08T01:50:00.000-0800', utcOffset: -480 }),
      entry({ date: Date.parse('2026-03-08T09:55:00Z'), dateString: '2026-03-08T09:55:00.000Z' }),
      entry({ date: Date.parse('2026-03-08T10:00:00Z'), utcOffset: '+01:00' }),
    ]);
    const { records } = await readCgm({ text }, { now: NOW });
    expect(glucose(records).map((r) => r.time)).toEqual(['2026-03-08T01:50:00-08:00', '2026-03-08T09:55:00Z', '2026-03-08T11:00:00+01:00']);
  });
});

describe('one huge record is refused, not held', () => {
  test('a JSON element longer than the limit (Nightscout, in chunks)', async () => {
    const note = 'x'.repeat(64 * 1024);
    async function* chunks(): AsyncGenerator<string> {
      yield `[{"type":"sgv","sgv":100,"date":${Date.parse('2026-03-08T09:50:00Z')},"notes":"`;
      for (let sent = 0; sent <= MAX_ELEMENT_CHARS; sent += note.length) yield note;
      yield '"}]';
    }
    const err = await readCgm(chunks(), { format: 'nightscout', now: NOW }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CgmInputError);
    expect((err as Error).message).toMatch(/^record 1 \(line 1\): a record larger than 4 MiB/);
  });

  test('a JSON root object read whole (an unknown Dexcom layout) longer than the limit', async () => {
    const err = await readCgm({ text: `{"recordType":"egv","other":"${'y'.repeat(MAX_ELEMENT_CHARS)}"}` }, { format: 'dexcom', now: NOW }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CgmInputError);
    expect((err as Error).message).toMatch(/a record larger than 4 MiB/);
  });

  test('a CSV line longer than the limit (LibreView)', async () => {
    const text = `Device,Serial Number,Device Timestamp,Record Type,Historic Glucose mg/dL\nFreeStyle Libre,S1,05-12-2020 16:25,0,${'9'.repeat(MAX_CSV_RECORD_CHARS + 10)}\n`;
    const err = await readCgm({ text }, { timeZone: 'UTC', now: NOW }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CgmInputError);
    expect((err as Error).message).toMatch(/^line 2: malformed CSV \(a record too large\)/);
  });

  test('records within the limits read as before', async () => {
    const text = JSON.stringify([{ type: 'sgv', sgv: 100, date: Date.parse('2026-03-08T09:50:00Z'), notes: 'z'.repeat(100_000) }]);
    expect((await readCgm({ text }, { now: NOW })).summary.converted).toBe(1);
  });
});

describe('summary wording', () => {
  test('a one-day period is "only 1 day", not "1 days"', () => {
    const readings = Array.from({ length: 288 }, (_, i) => ({ epochMs: Date.parse('2026-03-01T00:00:00Z') + i * 300_000, mgdl: 120 }));
    const m = computeMetrics(readings, { start: Date.parse('2026-03-01T00:00:00Z'), end: Date.parse('2026-03-02T00:00:00Z') })!;
    expect(m.warnings).toEqual(['only 1 day in the reporting period; at least 14 days are recommended']);
  });
});

describe('Excel "Unicode text": UTF-16, tab-separated, decimal commas', () => {
  test('a LibreView export saved so is read with its decimal commas', async () => {
    const text = ['Glucose Data\tGenerated on\t13-12-2020 10:23 UTC\tGenerated by\tX',
      'Device\tSerial Number\tDevice Timestamp\tRecord Type\tHistoric Glucose mmol/L\tScan Glucose mmol/L\tStrip Glucose mmol/L',
      'FreeStyle Libre\tS1\t05-12-2020 16:25\t0\t6,3\t\t', 'FreeStyle Libre\tS1\t13-12-2020 16:40\t1\t\t6,4\t'].join('\r\n');
    const bytes = Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(text, 'utf16le')]);
    const { accepted, records, summary } = await readCgm(bytes, { timeZone: 'Europe/Berlin', now: NOW });
    expect([accepted, summary.encoding]).toEqual([true, 'utf-16le']);
    expect(glucose(records).map((r) => [r.value, r.unit])).toEqual([[6.3, 'mmol/L'], [6.4, 'mmol/L']]);
  });

  test('a tab-separated Dexcom Clarity export in mmol/L', async () => {
    const text = ['Index\tTimestamp (YYYY-MM-DDThh:mm:ss)\tEvent Type\tEvent Subtype\tSource Device ID\tGlucose Value (mmol/L)\tTransmitter ID',
      '1\t2026-03-01T08:00:00\tEGV\t\tiOS G7\t5,6\tABC123'].join('\n');
    const { accepted, records } = await readCgm({ text }, { timeZone: 'UTC', now: NOW });
    expect(accepted).toBe(true);
    expect(glucose(records).map((r) => [r.value, r.unit])).toEqual([[5.6, 'mmol/L']]);
  });
});
