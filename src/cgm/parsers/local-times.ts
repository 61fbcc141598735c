/**
 * Device-local wall-clock times (LibreView, Dexcom Clarity) placed in the source's zone, including
 * the autumn hour that occurs twice. `ZoneOffsets.resolve` alone can only take one of the two
 * instants (the earlier); a CGM records every few minutes, so the readings around the change say
 * which pass each one belongs to:
 *
 * - by a per-device clock when the source has one (Clarity's `Transmitter Time`, seconds since the
 *   transmitter started): the instant of a reading is that of the nearest unambiguous reading of
 *   the same transmitter plus the difference of their transmitter times, and the one of the two
 *   candidates within SEQUENCE_TOLERANCE_MS of it is taken — whatever order the rows are in. The
 *   clock is used only where the unambiguous readings on either side agree with it;
 * - else by the readings' order in the file, per series (a device, and for LibreView a record
 *   type): in a file listed oldest first, the wall clock steps back once inside the overlap, and
 *   the readings from that step on are the second pass; newest first, it steps forward once and the
 *   readings before the step are the second pass. The direction comes from the unambiguous
 *   readings of the series just before and after; a run with no step, or with more than one (rows
 *   out of order), cannot be placed.
 *
 * What neither can place keeps the earlier instant, as before, and is counted as such. To see the
 * readings after an overlap, every item from the first ambiguous reading on is held (in file order)
 * until each series with ambiguous readings has had an unambiguous one after them, at most
 * MAX_HELD items; they are then released in file order.
 */
import type { ResolvedWallClock } from '../time.js';
import type { SourcePosition } from '../types.js';
import type { ParserContext, ParserItem } from './common.js';

/** Items held at most while an overlap is open; past this, what is held is decided and released. */
export const MAX_HELD = 20_000;
/** How close a per-device clock must put a reading to one of its two candidate instants. */
export const SEQUENCE_TOLERANCE_MS = 15 * 60_000;
/** Per-device clock readings further apart than this (seconds) are not used to place one another. */
const SEQUENCE_REACH_S = 6 * 3600;
/** Unambiguous readings further than this from an overlap (wall clock) say nothing of the file's direction there. */
const NEIGHBOUR_REACH_MS = 3 * 3_600_000;
const DAY = 86_400_000;

/** A reading whose instant depends on its wall-clock time in the source's zone. */
export interface LocalReading {
  type: 'local';
  pos: SourcePosition;
  /** The wall clock read as if UTC (`wallToUtcMs`). */
  wallMs: number;
  /** Readings of one series come from one clock at a regular pace: a device (and record type). */
  series: string;
  /** Per-device clock in seconds, when the source has one (Clarity Transmitter Time). */
  sequence?: number;
  /** The item once the instant is known. */
  build: (epochMs: number, offsetMinutes: number) => ParserItem;
}

interface Anchor {
  wallMs: number;
  epochMs: number;
  sequence?: number;
}

interface Pending {
  reading: LocalReading;
  resolved: ResolvedWallClock & { later: { epochMs: number; offsetMinutes: number } };
  /** 'earlier' | 'later' once decided. */
  pass?: 'earlier' | 'later';
}

type Held = { item: ParserItem } | { pending: Pending } | { anchor: Anchor; series: string; item: ParserItem };

export class LocalTimes {
  private held: Held[] = [];
  /** Series with ambiguous readings not yet followed by an unambiguous one. */
  private readonly open = new Set<string>();
  /** Last unambiguous reading of each series released so far. */
  private readonly lastAnchor = new Map<string, Anchor>();

  constructor(private readonly ctx: ParserContext, private readonly maxHeld = MAX_HELD) {}

  /** Takes the next item of the source (in file order); returns the items now ready, in file order. */
  push(item: ParserItem | LocalReading): ParserItem[] {
    if (item.type !== 'local') {
      if (this.held.length === 0) return [item];
      this.held.push({ item });
      return this.held.length >= this.maxHeld ? this.release() : [];
    }
    const resolved = this.ctx.zone.resolve(item.wallMs);
    if (resolved.dst === 'nonexistent') this.ctx.report.dst.nonexistent++;
    if (resolved.dst === 'ambiguous' && resolved.later) {
      this.ctx.report.dst.ambiguous++;
      this.held.push({ pending: { reading: item, resolved: resolved as Pending['resolved'] } });
      this.open.add(item.series);
      return this.held.length >= this.maxHeld ? this.release() : [];
    }
    const ready = item.build(resolved.epochMs, resolved.offsetMinutes);
    const anchor: Anchor = { wallMs: item.wallMs, epochMs: resolved.epochMs, ...(item.sequence !== undefined ? { sequence: item.sequence } : {}) };
    if (this.held.length === 0) {
      this.lastAnchor.set(item.series, anchor);
      return [ready];
    }
    this.held.push({ anchor, series: item.series, item: ready });
    this.open.delete(item.series);
    return this.open.size === 0 || this.held.length >= this.maxHeld ? this.release() : [];
  }

  /** Everything still held, at the end of the source. */
  flush(): ParserItem[] {
    return this.held.length ? this.release() : [];
  }

  /** Decides every held ambiguous reading and returns the held items in file order. */
  private release(): ParserItem[] {
    const held = this.held;
    this.held = [];
    this.open.clear();
    // Each series' sequence in file order: the last anchor before the hold, then what was held.
    const bySeries = new Map<string, (Anchor | Pending)[]>();
    const seriesOf = (s: string): (Anchor | Pending)[] => {
      let list = bySeries.get(s);
      if (!list) {
        bySeries.set(s, (list = []));
        const before = this.lastAnchor.get(s);
        if (before) list.push(before);
      }
      return list;
    };
    for (const h of held) {
      if ('pending' in h) seriesOf(h.pending.reading.series).push(h.pending);
      else if ('anchor' in h) seriesOf(h.series).push(h.anchor);
    }
    for (const [series, list] of bySeries) {
      decideSeries(list, this.ctx);
      const last = [...list].reverse().find((e): e is Anchor => !isPending(e));
      if (last) this.lastAnchor.set(series, last);
    }
    return held.map((h) => {
      if (!('pending' in h)) return h.item;
      const { reading, resolved, pass } = h.pending;
      const at = pass === 'later' ? resolved.later : resolved;
      return reading.build(at.epochMs, at.offsetMinutes);
    });
  }
}

