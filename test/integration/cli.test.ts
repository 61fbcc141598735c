/**
 * The `glucoguard` command as an operator runs it: the built bin (npm test builds first via pretest).
 */
import { spawn, spawnSync } from 'node:child_process';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { PACKAGE_ROOT } from '../../src/paths.js';
import { tempDir } from '../support/app.js';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import Database from 'better-sqlite3';
import { INDEX_GENERATION } from '../../src/repository/embedded/params.js';

const BIN = path.join(PACKAGE_ROOT, 'bin/glucoguard.js');
const dataDir = tempDir('gg-cli-');
const env = { ...process.env, GLUCOGUARD_DATA_DIR: dataDir, GLUCOGUARD_AUTH: 'off', LOG_LEVEL: 'info', PORT: '0', CHAIN_PORT: '0', CHAIN_BLOCK_PERIOD: '0', GLUCOGUARD_HOST: '127.0.0.1' };

beforeAll(() => {
  // The CLI runs the compiled dist/ exactly as `npm start` does; build it (incremental) first.
  const build = spawnSync(process.execPath, [path.join(PACKAGE_ROOT, 'scripts/build.mjs')], { cwd: PACKAGE_ROOT, encoding: 'utf8' });
  if (build.status !== 0) throw new Error(`npm run build failed:\n${build.stdout}\n${build.stderr}`);
}, 180_000);
afterAll(() => rmSync(dataDir, { recursive: true, force: true }));

