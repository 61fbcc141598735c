/**
 * Merkle trees over commitments, with SHA-256 throughout (keccak256 measured several times slower
 * in JS, and node's SHA-256 is native).
 *
 * - Leaves are the 32-byte commitments themselves (already a SHA-256 of salt ‖ data).
 * - An inner node is SHA-256(0x01 ‖ min(a,b) ‖ max(a,b)): the 0x01 prefix separates inner nodes
 *   from leaves (a commitment is never a hash over 0x01 ‖ 64 bytes), and sorting the pair (as
 *   OpenZeppelin's MerkleProof does) means a proof is just the list of siblings, no path bits.
 * - An odd node at the end of a level is carried up unchanged.
 *
 * A proof is the siblings from the leaf up, concatenated (32 bytes each; ≤ 10 for 1,000 leaves).
 */
import { hash } from 'node:crypto';

// One scratch buffer for 0x01 ‖ lo ‖ hi: one-shot hashing of a ready buffer is about twice as fast
// as a Hash object with three updates (the cost that matters when verifying proofs on reads).
const pair = Buffer.alloc(65);
pair[0] = 1;

export function hashPair(a: Buffer, b: Buffer): Buffer {
  const aFirst = Buffer.compare(a, b) <= 0;
  (aFirst ? a : b).copy(pair, 1);
  (aFirst ? b : a).copy(pair, 33);
  return hash('sha256', pair, 'buffer');
}

export interface MerkleTree {
  root: Buffer;
  /** Proof of leaf i: its siblings from the bottom level up, 32 bytes each. */
  proof(i: number): Buffer;
  /** Every node, level by level from the leaves up to the root, 32 bytes each (see `rootOfLeaves`). */
  nodes(): Buffer;
}

/** Builds the tree over `leaves` (in order, at least one). */
export function buildMerkleTree(leaves: Buffer[]): MerkleTree {
  if (leaves.length === 0) throw new RangeError('a Merkle tree needs at least one leaf');
  const levels: Buffer[][] = [leaves];
  while (levels[levels.length - 1]!.length > 1) {
    const below = levels[levels.length - 1]!;
    const level: Buffer[] = new Array(Math.ceil(below.length / 2));
    for (let i = 0; i + 1 < below.length; i += 2) level[i >> 1] = hashPair(below[i]!, below[i + 1]!);
    if (below.length % 2 === 1) level[level.length - 1] = below[below.length - 1]!;
    levels.push(level);
  }
  return {
    root: levels[levels.length - 1]![0]!,
    proof(i: number): Buffer {
      if (!Number.isInteger(i) || i < 0 || i >= leaves.length) throw new RangeError(`no leaf ${i}`);
      const siblings: Buffer[] = [];
      let index = i;
      for (let l = 0; l < levels.length - 1; l++) {
        const level = levels[l]!;
        const sibling = index ^ 1;
        if (sibling < level.length) siblings.push(level[sibling]!);
        index >>= 1;
      }
      return Buffer.concat(siblings);
    },
    nodes(): Buffer {
      return Buffer.concat(levels.flat());
    },
  };
}

/** Number of nodes of a tree over `n` leaves, all levels (the length of `nodes()` over 32). */
export function nodeCount(n: number): number {
  let total = 0;
  for (let width = n; ; width = Math.ceil(width / 2)) {
    total += width;
    if (width <= 1) return total;
  }
}

/**
 * The root that some leaves, at their positions, lead to in the tree over `n` leaves whose nodes
 * (`MerkleTree.nodes()`, read back from storage and not trusted) supply the siblings not among
 * them: each level hashes only the parents of the nodes in hand, so a run of k neighbouring leaves
 * costs about k hashes plus two per level, and the stored nodes on their paths are never used.
 * When the answer equals an anchored root, every given leaf is in that tree at its position.
 * `known` is sorted by index, without repeats; undefined when the stored nodes have the wrong size
 * or an index is out of range.
 */
export function rootOfLeaves(n: number, stored: Buffer, known: readonly { index: number; leaf: Buffer }[]): Buffer | undefined {
  if (n < 1 || stored.length !== 32 * nodeCount(n) || known.length === 0) return undefined;
  let indices = known.map((k) => k.index);
  let nodes = known.map((k) => k.leaf);
  for (let j = 0; j < indices.length; j++) if (indices[j]! < 0 || indices[j]! >= n || (j > 0 && indices[j]! <= indices[j - 1]!)) return undefined;
  let offset = 0;
  for (let width = n; width > 1; offset += width, width = Math.ceil(width / 2)) {
    const upIndices: number[] = [];
    const upNodes: Buffer[] = [];
    for (let j = 0; j < indices.length; j++) {
      const i = indices[j]!;
      const parent = i >> 1;
      if (upIndices.length && upIndices[upIndices.length - 1] === parent) continue; // made with its left sibling
      const sibling = i ^ 1;
      let up: Buffer;
      if (sibling >= width) up = nodes[j]!; // the odd node at the end is carried up
      else {
        const s = indices[j + 1] === sibling ? nodes[j + 1]! : stored.subarray(32 * (offset + sibling), 32 * (offset + sibling + 1));
        up = hashPair(nodes[j]!, s);
      }
      upIndices.push(parent);
      upNodes.push(up);
    }
    indices = upIndices;
    nodes = upNodes;
  }
  return nodes[0];
}

/** The root a proof leads to from `leaf`. */
export function rootFromProof(leaf: Buffer, proof: Buffer): Buffer {
  if (proof.length % 32 !== 0) throw new RangeError('a proof is a multiple of 32 bytes');
  let node = leaf;
  for (let o = 0; o < proof.length; o += 32) node = hashPair(node, proof.subarray(o, o + 32));
  return node;
}

/** True when `proof` leads from `leaf` to `root`. */
export function verifyMerkleProof(leaf: Buffer, proof: Buffer, root: Buffer): boolean {
  return proof.length % 32 === 0 && rootFromProof(leaf, proof).equals(root);
}
