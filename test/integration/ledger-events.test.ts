/**
 * EventFollower: contract events handed over in chain order with a persisted cursor — after a
 * restart it resumes right after the last handled event (none missed, none handled twice), and
 * an event whose handler failed is handed over again on the next round.
 */
import { afterAll, beforeAll, expect, it } from '@jest/globals';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { id } from 'ethers';
import { EventFollower, type FollowedEvent } from '../../src/ledger/events.js';
import { startTestChain, tempDir, type TestChain } from '../chain/helpers.js';

let chain: TestChain;
let seq = 0;
const dir = tempDir();
beforeAll(async () => {
  chain = await startTestChain();
});
afterAll(async () => {
  await chain?.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function anchorBatches(n: number): Promise<void> {
  const anchor = chain.contract('ResourceAnchor');
  for (let i = 0; i < n; i++) {
    await (await anchor.anchor(id(`events-${seq}`), 1, seq, seq)).wait();
    seq++;
  }
}

function follower(cursor: string, seen: number[], fail?: (batchId: number) => boolean): EventFollower {
  return new EventFollower({
    provider: chain.provider,
    contract: chain.contract('ResourceAnchor'),
    events: ['BatchAnchored'],
    cursor,
    handler: (e: FollowedEvent) => {
      const batchId = Number(e.args.batchId);
      if (fail?.(batchId)) throw new Error('handler failed');
      seen.push(batchId);
    },
  });
}

it('hands every event over once, in order, across restarts', async () => {
  const cursor = path.join(dir, 'anchor.cursor.json');
  await anchorBatches(3);
  const seen: number[] = [];
  expect(await follower(cursor, seen).poll()).toBe(3);
  expect(seen).toEqual([1, 2, 3]);
  expect(existsSync(cursor)).toBe(true);

  await anchorBatches(2);
  const afterRestart: number[] = [];
  const second = follower(cursor, afterRestart);
  expect(await second.poll()).toBe(2);
  expect(await second.poll()).toBe(0);
  expect(afterRestart).toEqual([4, 5]);
  expect(JSON.parse(readFileSync(cursor, 'utf8')).block).toBeGreaterThan(0);
});

it('hands a failed event over again (and nothing after it was skipped)', async () => {
  const cursor = path.join(dir, 'failing.cursor.json');
  const seen: number[] = [];
  let broken = true;
  const f = follower(cursor, seen, (batchId) => broken && batchId === 3);
  await expect(f.poll()).rejects.toThrow('handler failed');
  expect(seen).toEqual([1, 2]);
  broken = false;
  await f.poll();
  expect(seen).toEqual([1, 2, 3, 4, 5]);
  // a fresh follower on the same cursor finds nothing new
  const again: number[] = [];
  expect(await follower(cursor, again).poll()).toBe(0);
});

it('start/stop polls in the background', async () => {
  const cursor = path.join(dir, 'bg.cursor.json');
  const seen: number[] = [];
  const f = new EventFollower({
    provider: chain.provider, contract: chain.contract('ResourceAnchor'), events: ['BatchAnchored'], cursor, pollMs: 20,
    handler: (e) => { seen.push(Number(e.args.batchId)); },
  });
  f.start();
  await anchorBatches(1);
  const deadline = Date.now() + 5000;
  while (seen.length < 6 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  await f.stop();
  expect(seen).toEqual([1, 2, 3, 4, 5, 6]);
});
