import { createReadStream, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, test } from '@jest/globals';
import {
  CgmInputError, detectFormat, deviceRole, metricReadingsFromRecords, openCgm, readCgm, rejectionError, toResources,
  type BasalRecord, type BolusRecord, type CgmRecord, type GlucoseRecord,
} from '../../../src/cgm/index.js';
import { isGlucoGuardError } from '../../../src/errors.js';

const FIXTURES = path.join(import.meta.dirname, '../../fixtures/cgm');
const fixture = (name: string): string => path.join(FIXTURES, name);
const NOW = () => Date.parse('2025-01-01T00:00:00Z');
const glucose = (records: CgmRecord[]): GlucoseRecord[] => records.filter((r): r is GlucoseRecord => r.kind === 'glucose');

describe('format detection', () => {
  test.each([
    ['dexcom-egvs.json', 'dexcom'],
    ['nightscout-entries.json', 'nightscout'],
    ['libreview-mmol-dst.csv', 'libreview'],
    ['libreview-ambiguous.csv', 'libreview'],
    ['dexcom-clarity-mgdl.csv', 'dexcom-clarity'],
    ['dexcom-clarity-mmol.csv', 'dexcom-clarity'],
    ['tidepool-export.json', 'tidepool'],
    ['omh-blood-glucose.json', 'openmhealth'],
    ['healthkit-export.xml', 'healthkit'],
  ])('recognises %s as %s from its first bytes', (file, format) => {
    expect(detectFormat(readFileSync(fixture(file), 'utf8').slice(0, 4096))?.format).toBe(format);
  });

  test('an unrecognisable file is refused with a hint to give the format', async () => {
    await expect(openCgm({ text: 'hello,world\n1,2\n' })).rejects.toMatchObject({ code: 'ERR_INVALID', message: expect.stringMatching(/give it explicitly/) });
  });

  test('an explicit format overrides detection', async () => {
    const stream = await openCgm(fixture('nightscout-entries.json'), { format: 'tidepool', now: NOW });
    const records: CgmRecord[] = [];
    for await (const r of stream) records.push(r);
    expect(stream.summary).toMatchObject({ format: 'tidepool', detected: false, converted: 0 });
    expect(stream.summary.skippedByReason['not-glucose']).toBe(stream.summary.read);
  });

  test('an unknown explicit format is refused', async () => {
    await expect(openCgm(fixture('nightscout-entries.json'), { format: 'medtronic' as never })).rejects.toMatchObject({ code: 'ERR_INVALID' });
  });
});

describe('Nightscout entries', () => {
  test('reads sgv as number or string, keeps the source offset across the DST change, codes < 40 as no value', async () => {
    const { accepted, records, summary } = await readCgm(fixture('nightscout-entries.json'), { now: NOW });
    expect(accepted).toBe(true);
    const g = glucose(records);
    expect(g.map((r) => r.time)).toEqual([
      '2024-10-27T02:50:00+02:00', '2024-10-27T02:55:00+02:00', '2024-10-27T02:00:00+01:00', '2024-10-27T02:05:00+01:00',
      '2024-10-27T02:10:00+01:00', '2024-10-27T02:11:40+01:00', '2024-10-27T02:15:00+01:00', '2024-10-27T02:20:00+01:00',
    ]);
    expect(g[1]).toMatchObject({ value: 138, mgdl: 138, unit: 'mg/dL', trend: 'FortyFiveDown', method: 'cgm' });
    expect(g[3]).toMatchObject({ absent: { code: 'error', text: expect.stringContaining('?NC') } });
    expect(g[3]!.value).toBeUndefined();
    expect(g[4]).toMatchObject({ absent: { code: 'negative-infinity' } });
    expect(g[5]).toMatchObject({ method: 'smbg', value: 118 });
    expect(summary).toMatchObject({ read: 11, converted: 8, skipped: 3, rejected: 0 });
    expect(summary.skippedByReason).toEqual({ duplicate: 1, 'not-glucose': 1, 'conflicting-duplicate': 1 });
    const dup = summary.issues.find((i) => i.reason === 'duplicate')!;
    expect(dup).toMatchObject({ record: 4, line: 5 });
    expect(dup.message).toMatch(/duplicate of record 3 \(line 4\)/);
    expect(summary.issues.find((i) => i.reason === 'conflicting-duplicate')).toMatchObject({ record: 10, line: 11 });
  });

  test('rejects negative, > 1000 mg/dL, non-numeric and future values with reasons and line numbers', async () => {
    const result = await readCgm(fixture('nightscout-impossible.json'), { now: NOW });
    expect(result.accepted).toBe(false);
    expect(result.records).toEqual([]);
    expect(result.summary.rejectedByReason).toEqual({ 'negative-value': 1, 'value-too-high': 1, 'future-timestamp': 1, 'invalid-value': 1 });
    expect(result.summary.issues.map((i) => [i.reason, i.line])).toEqual([
      ['negative-value', 3], ['value-too-high', 4], ['future-timestamp', 5], ['invalid-value', 6],
    ]);
    // Messages name the place but carry no glucose value.
    for (const i of result.summary.issues) expect(i.message).not.toMatch(/-12|1250|abc/);
    const err = rejectionError(result.summary);
    expect(err.status).toBe(422);
    expect(err.issues.map((i) => i.diagnostics).join('\n')).toMatch(/line 3\): negative glucose value/);
  });

  test('partial import keeps the good records and reports the rest', async () => {
    const result = await readCgm(fixture('nightscout-impossible.json'), { now: NOW, partial: true });
    expect(result.accepted).toBe(true);
    expect(glucose(result.records).map((r) => r.value)).toEqual([120, 122]);
    expect(result.summary).toMatchObject({ read: 6, converted: 2, rejected: 4 });
  });

  test('malformed JSON names the record and line', async () => {
    await expect(readCgm(fixture('nightscout-malformed.json'), { now: NOW })).rejects.toThrow(/record 3 \(line 4\): malformed JSON/);
    const err = await readCgm(fixture('nightscout-malformed.json'), { now: NOW }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CgmInputError);
    expect(isGlucoGuardError(err, 'ERR_INVALID')).toBe(true);
  });

  test('a truncated file is an error naming where it ended', async () => {
    await expect(readCgm(fixture('nightscout-truncated.json'), { now: NOW })).rejects.toThrow(/unexpected end of input .*after record 1/);
  });

  test('reads from a Node Readable in small chunks exactly as from a path', async () => {
    const fromPath = await readCgm(fixture('nightscout-entries.json'), { now: NOW });
    const fromStream = await readCgm(createReadStream(fixture('nightscout-entries.json'), { highWaterMark: 7 }), { now: NOW });
    expect(fromStream.records).toEqual(fromPath.records);
    expect(fromStream.summary).toEqual(fromPath.summary);
  });
});

