/**
 * Operator commands as run from the built bin: `glucoguard verify` prints counts and each failure
 * (exit 1 when one fails), `glucoguard chain status` shows chain id, head, contracts and anchoring,
 * `glucoguard chain deploy` deploys the three contracts to a node and writes the deployment JSON,
 * `glucoguard chain authority grant|revoke` adds or removes an authority (a replica's own account).
 */
import { spawn, spawnSync } from 'node:child_process';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import Database from 'better-sqlite3';
import { Wallet, id } from 'ethers';
import request from 'supertest';
import { PACKAGE_ROOT } from '../../src/paths.js';
import { canonicalResourceText } from '../../src/ledger/canonical.js';
import { seal } from '../../src/repository/embedded/keys.js';
import { keyRingOf } from '../support/tamper.js';
import { startTestApp, tempDir } from '../support/app.js';
import { startTestChain } from '../chain/helpers.js';

const BIN = path.join(PACKAGE_ROOT, 'bin/glucoguard.js');
const dataDir = tempDir('gg-ledger-cli-');
const env = { ...process.env, GLUCOGUARD_DATA_DIR: dataDir, GLUCOGUARD_AUTH: 'off', LOG_LEVEL: 'warn', CHAIN_PORT: '0', CHAIN_BLOCK_PERIOD: '0' };
const run = (...args: string[]) => spawnSync(process.execPath, [BIN, ...args], { env, encoding: 'utf8' });

/** Runs the bin asynchronously: the node answering the child runs in this process's event loop. */
function cli(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], { env });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

let victim = '';
let bystander = '';
beforeAll(async () => {
  const build = spawnSync(process.execPath, [path.join(PACKAGE_ROOT, 'scripts/build.mjs')], { cwd: PACKAGE_ROOT, encoding: 'utf8' });
  if (build.status !== 0 && /^src\//m.test(`${build.stdout}${build.stderr}`)) throw new Error(`npm run build failed:\n${build.stdout}\n${build.stderr}`);
  const t = await startTestApp({}, dataDir);
  for (const family of ['Victim', 'Bystander']) {
    const res = await request(t.app.http).post('/fhir/Patient').set('content-type', 'application/fhir+json').send({ resourceType: 'Patient', name: [{ family }] });
    if (family === 'Victim') victim = res.body.id; else bystander = res.body.id;
  }
  // the access log's events for those requests are written within its window (50 ms): store them
  // first, so that everything written is anchored before the commands run (else `chain status` may
  // find the two AuditEvents still pending, depending on timing)
  await t.app.consent.audit.flush();
  await t.app.ledger.anchorer.flush();
  await t.app.close();
  // change the victim's stored body with the store's own keys
  const db = new Database(path.join(dataDir, 'store', 'glucoguard.db'));
  const keys = keyRingOf(db, dataDir);
  const body = seal(keys.keyFor(victim).key, Buffer.from(canonicalResourceText({ resourceType: 'Patient', id: victim, name: [{ family: 'Forged' }] })), `Patient/${victim}/1`);
  db.prepare("UPDATE versions SET body = ? WHERE type = 'Patient' AND id = ? AND version = 1").run(body, victim);
  db.close();
}, 240_000);
afterAll(() => rmSync(dataDir, { recursive: true, force: true }));

describe('glucoguard verify', () => {
  test('reports the tampered version and exits 1', () => {
    const r = run('verify');
    expect(r.status).toBe(1);
    expect(r.stdout).toMatch(/checked \d+: \d+ verified/);
    expect(r.stdout).toContain(`FAILED Patient/${victim}/_history/1: content does not match its commitment`);
    expect(r.stdout).not.toContain(`Patient/${bystander}`);
  });

  test('--patient checks only that patient', () => {
    const r = run('verify', '--patient', bystander);
    expect(r.status).toBe(0);
    // the Patient and the access-log event of its creation, which names it (since session 24 a create's
    // AuditEvent names what it wrote, and an event is stored under the patient it is about)
    expect(r.stdout).toMatch(/^checked 2: 2 verified, 0 pending/);
  });

  test('with a chain port no node answers on, it starts its own node without ethers logging network retries', async () => {
    const port = await new Promise<number>((resolve) => {
      const server = createServer().listen(0, '127.0.0.1', () => {
        const { port: free } = server.address() as AddressInfo;
        server.close(() => resolve(free));
      });
    });
    const r = spawnSync(process.execPath, [BIN, 'verify', '--patient', bystander], { env: { ...env, CHAIN_PORT: String(port) }, encoding: 'utf8' });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^checked 2: 2 verified/); // as above
    expect(r.stdout + r.stderr).not.toMatch(/JsonRpcProvider|detect network/);
  });
});

