/**
 * Encryption at rest for the embedded repository.
 *
 * - The master key (src/keys.ts: from configuration, else `<dataDir>/keys/master.key`)
 *   wraps every data key with AES-256-GCM; the wrapped keys live in the `data_keys` table. A
 *   rotation re-wraps them all under the new master key in one transaction (rewrapDataKeys).
 * - Key ids of patients are HMACs under the key root (src/keys.ts), which a rotation keeps.
 * - Each patient has a random data key; resources with no patient link use the shared
 *   "unassigned" key. Erasing a patient tombstones their key row: their ciphertext stays on disk
 *   but can never be decrypted again (crypto-shredding), even if a new key is made later for the
 *   same patient (key versions differ).
 * - Resource bodies are AES-256-GCM with `type/id/version` (and the row's write time, for rows
 *   written from store.ts readTimeBoundFrom on) as additional authenticated data, so a row copied
 *   onto another resource or version, or moved in time, fails to decrypt.
 * - Search indexes store keyed HMACs (index key, itself wrapped by the master key) of codes,
 *   identifiers and references, never the plaintext.
 */
import { createCipheriv, createDecipheriv, createHmac, randomBytes, randomFillSync } from 'node:crypto';
import BetterSqlite3 from 'better-sqlite3';
import type { Database, Statement } from 'better-sqlite3';

const NONCE = 12;
const TAG = 16;
export const UNASSIGNED_KEY_ID = 'unassigned';
const INDEX_KEY_ID = '$index';
const CHECK_KEY_ID = '$check';

/** A data key and the identity stored with each row it encrypts. */
export interface DataKey {
  id: string;
  version: number;
  key: Buffer;
}

/**
 * GCM nonces come from a pool the CSPRNG fills 4 KiB at a time: one call per 341 nonces instead of
 * one per write (a `randomBytes(12)` call cost ~10 µs of a CGM reading's ~150 µs write). Each
 * pool byte is handed out once; `seal` copies its nonce out (cipher and output) before the pool
 * can be refilled, and each thread has its own pool.
 */
const noncePool = Buffer.alloc(NONCE * 341);
let noncePos = noncePool.length;

function nextNonce(): Buffer {
  if (noncePos + NONCE > noncePool.length) {
    randomFillSync(noncePool);
    noncePos = 0;
  }
  const nonce = noncePool.subarray(noncePos, noncePos + NONCE);
  noncePos += NONCE;
  return nonce;
}

export function seal(key: Buffer, plaintext: Buffer, aad: string): Buffer {
  const nonce = nextNonce();
  const cipher = createCipheriv('aes-256-gcm', key, nonce);
  cipher.setAAD(Buffer.from(aad));
  const body = cipher.update(plaintext);
  const final = cipher.final();
  return Buffer.concat([nonce, body, final, cipher.getAuthTag()]);
}

/** Decrypts, or returns undefined when the key or the binding is wrong (tampered or swapped row). */
export function open(key: Buffer, sealed: Buffer, aad: string): Buffer | undefined {
  if (sealed.length < NONCE + TAG) return undefined;
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, sealed.subarray(0, NONCE));
    decipher.setAAD(Buffer.from(aad));
    decipher.setAuthTag(sealed.subarray(sealed.length - TAG));
    return Buffer.concat([decipher.update(sealed.subarray(NONCE, sealed.length - TAG)), decipher.final()]);
  } catch {
    return undefined;
  }
}

/** Like `open`, decoding straight to a UTF-8 string (the hot path of search: no intermediate buffer). */
export function openText(key: Buffer, sealed: Buffer, aad: string): string | undefined {
  if (sealed.length < NONCE + TAG) return undefined;
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, sealed.subarray(0, NONCE));
    decipher.setAAD(Buffer.from(aad));
    decipher.setAuthTag(sealed.subarray(sealed.length - TAG));
    return decipher.update(sealed.subarray(NONCE, sealed.length - TAG), undefined, 'utf8') + decipher.final('utf8');
  } catch {
    return undefined;
  }
}

