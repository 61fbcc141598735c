/**
 * The embedded KV adapter's own promises beyond the port's contract (test/integration/kv-contract.test.ts):
 * what it holds survives a restart, the file holds no key, value or message in clear, a file of
 * another key root is refused, expired rows are swept, and a closed or tampered store fails closed.
 */
import { afterEach, describe, expect, test } from '@jest/globals';
import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { isGlucoGuardError } from '../../../src/errors.js';
import { EmbeddedKeyValueStore } from '../../../src/kv/embedded.js';
import { tempDir } from '../../support/app.js';

const dirs: string[] = [];
const stores: EmbeddedKeyValueStore[] = [];
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function setUp(rootKey = randomBytes(32).toString('base64')) {
  const dir = tempDir('gg-kv-embedded-');
  dirs.push(dir);
  const file = path.join(dir, 'kv', 'kv.sqlite');
  const clock = { t: Date.UTC(2026, 0, 1) };
  const open = (root = rootKey) => {
    const store = new EmbeddedKeyValueStore({ file, rootKey: root, now: () => clock.t, pollMs: 20 });
    stores.push(store);
    return store;
  };
  return { file, clock, open, rootKey };
}

const rows = (file: string, table: 'kv_entry' | 'kv_message'): number => {
  const db = new Database(file, { readonly: true });
  try {
    return (db.prepare(`SELECT COUNT(*) AS n FROM ${table}`).get() as { n: number }).n;
  } finally {
    db.close();
  }
};

describe('EmbeddedKeyValueStore', () => {
  test('describes itself as embedded, at its file', () => {
    const { open, file } = setUp();
    expect(open().description).toEqual({ adapter: 'embedded', location: file });
  });

  test('a revocation, a refresh record, a used-code tombstone and a counter survive a restart; TTLs still run', async () => {
    const { open, clock } = setUp();
    const before = open();
    await before.set('smart:revoked:g1', '1', 90 * 24 * 3600_000);
    await before.set('smart:refresh:abc', '{"gid":"g2"}', 24 * 3600_000);
    expect(await before.setIfAbsent('smart:jti:c:j1', '1', 60_000)).toBe(true);
    await before.increment('consent:epoch', 10 * 365 * 24 * 3600_000);
    await before.set('short', 'x', 1000);
    await before.close();

    const after = open();
    expect(await after.get('smart:revoked:g1')).toBe('1');
    expect(await after.take('smart:refresh:abc')).toBe('{"gid":"g2"}');
    expect(await after.take('smart:refresh:abc')).toBeUndefined();
    expect(await after.setIfAbsent('smart:jti:c:j1', '1', 60_000)).toBe(false);
    expect(await after.increment('consent:epoch', 1000)).toBe(2);
    expect(await after.get('short')).toBe('x');
    clock.t += 1001;
    expect(await after.get('short')).toBeUndefined();
    expect(await after.get('smart:revoked:g1')).toBe('1');
  });

  test('no key, value or published message is in the file in clear (WAL included), before and after close', async () => {
    const { open, file } = setUp();
    const kv = open();
    const secrets = ['LAUNCH-4f9c2d7e81', 'Patient/secret-patient-77', 'consent-message-5d1e', 'smart:authz:pending-9a8b'];
    await kv.set(`smart:launch:${secrets[0]}`, JSON.stringify({ patient: secrets[1] }), 300_000);
    await kv.set(secrets[3]!, 'x');
    await kv.publish('consent:changed', secrets[2]!);
    const onDisk = () => ['', '-wal', '-shm'].map((s) => (existsSync(file + s) ? readFileSync(file + s).toString('latin1') : '')).join('');
    for (const s of [...secrets, 'smart:launch', 'consent:changed']) expect(onDisk()).not.toContain(s);
    await kv.close();
    for (const s of [...secrets, 'smart:launch', 'consent:changed']) expect(onDisk()).not.toContain(s);
  });

  test('a file written under another key root is refused (its entries would all read as absent), and left as it was', async () => {
    const { open } = setUp();
    const first = open();
    await first.set('smart:revoked:g1', '1');
    await first.close();
    let err: unknown;
    try {
      open(randomBytes(32).toString('base64'));
    } catch (e) {
      err = e;
    }
    expect(isGlucoGuardError(err, 'ERR_UNAVAILABLE')).toBe(true);
    expect((err as Error).message).toContain('another key root');
    expect(await open().get('smart:revoked:g1')).toBe('1');
  });

  test('expired rows are invisible at once and deleted by the sweep; live ones and recent messages stay', async () => {
    const { open, file, clock } = setUp();
    const kv = open();
    for (let i = 0; i < 2500; i++) await kv.set(`code:${i}`, 'c', 60_000);
    await kv.set('live', 'v', 3600_000);
    await kv.set('forever', 'v');
    await kv.publish('consent:changed', 'm');
    clock.t += 60_001;
    expect(await kv.get('code:7')).toBeUndefined();
    expect(rows(file, 'kv_entry')).toBe(2502);
    expect(kv.sweep()).toBe(2500);
    expect(rows(file, 'kv_entry')).toBe(2);
    expect(rows(file, 'kv_message')).toBe(1);
    expect(await kv.get('live')).toBe('v');
    clock.t += 10 * 60_000;
    kv.sweep();
    expect(rows(file, 'kv_message')).toBe(0);
    expect(await kv.get('forever')).toBe('v');
  });

  test('a value moved under another key (a tampered file) reads as absent, never as the other key\'s value', async () => {
    const { open, file } = setUp();
    const kv = open();
    await kv.set('smart:refresh:attacker', '{"gid":"mine"}');
    await kv.set('smart:refresh:victim', '{"gid":"victim"}');
    const db = new Database(file);
    const all = db.prepare('SELECT k, v FROM kv_entry').all() as { k: Buffer; v: Buffer }[];
    db.prepare('UPDATE kv_entry SET v = ? WHERE k = ?').run(all[0]!.v, all[1]!.k);
    db.close();
    const values = [await kv.get('smart:refresh:attacker'), await kv.get('smart:refresh:victim')];
    expect(values.filter((v) => v !== undefined)).toHaveLength(1);
  });

  test('after close every call fails closed with ERR_UNAVAILABLE and the subscription is not live', async () => {
    const { open } = setUp();
    const kv = open();
    await kv.subscribe('consent:changed', () => undefined);
    expect(kv.subscriptionLive()).toBe(true);
    await kv.close();
    expect(kv.subscriptionLive()).toBe(false);
    for (const call of [() => kv.get('k'), () => kv.set('k', 'v'), () => kv.setIfAbsent('k', 'v', 1), () => kv.take('k'), () => kv.delete('k'),
      () => kv.increment('k', 1), () => kv.publish('c', 'm'), () => kv.subscribe('c', () => undefined)]) {
      const err = await call().then(() => 'resolved', (e: unknown) => e);
      expect(isGlucoGuardError(err, 'ERR_UNAVAILABLE')).toBe(true);
    }
    await kv.close(); // twice is no error
  });

  test('a message published before a handle opened is not delivered to it (only what comes after)', async () => {
    const { open } = setUp();
    const a = open();
    await a.publish('consent:changed', 'old');
    const b = open();
    const heard: string[] = [];
    await b.subscribe('consent:changed', (m) => heard.push(m));
    await a.publish('consent:changed', 'new');
    for (let i = 0; i < 100 && heard.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(heard).toEqual(['new']);
  });
});
