/**
 * kill -9 of a serving proxy while versions are waiting for their batch (and maybe while a batch
 * transaction is in flight): after a restart on the same data directory every version the client
 * saw acknowledged gets anchored, and the chain holds each commitment exactly once.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, expect, it } from '@jest/globals';
import type { EventLog } from 'ethers';
import { PACKAGE_ROOT } from '../../src/paths.js';
import { startTestApp, tempDir, type TestApp } from '../support/app.js';

const BIN = path.join(PACKAGE_ROOT, 'bin/glucoguard.js');
const dataDir = tempDir('gg-ledger-crash-');
let child: ChildProcess | undefined;
let restarted: TestApp | undefined;

beforeAll(() => {
  const build = spawnSync(process.execPath, [path.join(PACKAGE_ROOT, 'scripts/build.mjs')], { cwd: PACKAGE_ROOT, encoding: 'utf8' });
  if (build.status !== 0 && /^src\//m.test(`${build.stdout}${build.stderr}`)) throw new Error(`npm run build failed:\n${build.stdout}\n${build.stderr}`);
}, 240_000);
afterAll(async () => {
  child?.kill('SIGKILL');
  await restarted?.app.close();
  rmSync(dataDir, { recursive: true, force: true });
});

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

it('anchors every acknowledged version exactly once after kill -9 and restart', async () => {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  child = spawn(process.execPath, [BIN, 'serve'], {
    env: { ...process.env, GLUCOGUARD_DATA_DIR: dataDir, GLUCOGUARD_AUTH: 'off', LOG_LEVEL: 'info', PORT: String(port), GLUCOGUARD_HOST: '127.0.0.1',
      GLUCOGUARD_BASE_URL: base, CHAIN_PORT: '0', CHAIN_BLOCK_PERIOD: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  // what the server said, for the failure message (a start that stalls once in a long while: say where)
  let said = '';
  const keep = (chunk: Buffer): void => {
    said = (said + chunk.toString()).slice(-4000);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const deadline = Date.now() + 60_000;
  for (;;) {
    const ok = await fetch(`${base}/healthz`).then((r) => r.ok, () => false);
    if (ok) break;
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`proxy did not start (exit code ${child.exitCode}); it said:\n${said}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const acknowledged: string[] = [];
  const writes = Array.from({ length: 40 }, async (_, i) => {
    const res = await fetch(`${base}/fhir/Patient`, {
      method: 'POST', headers: { 'content-type': 'application/fhir+json' },
      body: JSON.stringify({ resourceType: 'Patient', name: [{ family: `Crash${i}` }] }),
    });
    if (res.status === 201) acknowledged.push(((await res.json()) as { id: string }).id);
  });
  // kill while writes are arriving (some batches pending, maybe one in flight)
  await Promise.race([Promise.allSettled(writes), new Promise((r) => setTimeout(r, 400))]);
  const exited = new Promise((r) => child!.once('exit', r));
  child.kill('SIGKILL');
  await exited;
  await Promise.allSettled(writes);
  expect(acknowledged.length).toBeGreaterThan(0);

  restarted = await startTestApp({ CHAIN_BLOCK_PERIOD: '1' }, dataDir);
  const { ledger, chain } = restarted.app;
  const until = Date.now() + 30_000;
  while (ledger.store.counts().pending > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
  expect(ledger.store.counts().pending).toBe(0);
  for (const id of acknowledged) expect(ledger.store.get('Patient', id, '1')?.batch).not.toBeNull();

  // exactly once: the authority's sequence advanced by the number of commitments, and the
  // BatchAnchored events cover that many leaves with no overlap
  const anchor = chain.contract('ResourceAnchor');
  const seqBase = Number(ledger.store.getMeta('seq_base'));
  const { commitments } = ledger.store.counts();
  expect(Number(await anchor.nextSeq(chain.authorityAddress))).toBe(seqBase + commitments);
  const events = await anchor.queryFilter(anchor.filters.BatchAnchored(null, null, chain.authorityAddress), 0);
  const ranges = events.map((e) => {
    const { firstSeq, lastSeq } = (e as EventLog).args as unknown as { firstSeq: bigint; lastSeq: bigint };
    return [Number(firstSeq), Number(lastSeq)];
  });
  const covered = ranges.filter(([first]) => first! >= seqBase).reduce((n, [a, b]) => n + b! - a! + 1, 0);
  expect(covered).toBe(commitments);
}, 120_000);