function isPending(e: Anchor | Pending): e is Pending {
  return 'reading' in e;
}

/** Decides the ambiguous readings of one series (its entries in file order) and counts how. */
function decideSeries(list: (Anchor | Pending)[], ctx: ParserContext): void {
  const anchors = list.filter((e): e is Anchor => !isPending(e));
  // Runs of ambiguous readings not interrupted by an unambiguous one of the series, per overlap (day).
  for (let i = 0; i < list.length;) {
    if (!isPending(list[i]!)) {
      i++;
      continue;
    }
    const day = Math.floor((list[i] as Pending).reading.wallMs / DAY);
    let j = i;
    while (j < list.length && isPending(list[j]!) && Math.floor((list[j] as Pending).reading.wallMs / DAY) === day) j++;
    const run = list.slice(i, j) as Pending[];
    const before = i > 0 && !isPending(list[i - 1]!) ? list[i - 1] as Anchor : undefined;
    const after = j < list.length && !isPending(list[j]!) ? list[j] as Anchor : undefined;
    const byOrder = orderPasses(run, before, after);
    run.forEach((p, k) => {
      const bySequence = sequencePass(p, anchors);
      if (bySequence) {
        p.pass = bySequence;
        ctx.report.dst.resolvedBySequence++;
      } else if (byOrder) {
        p.pass = byOrder[k];
        ctx.report.dst.resolvedByOrder++;
      } else p.pass = 'earlier';
    });
    i = j;
  }
}

/** The pass a reading is in by its per-device clock and the nearest unambiguous reading on that clock. */
function sequencePass(p: Pending, anchors: Anchor[]): 'earlier' | 'later' | undefined {
  const seq = p.reading.sequence;
  if (seq === undefined) return undefined;
  let below: Anchor | undefined;
  let above: Anchor | undefined;
  for (const a of anchors) {
    if (a.sequence === undefined || Math.abs(a.sequence - seq) > SEQUENCE_REACH_S) continue;
    if (a.sequence <= seq && (!below || a.sequence > below.sequence!)) below = a;
    if (a.sequence >= seq && (!above || a.sequence < above.sequence!)) above = a;
  }
  // The clock is trusted only where the readings on either side agree with it.
  if (below && above && Math.abs((above.epochMs - below.epochMs) - (above.sequence! - below.sequence!) * 1000) > SEQUENCE_TOLERANCE_MS) return undefined;
  const nearest = !below ? above : !above ? below : seq - below.sequence! <= above.sequence! - seq ? below : above;
  if (!nearest) return undefined;
  const expected = nearest.epochMs + (seq - nearest.sequence!) * 1000;
  const nearEarlier = Math.abs(p.resolved.epochMs - expected) <= SEQUENCE_TOLERANCE_MS;
  const nearLater = Math.abs(p.resolved.later.epochMs - expected) <= SEQUENCE_TOLERANCE_MS;
  return nearEarlier === nearLater ? undefined : nearEarlier ? 'earlier' : 'later';
}

/**
 * The passes of a run of ambiguous readings from their order in the file, or undefined when the
 * order does not settle it. The file's direction (oldest or newest first) comes from the
 * unambiguous neighbours when they are near the overlap; a direction is only taken when it is the
 * one hypothesis the run fits (one step against it: the clock going back), and never when the run
 * could as well be one pass with no step.
 */
function orderPasses(run: Pending[], before: Anchor | undefined, after: Anchor | undefined): ('earlier' | 'later')[] | undefined {
  const walls = run.map((p) => p.reading.wallMs);
  const min = Math.min(...walls);
  const max = Math.max(...walls);
  const near = (a: Anchor | undefined): a is Anchor => a !== undefined && a.wallMs >= min - NEIGHBOUR_REACH_MS && a.wallMs <= max + NEIGHBOUR_REACH_MS;
  const ascendingSeen = (near(before) && before.wallMs < min) || (near(after) && after.wallMs > max);
  const descendingSeen = (near(before) && before.wallMs > max) || (near(after) && after.wallMs < min);
  const backSteps: number[] = [];
  const forwardSteps: number[] = [];
  for (let k = 1; k < walls.length; k++) {
    if (walls[k]! < walls[k - 1]!) backSteps.push(k);
    else if (walls[k]! > walls[k - 1]!) forwardSteps.push(k);
  }
  // Hypotheses the run fits: oldest first (no step back: one pass, unplaceable; one: the change),
  // newest first (the mirror image). Neighbours rule out the direction they contradict.
  const fits: { split: number; ascending: boolean }[] = [];
  let unplaceable = false;
  if (!descendingSeen) {
    if (backSteps.length === 1) fits.push({ split: backSteps[0]!, ascending: true });
    else if (backSteps.length === 0) unplaceable = true;
  }
  if (!ascendingSeen) {
    if (forwardSteps.length === 1) fits.push({ split: forwardSteps[0]!, ascending: false });
    else if (forwardSteps.length === 0) unplaceable = true;
  }
  if (unplaceable || fits.length !== 1) return undefined;
  const { split, ascending } = fits[0]!;
  return run.map((_, k) => ((k < split) === ascending ? 'earlier' : 'later'));
}
