/**
 * The batched integrity check (IntegrityChecker.checkMany) on a real commitment store and a stand-in
 * for the ResourceAnchor contract: every entry is proven, in order; a changed body, a changed proof,
 * a proof that only shares part of its path with proven ones, and a root the chain does not hold are
 * each caught; one root read serves a whole batch. Versions proven ahead at start-up (proveAhead)
 * are checked by one hash each, and only what was proven is.
 */
import { afterEach, beforeEach, describe, expect, it } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Contract } from 'ethers';
import type { Observation } from '@medplum/fhirtypes';
import { canonicalResourceText, commitmentOf } from '../../../src/ledger/canonical.js';
import { IntegrityChecker } from '../../../src/ledger/integrity.js';
import { buildMerkleTree } from '../../../src/ledger/merkle.js';
import { CommitmentStore, patientOrder } from '../../../src/ledger/store.js';

const reading = (i: number): Observation => ({
  resourceType: 'Observation', id: `obs-${i}`, meta: { versionId: '1' }, status: 'final',
  code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] },
  subject: { reference: 'Patient/p1' }, valueQuantity: { value: 100 + i, unit: 'mg/dL' },
});

let dir: string;
let store: CommitmentStore;
let rootReads: number;
let chainRoots: Map<number, string>;

const anchor = {
  async getBatch(id: bigint | number) {
    rootReads++;
    const root = chainRoots.get(Number(id));
    if (!root) throw Object.assign(new Error('unknown batch'), { revert: { name: 'ResourceAnchorUnknownBatch' } });
    return { merkleRoot: root };
  },
} as unknown as Contract;

const db = (): import('better-sqlite3').Database => (store as unknown as { db: import('better-sqlite3').Database }).db;

/**
 * The store as a process opening the file now finds it, after the tests changed it behind the
 * store's back (the store keeps the trees it has read: a process sees a tree changed on disk only
 * when it reads it first, e.g. after a restart).
 */
function reopen(): void {
  const file = store.file;
  store.close();
  store = new CommitmentStore(file);
  countProofReads();
}

/** Versions whose own proofs were read (set by proofReads; counted across reopen). */
let proofCounter: { count: number } | undefined;

function countProofReads(): void {
  const counter = proofCounter;
  if (!counter) return;
  const original = store.proofsOf.bind(store);
  store.proofsOf = (keys) => {
    counter.count += keys.length;
    return original(keys);
  };
}

/** A store written before batches kept their trees: every version is checked through its own row. */
function dropTrees(): void {
  db().prepare('DELETE FROM batch_trees').run();
  reopen();
}

/** Records and anchors `resources` as one batch with chain batch id `chainId`; answers the local batch id. */
function anchorBatch(resources: Observation[], chainId: number, block = 1): number {
  const first = store.lastSeq() + 1;
  const records = resources.map((r) => ({ type: r.resourceType, id: r.id!, version: r.meta!.versionId!, patient: 'p1', salt: randomBytes(32), leaf: Buffer.alloc(0) as Buffer }));
  records.forEach((c, i) => { c.leaf = commitmentOf(c.salt, canonicalResourceText(resources[i]!)); });
  store.add(records);
  const tree = buildMerkleTree(records.map((c) => c.leaf));
  const batch = store.prepareBatch(first, first + records.length - 1, tree, records.map((c) => c.salt));
  store.markAnchored(batch.id, chainId, block, null);
  chainRoots.set(chainId, `0x${tree.root.toString('hex')}`);
  return batch.id;
}

/** Readings of three patients taking turns, as streamed uploads arrive: in id order they interleave (ids end with the patient). */
function streamedReadings(count: number, patients = ['p3', 'p1', 'p2']): Observation[] {
  const of = (patient: string, i: number): Observation => ({ ...reading(i), id: `obs-${String(i).padStart(4, '0')}-${patient}`, subject: { reference: `Patient/${patient}` } });
  return Array.from({ length: count }, (_, i) => patients.map((p) => of(p, i))).flat();
}

/** Records a commitment of each of `readings` (version 1, under the patient its id ends with); answers the rows not batched yet. */
function recordEach(readings: Observation[]): ReturnType<CommitmentStore['unbatched']> {
  store.add(readings.map((r) => {
    const salt = randomBytes(32);
    return { type: r.resourceType, id: r.id!, version: '1', patient: r.id!.slice(-2), salt, leaf: commitmentOf(salt, canonicalResourceText(r)) };
  }));
  return store.unbatched(1000);
}

beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'gg-integrity-'));
  store = new CommitmentStore(path.join(dir, 'commitments.db'));
  rootReads = 0;
  chainRoots = new Map();
  proofCounter = undefined;
});
afterEach(() => {
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('IntegrityChecker.checkMany through stored batch trees', () => {
  const proofReads = (): { count: number } => {
    proofCounter = { count: 0 };
    countProofReads();
    return proofCounter;
  };

  it('proves a day of readings a batch at a time, reading no version\'s own proof', async () => {
    const first = Array.from({ length: 700 }, (_, i) => reading(i));
    const second = Array.from({ length: 300 }, (_, i) => reading(1000 + i));
    anchorBatch(first, 0);
    anchorBatch(second, 1);
    const reads = proofReads();
    const checker = new IntegrityChecker(store, anchor);
    // a page that spans both batches, out of order, with a version listed twice
    const page = [...first.slice(500), ...second.slice(0, 88).reverse(), first[600]!];
    const results = await checker.checkMany(page);
    expect(results.map((r) => r.status)).toEqual(page.map(() => 'verified'));
    expect(reads.count).toBe(0);
    expect(rootReads).toBe(2);
    // remembered: a later read of them is a comparison
    expect((await checker.checkMany(page.slice(0, 5))).every((r) => r.status === 'verified')).toBe(true);
    expect(rootReads).toBe(2);
  });

  it('reads a newly anchored batch\'s root ahead, so its first read waits for no eth_call', async () => {
    const day = Array.from({ length: 50 }, (_, i) => reading(i));
    const batchId = anchorBatch(day, 0);
    const checker = new IntegrityChecker(store, anchor);
    checker.readRootAhead(batchId);
    checker.readRootAhead(batchId); // asked twice while the first read is under way: one read
    await new Promise((r) => setImmediate(r));
    expect(rootReads).toBe(1);
    expect((await checker.checkMany(day)).map((r) => r.status)).toEqual(day.map(() => 'verified'));
    expect(rootReads).toBe(1);
    checker.readRootAhead(anchorBatch([reading(99)], 7) + 1); // a batch the store does not know: nothing read, nothing thrown
    await new Promise((r) => setImmediate(r));
    expect(rootReads).toBe(1);
  });

  it('finds a patient-day streamed in among other patients\' readings through the patient\'s own key range; a wrong hint costs only look-ups', async () => {
    const streamed = streamedReadings(100, ['p1', 'p2', 'p3']);
    const first = store.lastSeq() + 1;
    // p3's versions are recorded under another patient: their hint (the subject) points elsewhere
    const records = streamed.map((r) => ({ type: r.resourceType, id: r.id!, version: '1', patient: r.id!.endsWith('p3') ? 'elsewhere' : r.id!.slice(-2), salt: randomBytes(32), leaf: Buffer.alloc(0) as Buffer }));
    records.forEach((c, i) => { c.leaf = commitmentOf(c.salt, canonicalResourceText(streamed[i]!)); });
    store.add(records);
    const tree = buildMerkleTree(records.map((c) => c.leaf));
    store.markAnchored(store.prepareBatch(first, first + records.length - 1, tree, records.map((c) => c.salt)).id, 0, 1, null);
    chainRoots.set(0, `0x${tree.root.toString('hex')}`);
    const internals = store as unknown as { seqByKey: { get(...args: unknown[]): unknown } };
    const single = internals.seqByKey;
    let singles = 0;
    internals.seqByKey = { get: (...args: unknown[]) => { singles++; return single.get(...args); } };
    const checker = new IntegrityChecker(store, anchor);
    const p2 = streamed.filter((r) => r.subject!.reference === 'Patient/p2');
    expect((await checker.checkMany(p2)).map((r) => r.status)).toEqual(p2.map(() => 'verified'));
    expect(singles).toBe(0);
    const p3 = streamed.filter((r) => r.subject!.reference === 'Patient/p3');
    expect((await checker.checkMany(p3)).map((r) => r.status)).toEqual(p3.map(() => 'verified'));
    expect(singles).toBeGreaterThan(0); // the key index range is interleaved: the scan stops early
  });

  it('keeps each patient\'s leaves together in a batch of readings streamed in by turns: runs of neighbours, proven by tree and by row alike', async () => {
    const streamed = streamedReadings(50);
    const first = store.lastSeq() + 1;
    const rows = recordEach(streamed);
    const order = patientOrder(rows);
    expect(order.map((k) => rows[k]!.patient)).toEqual([...Array(50).fill('p1'), ...Array(50).fill('p2'), ...Array(50).fill('p3')]);
    const tree = buildMerkleTree(order.map((k) => rows[k]!.leaf));
    const twice = [...order];
    twice[149] = twice[0]!;
    expect(() => store.prepareBatch(first, first + 149, tree, order.map((k) => rows[k]!.salt), Date.now(), twice)).toThrow(/every leaf once/);
    store.markAnchored(store.prepareBatch(first, first + 149, tree, order.map((k) => rows[k]!.salt), Date.now(), order).id, 0, 1, null);
    chainRoots.set(0, `0x${tree.root.toString('hex')}`);
    // one patient's readings are one run of neighbouring leaves
    const p2 = streamed.filter((r) => r.subject!.reference === 'Patient/p2');
    const { groups } = store.treeGroups(p2.map((r) => ({ type: 'Observation', id: r.id!, version: '1', patient: 'p2' })));
    expect(groups.map((g) => g.members.map((m) => m.index).sort((a, b) => a - b))).toEqual([Array.from({ length: 50 }, (_, i) => 50 + i)]);
    const reads = proofReads();
    expect((await new IntegrityChecker(store, anchor).checkMany(p2)).every((r) => r.status === 'verified')).toBe(true);
    expect(reads.count).toBe(0);
    // each row's own proof is for its place in that order
    dropTrees();
    expect((await new IntegrityChecker(store, anchor).checkMany(streamed)).map((r) => r.status)).toEqual(streamed.map(() => 'verified'));
    expect(reads.count).toBe(150);
  });

  it('reads a batch tree once and keeps it; forgetting salts drops it, so the next check reads the zeroed salts', async () => {
    const day = Array.from({ length: 24 }, (_, i) => ({ ...reading(i), subject: { reference: `Patient/p${i % 2}` } }) as Observation);
    anchorBatch(day, 0);
    const internals = store as unknown as { treeOf: { get(batch: number): unknown } };
    const read = internals.treeOf;
    let treeReads = 0;
    internals.treeOf = { get: (batch: number) => { treeReads++; return read.get(batch); } };
    const keys = day.map((r) => ({ type: 'Observation', id: r.id!, version: '1' }));
    const first = store.treeGroups(keys).groups[0]!;
    expect(store.treeGroups(keys.slice(0, 5)).groups[0]!.salts).toBe(first.salts);
    expect((await new IntegrityChecker(store, anchor).checkMany(day)).every((r) => r.status === 'verified')).toBe(true);
    expect(treeReads).toBe(1);
    // anchorBatch records every version under p1
    expect(store.forgetSalts('p1')).toBe(24);
    const after = store.treeGroups(keys).groups[0]!;
    expect(treeReads).toBe(2);
    expect(after.salts.equals(Buffer.alloc(32 * 24))).toBe(true);
    expect((await new IntegrityChecker(store, anchor).checkMany(day)).map((r) => r.status)).toEqual(day.map(() => 'failed'));
  });

  it('a one-off check (bulk export, subscriptions) reads batch trees without keeping them; a remembered check keeps them', async () => {
    const day = Array.from({ length: 24 }, (_, i) => reading(i));
    anchorBatch(day, 0);
    const internals = store as unknown as { treeOf: { get(batch: number): unknown }; treeBytes: number };
    const read = internals.treeOf;
    let treeReads = 0;
    internals.treeOf = { get: (batch: number) => { treeReads++; return read.get(batch); } };
    const checker = new IntegrityChecker(store, anchor);
    expect((await checker.checkMany(day, { remember: false })).every((r) => r.status === 'verified')).toBe(true);
    expect((await checker.checkMany(day, { remember: false })).every((r) => r.status === 'verified')).toBe(true);
    expect(treeReads).toBe(2); // read each time, kept neither time
    expect(internals.treeBytes).toBe(0);
    expect((await checker.checkMany(day)).every((r) => r.status === 'verified')).toBe(true);
    expect(treeReads).toBe(3);
    expect(internals.treeBytes).toBeGreaterThan(0);
    expect((await new IntegrityChecker(store, anchor).checkMany(day, { remember: false })).every((r) => r.status === 'verified')).toBe(true);
    expect(treeReads).toBe(3); // a kept tree serves one-off checks too
  });

  it('forgets the salts of one patient at their places in a patient-ordered tree', () => {
    const streamed = streamedReadings(20, ['p2', 'p1']);
    store.add(streamed.map((r) => ({ type: r.resourceType, id: r.id!, version: '1', patient: r.id!.slice(-2), salt: randomBytes(32), leaf: randomBytes(32) })));
    const rows = store.unbatched(1000);
    const order = patientOrder(rows);
    store.prepareBatch(rows[0]!.seq, rows[39]!.seq, buildMerkleTree(order.map((k) => rows[k]!.leaf)), order.map((k) => rows[k]!.salt), Date.now(), order);
    expect(store.forgetSalts('p2')).toBe(20);
    const salts = db().prepare('SELECT salts FROM batch_trees').pluck().get() as Buffer;
    // tree order: p1's 20 leaves, then p2's
    for (let p = 0; p < 40; p++) {
      const expected = p < 20 ? rows[order[p]!]!.salt : Buffer.alloc(32);
      expect(salts.subarray(32 * p, 32 * p + 32).equals(expected)).toBe(true);
    }
  });

  it('withholds a changed body (found by checking the batch version by version) and serves the rest', async () => {
    const day = Array.from({ length: 64 }, (_, i) => reading(i));
    anchorBatch(day, 0);
    const reads = proofReads();
    const served = day.map((r) => ({ ...r }));
    served[7] = { ...served[7]!, valueQuantity: { value: 400, unit: 'mg/dL' } };
    const results = await new IntegrityChecker(store, anchor).checkMany(served);
    expect(results[7]).toEqual({ status: 'failed', reason: 'content' });
    expect(results.filter((r) => r.status === 'verified')).toHaveLength(63);
    expect(reads.count).toBe(64);
  });

  it('a changed stored tree or salt proves nothing: the versions are checked through their own rows', async () => {
    const day = Array.from({ length: 32 }, (_, i) => reading(i));
    anchorBatch(day, 0);
    const tree = db().prepare('SELECT salts, nodes FROM batch_trees').get() as { salts: Buffer; nodes: Buffer };
    // 32 leaves: levels of 32, 16, 8, 4, 2 and 1 nodes. Checking leaves 0-15 takes one stored node,
    // the level-4 node over leaves 16-31 (node 61); the stored copies of nodes it recomputes are not read.
    const nodes = Buffer.from(tree.nodes);
    nodes[32 * 3 + 1] ^= 0xff; // the stored leaf 3
    nodes[32 * 40 + 1] ^= 0xff; // the stored parent of leaves 16 and 17
    db().prepare('UPDATE batch_trees SET nodes = ?').run(nodes);
    const reads = proofReads();
    expect((await new IntegrityChecker(store, anchor).checkMany(day.slice(0, 16))).every((r) => r.status === 'verified')).toBe(true);
    expect(reads.count).toBe(0);
    nodes[32 * 61 + 1] ^= 0xff;
    db().prepare('UPDATE batch_trees SET nodes = ?').run(nodes);
    // the tree as read before stays in use here (it led to the root); a process reading it now gets the changed one
    expect((await new IntegrityChecker(store, anchor).checkMany(day.slice(0, 16))).every((r) => r.status === 'verified')).toBe(true);
    expect(reads.count).toBe(0);
    reopen();
    expect((await new IntegrityChecker(store, anchor).checkMany(day.slice(0, 16))).every((r) => r.status === 'verified')).toBe(true);
    expect(reads.count).toBe(16);

    // a changed salt, and a body changed to match it: withheld all the same
    const salts = Buffer.from(tree.salts);
    salts.fill(7, 32 * 5, 32 * 6);
    db().prepare('UPDATE batch_trees SET salts = ?, nodes = ?').run(salts, tree.nodes);
    reopen();
    const served = day.map((r) => ({ ...r }));
    served[5] = { ...served[5]!, valueQuantity: { value: 40, unit: 'mg/dL' } };
    const results = await new IntegrityChecker(store, anchor).checkMany(served);
    expect(results[5]).toEqual({ status: 'failed', reason: 'content' });
    expect(results.filter((r) => r.status === 'verified')).toHaveLength(31);
  });

  it('adds the trees of batches prepared without one, unless their rows do not lead to their root', async () => {
    const a = Array.from({ length: 12 }, (_, i) => reading(i));
    const b = Array.from({ length: 12 }, (_, i) => reading(100 + i));
    const batchA = anchorBatch(a, 0);
    const batchB = anchorBatch(b, 1);
    dropTrees();
    db().prepare('UPDATE commitments SET leaf = ? WHERE id = ?').run(randomBytes(32), 'obs-105');
    expect(store.addMissingTree(0)).toEqual({ id: batchA, stored: true });
    expect(store.addMissingTree(batchA)).toEqual({ id: batchB, stored: false });
    expect(store.addMissingTree(batchB)).toBeUndefined();
    const reads = proofReads();
    expect((await new IntegrityChecker(store, anchor).checkMany(a)).every((r) => r.status === 'verified')).toBe(true);
    expect(reads.count).toBe(0);
    const results = await new IntegrityChecker(store, anchor).checkMany(b);
    expect(reads.count).toBe(12);
    expect(results[5]).toEqual({ status: 'failed', reason: 'content' });
  });

  it('mixes batches with and without trees, pending and unrecorded versions, and a root the chain does not hold', async () => {
    const legacy = Array.from({ length: 10 }, (_, i) => reading(i));
    anchorBatch(legacy, 0);
    dropTrees();
    const current = Array.from({ length: 10 }, (_, i) => reading(100 + i));
    anchorBatch(current, 1);
    const disowned = Array.from({ length: 10 }, (_, i) => reading(200 + i));
    anchorBatch(disowned, 2);
    chainRoots.set(2, `0x${'22'.repeat(32)}`);
    const unanchored = reading(300);
    store.add([{ type: 'Observation', id: 'obs-300', version: '1', patient: 'p1', salt: Buffer.alloc(32, 1), leaf: commitmentOf(Buffer.alloc(32, 1), canonicalResourceText(unanchored)) }]);
    const results = await new IntegrityChecker(store, anchor).checkMany([...legacy, ...current, ...disowned, unanchored, reading(400)]);
    expect(results.slice(0, 20).every((r) => r.status === 'verified')).toBe(true);
    expect(results.slice(20, 30).every((r) => r.status === 'failed' && r.reason === 'root')).toBe(true);
    expect(results[30]).toEqual({ status: 'pending' });
    expect(results[31]).toEqual({ status: 'unverified', reason: 'no-commitment' });
  });
});

describe('IntegrityChecker.proveAhead', () => {
  /** The ids of the versions a check looks up in the store (positions and trees, or their own rows). */
  const lookups = (): Set<string> => {
    const ids = new Set<string>();
    const treeGroups = store.treeGroups.bind(store);
    const proofsOf = store.proofsOf.bind(store);
    store.treeGroups = (keys, options) => { keys.forEach((k) => ids.add(k.id)); return treeGroups(keys, options); };
    store.proofsOf = (keys) => { keys.forEach((k) => ids.add(k.id)); return proofsOf(keys); };
    return ids;
  };

  it('proves the newest anchored batches ahead: a first read of their versions is one hash each, no position, tree or proof read', async () => {
    const older = Array.from({ length: 40 }, (_, i) => reading(i));
    const newer = Array.from({ length: 25 }, (_, i) => reading(100 + i));
    anchorBatch(older, 0);
    anchorBatch(newer, 1);
    const checker = new IntegrityChecker(store, anchor);
    expect(await checker.proveAhead(1000)).toBe(65);
    expect(checker.provenAhead()).toBe(65);
    const reads = lookups();
    const page = [...newer.slice(3), ...older.slice(0, 7)];
    expect((await checker.checkMany(page)).map((r) => r.status)).toEqual(page.map(() => 'verified'));
    expect(reads.size).toBe(0);
  });

  it('a text other than the proven one, or another version of a kept id, is checked the usual way, which finds out what it is', async () => {
    const day = Array.from({ length: 10 }, (_, i) => reading(i));
    anchorBatch(day, 0);
    const checker = new IntegrityChecker(store, anchor);
    expect(await checker.proveAhead(1000)).toBe(10);
    const reads = lookups();
    const altered: Observation = { ...day[4]!, valueQuantity: { value: 400, unit: 'mg/dL' } };
    const later: Observation = { ...day[5]!, meta: { versionId: '2' } }; // never committed
    const results = await checker.checkMany([day[3]!, altered, later]);
    expect(results).toEqual([{ status: 'verified' }, { status: 'failed', reason: 'content' }, { status: 'unverified', reason: 'changed-outside' }]);
    expect([...reads]).toEqual([altered.id, later.id]); // looked up as on any first read
  });

  it('keeps the newest batches up to the limit, and of an id only its newest version; an older one is proven the usual way', async () => {
    const first = Array.from({ length: 30 }, (_, i) => reading(i));
    const corrections = first.slice(0, 10).map((r) => ({ ...r, meta: { versionId: '2' }, valueQuantity: { value: 250, unit: 'mg/dL' } }) as Observation);
    anchorBatch(first, 0);
    anchorBatch(corrections, 1);
    const some = new IntegrityChecker(store, anchor);
    expect(await some.proveAhead(35)).toBe(10); // the newest batch only: both would be 40 versions
    const all = new IntegrityChecker(store, anchor);
    expect(await all.proveAhead(40)).toBe(30); // 40 versions of 30 ids
    const reads = lookups();
    expect((await all.checkMany([...corrections, ...first.slice(10)])).every((r) => r.status === 'verified')).toBe(true);
    expect(reads.size).toBe(0);
    expect(await all.checkMany([first[2]!])).toEqual([{ status: 'verified' }]);
    expect([...reads]).toEqual([first[2]!.id]);
  });

  it('keeps the leaves of a batch ordered by patient at their places', async () => {
    const streamed = streamedReadings(20);
    const firstSeq = store.lastSeq() + 1;
    const rows = recordEach(streamed);
    const order = patientOrder(rows);
    const tree = buildMerkleTree(order.map((k) => rows[k]!.leaf));
    store.markAnchored(store.prepareBatch(firstSeq, firstSeq + 59, tree, order.map((k) => rows[k]!.salt), Date.now(), order).id, 0, 1, null);
    chainRoots.set(0, `0x${tree.root.toString('hex')}`);
    const checker = new IntegrityChecker(store, anchor);
    expect(await checker.proveAhead(1000)).toBe(60);
    const reads = lookups();
    expect((await checker.checkMany(streamed)).map((r) => r.status)).toEqual(streamed.map(() => 'verified'));
    expect(reads.size).toBe(0);
  });

  it('keeps nothing of a batch whose stored tree does not lead to its anchored root, or whose root the chain does not hold', async () => {
    const a = Array.from({ length: 8 }, (_, i) => reading(i));
    const b = Array.from({ length: 8 }, (_, i) => reading(10 + i));
    const c = Array.from({ length: 8 }, (_, i) => reading(20 + i));
    const batchA = anchorBatch(a, 0);
    anchorBatch(b, 1);
    anchorBatch(c, 2);
    // a: one stored leaf swapped for another batch's; b: the chain holds another root
    const nodes = db().prepare<[number], { nodes: Buffer }>('SELECT nodes FROM batch_trees WHERE batch = ?').get(batchA)!.nodes;
    nodes.fill(7, 32 * 3, 32 * 4);
    db().prepare('UPDATE batch_trees SET nodes = ? WHERE batch = ?').run(nodes, batchA);
    reopen();
    chainRoots.set(1, `0x${'ab'.repeat(32)}`);
    const checker = new IntegrityChecker(store, anchor);
    expect(await checker.proveAhead(1000)).toBe(8); // c's
    const reads = lookups();
    const results = await checker.checkMany([...a, ...b, ...c]);
    expect(results.slice(16).every((r) => r.status === 'verified')).toBe(true);
    expect(results.slice(8, 16).every((r) => r.status === 'failed' && r.reason === 'root')).toBe(true);
    expect([...reads].sort()).toEqual([...a, ...b].map((r) => r.id!).sort()); // a and b the usual way
  });

  it('keeps no version at a place outside its batch\'s tree (stored positions are not trusted)', async () => {
    const streamed = streamedReadings(4);
    const firstSeq = store.lastSeq() + 1;
    const rows = recordEach(streamed);
    const order = patientOrder(rows);
    const tree = buildMerkleTree(order.map((k) => rows[k]!.leaf));
    const batch = store.prepareBatch(firstSeq, firstSeq + 11, tree, order.map((k) => rows[k]!.salt), Date.now(), order);
    store.markAnchored(batch.id, 0, 1, null);
    chainRoots.set(0, `0x${tree.root.toString('hex')}`);
    const positions = db().prepare<[number], { positions: Buffer }>('SELECT positions FROM batch_trees WHERE batch = ?').get(batch.id)!.positions;
    positions.writeUInt32LE(4000, 0); // the first version's leaf said to be far outside the tree
    db().prepare('UPDATE batch_trees SET positions = ? WHERE batch = ?').run(positions, batch.id);
    reopen();
    const checker = new IntegrityChecker(store, anchor);
    expect(await checker.proveAhead(1000)).toBe(11);
    expect((await checker.checkMany(streamed.slice(1))).every((r) => r.status === 'verified')).toBe(true);
  });

  it('stops at the first root the chain does not answer for, without asking for the others', async () => {
    const batches = [0, 1, 2].map((k) => anchorBatch(Array.from({ length: 5 }, (_, i) => reading(10 * k + i)), k));
    expect(batches).toHaveLength(3);
    const down = { async getBatch() { rootReads++; throw new Error('connect ECONNREFUSED'); } } as unknown as Contract;
    const checker = new IntegrityChecker(store, down);
    expect(await checker.proveAhead(1000)).toBe(0);
    expect(rootReads).toBe(1);
  });

  it('clearCache forgets them (with their salts); an aborted or disabled proving keeps none', async () => {
    const day = Array.from({ length: 12 }, (_, i) => reading(i));
    anchorBatch(day, 0);
    const checker = new IntegrityChecker(store, anchor);
    expect(await checker.proveAhead(1000)).toBe(12);
    checker.clearCache();
    expect(checker.provenAhead()).toBe(0);
    const reads = lookups();
    expect((await checker.checkMany(day)).every((r) => r.status === 'verified')).toBe(true);
    expect(reads.size).toBe(12);
    const stopped = new AbortController();
    stopped.abort();
    const other = new IntegrityChecker(store, anchor);
    expect(await other.proveAhead(1000, stopped.signal)).toBe(0);
    expect(await other.proveAhead(0)).toBe(0);
  });
});

describe('IntegrityChecker.checkMany', () => {
  it('proves a whole batch with one root read and answers in order; a second read needs no chain (no stored tree)', async () => {
    const day = Array.from({ length: 300 }, (_, i) => reading(i));
    anchorBatch(day, 0);
    dropTrees(); // the tree path is tested above; this is the version-by-version one
    const checker = new IntegrityChecker(store, anchor);
    const results = await checker.checkMany(day);
    expect(results.map((r) => r.status)).toEqual(day.map(() => 'verified'));
    expect(rootReads).toBe(1);
    expect((await checker.checkMany(day.slice(0, 10))).every((r) => r.status === 'verified')).toBe(true);
    expect(rootReads).toBe(1);
  });

  it('withholds a changed body and a version with a changed proof, and proves the rest of the batch (no stored tree)', async () => {
    const day = Array.from({ length: 64 }, (_, i) => reading(i));
    anchorBatch(day, 0);
    // the proof of entry 41 gets a wrong first sibling: no node of its walk is one entry 40 proved. (A
    // wrong sibling ABOVE the node it shares with entry 40 would not matter: the leaf is then shown to
    // be in the tree through entry 40's checked path, which is what the proof is for.)
    dropTrees();
    const row = db().prepare('SELECT proof FROM commitments WHERE id = ?').get('obs-41') as { proof: Buffer };
    const bad = Buffer.from(row.proof);
    bad[5] ^= 0xff;
    db().prepare('UPDATE commitments SET proof = ? WHERE id = ?').run(bad, 'obs-41');
    const served = day.map((r) => ({ ...r }));
    served[7] = { ...served[7]!, valueQuantity: { value: 400, unit: 'mg/dL' } };
    const results = await new IntegrityChecker(store, anchor).checkMany(served);
    expect(results[7]).toEqual({ status: 'failed', reason: 'content' });
    expect(results[41]).toEqual({ status: 'failed', reason: 'proof' });
    expect(results.filter((r) => r.status === 'verified')).toHaveLength(62);
  });

  it('catches a changed proof even when entries proven earlier in the same check share its upper path (no stored tree)', async () => {
    const day = Array.from({ length: 16 }, (_, i) => reading(i));
    anchorBatch(day, 0);
    dropTrees();
    // entry 1 is the sibling of entry 0: give it entry 0's proof with the first sibling swapped for garbage
    const p0 = (db().prepare('SELECT proof FROM commitments WHERE id = ?').get('obs-0') as { proof: Buffer }).proof;
    const forged = Buffer.concat([randomBytes(32), p0.subarray(32)]);
    db().prepare('UPDATE commitments SET proof = ? WHERE id = ?').run(forged, 'obs-1');
    const results = await new IntegrityChecker(store, anchor).checkMany(day);
    expect(results[0]!.status).toBe('verified');
    expect(results[1]).toEqual({ status: 'failed', reason: 'proof' });
  });

  it('fails every entry of a batch whose root the chain does not hold, and marks unrecorded or unanchored versions', async () => {
    const a = Array.from({ length: 5 }, (_, i) => reading(i));
    const b = Array.from({ length: 5 }, (_, i) => reading(100 + i));
    anchorBatch(a, 0);
    anchorBatch(b, 1);
    chainRoots.set(1, `0x${'11'.repeat(32)}`);
    const unanchored = reading(200);
    store.add([{ type: 'Observation', id: 'obs-200', version: '1', patient: 'p1', salt: Buffer.alloc(32, 1), leaf: commitmentOf(Buffer.alloc(32, 1), canonicalResourceText(unanchored)) }]);
    const results = await new IntegrityChecker(store, anchor).checkMany([...a, ...b, unanchored, reading(300)]);
    expect(results.slice(0, 5).every((r) => r.status === 'verified')).toBe(true);
    expect(results.slice(5, 10).every((r) => r.status === 'failed' && r.reason === 'root')).toBe(true);
    expect(results[10]).toEqual({ status: 'pending' });
    expect(results[11]).toEqual({ status: 'unverified', reason: 'no-commitment' });
  });

  it('a one-off check (bulk export) proves as always but remembers nothing', async () => {
    const day = Array.from({ length: 20 }, (_, i) => reading(i));
    anchorBatch(day, 0);
    const checker = new IntegrityChecker(store, anchor);
    const cache = (checker as unknown as { verified: Map<string, unknown> }).verified;
    expect((await checker.checkMany(day, { remember: false })).every((r) => r.status === 'verified')).toBe(true);
    expect(cache.size).toBe(0);
    await checker.checkMany(day);
    expect(cache.size).toBe(20);
  });

  it('warmRoots reads every anchored root ahead, so checks after it read no root', async () => {
    const batches = Array.from({ length: 3 }, (_, k) => Array.from({ length: 4 }, (_, i) => reading(k * 10 + i)));
    batches.forEach((b, k) => anchorBatch(b, k));
    const checker = new IntegrityChecker(store, anchor);
    expect(await checker.warmRoots()).toBe(3);
    const reads = rootReads;
    expect((await checker.checkMany(batches.flat())).every((r) => r.status === 'verified')).toBe(true);
    expect(rootReads).toBe(reads);
  });

  /** The stand-in contract, also answering BatchAnchored events (chain batch id, root, block) by block range. */
  function withEvents(events: { batchId: number; root: string; block: number }[], refuse = false): { contract: Contract; queries: [number, number][] } {
    const queries: [number, number][] = [];
    const contract = {
      getBatch: anchor.getBatch,
      filters: { BatchAnchored: () => ({ event: 'BatchAnchored' }) },
      async queryFilter(_filter: unknown, from: number, to: number) {
        queries.push([from, to]);
        if (refuse) throw new Error('requested range exceeds the maximum');
        return events.filter((e) => e.block >= from && e.block <= to).map((e) => ({ args: { batchId: BigInt(e.batchId), merkleRoot: e.root } }));
      },
    } as unknown as Contract;
    return { contract, queries };
  }

  it('warmRoots takes the roots from the BatchAnchored events, in windows over the blocks that hold batches: no getBatch call before or after', async () => {
    const batches = Array.from({ length: 3 }, (_, k) => Array.from({ length: 4 }, (_, i) => reading(k * 10 + i)));
    const blocks = [5, 6, 12_000];
    batches.forEach((b, k) => anchorBatch(b, k, blocks[k]));
    const { contract, queries } = withEvents(blocks.map((block, k) => ({ batchId: k, root: chainRoots.get(k)!, block })));
    const checker = new IntegrityChecker(store, contract);
    expect(await checker.warmRoots()).toBe(3);
    expect(queries).toEqual([[5, 6], [12_000, 12_000]]);
    expect(rootReads).toBe(0);
    expect((await checker.checkMany(batches.flat())).every((r) => r.status === 'verified')).toBe(true);
    expect(rootReads).toBe(0);
  });

  it('warmRoots leaves to getBatch a batch whose event carries another root, or that has no event; getBatch decides', async () => {
    const batches = Array.from({ length: 3 }, (_, k) => Array.from({ length: 4 }, (_, i) => reading(k * 10 + i)));
    batches.forEach((b, k) => anchorBatch(b, k, 7 + k));
    const other = `0x${'ab'.repeat(32)}`;
    chainRoots.set(0, other); // the chain holds another root for batch 0 than the store
    const { contract } = withEvents([{ batchId: 0, root: other, block: 7 }, { batchId: 1, root: chainRoots.get(1)!, block: 8 }]);
    const checker = new IntegrityChecker(store, contract);
    expect(await checker.warmRoots()).toBe(3);
    expect(rootReads).toBe(2); // batch 0 (other root) and batch 2 (no event)
    const results = await checker.checkMany(batches.flat());
    expect(results.slice(0, 4).map((r) => r.status)).toEqual(['failed', 'failed', 'failed', 'failed']);
    expect(results.slice(4).every((r) => r.status === 'verified')).toBe(true);
    expect(rootReads).toBe(2);
  });

  it('warmRoots reads every root by getBatch when the node refuses eth_getLogs', async () => {
    const batches = Array.from({ length: 3 }, (_, k) => Array.from({ length: 4 }, (_, i) => reading(k * 10 + i)));
    batches.forEach((b, k) => anchorBatch(b, k, 1 + k));
    const { contract, queries } = withEvents([], true);
    const checker = new IntegrityChecker(store, contract);
    expect(await checker.warmRoots()).toBe(3);
    expect(queries.length).toBe(1);
    expect(rootReads).toBe(3);
    expect((await checker.checkMany(batches.flat())).every((r) => r.status === 'verified')).toBe(true);
  });
});

describe('CommitmentStore.proofsOf', () => {
  const key = (id: string, version = '1') => ({ type: 'Observation', id, version });
  const add = (id: string, version = '1', type = 'Observation') => {
    const salt = randomBytes(32);
    store.add([{ type, id, version, patient: 'p1', salt, leaf: commitmentOf(salt, id + version) }]);
    return salt;
  };

  it('answers every version asked, in order, by range scan and by single lookups alike', () => {
    const salts = new Map<string, Buffer>();
    // clustered ids (one range), ids far outside it, a second version, ids of another type in the range
    for (let i = 0; i < 40; i++) salts.set(`m-${String(i).padStart(3, '0')}/1`, add(`m-${String(i).padStart(3, '0')}`));
    salts.set('m-005/2', add('m-005', '2'));
    for (let i = 0; i < 500; i++) add(`m-010-filler-${i}`); // between wanted ids: the scan stops early
    for (let i = 0; i < 30; i++) add(`m-${String(i).padStart(3, '0')}`, '1', 'Device');
    salts.set('a-first/1', add('a-first'));
    salts.set('z-last/1', add('z-last'));
    const asked = [key('z-last'), ...Array.from({ length: 40 }, (_, i) => key(`m-${String(i).padStart(3, '0')}`)), key('m-005', '2'), key('a-first'), key('m-999'), key('m-007', '3')];
    const records = store.proofsOf(asked);
    expect(records).toHaveLength(asked.length);
    asked.forEach((k, i) => {
      const salt = salts.get(`${k.id}/${k.version}`);
      if (salt) expect(records[i]?.salt.equals(salt)).toBe(true);
      else expect(records[i]).toBeUndefined();
    });
  });
});
