/**
 * The embedded Clique node as a JSON-RPC peer: the methods ethers and operators use, batches, errors
 * with revert data, sealing modes, Clique signer rules, and durability across restarts.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { buildBlock } from '@ethereumjs/vm';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { Contract, Wallet, ZeroHash, id, type JsonRpcProvider } from 'ethers';
import { loadAuthorityKey, readDeployment, startEmbeddedChain } from '../../chain/node/index.js';
import { ChainNode } from '../../chain/node/node.js';
import { providerFor, revertOf, rpc, startTestChain, tempDir, type TestChain } from './helpers.js';

async function signedTransfer(w: Wallet, provider: JsonRpcProvider, nonce: number, to = w.address): Promise<string> {
  const fee = await provider.getFeeData();
  return w.signTransaction({
    type: 2, chainId: (await provider.getNetwork()).chainId, nonce, to, value: 1n, gasLimit: 21_000n,
    maxFeePerGas: fee.maxFeePerGas!, maxPriorityFeePerGas: 0n,
  });
}

describe('JSON-RPC', () => {
  let t: TestChain;
  let anchor: Contract;
  let anchorTx: { hash: string; blockNumber: number; blockHash: string };

  beforeAll(async () => {
    t = await startTestChain();
    anchor = t.contract('ResourceAnchor');
    const receipt = await (await anchor.anchor(id('rpc-root'), 2, 0, 1)).wait();
    anchorTx = { hash: receipt.hash, blockNumber: receipt.blockNumber, blockHash: receipt.blockHash };
  });
  afterAll(async () => t.stop());

  it('answers chain id, network version and block number', async () => {
    expect(await rpc(t.chain.rpcUrl, { jsonrpc: '2.0', id: 1, method: 'eth_chainId', params: [] })).toEqual({ jsonrpc: '2.0', id: 1, result: '0x7a69' });
    expect((await rpc(t.chain.rpcUrl, { jsonrpc: '2.0', id: 2, method: 'net_version' })).result).toBe('31337');
    expect(await t.provider.getBlockNumber()).toBeGreaterThanOrEqual(anchorTx.blockNumber);
  });

  it('serves blocks by number, tag and hash, with transactions as hashes or objects', async () => {
    const byNumber = await t.provider.getBlock(anchorTx.blockNumber, true);
    expect(byNumber!.hash).toBe(anchorTx.blockHash);
    expect(byNumber!.prefetchedTransactions.map((tx) => tx.hash)).toContain(anchorTx.hash);
    const byHash = await t.provider.getBlock(anchorTx.blockHash);
    expect(byHash!.number).toBe(anchorTx.blockNumber);
    expect(byHash!.transactions).toContain(anchorTx.hash);
    expect(byHash!.miner).toBe('0x0000000000000000000000000000000000000000');
    expect(byHash!.baseFeePerGas).not.toBeNull();
    expect((await t.provider.getBlock('earliest'))!.number).toBe(0);
    expect(await t.provider.getBlock(10_000_000)).toBeNull();
    expect(await t.provider.getBlock(ZeroHash.replace(/0$/, '1'))).toBeNull();
  });

  it('reads balances, code, storage and nonces (latest, pending and historical)', async () => {
    expect(await t.provider.getBalance(t.authority.address)).toBeGreaterThan(10n ** 20n);
    expect(await t.provider.getCode(t.chain.deployment.ResourceAnchor)).toMatch(/^0x60806040/);
    expect(await t.provider.getCode(t.chain.deployment.ResourceAnchor, 0)).toBe('0x');
    // slot 1 holds _batches.length (slot 0 is AccessControl's _roles mapping)
    expect(BigInt(await t.provider.getStorage(t.chain.deployment.ResourceAnchor, 1))).toBe(await anchor.batchCount());
    const latest = await t.provider.getTransactionCount(t.authority.address, 'latest');
    expect(await t.provider.getTransactionCount(t.authority.address, 'pending')).toBe(latest);
    expect(await t.provider.getTransactionCount(t.authority.address, 0)).toBe(0);
  });

  it('suggests fees and reports fee history', async () => {
    const fee = await t.provider.getFeeData();
    expect(fee.gasPrice).toBeGreaterThan(0n);
    expect(fee.maxPriorityFeePerGas).toBe(0n);
    const history = await t.provider.send('eth_feeHistory', ['0x3', 'latest', [50]]);
    expect(history.baseFeePerGas).toHaveLength(4);
    expect(history.gasUsedRatio).toHaveLength(3);
    expect(history.reward).toHaveLength(3);
  });

  it('estimates gas that is enough for the transaction', async () => {
    const next = await anchor.nextSeq(t.authority.address);
    const gas = await anchor.anchor.estimateGas(id('est'), 1, next, next);
    expect(gas).toBeGreaterThan(21_000n);
    const receipt = await (await anchor.anchor(id('est'), 1, next, next, { gasLimit: gas })).wait();
    expect(receipt.status).toBe(1);
    expect(receipt.gasUsed).toBeLessThanOrEqual(gas);
  });

  it('returns transactions and receipts with logs by hash', async () => {
    const tx = await t.provider.getTransaction(anchorTx.hash);
    expect([tx!.from, tx!.to, tx!.blockNumber]).toEqual([t.authority.address, t.chain.deployment.ResourceAnchor, anchorTx.blockNumber]);
    const receipt = await t.provider.getTransactionReceipt(anchorTx.hash);
    expect(receipt!.status).toBe(1);
    expect(receipt!.logs).toHaveLength(1);
    expect(anchor.interface.parseLog(receipt!.logs[0]!)!.name).toBe('BatchAnchored');
    expect(await t.provider.getTransactionReceipt(id('unknown tx'))).toBeNull();
    expect(await t.provider.getTransaction(id('unknown tx'))).toBeNull();
  });

  it('filters logs by block range, address, topics and block hash', async () => {
    const topic = anchor.interface.getEvent('BatchAnchored')!.topicHash;
    const all = await t.provider.getLogs({ fromBlock: 0, toBlock: 'latest', address: t.chain.deployment.ResourceAnchor });
    expect(all.length).toBeGreaterThanOrEqual(1);
    const byRoot = await t.provider.getLogs({ fromBlock: 0, topics: [topic, null, id('rpc-root')] });
    expect(byRoot.map((l) => l.transactionHash)).toEqual([anchorTx.hash]);
    expect(await t.provider.getLogs({ fromBlock: 0, topics: [topic, null, id('no such root')] })).toEqual([]);
    expect(await t.provider.getLogs({ fromBlock: 0, address: t.chain.deployment.ConsentRegistry, topics: [topic] })).toEqual([]);
    // the constructors' RoleGranted events are there too
    expect((await t.provider.getLogs({ fromBlock: 0, address: t.chain.deployment.ConsentRegistry })).length).toBe(2);
    expect((await t.provider.getLogs({ blockHash: anchorTx.blockHash })).map((l) => l.transactionHash)).toEqual([anchorTx.hash]);
    expect(await t.provider.getLogs({ fromBlock: anchorTx.blockNumber + 1000, toBlock: anchorTx.blockNumber + 2000 })).toEqual([]);
  });

  it('answers a JSON-RPC batch in order, with per-request errors', async () => {
    const res = await rpc(t.chain.rpcUrl, [
      { jsonrpc: '2.0', id: 'a', method: 'eth_chainId', params: [] },
      { jsonrpc: '2.0', id: 'b', method: 'eth_noSuchMethod', params: [] },
      { jsonrpc: '2.0', id: 'c', method: 'eth_getBalance', params: ['not an address', 'latest'] },
      { jsonrpc: '2.0', method: 'eth_blockNumber', params: [] },
      { jsonrpc: '2.0', id: 'd', method: 'eth_blockNumber', params: [] },
    ]);
    expect(res.map((r: { id: string }) => r.id)).toEqual(['a', 'b', 'c', 'd']);
    expect(res[0].result).toBe('0x7a69');
    expect(res[1].error.code).toBe(-32601);
    expect(res[2].error.code).toBe(-32602);
    expect(res[3].result).toMatch(/^0x[0-9a-f]+$/);
  });

  it('answers malformed requests with JSON-RPC errors', async () => {
    const bad = await fetch(t.chain.rpcUrl, { method: 'POST', body: '{not json' });
    expect((await bad.json()).error.code).toBe(-32700);
    expect((await rpc(t.chain.rpcUrl, { id: 1, method: 'eth_chainId' })).error.code).toBe(-32600);
    expect((await rpc(t.chain.rpcUrl, [])).error.code).toBe(-32600);
    expect((await fetch(t.chain.rpcUrl)).status).toBe(405);
  });

  it('returns reverts as code 3 with the revert data, which ethers decodes into the custom error', async () => {
    const data = anchor.interface.encodeFunctionData('anchor', [ZeroHash, 1, 0, 0]);
    const res = await rpc(t.chain.rpcUrl, { jsonrpc: '2.0', id: 1, method: 'eth_call', params: [{ from: t.authority.address, to: t.chain.deployment.ResourceAnchor, data }, 'latest'] });
    expect(res.error).toEqual({ code: 3, message: 'execution reverted', data: anchor.interface.getError('ResourceAnchorEmptyRoot')!.selector });
    const est = await rpc(t.chain.rpcUrl, { jsonrpc: '2.0', id: 2, method: 'eth_estimateGas', params: [{ from: t.authority.address, to: t.chain.deployment.ResourceAnchor, data }] });
    expect(est.error.code).toBe(3);
    expect((await revertOf(() => anchor.anchor.staticCall(ZeroHash, 1, 0, 0))).name).toBe('ResourceAnchorEmptyRoot');
  });

  it('rejects transactions with a stale nonce, no funds, or a second copy', async () => {
    const nonce = await t.provider.getTransactionCount(t.authority.address);
    const stale = await signedTransfer(t.authority, t.provider, nonce - 1);
    const low = await rpc(t.chain.rpcUrl, { jsonrpc: '2.0', id: 1, method: 'eth_sendRawTransaction', params: [stale] });
    expect(low.error.code).toBe(-32000);
    expect(low.error.message).toMatch(/nonce too low/);
    await expect(t.provider.broadcastTransaction(stale)).rejects.toMatchObject({ code: 'NONCE_EXPIRED' });

    const pauper = Wallet.createRandom().connect(t.provider);
    const broke = await signedTransfer(pauper as never, t.provider, 0);
    await expect(t.provider.broadcastTransaction(broke)).rejects.toMatchObject({ code: 'INSUFFICIENT_FUNDS' });

    const ok = await signedTransfer(t.authority, t.provider, nonce);
    await (await t.provider.broadcastTransaction(ok)).wait();
    const again = await rpc(t.chain.rpcUrl, { jsonrpc: '2.0', id: 1, method: 'eth_sendRawTransaction', params: [ok] });
    expect(again.error.message).toMatch(/already known|nonce too low/);
  });

  it('lists the Clique signers: the node key only', async () => {
    expect(await t.provider.send('clique_getSigners', [])).toEqual([t.chain.signerAddress]);
    expect(t.chain.signerAddress).toBe(new Wallet(loadAuthorityKey(t.dir)).address.toLowerCase());
  });
});

describe('sealing', () => {
  it('caps the transactions per block', async () => {
    const t = await startTestChain({ maxTxsPerBlock: 2 });
    try {
      const nonce = await t.provider.getTransactionCount(t.authority.address);
      const raws = await Promise.all([0, 1, 2, 3, 4].map((i) => signedTransfer(t.authority, t.provider, nonce + i)));
      const sent = await Promise.all(raws.map((raw) => t.provider.broadcastTransaction(raw)));
      const receipts = await Promise.all(sent.map((tx) => tx.wait()));
      expect(receipts.every((r) => r!.status === 1)).toBe(true);
      const perBlock = new Map<number, number>();
      for (const r of receipts) perBlock.set(r!.blockNumber, (perBlock.get(r!.blockNumber) ?? 0) + 1);
      expect(Math.max(...perBlock.values())).toBeLessThanOrEqual(2);
      expect(perBlock.size).toBeGreaterThanOrEqual(3);
    } finally {
      await t.stop();
    }
  });

  it('with a period, seals at most one block per period and answers sends before sealing', async () => {
    // 2 s: wide enough that a loaded CI machine still sends both transactions within one period
    const t = await startTestChain({ blockPeriod: 2 });
    try {
      const nonce = await t.provider.getTransactionCount(t.authority.address);
      const raws = await Promise.all([0, 1, 2].map((i) => signedTransfer(t.authority, t.provider, nonce + i)));
      const first = await (await t.provider.broadcastTransaction(raws[0]!)).wait(); // idle chain: sealed at once
      const rest = await Promise.all([t.provider.broadcastTransaction(raws[1]!), t.provider.broadcastTransaction(raws[2]!)]);
      // answered before sealing: the next block may not come before a period has passed
      expect(await t.provider.getTransactionReceipt(rest[1]!.hash)).toBeNull();
      expect((await t.provider.getTransaction(rest[1]!.hash))!.blockNumber).toBeNull();
      expect(await t.provider.getTransactionCount(t.authority.address, 'pending')).toBe(nonce + 3);
      const receipts = await Promise.all(rest.map((tx) => tx.wait()));
      // both waited for the next period and went into the same block
      expect(receipts[0]!.blockNumber).toBe(receipts[1]!.blockNumber);
      expect(receipts[0]!.blockNumber).toBe(first!.blockNumber + 1);
      const [a, b] = await Promise.all([t.provider.getBlock(first!.blockNumber), t.provider.getBlock(receipts[0]!.blockNumber)]);
      expect(b!.timestamp - a!.timestamp).toBeGreaterThanOrEqual(2);
    } finally {
      await t.stop();
    }
  });

  it('refuses a block sealed by a key that is not a Clique signer', async () => {
    const dir = tempDir();
    const node = await ChainNode.open({ dataDir: dir, blockPeriod: 0, chainId: 31337 });
    try {
      const head = node.head;
      const builder = await buildBlock(node.vm, {
        parentBlock: head,
        headerData: { number: head.header.number + 1n, timestamp: head.header.timestamp + 1n, difficulty: 1n, extraData: new Uint8Array(97) },
        blockOpts: { cliqueSigner: new Uint8Array(randomBytes(32)), putBlockIntoBlockchain: false },
      });
      const { block } = await builder.build();
      expect(ChainNode.blockSigner(block)).not.toBe(node.signer.toString());
      await expect(node.blockchain.putBlock(block)).rejects.toThrow(/invalid PoA block signature/);
      expect((await node.blockchain.getCanonicalHeadBlock()).hash()).toEqual(head.hash());
    } finally {
      await node.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('adds a signer voted in with clique_propose', async () => {
    const t = await startTestChain();
    try {
      const candidate = Wallet.createRandom().address.toLowerCase();
      expect(await t.provider.send('clique_propose', [candidate, true])).toBeNull();
      await (await t.authority.sendTransaction({ to: t.authority.address, value: 0n })).wait();
      expect(await t.provider.send('clique_getSigners', ['latest'])).toEqual([t.chain.signerAddress, candidate].sort());
    } finally {
      await t.stop();
    }
  });
});

describe('data directory', () => {
  it('keeps the signer key private and records the deployment', async () => {
    const t = await startTestChain();
    try {
      const keyFile = path.join(t.dir, 'chain', 'signer.key');
      expect(statSync(keyFile).mode & 0o777).toBe(0o600);
      expect(readDeployment(t.dir)!.contracts).toEqual(t.chain.deployment);
      expect(readDeployment(t.dir)!.signer).toBe(t.chain.signerAddress);
      expect(existsSync(path.join(t.dir, 'chain', 'genesis.json'))).toBe(true);
      const genesis = JSON.parse(readFileSync(path.join(t.dir, 'chain', 'genesis.json'), 'utf8'));
      expect(genesis.config.clique).toEqual({ period: 0, epoch: 30000 });
    } finally {
      await t.stop();
    }
  });

  it('after a restart keeps head, state, receipts and logs, and the same contracts', async () => {
    const t = await startTestChain();
    const anchor = t.contract('ResourceAnchor');
    const receipt = await (await anchor.anchor(id('before restart'), 1, 0, 0)).wait();
    const head = await t.provider.getBlock('latest');
    const logs = await t.provider.getLogs({ fromBlock: 0, address: t.chain.deployment.ResourceAnchor });
    const deployment = t.chain.deployment;
    await t.stop({ keepDir: true });

    const again = await startTestChain({ dataDir: t.dir });
    try {
      expect(again.chain.deployment).toEqual(deployment);
      expect((await again.provider.getBlock('latest'))!.hash).toBe(head!.hash);
      expect((await again.provider.getTransactionReceipt(receipt.hash))!.blockHash).toBe(receipt.blockHash);
      expect(await again.provider.getLogs({ fromBlock: 0, address: deployment.ResourceAnchor })).toEqual(logs.map((l) => expect.objectContaining({ transactionHash: l.transactionHash, data: l.data })));
      const anchor2 = again.contract('ResourceAnchor');
      expect(await anchor2.batchCount()).toBe(1n);
      await (await anchor2.anchor(id('after restart'), 1, 1, 1)).wait();
      expect(await anchor2.batchCount()).toBe(2n);
    } finally {
      await again.stop();
    }
  });

  it('refuses to open a data directory of another chain id', async () => {
    const t = await startTestChain();
    await t.stop({ keepDir: true });
    await expect(startEmbeddedChain({ dataDir: t.dir, port: 0, blockPeriod: 0, chainId: 999 })).rejects.toThrow(/chain id 31337, not 999/);
    const again = await startTestChain({ dataDir: t.dir });
    expect(await again.provider.getBlockNumber()).toBeGreaterThan(0);
    await again.stop();
  });

  it('providers configured like the proxy see every new block at once', async () => {
    const t = await startTestChain();
    try {
      const p = providerFor(t.chain);
      const before = await p.getBlockNumber();
      await (await t.authority.sendTransaction({ to: t.authority.address, value: 0n })).wait();
      expect(await p.getBlockNumber()).toBe(before + 1);
      p.destroy();
    } finally {
      await t.stop();
    }
  });
});