describe('Dexcom API v3 egvs', () => {
  test('streams records[], derives the offset from displayTime, marks HIGH/LOW and missing values', async () => {
    const { records, summary } = await readCgm(fixture('dexcom-egvs.json'), { now: NOW });
    const g = glucose(records);
    expect(summary).toMatchObject({ format: 'dexcom', read: 6, converted: 6, rejected: 0 });
    expect(g[0]).toMatchObject({
      time: '2024-03-09T10:00:12-08:00', value: 104, unit: 'mg/dL', trend: 'flat',
      deviceId: '8f3a1c0e9b2d4e5f', serialNumber: '8f3a1c0e9b2d4e5f', deviceName: 'Dexcom G7', line: 6, record: 1,
    });
    expect(g[2]).toMatchObject({ absent: { code: 'unknown' } });
    expect(g[3]).toMatchObject({ absent: { code: 'positive-infinity' } });
    expect(g[4]).toMatchObject({ absent: { code: 'negative-infinity' } });
    // The US spring-forward happened on 2024-03-10 at 02:00 local: the last record is at -07:00.
    expect(g[5]!.time).toBe('2024-03-10T03:30:12-07:00');
  });
});

describe('LibreView CSV', () => {
  test('mmol/L, DD-MM-YYYY, device-local time resolved in the given zone across both DST changes', async () => {
    const { accepted, records, summary } = await readCgm(fixture('libreview-mmol-dst.csv'), { timeZone: 'Europe/Berlin', now: NOW });
    expect(accepted).toBe(true);
    const g = glucose(records);
    expect(g.map((r) => r.time)).toEqual([
      '2024-03-31T01:30:00+01:00', '2024-03-31T01:45:00+01:00',
      '2024-03-31T03:10:00+02:00', // 02:10 does not exist: moved forward by the gap
      '2024-03-31T03:15:00+02:00', '2024-03-31T03:22:00+02:00', '2024-03-31T03:30:00+02:00', // line 10 repeats line 9: skipped
      // 02:05 and 02:20 are in the overlap, one pass with no step back: which pass cannot be told, the earlier instant is kept
      '2024-10-27T01:50:00+02:00', '2024-10-27T02:05:00+02:00', '2024-10-27T02:20:00+02:00',
      '2024-10-27T03:05:00+01:00', '2024-10-27T08:12:00+01:00',
    ]);
    expect(g[0]).toMatchObject({ unit: 'mmol/L', value: 6.1, serialNumber: '3C8D2E1A-7F44-4B1A-9E55-0A1B2C3D4E5F', deviceName: 'FreeStyle LibreLink' });
    expect(g[0]!.mgdl).toBeCloseTo(6.1 * 18.01559, 6);
    expect(g[4]).toMatchObject({ value: 7.2, line: 7 });
    expect(g[10]).toMatchObject({ absent: { code: 'positive-infinity' } });
    expect(summary.timeZone).toEqual({ zone: 'Europe/Berlin', from: 'option' });
    expect(summary.warnings.filter((w) => w.includes('carry no time zone'))).toEqual([]);
    expect(summary.dateOrder).toEqual({ order: 'DMY', from: 'data', ambiguous: false });
    expect(summary.dstAdjusted).toEqual({ nonexistent: 1, ambiguous: 2, resolvedByOrder: 0, resolvedBySequence: 0 });
    expect(summary.skippedByReason).toEqual({ 'unsupported-record-type': 2, duplicate: 1 });
    expect(summary.issues.find((i) => i.reason === 'duplicate')).toMatchObject({ line: 10, message: expect.stringContaining('duplicate of record 7 (line 9)') });
    expect(summary.issues.filter((i) => i.reason === 'unsupported-record-type').map((i) => i.line)).toEqual([8, 11]);
  });

  test('without a zone option the default zone is used and the summary says so', async () => {
    const { records, summary } = await readCgm(fixture('libreview-mmol-dst.csv'), { defaultTimeZone: 'America/New_York', now: NOW });
    expect(summary.timeZone).toEqual({ zone: 'America/New_York', from: 'default' });
    expect(summary.warnings).toContain("the file's times carry no time zone and were read in America/New_York, the server's default: if the sensor was worn in another zone, every reading is at the wrong instant; give the zone (tz=, --tz) when you import");
    expect(glucose(records)[0]!.time).toBe('2024-03-31T01:30:00-04:00');
  });

  test('MM-DD-YYYY with AM/PM is detected once a day above 12 appears; missing values are rejected', async () => {
    const result = await readCgm(fixture('libreview-mgdl-us.csv'), { timeZone: 'America/Chicago', now: NOW });
    expect(result.summary.dateOrder).toEqual({ order: 'MDY', from: 'data', ambiguous: false });
    expect(result.accepted).toBe(false);
    expect(result.summary.issues).toEqual([expect.objectContaining({ kind: 'rejected', reason: 'missing-value', line: 7, record: 5 })]);
    const partial = await readCgm(fixture('libreview-mgdl-us.csv'), { timeZone: 'America/Chicago', now: NOW, partial: true });
    const g = glucose(partial.records);
    expect(g.map((r) => r.time)).toEqual([
      '2024-03-12T23:45:00-05:00', '2024-03-12T23:50:00-05:00', '2024-03-12T23:55:00-05:00', '2024-03-13T00:00:00-05:00',
      '2024-03-13T00:10:00-05:00', '2024-03-13T00:15:00-05:00',
    ]);
    expect(g[4]).toMatchObject({ absent: { code: 'negative-infinity' } });
    expect(g[0]).toMatchObject({ unit: 'mg/dL', value: 131 });
  });

  test('an ambiguous day/month order is reported, and an explicit order removes the ambiguity', async () => {
    const { records, summary } = await readCgm(fixture('libreview-ambiguous.csv'), { now: NOW });
    expect(summary.dateOrder).toEqual({ order: 'DMY', from: 'fallback', ambiguous: true });
    expect(summary.warnings.join()).toMatch(/ambiguous/);
    expect(glucose(records)[0]!.time).toBe('2024-06-05T08:00:00Z');
    const us = await readCgm(fixture('libreview-ambiguous.csv'), { now: NOW, dateOrder: 'MDY' });
    expect(us.summary.dateOrder).toEqual({ order: 'MDY', from: 'option', ambiguous: false });
    expect(glucose(us.records)[0]!.time).toBe('2024-05-06T08:00:00Z');
  });

  test('an ambiguous order with a 12-hour clock (08:00 AM, as US exports write times) is taken as month first, and says so', async () => {
    const text = ['Device,Serial Number,Device Timestamp,Record Type,Historic Glucose mg/dL,Scan Glucose mg/dL,Notes',
      'FreeStyle Libre 2,0F1E2D3C-1111-4222-8333-444455556666,11/01/2024 08:00 AM,0,101,,',
      'FreeStyle Libre 2,0F1E2D3C-1111-4222-8333-444455556666,11/01/2024 01:15 PM,0,104,,'].join('\n');
    const { records, summary } = await readCgm({ text }, { format: 'libreview', now: NOW });
    expect(summary.dateOrder).toEqual({ order: 'MDY', from: 'fallback', ambiguous: true });
    expect(summary.warnings.join()).toMatch(/MM-DD-YYYY assumed from the 12-hour clock/);
    expect(glucose(records).map((r) => r.time)).toEqual(['2024-11-01T08:00:00Z', '2024-11-01T13:15:00Z']);
    // an explicit order still wins
    const eu = await readCgm({ text }, { format: 'libreview', now: NOW, dateOrder: 'DMY' });
    expect(glucose(eu.records)[0]!.time).toBe('2024-01-11T08:00:00Z');
  });

  test('record type 2 (strip) is a meter reading from the reader\'s built-in meter: its own column and unit, the reader named, not a sensor reading', async () => {
    const { accepted, records, summary } = await readCgm(fixture('libreview-strip-mgdl.csv'), { timeZone: 'Europe/Paris', now: NOW });
    expect(accepted).toBe(true);
    const meter = glucose(records).filter((r) => r.method === 'smbg');
    expect(meter).toEqual([
      expect.objectContaining({
        source: 'libreview', unit: 'mg/dL', value: 112, mgdl: 112, time: '2024-04-14T08:00:00+02:00', line: 5,
        deviceName: 'FreeStyle Libre 2', serialNumber: '5D6E7F80-2222-4333-8444-555566667777', deviceNamed: true,
      }),
      expect.objectContaining({ absent: { code: 'positive-infinity', text: 'Above the meter measurement range (HI)' }, line: 8 }),
    ]);
    expect(deviceRole(meter[0]!)).toBe('meter');
    // the historic reading at the same minute is a different reading, not a duplicate
    expect(glucose(records).filter((r) => r.method === 'cgm').map((r) => r.value)).toEqual([98, 104, 109, 111, 187, 176]);
    expect(summary).toMatchObject({ read: 9, converted: 8, skipped: 1, rejected: 0 });
    expect(summary.issues).toEqual([expect.objectContaining({ reason: 'unsupported-record-type', line: 9, message: 'record 7 (line 9): record type "3" is not glucose' })]);
    // metrics take the sensor readings only
    const metric = metricReadingsFromRecords(records);
    expect(metric.map((m) => m.mgdl)).toEqual([98, 104, 109, 111, 187, 176]);
    // stored with the capillary code, referencing a meter Device (no cgm-device profile) that names the reader
    const entries = toResources(meter, { patient: 'Patient/p1' });
    const device = entries.find((e) => e.resource.resourceType === 'Device')!;
    expect(device.resource).toMatchObject({ deviceName: [{ name: 'FreeStyle Libre 2' }], serialNumber: '5D6E7F80-2222-4333-8444-555566667777' });
    expect((device.resource as { meta?: unknown }).meta).toBeUndefined();
    const obs = entries.filter((e) => e.resource.resourceType === 'Observation');
    expect(obs.map((e) => (e.resource as { code: { coding: { code: string }[] } }).code.coding[0]!.code)).toEqual(['41653-7', '41653-7']);
    expect(obs.every((e) => (e.resource as { device?: { reference?: string } }).device?.reference === device.fullUrl)).toBe(true);
  });

  test('a strip row without a value is rejected with its line, as a historic or scan row is', async () => {
    const text = ['Device,Serial Number,Device Timestamp,Record Type,Historic Glucose mg/dL,Scan Glucose mg/dL,Strip Glucose mg/dL',
      'FreeStyle Libre 2,0F1E,2024-03-01 08:00,0,101,,', 'FreeStyle Libre 2,0F1E,2024-03-01 08:05,2,,,'].join('\n');
    const { accepted, summary } = await readCgm({ text }, { now: NOW });
    expect(accepted).toBe(false);
    expect(summary.issues).toEqual([expect.objectContaining({ reason: 'missing-value', line: 3, message: 'record 2 (line 3): no strip glucose value' })]);
    // a header without the strip column: the strip row has no value either
    const noColumn = text.replace(',Strip Glucose mg/dL', '').replace(',101,,', ',101,').replace(',2,,,', ',2,,');
    expect((await readCgm({ text: noColumn }, { now: NOW })).summary.issues).toEqual([expect.objectContaining({ reason: 'missing-value', line: 3 })]);
  });

  test('a Dutch export (Tijdstempel apparaat, Gegevenstype, mmol/l) is detected and read, its strip column too', async () => {
    const text = readFileSync(fixture('libreview-dutch-mmol.csv'), 'utf8');
    expect(detectFormat(text)).toEqual({ format: 'libreview', delimiter: ',' });
    const { accepted, records, summary } = await readCgm(fixture('libreview-dutch-mmol.csv'), { timeZone: 'Europe/Amsterdam', now: NOW });
    expect(accepted).toBe(true);
    const g = glucose(records);
    expect(g.map((r) => [r.method, r.value, r.unit, r.time])).toEqual([
      ['cgm', 5.9, 'mmol/L', '2024-05-20T07:00:00+02:00'], ['cgm', 6.2, 'mmol/L', '2024-05-20T07:15:00+02:00'],
      ['cgm', 6.4, 'mmol/L', '2024-05-20T07:20:00+02:00'], ['smbg', 6.8, 'mmol/L', '2024-05-20T07:22:00+02:00'],
      ['cgm', 6.6, 'mmol/L', '2024-05-20T07:30:00+02:00'],
    ]);
    expect(g[0]).toMatchObject({ deviceName: 'FreeStyle Libre', serialNumber: '0A1B2C3D-9999-4888-8777-666655554444' });
    expect(summary).toMatchObject({ format: 'libreview', detected: true, read: 6, converted: 5, skipped: 1, rejected: 0 });
  });

  test('a Spanish export (Marca de hora del dispositivo, Tipo de registro) is read; a strip row, whose Spanish column is not known, is skipped and says why', async () => {
    const text = ['Dispositivo,Número de serie,Marca de hora del dispositivo,Tipo de registro,Historial de glucosa mg/dL,Escanear glucosa mg/dL',
      'FreeStyle LibreLink,7C8D9E0F-1234-4567-89AB-CDEF01234567,13-05-2024 08:00,0,101,',
      'FreeStyle LibreLink,7C8D9E0F-1234-4567-89AB-CDEF01234567,13-05-2024 08:15,0,107,',
      'FreeStyle LibreLink,7C8D9E0F-1234-4567-89AB-CDEF01234567,13-05-2024 08:20,1,,110',
      'FreeStyle LibreLink,7C8D9E0F-1234-4567-89AB-CDEF01234567,13-05-2024 08:25,2,,'].join('\n');
    expect(detectFormat(text)?.format).toBe('libreview');
    const { accepted, records, summary } = await readCgm({ text }, { timeZone: 'Europe/Madrid', now: NOW });
    expect(accepted).toBe(true);
    expect(glucose(records).map((r) => [r.method, r.value, r.time])).toEqual([
      ['cgm', 101, '2024-05-13T08:00:00+02:00'], ['cgm', 107, '2024-05-13T08:15:00+02:00'], ['cgm', 110, '2024-05-13T08:20:00+02:00'],
    ]);
    expect(summary.issues).toEqual([expect.objectContaining({
      kind: 'skipped', reason: 'unsupported-record-type', line: 5,
      message: 'record 4 (line 5): record type "2" (strip glucose) not read: no strip glucose column known in a Spanish header',
    })]);
  });

  test('a LibreView export in a language not read is refused naming the languages and columns expected, never read as zero readings', async () => {
    // An Italian-looking header (Italian is not read: no source names its record-type column; libreview-columns.ts).
    // (French was the example here until session 23, when its confirmed column names were added.)
    const text = ['Dispositivo,Numero di serie,Timestamp del dispositivo,Tipo di registrazione,Storico del glucosio mg/dL',
      'FreeStyle LibreLink,7C8D9E0F-1234-4567-89AB-CDEF01234567,13-05-2024 08:00,0,101',
      'FreeStyle LibreLink,7C8D9E0F-1234-4567-89AB-CDEF01234567,13-05-2024 08:15,0,107'].join('\n');
    const expected = /"Device Timestamp" and "Record Type" \(English\), "Gerätezeitstempel" and "Aufzeichnungstyp" \(German\), "Marca de hora del dispositivo" and "Tipo de registro" \(Spanish\), "Tijdstempel apparaat" and "Gegevenstype" \(Dutch\), "Horodatage de l'appareil" and "Type d'enregistrement" \(French\)/;
    // detected: the rows name a FreeStyle Libre, so the refusal says it is a LibreView export in another language
    const detected = await openCgm({ text }).catch((e: Error) => e);
    expect(detected).toMatchObject({ code: 'ERR_INVALID', message: expect.stringMatching(/^this looks like a LibreView export, but its column names are not in a language GlucoGuard reads \(English, German, Spanish, Dutch or French\)/) });
    expect((detected as Error).message).toMatch(expected);
    // given as libreview: the parser names the line and the same expectation
    const given = await readCgm({ text }, { format: 'libreview', now: NOW }).catch((e: Error) => e);
    expect(given).toBeInstanceOf(CgmInputError);
    expect((given as Error).message).toMatch(/^line 2: no LibreView header in a language GlucoGuard reads \(English, German, Spanish, Dutch or French\)/);
    expect((given as Error).message).toMatch(expected);
  });

  test('a CSV without the LibreView header names the line', async () => {
    await expect(readCgm({ text: 'Glucose Data,Generated on\nfoo,bar\nDevice,Serial Number,Device Timestamp,Record Type\n' }, { format: 'libreview' }))
      .rejects.toThrow(/line 2: no LibreView header/);
  });
});

