/**
 * The one authority signer: a transaction the node refuses (a revert found by gas estimation) must
 * not burn a nonce, or every later anchor would wait forever behind the gap.
 */
import { rmSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { Wallet, ZeroHash, id } from 'ethers';
import { loadAuthorityKey, startEmbeddedChain, type EmbeddedChain } from '../../../chain/node/index.js';
import { ChainClient } from '../../../src/ledger/client.js';
import { tempDir } from '../../support/app.js';

describe('authority signer', () => {
  const dataDir = tempDir('gg-signer-');
  let node: EmbeddedChain;
  let client: ChainClient;

  beforeAll(async () => {
    node = await startEmbeddedChain({ dataDir, port: 0, blockPeriod: 0, chainId: 1337 });
    client = new ChainClient({ rpcUrl: node.rpcUrl, chainId: node.chainId, authorityKey: loadAuthorityKey(dataDir), addresses: node.deployment, adapter: 'embedded' });
  }, 60_000);

  afterAll(async () => {
    await client?.close();
    await node?.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  test('a reverting send between good ones leaves no nonce gap', async () => {
    const anchor = client.contract('ResourceAnchor');
    const before = await client.provider.getTransactionCount(client.authorityAddress, 'latest');
    const good = () => client.authority.sendTransaction({ to: Wallet.createRandom().address, value: 0n });
    const results = await Promise.allSettled([good(), anchor.anchor!(ZeroHash, 1, 999, 999), good(), good()]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled', 'fulfilled']);
    const nonces = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value.nonce] : [])).sort((x, y) => x - y);
    expect(nonces).toEqual([before, before + 1, before + 2]);
    await Promise.all(results.flatMap((r) => (r.status === 'fulfilled' ? [r.value.wait()] : [])));
    const seq = Number(await anchor.nextSeq!(client.authorityAddress));
    const later = await anchor.anchor!(id(`root-later-${Date.now()}`), 1, seq, seq);
    expect((await later.wait()).status).toBe(1);
    expect(await client.provider.getTransactionCount(client.authorityAddress, 'latest')).toBe(before + 4);
  }, 60_000);
});
