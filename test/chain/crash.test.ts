/**
 * kill -9 of a node that is sealing: after restart every receipt the client saw is there, with its
 * logs and state, and the chain carries on. The node runs in a child process from the TypeScript
 * sources transpiled with SWC (the same transform jest uses), so the test needs no build step.
 */
import { afterAll, expect, it } from '@jest/globals';
import { transformFileSync } from '@swc/core';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { id } from 'ethers';
import { startTestChain, tempDir } from './helpers.js';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const cleanup: string[] = [];
afterAll(() => {
  for (const dir of cleanup) rmSync(dir, { recursive: true, force: true });
});

/** Transpiles chain/node/*.ts into a scratch directory inside the repo (so node_modules resolve). */
function buildChild(): string {
  mkdirSync(path.join(repo, '.tmp'), { recursive: true });
  const out = mkdtempSync(path.join(repo, '.tmp', 'chain-child-'));
  cleanup.push(out);
  const src = path.join(repo, 'chain', 'node');
  mkdirSync(path.join(out, 'chain', 'node'), { recursive: true });
  for (const file of readdirSync(src).filter((f) => f.endsWith('.ts'))) {
    const { code } = transformFileSync(path.join(src, file), {
      jsc: { parser: { syntax: 'typescript' }, target: 'es2022' }, module: { type: 'es6' }, swcrc: false,
    });
    writeFileSync(path.join(out, 'chain', 'node', file.replace(/\.ts$/, '.js')), code);
  }
  writeFileSync(path.join(out, 'child.mjs'), `
import { startEmbeddedChain, loadAuthorityKey, loadArtifact } from './chain/node/index.js';
import { Contract, JsonRpcProvider, Network, Wallet, id } from 'ethers';
const dataDir = process.argv[2];
const chain = await startEmbeddedChain({ dataDir, port: 0, blockPeriod: 0, chainId: 31337 });
const provider = new JsonRpcProvider(chain.rpcUrl, Network.from(31337), { staticNetwork: true, cacheTimeout: -1, batchMaxCount: 1 });
const anchor = new Contract(chain.deployment.ResourceAnchor, loadArtifact('ResourceAnchor').abi, new Wallet(loadAuthorityKey(dataDir), provider));
for (let i = 0; ; i++) {
  const receipt = await (await anchor.anchor(id('crash-' + i), 1, i, i)).wait();
  process.stdout.write(JSON.stringify({ i, hash: receipt.hash, block: receipt.blockNumber }) + '\\n');
}
`);
  return path.join(out, 'child.mjs');
}

it('after kill -9 while sealing, restarts with every acknowledged receipt, its logs and state', async () => {
  const script = buildChild();
  const dataDir = tempDir();
  cleanup.push(dataDir);
  const child = spawn(process.execPath, [script, dataDir], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const seen: { i: number; hash: string; block: number }[] = [];
  await new Promise<void>((resolve, reject) => {
    let buffer = '';
    child.stdout.on('data', (d) => {
      buffer += d;
      const lines = buffer.split('\n');
      buffer = lines.pop()!;
      for (const line of lines) seen.push(JSON.parse(line));
      if (seen.length >= 8) {
        child.kill('SIGKILL'); // while it is sending and sealing the next ones
        resolve();
      }
    });
    child.on('exit', (code, signal) => {
      if (signal !== 'SIGKILL') reject(new Error(`child exited early (${code}): ${stderr}`));
    });
  });
  await new Promise((r) => child.once('exit', r));

  const t = await startTestChain({ dataDir });
  try {
    const head = await t.provider.getBlockNumber();
    expect(head).toBeGreaterThanOrEqual(seen.at(-1)!.block);
    for (const s of seen) {
      const receipt = await t.provider.getTransactionReceipt(s.hash);
      expect([receipt?.status, receipt?.blockNumber, receipt?.logs.length]).toEqual([1, s.block, 1]);
    }
    const anchor = t.contract('ResourceAnchor');
    const count = Number(await anchor.batchCount());
    expect(count).toBeGreaterThanOrEqual(seen.length);
    const logs = await t.provider.getLogs({ fromBlock: 0, address: t.chain.deployment.ResourceAnchor, topics: [anchor.interface.getEvent('BatchAnchored')!.topicHash] });
    expect(logs).toHaveLength(count);
    // and it carries on from where the state is
    await (await anchor.anchor(id('after crash'), 1, count, count)).wait();
    expect(await anchor.batchCount()).toBe(BigInt(count + 1));
  } finally {
    await t.stop({ keepDir: true });
  }
});
