/**
 * Docs walkthrough findings on the `glucoguard` command (the built bin), as docs/operations.md
 * states its exit codes (0 done, 1 the command failed, 2 it was given wrongly):
 * - `users add` with a --fhir-user no resource is, or a password under 8 characters, exited 1
 *   (`identity register --ref` of a missing resource exits 2); on a missing data directory it also
 *   left keys/, kv/ and store/ behind: a refused command now exits 2 and creates nothing; so do
 *   `identity register`, `consent grant` and `ingest` (a whole installation, chain deployed, was
 *   set up on a missing directory only to refuse their --ref or --patient);
 * - `chain status` on a missing data directory said "there is no embedded chain" (exit 1) where
 *   every other command says "no GlucoGuard data in <dir>" (exit 2);
 * - `consent grant` with a past --until named the FHIR element (provision.period), not the option;
 * - the rejected-ingest message said "use partial import": the option is --partial;
 * - help: `patients find --limit` printed its default twice, `consent grant` left RelatedPerson out
 *   of its grantees and showed its --purpose default as ["TREAT"], required options were not marked.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { PACKAGE_ROOT } from '../../src/paths.js';
import { makeTrace, nightscoutJson } from '../fixtures/cgm-ingest/trace.js';
import { tempDir } from '../support/app.js';

const BIN = path.join(PACKAGE_ROOT, 'bin/glucoguard.js');
const root = tempDir('bb26cli-walk-');
const dataDir = path.join(root, 'data');
const base: Record<string, string | undefined> = { ...process.env, GLUCOGUARD_AUTH: 'off', LOG_LEVEL: 'error', CHAIN_PORT: '0', CHAIN_BLOCK_PERIOD: '0' };
delete base.GLUCOGUARD_MASTER_KEY;
delete base.GLUCOGUARD_MASTER_KEY_FILE;
delete base.REDIS_URL;

function run(args: string[], dir = dataDir) {
  const r = spawnSync(process.execPath, [BIN, ...args], { env: { ...base, GLUCOGUARD_DATA_DIR: dir }, encoding: 'utf8', timeout: 90_000 });
  const stderr = String(r.stderr);
  // the last line of stderr: what the command says (start-up warnings of the app come first)
  return { status: r.status, stdout: String(r.stdout), stderr, said: stderr.trim().split('\n').pop() ?? '' };
}

/** The help text of a command as one line per option (commander wraps long descriptions). */
function help(...command: string[]): string {
  const r = run([...command, '--help']);
  expect(r.status).toBe(0);
  return r.stdout.replace(/\n {20,}/g, ' ');
}

const password = path.join(root, 'password');
const shortPassword = path.join(root, 'short-password');
let patient = '';

beforeAll(() => {
  const build = spawnSync('flock', ['/tmp/gg-build.lock', process.execPath, path.join(PACKAGE_ROOT, 'scripts/build.mjs')], { cwd: PACKAGE_ROOT, encoding: 'utf8' });
  if (build.status !== 0 && /^src\//m.test(`${build.stdout}${build.stderr}`)) throw new Error(`build failed:\n${build.stdout}\n${build.stderr}`);
  writeFileSync(password, 'a long passphrase\n');
  writeFileSync(shortPassword, 'seven77\n');
  const created = run(['patients', 'create', '--given', 'Ana', '--family', 'Rivera']);
  expect(created.status).toBe(0);
  patient = created.stdout.trim();
}, 240_000);
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('users add given wrongly exits 2', () => {
  test('a --fhir-user no resource is', () => {
    const r = run(['users', 'add', '--username', 'ghost', '--password-file', password, '--fhir-user', 'Practitioner/missing']);
    expect({ status: r.status, said: r.said }).toEqual({ status: 2, said: 'glucoguard: Practitioner/missing not found' });
  });

  test('a password under 8 characters, and no user is added', () => {
    const r = run(['users', 'add', '--username', 'ana', '--password-file', shortPassword, '--fhir-user', `Patient/${patient}`]);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/password must be at least 8 characters/);
    expect(run(['users', 'list']).stdout.trim()).toBe('no users registered');
  });

  test('on a missing data directory: exit 2, and nothing is created', () => {
    const missing = path.join(root, 'never-made');
    const r = run(['users', 'add', '--username', 'ghost', '--password-file', password, '--fhir-user', 'Patient/whoever'], missing);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/Patient\/whoever not found/);
    expect(existsSync(missing) ? readdirSync(missing) : 'not created').toBe('not created');
  });
});

