/**
 * A start that fails part-way closes what it had opened: the key-value store cannot be opened (here
 * its directory is a file) after the embedded repository was, or the SMART store after the ledger
 * and the consent stores were, and createApp rejects with nothing of the data directory left open
 * in the process — a second start over the same directory, once the cause is gone, works. Open
 * files are read from /proc/self/fd (Linux; skipped elsewhere).
 */
import { afterAll, expect, test } from '@jest/globals';
import { existsSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Patient } from '@medplum/fhirtypes';
import { createApp } from '../../src/app.js';
import { loadConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { tempDir } from '../support/app.js';

const HAS_PROC = existsSync('/proc/self/fd');
if (!HAS_PROC) console.warn('SKIPPED app-start-failure: no /proc/self/fd to list the open files on this platform.');
const dir = tempDir('gg-start-failure-');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function openUnder(root: string): string[] {
  return readdirSync('/proc/self/fd').map((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      return ''; // closed since it was listed
    }
  }).filter((target) => target.startsWith(root));
}

(HAS_PROC ? test : test.skip)('a key-value store that cannot be opened stops the start with the repository closed again; the next start works', async () => {
  const config = loadConfig({ GLUCOGUARD_DATA_DIR: dir, GLUCOGUARD_AUTH: 'off', LOG_LEVEL: 'silent', CHAIN_PORT: '0', CHAIN_BLOCK_PERIOD: '0' });
  writeFileSync(path.join(dir, 'kv'), 'not a directory');
  await expect(createApp(config, { logger: createLogger('silent') })).rejects.toThrow();
  expect(existsSync(path.join(dir, 'store'))).toBe(true); // the repository had been opened
  expect(openUnder(dir)).toEqual([]);
  rmSync(path.join(dir, 'kv'));
  const app = await createApp(config, { logger: createLogger('silent') });
  try {
    const created = await app.repository.create<Patient>({ resourceType: 'Patient', name: [{ family: 'Rivera' }] });
    expect(created.resource.id).toEqual(expect.any(String));
  } finally {
    await app.close();
  }
  expect(openUnder(dir)).toEqual([]);
}, 60_000);

(HAS_PROC ? test : test.skip)('a SMART store that cannot be opened stops the start with the ledger, consent, repository, key-value and chain stores closed again', async () => {
  const config = loadConfig({ GLUCOGUARD_DATA_DIR: dir, GLUCOGUARD_AUTH: 'off', LOG_LEVEL: 'silent', CHAIN_PORT: '0', CHAIN_BLOCK_PERIOD: '0' });
  rmSync(path.join(dir, 'smart'), { recursive: true, force: true });
  writeFileSync(path.join(dir, 'smart'), 'not a directory');
  await expect(createApp(config, { logger: createLogger('silent') })).rejects.toThrow();
  expect(openUnder(dir)).toEqual([]);
  rmSync(path.join(dir, 'smart'));
  const app = await createApp(config, { logger: createLogger('silent') });
  await app.close();
  expect(openUnder(dir)).toEqual([]);
}, 60_000);
