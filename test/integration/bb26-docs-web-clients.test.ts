/**
 * The built-in apps' SMART registrations (web/clients.json) are made by the server at its start and
 * stay stable across restarts (docs/operations.md, The data directory; src/web/clients.ts). An
 * operator command run beside the server with other settings — README's first session runs
 * `GLUCOGUARD_AUTH=off npm start &` with its own environment, then `./bin/glucoguard.js …` — must
 * not register the two apps again under its own base URL: before, every such command added a
 * clinician viewer and a patient portal to `clients list` and rewrote clients.json under the
 * running server, so the next start registered yet another pair.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { beforeAll, expect, test } from '@jest/globals';
import { PACKAGE_ROOT } from '../../src/paths.js';
import { tempDir } from '../support/app.js';

const BIN = path.join(PACKAGE_ROOT, 'bin/glucoguard.js');
const dataDir = path.join(tempDir('gg-bb26-docs-web-'), 'data');
const base: Record<string, string | undefined> = {
  ...process.env, GLUCOGUARD_DATA_DIR: dataDir, GLUCOGUARD_AUTH: 'off', LOG_LEVEL: 'warn', CHAIN_PORT: '0', CHAIN_BLOCK_PERIOD: '0',
};
delete base.GLUCOGUARD_MASTER_KEY;
delete base.GLUCOGUARD_MASTER_KEY_FILE;

function run(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [BIN, ...args], { env: { ...base, ...env }, encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: String(r.stdout), stderr: String(r.stderr) };
}

const clientsFile = path.join(dataDir, 'web', 'clients.json');
const registrations = () => {
  const listed = run(['clients', 'list']);
  expect(listed.status).toBe(0);
  const lines = listed.stdout.split('\n');
  return {
    portals: lines.filter((l) => l.includes('"GlucoGuard patient portal"')).length,
    viewers: lines.filter((l) => l.includes('"GlucoGuard CGM viewer (clinician)"')).length,
  };
};

beforeAll(() => {
  // CLI tests run the built dist/ (test/support/global-build.mjs builds it once per run)
  expect(existsSync(BIN)).toBe(true);
  expect(run(['patients', 'create', '--given', 'Ana', '--family', 'Rivera'], { GLUCOGUARD_BASE_URL: 'http://localhost:41001' }).status).toBe(0);
});

test('an operator command under another base URL leaves the apps\' registrations alone', () => {
  const before = registrations();
  const fileBefore = existsSync(clientsFile) ? readFileSync(clientsFile, 'utf8') : undefined;
  expect(before.portals).toBeLessThanOrEqual(1);

  expect(run(['patients', 'find', '--name', 'riv'], { GLUCOGUARD_BASE_URL: 'http://localhost:41002' }).status).toBe(0);
  expect(run(['patients', 'find', '--name', 'riv'], { PORT: '41003' }).status).toBe(0);

  expect(registrations()).toEqual(before);
  expect(existsSync(clientsFile) ? readFileSync(clientsFile, 'utf8') : undefined).toBe(fileBefore);
}, 120_000);
