/** Merkle trees over SHA-256 commitments: every leaf's proof leads to the root; any change breaks it. */
import { describe, expect, it } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { buildMerkleTree, nodeCount, rootFromProof, rootOfLeaves, verifyMerkleProof } from '../../../src/ledger/merkle.js';
import { canonicalResourceText, commitmentOf, stripServerMeta } from '../../../src/ledger/canonical.js';

const leaves = (n: number) => Array.from({ length: n }, () => randomBytes(32));

describe('Merkle tree', () => {
  it.each([1, 2, 3, 5, 8, 13, 1000])('proves every one of %i leaves against the root', (n) => {
    const ls = leaves(n);
    const tree = buildMerkleTree(ls);
    for (let i = 0; i < n; i++) expect(verifyMerkleProof(ls[i]!, tree.proof(i), tree.root)).toBe(true);
    expect(tree.proof(0).length).toBeLessThanOrEqual(32 * Math.ceil(Math.log2(Math.max(2, n))));
  });

  it.each([1, 2, 3, 5, 8, 13, 33, 1000])('leads any set of the %i leaves, with the stored nodes, to the root', (n) => {
    const ls = leaves(n);
    const tree = buildMerkleTree(ls);
    const nodes = tree.nodes();
    expect(nodes.length).toBe(32 * nodeCount(n));
    const pick = (indices: number[]) => indices.map((index) => ({ index, leaf: ls[index]! }));
    const sets = [[0], [n - 1], Array.from({ length: n }, (_, i) => i), Array.from({ length: Math.min(n, 288) }, (_, i) => (i * 7) % n)];
    for (const set of sets) {
      const indices = [...new Set(set)].sort((a, b) => a - b);
      expect(rootOfLeaves(n, nodes, pick(indices))!.equals(tree.root)).toBe(true);
    }
    // a changed leaf, or a leaf put at another position, leads elsewhere
    const changed = Buffer.from(ls[0]!);
    changed[31]! ^= 1;
    expect(rootOfLeaves(n, nodes, [{ index: 0, leaf: changed }])!.equals(tree.root)).toBe(false);
    if (n > 2) expect(rootOfLeaves(n, nodes, [{ index: 2, leaf: ls[0]! }])!.equals(tree.root)).toBe(false);
  });

  it('refuses stored nodes of the wrong size, positions out of range or out of order', () => {
    const ls = leaves(10);
    const tree = buildMerkleTree(ls);
    expect(rootOfLeaves(10, tree.nodes().subarray(32), [{ index: 0, leaf: ls[0]! }])).toBeUndefined();
    expect(rootOfLeaves(11, tree.nodes(), [{ index: 0, leaf: ls[0]! }])).toBeUndefined();
    expect(rootOfLeaves(10, tree.nodes(), [{ index: 10, leaf: ls[0]! }])).toBeUndefined();
    expect(rootOfLeaves(10, tree.nodes(), [{ index: 2, leaf: ls[2]! }, { index: 1, leaf: ls[1]! }])).toBeUndefined();
    expect(rootOfLeaves(10, tree.nodes(), [])).toBeUndefined();
  });

  it('a single leaf is its own root', () => {
    const [l] = leaves(1);
    expect(buildMerkleTree([l!]).root.equals(l!)).toBe(true);
  });

  it('rejects a changed leaf, a proof for another leaf, a truncated proof and another root', () => {
    const ls = leaves(7);
    const tree = buildMerkleTree(ls);
    const changed = Buffer.from(ls[3]!);
    changed[0]! ^= 1;
    expect(verifyMerkleProof(changed, tree.proof(3), tree.root)).toBe(false);
    expect(verifyMerkleProof(ls[3]!, tree.proof(4), tree.root)).toBe(false);
    expect(verifyMerkleProof(ls[3]!, tree.proof(3).subarray(32), tree.root)).toBe(false);
    expect(verifyMerkleProof(ls[3]!, tree.proof(3).subarray(0, 40), tree.root)).toBe(false);
    expect(verifyMerkleProof(ls[3]!, tree.proof(3), buildMerkleTree(leaves(7)).root)).toBe(false);
  });

  it('inner nodes are domain-separated from leaves (0x01 prefix): two leaves hashed plainly are not the root', () => {
    const ls = leaves(2);
    const [lo, hi] = Buffer.compare(ls[0]!, ls[1]!) <= 0 ? ls : [ls[1]!, ls[0]!];
    const plain = createHash('sha256').update(lo!).update(hi!).digest();
    expect(buildMerkleTree(ls).root.equals(plain)).toBe(false);
    expect(rootFromProof(ls[0]!, ls[1]!).equals(buildMerkleTree(ls).root)).toBe(true);
  });
});

describe('commitment', () => {
  const obs = {
    resourceType: 'Observation', id: 'o1', status: 'final',
    meta: { versionId: '3', lastUpdated: '2024-01-01T00:00:00Z', profile: ['http://example.org/p'] },
    code: { text: 'glucose' }, valueQuantity: { value: 120, unit: 'mg/dL' },
  } as const;

  it('leaves out meta.versionId and meta.lastUpdated (upstream servers rewrite them) and sorts keys (RFC 8785)', () => {
    const text = canonicalResourceText(obs as never);
    expect(text).toBe('{"code":{"text":"glucose"},"id":"o1","meta":{"profile":["http://example.org/p"]},"resourceType":"Observation","status":"final","valueQuantity":{"unit":"mg/dL","value":120}}');
    const rewritten = { ...obs, meta: { ...obs.meta, versionId: '99', lastUpdated: '2030-01-01T00:00:00Z' } };
    expect(canonicalResourceText(rewritten as never)).toBe(text);
  });

  it('drops a meta left empty, so a server adding meta to a resource without one changes nothing', () => {
    const bare = { resourceType: 'Patient', id: 'p' };
    expect(canonicalResourceText({ ...bare, meta: { versionId: '1', lastUpdated: '2024-01-01T00:00:00Z' } } as never)).toBe(canonicalResourceText(bare as never));
    expect(stripServerMeta(bare as never)).toBe(bare);
  });

  it('is salted: the same content under two salts gives unrelated commitments; any content change changes it', () => {
    const text = canonicalResourceText(obs as never);
    const s1 = randomBytes(32);
    expect(commitmentOf(s1, text).equals(commitmentOf(randomBytes(32), text))).toBe(false);
    expect(commitmentOf(s1, text).equals(createHash('sha256').update(s1).update(text).digest())).toBe(true);
    expect(commitmentOf(s1, text.replace('120', '121')).equals(commitmentOf(s1, text))).toBe(false);
  });
});
