/**
 * `glucoguard ingest` and `glucoguard summary` as an operator runs them (the built bin): the report
 * on stdout, a dry run that stores nothing, a re-import that changes nothing, a rejected file with exit code 1.
 */
import { spawnSync } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { PACKAGE_ROOT } from '../../src/paths.js';
import { midnightNightscout } from '../fixtures/cgm-ingest/midnight.js';
import { makeTrace, nightscoutJson } from '../fixtures/cgm-ingest/trace.js';
import { tempDir } from '../support/app.js';

const BIN = path.join(PACKAGE_ROOT, 'bin/glucoguard.js');
const dataDir = tempDir('gg-cgm-cli-');
const env = { ...process.env, GLUCOGUARD_DATA_DIR: dataDir, GLUCOGUARD_AUTH: 'off', LOG_LEVEL: 'warn', CHAIN_PORT: '0', CHAIN_BLOCK_PERIOD: '0' };
const run = (...args: string[]) => spawnSync(process.execPath, [BIN, ...args], { env, encoding: 'utf8' });

beforeAll(() => {
  const build = spawnSync(process.execPath, [path.join(PACKAGE_ROOT, 'scripts/build.mjs')], { cwd: PACKAGE_ROOT, encoding: 'utf8' });
  // tsc still emits on type errors; only errors in src/ (what the bin runs) make this run meaningless.
  if (build.status !== 0 && /^src\//m.test(`${build.stdout}${build.stderr}`)) throw new Error(`npm run build failed:\n${build.stdout}\n${build.stderr}`);
}, 180_000);
afterAll(() => rmSync(dataDir, { recursive: true, force: true }));

describe('glucoguard ingest / summary', () => {
  const trace = makeTrace(14, { seed: 3 });
  const file = path.join(dataDir, 'nightscout-14d.json');
  let patientId = '';

  beforeAll(() => {
    writeFileSync(file, nightscoutJson(trace));
    const created = run('patients', 'create', '--given', 'Ana', '--family', 'Rivera');
    expect(created.status).toBe(0);
    patientId = created.stdout.trim();
  });

  test('ingest --dry-run says what the import would do and stores nothing (the import below then creates every reading)', () => {
    const r = run('ingest', file, '--patient', patientId, '--dry-run');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^DRY RUN, nothing stored; the import would be accepted: nightscout \(detected\)/);
    expect(r.stdout).toContain(`records read ${trace.length}, would be created ${trace.length}, unchanged 0, would be corrected 0`);
  }, 60_000);

  test('ingest imports the file and prints the report on stdout', () => {
    const r = run('ingest', file, '--patient', patientId, '--json');
    expect(r.status).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report).toMatchObject({ accepted: true, format: 'nightscout', detected: true, read: trace.length, created: trace.length, unchanged: 0 });
  }, 60_000);

  test('--date-order orders an ambiguous LibreView export; another value is refused', () => {
    const csv = path.join(dataDir, 'libre-ambiguous.csv');
    writeFileSync(csv, ['Device,Serial Number,Device Timestamp,Record Type,Historic Glucose mg/dL,Scan Glucose mg/dL,Notes',
      'FreeStyle Libre 2,0F1E2D3C-1111-4222-8333-444455556666,03-02-2026 08:00,0,101,,'].join('\n'));
    const refused = run('ingest', csv, '--patient', patientId, '--date-order', 'YMD');
    expect(refused.status).not.toBe(0);
    expect(refused.stderr).toMatch(/expected DMY or MDY/);
    const r = run('ingest', csv, '--patient', patientId, '--tz', 'UTC', '--date-order', 'MDY', '--json');
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout).dateOrder).toEqual({ order: 'MDY', from: 'option', ambiguous: false });
  }, 60_000);

  test('a second ingest of the same file counts every reading as unchanged (human-readable report)', () => {
    const r = run('ingest', file, '--patient', patientId);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain(`records read ${trace.length}, created 0, unchanged ${trace.length}, corrected 0, skipped 0, rejected 0`);
    expect(r.stderr).not.toMatch(/\r/); // no progress bar when stderr is not a terminal
  }, 60_000);

  test('ingest --remove --dry-run says the removal would remove every reading of the file, and removes none', () => {
    const r = run('ingest', file, '--patient', patientId, '--remove', '--dry-run');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^DRY RUN, nothing removed; the removal would be accepted: nightscout \(detected\)/);
    expect(r.stdout).toContain(`records read ${trace.length}, would be removed ${trace.length}, kept (changed since) 0, not stored 0`);
    const again = run('ingest', file, '--patient', patientId, '--dry-run');
    expect(again.stdout).toContain(`would be created 0, unchanged ${trace.length}`);
  }, 60_000);

  test('summary prints the consensus metrics; --json prints the cgm-summary Bundle', () => {
    const text = run('summary', '--patient', patientId);
    expect(text.status).toBe(0);
    expect(text.stdout).toMatch(/time in ranges\s+very low [\d.]+ %\s+low [\d.]+ %\s+target [\d.]+ %/);
    expect(text.stdout).toMatch(/GMI\s+[\d.]+ %/);
    const json = run('summary', '--patient', patientId, '--json');
    expect(json.status).toBe(0);
    const bundle = JSON.parse(json.stdout);
    expect(bundle.resourceType).toBe('Bundle');
    expect(bundle.entry[0].resource.code.coding[0].code).toBe('107931-8');
  }, 60_000);

  test('a Dexcom Clarity export with --tz; the summary says how many readings were beyond the sensor range', () => {
    const other = run('patients', 'create', '--given', 'C', '--family', 'Lindqvist').stdout.trim();
    const csv = path.join(import.meta.dirname, '../fixtures/cgm/dexcom-clarity-mgdl.csv');
    const r = run('ingest', csv, '--patient', other, '--tz', 'America/Los_Angeles');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^imported: dexcom-clarity \(detected\)/);
    expect(r.stdout).toContain('records read 13, created 7, unchanged 0, corrected 0, skipped 6, rejected 0'); // the calibration stored as a meter reading
    expect(r.stdout).toContain('time zone America/Los_Angeles (given)');
    expect(r.stdout).not.toMatch(/Averyzz|Quillfeather|1979-04-12/);
    const summary = run('summary', '--patient', other);
    expect(summary.status).toBe(0);
    expect(summary.stdout).toMatch(/^ {2}beyond sensor {4}2 of 6 readings: 1 LOW \(taken as 40 mg\/dL\), 1 HIGH \(taken as 400 mg\/dL\)$/m);
  }, 60_000);

  test('summary --start/--end dates are local days: --tz names the zone', () => {
    const other = run('patients', 'create', '--given', 'D', '--family', 'Nakamura').stdout.trim();
    const json = path.join(dataDir, 'midnight-utc.json');
    writeFileSync(json, midnightNightscout('utc'));
    expect(run('ingest', json, '--patient', other).status).toBe(0);
    const utcDay = run('summary', '--patient', other, '--start', '2026-01-02', '--end', '2026-01-02');
    expect(utcDay.stdout).toMatch(/^ {2}mean glucose {5}150 mg\/dL/m); // readings stored in UTC: the UTC day
    const newYork = run('summary', '--patient', other, '--start', '2026-01-02', '--end', '2026-01-02', '--tz', 'America/New_York');
    expect(newYork.status).toBe(0);
    expect(newYork.stdout).toMatch(/: 2026-01-02 to 2026-01-02 \(1 days, 36 readings\)/);
    expect(newYork.stdout).toMatch(/^ {2}mean glucose {5}200 mg\/dL/m);
  }, 60_000);

  test('no beyond-sensor line when every reading has a value', () => {
    expect(run('summary', '--patient', patientId).stdout).not.toMatch(/beyond sensor/);
  }, 60_000);

  test('a file with a bad record is rejected with exit code 1, naming the line, and stores nothing', () => {
    const bad = path.join(dataDir, 'bad.json');
    const lines = nightscoutJson(makeTrace(1, { seed: 9 })).split('\n');
    lines[4] = lines[4]!.replace(/"sgv":\d+/, '"sgv":5000');
    writeFileSync(bad, lines.join('\n'));
    const other = run('patients', 'create', '--given', 'B', '--family', 'Okafor').stdout.trim();
    const r = run('ingest', bad, '--patient', other, '--format', 'nightscout');
    expect(r.status).toBe(1);
    expect(r.stdout).toMatch(/REJECTED \(nothing stored\)/);
    expect(r.stdout).toMatch(/value-too-high: record 4 \(line 5\)/);
    expect(r.stderr).toMatch(/nothing was imported/);
    const summary = run('summary', '--patient', other);
    expect(summary.status).not.toBe(0);
    expect(summary.stderr).toMatch(/No CGM readings/);
  }, 60_000);

  test('ingest of a missing file or an unknown format fails with a clear message', () => {
    expect(run('ingest', path.join(dataDir, 'nope.json'), '--patient', patientId).stderr).toMatch(/no such file/i);
    const r = run('ingest', file, '--patient', patientId, '--format', 'excel');
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/expected one of dexcom/);
  });
});
