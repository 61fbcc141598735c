/**
 * Restore drills through the built bin: the read-only commands (`verify`, `chain status`) never
 * create a chain, and refuse — exit 1, saying what is missing — a data directory restored without
 * `chain/` or without `ledger/`, as `serve` does; `chain status` on a copy that carries another
 * running installation's `chain/endpoint.json` shows the copy's own chain, not the other one.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import request from 'supertest';
import { PACKAGE_ROOT } from '../../src/paths.js';
import { startTestApp, tempDir } from '../support/app.js';
import { runCli, startServer } from '../support/process.js';

const dirs: string[] = [];
beforeAll(() => {
  const build = spawnSync('flock', ['/tmp/gg-build.lock', process.execPath, path.join(PACKAGE_ROOT, 'scripts/build.mjs')], { cwd: PACKAGE_ROOT, encoding: 'utf8' });
  if (build.status !== 0 && /^src\//m.test(`${build.stdout}${build.stderr}`)) throw new Error(`build failed:\n${build.stdout}\n${build.stderr}`);
}, 240_000);
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A data directory with data in it, everything anchored, the app closed. */
async function installation(prefix: string): Promise<string> {
  const dataDir = tempDir(prefix);
  dirs.push(dataDir);
  const t = await startTestApp({}, dataDir);
  const res = await request(t.app.http).post('/fhir/Patient').set('content-type', 'application/fhir+json').send({ resourceType: 'Patient', name: [{ family: 'Drill' }] });
  expect(res.status).toBe(201);
  await t.app.consent.audit.flush();
  await t.app.ledger.anchorer.flush();
  await t.app.close();
  return dataDir;
}

const env = (dataDir: string) => ({ GLUCOGUARD_DATA_DIR: dataDir, GLUCOGUARD_AUTH: 'off', LOG_LEVEL: 'warn' });

describe('restored without chain/', () => {
  it('verify, chain status and serve refuse, naming the missing chain, and create none', async () => {
    const dataDir = await installation('gg-drill-nochain-');
    rmSync(path.join(dataDir, 'chain'), { recursive: true, force: true });
    for (const args of [['verify'], ['chain', 'status'], ['serve']]) {
      const r = runCli(args, env(dataDir));
      expect({ args, status: r.status }).toEqual({ args, status: 1 });
      expect(r.stderr).toMatch(/glucoguard: .* holds resource versions .* but not the embedded chain they were made with: .*deployment\.json is missing\. Restore .*chain from the same backup/);
      expect(existsSync(path.join(dataDir, 'chain'))).toBe(false);
    }
  }, 180_000);

  it('chain status in a directory with no installation says so as every command does (exit 2), and creates nothing', () => {
    const dataDir = tempDir('gg-drill-empty-');
    dirs.push(dataDir);
    const r = runCli(['chain', 'status'], env(dataDir));
    expect(r.status).toBe(2);
    expect(r.stderr.trim().split('\n').pop()).toBe(`glucoguard: no GlucoGuard data in ${dataDir}; set GLUCOGUARD_DATA_DIR`);
    expect(existsSync(path.join(dataDir, 'chain'))).toBe(false);
  });

  it('chain status in an installation with no chain at all says so and creates none', () => {
    const dataDir = tempDir('gg-drill-nochain-');
    dirs.push(dataDir);
    // an installation of keys and SMART clients only: no command that opens the chain has run
    expect(runCli(['clients', 'add', '--name', 'X', '--public', '--redirect-uri', 'https://app.example/cb'], env(dataDir)).status).toBe(0);
    const r = runCli(['chain', 'status'], env(dataDir));
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/there is no embedded chain in .*this command never creates one/);
    expect(existsSync(path.join(dataDir, 'chain', 'deployment.json'))).toBe(false);
    expect(existsSync(path.join(dataDir, 'chain', 'signer.key'))).toBe(false);
  });
});

