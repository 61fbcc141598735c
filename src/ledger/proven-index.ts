/**
 * Versions proven ahead. At start-up, in the background (IntegrityChecker.proveAhead), the checker
 * hashes the stored tree of each of the newest anchored batches up to the root the contract holds
 * for it, whole; a batch whose leaves lead there has its leaves and salts kept here, with where each
 * version's leaf is. A first read of such a version is then one SHA-256 (salt ‖ the text served)
 * compared with its proven leaf: the same verdict a read's own walk up the tree gives (this text
 * is a leaf of a tree whose root is anchored), paid once in the background instead of on the request
 * — on the 1,000,000-reading store the integrity guard took 2.3–2.5 ms of a patient-day's first read
 * over HTTP instead of 3.4–3.5 ms (docs/benchmarks.md, session 31).
 *
 * Kept: the newest version of each id, when its version id is a plain number (the embedded
 * repository's; others are checked as before) and its type one of the first 255 seen. Nothing here
 * decides a failure: a text whose leaf differs is checked the usual way, which finds out why.
 * Memory: 64 bytes of leaf and salt, 13 of place and the id's map entry per version, ~150 bytes
 * in all (RSS +150 MB for 999,970 versions of the fhir-search bench's store, proven in 4.4–6.2 s
 * with the roots read first: docs/benchmarks.md); GLUCOGUARD_PROVE_AHEAD bounds the count.
 * An erasure in this process drops the index with its salts and proves again (app.ts); a patient
 * erased by another process sharing the store (the CLI beside a running server) keeps their salts
 * here until this process erases someone or restarts, as the tree cache does (store.ts): their
 * bodies are unreadable by then, and a salt proves nothing without its text.
 */
import { commitmentOf } from './canonical.js';

/** A version id the index keeps: a plain decimal number below 2³² (no sign, no leading zero). */
const PLAIN_VERSION = /^(?:0|[1-9]\d{0,9})$/;

/** Shards of the id map: a Map of a million entries rehashes in one go as it grows (tens of ms), and misses the CPU caches on reads. */
const SHARDS = 256;

/** The shard of an id: its last two characters (random in a UUID, the embedded repository's ids). */
function shardOf(id: string): number {
  const n = id.length;
  return ((id.charCodeAt(n - 1) << 4) ^ id.charCodeAt(n - 2)) & (SHARDS - 1);
}

export class ProvenIndex {
  /** id → slot, in SHARDS maps. */
  private readonly slots = Array.from({ length: SHARDS }, () => new Map<string, number>());
  private count = 0;
  private readonly typeOf: Uint8Array;
  private readonly versionOf: Uint32Array;
  private readonly batchOf: Uint32Array;
  private readonly positionOf: Uint32Array;
  private readonly types: string[] = [];
  /** Proven batches: every leaf's salt and the leaves themselves, 32 bytes each, in tree order. */
  private readonly batches: { salts: Buffer; leaves: Buffer }[] = [];

  constructor(readonly capacity: number) {
    this.typeOf = new Uint8Array(capacity);
    this.versionOf = new Uint32Array(capacity);
    this.batchOf = new Uint32Array(capacity);
    this.positionOf = new Uint32Array(capacity);
  }

  /** Versions kept. */
  get size(): number {
    return this.count;
  }

  /** Where the version of `id` kept is (for `proves`), or -1 when none is. */
  slotOf(id: string): number {
    return this.slots[shardOf(id)]!.get(id) ?? -1;
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
      const shard = this.slots[shardOf(k.id)]!;
      if (shard.has(k.id) || !PLAIN_VERSION.test(k.version)) continue;
      const version = Number(k.version);
      if (version > 0xffffffff) continue;
      let type = this.types.indexOf(k.type);
      if (type < 0) {
        if (this.types.length >= 255) continue;
        type = this.types.push(k.type) - 1;
      }
      const slot = this.count++;
      shard.set(k.id, slot);
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
