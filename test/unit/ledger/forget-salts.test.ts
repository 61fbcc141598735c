/**
 * The ledger's part of an erasure (CommitmentStore.forgetSalts) when it names the versions to
 * forget: only those lose their salts, in their rows and in their batch's tree; the others recorded
 * under the same patient (a record kept under the shared key) keep theirs; and salts an earlier
 * erasure overwrote are neither counted nor listed again.
 */
import { afterEach, beforeEach, describe, expect, it } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { buildMerkleTree } from '../../../src/ledger/merkle.js';
import { CommitmentStore, patientOrder } from '../../../src/ledger/store.js';

const ZERO = Buffer.alloc(32);

let dir: string;
let store: CommitmentStore;
beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'gg-forget-'));
  store = new CommitmentStore(path.join(dir, 'commitments.db'));
});
afterEach(() => {
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

/** Records versions (version 1 each) and puts them in one batch, its tree in patient order. */
function recordBatch(items: { type: string; id: string; patient: string }[]): void {
  store.add(items.map((i) => ({ ...i, version: '1', salt: randomBytes(32), leaf: randomBytes(32) })));
  const rows = store.unbatched(1000);
  const order = patientOrder(rows);
  store.prepareBatch(rows[0]!.seq, rows.at(-1)!.seq, buildMerkleTree(order.map((k) => rows[k]!.leaf)), order.map((k) => rows[k]!.salt), Date.now(), order);
}

/** A version's salt as its row holds it and as its batch's tree holds it. */
function saltsOf(type: string, id: string): { row: Buffer; tree: Buffer } {
  const rec = store.get(type, id, '1')!;
  const { groups } = store.treeGroups([{ type, id, version: '1' }]);
  const group = groups[0]!;
  const at = group.members[0]!.index;
  return { row: rec.salt, tree: group.salts.subarray(32 * at, 32 * at + 32) };
}

describe('forgetting the salts an erasure names', () => {
  it('overwrites only the named versions of the patient, in rows and tree; the patient\'s other records keep theirs', () => {
    recordBatch([
      { type: 'Patient', id: 'p1', patient: 'p1' }, { type: 'Observation', id: 'o-p2', patient: 'p2' },
      { type: 'Observation', id: 'o-p1', patient: 'p1' }, { type: 'AuditEvent', id: 'kept', patient: 'p1' },
    ]);
    const kept = store.get('AuditEvent', 'kept', '1')!.salt;
    const other = store.get('Observation', 'o-p2', '1')!.salt;
    const named = store.saltedVersionsOf('p1').filter((v) => v.type !== 'AuditEvent').map((v) => v.seq);
    expect(store.forgetSalts('p1', named)).toBe(2);
    expect(saltsOf('Patient', 'p1')).toEqual({ row: ZERO, tree: ZERO });
    expect(saltsOf('Observation', 'o-p1')).toEqual({ row: ZERO, tree: ZERO });
    expect(saltsOf('AuditEvent', 'kept')).toEqual({ row: kept, tree: kept });
    expect(saltsOf('Observation', 'o-p2')).toEqual({ row: other, tree: other });
    // a seq of another patient named by mistake changes nothing of theirs
    expect(store.forgetSalts('p1', [store.get('Observation', 'o-p2', '1')!.seq])).toBe(0);
    expect(saltsOf('Observation', 'o-p2').row).toEqual(other);
  });

  it('an erasure of the same id again counts and lists only salts not overwritten yet', () => {
    recordBatch([{ type: 'Patient', id: 'p1', patient: 'p1' }, { type: 'Observation', id: 'o1', patient: 'p1' }]);
    expect(store.forgetSalts('p1', store.saltedVersionsOf('p1').map((v) => v.seq))).toBe(2);
    expect(store.saltedVersionsOf('p1')).toEqual([]);
    // the id comes back: its new data is all an erasure of it now finds
    recordBatch([{ type: 'Observation', id: 'o2', patient: 'p1' }]);
    expect(store.saltedVersionsOf('p1')).toEqual([{ seq: 3, type: 'Observation', id: 'o2', version: '1' }]);
    expect(store.forgetSalts('p1')).toBe(1);
    expect(saltsOf('Observation', 'o2')).toEqual({ row: ZERO, tree: ZERO });
  });
});