describe('restored without ledger/', () => {
  it('verify does not pass and chain status says so: exit 1, naming the missing commitment store', async () => {
    const dataDir = await installation('gg-drill-noledger-');
    rmSync(path.join(dataDir, 'ledger'), { recursive: true, force: true });
    const r = runCli(['verify'], env(dataDir));
    expect(r.status).toBe(1);
    expect(r.stdout).not.toMatch(/checked \d+/);
    expect(r.stderr).toMatch(/holds resource versions but the commitment store .*commitments\.db is missing/);
    // chain status says so too, and exits 1, instead of "no commitment store in this data directory yet"
    const status = runCli(['chain', 'status'], env(dataDir));
    expect(status.status).toBe(1);
    expect(status.stdout).toMatch(/^MISSING +.*holds resource versions but the commitment store .*commitments\.db is missing/m);
    expect(existsSync(path.join(dataDir, 'ledger', 'commitments.db'))).toBe(false);
  }, 120_000);
});

describe('a contract expecting another sequence than the store', () => {
  it('chain status shows anchoring STOPPED, and counts the waiting commitments in its lag', async () => {
    const dataDir = await installation('gg-drill-sequence-');
    const t = await startTestApp({}, dataDir);
    await t.app.consent.audit.flush();
    await t.app.ledger.anchorer.flush();
    // another store anchoring with this authority's key moves the contract's sequence on
    const anchor = t.app.chain.contract('ResourceAnchor');
    const next = Number(await anchor.nextSeq(t.app.chain.authorityAddress));
    await (await anchor.anchor(`0x${randomBytes(32).toString('hex')}`, 1, next, next)).wait();
    const res = await request(t.app.http).post('/fhir/Patient').set('content-type', 'application/fhir+json').send({ resourceType: 'Patient', name: [{ family: 'Stuck' }] });
    expect(res.status).toBe(201);
    await t.app.consent.audit.flush();
    await expect(t.app.ledger.anchorer.flush()).rejects.toMatchObject({ code: 'ERR_ANCHOR_SEQUENCE' });
    await t.app.close();
    const r = runCli(['chain', 'status', '--json'], env(dataDir));
    expect(r.status).toBe(0);
    const status = JSON.parse(r.stdout) as { anchoring: { pending: number; lagMs: number; stopped: string | null } };
    expect(status.anchoring.pending).toBeGreaterThan(0);
    expect(status.anchoring.lagMs).toBeGreaterThan(0); // the refused batch is prepared, not queued: counted all the same
    expect(status.anchoring.stopped).toMatch(/the contract expects sequence \d+/);
    expect(runCli(['chain', 'status'], env(dataDir)).stdout).toMatch(/^STOPPED +anchoring cannot go on: /m);
  }, 120_000);
});

describe('a copy carrying another running installation\'s endpoint.json', () => {
  it('chain status shows the copy\'s own chain', async () => {
    const otherDir = tempDir('gg-drill-other-');
    dirs.push(otherDir);
    const other = await startServer({ ...env(otherDir), LOG_LEVEL: 'info' });
    try {
      const dataDir = await installation('gg-drill-copy-');
      writeFileSync(path.join(dataDir, 'chain', 'endpoint.json'), readFileSync(path.join(otherDir, 'chain', 'endpoint.json')));
      const r = runCli(['chain', 'status', '--json'], env(dataDir));
      expect(r.status).toBe(0);
      const status = JSON.parse(r.stdout) as { contracts: Record<string, string>; rpc: string; anchoring: { pending: number; lagMs: number } };
      const own = JSON.parse(readFileSync(path.join(dataDir, 'chain', 'deployment.json'), 'utf8')) as { contracts: Record<string, string> };
      const theirs = JSON.parse(readFileSync(path.join(otherDir, 'chain', 'deployment.json'), 'utf8')) as { contracts: Record<string, string> };
      expect(status.contracts).toEqual(own.contracts);
      expect(status.contracts).not.toEqual(theirs.contracts);
      expect(status.anchoring).toMatchObject({ pending: 0, lagMs: 0 });
      // the other installation's file was set aside; the other server still has its own
      expect(existsSync(path.join(dataDir, 'chain', 'endpoint.json'))).toBe(false);
      expect(existsSync(path.join(otherDir, 'chain', 'endpoint.json'))).toBe(true);
    } finally {
      await other.stop();
    }
  }, 180_000);
});
