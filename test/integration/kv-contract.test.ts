/**
 * The KeyValueStore contract (test/support/kv-contract.ts) against each adapter: process memory,
 * the SQLite file in the data directory (two handles on one file, as `serve` and a CLI command have),
 * and Redis when one answers (REDIS_TEST_URL, or 127.0.0.1:6379; skipped with a message otherwise).
 */
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { EmbeddedKeyValueStore } from '../../src/kv/embedded.js';
import { MemoryKeyValueStore } from '../../src/kv/memory.js';
import { RedisKeyValueStore } from '../../src/kv/redis.js';
import { tempDir } from '../support/app.js';
import { describeKvContract } from '../support/kv-contract.js';
import { testRedisUrl } from '../support/process.js';

describeKvContract('memory', async () => {
  const clock = { t: Date.UTC(2026, 0, 1) };
  const kv = new MemoryKeyValueStore(() => clock.t);
  return { a: kv, b: kv, advance: async (ms) => { clock.t += ms; }, close: () => kv.close() };
});

describeKvContract('embedded (SQLite, two handles on one file)', async () => {
  const dir = tempDir('gg-kv-contract-');
  const clock = { t: Date.UTC(2026, 0, 1) };
  const rootKey = randomBytes(32).toString('base64');
  const open = () => new EmbeddedKeyValueStore({ file: path.join(dir, 'kv', 'kv.sqlite'), rootKey, now: () => clock.t, pollMs: 20 });
  const a = open();
  const b = open();
  return {
    a, b, advance: async (ms) => { clock.t += ms; },
    close: async () => {
      await a.close();
      await b.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
});

const REDIS_URL = await testRedisUrl();
if (REDIS_URL) {
  describeKvContract('redis (two connections)', async () => {
    const prefix = `gg-kv-contract-${randomBytes(4).toString('hex')}:`;
    const a = await RedisKeyValueStore.connect(REDIS_URL, { prefix });
    const b = await RedisKeyValueStore.connect(REDIS_URL, { prefix });
    return { a, b, advance: (ms) => new Promise((r) => setTimeout(r, ms)), close: async () => { await a.close(); await b.close(); } };
  });
} else {
  console.warn('SKIPPED the Redis run of the KV contract: no Redis (set REDIS_TEST_URL or run `redis-server --daemonize yes --bind 127.0.0.1`).');
}
