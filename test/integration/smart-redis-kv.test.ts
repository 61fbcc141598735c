/**
 * RedisKeyValueStore against a real redis-server: REDIS_TEST_URL, or one answering at
 * 127.0.0.1:6379. Without one the suite is skipped with a message (install: `apt-get install -y
 * redis-server`, run: `redis-server --daemonize yes --bind 127.0.0.1`).
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { isGlucoGuardError } from '../../src/errors.js';
import { RedisKeyValueStore } from '../../src/kv/redis.js';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { portAnswers, testRedisUrl } from '../support/process.js';
import { startHarness } from '../support/smart-harness.js';

const REDIS_URL = await testRedisUrl();
if (!REDIS_URL) {
  console.warn('SKIPPED smart-redis-kv tests: no Redis (set REDIS_TEST_URL or run `redis-server --daemonize yes --bind 127.0.0.1`).');
}
const HAS_REDIS_BINARY = spawnSync('redis-server', ['--version']).status === 0;
const describeRedis = REDIS_URL ? describe : describe.skip;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describeRedis('RedisKeyValueStore (real redis-server)', () => {
  let a: RedisKeyValueStore;
  let b: RedisKeyValueStore;
  const prefix = `gg-test-${randomBytes(4).toString('hex')}:`;

  beforeAll(async () => {
    a = await RedisKeyValueStore.connect(REDIS_URL!, { prefix });
    b = await RedisKeyValueStore.connect(REDIS_URL!, { prefix });
  });
  afterAll(async () => {
    await a?.close();
    await b?.close();
  });

  test('describes itself without the password', () => {
    expect(a.description.adapter).toBe('redis');
    expect(a.description.location).not.toMatch(/:[^/@]+@/);
  });

  test('set/get across replicas, and values expire after their TTL', async () => {
    await a.set('k1', 'v1');
    expect(await b.get('k1')).toBe('v1');
    await a.set('short', 'x', 50);
    expect(await b.get('short')).toBe('x');
    await sleep(120);
    expect(await b.get('short')).toBeUndefined();
    await b.delete('k1');
    expect(await a.get('k1')).toBeUndefined();
  });

  test('setIfAbsent succeeds once (jti replay cache)', async () => {
    expect(await a.setIfAbsent('jti:1', '1', 10_000)).toBe(true);
    expect(await b.setIfAbsent('jti:1', '1', 10_000)).toBe(false);
  });

  test('take is atomic: of concurrent takes only one gets the code', async () => {
    await a.set('code:1', 'payload', 10_000);
    const results = await Promise.all([a.take('code:1'), b.take('code:1'), a.take('code:1'), b.take('code:1')]);
    expect(results.filter((r) => r === 'payload')).toHaveLength(1);
    expect(await a.get('code:1')).toBeUndefined();
  });

  test('increment counts across replicas and the window expires', async () => {
    // a window long enough that a loaded machine cannot let it lapse between two calls (a 100 ms
    // window once did, in a full run sharing the 2 cores with another jest run)
    expect(await a.increment('rl', 5_000)).toBe(1);
    expect(await b.increment('rl', 5_000)).toBe(2);
    // expiry: slowness here only makes the window more surely over
    expect(await a.increment('rl-short', 100)).toBe(1);
    await sleep(250);
    expect(await b.increment('rl-short', 100)).toBe(1);
  });

  test('publish reaches a subscriber on another replica; unsubscribe stops it', async () => {
    const received: string[] = [];
    const unsubscribe = await b.subscribe('revocations', (m) => received.push(m));
    await a.publish('revocations', 'grant-1');
    for (let i = 0; i < 50 && received.length === 0; i++) await sleep(10);
    expect(received).toEqual(['grant-1']);
    await unsubscribe();
    await a.publish('revocations', 'grant-2');
    await sleep(50);
    expect(received).toEqual(['grant-1']);
  });
});

describe('RedisKeyValueStore fails closed', () => {
  test('connecting to nothing is ERR_UNAVAILABLE', async () => {
    const err = await RedisKeyValueStore.connect('redis://127.0.0.1:1', { connectTimeoutMs: 1000 }).catch((e: unknown) => e);
    expect(isGlucoGuardError(err, 'ERR_UNAVAILABLE')).toBe(true);
  });

  (HAS_REDIS_BINARY ? test : test.skip)('when Redis goes away every call throws ERR_UNAVAILABLE, and works again when it is back', async () => {
    let port = 0;
    // A redis-server on a random port (another one if that port is taken: the server exits at once;
    // the restart below keeps the port), up to 10 s for it to answer (the suite shares two cores).
    const start = async (samePort = false): Promise<ChildProcess> => {
      for (let attempt = 0; attempt < 5; attempt++) {
        if (!samePort) port = 20000 + Math.floor(Math.random() * 20000);
        const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
        let exited = false;
        child.once('exit', () => { exited = true; });
        for (let i = 0; i < 500 && !exited; i++) {
          if ((await portAnswers(port)) && !exited) return child;
          await sleep(20);
        }
        child.kill('SIGKILL');
      }
      throw new Error(`redis-server did not start (last port ${port})`);
    };
    let server = await start();
    const store = await RedisKeyValueStore.connect(`redis://127.0.0.1:${port}`);
    try {
      await store.set('k', 'v');
      // pub/sub is only relied on while both connections are up (consent reads the epoch otherwise)
      expect(store.subscriptionLive()).toBe(false);
      await store.subscribe('consent:changed', () => undefined);
      expect(store.subscriptionLive()).toBe(true);
      server.kill('SIGKILL');
      await new Promise((r) => server.once('exit', r));
      await sleep(50);
      expect(store.subscriptionLive()).toBe(false);
      for (const call of [() => store.get('k'), () => store.setIfAbsent('j', '1', 1000), () => store.take('k'), () => store.increment('c', 1000)]) {
        const err = await call().then(() => 'resolved', (e: unknown) => e);
        expect(isGlucoGuardError(err, 'ERR_UNAVAILABLE')).toBe(true);
      }
      server = await start(true);
      let back = false;
      for (let i = 0; i < 100 && !back; i++) {
        back = await store.set('k2', 'v2').then(() => true, () => false);
        if (!back) await sleep(50);
      }
      expect(back).toBe(true);
      for (let i = 0; i < 100 && !store.subscriptionLive(); i++) await sleep(50);
      expect(store.subscriptionLive()).toBe(true);
    } finally {
      await store.close();
      server.kill('SIGKILL');
    }
  });
});

(HAS_REDIS_BINARY ? describe : describe.skip)('SMART over Redis', () => {
  test('a system token works, revocation is refused, and a Redis outage denies with 503 (never allows)', async () => {
    const port = 20000 + Math.floor(Math.random() * 20000);
    const server = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
    for (let i = 0; i < 100 && !(await portAnswers(port)); i++) await sleep(20);
    const kv = await RedisKeyValueStore.connect(`redis://127.0.0.1:${port}`);
    const h = await startHarness({ kv });
    try {
      const { publicKey, privateKey } = await generateKeyPair('RS384');
      const { client } = h.smart.store.addClient({ name: 'b', type: 'confidential-asymmetric',
        jwks: { keys: [{ ...(await exportJWK(publicKey)), kid: 'k1', alg: 'RS384' }] }, scopes: ['system/*.rs'] });
      const token = async () => {
        const now = Math.floor(h.now() / 1000);
        const assertion = await new SignJWT({}).setProtectedHeader({ alg: 'RS384', kid: 'k1' }).setIssuer(client.clientId)
          .setSubject(client.clientId).setAudience(h.smart.urls.token).setJti(randomBytes(8).toString('hex')).setExpirationTime(now + 60).sign(privateKey);
        const res = await fetch(h.smart.urls.token, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' },
          body: new URLSearchParams({ grant_type: 'client_credentials', scope: 'system/*.rs', client_assertion: assertion,
            client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer' }) });
        return ((await res.json()) as { access_token: string }).access_token;
      };
      const read = (t: string) => fetch(`${h.fhirBase}/Patient/p1`, { headers: { authorization: `Bearer ${t}` } });
      const t1 = await token();
      const t2 = await token();
      expect((await read(t1)).status).toBe(200);
      const basic = { 'content-type': 'application/x-www-form-urlencoded' };
      const now = Math.floor(h.now() / 1000);
      const revokeAssertion = await new SignJWT({}).setProtectedHeader({ alg: 'RS384', kid: 'k1' }).setIssuer(client.clientId)
        .setSubject(client.clientId).setAudience(h.smart.urls.token).setJti('revoke-1').setExpirationTime(now + 60).sign(privateKey);
      await fetch(h.smart.urls.revoke, { method: 'POST', headers: basic, body: new URLSearchParams({ token: t1, client_assertion: revokeAssertion,
        client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer' }) });
      expect((await read(t1)).status).toBe(401);
      expect((await read(t2)).status).toBe(200);
      server.kill('SIGKILL');
      await new Promise((r) => server.once('exit', r));
      await sleep(50);
      expect((await read(t2)).status).toBe(503);
    } finally {
      server.kill('SIGKILL');
      await h.close();
      await kv.close();
    }
  });
});
