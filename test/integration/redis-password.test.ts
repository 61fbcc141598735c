/**
 * Redis with a password, as docker/compose.yaml runs it (`--requirepass`, the proxies given
 * REDIS_PASSWORD_FILE): a password with URL-special characters reaches Redis intact, a wrong one is
 * a clear "unreachable" error, and no message repeats the password. Our own redis-server on a free
 * port; skipped without the binary.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ConfigError, loadConfig } from '../../src/config.js';
import { RedisKeyValueStore } from '../../src/kv/redis.js';
import { tempDir } from '../support/app.js';
import { freePort, HAS_REDIS_SERVER, startRedis, type Proc } from '../support/process.js';

if (!HAS_REDIS_SERVER) console.warn('SKIPPED redis-password test: no redis-server binary on PATH (apt-get install redis-server).');

const PASSWORD = 'p/a+s=s@w:o#r%d?&x y';

(HAS_REDIS_SERVER ? describe : describe.skip)('REDIS_PASSWORD_FILE against a redis-server with requirepass', () => {
  let redis: Proc;
  let port: number;
  let dir: string;
  beforeAll(async () => {
    port = await freePort();
    redis = await startRedis(port, 10_000, ['--requirepass', PASSWORD]);
    dir = tempDir('gg-redis-password-');
  });
  afterAll(async () => {
    await redis?.kill9();
    rmSync(dir, { recursive: true, force: true });
  });

  const configWith = (password: string, url = `redis://127.0.0.1:${port}`) => {
    const file = path.join(dir, `pw-${Math.random().toString(36).slice(2)}`);
    writeFileSync(file, `${password}\n`, { mode: 0o600 });
    return () => loadConfig({ REDIS_URL: url, REDIS_PASSWORD_FILE: file, GLUCOGUARD_DATA_DIR: path.join(dir, 'data') });
  };

  test('a password with URL-special characters authenticates; the start-up location hides it', async () => {
    const kv = await RedisKeyValueStore.connect(configWith(PASSWORD)().redisUrl!);
    try {
      await kv.set('gg-test:password', 'works');
      expect(await kv.get('gg-test:password')).toBe('works');
      expect(kv.description.location).not.toContain('s=s');
      expect(kv.description.location).not.toContain(encodeURIComponent(PASSWORD).slice(0, 8));
    } finally {
      await kv.close();
    }
  });

  test('a wrong password is a clear error that does not repeat it', async () => {
    const err = await RedisKeyValueStore.connect(configWith('wrong-Secret-42')().redisUrl!, { connectTimeoutMs: 3000 }).then(
      async (kv) => { await kv.close(); return undefined; }, (e: unknown) => e as Error);
    expect(err).toBeDefined();
    expect(`${err!.message} ${JSON.stringify(err)}`).toMatch(/unreachable|WRONGPASS|NOAUTH/i);
    expect(`${err!.message} ${JSON.stringify(err)}`).not.toContain('wrong-Secret-42');
  });

  test('a REDIS_URL that is not redis:// is refused without repeating a password in it', () => {
    const problemsOf = (env: Record<string, string>): string[] => {
      try {
        loadConfig({ ...env, GLUCOGUARD_DATA_DIR: path.join(dir, 'data') });
        return [];
      } catch (err) {
        return (err as ConfigError).problems;
      }
    };
    const problems = problemsOf({ REDIS_URL: 'reddis://:Secret-In-Url@127.0.0.1:6379' }).join('\n');
    expect(problems).toMatch(/REDIS_URL must start with redis:\/\/ or rediss:\/\//);
    expect(problems).not.toContain('Secret-In-Url');
  });
});
