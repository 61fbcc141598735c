/**
 * Versions proven ahead. At start-up, in the background (IntegrityChecker.proveAhead), the checker
 * hashes the stored tree of each of the newest anchored batches up to the root the contract holds
 * for it, whole; a batch whose leaves lead there has its leaves and salts kept here, with where each
 * version's leaf is. A first read of such a version is then one SHA-256 (salt ‖ the text served)
 * compared with its proven leaf: the same verdict a read's own walk up the tree gives (this text
 * is a leaf of a tree whose root is anchored), paid once in the background instead of on the request
 * — on the 1,000,000-reading store the integrity guard took 1.9–2.0 ms of a patient-day's first read
 * over HTTP instead of 3.4–3.7 ms (docs/benchmarks.md, session 31).
 *
 * Kept: the newest version of each id, when its version id is a plain number (the embedded
 * repository's; others are checked as before) and its type one of the first 255 seen. Nothing here
 * decides a failure: a text whose leaf differs is checked the usual way, which finds out why.
 * Memory: 64 bytes of leaf and salt, 13 of place and 24–48 of the id's table entry per version
 * (docs/benchmarks.md, session 31, for what a million cost); GLUCOGUARD_PROVE_AHEAD bounds the count.
 * An erasure in this process drops the index with its salts and proves again (app.ts); a patient
 * erased by another process sharing the store (the CLI beside a running server) keeps their salts
 * here until this process erases someone or restarts, as the tree cache does (store.ts): their
 * bodies are unreadable by then, and a salt proves nothing without its text.
 */
import { commitmentOf } from './canonical.js';

/** A version id the index keeps: a plain decimal number below 2³² (no sign, no leading zero). */
const PLAIN_VERSION = /^(?:0|[1-9]\d{0,9})$/;

/**
 * Ids are not kept as strings: each is known by a 64-bit fingerprint (two 32-bit hashes of its
 * characters) in an open-addressing table of one typed array. A Map of a million id strings took
 * ~100 bytes an entry, was traced by every major collection, and missed the CPU caches on nearly
 * every first look-up (~1 µs each: 0.3–0.5 ms of a 288-reading page). Two ids with one fingerprint
 * (odds ~n²/2⁶⁵) cost no wrong verdict: the one not kept finds the other's slot, whose leaf its text
 * cannot match (the canonical text names its own id), and is checked the usual way.
 */
let h1 = 0;
let h2 = 0;

/** Sets h1, h2 to the fingerprint of `id` (FNV-1a and a second multiply-xor hash, each avalanched). */
function fingerprint(id: string): void {
  let a = 0x811c9dc5;
  let b = 0x9747b28c;
  for (let i = 0; i < id.length; i++) {
    const c = id.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193);
    b = Math.imul(b ^ c, 0x5bd1e995);
    b ^= b >>> 15;
  }
  a ^= a >>> 16;
  a = Math.imul(a, 0x85ebca6b);
  a ^= a >>> 13;
  a = Math.imul(a, 0xc2b2ae35);
  a ^= a >>> 16;
  b ^= b >>> 13;
  b = Math.imul(b, 0x5bd1e995);
  b ^= b >>> 15;
  h1 = a >>> 0;
  h2 = b >>> 0;
}

export class ProvenIndex {
  /** Open addressing, three numbers an entry: the id's fingerprint (h1, h2) and its slot + 1 (0: empty). */
  private readonly table: Uint32Array;
  private readonly mask: number;
  private count = 0;
  private readonly typeOf: Uint8Array;
  private readonly versionOf: Uint32Array;
  private readonly batchOf: Uint32Array;
  private readonly positionOf: Uint32Array;
  private readonly types: string[] = [];
  /** Proven batches: every leaf's salt and the leaves themselves, 32 bytes each, in tree order. */
  private readonly batches: { salts: Buffer; leaves: Buffer }[] = [];

  constructor(readonly capacity: number) {
    let width = 16;
    while (width < 2 * capacity) width *= 2; // at most half full: short probes
    this.table = new Uint32Array(3 * width);
    this.mask = width - 1;
    this.typeOf = new Uint8Array(capacity);
    this.versionOf = new Uint32Array(capacity);
    this.batchOf = new Uint32Array(capacity);
    this.positionOf = new Uint32Array(capacity);
  }

  /** The table entry of the id whose fingerprint is in h1, h2, or of the empty place where it would go. */
  private entryOf(): number {
    const table = this.table;
    for (let i = h1 & this.mask; ; i = (i + 1) & this.mask) {
      const e = 3 * i;
      if (table[e + 2] === 0 || (table[e] === h1 && table[e + 1] === h2)) return e;
    }
  }

  /** Versions kept. */
  get size(): number {
    return this.count;
  }

  /** Where the version of `id` kept is (for `proves`), or -1 when none is. */
  slotOf(id: string): number {
    fingerprint(id);
    return this.table[this.entryOf() + 2]! - 1;
  }

  full(): boolean {
    return this.count >= this.capacity;
  }

  /**
   * Keeps a proven batch: its salts and leaves (tree order) and its versions, `keys` newest first
   * with each one's position in the tree. A version of an id already kept (a newer one, from a newer
   * batch or later in this one) is left out. Answers how many versions were kept.
   */
  add(salts: Buffer, leaves: Buffer, keys: Iterable<{ type: string; id: string; version: string; position: number }>): number {
    const batch = this.batches.length;
    const width = Math.min(salts.length, leaves.length) / 32;
    let added = 0;
    for (const k of keys) {
      if (this.full()) break;
      if (!Number.isInteger(k.position) || k.position < 0 || k.position >= width) continue; // stored positions are not trusted either
      if (!PLAIN_VERSION.test(k.version)) continue;
      fingerprint(k.id);
      const entry = this.entryOf();
      if (this.table[entry + 2] !== 0) continue;
      const version = Number(k.version);
      if (version > 0xffffffff) continue;
      let type = this.types.indexOf(k.type);
      if (type < 0) {
        if (this.types.length >= 255) continue;
        type = this.types.push(k.type) - 1;
      }
      const slot = this.count++;
      this.table[entry] = h1;
      this.table[entry + 1] = h2;
      this.table[entry + 2] = slot + 1;
      this.typeOf[slot] = type;
      this.versionOf[slot] = version;
      this.batchOf[slot] = batch;
      this.positionOf[slot] = k.position;
      added++;
    }
    // copies: the batch's stored node and salt buffers are released
    if (added) this.batches.push({ salts: Buffer.from(salts), leaves: Buffer.from(leaves) });
    return added;
  }

  /**
   * True when `text` is the content of this version (of the id at `slot`) as proven: its salted hash
   * is the proven leaf; false when the version kept is another or its text differs (the caller
   * checks it the usual way).
   */
  proves(slot: number, type: string, version: string, text: string): boolean {
    if (this.types[this.typeOf[slot]!] !== type || !PLAIN_VERSION.test(version) || Number(version) !== this.versionOf[slot]) return false;
    const { salts, leaves } = this.batches[this.batchOf[slot]!]!;
    const at = 32 * this.positionOf[slot]!;
    const leaf = commitmentOf(salts.subarray(at, at + 32), text);
    return leaves.compare(leaf, 0, 32, at, at + 32) === 0;
  }
}