/** The data keys of one store. Not thread-safe; callers hold the repository's write lock for changes. */
export class KeyRing {
  private readonly cache = new Map<string, DataKey | null>();
  private readonly hashCache = new Map<string, [number, number]>();
  /** Patient id → key id (an HMAC per write otherwise). */
  private readonly keyIds = new Map<string, string>();
  private readonly indexKey: Buffer;
  private readonly selectKey: Statement<[string], { version: number; wrapped: Buffer | null }>;
  private readonly upsertKey: Statement<[string, number, Buffer | null]>;

  /** `root`: the key root of src/keys.ts (the master key until its first rotation). */
  constructor(db: Database, private readonly master: Buffer, private readonly root: Buffer = master) {
    this.selectKey = db.prepare('SELECT version, wrapped FROM data_keys WHERE key_id = ?');
    this.upsertKey = db.prepare('INSERT INTO data_keys (key_id, version, wrapped) VALUES (?, ?, ?) ' +
      'ON CONFLICT (key_id) DO UPDATE SET version = excluded.version, wrapped = excluded.wrapped');
    this.checkMaster();
    this.indexKey = this.getOrCreate(INDEX_KEY_ID).key;
  }

  /** The key for a patient's resources (created on first use), or the shared unassigned key. */
  keyFor(patientId: string | undefined): DataKey {
    return this.getOrCreate(patientId === undefined ? UNASSIGNED_KEY_ID : this.patientKeyId(patientId));
  }

  /** The key a row names, or undefined once erased (or replaced by a newer version after erasure). */
  keyById(id: string, version: number): Buffer | undefined {
    const key = this.load(id);
    return key && key.version === version ? key.key : undefined;
  }

  /** Key id used for a patient: a keyed hash, so the table does not list patient ids. */
  patientKeyId(patientId: string): string {
    let id = this.keyIds.get(patientId);
    if (id === undefined) {
      id = 'p' + createHmac('sha256', this.root).update('patient-key\0' + patientId).digest('hex').slice(0, 32);
      if (this.keyIds.size > 100_000) this.keyIds.clear();
      this.keyIds.set(patientId, id);
    }
    return id;
  }

  /** Whether a patient has a data key: never had one, has a live one, or had theirs erased (a tombstone). */
  state(patientId: string): 'none' | 'live' | 'erased' {
    const id = this.patientKeyId(patientId);
    if (this.load(id)) return 'live';
    return this.selectKey.get(id) ? 'erased' : 'none';
  }

  /** Tombstones a patient's key; returns its id and version, or undefined when the patient had none. */
  erase(patientId: string): { id: string; version: number } | undefined {
    const id = this.patientKeyId(patientId);
    const key = this.load(id);
    if (!key) return undefined;
    this.upsertKey.run(id, key.version, null);
    this.cache.set(id, null);
    return { id, version: key.version };
  }

  /** Forgets cached keys (after a rolled-back transaction that may have created some). */
  reset(): void {
    this.cache.clear();
  }

  /** A keyed 48-bit hash of an index value, as a number SQLite stores as INTEGER. */
  hash(value: string): number {
    return this.hashPair(value)[0];
  }

  /**
   * Two independent 48-bit slices of the value's HMAC: the date index stores both, so a match
   * on the pair is a 96-bit match and its key (e.g. the patient) needs no re-check.
   */
  hashPair(value: string): [number, number] {
    let h = this.hashCache.get(value);
    if (h === undefined) {
      const digest = createHmac('sha256', this.indexKey).update(value).digest();
      h = [digest.readIntBE(0, 6), digest.readIntBE(6, 6)];
      if (this.hashCache.size > 200_000) this.hashCache.clear();
      this.hashCache.set(value, h);
    }
    return h;
  }

