/**
 * Decoded versions of the embedded repository, kept so that a version read again (a clinician's
 * dashboard polling the same day, paging back and forth) skips AES-GCM decryption and JSON parsing.
 *
 * An entry is keyed by the row's `seq` and holds the exact ciphertext it was decoded from: a hit
 * needs the row just read from the file to carry byte-identical ciphertext, so whatever is on disk
 * now is what was decrypted, authenticated and parsed before (a row changed on disk is a miss and
 * is decrypted, and then checked by the integrity layer, as on a first read). Searches that read
 * rows without their bodies use `getUnchanged` instead: the repository empties the cache whenever
 * another connection has committed to the file, and its own writes never change a stored body, so
 * an entry still present matches its row (see EmbeddedRepository.syncDecoded). The caller checks
 * that the row's data key still exists before asking, so an erased patient's data is never served
 * from here; `clear()` drops everything at erasure anyway.
 *
 * Cached resources are deep-frozen and shared between requests: code that changes a resource it
 * read must copy it first (it always had to, see `attachCanonicalText`); a write to a frozen
 * object throws in strict-mode code rather than leaking into the next reader's answer.
 *
 * A version is kept from its second read on (`offer`): the first read only notes its row, so a
 * stream of reads that never come back (1,000,000 readings searched a day at a time) pays nothing
 * for freezing and holding them, and the heap the garbage collector walks does not grow.
 *
 * Bounded by an estimate of the bytes held (ciphertext × 5: the parsed object, its canonical text,
 * the JSON text it is served as, kept with it once written (`jsonTextOf`), and the ciphertext);
 * the oldest sixteenth is dropped at once when full.
 */
import type { Resource } from '@medplum/fhirtypes';
import { markImmutable } from '../port.js';

interface Entry {
  body: Buffer;
  resource: Resource;
  size: number;
}

/** Rows whose first read is noted (the admission filter); forgotten all at once when full. */
const SEEN_MAX = 200_000;

export class DecodedCache {
  private readonly entries = new Map<number, Entry>();
  private readonly seen = new Set<number>();
  private size = 0;
  hits = 0;
  misses = 0;

  constructor(private readonly budgetBytes: number) {}

  get enabled(): boolean {
    return this.budgetBytes > 0;
  }

  /** The resource decoded earlier from exactly `body` at row `seq`, if any. */
  get(seq: number, body: Buffer): Resource | undefined {
    const entry = this.entries.get(seq);
    if (entry && entry.body.length === body.length && entry.body.equals(body)) return this.hit(entry);
    return this.miss();
  }

  /**
   * The resource decoded earlier at row `seq`, without the row's body to compare: only for a
   * caller that knows no row changed since (the repository empties the cache when another
   * connection has committed to the file; its own writes never change a stored version's body).
   */
  getUnchanged(seq: number): Resource | undefined {
    const entry = this.entries.get(seq);
    return entry ? this.hit(entry) : this.miss();
  }

  /** Share of recent reads answered from here (exponentially weighted over ~100 reads). */
  get recentHitRate(): number {
    return this.rate;
  }

  private rate = 0;

  private hit(entry: Entry): Resource {
    this.hits++;
    this.rate = this.rate * 0.99 + 0.01;
    return entry.resource;
  }

  private miss(): undefined {
    this.misses++;
    this.rate *= 0.99;
    return undefined;
  }

  /** A decoded row: kept (frozen) when the row was read before, else noted; answers the resource. */
  offer(seq: number, body: Buffer, resource: Resource): Resource {
    if (!this.enabled) return resource;
    if (this.seen.delete(seq)) return this.set(seq, body, resource);
    if (this.seen.size >= SEEN_MAX) this.seen.clear();
    this.seen.add(seq);
    return resource;
  }

  /**
   * For a reader that would rather not decode a row read for the first time (a deferred read): true
   * when the row was read before (decode it and `set` it now), else notes this first read.
   */
  seenBefore(seq: number): boolean {
    if (!this.enabled) return false;
    if (this.seen.delete(seq)) return true;
    if (this.seen.size >= SEEN_MAX) this.seen.clear();
    this.seen.add(seq);
    return false;
  }

  /** Keeps `resource` (frozen here) as the decoding of `body` at row `seq`; answers it. */
  set(seq: number, body: Buffer, resource: Resource): Resource {
    if (!this.enabled) return resource;
    const size = body.length * 5 + 256;
    if (size > this.budgetBytes / 16) return resource;
    const old = this.entries.get(seq);
    if (old) {
      this.entries.delete(seq);
      this.size -= old.size;
    }
    if (this.size + size > this.budgetBytes) this.evict(size);
    // better-sqlite3 hands each row's blob over in a Buffer of its own: kept as it is
    this.entries.set(seq, { body, resource: deepFreeze(resource), size });
    markImmutable(resource);
    this.size += size;
    return resource;
  }

  clear(): void {
    this.entries.clear();
    this.seen.clear();
    this.rate = 0;
    this.size = 0;
  }

  get bytes(): number {
    return this.size;
  }

  get count(): number {
    return this.entries.size;
  }

  private evict(incoming: number): void {
    let drop = Math.max(1, this.entries.size >> 4);
    for (const [seq, entry] of this.entries) {
      if (drop <= 0 && this.size + incoming <= this.budgetBytes) break;
      this.entries.delete(seq);
      this.size -= entry.size;
      drop--;
    }
  }
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const key of Object.keys(value)) deepFreeze((value as Record<string, unknown>)[key]);
  }
  return value;
}
