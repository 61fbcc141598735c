/**
 * When a replica reads the shared consent epoch: every request while its pub/sub subscription is
 * down (a message could be missed), at most every EPOCH_MAX_AGE_MS while it is live, and on the
 * next request after an invalidation. A KV store that cannot be read fails the decision closed.
 */
import { describe, expect, it } from '@jest/globals';
import { ConsentDecisions, EPOCH_KEY, EPOCH_MAX_AGE_MS, type ConsentDecisionsOptions } from '../../../src/consent/decisions.js';
import { MemoryKeyValueStore } from '../../../src/kv/memory.js';
import { unavailable } from '../../../src/errors.js';

class CountingKv extends MemoryKeyValueStore {
  reads = 0;
  subscribed = true;
  down = false;
  override async get(key: string): Promise<string | undefined> {
    if (this.down) throw unavailable('Redis is unreachable');
    if (key === EPOCH_KEY) this.reads++;
    return super.get(key);
  }
  override subscriptionLive(): boolean {
    return this.subscribed && !this.down;
  }
}

function decisionsOn(kv: CountingKv): ConsentDecisions {
  const d = new ConsentDecisions({ kv } as unknown as ConsentDecisionsOptions);
  // what start() sets once it has subscribed (start also follows the chain, not needed here)
  (d as unknown as { unsubscribe: () => Promise<void> }).unsubscribe = async () => undefined;
  return d;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('consent epoch reads', () => {
  it('with a live subscription, reads once per EPOCH_MAX_AGE_MS, not per request', async () => {
    const kv = new CountingKv();
    const d = decisionsOn(kv);
    for (let i = 0; i < 50; i++) await d.sync();
    expect(kv.reads).toBe(1);
    await sleep(EPOCH_MAX_AGE_MS + 20);
    await d.sync();
    expect(kv.reads).toBe(2);
    await kv.close();
  });

  it('reads on every request while the subscription is down', async () => {
    const kv = new CountingKv();
    kv.subscribed = false;
    const d = decisionsOn(kv);
    for (let i = 0; i < 5; i++) await d.sync();
    expect(kv.reads).toBe(5);
    await kv.close();
  });

  it('an invalidation (pub/sub message or chain event) makes the next request read the epoch', async () => {
    const kv = new CountingKv();
    const d = decisionsOn(kv);
    await d.sync();
    d.dropAll();
    await d.sync();
    expect(kv.reads).toBe(2);
    await kv.close();
  });

  it('fails closed at once when the KV store goes down, even within the max age', async () => {
    const kv = new CountingKv();
    const d = decisionsOn(kv);
    await d.sync();
    kv.down = true;
    await expect(d.sync()).rejects.toMatchObject({ code: 'ERR_UNAVAILABLE' });
    await kv.close();
  });

  it('drops cached permissions when another replica moved the epoch', async () => {
    const kv = new CountingKv();
    kv.subscribed = false;
    const d = decisionsOn(kv);
    await d.sync();
    const before = (d as unknown as { generation: number }).generation;
    await kv.increment(EPOCH_KEY, 60_000);
    await d.sync();
    expect((d as unknown as { generation: number }).generation).toBe(before + 1);
    await kv.close();
  });
});