describe('a command that sets up, refused on its input, creates nothing in a missing data directory', () => {
  const nightscout = path.join(root, 'one-day.json');
  test.each([
    [['identity', 'register', '--ref', 'Practitioner/missing'], 2, 'glucoguard: Practitioner/missing not found'],
    [['identity', 'register', '--ref', 'Client/no-such-app'], 2, 'glucoguard: Client/no-such-app is not a registered client (see glucoguard clients list)'],
    [['consent', 'grant', '--patient', 'nobody', '--to', 'Practitioner/7', '--data-from', '2026-01-01', '--data-to', '2026-01-02', '--until', '2099-01-01'], 2, 'glucoguard: Patient/nobody not found'],
    [['ingest', nightscout, '--patient', 'nobody'], 1, 'glucoguard: Patient/nobody not found'],
    [['clients', 'add', '--name', 'Bad', '--public'], 2, 'glucoguard: a redirect URI is required'],
  ])('%j: as on an installation, and nothing made', (args, status, said) => {
    writeFileSync(nightscout, nightscoutJson(makeTrace(1, { seed: 4 })));
    // the same answer as where an installation is
    const here = run(args);
    expect({ status: here.status, said: here.said }).toEqual({ status, said });
    const missing = path.join(root, `never-set-up-${args[0]}`);
    const r = run(args, missing);
    expect({ status: r.status, said: r.said }).toEqual({ status, said });
    expect(existsSync(missing) ? readdirSync(missing) : 'not created').toBe('not created');
  }, 90_000);
});

test('chain status on a missing data directory says "no GlucoGuard data", exit 2, as every other command', () => {
  const missing = path.join(root, 'mistyped');
  const r = run(['chain', 'status'], missing);
  expect({ status: r.status, said: r.said }).toEqual({ status: 2, said: `glucoguard: no GlucoGuard data in ${missing}; set GLUCOGUARD_DATA_DIR` });
  expect(existsSync(missing)).toBe(false);
});

test('consent grant with a past --until names the option, exit 2', () => {
  const args = ['consent', 'grant', '--patient', patient, '--to', 'Practitioner/7', '--data-from', '2026-01-01', '--data-to', '2026-01-02'];
  const r = run([...args, '--until', '2020-01-01']);
  expect({ status: r.status, said: r.said }).toEqual({ status: 2, said: 'glucoguard: --until must be later than now' });
  const before = run([...args, '--from', '2026-03-01T00:00:00Z', '--until', '2026-02-01T00:00:00Z']);
  expect({ status: before.status, said: before.said }).toEqual({ status: 2, said: 'glucoguard: --until must be later than --from and later than now' });
});

test('a rejected ingest names the --partial option', () => {
  const bad = path.join(root, 'bad.json');
  const lines = nightscoutJson(makeTrace(1, { seed: 9 })).split('\n');
  lines[4] = lines[4]!.replace(/"sgv":\d+/, '"sgv":5000');
  writeFileSync(bad, lines.join('\n'));
  const r = run(['ingest', bad, '--patient', patient, '--format', 'nightscout']);
  expect(r.status).toBe(1);
  expect(r.stderr).toMatch(/nothing was imported \(run again with --partial to keep the good records\)/);
  expect(r.stderr).not.toMatch(/use partial import/);
}, 60_000);

describe('help texts', () => {
  test('patients find --limit gives its default once', () => {
    const line = help('patients', 'find').split('\n').find((l) => l.includes('--limit'))!;
    expect(line.match(/default/g)).toHaveLength(1);
    expect(line).toMatch(/\(default: 20\)/);
    expect(line).toMatch(/500/);
  });

  test('consent grant names RelatedPerson as a grantee and its --purpose default as TREAT', () => {
    const text = help('consent', 'grant');
    expect(text).toMatch(/RelatedPerson/);
    expect(text.split('\n').find((l) => l.includes('--purpose'))).toMatch(/\(default: TREAT\)/);
  });

  test('launch create marks --client-id, --patient and --practitioner required (and --encounter not)', () => {
    const lines = help('launch', 'create').split('\n');
    for (const option of ['--client-id', '--patient', '--practitioner']) expect(lines.find((l) => l.trimStart().startsWith(option))).toMatch(/\(required\)/);
    expect(lines.find((l) => l.trimStart().startsWith('--encounter'))).not.toMatch(/required/);
  });
});
