/**
 * `glucoguard verify` and `glucoguard chain status` (the built bin) on a store from which data was
 * removed while the server was stopped, as QA did with better-sqlite3 (session 22): a reading
 * deleted together with its commitment row, another reading's commitment row deleted alone.
 * Before, verify printed "0 failed" and exited 0, and status showed a negative pending count.
 * Also: `verify --patient` with an id never stored is refused (exit 2), not "checked 0".
 */
import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import Database from 'better-sqlite3';
import request from 'supertest';
import type { Observation } from '@medplum/fhirtypes';
import { PACKAGE_ROOT } from '../../src/paths.js';
import { startTestApp, tempDir } from '../support/app.js';

const BIN = path.join(PACKAGE_ROOT, 'bin/glucoguard.js');
const dataDir = tempDir('gg-ledger-cli-removal-');
const env = { ...process.env, GLUCOGUARD_DATA_DIR: dataDir, GLUCOGUARD_AUTH: 'off', LOG_LEVEL: 'warn', CHAIN_PORT: '0', CHAIN_BLOCK_PERIOD: '0' };
const run = (...args: string[]) => spawnSync(process.execPath, [BIN, ...args], { env, encoding: 'utf8' });

let patient = '';
let other = '';
const readings: Observation[] = [];
let gone: Observation;
let uncommitted: Observation;
beforeAll(async () => {
  const build = spawnSync(process.execPath, [path.join(PACKAGE_ROOT, 'scripts/build.mjs')], { cwd: PACKAGE_ROOT, encoding: 'utf8' });
  if (build.status !== 0 && /^src\//m.test(`${build.stdout}${build.stderr}`)) throw new Error(`npm run build failed:\n${build.stdout}\n${build.stderr}`);
  const t = await startTestApp({}, dataDir);
  const post = async (body: object) => {
    const res = await request(t.app.http).post(`/fhir/${(body as { resourceType: string }).resourceType}`).set('content-type', 'application/fhir+json').send(body);
    expect(res.status).toBe(201);
    return res.body;
  };
  patient = (await post({ resourceType: 'Patient', name: [{ family: 'Removed' }] })).id;
  other = (await post({ resourceType: 'Patient', name: [{ family: 'Other' }] })).id;
  for (let i = 0; i < 4; i++) {
    readings.push(await post({
      resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] },
      subject: { reference: `Patient/${patient}` }, effectiveDateTime: `2026-07-01T00:0${i}:00Z`,
      valueQuantity: { value: 110 + i, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
    }));
  }
  await t.app.consent.audit.flush();
  await t.app.ledger.anchorer.flush();
  await t.app.close();
  [, gone, uncommitted] = readings as [Observation, Observation, Observation];
  const store = new Database(path.join(dataDir, 'store', 'glucoguard.db'));
  store.prepare("DELETE FROM versions WHERE type = 'Observation' AND id = ?").run(gone.id);
  store.close();
  const ledger = new Database(path.join(dataDir, 'ledger', 'commitments.db'));
  ledger.prepare("DELETE FROM commitments WHERE type = 'Observation' AND id IN (?, ?)").run(gone.id, uncommitted.id);
  ledger.close();
}, 240_000);
afterAll(() => rmSync(dataDir, { recursive: true, force: true }));

describe('glucoguard verify after removals', () => {
  test('reports the batch\'s missing commitments, names the version still in the repository, counts it unverified, exits 1', () => {
    const r = run('verify');
    expect(r.stderr).not.toMatch(/Error|at /);
    expect(r.status).toBe(1);
    expect(r.stdout).toMatch(/^checked \d+: \d+ verified, 0 pending .*, 0 failed; 2 commitments missing from the store, 1 versions without a commitment \(unverified\)$/m);
    expect(r.stdout).toMatch(/^MISSING 2 of \d+ commitments of batch \d+ \(chain batch #\d+\), seqs \d+–\d+:$/m);
    expect(r.stdout).toContain(`: the commitment of Observation/${uncommitted.id}/_history/1 (still in the repository, unverified)`);
    expect(r.stdout).toMatch(/seq \d+: a commitment whose version is not in the repository either \(removed from both\), leaf \d+ of the tree; written after \S+, before \S+/);
    expect(r.stdout).toContain(`among the versions of Patient/${patient} in the tree`);
    expect(r.stdout).toContain(`UNVERIFIED Observation/${uncommitted.id}/_history/1: no commitment, among committed versions`);
    // no content of any version, no salt
    expect(r.stdout).not.toMatch(/mg\/dL|[0-9a-f]{64}/);
  });

  test('--patient with an id never stored is refused with exit 2, not "checked 0 … 0 failed"', () => {
    const r = run('verify', '--patient', `${other}-typo`);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain(`Patient/${other}-typo was never stored in this data directory`);
    expect(r.stdout).toBe('');
  });

  test('--patient of a stored patient still checks that patient', () => {
    const r = run('verify', '--patient', other);
    // the Patient and the access-log event of its creation, stored under the patient it names (session 24)
    expect(r.stdout).toMatch(/^checked 2: 2 verified, 0 pending/);
  });
});

describe('glucoguard chain status after removals', () => {
  test('says how many commitments are missing instead of a negative pending count', () => {
    const json = run('chain', 'status', '--json');
    expect(json.status).toBe(0);
    const s = JSON.parse(json.stdout);
    expect(s.anchoring).toMatchObject({ pending: 0, missing: 2 });
    const text = run('chain', 'status');
    expect(text.stdout).toMatch(/^anchoring {9}\d+ commitments: \d+ anchored in \d+ batch(es)?, 0 pending;/m);
    expect(text.stdout).toMatch(/^MISSING {11}2 commitments removed from the store: .*run glucoguard verify$/m);
    expect(text.stdout).not.toMatch(/-\d+ pending/);
  });
});