describe('Dexcom Clarity CSV', () => {
  /** Synthetic names, a birth date and a phone model in the fixtures' rows without a timestamp. */
  const PII: Record<string, string[]> = {
    'dexcom-clarity-mgdl.csv': ['Averyzz', 'Quillfeather', '1979-04-12', 'Synthetic Mobile App', 'PhoneModelQ7'],
    'dexcom-clarity-mmol.csv': ['Bexley', 'Nightjarson', 'Synthetic G7 App'],
  };

  test('EGV rows are sensor readings at the receiver\'s wall clock in the given zone, High/Low beyond the sensor range', async () => {
    const { accepted, records, summary } = await readCgm(fixture('dexcom-clarity-mgdl.csv'), { timeZone: 'America/Los_Angeles', now: NOW });
    expect(accepted).toBe(true);
    const g = glucose(records).filter((r) => r.method === 'cgm');
    expect(g.map((r) => r.time)).toEqual([
      '2024-03-10T01:45:00-08:00', '2024-03-10T01:50:00-08:00', '2024-03-10T01:55:00-08:00',
      '2024-03-10T03:05:00-07:00', // 02:05 does not exist (spring forward): moved forward by the gap
      '2024-03-10T03:10:30-07:00', '2024-03-10T03:40:00-07:00',
    ]);
    expect(g[0]).toMatchObject({
      source: 'dexcom-clarity', method: 'cgm', unit: 'mg/dL', value: 112, mgdl: 112,
      deviceId: '8AB12C', serialNumber: '8AB12C', deviceName: 'Dexcom G6', record: 1, line: 8,
    });
    expect(g[2]).toMatchObject({ absent: { code: 'positive-infinity' } });
    expect(g[2]!.value).toBeUndefined();
    expect(g[4]).toMatchObject({ absent: { code: 'negative-infinity' }, line: 13 });
    // 6 EGVs and the calibration (a meter reading) converted; 6 other events skipped
    expect(summary).toMatchObject({ format: 'dexcom-clarity', detected: true, read: 13, converted: 7, skipped: 6, rejected: 0 });
    expect(summary.timeZone).toEqual({ zone: 'America/Los_Angeles', from: 'option' });
    expect(summary.dstAdjusted).toEqual({ nonexistent: 1, ambiguous: 0, resolvedByOrder: 0, resolvedBySequence: 0 });
  });

  test('a Calibration row is a fingerstick meter reading: stored as one (smbg), with no Device, never as a sensor reading', async () => {
    const { records } = await readCgm(fixture('dexcom-clarity-mgdl.csv'), { timeZone: 'America/Los_Angeles', now: NOW });
    const meter = glucose(records).filter((r) => r.method === 'smbg');
    expect(meter).toEqual([expect.objectContaining({
      source: 'dexcom-clarity', method: 'smbg', unit: 'mg/dL', value: 130, mgdl: 130, time: '2024-03-10T03:10:00-07:00',
      deviceNamed: false, record: 5, line: 12,
    })]);
    // the meter is not named in the export: no Device, and no sensor reading at that time
    expect(deviceRole(meter[0]!)).toBeUndefined();
    const [entry] = toResources(meter, { patient: 'Patient/p1' });
    expect(entry!.resource).toMatchObject({ resourceType: 'Observation', code: { coding: [{ system: 'http://loinc.org', code: '41653-7' }] } });
    expect((entry!.resource as { meta?: unknown }).meta).toBeUndefined(); // no CGM IG profile
    expect(metricReadingsFromRecords(records)).toHaveLength(6); // the six EGVs (High and Low included), not the calibration
    expect(metricReadingsFromRecords(records).some((m) => m.epochMs === meter[0]!.epochMs)).toBe(false);
  });

  test('insulin, carbs, exercise, health, device and alert events are skipped and named', async () => {
    const { summary } = await readCgm(fixture('dexcom-clarity-mgdl.csv'), { timeZone: 'America/Los_Angeles', now: NOW });
    expect(summary.skippedByReason).toEqual({ 'unsupported-record-type': 6 });
    const skipped = summary.issues.filter((i) => i.kind === 'skipped');
    expect(skipped.map((i) => i.line)).toEqual([14, 15, 16, 17, 18, 19]);
    expect(skipped[0]!.message).toBe('record 7 (line 14): event type "Insulin" is not a glucose reading');
    expect(skipped.map((i) => /event type "(\w+)"/.exec(i.message)?.[1])).toEqual(['Insulin', 'Carbs', 'Exercise', 'Health', 'Device', 'Alert']);
  });

  test('a calibration without a value is rejected like any reading without one', async () => {
    const text = ['Timestamp (YYYY-MM-DDThh:mm:ss),Event Type,Glucose Value (mg/dL),Transmitter ID',
      '2024-03-01T00:15:00,EGV,102,8AB12C', '2024-03-01T00:17:00,Calibration,,8AB12C'].join('\n');
    const { accepted, summary } = await readCgm({ text }, { timeZone: 'UTC', now: NOW });
    expect(accepted).toBe(false);
    expect(summary.issues).toEqual([expect.objectContaining({ kind: 'rejected', reason: 'missing-value', line: 3, message: 'record 2 (line 3): no calibration glucose value' })]);
  });

  test('the patient, device and alert-setting rows are not records: nothing of them is in the records or the report', async () => {
    for (const [file, zone] of [['dexcom-clarity-mgdl.csv', 'America/Los_Angeles'], ['dexcom-clarity-mmol.csv', 'Europe/Berlin']] as const) {
      const text = readFileSync(fixture(file), 'utf8');
      for (const word of PII[file]!) expect(text).toContain(word); // the export holds them…
      const { records, summary } = await readCgm(fixture(file), { timeZone: zone, now: NOW });
      const out = JSON.stringify({ records, summary });
      for (const word of PII[file]!) expect(out).not.toContain(word); // …what comes out does not
      // The alert thresholds on those rows (250, 70, 3.1) are settings, not readings.
      expect(glucose(records).some((r) => r.value === 250 || r.value === 70 || r.value === 3.1)).toBe(false);
      expect(summary.issues.some((i) => i.line! <= 7)).toBe(false);
    }
  });

  test('a mmol/L export without the Index column and with an extra column is mapped by header name', async () => {
    const { records, summary } = await readCgm(fixture('dexcom-clarity-mmol.csv'), { timeZone: 'Europe/Berlin', now: NOW });
    const g = glucose(records).filter((r) => r.method === 'cgm');
    expect(g.map((r) => r.time)).toEqual([
      // overlap, not placed: no step back, and Transmitter Time disagrees with the readings around it — the earlier instant
      '2024-10-27T01:50:00+02:00', '2024-10-27T02:20:00+02:00', '2024-10-27T02:50:00+02:00',
      '2024-10-27T03:05:00+01:00', '2024-10-27T03:15:00+01:00',
    ]);
    expect(g[0]).toMatchObject({ unit: 'mmol/L', value: 5.4, deviceName: 'Dexcom G7', deviceId: 'SYN7G7X1', line: 6 });
    expect(g[0]!.mgdl).toBeCloseTo(5.4 * 18.01559, 6);
    expect(g[2]).toMatchObject({ absent: { code: 'positive-infinity' }, unit: 'mmol/L' });
    expect(g[4]).toMatchObject({ absent: { code: 'negative-infinity' } });
    // the calibration (5.0 mmol/L) is a meter reading in the export's unit
    expect(glucose(records).filter((r) => r.method === 'smbg')).toEqual([expect.objectContaining({ unit: 'mmol/L', value: 5.0, time: '2024-10-27T03:10:00+01:00', line: 10 })]);
    expect(summary).toMatchObject({ read: 6, converted: 6, skipped: 0, rejected: 0, dstAdjusted: { nonexistent: 0, ambiguous: 2, resolvedByOrder: 0, resolvedBySequence: 0 } });
  });

  test('without a zone option the default zone is used and the summary says so', async () => {
    const { records, summary } = await readCgm(fixture('dexcom-clarity-mgdl.csv'), { defaultTimeZone: 'America/New_York', now: NOW });
    expect(summary.timeZone).toEqual({ zone: 'America/New_York', from: 'default' });
    expect(glucose(records)[0]!.time).toBe('2024-03-10T01:45:00-05:00');
  });

  test('a bad timestamp or value is rejected with its line; a semicolon export reads decimal commas', async () => {
    const header = 'Index,Timestamp (YYYY-MM-DDThh:mm:ss),Event Type,Event Subtype,Patient Info,Device Info,Source Device ID,Glucose Value (mg/dL),Transmitter ID';
    const text = [header, '1,,FirstName,,Averyzz,,,,', '2,2024-13-01T00:00:00,EGV,,,,Android G6,100,8AB12C', '3,2024-03-01T00:05:00,EGV,,,,Android G6,abc,8AB12C',
      '4,2024-03-01T00:10:00,EGV,,,,Android G6,,8AB12C', '5,,EGV,,,,Android G6,101,8AB12C', '6,2024-03-01T00:15:00,EGV,,,,Android G6,102,8AB12C'].join('\n');
    const { accepted, summary } = await readCgm({ text }, { timeZone: 'UTC', now: NOW });
    expect(accepted).toBe(false);
    expect(summary.issues.map((i) => [i.reason, i.line])).toEqual([['invalid-timestamp', 3], ['invalid-value', 4], ['missing-value', 5], ['invalid-timestamp', 6]]);
    const semi = ['Timestamp (YYYY-MM-DDThh:mm:ss);Event Type;Glucose Value (mmol/L);Transmitter ID', '2024-03-01T00:15:00;EGV;5,6;SYN7'].join('\n');
    const read = await readCgm({ text: semi }, { timeZone: 'UTC', now: NOW });
    expect(read.summary.format).toBe('dexcom-clarity');
    expect(glucose(read.records)[0]).toMatchObject({ value: 5.6, unit: 'mmol/L', time: '2024-03-01T00:15:00Z' });
  });

  test('a malformed CSV names the line, never the text of the field (a name on a patient row, a note)', async () => {
    const header = 'Index,Timestamp (YYYY-MM-DDThh:mm:ss),Event Type,Event Subtype,Patient Info,Device Info,Source Device ID,Glucose Value (mg/dL),Transmitter ID';
    const clarity = [header, '1,,FirstName,,Ave"ryzz,,,,', '2,2024-03-01T00:15:00,EGV,,,,Android G6,102,8AB12C'].join('\n');
    const err = await readCgm({ text: clarity }, { timeZone: 'UTC', now: NOW }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(CgmInputError);
    expect((err as Error).message).toMatch(/^line 2: malformed CSV \(a quote inside an unquoted field\)$/);
    const libre = ['Device,Serial Number,Device Timestamp,Record Type,Historic Glucose mg/dL,Scan Glucose mg/dL,Notes',
      'FreeStyle Libre 2,0F1E,2024-03-01 08:00,6,,,"felt dizzy" after lunch'].join('\n');
    const libreErr = await readCgm({ text: libre }, { now: NOW }).catch((e: Error) => e);
    expect((libreErr as Error).message).toMatch(/^line 2: malformed CSV \(text after a closing quote\)$/);
    expect((libreErr as Error).message).not.toMatch(/dizzy|lunch/);
  });

  test('a CSV without the Clarity header names the line', async () => {
    await expect(readCgm({ text: 'Index,Timestamp,Event Type\n1,2024-03-01T00:15:00,EGV\n' }, { format: 'dexcom-clarity' }))
      .rejects.toThrow(/line 1: no Dexcom Clarity header/);
  });
});

describe('Tidepool export', () => {
  test('cbg/smbg in mixed units become mg/dL via 18.01559; bolus and basal become insulin records', async () => {
    const { records, summary } = await readCgm(fixture('tidepool-export.json'), { now: NOW });
    expect(summary).toMatchObject({ read: 10, converted: 8, skipped: 2, rejected: 0 });
    const g = glucose(records);
    expect(g.map((r) => [r.method, r.unit, r.value, r.time])).toEqual([
      ['cgm', 'mg/dL', 72, '2018-05-14T18:17:07.384+10:00'],
      ['cgm', 'mg/dL', 144, '2018-05-14T18:22:07.384+10:00'],
      ['cgm', 'mg/dL', 150, '2018-05-14T18:27:07.384+10:00'],
      ['smbg', 'mg/dL', 126, '2018-05-14T18:25:00+10:00'],
    ]);
    const insulin = records.filter((r): r is BolusRecord | BasalRecord => r.kind !== 'glucose');
    expect(insulin.map((r) => (r.kind === 'bolus' ? [r.kind, r.units, r.time, r.endTime] : [r.kind, r.rate, r.time, r.endTime]))).toEqual([
      ['bolus', 4.5, '2018-05-14T18:30:00+10:00', undefined],
      ['bolus', 3.5, '2018-05-14T19:00:00+10:00', '2018-05-14T20:00:00+10:00'],
      ['basal', 0.85, '2018-05-14T18:00:00+10:00', '2018-05-14T20:00:00+10:00'],
      ['basal', 0, '2018-05-14T20:00:00+10:00', '2018-05-14T20:30:00+10:00'],
    ]);
  });

  test('a reading annotated bg/out-of-range is below or above the measurement range, not a measured 40 or 400', async () => {
    const datum = (minute: string, value: number, annotation?: object) => ({ type: 'cbg', units: 'mg/dL', value, time: `2018-05-14T08:${minute}:00.000Z`, timezoneOffset: 0,
      deviceId: 'g6-1', ...(annotation ? { annotations: [annotation] } : {}) });
    const text = JSON.stringify([
      datum('00', 40, { code: 'bg/out-of-range', value: 'low', threshold: 40 }),
      datum('05', 400, { code: 'bg/out-of-range', value: 'high', threshold: 400 }),
      datum('10', 41, { code: 'some/other-annotation' }),
    ]);
    const { records, summary } = await readCgm({ text }, { format: 'tidepool', now: NOW });
    expect(summary.rejected).toBe(0);
    const g = glucose(records);
    expect(g.map((r) => [r.value, r.absent?.code])).toEqual([[undefined, 'negative-infinity'], [undefined, 'positive-infinity'], [41, undefined]]);
  });

  test('the mmol/L unit policy converts everything to mmol/L', async () => {
    const { records } = await readCgm(fixture('tidepool-export.json'), { now: NOW, unit: 'mmol/L' });
    expect(glucose(records).map((r) => [r.unit, r.value])).toEqual([['mmol/L', 4], ['mmol/L', 7.99], ['mmol/L', 8.33], ['mmol/L', 6.99]]);
  });
});

describe('Open mHealth blood-glucose 4.0', () => {
  test('reads data points, tells CGM from capillary readings, rejects a time without offset', async () => {
    const { records, summary } = await readCgm(fixture('omh-blood-glucose.json'), { now: NOW, partial: true });
    expect(glucose(records).map((r) => [r.method, r.unit, r.value, r.time, r.deviceName])).toEqual([
      ['cgm', 'mg/dL', 112, '2023-06-01T08:05:00-04:00', 'Dexcom G6'],
      ['smbg', 'mmol/L', 5.8, '2023-06-01T07:30:00-04:00', 'Accu-Chek Guide'],
    ]);
    expect(summary.skippedByReason).toEqual({ 'not-glucose': 1 });
    expect(summary.issues.find((i) => i.kind === 'rejected')).toMatchObject({ reason: 'invalid-timestamp', record: 4, line: 35 });
  });
});

describe('Open mHealth specimens', () => {
  test('plasma or whole blood is neither a sensor nor a meter reading: skipped, named; no specimen is taken as a sensor reading', async () => {
    const point = (minute: string, specimen?: string) => ({ blood_glucose: { value: 100, unit: 'mg/dL' }, effective_time_frame: { date_time: `2023-06-01T08:${minute}:00-04:00` },
      ...(specimen ? { specimen_source: specimen } : {}) });
    const text = JSON.stringify([point('00', 'plasma'), point('05', 'whole blood'), point('10'), point('15', 'interstitial fluid'), point('20', 'capillary blood')]);
    const { records, summary } = await readCgm({ text }, { format: 'openmhealth', now: NOW });
    expect(glucose(records).map((r) => [r.method, r.time])).toEqual([['cgm', '2023-06-01T08:10:00-04:00'], ['cgm', '2023-06-01T08:15:00-04:00'], ['smbg', '2023-06-01T08:20:00-04:00']]);
    expect(summary.skippedByReason).toEqual({ 'unsupported-record-type': 2 });
    expect(summary.issues.map((i) => i.message).join(' ')).toMatch(/specimen_source "plasma" is neither/);
  });
});

describe('Open mHealth time intervals', () => {
  test('every form of time_interval puts the reading at its start; a duration of no fixed length is rejected', async () => {
    const point = (time_interval: object) => ({ blood_glucose: { value: 100, unit: 'mg/dL' }, effective_time_frame: { time_interval } });
    const text = JSON.stringify([
      point({ start_date_time: '2023-06-01T08:00:00-04:00', end_date_time: '2023-06-01T08:05:00-04:00' }),
      point({ start_date_time: '2023-06-01T08:10:00-04:00', duration: { value: 5, unit: 'min' } }),
      point({ end_date_time: '2023-06-01T08:25:00-04:00', duration: { value: 5, unit: 'min' } }), // it was read at 08:25, its end
      point({ end_date_time: '2023-06-01T08:30:00-04:00', duration: { value: 0.25, unit: 'h' } }),
      point({ end_date_time: '2023-06-01T08:45:00-04:00', duration: { value: 1, unit: 'Mo' } }),
    ]);
    const { records, summary } = await readCgm({ text }, { format: 'openmhealth', now: NOW, partial: true });
    expect(glucose(records).map((r) => r.time)).toEqual(['2023-06-01T08:00:00-04:00', '2023-06-01T08:10:00-04:00', '2023-06-01T08:20:00-04:00', '2023-06-01T08:15:00-04:00']);
    expect(summary.issues).toEqual([expect.objectContaining({ kind: 'rejected', reason: 'invalid-timestamp', record: 5, message: expect.stringMatching(/duration is not a fixed length/) })]);
  });
});

describe('Apple HealthKit export.xml', () => {
  test('streams blood-glucose records only, with offsets, units and CGM/meter origin', async () => {
    const { records, summary } = await readCgm(fixture('healthkit-export.xml'), { now: NOW });
    expect(glucose(records).map((r) => [r.method, r.unit, r.value, r.time, r.deviceName])).toEqual([
      ['cgm', 'mg/dL', 126, '2024-03-31T01:55:00+01:00', 'Dexcom G7'],
      ['cgm', 'mg/dL', 121, '2024-03-31T03:00:00+02:00', 'Dexcom G7'],
      ['smbg', 'mmol/L', 6.2, '2024-03-31T08:00:00+02:00', 'Contour'],
    ]);
    expect(summary).toMatchObject({ read: 3, converted: 3 });
    expect(summary.warnings).toContain('2 non-glucose HealthKit records ignored');
  });

  test('malformed XML names the line', async () => {
    await expect(readCgm(fixture('healthkit-malformed.xml'), { now: NOW })).rejects.toThrow(/line 5: malformed XML/);
  });
});

describe('chunk boundaries', () => {
  test.each([
    ['libreview-mmol-dst.csv', { timeZone: 'Europe/Berlin' }],
    ['dexcom-clarity-mgdl.csv', { timeZone: 'America/Los_Angeles' }],
    ['libreview-fallback.csv', { timeZone: 'America/New_York' }],
    ['dexcom-clarity-fallback.csv', { timeZone: 'America/New_York' }],
    ['healthkit-export.xml', {}],
    ['dexcom-egvs.json', {}],
    ['tidepool-export.json', {}],
  ])('%s read through a stream of 5-byte chunks gives the same result as from its path', async (file, options) => {
    const fromPath = await readCgm(fixture(file), { now: NOW, partial: true, ...options });
    const fromStream = await readCgm(createReadStream(fixture(file), { highWaterMark: 5 }), { now: NOW, partial: true, ...options });
    expect(fromStream.records).toEqual(fromPath.records);
    expect(fromStream.summary).toEqual(fromPath.summary);
    expect(fromPath.records.length).toBeGreaterThan(0);
  });
});
