import { describe, expect, test } from '@jest/globals';
import { formatWithOffset, parseIso, ZoneOffsets } from '../../../src/cgm/index.js';

const wall = (text: string): number => Date.parse(`${text}Z`);

describe('device-local time in an IANA zone', () => {
  const berlin = new ZoneOffsets('Europe/Berlin');

  test('ordinary times get the zone offset of that date', () => {
    expect(berlin.resolve(wall('2024-01-15T12:00:00'))).toEqual({ epochMs: Date.parse('2024-01-15T11:00:00Z'), offsetMinutes: 60 });
    expect(berlin.resolve(wall('2024-07-15T12:00:00'))).toEqual({ epochMs: Date.parse('2024-07-15T10:00:00Z'), offsetMinutes: 120 });
  });

  test('a time in the spring-forward gap is moved forward by the gap and flagged', () => {
    const r = berlin.resolve(wall('2024-03-31T02:30:00'));
    expect(formatWithOffset(r.epochMs, r.offsetMinutes)).toBe('2024-03-31T03:30:00+02:00');
    expect(r.dst).toBe('nonexistent');
  });

  test('a time in the fall-back overlap takes the earlier instant and is flagged', () => {
    const r = berlin.resolve(wall('2024-10-27T02:30:00'));
    expect(formatWithOffset(r.epochMs, r.offsetMinutes)).toBe('2024-10-27T02:30:00+02:00');
    expect(r.dst).toBe('ambiguous');
  });

  test('southern-hemisphere and half-hour zones', () => {
    const r = new ZoneOffsets('Australia/Adelaide').resolve(wall('2024-01-10T09:00:00'));
    expect(formatWithOffset(r.epochMs, r.offsetMinutes)).toBe('2024-01-10T09:00:00+10:30');
  });
});

describe('ISO parsing', () => {
  test('keeps the stated offset and reads local times as wall clock', () => {
    expect(parseIso('2016-10-23T11:33:36-0700')).toMatchObject({ epochMs: Date.parse('2016-10-23T18:33:36Z'), offsetMinutes: -420 });
    expect(parseIso('2024-03-31 01:55:00 +0100')).toMatchObject({ offsetMinutes: 60 });
    expect(parseIso('2024-03-09T10:00:12')!.offsetMinutes).toBeUndefined();
    expect(parseIso('2024-02-30T10:00:00Z')).toBeUndefined();
  });
});
