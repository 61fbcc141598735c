/**
 * The `glucoguard` command on data directories and keys it is given wrongly, as an operator runs it
 * (the built bin): a mistyped directory is refused and left uncreated, a command given wrongly exits
 * 2, what GlucoGuard creates is owner-only, the master key's source is named and never doubled, and
 * each configuration problem says what, where and which setting.
 */
import { spawn, spawnSync, type SpawnSyncOptions } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { PACKAGE_ROOT } from '../../src/paths.js';
import { tempDir } from '../support/app.js';

const BIN = path.join(PACKAGE_ROOT, 'bin/glucoguard.js');
const root = tempDir('gg-cli-dir-');
const base: Record<string, string | undefined> = { ...process.env, GLUCOGUARD_AUTH: 'off', LOG_LEVEL: 'warn', PORT: '0', CHAIN_PORT: '0', CHAIN_BLOCK_PERIOD: '0', GLUCOGUARD_HOST: '127.0.0.1' };
delete base.GLUCOGUARD_MASTER_KEY;
delete base.GLUCOGUARD_MASTER_KEY_FILE;

function run(args: string[], env: Record<string, string | undefined>, options: SpawnSyncOptions = {}) {
  const r = spawnSync(process.execPath, [BIN, ...args], { env: { ...base, ...env }, encoding: 'utf8', timeout: 60_000, ...options });
  const stderr = String(r.stderr);
  return { status: r.status, stdout: String(r.stdout), stderr, said: stderr.trim().split('\n').pop() ?? '' };
}

/** Every file and folder under `dir` that its group or others may read, write or enter, with its mode. */
function openToOthers(dir: string): string[] {
  const found: string[] = [];
  const walk = (p: string) => {
    const st = statSync(p);
    if (st.mode & 0o077) found.push(`${path.relative(root, p) || '.'} ${(st.mode & 0o777).toString(8)}`);
    if (st.isDirectory()) for (const name of readdirSync(p)) walk(path.join(p, name));
  };
  walk(dir);
  return found;
}

const newKeyFile = (name: string) => {
  const file = path.join(root, name);
  writeFileSync(file, `${randomBytes(32).toString('base64')}\n`, { mode: 0o600 });
  return file;
};

/** An installation with its key in the data directory (keys/master.key) and one patient. */
const fileKeyed = path.join(root, 'file-keyed');
/** An installation whose key comes from GLUCOGUARD_MASTER_KEY_FILE. */
const configKeyed = path.join(root, 'config-keyed');
let configKey = '';
let patientId = '';

beforeAll(() => {
  // CLI tests run the built dist/ (test/support/global-build.mjs builds it once per run)
  expect(existsSync(BIN)).toBe(true);
  const created = run(['patients', 'create', '--given', 'Ana', '--family', 'Rivera'], { GLUCOGUARD_DATA_DIR: fileKeyed });
  expect(created.status).toBe(0);
  patientId = created.stdout.trim();
  configKey = newKeyFile('config.key');
  expect(run(['patients', 'create', '--given', 'Ben', '--family', 'Okafor'], { GLUCOGUARD_DATA_DIR: configKeyed, GLUCOGUARD_MASTER_KEY_FILE: configKey }).status).toBe(0);
}, 120_000);
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('a data directory with no installation', () => {
  test('keys rotate-master --yes and keys status refuse it (exit 2) and create nothing', () => {
    const missing = path.join(root, 'mistyped');
    for (const args of [['keys', 'rotate-master', '--yes'], ['keys', 'status']]) {
      const r = run(args, { GLUCOGUARD_DATA_DIR: missing });
      expect({ args, status: r.status, said: r.said }).toEqual({ args, status: 2, said: `glucoguard: no GlucoGuard data in ${missing}; set GLUCOGUARD_DATA_DIR` });
      expect(r.stdout).not.toMatch(/rotated/);
      expect(existsSync(missing)).toBe(false);
    }
    const empty = path.join(root, 'empty');
    mkdirSync(empty);
    expect(run(['keys', 'rotate-master', '--yes'], { GLUCOGUARD_DATA_DIR: empty }).status).toBe(2);
    expect(readdirSync(empty)).toEqual([]);
  });
});

