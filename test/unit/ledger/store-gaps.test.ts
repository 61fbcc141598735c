/**
 * Commitments removed from the store (rows are never deleted by GlucoGuard) are found from its own
 * records: `counts` says how many leaves of its batches have no row, never a negative pending
 * count; `gaps` says which seqs of which batch, which seq ranges no batch covers, and which queued
 * seqs are gone.
 */
import { afterEach, beforeEach, describe, expect, it } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { buildMerkleTree } from '../../../src/ledger/merkle.js';
import { CommitmentStore } from '../../../src/ledger/store.js';

let dir: string;
let store: CommitmentStore;
beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'gg-gaps-'));
  store = new CommitmentStore(path.join(dir, 'commitments.db'));
  // seqs 1–4 anchored (batch 1), 5–7 prepared (batch 2, in flight), 8–10 queued
  store.add(Array.from({ length: 10 }, (_, i) => ({ type: 'Observation', id: `o${i + 1}`, version: '1', patient: 'p', salt: randomBytes(32), leaf: randomBytes(32) })));
  for (const size of [4, 3]) {
    const rows = store.unbatched(size);
    store.prepareBatch(rows[0]!.seq, rows.at(-1)!.seq, buildMerkleTree(rows.map((r) => r.leaf)), rows.map((r) => r.salt));
  }
  store.markAnchored(1, 1, 1, null);
});
afterEach(() => {
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

/** Deletes rows behind the store's back (another connection, as an attacker with file access would). */
function remove(sql: string, ...args: number[]): void {
  const db = new Database(path.join(dir, 'commitments.db'));
  try {
    db.prepare(sql).run(...args);
  } finally {
    db.close();
  }
}

describe('CommitmentStore counts and gaps', () => {
  it('nothing removed: nothing missing', () => {
    expect(store.counts()).toMatchObject({ commitments: 10, anchored: 4, pending: 6, missing: 0, batches: 1 });
    expect(store.gaps()).toEqual({ batches: [], unbatched: [], queued: [] });
  });

  it('a row of an anchored batch removed: one missing, pending unchanged (never negative)', () => {
    remove('DELETE FROM commitments WHERE seq = ?', 2);
    expect(store.counts()).toMatchObject({ commitments: 9, anchored: 3, pending: 6, missing: 1 });
    expect(store.gaps().batches).toEqual([{ batch: expect.objectContaining({ id: 1, firstSeq: 1, lastSeq: 4 }), missing: [2] }]);
  });

  it('a row of a batch in flight and a queued row removed', () => {
    remove('DELETE FROM commitments WHERE seq IN (?, ?)', 6, 9);
    expect(store.counts()).toMatchObject({ commitments: 8, anchored: 4, pending: 4, missing: 1 });
    expect(store.gaps()).toEqual({ batches: [{ batch: expect.objectContaining({ id: 2, status: 'prepared' }), missing: [6] }], unbatched: [], queued: [9] });
  });

  it('a whole batch removed (its row, its tree and its commitments): a seq range no batch covers', () => {
    remove('DELETE FROM commitments WHERE seq BETWEEN ? AND ?', 1, 4);
    remove('DELETE FROM batch_trees WHERE batch = ?', 1);
    remove('DELETE FROM batches WHERE id = ?', 1);
    expect(store.counts()).toMatchObject({ commitments: 6, anchored: 0, pending: 6, missing: 0 });
    expect(store.gaps()).toEqual({ batches: [], unbatched: [{ from: 1, to: 4 }], queued: [] });
  });
});