  private getOrCreate(id: string): DataKey {
    const existing = this.load(id);
    if (existing) return existing;
    const tombstone = this.selectKey.get(id);
    const version = tombstone ? tombstone.version + 1 : 1;
    const key: DataKey = { id, version, key: randomBytes(32) };
    this.upsertKey.run(id, version, seal(this.master, key.key, wrapAad(id, version)));
    this.cache.set(id, key);
    return key;
  }

  private load(id: string): DataKey | undefined {
    const cached = this.cache.get(id);
    if (cached !== undefined) return cached ?? undefined;
    const row = this.selectKey.get(id);
    if (!row || !row.wrapped) {
      if (row) this.cache.set(id, null);
      return undefined;
    }
    const key = open(this.master, row.wrapped, wrapAad(id, row.version));
    if (!key) throw new Error(`data key ${id} cannot be unwrapped with this master key`);
    const dataKey = { id, version: row.version, key };
    this.cache.set(id, dataKey);
    return dataKey;
  }

  /** Fails fast, before anything is written, when the store was made with another master key. */
  private checkMaster(): void {
    const row = this.selectKey.get(CHECK_KEY_ID);
    if (!row) {
      this.upsertKey.run(CHECK_KEY_ID, 1, seal(this.master, Buffer.from('glucoguard'), wrapAad(CHECK_KEY_ID, 1)));
    } else if (!row.wrapped || !open(this.master, row.wrapped, wrapAad(CHECK_KEY_ID, row.version))) {
      throw new Error('the master key does not match this data directory');
    }
  }
}

/**
 * Whether a master key opens the check key of the store file (opened read-only: nothing is written),
 * or undefined when that cannot be told (no check key yet, not a store). For start-ups that have no
 * other record of the key to compare with (src/keys.ts, a lost root.check).
 */
export function masterOpensStore(file: string, master: Buffer): boolean | undefined {
  let db: Database | undefined;
  try {
    db = new BetterSqlite3(file, { readonly: true, fileMustExist: true });
    const row = db.prepare<[string], { version: number; wrapped: Buffer | null }>('SELECT version, wrapped FROM data_keys WHERE key_id = ?').get(CHECK_KEY_ID);
    if (!row) return undefined;
    return !!row.wrapped && open(master, row.wrapped, wrapAad(CHECK_KEY_ID, row.version)) !== undefined;
  } catch {
    return undefined; // the store's own open says what is wrong with it
  } finally {
    db?.close();
  }
}

/**
 * Re-wraps every data key of the store (the index and check keys included; erased ones stay
 * tombstones) from one master key to another, in the caller's transaction. A key that already
 * opens with `to` is left as it is, so a rotation interrupted after this step can run it again.
 * Throws, naming the key id, when a key opens with neither: nothing is then changed.
 */
export function rewrapDataKeys(db: Database, from: Buffer, to: Buffer): { rewrapped: number; already: number; erased: number } {
  const rows = db.prepare<[], { key_id: string; version: number; wrapped: Buffer | null }>('SELECT key_id, version, wrapped FROM data_keys').all();
  const update = db.prepare<[Buffer, string]>('UPDATE data_keys SET wrapped = ? WHERE key_id = ?');
  const counts = { rewrapped: 0, already: 0, erased: 0 };
  for (const row of rows) {
    if (!row.wrapped) {
      counts.erased++;
      continue;
    }
    const aad = wrapAad(row.key_id, row.version);
    if (open(to, row.wrapped, aad)) {
      counts.already++;
      continue;
    }
    const key = open(from, row.wrapped, aad);
    if (!key) throw new Error(`data key ${row.key_id} opens with neither the current nor the new master key`);
    update.run(seal(to, key, aad), row.key_id);
    key.fill(0);
    counts.rewrapped++;
  }
  return counts;
}

function wrapAad(id: string, version: number): string {
  return `glucoguard-data-key\0${id}\0${version}`;
}
