/**
 * Two processes sharing one data directory (replicas on one host) share its commitment store: only
 * the holder of the store's anchoring lease anchors, so no batch is sent twice and the replicas do
 * not race for the authority's nonces; the other takes over when the holder stops, or at once when
 * the holder's process has died.
 */
import { afterAll, beforeAll, expect, it } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { hostname } from 'node:os';
import { Anchorer } from '../../src/ledger/anchor.js';
import { ChainClient } from '../../src/ledger/client.js';
import { CommitmentStore } from '../../src/ledger/store.js';
import { startTestChain, type TestChain } from '../chain/helpers.js';
import { tempDir } from '../support/app.js';

let chain: TestChain;
const clients: ChainClient[] = [];
beforeAll(async () => {
  chain = await startTestChain();
});
afterAll(async () => {
  for (const c of clients) await c.close();
  await chain.stop();
});

/** A replica's view: its own connection to the store file and its own chain client (same authority key). */
function replica(file: string, leaseMs = 10_000): { store: CommitmentStore; anchorer: Anchorer; sends: () => number; told: number[] } {
  const client = new ChainClient({
    rpcUrl: chain.chain.rpcUrl, chainId: 31337, authorityKey: chain.authority.privateKey, addresses: chain.chain.deployment, adapter: 'embedded',
  });
  clients.push(client);
  let sent = 0;
  const send = client.authority.sendTransaction.bind(client.authority);
  client.authority.sendTransaction = (tx) => {
    sent++;
    return send(tx);
  };
  const store = new CommitmentStore(file);
  const told: number[] = [];
  const onAnchored = (batch: { id: number; status: string }): void => {
    expect(batch.status).toBe('anchored');
    told.push(batch.id);
  };
  return { store, anchorer: new Anchorer({ store, chain: client, maxLeaves: 4, maxDelayMs: 20, leaseMs, onAnchored }), sends: () => sent, told };
}

function commit(store: CommitmentStore, n: number): void {
  store.add(Array.from({ length: n }, () => {
    const id = randomBytes(8).toString('hex');
    return { type: 'Observation', id, version: '1', patient: 'p', salt: randomBytes(32), leaf: createHash('sha256').update(id).digest() };
  }));
}

async function waitUntil(cond: () => boolean, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 25));
  }
}

it('only the lease holder anchors a shared store; the other takes over when it stops', async () => {
  const file = path.join(tempDir(), 'commitments.db');
  const a = replica(file);
  const b = replica(file);
  a.anchorer.start();
  await waitUntil(() => a.store.leaseHolder() !== undefined);
  b.anchorer.start();
  commit(a.store, 10);
  commit(b.store, 10);
  await waitUntil(() => a.store.counts().pending === 0);
  expect(b.sends()).toBe(0);
  const anchor = chain.contract('ResourceAnchor');
  const batches = a.store.anchoredBatches();
  // every local batch anchored once: the contract holds exactly as many batches as the store
  expect(batches.length).toBeGreaterThanOrEqual(5);
  expect(Number(await anchor.batchCount())).toBe(batches.length);
  expect(a.sends()).toBe(batches.length);
  // the replica standing by is told of each batch the holder anchored, once (its ledger reads the roots ahead)
  const ids = batches.map((x) => x.id);
  await waitUntil(() => b.told.length >= ids.length, 5_000);
  expect(b.told).toEqual(ids);
  expect(a.told.sort((x, y) => x - y)).toEqual(ids);

  await a.anchorer.stop(); // a clean stop gives the lease up: b anchors from its next look
  commit(a.store, 6);
  await waitUntil(() => b.store.counts().pending === 0);
  expect(b.sends()).toBeGreaterThan(0);
  expect(Number(await anchor.batchCount())).toBe(b.store.anchoredBatches().length);
  await b.anchorer.stop();
  a.store.close();
  b.store.close();
}, 60_000);

it('a lease left by a process that died is taken at once; a live holder\'s is respected until it expires', async () => {
  const file = path.join(tempDir(), 'commitments.db');
  const store = new CommitmentStore(file);
  // a process that has exited: its pid no longer exists
  const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' }).stdout;
  store.setMeta('anchorer', `${hostname()}/${dead}/deadbeef ${Date.now() + 600_000}`);
  const r = replica(file);
  expect(r.anchorer.leads()).toBe(true);
  expect(r.store.leaseHolder()!.owner).toMatch(new RegExp(`^${hostname()}/${process.pid}/`));
  // a holder on another host (or alive here) keeps it until it expires
  store.setMeta('anchorer', `another-host/1/cafe ${Date.now() + 300}`);
  const other = replica(file, 1000);
  expect(other.anchorer.leads()).toBe(false);
  await new Promise((res) => setTimeout(res, 350));
  expect(other.anchorer.leads()).toBe(true);
  await other.anchorer.stop();
  expect(store.leaseHolder()).toBeUndefined();
  store.close();
  r.store.close();
  other.store.close();
});