describe('a command given wrongly exits 2 and changes nothing', () => {
  test('keys rotate-master: no --yes, --new-key-file with the key file in the data directory, a new key file missing or holding no key', () => {
    const keyFile = path.join(fileKeyed, 'keys', 'master.key');
    const before = readFileSync(keyFile, 'utf8');
    const env = { GLUCOGUARD_DATA_DIR: fileKeyed };
    const cases: [string[], RegExp][] = [
      [['keys', 'rotate-master'], /only the new master key opens this data directory: run again with --yes to confirm$/],
      [['keys', 'rotate-master', '--yes', '--new-key-file', newKeyFile('unwanted.key')], /--new-key-file is for a master key given by GLUCOGUARD_MASTER_KEY or GLUCOGUARD_MASTER_KEY_FILE; .*leave --new-key-file out$/],
      [['keys', 'rotate-master', '--yes', '--resume'], /no master-key rotation of .* to resume$/],
    ];
    for (const [args, said] of cases) {
      const r = run(args, env);
      expect({ args, status: r.status }).toEqual({ args, status: 2 });
      expect(r.said).toMatch(said);
    }
    expect(readFileSync(keyFile, 'utf8')).toBe(before);
    expect(existsSync(path.join(fileKeyed, 'keys', 'rotation.json'))).toBe(false);
  });

  test('keys rotate-master with the key configured: no --new-key-file, a missing one, one that holds no key', () => {
    const env = { GLUCOGUARD_DATA_DIR: configKeyed, GLUCOGUARD_MASTER_KEY_FILE: configKey };
    const notAKey = path.join(root, 'not-a-key.txt');
    writeFileSync(notAKey, 'hello\n');
    const missing = path.join(root, 'no-such.key');
    const cases: [string[], string | RegExp][] = [
      [['keys', 'rotate-master', '--yes'], /^glucoguard: the master key comes from GLUCOGUARD_MASTER_KEY_FILE: give the new key with --new-key-file/],
      [['keys', 'rotate-master', '--yes', '--new-key-file', missing], `glucoguard: --new-key-file: cannot read ${missing}: no such file`],
      [['keys', 'rotate-master', '--yes', '--new-key-file', notAKey], `glucoguard: --new-key-file: ${notAKey} does not hold a base64 32-byte key`],
      [['keys', 'rotate-master', '--yes', '--new-key-file', configKey], 'glucoguard: the new master key is the current one'],
    ];
    for (const [args, said] of cases) {
      const r = run(args, env);
      expect({ args, status: r.status }).toEqual({ args, status: 2 });
      if (typeof said === 'string') expect(r.said).toBe(said);
      else expect(r.said).toMatch(said);
      expect(r.stderr).not.toContain(readFileSync(configKey, 'utf8').trim()); // never the key
    }
    expect(existsSync(path.join(configKeyed, 'keys', 'rotation.json'))).toBe(false);
    expect(run(['keys', 'status'], env).status).toBe(0); // the installation still opens with its key
  });

  test('summary with a --start, --end or --tz it cannot read names the option; ingest with a --tz that is no time zone; patients erase without --yes', () => {
    const env = { GLUCOGUARD_DATA_DIR: fileKeyed };
    const csv = path.join(root, 'readings.csv');
    writeFileSync(csv, 'a,b\n1,2\n');
    const cases: [string[], RegExp][] = [
      [['ingest', csv, '--patient', patientId, '--tz', 'Mars/Olympus_Mons'], /^glucoguard: --tz: "Mars\/Olympus_Mons" is not an IANA time zone$/],
      [['summary', '--patient', 'x', '--start', 'notadate'], /^glucoguard: --start: /],
      [['summary', '--patient', 'x', '--end', '2026-13-40'], /^glucoguard: --end: /],
      [['summary', '--patient', 'x', '--start', '2026-01-10', '--end', '2026-01-01'], /^glucoguard: --end: end must be after start$/],
      [['summary', '--patient', 'x', '--tz', 'Mars/Olympus_Mons'], /^glucoguard: --tz: timeZone must be an IANA time zone/],
      [['summary', '--patient', 'x', '--start', 'notadate', '--json'], /^glucoguard: --start: /],
      [['patients', 'erase', '--patient', 'x'], /cannot be undone: run again with --yes to confirm$/],
    ];
    for (const [args, said] of cases) {
      const r = run(args, env);
      expect({ args, status: r.status }).toEqual({ args, status: 2 });
      expect(r.said).toMatch(said);
    }
  });
});

