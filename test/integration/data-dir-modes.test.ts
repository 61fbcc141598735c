/**
 * What the app creates in its data directory is owner-only even when the process's umask would let
 * others read it: the CLI sets umask 077 (test/integration/cli-data-dir.test.ts), but the app also
 * runs in-process (tests, embedding), where the umask is whatever the host set.
 */
import { afterAll, expect, test } from '@jest/globals';
import { chmodSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import request from 'supertest';
import { startTestApp } from '../support/app.js';

const before = process.umask(0o022);
afterAll(() => {
  process.umask(before);
});

/**
 * Every file and folder with group or other bits, but for LevelDB's files inside the chain's
 * database folder: LevelDB makes them as the umask says, and that folder is kept owner-only instead.
 */
function openToOthers(root: string): string[] {
  const found: string[] = [];
  const walk = (p: string) => {
    const st = statSync(p);
    const rel = path.relative(root, p) || '.';
    if (st.mode & 0o077 && !(st.isFile() && path.dirname(rel) === path.join('chain', 'db'))) found.push(`${rel} ${(st.mode & 0o777).toString(8)}`);
    if (st.isDirectory()) for (const name of readdirSync(p)) walk(path.join(p, name));
  };
  walk(root);
  return found;
}

test('with umask 022, the store, chain, keys and client files an in-process app writes are owner-only', async () => {
  const t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
  const { dataDir } = t;
  // as an operator's `mkdir data` leaves it: the walk below then looks into everything in it
  chmodSync(dataDir, 0o755);
  try {
    await request(t.app.http).get('/fhir/metadata').expect(200);
    await t.app.repository.create({ resourceType: 'Patient', name: [{ family: 'Mode' }] });
  } finally {
    await t.app.close();
  }
  expect(readdirSync(dataDir).length).toBeGreaterThan(2);
  expect(openToOthers(dataDir)).toEqual(['. 755']);
}, 60_000);
