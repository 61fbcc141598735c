/** The ledger's nonce manager against the embedded node: concurrent sends, failures, foreign nonces. */
import { afterAll, beforeAll, expect, it } from '@jest/globals';
import { Wallet, ZeroHash, id } from 'ethers';
import { NonceManager, waitForReceipt } from '../../src/ledger/nonce.js';
import { ChainClient } from '../../src/ledger/client.js';
import { sendWithNonceRetry } from '../../src/ledger/consent-registry.js';
import { resourceAnchorAt } from '../../src/ledger/contracts.generated.js';
import { waitForReceipt as pollReceipt } from '../../src/ledger/rpc.js';
import { startTestChain, type TestChain } from './helpers.js';

let t: TestChain;
beforeAll(async () => {
  t = await startTestChain();
});
afterAll(async () => t.stop());

it('concurrent sends get distinct, gap-free nonces and all land', async () => {
  const manager = new NonceManager(t.authority);
  const start = await t.provider.getTransactionCount(t.authority.address);
  const sent = await Promise.all(Array.from({ length: 12 }, () => manager.send({ to: t.authority.address, value: 0n })));
  expect(sent.map((tx) => tx.nonce).sort((a, b) => a - b)).toEqual(Array.from({ length: 12 }, (_, i) => start + i));
  const receipts = await Promise.all(sent.map((tx) => waitForReceipt(t.provider, tx.hash, 10_000)));
  expect(receipts.every((r) => r.status === 1)).toBe(true);
  expect(await t.provider.getTransactionCount(t.authority.address)).toBe(start + 12);
});

it('a send refused by the node leaves no gap; typed bindings encode the call', async () => {
  const manager = new NonceManager(t.authority);
  const anchor = resourceAnchorAt(t.chain.deployment.ResourceAnchor, t.provider);
  const seq = await anchor.nextSeq(t.authority.address);
  const bad = await anchor.anchor.populateTransaction(ZeroHash, 1n, seq, seq);
  await expect(manager.send(bad)).rejects.toMatchObject({ code: 'CALL_EXCEPTION' });
  const good = await anchor.anchor.populateTransaction(id('nonce-manager'), 1n, seq, seq);
  const tx = await manager.send(good);
  expect((await waitForReceipt(t.provider, tx.hash, 10_000)).status).toBe(1);
  expect((await anchor.getBatch(await anchor.batchCount())).merkleRoot).toBe(id('nonce-manager'));
  expect(await t.provider.getTransactionCount(t.authority.address, 'pending')).toBe(tx.nonce + 1);
});

it('recovers when another sender used the account\'s next nonce', async () => {
  const manager = new NonceManager(t.authority);
  await waitForReceipt(t.provider, (await manager.send({ to: t.authority.address, value: 0n })).hash, 10_000);
  // the same key used elsewhere (another replica, a restart) behind the manager's back
  const other = new Wallet(t.authority.privateKey, t.provider);
  await (await other.sendTransaction({ to: other.address, value: 0n })).wait();
  const tx = await manager.send({ to: t.authority.address, value: 0n });
  expect((await waitForReceipt(t.provider, tx.hash, 10_000)).status).toBe(1);
});

it('waiting for a receipt that never comes times out', async () => {
  await expect(waitForReceipt(t.provider, id('never sent'), 300)).rejects.toMatchObject({ code: 'TIMEOUT' });
});

it('a transaction replaced in the pool by another holder of the key is sent again, not waited for until the timeout', async () => {
  // a block period, so sent transactions wait in the pool where a higher fee can replace them
  const slow = await startTestChain({ blockPeriod: 1 });
  const clientOf = () => new ChainClient({
    rpcUrl: slow.chain.rpcUrl, chainId: 31337, authorityKey: slow.authority.privateKey, addresses: slow.chain.deployment, adapter: 'embedded',
  });
  const a = clientOf();
  const b = clientOf();
  try {
    // b learns the next nonce, then a sends with it: b's manager still expects it
    await b.authority.sendTransaction({ to: slow.authority.address, value: 0n });
    const replacedNonce = await slow.provider.getTransactionCount(slow.authority.address, 'pending');
    let first: { hash: string; nonce: number } | undefined;
    const relayed = sendWithNonceRetry(a, async () => {
      const tx = await a.authority.sendTransaction({ to: slow.authority.address, value: 1n });
      first ??= { hash: tx.hash, nonce: tx.nonce };
      return tx;
    }, 15_000);
    while (!first) await new Promise((r) => setTimeout(r, 10));
    expect(first.nonce).toBe(replacedNonce);
    // b sends another transaction with the same nonce and ten times the fee: the node replaces a's
    const fee = await slow.provider.getFeeData();
    const rival = await b.authority.sendTransaction({ to: slow.authority.address, value: 2n, maxFeePerGas: fee.maxFeePerGas! * 10n, maxPriorityFeePerGas: fee.maxPriorityFeePerGas! * 10n });
    expect(rival.nonce).toBe(replacedNonce);
    const mined = await relayed;
    expect(mined.hash).not.toBe(first.hash);
    const tx = await slow.provider.getTransaction(mined.hash);
    expect(tx).toMatchObject({ value: 1n });
    expect(tx!.nonce).toBeGreaterThan(replacedNonce);
    expect(await slow.provider.getTransactionReceipt(first.hash)).toBeNull();
  } finally {
    await a.close();
    await b.close();
    await slow.stop();
  }
}, 30_000);

it('waiting with the sender and nonce reports a replaced transaction', async () => {
  const slow = await startTestChain({ blockPeriod: 1 });
  try {
    const wallet = new Wallet(slow.authority.privateKey, slow.provider);
    const fee = await slow.provider.getFeeData();
    let nonce: number;
    let mine: { hash: string };
    for (let attempt = 1; ; attempt++) {
      nonce = await slow.provider.getTransactionCount(wallet.address, 'pending');
      mine = await wallet.sendTransaction({ to: wallet.address, value: 1n, nonce, maxFeePerGas: fee.maxFeePerGas!, maxPriorityFeePerGas: fee.maxPriorityFeePerGas! });
      try {
        await wallet.sendTransaction({ to: wallet.address, value: 2n, nonce, maxFeePerGas: fee.maxFeePerGas! * 10n, maxPriorityFeePerGas: fee.maxPriorityFeePerGas! * 10n });
        break;
      } catch (err) {
        // a block sealed between the two sends and took the first: nothing was replaced, set it up again
        if ((err as { code?: string }).code !== 'NONCE_EXPIRED' || attempt >= 5) throw err;
      }
    }
    await expect(pollReceipt(slow.provider, mine.hash, { timeoutMs: 15_000, pollMs: 50, sender: wallet.address, nonce }))
      .rejects.toMatchObject({ code: 'ERR_TX_REPLACED', nonce });
  } finally {
    await slow.stop();
  }
}, 30_000);