describe('files GlucoGuard creates under the data directory', () => {
  test('a fresh patients create, then serve, leave no file or folder that group or others can read', async () => {
    const dir = path.join(root, 'fresh', 'data');
    expect(run(['patients', 'create', '--given', 'Cy', '--family', 'Doe'], { GLUCOGUARD_DATA_DIR: dir }).status).toBe(0);
    const child = spawn(process.execPath, [BIN, 'serve'], { env: { ...base, GLUCOGUARD_DATA_DIR: dir, LOG_LEVEL: 'info' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    const port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`serve did not listen: ${out}`)), 30_000);
      child.stdout.on('data', () => {
        const m = /listening on port (\d+)/.exec(out);
        if (m) {
          clearTimeout(timer);
          resolve(Number(m[1]));
        }
      });
    });
    // a bulk export makes exports/, its job folder and jobs.sqlite; a Subscription subscriptions.sqlite
    const kick = await fetch(`http://127.0.0.1:${port}/fhir/$export`, { headers: { accept: 'application/fhir+json', prefer: 'respond-async' } });
    expect(kick.status).toBe(202);
    const status = `http://127.0.0.1:${port}${new URL(kick.headers.get('content-location')!).pathname}`;
    for (let i = 0; i < 100 && (await fetch(status)).status === 202; i++) await new Promise((r) => setTimeout(r, 100));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(existsSync(path.join(dir, 'exports', 'jobs.sqlite'))).toBe(true);
    expect(existsSync(path.join(dir, 'exports', 'subscriptions.sqlite'))).toBe(true);
    expect(existsSync(path.join(dir, 'web'))).toBe(true);
    expect(openToOthers(path.join(root, 'fresh'))).toEqual([]);
  }, 90_000);
});

describe('the master key', () => {
  test('GLUCOGUARD_MASTER_KEY and GLUCOGUARD_MASTER_KEY_FILE together are refused (exit 2), naming both', () => {
    const r = run(['keys', 'status'], { GLUCOGUARD_DATA_DIR: configKeyed, GLUCOGUARD_MASTER_KEY_FILE: configKey, GLUCOGUARD_MASTER_KEY: readFileSync(configKey, 'utf8').trim() });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/GLUCOGUARD_MASTER_KEY and GLUCOGUARD_MASTER_KEY_FILE are both set: give the master key one way only/);
  });

  test('start-up and keys status name GLUCOGUARD_MASTER_KEY_FILE and its file; a key file left in the data directory is warned about', async () => {
    const env = { GLUCOGUARD_DATA_DIR: configKeyed, GLUCOGUARD_MASTER_KEY_FILE: configKey };
    const status = run(['keys', 'status'], env);
    expect(status.status).toBe(0);
    expect(status.stdout).toMatch(new RegExp(`^master key: GLUCOGUARD_MASTER_KEY_FILE=${configKey} \\(fingerprint [0-9a-f]{16}\\)$`, 'm'));
    expect(status.stderr).not.toMatch(/still in the data directory/);
    const leftover = path.join(configKeyed, 'keys', 'master.key');
    copyFileSync(configKey, leftover);
    try {
      const child = spawn(process.execPath, [BIN, 'serve'], { env: { ...base, ...env, LOG_LEVEL: 'info' }, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
      const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`serve did not listen: ${out}`)), 30_000);
        child.stdout.on('data', () => {
          if (/listening on port/.test(out)) {
            clearTimeout(timer);
            resolve();
          }
        });
      });
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(out).toContain(`master key: file (GLUCOGUARD_MASTER_KEY_FILE) (${configKey})`);
      expect(out).not.toMatch(/master key: env/);
      expect(out).toContain(`${leftover} is still in the data directory although the master key comes from GLUCOGUARD_MASTER_KEY_FILE`);
      expect(out).toMatch(/Moving the master key out of the data directory/);
      expect(out).not.toContain(readFileSync(configKey, 'utf8').trim());
      // commands warn too (on stderr: stdout carries their result)
      expect(run(['keys', 'status'], env).stdout).toMatch(/GLUCOGUARD_MASTER_KEY_FILE=/);
      expect(run(['audit', '--patient', 'x'], env).stderr).toContain(`${leftover} is still in the data directory`);
    } finally {
      rmSync(leftover, { force: true });
    }
  }, 60_000);
});

