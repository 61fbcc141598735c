/**
 * Time helpers: ISO date-times that keep a source offset, and wall-clock → instant in an IANA zone
 * (device-local timestamps) with explicit handling of DST gaps and overlaps.
 */

const MINUTE = 60_000;

/** Formats an instant as `YYYY-MM-DDThh:mm:ss[.sss]±hh:mm` (or `Z` for offset 0) in the given offset. */
export function formatWithOffset(epochMs: number, offsetMinutes: number): string {
  const d = new Date(epochMs + offsetMinutes * MINUTE);
  const ms = d.getUTCMilliseconds();
  const base = `${pad4(d.getUTCFullYear())}-${pad2(d.getUTCMonth() + 1)}-${pad2(d.getUTCDate())}T${pad2(d.getUTCHours())}:${pad2(d.getUTCMinutes())}:${pad2(d.getUTCSeconds())}`;
  return base + (ms ? `.${String(ms).padStart(3, '0')}` : '') + formatOffset(offsetMinutes);
}

export function formatOffset(offsetMinutes: number): string {
  if (offsetMinutes === 0) return 'Z';
  const sign = offsetMinutes < 0 ? '-' : '+';
  const abs = Math.abs(offsetMinutes);
  return `${sign}${pad2(Math.floor(abs / 60))}:${pad2(abs % 60)}`;
}

const ISO_RE = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?\s*(Z|[+-]\d{2}:?\d{2})?$/i;

export interface ParsedIso {
  epochMs: number;
  /** Offset stated in the text; undefined when the text has none (local time). */
  offsetMinutes?: number;
  /** Wall-clock fields, for local times that still need a zone. */
  wall: WallClock;
}

export interface WallClock {
  year: number; month: number; day: number; hour: number; minute: number; second: number; ms: number;
}

/** Parses an ISO-8601-like date-time (offset optional; without one the fields are read as UTC). */
export function parseIso(text: string): ParsedIso | undefined {
  const m = ISO_RE.exec(text.trim());
  if (!m) return undefined;
  const wall: WallClock = {
    year: +m[1]!, month: +m[2]!, day: +m[3]!, hour: +m[4]!, minute: +m[5]!, second: m[6] ? +m[6] : 0,
    ms: m[7] ? Math.floor(Number(`0.${m[7]}`) * 1000) : 0,
  };
  const local = wallToUtcMs(wall);
  if (local === undefined) return undefined;
  const offsetMinutes = m[8] === undefined ? undefined : parseOffset(m[8]);
  return { epochMs: local - (offsetMinutes ?? 0) * MINUTE, offsetMinutes, wall };
}

/** `Z`, `+hh:mm`, `+hhmm` → minutes east of UTC. */
export function parseOffset(text: string): number {
  if (text === 'Z' || text === 'z') return 0;
  const sign = text[0] === '-' ? -1 : 1;
  const digits = text.slice(1).replace(':', '');
  return sign * (Number(digits.slice(0, 2)) * 60 + Number(digits.slice(2, 4)));
}

/** Wall clock read as if UTC; undefined when a field is out of range (e.g. 31 February). */
export function wallToUtcMs(w: WallClock): number | undefined {
  if (w.month < 1 || w.month > 12 || w.day < 1 || w.day > 31 || w.hour > 23 || w.minute > 59 || w.second > 60) return undefined;
  const t = Date.UTC(w.year, w.month - 1, w.day, w.hour, w.minute, w.second, w.ms);
  const d = new Date(t);
  if (d.getUTCDate() !== w.day || d.getUTCMonth() !== w.month - 1) return undefined;
  return t;
}

/** Offsets of one IANA zone, cached per quarter hour (zone rules change only on such boundaries). */
export class ZoneOffsets {
  private readonly fmt: Intl.DateTimeFormat;
  private readonly cache = new Map<number, number>();

  constructor(readonly zone: string) {
    this.fmt = new Intl.DateTimeFormat('en-US', {
      timeZone: zone, hourCycle: 'h23', year: 'numeric', month: 'numeric', day: 'numeric',
      hour: 'numeric', minute: 'numeric', second: 'numeric',
    });
  }

  /** UTC offset in minutes of the zone at an instant. */
  offsetAt(epochMs: number): number {
    const key = Math.floor(epochMs / (15 * MINUTE));
    let off = this.cache.get(key);
    if (off === undefined) {
      const probe = key * 15 * MINUTE;
      const parts: Record<string, number> = {};
      for (const p of this.fmt.formatToParts(new Date(probe))) if (p.type !== 'literal') parts[p.type] = Number(p.value);
      const asUtc = Date.UTC(parts.year!, parts.month! - 1, parts.day!, parts.hour!, parts.minute!, parts.second!);
      off = Math.round((asUtc - probe) / MINUTE);
      if (this.cache.size > 100_000) this.cache.clear();
      this.cache.set(key, off);
    }
    return off;
  }

  /**
   * Instant of a wall-clock time in this zone. In a DST overlap the earlier instant (the offset
   * before the change) is taken; in a gap the time is moved forward by the gap, as most calendar
   * software does. Both cases are reported so a summary can count them; an ambiguous time also
   * carries the `later` reading (the offset after the change), for callers that can tell which
   * of the two it was (see parsers/local-times.ts).
   */
  resolve(wallUtcMs: number): ResolvedWallClock {
    const before = this.offsetAt(wallUtcMs - 36 * 60 * MINUTE / 2);
    const after = this.offsetAt(wallUtcMs + 36 * 60 * MINUTE / 2);
    const candidates: number[] = [];
    for (const off of before === after ? [before] : [before, after]) {
      if (this.offsetAt(wallUtcMs - off * MINUTE) === off) candidates.push(off);
    }
    if (candidates.length === 0) {
      // Gap: the wall time does not exist; read it with the offset before the change.
      const epochMs = wallUtcMs - before * MINUTE;
      return { epochMs, offsetMinutes: this.offsetAt(epochMs), dst: 'nonexistent' };
    }
    const off = Math.max(...candidates); // larger offset = earlier instant
    if (candidates.length === 1) return { epochMs: wallUtcMs - off * MINUTE, offsetMinutes: off };
    const later = Math.min(...candidates);
    return { epochMs: wallUtcMs - off * MINUTE, offsetMinutes: off, dst: 'ambiguous', later: { epochMs: wallUtcMs - later * MINUTE, offsetMinutes: later } };
  }

  /** Instant of local midnight starting a calendar date (`YYYY-MM-DD`) in this zone (moved forward when midnight is in a gap). */
  startOfDay(date: string): number {
    return this.resolve(Date.parse(`${date}T00:00:00Z`)).epochMs;
  }
}

/** A wall-clock time placed in a zone (ZoneOffsets.resolve). */
export interface ResolvedWallClock {
  epochMs: number;
  offsetMinutes: number;
  dst?: 'ambiguous' | 'nonexistent';
  /** For an ambiguous time: its second occurrence (the offset after the clocks went back). */
  later?: { epochMs: number; offsetMinutes: number };
}

/** True when `zone` is an IANA zone this runtime knows. */
export function isTimeZone(zone: string): boolean {
  try {
    new Intl.DateTimeFormat('en', { timeZone: zone });
    return true;
  } catch {
    return false;
  }
}

/** Local calendar date `YYYY-MM-DD` of an instant at an offset. */
export function localDate(epochMs: number, offsetMinutes: number): string {
  return formatWithOffset(epochMs, offsetMinutes).slice(0, 10);
}

function pad2(n: number): string {
  return n < 10 ? `0${n}` : String(n);
}

function pad4(n: number): string {
  return String(n).padStart(4, '0');
}
