/**
 * ProvenIndex (src/ledger/proven-index.ts): every id kept is found again at its slot, an id not
 * kept is not, only the newest version of an id is kept, the capacity holds (a full table still
 * answers look-ups of absent ids), and a text proves its version only when its salted hash is the
 * leaf at that version's place.
 */
import { describe, expect, it } from '@jest/globals';
import { randomBytes, randomUUID } from 'node:crypto';
import { commitmentOf } from '../../../src/ledger/canonical.js';
import { ProvenIndex } from '../../../src/ledger/proven-index.js';

/** A proven batch of `texts` (in tree order): salts and leaves, 32 bytes each. */
function batchOf(texts: string[]): { salts: Buffer; leaves: Buffer } {
  const salts = randomBytes(32 * texts.length);
  const leaves = Buffer.concat(texts.map((t, i) => commitmentOf(salts.subarray(32 * i, 32 * i + 32), t)));
  return { salts, leaves };
}

const textOf = (id: string, v = 1): string => `{"id":"${id}","resourceType":"Observation","valueQuantity":{"value":${100 + v}}}`;

describe('ProvenIndex', () => {
  it('finds each of 20,000 ids kept at its slot, and its text proves its version; ids not kept are not found', () => {
    const ids = Array.from({ length: 20_000 }, () => randomUUID());
    const index = new ProvenIndex(ids.length);
    const { salts, leaves } = batchOf(ids.map((id) => textOf(id)));
    expect(index.add(salts, leaves, ids.map((id, position) => ({ type: 'Observation', id, version: '1', position })).reverse())).toBe(ids.length);
    expect(index.size).toBe(ids.length);
    const lost = ids.filter((id) => {
      const slot = index.slotOf(id);
      return slot < 0 || !index.proves(slot, 'Observation', '1', textOf(id));
    });
    expect(lost).toEqual([]);
    expect(Array.from({ length: 20_000 }, () => index.slotOf(randomUUID())).filter((s) => s >= 0)).toEqual([]);
  });

  it('proves a text only for the type, version and content kept', () => {
    const [a, b] = [randomUUID(), randomUUID()];
    const index = new ProvenIndex(2);
    const { salts, leaves } = batchOf([textOf(a), textOf(b)]);
    index.add(salts, leaves, [{ type: 'Observation', id: b, version: '1', position: 1 }, { type: 'Observation', id: a, version: '1', position: 0 }]);
    const slot = index.slotOf(a);
    expect(index.proves(slot, 'Observation', '1', textOf(a))).toBe(true);
    expect(index.proves(slot, 'Observation', '1', textOf(a, 2))).toBe(false); // other content
    expect(index.proves(slot, 'Observation', '2', textOf(a))).toBe(false); // another version
    expect(index.proves(slot, 'Observation', '01', textOf(a))).toBe(false); // not the same version id
    expect(index.proves(slot, 'Device', '1', textOf(a))).toBe(false);
    expect(index.proves(slot, 'Observation', '1', textOf(b))).toBe(false); // b's text at a's place
  });

  it('keeps the newest version of an id (the first given), and no version id that is not a plain number or a place outside the tree', () => {
    const id = randomUUID();
    const odd = randomUUID();
    const far = randomUUID();
    const index = new ProvenIndex(10);
    const newer = batchOf([textOf(id, 2), textOf(odd)]);
    expect(index.add(newer.salts, newer.leaves, [
      { type: 'Observation', id, version: '2', position: 0 },
      { type: 'Observation', id: odd, version: 'W/"3"', position: 1 },
      { type: 'Observation', id: far, version: '1', position: 2 },
    ])).toBe(1);
    const older = batchOf([textOf(id, 1)]);
    expect(index.add(older.salts, older.leaves, [{ type: 'Observation', id, version: '1', position: 0 }])).toBe(0);
    expect(index.proves(index.slotOf(id), 'Observation', '2', textOf(id, 2))).toBe(true);
    expect(index.proves(index.slotOf(id), 'Observation', '1', textOf(id, 1))).toBe(false);
    expect(index.slotOf(odd)).toBe(-1);
    expect(index.slotOf(far)).toBe(-1);
  });

  it('keeps no more than its capacity, and a full index still answers look-ups of ids it does not hold', () => {
    const ids = Array.from({ length: 12 }, () => randomUUID());
    const index = new ProvenIndex(8);
    const { salts, leaves } = batchOf(ids.map((id) => textOf(id)));
    expect(index.add(salts, leaves, ids.map((id, position) => ({ type: 'Observation', id, version: '1', position })))).toBe(8);
    expect(index.full()).toBe(true);
    expect(ids.filter((id) => index.slotOf(id) >= 0)).toEqual(ids.slice(0, 8));
    for (let i = 0; i < 1000; i++) expect(index.slotOf(randomUUID())).toBe(-1);
  });
});