describe('configuration problems say what, where and which setting (exit 2)', () => {
  // Permission checks do not bind root: as root, the command runs as nobody (uid 65534) instead.
  const asOther: SpawnSyncOptions = process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : {};

  test('a data directory that may not be written, and a new one under a folder that may not be written', () => {
    const shut = path.join(root, 'shut');
    mkdirSync(shut);
    chmodSync(root, 0o755); // reachable for the other user
    expect(run(['patients', 'create', '--given', 'A', '--family', 'B'], { GLUCOGUARD_DATA_DIR: path.join(shut, 'data') }).status).toBe(0);
    const data = path.join(shut, 'data');
    chmodSync(data, 0o500);
    chmodSync(shut, 0o555);
    try {
      const existing = run(['audit', '--patient', 'x'], { GLUCOGUARD_DATA_DIR: data }, asOther);
      expect(existing.status).toBe(2);
      expect(existing.said).toMatch(new RegExp(`^  - GLUCOGUARD_DATA_DIR: permission denied: this user \\(uid \\d+\\) may not read and write ${data}$`));
      const fresh = path.join(shut, 'new', 'deeper');
      const made = run(['patients', 'create', '--given', 'A', '--family', 'B'], { GLUCOGUARD_DATA_DIR: fresh }, asOther);
      expect(made.status).toBe(2);
      expect(made.said).toMatch(new RegExp(`^  - GLUCOGUARD_DATA_DIR: cannot create ${fresh}: permission denied: this user \\(uid \\d+\\) may not write ${shut}$`));
      expect(existsSync(path.join(shut, 'new'))).toBe(false);
    } finally {
      chmodSync(shut, 0o700);
      chmodSync(data, 0o700);
      chmodSync(root, 0o700);
    }
  }, 60_000);

  test('a key file that is missing and one that may not be read are told apart', () => {
    chmodSync(root, 0o755);
    const locked = path.join(root, 'locked.key');
    writeFileSync(locked, `${randomBytes(32).toString('base64')}\n`, { mode: 0o000 });
    try {
      const missing = path.join(root, 'gone.key');
      const a = run(['keys', 'status'], { GLUCOGUARD_DATA_DIR: configKeyed, GLUCOGUARD_MASTER_KEY_FILE: missing });
      expect(a.status).toBe(2);
      expect(a.said).toBe(`  - GLUCOGUARD_MASTER_KEY_FILE: cannot read ${missing}: no such file`);
      const b = run(['keys', 'status'], { GLUCOGUARD_DATA_DIR: configKeyed, GLUCOGUARD_MASTER_KEY_FILE: locked }, asOther);
      expect(b.status).toBe(2);
      expect(b.said).toMatch(new RegExp(`^  - GLUCOGUARD_MASTER_KEY_FILE: cannot read ${locked}: permission denied \\(glucoguard runs as uid \\d+\\)$`));
    } finally {
      chmodSync(root, 0o700);
    }
  });

  test('an embedded chain port another process holds names CHAIN_PORT', async () => {
    const holder = createServer();
    await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
    const taken = (holder.address() as AddressInfo).port;
    try {
      for (const thread of ['worker', 'main']) {
        const r = run(['audit', '--patient', 'x'], { GLUCOGUARD_DATA_DIR: fileKeyed, CHAIN_PORT: String(taken), CHAIN_NODE_THREAD: thread });
        expect({ thread, status: r.status, said: r.said }).toEqual({
          thread, status: 2,
          said: `glucoguard: CHAIN_PORT: port ${taken} on 127.0.0.1 (the embedded chain node's JSON-RPC port) is in use by another process: stop that process, or set CHAIN_PORT to a free port (0 picks one)`,
        });
      }
    } finally {
      holder.close();
    }
  }, 60_000);
});
