/**
 * Fault: the data directory's file system fills up under a running `glucoguard serve`. Writes
 * answer a clear 5xx OperationOutcome that names no file, path or driver error; the process keeps
 * running; what was stored before reads back; once space is freed writes work again, and
 * `glucoguard verify` finds nothing corrupted.
 *
 * The data directory is a small tmpfs (8 MiB) mounted by the test: needs root or CAP_SYS_ADMIN,
 * skipped with a message otherwise.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import { closeSync, openSync, rmSync, statfsSync, writeSync } from 'node:fs';
import path from 'node:path';
import { buildOnce, eventually, freePort, runCli, startServer, type ServerProc } from '../support/process.js';
import { BASE_URL, expectCleanOutcome, FIVE_MIN, getJson, ingest, integrityTag, nightscout, observationsOf, readingOf, responseOf, tempDir } from './helpers.js';

const mountPoint = tempDir('gg-fault-disk-');
const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=8m,mode=0700', 'tmpfs', mountPoint], { encoding: 'utf8' });
if (mounted.status !== 0) {
  console.warn(`SKIPPED disk-full fault test: cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): ${(mounted.stderr || mounted.error?.message || '').trim()}`);
}
const dataDir = path.join(mountPoint, 'data');
const filler = path.join(mountPoint, 'filler');
const env: Record<string, string> = { GLUCOGUARD_DATA_DIR: dataDir, GLUCOGUARD_AUTH: 'off', GLUCOGUARD_BASE_URL: BASE_URL };
let server: ServerProc | undefined;

/** Writes `file` until the file system refuses (ENOSPC); returns the bytes written. */
function fillUp(file: string): number {
  const fd = openSync(file, 'a');
  let written = 0;
  try {
    for (const size of [1 << 20, 1 << 16, 1 << 12, 1 << 9]) {
      const chunk = Buffer.alloc(size, 0x5a);
      for (;;) {
        try {
          written += writeSync(fd, chunk);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
          break;
        }
      }
    }
  } finally {
    closeSync(fd);
  }
  return written;
}

(mounted.status === 0 ? describe : describe.skip)('data directory full', () => {
  beforeAll(async () => {
    buildOnce();
    env.CHAIN_PORT = String(await freePort());
  }, 180_000);
  afterAll(async () => {
    await server?.kill9();
    spawnSync('umount', [mountPoint]);
    rmSync(mountPoint, { recursive: true, force: true });
  });

  test('ENOSPC: writes answer 503 "no storage space left" without internals, earlier data reads back, writes resume once space is freed, nothing corrupted', async () => {
    const created = runCli(['patients', 'create', '--given', 'Fulla', '--family', 'Disk'], env);
    expect(created.status).toBe(0);
    const patient = created.stdout.trim();
    server = await startServer(env);
    const start = Date.UTC(2026, 6, 1);
    const before = nightscout(24, start);
    expect((await ingest(server.origin, patient, before.body)).status).toBe(200);
    await eventually(async () => ((await observationsOf(server!.origin, patient)).every((o) => integrityTag(o) === undefined) ? true : undefined),
      30_000, 'anchoring before the disk fills');

    const filled = fillUp(filler);
    expect(statfsSync(mountPoint).bavail).toBe(0);

    // Writes while full: 503 "no storage space left" each (transient: retry later), no internals; the process stays up.
    const refused = [];
    for (let i = 1; i <= 3; i++) {
      refused.push(await responseOf(await ingest(server.origin, patient, nightscout(24, start + i * 24 * FIVE_MIN).body)));
    }
    refused.push(await responseOf(await fetch(`${server.origin}/fhir/Patient`, {
      method: 'POST', headers: { 'content-type': 'application/fhir+json' }, body: JSON.stringify({ resourceType: 'Patient', name: [{ family: 'Overflow' }] }),
    })));
    for (const res of refused) {
      expect(res.status).toBe(503);
      const outcome = expectCleanOutcome(res.body);
      expect(outcome.issue?.[0]?.diagnostics).toMatch(/no storage space left/);
      expect(JSON.stringify(outcome)).not.toMatch(/Fulla|Disk\b|Overflow/);
    }
    expect(server.child.exitCode).toBeNull();

    // Earlier data still reads back (reads only; their AuditEvents may not fit and must not break them).
    const whileFull = await getJson(`${server.origin}/fhir/Observation?patient=${patient}&_count=100`);
    console.info(`disk full (${filled} filler bytes): writes answered ${refused.map((r) => r.status).join(', ')}; search answered ${whileFull.status}`);
    expect(whileFull.status).toBe(200);
    const readBack = await observationsOf(server.origin, patient);
    expect(readBack.map((o) => readingOf(o)).sort((a, b) => a!.at.localeCompare(b!.at))).toEqual(before.readings);

    // Space comes back: writes work again without a restart.
    rmSync(filler);
    const after = nightscout(24, start + 10 * 24 * FIVE_MIN);
    const resumed = await eventually(async () => {
      const res = await ingest(server!.origin, patient, after.body);
      return res.status === 200 ? res : undefined;
    }, 30_000, 'a write after space was freed');
    expect(((await resumed.json()) as { created: number }).created).toBe(24);
    // The refused writes stored nothing: no Patient, no reading beyond the acknowledged ones.
    const overflow = await getJson(`${server.origin}/fhir/Patient?family=Overflow`);
    expect((overflow.body as { entry?: unknown[] }).entry ?? []).toHaveLength(0);
    const all = await observationsOf(server.origin, patient);
    expect(all).toHaveLength(before.readings.length + after.readings.length);
    for (const o of all) expect(readingOf(o)).toBeDefined();

    // Nothing corrupted: everything anchors and verifies; the store survives a restart.
    await eventually(async () => {
      const status = runCli(['chain', 'status', '--json'], env);
      if (status.status !== 0) throw new Error(status.stderr);
      return (JSON.parse(status.stdout) as { anchoring: { pending: number } }).anchoring.pending === 0 ? true : undefined;
    }, 60_000, 'chain status: 0 pending', 1000);
    expect(await server.stop()).toBe(0);
    server = await startServer(env);
    expect(await observationsOf(server.origin, patient)).toHaveLength(48);
    const verify = runCli(['verify', '--patient', patient], env);
    expect(verify.stdout).toMatch(/, 0 failed/);
    expect(verify.status).toBe(0);
    console.info(`after freeing space: 48 of 48 acknowledged readings present; verify: ${verify.stdout.trim()}`);
  }, 240_000);
});
