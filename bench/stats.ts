/** Small helpers shared by the benchmark suites: timing, percentiles, memory. */
import { readFileSync } from 'node:fs';

export type Log = (line: string) => void;

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (rank - lo);
}

/** Runs `fn` `iterations` times after `warmup` runs; returns per-call milliseconds, sorted. */
export async function timeCalls(fn: () => Promise<unknown> | unknown, iterations: number, warmup = Math.min(50, iterations)): Promise<number[]> {
  for (let i = 0; i < warmup; i++) await fn();
  const times: number[] = [];
  for (let i = 0; i < iterations; i++) {
    const t0 = process.hrtime.bigint();
    await fn();
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return times.sort((a, b) => a - b);
}

export function summary(times: number[]): { p50: number; p95: number; p99: number; mean: number; n: number } {
  const mean = times.reduce((a, b) => a + b, 0) / times.length;
  return { p50: percentile(times, 50), p95: percentile(times, 95), p99: percentile(times, 99), mean, n: times.length };
}

export function rssMb(): number {
  return process.memoryUsage().rss / 1024 / 1024;
}

/**
 * The process's resident pages in MB, split into anonymous memory and pages mapped from files (the
 * binary, libraries, memory-mapped databases); undefined where /proc/self/smaps_rollup is not there.
 */
export function residentSplitMb(): { rss: number; anonymous: number; fileBacked: number } | undefined {
  try {
    const rollup = readFileSync('/proc/self/smaps_rollup', 'utf8');
    const kb = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(rollup)?.[1] ?? 0);
    return { rss: kb('Rss') / 1024, anonymous: kb('Anonymous') / 1024, fileBacked: (kb('Rss') - kb('Anonymous')) / 1024 };
  } catch {
    return undefined;
  }
}

export const fmt = (n: number, digits = 2): string => n.toFixed(digits);
