/**
 * Anchoring durability: commitments queued on disk are anchored after a restart; a batch sent just
 * before the process died is recognised on chain, not sent twice; versions written but not
 * recorded (crash between the two) are reconciled from history; with the chain unreachable the
 * queue holds and catches up later. Each time: every version anchored exactly once.
 */
import { afterAll, describe, expect, it } from '@jest/globals';
import request from 'supertest';
import type { Patient } from '@medplum/fhirtypes';
import { ChainClient } from '../../src/ledger/client.js';
import { Anchorer } from '../../src/ledger/anchor.js';
import { CommitmentStore } from '../../src/ledger/store.js';
import { AnchoredRepository } from '../../src/ledger/anchored-repository.js';
import { metrics } from '../../src/observability/metrics.js';
import type { Repository } from '../../src/repository/port.js';
import { buildMerkleTree } from '../../src/ledger/merkle.js';
import { startTestApp, tempDir, type TestApp } from '../support/app.js';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';

const apps: TestApp[] = [];
afterAll(async () => {
  for (const t of apps) await t.close();
});

async function createPatients(t: TestApp, n: number): Promise<Patient[]> {
  const out: Patient[] = [];
  for (let i = 0; i < n; i++) {
    const res = await request(t.app.http).post('/fhir/Patient').set('content-type', 'application/fhir+json')
      .send({ resourceType: 'Patient', name: [{ family: `Queue${i}` }] });
    expect(res.status).toBe(201);
    out.push(res.body as Patient);
  }
  return out;
}

/** On-chain view: number of batches, and the authority's next sequence number. */
async function chainState(t: TestApp): Promise<{ batches: number; nextSeq: number }> {
  const anchor = t.app.chain.contract('ResourceAnchor');
  return { batches: Number(await anchor.batchCount()), nextSeq: Number(await anchor.nextSeq(t.app.chain.authorityAddress)) };
}

