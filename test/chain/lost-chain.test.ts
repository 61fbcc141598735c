/**
 * A data directory whose chain database was lost or replaced (found by exploratory testing, session
 * 21): the embedded node used to deploy the contracts afresh on an empty chain, say it was ready, and
 * fail every anchored version's integrity check from then on. Now it refuses to start, saying why.
 */
import { afterAll, expect, it } from '@jest/globals';
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startEmbeddedChain } from '../../chain/node/index.js';

const dataDir = mkdtempSync(path.join(tmpdir(), 'gg-lost-chain-'));
afterAll(() => rmSync(dataDir, { recursive: true, force: true }));

it('a chain database that no longer holds the recorded contracts is refused at start, not replaced', async () => {
  const first = await startEmbeddedChain({ dataDir, port: 0, blockPeriod: 0, chainId: 31337 });
  const deployed = first.deployment;
  await first.close();
  // the same start again is the same chain
  const again = await startEmbeddedChain({ dataDir, port: 0, blockPeriod: 0, chainId: 31337 });
  expect(again.deployment).toEqual(deployed);
  await again.close();

  rmSync(path.join(dataDir, 'chain', 'db'), { recursive: true, force: true });
  await expect(startEmbeddedChain({ dataDir, port: 0, blockPeriod: 0, chainId: 31337 }))
    .rejects.toThrow(/is not the chain .*deployment\.json records .*lost or replaced/);
}, 60_000);

it('a chain database copied from another installation beside this genesis is refused, saying so (not EthereumJS\'s "different hash")', async () => {
  const mine = mkdtempSync(path.join(tmpdir(), 'gg-lost-chain-mine-'));
  const theirs = mkdtempSync(path.join(tmpdir(), 'gg-lost-chain-theirs-'));
  try {
    for (const dir of [mine, theirs]) await (await startEmbeddedChain({ dataDir: dir, port: 0, blockPeriod: 0, chainId: 31337 })).close();
    rmSync(path.join(mine, 'chain', 'db'), { recursive: true, force: true });
    cpSync(path.join(theirs, 'chain', 'db'), path.join(mine, 'chain', 'db'), { recursive: true });
    await expect(startEmbeddedChain({ dataDir: mine, port: 0, blockPeriod: 0, chainId: 31337 }))
      .rejects.toThrow(`the embedded chain database ${path.join(mine, 'chain', 'db')} is not the chain of ${path.join(mine, 'chain', 'genesis.json')}`);
  } finally {
    rmSync(mine, { recursive: true, force: true });
    rmSync(theirs, { recursive: true, force: true });
  }
}, 60_000);
