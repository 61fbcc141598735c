/**
 * Sources that write the device's wall clock with no offset (LibreView, Dexcom Clarity): the autumn
 * hour that occurs twice is placed by the readings' order in the file or by the transmitter's own
 * clock; only what neither can place keeps the earlier instant, and the report says how many.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, test } from '@jest/globals';
import { readCgm, ZoneOffsets, type CgmRecord, type GlucoseRecord } from '../../../src/cgm/index.js';
import type { ParserContext, ParserItem } from '../../../src/cgm/parsers/common.js';
import { LocalTimes, type LocalReading } from '../../../src/cgm/parsers/local-times.js';

const FIXTURES = path.join(import.meta.dirname, '../../fixtures/cgm');
const fixture = (name: string): string => path.join(FIXTURES, name);
const NOW = () => Date.parse('2025-01-01T00:00:00Z');
const glucose = (records: CgmRecord[]): GlucoseRecord[] => records.filter((r): r is GlucoseRecord => r.kind === 'glucose');
/** value → time: the fixtures give every reading its own value. */
const timesByValue = (records: CgmRecord[]): Record<number, string> => Object.fromEntries(glucose(records).map((r) => [r.value!, r.time]));

describe('the DST fall-back hour in device-local exports', () => {
  test('LibreView: a device listed oldest first and one listed newest first keep both passes through 01:00–01:59', async () => {
    const { accepted, records, summary } = await readCgm(fixture('libreview-fallback.csv'), { timeZone: 'America/New_York', now: NOW });
    expect(accepted).toBe(true);
    const t = timesByValue(records);
    // Device A, oldest first: the clock goes back after 01:45 EDT.
    expect([100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111].map((v) => t[v])).toEqual([
      '2024-11-03T00:30:00-04:00', '2024-11-03T00:45:00-04:00',
      '2024-11-03T01:00:00-04:00', '2024-11-03T01:15:00-04:00', '2024-11-03T01:30:00-04:00', '2024-11-03T01:45:00-04:00',
      '2024-11-03T01:00:00-05:00', '2024-11-03T01:15:00-05:00', '2024-11-03T01:30:00-05:00', '2024-11-03T01:45:00-05:00',
      '2024-11-03T02:00:00-05:00', '2024-11-03T02:15:00-05:00',
    ]);
    // Device B, newest first: the second pass comes first in the file.
    expect([200, 201, 202, 203, 204, 205, 206, 207, 208, 209, 210].map((v) => t[v])).toEqual([
      '2024-11-03T02:15:00-05:00', '2024-11-03T02:00:00-05:00',
      '2024-11-03T01:45:00-05:00', '2024-11-03T01:30:00-05:00', '2024-11-03T01:15:00-05:00', '2024-11-03T01:00:00-05:00',
      '2024-11-03T01:45:00-04:00', '2024-11-03T01:30:00-04:00', '2024-11-03T01:15:00-04:00', '2024-11-03T01:00:00-04:00',
      '2024-11-03T00:45:00-04:00',
    ]);
    // Two scans in the overlap with nothing to tell which pass they are in: the earlier instant, as before.
    expect([150, 151, 152].map((v) => t[v])).toEqual(['2024-11-03T00:50:00-04:00', '2024-11-03T01:10:00-04:00', '2024-11-03T01:20:00-04:00']);
    expect(summary).toMatchObject({ read: 26, converted: 26, skipped: 0, rejected: 0 });
    expect(glucose(records).map((r) => r.record)).toEqual(Array.from({ length: 26 }, (_, k) => k + 1)); // held rows come out in file order
    expect(summary.dstAdjusted).toEqual({ nonexistent: 0, ambiguous: 18, resolvedByOrder: 16, resolvedBySequence: 0 });
    expect(summary.warnings).toContain('18 local times fell in the DST overlap (the hour that occurs twice): 16 placed by the readings\' order in the file; 2 could not be placed and took the earlier instant');
  });

  test('Dexcom Clarity: rows sorted by wall-clock text (both passes interleaved) are placed by Transmitter Time', async () => {
    const { records, summary } = await readCgm(fixture('dexcom-clarity-fallback.csv'), { timeZone: 'America/New_York', now: NOW });
    const t = timesByValue(records);
    expect([130, 131, 132, 133, 134, 135].map((v) => t[v])).toEqual(
      ['01:00', '01:10', '01:20', '01:30', '01:40', '01:50'].map((w) => `2024-11-03T${w}:00-04:00`));
    expect([160, 161, 162, 163, 164, 165].map((v) => t[v])).toEqual(
      ['01:00', '01:10', '01:20', '01:30', '01:40', '01:50'].map((w) => `2024-11-03T${w}:00-05:00`));
    expect([t[120], t[122], t[170], t[171]]).toEqual(['2024-11-03T00:40:00-04:00', '2024-11-03T00:50:00-04:00', '2024-11-03T02:00:00-05:00', '2024-11-03T02:10:00-05:00']);
    expect(summary).toMatchObject({ converted: 16, skipped: 0 });
    expect(summary.dstAdjusted).toEqual({ nonexistent: 0, ambiguous: 12, resolvedByOrder: 0, resolvedBySequence: 12 });
    expect(summary.warnings).toContain('12 local times fell in the DST overlap (the hour that occurs twice): 12 placed by the transmitter\'s clock');
  });

  const withoutTransmitterTime = (text: string): string => text.split('\n').map((line) => line.split(',').filter((_, k) => k !== 12).join(',')).join('\n');

  test('Dexcom Clarity without Transmitter Time, in time order: placed by the order of the rows', async () => {
    const text = readFileSync(fixture('dexcom-clarity-fallback.csv'), 'utf8');
    const rows = text.trim().split('\n');
    const byTransmitterTime = [...rows.slice(0, 4), ...rows.slice(4).sort((a, b) => Number(a.split(',')[12]) - Number(b.split(',')[12]))];
    const { records, summary } = await readCgm({ text: withoutTransmitterTime(byTransmitterTime.join('\n')) }, { timeZone: 'America/New_York', now: NOW });
    const t = timesByValue(records);
    expect(t[135]).toBe('2024-11-03T01:50:00-04:00');
    expect(t[160]).toBe('2024-11-03T01:00:00-05:00');
    expect(summary.converted).toBe(16);
    expect(summary.dstAdjusted).toEqual({ nonexistent: 0, ambiguous: 12, resolvedByOrder: 12, resolvedBySequence: 0 });
  });

  test('Dexcom Clarity without Transmitter Time, passes interleaved: not placed, the earlier instant kept, and the report says so', async () => {
    const text = withoutTransmitterTime(readFileSync(fixture('dexcom-clarity-fallback.csv'), 'utf8'));
    const { records, summary } = await readCgm({ text }, { timeZone: 'America/New_York', now: NOW });
    expect(glucose(records)).toHaveLength(10); // the second of each pair is a duplicate instant of the first
    expect(summary.skippedByReason).toEqual({ 'conflicting-duplicate': 6 });
    expect(summary.dstAdjusted).toEqual({ nonexistent: 0, ambiguous: 12, resolvedByOrder: 0, resolvedBySequence: 0 });
    expect(summary.warnings).toContain('12 local times fell in the DST overlap (the hour that occurs twice): 12 could not be placed and took the earlier instant');
  });
});

