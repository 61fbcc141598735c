/** The ledger's nonce manager against the embedded node: concurrent sends, failures, foreign nonces. */
import { afterAll, beforeAll, expect, it } from '@jest/globals';
import { Wallet, ZeroHash, id } from 'ethers';
import { NonceManager, waitForReceipt } from '../../src/ledger/nonce.js';
import { resourceAnchorAt } from '../../src/ledger/contracts.generated.js';
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