/** `glucoguard serve` as a child process: its stdout so far, a wait for a line matching `pattern`, and a SIGTERM that answers the exit code. */
function serve(extraEnv: Record<string, string> = {}) {
  const child = spawn(process.execPath, [BIN, 'serve'], { env: { ...env, ...extraEnv }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return {
    out: () => out,
    waitFor: (pattern: RegExp, ms = 20_000) => new Promise<RegExpExecArray>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no line matching ${pattern} within ${ms} ms: ${out}`)), ms);
      const check = () => {
        const m = pattern.exec(out);
        if (m) {
          clearTimeout(timer);
          resolve(m);
        }
      };
      child.stdout.on('data', check);
      check();
    }),
    stop: () => {
      child.kill('SIGTERM');
      return exited;
    },
  };
}

describe('glucoguard CLI', () => {
  let patientId = '';

  test('patients create prints the new id', () => {
    const r = spawnSync(process.execPath, [BIN, 'patients', 'create', '--given', 'Ana', '--family', 'Rivera', '--birth-date', '1950-04-02'], { env, encoding: 'utf8' });
    expect(r.status).toBe(0);
    expect(r.stderr).not.toMatch(/glucoguard: /); // warnings about local settings only, no error
    patientId = r.stdout.trim();
    expect(patientId).toMatch(/^[A-Za-z0-9\-.]{1,64}$/);
  });

  test('patients find answers id, name and birth date by name part, birth date or identifier; without criteria it refuses (exit 2)', () => {
    const find = (...args: string[]) => spawnSync(process.execPath, [BIN, 'patients', 'find', ...args], { env: { ...env, LOG_LEVEL: 'warn' }, encoding: 'utf8' });
    const byName = find('--name', 'rive');
    expect(byName.status).toBe(0);
    expect(byName.stdout.trim().split('\n')).toEqual([`${patientId}  Ana Rivera  1950-04-02`]);
    expect(find('--birth-date', '1950-04-02', '--name', 'ana').stdout).toContain(`${patientId}  Ana Rivera`);
    expect(find('--birth-date', '1950-04-03').stdout.trim()).toBe('no patient matches');
    const none = find();
    expect(none.status).toBe(2);
    expect(none.stderr).toMatch(/give --name, --birth-date or --identifier/);
    expect(find('--name', 'a', '--limit', '0').status).toBe(2);
  });

  test('patients create refuses a malformed birth date with a clear message and exit code', () => {
    const r = spawnSync(process.execPath, [BIN, 'patients', 'create', '--given', 'A', '--family', 'B', '--birth-date', '02/04/1950'], { env, encoding: 'utf8' });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/YYYY-MM-DD/);
  });

  test('a file the operator names that cannot be read is reported as such, not as a raw errno', () => {
    const missing = path.join(dataDir, 'no-such-password.txt');
    const r = spawnSync(process.execPath, [BIN, 'users', 'add', '--username', 'ana', '--password-file', missing, '--fhir-user', 'Patient/x'], { env, encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split('\n').pop()).toBe(`glucoguard: ${missing}: no such file or directory`);
    const dir = spawnSync(process.execPath, [BIN, 'users', 'add', '--username', 'ana', '--password-file', dataDir, '--fhir-user', 'Patient/x'], { env, encoding: 'utf8' });
    expect(dir.stderr.trim().split('\n').pop()).toBe('glucoguard: a path given as a file is a directory');
  });

  test('a bad configuration stops start-up with one message per problem', () => {
    const fresh = tempDir('gg-cli-badconfig-');
    rmSync(fresh, { recursive: true, force: true });
    const r = spawnSync(process.execPath, [BIN, 'serve'], { env: { ...env, GLUCOGUARD_DATA_DIR: fresh, PORT: 'x', GLUCOGUARD_AUTH: 'maybe', GLUCOGUARD_INTEGRITY: 'paranoid' }, encoding: 'utf8' });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/PORT must be an integer/);
    expect(r.stderr).toMatch(/GLUCOGUARD_AUTH must be one of/);
    expect(r.stderr).toMatch(/GLUCOGUARD_INTEGRITY must be one of/);
    expect(existsSync(fresh)).toBe(false); // refused before anything was created
  });

  // Exit 2 since session 23: a port in use is a configuration error (docs/operations.md, exit codes),
  // as the embedded chain node's CHAIN_PORT already was; this test asserted 1 before.
  test('serve on a port another process holds says so and exits 2 (it never claims to listen)', async () => {
    const holder = createServer();
    await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
    const taken = (holder.address() as AddressInfo).port;
    const fresh = path.join(tempDir('gg-cli-port-'), 'data');
    try {
      const r = spawnSync(process.execPath, [BIN, 'serve'], { env: { ...env, PORT: String(taken) }, encoding: 'utf8', timeout: 60_000 });
      expect(r.status).toBe(2);
      expect(r.stdout + r.stderr).toMatch(new RegExp(`cannot listen on port ${taken}: it is in use by another process`));
      expect(r.stdout).not.toMatch(/listening on port/);
      // on a new data directory: refused before the installation is set up (nothing is created)
      const first = spawnSync(process.execPath, [BIN, 'serve'], { env: { ...env, PORT: String(taken), GLUCOGUARD_DATA_DIR: fresh }, encoding: 'utf8', timeout: 60_000 });
      expect(first.status).toBe(2);
      expect(first.stderr).toMatch(new RegExp(`cannot listen on port ${taken}: it is in use by another process`));
      expect(existsSync(fresh)).toBe(false);
    } finally {
      holder.close();
    }
  }, 60_000);

  test('serve logs its adapters, serves the patient, and exits 0 on SIGTERM', async () => {
    const server = serve();
    const port = Number((await server.waitFor(/listening on port (\d+)/))[1]);
    expect(server.out()).toMatch(/repository: embedded/);
    expect(server.out()).toMatch(/kv: embedded .*kv\/kv\.sqlite/);
    expect(server.out()).toMatch(/chain: /);
    const res = await fetch(`http://127.0.0.1:${port}/fhir/Patient/${patientId}`);
    expect(res.status).toBe(200);
    expect(((await res.json()) as { name: { family: string }[] }).name[0]!.family).toBe('Rivera');
    // erasure beside a running server (which holds data keys in memory) is refused
    const erase = spawnSync(process.execPath, [BIN, 'patients', 'erase', '--patient', patientId, '--yes'], { env, encoding: 'utf8' });
    expect(erase.status).not.toBe(0);
    expect(erase.stderr).toMatch(/another GlucoGuard process is using this data directory \(.*: a server, or an import writing through it\): stop it or let it finish first, then erase/);
    // so is a master-key rotation (the server would go on writing data keys under the old key)
    const rotate = spawnSync(process.execPath, [BIN, 'keys', 'rotate-master', '--yes'], { env, encoding: 'utf8' });
    expect(rotate.status).not.toBe(0);
    expect(rotate.stderr).toMatch(/another GlucoGuard process is using this data directory .*then rotate/);
    expect(existsSync(path.join(dataDir, 'keys', 'rotation.json'))).toBe(false);
    expect((await fetch(`http://127.0.0.1:${port}/fhir/Patient/${patientId}`)).status).toBe(200);
    expect(await server.stop()).toBe(0);
    expect(server.out()).toMatch(/stopped cleanly/);
    expect(server.out()).not.toMatch(/Rivera/);
  });

  test('launch create beside a running server makes the launch for the FHIR base that server serves, whatever the command\'s own settings', async () => {
    const server = serve({ GLUCOGUARD_BASE_URL: 'https://glucoguard.example' });
    try {
      const port = Number((await server.waitFor(/listening on port (\d+)/))[1]);
      const practitioner = await fetch(`http://127.0.0.1:${port}/fhir/Practitioner`, { method: 'POST', headers: { 'content-type': 'application/fhir+json' },
        body: JSON.stringify({ resourceType: 'Practitioner', name: [{ family: 'Osei' }] }) });
      expect(practitioner.status).toBe(201);
      const doc = ((await practitioner.json()) as { id: string }).id;
      const client = spawnSync(process.execPath, [BIN, 'clients', 'add', '--name', 'Viewer', '--public', '--redirect-uri', 'https://app.example/cb', '--launch-uri', 'https://app.example/launch'], { env, encoding: 'utf8' });
      expect(client.status).toBe(0);
      const clientId = /client_id: (\S+)/.exec(client.stdout)![1]!;
      // this command's settings name no base URL (and PORT 0): on its own it would write http://localhost:0/fhir
      const launch = spawnSync(process.execPath, [BIN, 'launch', 'create', '--patient', patientId, '--practitioner', doc, '--client-id', clientId], { env, encoding: 'utf8' });
      expect(launch.status).toBe(0);
      const url = new URL(/launch_url: (\S+)/.exec(launch.stdout)![1]!);
      expect(url.searchParams.get('iss')).toBe('https://glucoguard.example/fhir');
      expect(launch.stderr).toContain('the launch is for the server that shares this store, whose FHIR base is https://glucoguard.example/fhir (this command\'s settings give http://localhost:0/fhir)');
    } finally {
      expect(await server.stop()).toBe(0);
    }
  });

  test('patients erase wants --yes, then destroys the patient\'s data key and commitment salts', () => {
    const unconfirmed = spawnSync(process.execPath, [BIN, 'patients', 'erase', '--patient', patientId], { env, encoding: 'utf8' });
    expect(unconfirmed.status).toBe(2); // given wrongly: the confirmation is missing
    expect(unconfirmed.stderr).toMatch(/cannot be undone: run again with --yes/);
    const r = spawnSync(process.execPath, [BIN, 'patients', 'erase', '--patient', patientId, '--yes'], { env, encoding: 'utf8' });
    expect(r.stderr).not.toMatch(/glucoguard: /);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^Patient/${patientId}: data key destroyed, [1-9]\\d* current resources unreadable; salts of [1-9]\\d* commitments overwritten; recorded as AuditEvent/[\\w-]+`));
    // the patient's access log names the erasure and who ran it
    const log = spawnSync(process.execPath, [BIN, 'audit', '--patient', patientId], { env, encoding: 'utf8' });
    expect(log.status).toBe(0);
    expect(log.stdout).toMatch(/\(glucoguard CLI\)\s+destroy\s+permitted\s+\[erasure: data key destroyed/);
    const db = new Database(path.join(dataDir, 'ledger', 'commitments.db'), { readonly: true });
    try {
      const salt = db.prepare("SELECT salt FROM commitments WHERE type = 'Patient' AND id = ?").pluck().get(patientId) as Buffer;
      expect(salt.equals(Buffer.alloc(32))).toBe(true);
    } finally {
      db.close();
    }
  });

  test('patients erase refuses an id never stored; a repeat says "already erased", changes nothing and keeps the erasure\'s record', () => {
    const typo = spawnSync(process.execPath, [BIN, 'patients', 'erase', '--patient', 'nonexistent', '--yes'], { env, encoding: 'utf8' });
    expect(typo.status).toBe(1);
    expect(typo.stderr.trim().split('\n').pop()).toBe('glucoguard: Patient/nonexistent not found');
    expect(typo.stdout).not.toMatch(/destroyed/);
    const before = spawnSync(process.execPath, [BIN, 'audit', '--patient', patientId], { env, encoding: 'utf8' }).stdout;
    const again = spawnSync(process.execPath, [BIN, 'patients', 'erase', '--patient', patientId, '--yes'], { env, encoding: 'utf8' });
    expect(again.status).toBe(0);
    expect(again.stdout).toMatch(new RegExp(`^Patient/${patientId}: already erased \\(on \\d{4}-\\d{2}-\\d{2}T[\\d:.]+Z\\); nothing changed$`, 'm'));
    const after = spawnSync(process.execPath, [BIN, 'audit', '--patient', patientId], { env, encoding: 'utf8' }).stdout;
    expect(after).toBe(before);
    expect(after).toMatch(/destroy\s+permitted\s+\[erasure: data key destroyed/);
  });

  test('commands that only read refuse a data directory with no installation (exit 2) and create nothing', () => {
    const missing = path.join(dataDir, 'mistyped');
    for (const args of [['summary', '--patient', 'x'], ['audit', '--patient', 'x'], ['consent', 'list', '--patient', 'x'], ['clients', 'list'], ['export']]) {
      const r = spawnSync(process.execPath, [BIN, ...args], { env: { ...env, GLUCOGUARD_DATA_DIR: missing }, encoding: 'utf8' });
      expect({ args, status: r.status, said: r.stderr.trim().split('\n').pop() })
        .toEqual({ args, status: 2, said: `glucoguard: no GlucoGuard data in ${missing}; set GLUCOGUARD_DATA_DIR` });
      expect(existsSync(missing)).toBe(false);
    }
  });

  test('a command given wrongly exits 2 and says which option; a bad --birth-date is named', () => {
    for (const args of [['patients', 'create', '--given', 'X'], ['patients', 'create', '--given', 'X', '--family', 'Y', '--bogus'],
      ['clients', 'add', '--name', 'N', '--public', '--secret'], ['users', 'add', '--username', 'u', '--password-file', 'f', '--fhir-user', 'Banana/1']]) {
      const r = spawnSync(process.execPath, [BIN, ...args], { env, encoding: 'utf8' });
      expect({ args, status: r.status }).toEqual({ args, status: 2 });
    }
    const date = spawnSync(process.execPath, [BIN, 'patients', 'create', '--given', 'X', '--family', 'Y', '--birth-date', '1950-13-45'], { env, encoding: 'utf8' });
    expect(date.status).toBe(2);
    expect(date.stderr).toMatch(/--birth-date .*1950-13-45.* is not a calendar date/);
  });

  test('consent grant with options the consent checks refuse exits 2, says why, and records nothing', () => {
    const made = spawnSync(process.execPath, [BIN, 'patients', 'create', '--given', 'Cora', '--family', 'Grant', '--birth-date', '1960-01-01'], { env, encoding: 'utf8' });
    const patient = made.stdout.trim().split('\n').pop()!;
    const grant = (...extra: string[]) => spawnSync(process.execPath, [BIN, 'consent', 'grant', '--patient', patient, '--data-from', '2026-01-01',
      '--data-to', '2026-01-14', '--until', '2099-01-01', ...extra], { env, encoding: 'utf8' });
    for (const [extra, said] of [
      // base validation now checks a reference's type first (session 25), so this is its message
      [['--to', 'Banana/1'], /provision\.actor\[0\]\.reference\.reference names "Banana", which is not a FHIR resource type/],
      [['--to', 'Practitioner/nobody'], /Practitioner\/nobody has no registered identity/],
      [['--to', 'Practitioner/nobody', '--purpose', 'FOO'], /Unsupported purpose .*FOO/],
    ] as const) {
      const r = grant(...extra);
      expect({ extra, status: r.status }).toEqual({ extra, status: 2 });
      expect(r.stderr).toMatch(said);
    }
    const listed = spawnSync(process.execPath, [BIN, 'consent', 'list', '--patient', patient], { env, encoding: 'utf8' });
    expect(listed.status).toBe(0);
    expect(listed.stdout.trim()).toBe('');
  }, 60_000);

  test('reindex rebuilds the search index of a store recorded at an older index generation, skipping the erased patient', () => {
    const db = new Database(path.join(dataDir, 'store', 'glucoguard.db'));
    try {
      db.prepare("UPDATE meta SET v = '1' WHERE k = 'index-generation'").run();
    } finally {
      db.close();
    }
    const r = spawnSync(process.execPath, [BIN, 'reindex'], { env: { ...env, LOG_LEVEL: 'warn' }, encoding: 'utf8' });
    expect(r.stderr).not.toMatch(/glucoguard: /);
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/matched without their index until the index is rebuilt/);
    expect(r.stderr).toMatch(/reindex: \d+ of \d+ current versions/);
    expect(r.stdout).toMatch(new RegExp(`^reindexed [1-9]\\d* current versions in [\\d.]+ s \\([1-9]\\d* unreadable: their patient's data key was erased\\); index generation ${INDEX_GENERATION}$`, 'm'));
    const again = spawnSync(process.execPath, [BIN, 'reindex'], { env: { ...env, LOG_LEVEL: 'warn' }, encoding: 'utf8' });
    expect(again.status).toBe(0);
    expect(again.stderr).not.toMatch(/matched without their index/);
    expect(again.stderr).not.toMatch(/reindex: \d+ of/);
    expect(again.stdout).toMatch(new RegExp(`^the search index is up to date \\(generation ${INDEX_GENERATION}\\): nothing to rebuild; --all rebuilds every type$`, 'm'));
    const all = spawnSync(process.execPath, [BIN, 'reindex', '--all'], { env: { ...env, LOG_LEVEL: 'warn' }, encoding: 'utf8' });
    expect(all.status).toBe(0);
    expect(all.stdout).toMatch(new RegExp(`^reindexed [1-9]\\d* current versions in [\\d.]+ s .*; index generation ${INDEX_GENERATION}$`, 'm'));
  });

  test('serve rebuilds the index of an older store in the background and records the generation', async () => {
    const store = () => new Database(path.join(dataDir, 'store', 'glucoguard.db'));
    const db = store();
    try {
      db.prepare("UPDATE meta SET v = '1' WHERE k = 'index-generation'").run();
    } finally {
      db.close();
    }
    const server = serve();
    await server.waitFor(new RegExp(`search index rebuilt: \\d+ current versions, index generation ${INDEX_GENERATION}`), 30_000);
    expect(server.out()).toMatch(/rebuilding the search index in the background/);
    expect(await server.stop()).toBe(0);
    const after = store();
    try {
      expect(after.prepare("SELECT v FROM meta WHERE k = 'index-generation'").pluck().get()).toBe(String(INDEX_GENERATION));
    } finally {
      after.close();
    }
    // a store at the current generation starts without rebuilding
    const again = serve();
    await again.waitFor(/listening on port/);
    expect(await again.stop()).toBe(0);
    expect(again.out()).not.toMatch(/rebuilding the search index/);
  });

  test('keys rotate-master wants --yes, then puts the store under a new key file and records it; the server starts on the new key', async () => {
    const keyFile = path.join(dataDir, 'keys', 'master.key');
    const before = readFileSync(keyFile, 'utf8');
    const unconfirmed = spawnSync(process.execPath, [BIN, 'keys', 'rotate-master'], { env, encoding: 'utf8' });
    expect(unconfirmed.status).toBe(2); // given wrongly: the confirmation is missing
    expect(unconfirmed.stderr).toMatch(/only the new master key opens this data directory: run again with --yes/);
    expect(readFileSync(keyFile, 'utf8')).toBe(before);
    const r = spawnSync(process.execPath, [BIN, 'keys', 'rotate-master', '--yes'], { env: { ...env, LOG_LEVEL: 'warn' }, encoding: 'utf8' });
    expect(r.stderr).not.toMatch(/glucoguard: /);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^master key rotated: [1-9]\d* data keys re-wrapped, \d+ erased left as they were; key root sealed in .*root\.sealed$/m);
    expect(r.stdout).toMatch(/^recorded as AuditEvent\/[\w-]+$/m);
    expect(r.stdout).toMatch(/the new key is in .*master\.key: back it up/);
    expect(r.stdout + r.stderr).not.toContain(readFileSync(keyFile, 'utf8').trim()); // the key is never printed
    expect(readFileSync(keyFile, 'utf8')).not.toBe(before);
    const status = spawnSync(process.execPath, [BIN, 'keys', 'status'], { env: { ...env, LOG_LEVEL: 'warn' }, encoding: 'utf8' });
    expect(status.status).toBe(0);
    expect(status.stdout).toMatch(/^master key: .*master\.key \(fingerprint [0-9a-f]{16}\)\nkey root: sealed in .*root\.sealed \(fingerprint [0-9a-f]{16}\)\nkey root check: matches .*root\.check\nrotation: none in progress$/m);
    expect(status.stdout).not.toContain(readFileSync(keyFile, 'utf8').trim());
    const server = serve();
    const port = Number((await server.waitFor(/listening on port (\d+)/))[1]);
    expect(server.out()).toMatch(/master key: file \(.*master\.key; key root sealed in .*root\.sealed\)/);
    const events = await (await fetch(`http://127.0.0.1:${port}/fhir/AuditEvent?subtype=110129`)).json() as { entry?: { resource: { outcomeDesc: string; agent: { who: { display: string } }[] } }[] };
    expect(events.entry).toHaveLength(1);
    expect(events.entry![0]!.resource.outcomeDesc).toMatch(/^master key rotated \(key file in the data directory\)/);
    expect(events.entry![0]!.resource.agent[0]!.who.display).toMatch(/\(glucoguard CLI\)$/);
    expect((await fetch(`http://127.0.0.1:${port}/fhir/Patient/${patientId}`)).status).toBe(410); // still erased
    expect(await server.stop()).toBe(0);
  });
});