describe('LocalTimes hold', () => {
  const ctx = (): ParserContext => ({
    zone: new ZoneOffsets('America/New_York'),
    report: { usedZone: true, dst: { nonexistent: 0, ambiguous: 0, resolvedByOrder: 0, resolvedBySequence: 0 }, warnings: [] },
  });
  const reading = (record: number, wall: string): LocalReading => ({
    type: 'local', pos: { record }, wallMs: Date.parse(`2024-11-03T${wall}:00Z`), series: 'd',
    build: (epochMs) => ({ type: 'skip', pos: { record }, reason: 'duplicate', message: new Date(epochMs).toISOString() }),
  });
  const times = (items: ParserItem[]): string[] => items.map((i) => (i.type === 'skip' ? i.message : ''));

  test('holds from the first ambiguous reading until the series has an unambiguous one after it', () => {
    const c = ctx();
    const local = new LocalTimes(c);
    expect(times(local.push(reading(1, '00:45')))).toEqual(['2024-11-03T04:45:00.000Z']);
    expect(local.push(reading(2, '01:30'))).toEqual([]);
    expect(local.push(reading(3, '01:45'))).toEqual([]);
    expect(local.push(reading(4, '01:00'))).toEqual([]);
    expect(times(local.push(reading(5, '02:00')))).toEqual(['2024-11-03T05:30:00.000Z', '2024-11-03T05:45:00.000Z', '2024-11-03T06:00:00.000Z', '2024-11-03T07:00:00.000Z']);
    expect(c.report.dst).toEqual({ nonexistent: 0, ambiguous: 3, resolvedByOrder: 3, resolvedBySequence: 0 });
  });

  test('past the hold limit what is held is decided with what is known (here: nothing to tell, the earlier instant)', () => {
    const c = ctx();
    const local = new LocalTimes(c, 3);
    local.push(reading(1, '00:45'));
    expect(local.push(reading(2, '01:00'))).toEqual([]);
    expect(local.push(reading(3, '01:15'))).toEqual([]);
    expect(times(local.push(reading(4, '01:30')))).toEqual(['2024-11-03T05:00:00.000Z', '2024-11-03T05:15:00.000Z', '2024-11-03T05:30:00.000Z']);
    expect(local.flush()).toEqual([]);
    expect(c.report.dst).toEqual({ nonexistent: 0, ambiguous: 3, resolvedByOrder: 0, resolvedBySequence: 0 });
  });
});
