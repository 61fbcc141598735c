/**
 * The EthereumJS `DB` interface over a classic-level (LevelDB) sublevel. EthereumJS passes the key and
 * value encoding per call (bytes, strings, JSON), so each call maps them onto level's encodings.
 */
import type { BatchDBOp, DB, DBObject, EncodingOpts } from '@ethereumjs/util';
import type { AbstractSublevel } from 'abstract-level';
import type { ClassicLevel } from 'classic-level';

type Key = Uint8Array | string | number;
type Value = Uint8Array | string | DBObject;
export type Sublevel = AbstractSublevel<ClassicLevel<string, string>, string | Uint8Array | Buffer, string, string>;

/** One operation of a batch on the root database, aimed at a sublevel (abstract-level's `sublevel` option). */
export interface RootBatchOp {
  type: 'put' | 'del';
  sublevel: Sublevel;
  key: Uint8Array | string;
  value?: unknown;
  keyEncoding?: string;
  valueEncoding?: string;
}

function encodings(opts: EncodingOpts = {}): { keyEncoding: string; valueEncoding: string } {
  const valueEncoding = opts.valueEncoding === 'string' ? 'utf8' : opts.valueEncoding === 'json' ? 'json' : 'view';
  const keyEncoding = opts.keyEncoding === 'view' ? 'view' : 'utf8';
  return { keyEncoding, valueEncoding };
}

function key(k: Key): Uint8Array | string {
  return typeof k === 'number' ? String(k) : k;
}

interface WriteBuffer {
  active: boolean;
  ops: Map<string, BatchDBOp<Key, Value>>;
}

/**
 * Adapts one sublevel to EthereumJS's DB interface. With `cacheEntries` > 0 it keeps an LRU of values
 * read or written (for the state trie, whose nodes are immutable and keyed by hash, this saves the
 * LevelDB round trip that otherwise dominates an eth_call); the cache is bounded so memory stays flat.
 */
export class LevelDB implements DB<Key, Value> {
  private readonly cache: Map<string, Value> | undefined;
  private readonly buffer: WriteBuffer;

  constructor(private readonly level: Sublevel, private readonly cacheEntries = 0, cache?: Map<string, Value>, buffer?: WriteBuffer) {
    this.cache = cacheEntries > 0 ? (cache ?? new Map()) : undefined;
    this.buffer = buffer ?? { active: false, ops: new Map() };
  }

  /**
   * Holds writes (of this adapter and all its shallow copies) in memory until `takeWrites`: the state
   * trie and every storage trie write their nodes one put at a time, the blockchain and its Clique
   * snapshots several puts per block; the node writes them all, with the receipts, in one batch.
   * Reads see the held writes.
   */
  bufferWrites(): void {
    this.buffer.active = true;
  }

  /**
   * Hands over the held writes as operations for one batch on the parent database (each names this
   * adapter's sublevel), and stops buffering.
   */
  takeWrites(): RootBatchOp[] {
    const ops = [...this.buffer.ops.values()].map((op) => ({ ...op, key: key(op.key), ...encodings(op.opts), sublevel: this.level }));
    this.buffer.ops.clear();
    this.buffer.active = false;
    return ops as RootBatchOp[];
  }

  /** Drops held writes (the block they belonged to was abandoned) and stops buffering. */
  discardWrites(): void {
    this.buffer.ops.clear();
    this.buffer.active = false;
  }

  private cacheKey(k: Key, opts?: EncodingOpts): string {
    return `${opts?.valueEncoding ?? 'view'}:${typeof k === 'string' || typeof k === 'number' ? k : Buffer.from(k).toString('hex')}`;
  }

  private remember(ck: string, value: Value): void {
    const cache = this.cache!;
    cache.delete(ck);
    cache.set(ck, value);
    if (cache.size > this.cacheEntries) cache.delete(cache.keys().next().value!);
  }

  async get(k: Key, opts?: EncodingOpts): Promise<Value | undefined> {
    if (this.buffer.ops.size) {
      const op = this.buffer.ops.get(this.cacheKey(k, opts));
      if (op) return op.type === 'put' ? op.value : undefined;
    }
    const ck = this.cache ? this.cacheKey(k, opts) : '';
    const hit = this.cache?.get(ck);
    if (hit !== undefined) {
      this.remember(ck, hit);
      return hit;
    }
    const value = await this.level.get(key(k) as string, encodings(opts) as object);
    if (value === undefined || value === null) return undefined;
    if (this.cache) this.remember(ck, value as unknown as Value);
    return value as unknown as Value;
  }

  async put(k: Key, value: Value, opts?: EncodingOpts): Promise<void> {
    if (this.buffer.active) return this.batch([{ type: 'put', key: k, value, opts }]);
    await this.level.put(key(k) as string, value as string, encodings(opts) as object);
    if (this.cache) this.remember(this.cacheKey(k, opts), value);
  }

  async del(k: Key, opts?: EncodingOpts): Promise<void> {
    if (this.buffer.active) return this.batch([{ type: 'del', key: k, opts }]);
    if (this.cache) this.cache.delete(this.cacheKey(k, opts));
    await this.level.del(key(k) as string, encodings(opts) as object);
  }

  async batch(ops: BatchDBOp<Key, Value>[]): Promise<void> {
    if (this.buffer.active) {
      for (const op of ops) this.buffer.ops.set(this.cacheKey(op.key, op.opts), op);
    } else {
      const levelOps = ops.map((op) => ({ ...op, key: key(op.key), ...encodings(op.opts) }));
      await this.level.batch(levelOps as never);
    }
    if (this.cache) {
      for (const op of ops) {
        const ck = this.cacheKey(op.key, op.opts);
        if (op.type === 'put') this.remember(ck, op.value);
        else this.cache.delete(ck);
      }
    }
  }

  shallowCopy(): DB<Key, Value> {
    return new LevelDB(this.level, this.cacheEntries, this.cache, this.buffer);
  }

  async open(): Promise<void> {
    // the parent ClassicLevel opens its sublevels
  }
}
