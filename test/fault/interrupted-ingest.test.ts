/**
 * Fault: a signal during a large CGM import, to the real built processes. `glucoguard serve` gets
 * SIGTERM while it stores a 24,000-reading upload: the upload answers 503 with Retry-After and the
 * number of readings stored, the process exits 0, and after a restart exactly that many are there;
 * the re-send stores the rest, nothing twice. `glucoguard ingest` gets SIGINT (Ctrl-C) part-way: it
 * says how many readings it stored, exits 130, and running it again stores the rest. Waits are on
 * conditions (readings searchable, commitments recorded), never on fixed sleeps.
 */
import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { spawn } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Bundle } from '@medplum/fhirtypes';
import { commitmentStorePath } from '../../src/ledger/index.js';
import { CommitmentStore } from '../../src/ledger/store.js';
import { makeTrace, nightscoutJson } from '../fixtures/cgm-ingest/trace.js';
import { BIN, buildOnce, childEnv, eventually, freePort, runCli, startServer, type ServerProc } from '../support/process.js';
import { BASE_URL, ingest, tempDir } from './helpers.js';

const dataDir = tempDir('gg-fault-interrupt-');
const env: Record<string, string> = { GLUCOGUARD_DATA_DIR: dataDir, GLUCOGUARD_AUTH: 'off', GLUCOGUARD_BASE_URL: BASE_URL };
// 24,168 readings: 13 chunks of at most 2,000; the signal comes after the first (the behaviour needs
// several chunks, not a given size; 60,168 made these two tests 75 s of a CI run's 15 minutes)
const file = nightscoutJson(makeTrace(84));
let server: ServerProc | undefined;

beforeAll(async () => {
  buildOnce();
  env.CHAIN_PORT = String(await freePort());
}, 180_000);
afterAll(async () => {
  await server?.kill9();
  rmSync(dataDir, { recursive: true, force: true });
});

/** How many Observations of the patient the server holds (all pages). */
async function readingsOf(origin: string, patient: string): Promise<number> {
  let n = 0;
  let url: string | undefined = `${origin}/fhir/Observation?patient=${patient}&_count=1000`;
  while (url) {
    const res = await fetch(url);
    if (res.status !== 200) throw new Error(`search answered ${res.status}: ${await res.text()}`);
    const bundle = (await res.json()) as Bundle;
    n += bundle.entry?.length ?? 0;
    const next = bundle.link?.find((l) => l.relation === 'next')?.url;
    url = next ? `${origin}${new URL(next).pathname}${new URL(next).search}` : undefined;
  }
  return n;
}

test('SIGTERM to serve during a 24,000-reading import: 503 with the stored count, exit 0, that many stored, the re-send stores the rest', async () => {
  const created = runCli(['patients', 'create', '--given', 'Sig', '--family', 'Term'], env);
  // with its stderr, should it fail (a fresh-clone run once saw exit 1 here, not reproduced since)
  expect({ status: created.status, stderr: created.status === 0 ? '' : created.stderr }).toEqual({ status: 0, stderr: '' });
  const patient = created.stdout.trim();
  server = await startServer(env);
  const s = server;
  const upload = ingest(s.origin, patient, file).then(async (res) => ({ status: res.status, retryAfter: res.headers.get('retry-after'), body: (await res.json()) as { issue: { diagnostics: string }[] } }));
  let answered = false;
  void upload.then(() => { answered = true; });
  const anyStored = async () => ((await (await fetch(`${s.origin}/fhir/Observation?patient=${patient}&_count=1`)).json()) as Bundle).entry?.length;
  await eventually(async () => (answered || await anyStored() ? true : undefined), 120_000, 'the first chunk stored', 50);
  expect(answered).toBe(false);

  s.child.kill('SIGTERM');
  const res = await upload;
  expect(res.status).toBe(503);
  expect(res.retryAfter).toBe('10');
  const m = /^The server is stopping: (\d+) readings of this file were stored before the import stopped and are kept; send the file again to store the rest/.exec(res.body.issue[0]!.diagnostics);
  expect(m).not.toBeNull();
  const stored = Number(m![1]);
  expect(stored % 2000).toBe(0);
  expect(stored).toBeGreaterThan(0);
  expect(await s.exited).toBe(0);
  expect(s.output()).toMatch(new RegExp(`a CGM import was stopped by the shutdown after ${stored} readings`));
  expect(s.output()).toMatch(/stopped cleanly/);

  server = await startServer(env);
  expect(await readingsOf(server.origin, patient)).toBe(stored);
  const again = await ingest(server.origin, patient, file);
  expect(again.status).toBe(200);
  const report = (await again.json()) as { created: number; unchanged: number; corrected: number };
  expect(report.unchanged).toBe(stored);
  expect(report.corrected).toBe(0);
  expect(report.created + report.unchanged).toBeGreaterThan(24_000);
  expect(await readingsOf(server.origin, patient)).toBe(report.created + report.unchanged);
  expect(await server.stop()).toBe(0);
  server = undefined;
}, 420_000);

test('SIGINT to glucoguard ingest part-way: it says how many readings it stored, exits 130, and a re-run stores the rest', async () => {
  const created = runCli(['patients', 'create', '--given', 'Sig', '--family', 'Int'], env);
  expect(created.status).toBe(0);
  const patient = created.stdout.trim();
  const exportFile = path.join(dataDir, 'nightscout-24k.json');
  writeFileSync(exportFile, file);
  const store = new CommitmentStore(commitmentStorePath(dataDir));
  try {
    const before = store.counts().commitments;
    const child = spawn(process.execPath, [BIN, 'ingest', exportFile, '--patient', patient, '--format', 'nightscout'], { env: childEnv({ ...env, LOG_LEVEL: 'warn' }), stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.stdout.resume();
    const exited = new Promise<number | string | null>((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal)));
    let done = false;
    void exited.then(() => { done = true; });
    // the first chunk is stored and committed (the store the server and the CLI share)
    await eventually(async () => (done || store.counts().commitments >= before + 2000 ? true : undefined), 120_000, 'the first chunk committed', 20);
    expect(done).toBe(false);
    child.kill('SIGINT');
    expect(await exited).toBe(130);
    const m = /SIGINT: (\d+) readings of \S+ were stored \(whole chunks of 2000\) and are kept; run the same command again to store the rest/.exec(stderr);
    expect(m).not.toBeNull();
    const stored = Number(m![1]);
    expect(stored % 2000).toBe(0);
    expect(stored).toBeGreaterThan(0);

    const rerun = runCli(['ingest', exportFile, '--patient', patient, '--format', 'nightscout', '--json'], env, 180_000);
    // what the re-run said, should it fail (a fresh-clone run saw exit 1 once, not reproduced since)
    expect({ status: rerun.status, stderr: rerun.status === 0 ? '' : rerun.stderr.slice(-2000) }).toEqual({ status: 0, stderr: '' });
    const report = JSON.parse(rerun.stdout) as { created: number; unchanged: number; corrected: number };
    expect(report.unchanged).toBe(stored); // exactly what it said it stored, no half chunk
    expect(report.corrected).toBe(0);
    expect(report.created + report.unchanged).toBeGreaterThan(24_000);
  } finally {
    store.close();
  }
}, 420_000);
