/**
 * The KeyValueStore port's contract (src/kv/port.ts), run against every adapter: two handles `a`
 * and `b` on one store (two replicas of Redis, two processes on one SQLite file, or one process's
 * store twice for memory), and a clock the test moves (a frozen clock for memory and SQLite; real
 * time for Redis, which keeps its own).
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { KeyValueStore } from '../../src/kv/port.js';

export interface KvPair {
  a: KeyValueStore;
  b: KeyValueStore;
  /** Moves the stores' clock on by `ms` (sleeps, for a store with its own clock). */
  advance(ms: number): Promise<void>;
  close(): Promise<void>;
}

const eventually = async (check: () => boolean, ms = 2000): Promise<void> => {
  for (const end = Date.now() + ms; !check() && Date.now() < end;) await new Promise((r) => setTimeout(r, 10));
};

/** Registers the contract tests for one adapter. */
export function describeKvContract(name: string, open: () => Promise<KvPair>): void {
  describe(`KeyValueStore contract: ${name}`, () => {
    let kv: KvPair;
    let n = 0;
    /** A key no other test uses (Redis keeps keys between runs of one prefix). */
    const key = (label: string) => `${label}:${++n}`;

    beforeAll(async () => {
      kv = await open();
    });
    afterAll(async () => kv?.close());

    test('get of a key never set is undefined; set then get on the other handle; set overwrites; delete removes', async () => {
      const k = key('plain');
      expect(await kv.a.get(k)).toBeUndefined();
      await kv.a.set(k, 'v1');
      expect(await kv.b.get(k)).toBe('v1');
      await kv.b.set(k, 'v2 ünïcode');
      expect(await kv.a.get(k)).toBe('v2 ünïcode');
      await kv.a.delete(k);
      expect(await kv.b.get(k)).toBeUndefined();
      await kv.a.delete(k); // deleting an absent key is no error
    });

    test('a value with a TTL is visible until it expires and then gone for every reader; without one it stays', async () => {
      const short = key('ttl');
      const forever = key('forever');
      await kv.a.set(short, 'x', 2000);
      await kv.a.set(forever, 'y');
      expect(await kv.b.get(short)).toBe('x');
      await kv.advance(2400);
      expect(await kv.b.get(short)).toBeUndefined();
      expect(await kv.a.take(short)).toBeUndefined();
      expect(await kv.b.get(forever)).toBe('y');
      // a set without a TTL over one with a TTL keeps it for good
      await kv.a.set(short, 'z', 2000);
      await kv.a.set(short, 'z2');
      await kv.advance(2400);
      expect(await kv.b.get(short)).toBe('z2');
    });

    test('setIfAbsent succeeds once across handles (jti replay cache), and again once the first has expired', async () => {
      const k = key('jti');
      expect(await kv.a.setIfAbsent(k, '1', 2000)).toBe(true);
      expect(await kv.b.setIfAbsent(k, '2', 2000)).toBe(false);
      expect(await kv.a.get(k)).toBe('1');
      await kv.advance(2400);
      expect(await kv.b.setIfAbsent(k, '3', 2000)).toBe(true);
      expect(await kv.a.get(k)).toBe('3');
    });

    test('take gets and deletes: of concurrent takes on both handles exactly one gets the single-use code', async () => {
      const k = key('code');
      await kv.a.set(k, 'payload', 10_000);
      const results = await Promise.all([kv.a.take(k), kv.b.take(k), kv.a.take(k), kv.b.take(k)]);
      expect(results.filter((r) => r === 'payload')).toHaveLength(1);
      expect(results.filter((r) => r === undefined)).toHaveLength(3);
      expect(await kv.a.get(k)).toBeUndefined();
      expect(await kv.b.take(key('never-set'))).toBeUndefined();
    });

    test('increment counts across handles in a fixed window that restarts at 1 once over; get reads the count', async () => {
      const k = key('rl');
      expect(await kv.a.increment(k, 2000)).toBe(1);
      expect(await kv.b.increment(k, 2000)).toBe(2);
      expect(await kv.a.get(k)).toBe('2');
      // the window is fixed at the first increment: later ones do not extend it
      await kv.advance(1000);
      expect(await kv.a.increment(k, 2000)).toBe(3);
      await kv.advance(1400);
      expect(await kv.b.increment(k, 2000)).toBe(1);
    });

    test('concurrent increments lose no count', async () => {
      const k = key('counter');
      const counts = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? kv.a : kv.b).increment(k, 60_000)));
      expect([...counts].sort((x, y) => x - y)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    });

    test('publish reaches subscribers on both handles; an unsubscribed handler hears nothing more', async () => {
      const channel = key('channel');
      const onA: string[] = [];
      const onB: string[] = [];
      const offA = await kv.a.subscribe(channel, (m) => onA.push(m));
      const offB = await kv.b.subscribe(channel, (m) => onB.push(m));
      expect(kv.a.subscriptionLive()).toBe(true);
      expect(kv.b.subscriptionLive()).toBe(true);
      await kv.a.publish(channel, 'grant-1');
      await eventually(() => onA.length > 0 && onB.length > 0);
      expect(onA).toEqual(['grant-1']);
      expect(onB).toEqual(['grant-1']);
      await offB();
      await kv.a.publish(channel, 'grant-2');
      await kv.b.publish(key('other-channel'), 'elsewhere');
      await eventually(() => onA.length > 1);
      await new Promise((r) => setTimeout(r, 300));
      expect(onA).toEqual(['grant-1', 'grant-2']);
      expect(onB).toEqual(['grant-1']);
      await offA();
    });
  });
}
