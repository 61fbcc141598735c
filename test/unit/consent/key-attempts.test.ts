/**
 * The limit on guesses at a patient's secret (KeySessions.countAttempt): 10 in any 15 minutes,
 * counted as a sliding window, so a window boundary neither doubles the allowance nor forgets
 * the attempts made just before it.
 */
import { describe, expect, test } from '@jest/globals';
import { KeySessions } from '../../../src/consent/keys/sessions.js';
import { isGlucoGuardError } from '../../../src/errors.js';
import { MemoryKeyValueStore } from '../../../src/kv/memory.js';

const WINDOW = 15 * 60_000;

function setUp(start: number): { sessions: KeySessions; clock: { t: number }; attempt: () => Promise<number> } {
  const clock = { t: start };
  const kv = new MemoryKeyValueStore(() => clock.t);
  const sessions = new KeySessions(kv, 'a'.repeat(64), () => clock.t);
  const attempt = () => sessions.countAttempt('pseudonym-1').then(() => 200, (err: unknown) => (isGlucoGuardError(err) ? err.status : 500));
  return { sessions, clock, attempt };
}

describe('attempts at a patient secret', () => {
  test('the 11th attempt within one window is 429', async () => {
    const { attempt } = setUp(100 * WINDOW + 1000);
    const statuses: number[] = [];
    for (let i = 0; i < 11; i++) statuses.push(await attempt());
    expect(statuses).toEqual([...Array(10).fill(200), 429]);
  });

  test('ten attempts just before a window boundary still count just after it', async () => {
    const { clock, attempt } = setUp(101 * WINDOW - 5_000);
    for (let i = 0; i < 10; i++) expect(await attempt()).toBe(200);
    clock.t = 101 * WINDOW + 5_000; // a fixed window would start again from zero here
    expect(await attempt()).toBe(429);
  });

  test('the allowance comes back as the earlier attempts age out of the last 15 minutes', async () => {
    const { clock, attempt } = setUp(200 * WINDOW + 1000);
    for (let i = 0; i < 10; i++) expect(await attempt()).toBe(200);
    clock.t = 201 * WINDOW + WINDOW / 2; // half of the previous window still counts: 5 of its 10
    const statuses: number[] = [];
    for (let i = 0; i < 6; i++) statuses.push(await attempt());
    expect(statuses).toEqual([200, 200, 200, 200, 200, 429]);
    clock.t = 203 * WINDOW; // two windows on: nothing counts
    expect(await attempt()).toBe(200);
  });
});