async function waitUntil(cond: () => boolean | Promise<boolean>, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('anchoring queue', () => {
  it('anchors after a restart what was queued when the process stopped, each version once', async () => {
    const t = await startTestApp();
    apps.push(t);
    await t.app.ledger.anchorer.flush();
    const before = await chainState(t);
    const anchoredBefore = t.app.ledger.store.counts().anchored;
    await t.app.ledger.anchorer.stop(); // as if the process died before the batch window closed
    const patients = await createPatients(t, 3);
    for (const p of patients) expect(t.app.ledger.store.get('Patient', p.id!, '1')!.batch).toBeNull();
    await t.restart();
    await waitUntil(() => t.app.ledger.store.counts().pending === 0);
    for (const p of patients) expect(t.app.ledger.store.get('Patient', p.id!, '1')!.batch).not.toBeNull();
    const after = await chainState(t);
    // every leaf anchored once: the contract's sequence moved by exactly the number of new commitments
    expect(after.nextSeq - before.nextSeq).toBe(t.app.ledger.store.counts().anchored - anchoredBefore);
    expect(after.nextSeq - before.nextSeq).toBeGreaterThanOrEqual(3);
    const read = await request(t.app.http).get(`/fhir/Patient/${patients[0]!.id}`);
    expect(read.status).toBe(200);
    expect(read.body.meta.tag ?? []).toEqual([]);
  });

  it('recognises a batch whose transaction was sent just before the process died, and does not send it again', async () => {
    const t = await startTestApp();
    apps.push(t);
    await createPatients(t, 2);
    await t.app.ledger.anchorer.stop();
    // What the anchorer does before dying: prepare the batch locally, then broadcast its transaction.
    const store = t.app.ledger.store;
    const rows = store.unbatched(1000);
    const tree = buildMerkleTree(rows.map((r) => r.leaf));
    const batch = store.prepareBatch(rows[0]!.seq, rows[rows.length - 1]!.seq, tree, rows.map((r) => r.salt));
    const anchor = t.app.chain.contract('ResourceAnchor');
    const next = Number(await anchor.nextSeq(t.app.chain.authorityAddress));
    store.setMeta('seq_base', String(next));
    const tx = await anchor.anchor('0x' + tree.root.toString('hex'), rows.length, next, next + rows.length - 1);
    await tx.wait();
    const sent = await chainState(t);

    await t.restart();
    await waitUntil(() => t.app.ledger.store.batch(batch.id)!.status === 'anchored');
    const resolved = t.app.ledger.store.batch(batch.id)!;
    expect(resolved.tx).toBe(tx.hash);
    expect(await chainState(t)).toEqual(sent);
  });

  it('records versions written but not committed before a crash (reconciliation from history)', async () => {
    const t = await startTestApp();
    apps.push(t);
    await createPatients(t, 1);
    // The crash window: the repository stored the version, the process died before recording it.
    const { resource: lost } = await t.app.ledger.repository.adapter.create({ resourceType: 'Patient', name: [{ family: 'Lost' }] } as Patient);
    expect(t.app.ledger.store.get('Patient', lost.id!, '1')).toBeUndefined();
    await t.restart();
    expect(t.app.ledger.store.get('Patient', lost.id!, '1')).toBeDefined();
    await t.app.ledger.anchorer.flush();
    const read = await request(t.app.http).get(`/fhir/Patient/${lost.id}`);
    expect(read.status).toBe(200);
    expect(read.body.meta.tag ?? []).toEqual([]);
  });
  it('finds the unrecorded versions through the adapter\'s key listing, or, where it has none (as upstream), through history and the write intents', async () => {
    const t = await startTestApp();
    apps.push(t);
    await createPatients(t, 3);
    const adapter = t.app.ledger.repository.adapter;
    const store = t.app.ledger.store;
    // what an upstream adapter offers the ledger: no key listing, no stand-ins
    const upstreamLike = {
      description: adapter.description,
      history: (r: Parameters<Repository['history']>[0]) => adapter.history(r),
      create: (r: Patient) => adapter.create(r),
      update: (r: Patient) => adapter.update(r),
    } as unknown as Repository;
    for (const inner of [adapter, upstreamLike]) {
      // the crash window, twice: a new resource and a new version of it, neither recorded
      let lost: Patient;
      if (inner === adapter) {
        lost = (await adapter.create({ resourceType: 'Patient', name: [{ family: 'Lost' }] } as Patient)).resource;
        await adapter.update({ ...lost, gender: 'unknown' } as Patient);
      } else {
        // through the ledger, which records each write's intent before sending it upstream
        const writer = new AnchoredRepository(inner, store);
        store.add = () => { throw new Error('crashed before the record'); };
        try {
          // A record that fails no longer fails the write (it is stored: see the next test); the
          // versions wait for a retry that the crash (stopRetries) never lets happen.
          lost = (await writer.create({ resourceType: 'Patient', name: [{ family: 'LostUpstream' }] } as Patient)).resource;
          await writer.update({ ...lost, gender: 'unknown' } as Patient);
          expect(writer.unrecordedCount).toBe(2);
          writer.stopRetries();
        } finally {
          delete (store as { add?: unknown }).add;
        }
        expect(store.intents()).toHaveLength(2);
        // a version no intent accounts for (written there by someone else) is not adopted
        await adapter.create({ resourceType: 'Patient', name: [{ family: 'NotOurs' }] } as Patient);
      }
      const reconciling = new AnchoredRepository(inner, store);
      expect(await reconciling.reconcile(1)).toBe(2);
      expect(store.has('Patient', lost.id!, '1') && store.has('Patient', lost.id!, '2')).toBe(true);
      expect(reconciling.outside).toBe(inner === adapter ? 0 : 1);
      expect(store.intents()).toEqual([]);
      expect(await reconciling.reconcile(1)).toBe(0); // each version once
    }
  });
  it('a write whose commitment record fails is answered as written, not twice: served unverified, recorded again with back-off', async () => {
    const t = await startTestApp({ GLUCOGUARD_INTEGRITY: 'strict' });
    apps.push(t);
    await createPatients(t, 1);
    const store = t.app.ledger.store;
    const writer = t.app.ledger.repository;
    const auditBefore = (await t.app.ledger.repository.adapter.search({ resourceType: 'AuditEvent', count: 1000 })).resources.length;
    const realAdd = store.add.bind(store);
    let refused = 0;
    store.add = () => { refused++; throw new Error('database or disk is full'); };
    let created: Patient;
    try {
      const res = await request(t.app.http).post('/fhir/Patient').set('content-type', 'application/fhir+json')
        .send({ resourceType: 'Patient', name: [{ family: 'DiskFull' }] });
      expect(res.status).toBe(201); // it is stored: an error would have the client send it again
      created = res.body as Patient;
      expect(store.has('Patient', created.id!, '1')).toBe(false);
      // strict: a version without its commitment is withheld meanwhile, as after a crash
      expect((await request(t.app.http).get(`/fhir/Patient/${created.id}`)).status).toBe(404);
      expect(writer.unrecordedCount).toBeGreaterThanOrEqual(1);
      // a later write waits behind it, and the gauge counts both (it stayed at the first failure's count)
      await writer.create<Patient>({ resourceType: 'Patient', name: [{ family: 'DiskFullToo' }] });
      const gauge = (await metrics.queueDepth.get()).values.find((v) => v.labels.queue === 'unrecorded')?.value;
      expect(gauge).toBe(writer.unrecordedCount);
    } finally {
      store.add = realAdd;
    }
    expect(refused).toBeGreaterThanOrEqual(1);
    await waitUntil(() => writer.unrecordedCount === 0, 5_000); // the first retry comes after 1 s
    expect(store.has('Patient', created.id!, '1')).toBe(true);
    await t.app.ledger.anchorer.flush();
    const read = await request(t.app.http).get(`/fhir/Patient/${created.id}`);
    expect(read.status).toBe(200);
    expect(read.body.meta.tag ?? []).toEqual([]);
    // each access-log event stored once: none was retried as failed (they were written)
    await waitUntil(async () => (await t.app.ledger.repository.adapter.search({ resourceType: 'AuditEvent', count: 1000 })).resources.length >= auditBefore + 3);
    const events = (await t.app.ledger.repository.adapter.search({ resourceType: 'AuditEvent', count: 1000 })).resources;
    const keys = events.map((e) => JSON.stringify({ ...e, id: undefined, meta: undefined }));
    expect(new Set(keys).size).toBe(keys.length);
  });
  it('vouches only for a crash\'s tail: a version without a commitment among committed ones stays unverified', async () => {
    const t = await startTestApp();
    apps.push(t);
    await createPatients(t, 1);
    // a version with no commitment (as if its commitment row had been deleted), then a committed one after it
    const { resource: planted } = await t.app.ledger.repository.adapter.create({ resourceType: 'Patient', name: [{ family: 'Planted' }] } as Patient);
    await createPatients(t, 1);
    const reconciling = new AnchoredRepository(t.app.ledger.repository.adapter, t.app.ledger.store);
    expect(await reconciling.reconcile()).toBe(0);
    expect(reconciling.gaps).toBe(1);
    expect(t.app.ledger.store.has('Patient', planted.id!, '1')).toBe(false);
    // and after a restart (the start-up reconcile) it is served as unverified, never as verified
    await t.restart();
    expect(t.app.ledger.store.has('Patient', planted.id!, '1')).toBe(false);
    const read = await request(t.app.http).get(`/fhir/Patient/${planted.id}`);
    expect(read.status).toBe(200);
    expect((read.body as Patient).meta!.tag).toEqual([expect.objectContaining({ system: 'urn:glucoguard:integrity', code: 'unverified' })]);
  });
});

describe('chain unreachable', () => {
  it('keeps commitments queued while the node is down and anchors them once it answers again', async () => {
    const t = await startTestApp();
    apps.push(t);
    await t.app.ledger.anchorer.stop();
    const patients = await createPatients(t, 2);
    const dir = tempDir();
    const store = new CommitmentStore(path.join(dir, 'c.db'));
    try {
      // Same commitments, through an anchorer whose node is down (nothing listens on the port).
      for (const p of patients) {
        const r = t.app.ledger.store.get('Patient', p.id!, '1')!;
        store.add([{ type: 'Patient', id: p.id!, version: '1', patient: p.id, salt: r.salt, leaf: r.leaf }]);
      }
      const down = new ChainClient({
        rpcUrl: 'http://127.0.0.1:9', chainId: t.app.chain.chainId, authorityKey: '0x' + '11'.repeat(32), addresses: t.app.chain.addresses, adapter: 'rpc',
      });
      await expect(new Anchorer({ store, chain: down, receiptTimeoutMs: 1000, maxLeaves: 1 }).flush()).rejects.toBeDefined();
      await down.close();
      expect(store.counts()).toMatchObject({ commitments: 2, pending: 2 });

      // one leaf per batch: both batches go out before the first receipt (pipelined), mined in order
      const told: [number, string][] = [];
      await new Anchorer({ store, chain: t.app.chain, maxLeaves: 1, onAnchored: (b) => told.push([b.id, b.status]) }).flush();
      expect(store.counts()).toMatchObject({ commitments: 2, pending: 0, batches: 2 });
      expect(told).toEqual([[1, 'anchored'], [2, 'anchored']]); // each batch once its receipt is in
      const [b1, b2] = [store.batch(1)!, store.batch(2)!];
      expect(b2.chainBatchId).toBe(b1.chainBatchId! + 1);
    } finally {
      store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('pipelining', () => {
  it('sends a batch that closes while the previous one waits for its block, so both land in the same block', async () => {
    const t = await startTestApp({ CHAIN_BLOCK_PERIOD: '2' });
    apps.push(t);
    await t.app.ledger.anchorer.stop();
    const dir = tempDir();
    const store = new CommitmentStore(path.join(dir, 'c.db'));
    const anchorer = new Anchorer({ store, chain: t.app.chain, maxLeaves: 1 });
    const add = (id: string): void => {
      store.add([{ type: 'Observation', id, version: '1', patient: 'p', salt: randomBytes(32), leaf: randomBytes(32) }]);
      anchorer.notify();
    };
    try {
      anchorer.start();
      add('a');
      await waitUntil(() => store.batch(1)?.status === 'anchored');
      // the next block is at least 2 s away: batch 2 waits in the pool, batch 3 closes meanwhile
      add('b');
      await waitUntil(() => store.batch(2) !== undefined);
      await new Promise((r) => setTimeout(r, 200));
      add('c');
      await waitUntil(() => store.batch(3)?.status === 'anchored' && store.batch(2)?.status === 'anchored');
      expect(store.batch(3)!.block).toBe(store.batch(2)!.block);
      expect(store.batch(2)!.block).toBeGreaterThan(store.batch(1)!.block!);
      expect(store.batch(3)!.chainBatchId).toBe(store.batch(2)!.chainBatchId! + 1);
    } finally {
      await anchorer.stop();
      store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