describe('glucoguard verify that cannot pass', () => {
  test('on a directory with no installation (a mistyped path) it refuses with exit 2, as other commands do', () => {
    const empty = tempDir('gg-ledger-cli-empty-');
    try {
      const r = spawnSync(process.execPath, [BIN, 'verify'], { env: { ...env, GLUCOGUARD_DATA_DIR: empty }, encoding: 'utf8' });
      expect(r.status).toBe(2);
      expect(r.stderr).toContain(`no GlucoGuard data in ${empty}`);
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });

  test('with the chain unreachable, nothing failed but not everything was checked: exit 3, not 0', async () => {
    const port = await new Promise<number>((resolve) => {
      const server = createServer().listen(0, '127.0.0.1', () => {
        const { port: free } = server.address() as AddressInfo;
        server.close(() => resolve(free));
      });
    });
    const r = spawnSync(process.execPath, [BIN, 'verify', '--patient', bystander], {
      env: {
        ...env, CHAIN_RPC_URL: `http://127.0.0.1:${port}`,
        CHAIN_DEPLOYMENT_FILE: path.join(dataDir, 'chain', 'deployment.json'), CHAIN_AUTHORITY_KEY_FILE: path.join(dataDir, 'chain', 'signer.key'),
      },
      encoding: 'utf8',
    });
    expect(r.stdout).toMatch(/unverifiable now \(chain unreachable\)|chain unreachable/);
    expect(r.stdout).toContain('not everything could be checked');
    expect(r.status).toBe(3);
  });
});

describe('glucoguard chain', () => {
  test('status shows chain id, head, signers, contracts and anchoring', () => {
    const r = run('chain', 'status', '--json');
    expect(r.status).toBe(0);
    const s = JSON.parse(r.stdout);
    expect(s.chainId).toBe(1337);
    expect(s.head.number).toBeGreaterThan(0);
    expect(s.signers).toHaveLength(1);
    expect(s.contracts.ResourceAnchor).toMatch(/^0x[0-9a-fA-F]{40}$/);
    expect(s.anchoring).toMatchObject({ pending: 0 });
    expect(s.anchoring.anchored).toBeGreaterThanOrEqual(2);
    expect(s.onChain.batches).toBeGreaterThanOrEqual(1);
  });

  test('status as text: one column of labels wide enough for the contracts\' names', () => {
    const r = run('chain', 'status');
    expect(r.status).toBe(0);
    for (const label of ['chain id', 'head', 'signers', 'authority', 'ResourceAnchor', 'ConsentRegistry', 'IdentityRegistry', 'on chain', 'anchoring']) {
      expect(r.stdout).toMatch(new RegExp(`^${label.padEnd(18)}\\S`, 'm'));
    }
    expect(r.stdout).toMatch(/^on chain {10}\d+ batch(es)?, next sequence \d+$/m);
  });

  test('deploy puts the three contracts on a node and writes the deployment JSON; a re-run deploys nothing', async () => {
    const chain = await startTestChain();
    try {
      const keyFile = path.join(chain.dir, 'authority.key');
      writeFileSync(keyFile, chain.authority.privateKey);
      const out = path.join(chain.dir, 'deployment.json');
      // async spawn: the node answering the child runs in this process's event loop
      const deploy = () => cli(['chain', 'deploy', '--rpc', chain.chain.rpcUrl, '--key-file', keyFile, '--out', out]);
      const first = await deploy();
      expect(first.status).toBe(0);
      const record = JSON.parse(readFileSync(out, 'utf8'));
      expect(record).toMatchObject({ chainId: 31337, signer: chain.authority.address });
      for (const address of Object.values(record.contracts) as string[]) expect(await chain.provider.getCode(address)).not.toBe('0x');
      const anchor = chain.contract('ResourceAnchor');
      expect(await anchor.attach(record.contracts.ResourceAnchor).getFunction('nextSeq')(chain.authority.address)).toBe(0n);
      const second = await deploy();
      expect(second.status).toBe(0);
      expect(second.stderr).toMatch(/already at/);
      expect(JSON.parse(readFileSync(out, 'utf8')).contracts).toEqual(record.contracts);

      // a second replica with its own data directory gets its own authority: it anchors with its own sequence
      const replica = Wallet.createRandom().connect(chain.provider);
      await (await chain.authority.sendTransaction({ to: replica.address, value: 10n ** 18n })).wait();
      const replicaKeyFile = path.join(chain.dir, 'replica.key');
      writeFileSync(replicaKeyFile, `${replica.privateKey}\n`);
      const authority = (verb: string, ...who: string[]) => cli(['chain', 'authority', verb, '--rpc', chain.chain.rpcUrl, '--key-file', keyFile, '--deployment', out, ...who]);
      const granted = await authority('grant', '--authority-key-file', replicaKeyFile);
      expect(granted.status).toBe(0);
      expect(JSON.parse(granted.stdout)).toEqual({ authority: replica.address, ResourceAnchor: 'granted', ConsentRegistry: 'granted', IdentityRegistry: 'granted' });
      for (const name of ['ResourceAnchor', 'ConsentRegistry', 'IdentityRegistry'] as const) {
        const c = chain.contract(name).attach(record.contracts[name]) as typeof anchor;
        expect(await c.getFunction('hasRole')(await c.getFunction('AUTHORITY_ROLE')(), replica.address)).toBe(true);
      }
      const asReplica = anchor.attach(record.contracts.ResourceAnchor).connect(replica) as typeof anchor;
      await (await asReplica.getFunction('anchor')(id('replica batch'), 2n, 0n, 1n)).wait();
      expect(await asReplica.getFunction('nextSeq')(replica.address)).toBe(2n);
      expect(await asReplica.getFunction('nextSeq')(chain.authority.address)).toBe(0n);
      const again = await authority('grant', '--address', replica.address);
      expect(JSON.parse(again.stdout)).toMatchObject({ ResourceAnchor: 'unchanged', ConsentRegistry: 'unchanged', IdentityRegistry: 'unchanged' });
      expect((await authority('revoke', '--address', replica.address)).status).toBe(0);
      await expect(asReplica.getFunction('anchor').staticCall(id('after revoke'), 1n, 2n, 2n)).rejects.toThrow();
      const neither = await authority('grant');
      expect(neither.status).not.toBe(0);
      expect(neither.stderr).toMatch(/--address or --authority-key-file/);
    } finally {
      await chain.stop();
    }
  }, 90_000);
});
