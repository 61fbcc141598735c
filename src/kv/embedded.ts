/**
 * KeyValueStore in a SQLite file of the data directory (`<dataDir>/kv/kv.sqlite`): the default when
 * REDIS_URL is not set, so revocations, refresh tokens, used codes and `jti`s, consent withdrawals
 * and pending requests survive a restart, and every process that opens the data directory (`serve`
 * and CLI commands such as `consent revoke`) reads and writes the same state.
 *
 * At rest: keys are HMAC-SHA-256 digests and values AES-256-GCM sealed (bound to their key), both
 * under keys derived from the key root, so the file holds no bearer value (launch ids, pending
 * authorization ids) and no grant record in clear, and a guessed token cannot be looked up in it
 * without the master key. Counters (`increment`) are kept as plain integers under digested keys.
 *
 * Expiry: an entry past its time is invisible to every read and is overwritten by any write; rows
 * are deleted in the background every `sweepMs` (a scan: an index on the expiry would double the
 * cost of every write, and writes — codes, refresh tokens, rate-limit counts — outnumber sweeps).
 *
 * Pub/sub: a publish reaches this process's subscribers at once, and other processes on the same
 * file through a message table each subscribed process reads every `pollMs` (the CLI's consent
 * withdrawal reaches a running server, as it would through Redis).
 *
 * Any SQLite failure (locked past the busy timeout, disk full, closed) throws ERR_UNAVAILABLE, so
 * callers fail closed.
 */
import { createCipheriv, createDecipheriv, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Database, Statement } from 'better-sqlite3';
import { unavailable } from '../errors.js';
import { deriveKey } from '../keys.js';
import type { Logger } from '../log.js';
import { openSqlite } from '../sqlite.js';
import type { KeyValueStore } from './port.js';

const SCHEMA_VERSION = 1;
/** How long a published message stays readable by other processes (ms). */
const MESSAGE_RETENTION_MS = 5 * 60_000;
/** Rows deleted per statement when sweeping, so the write lock is held briefly. */
const SWEEP_BATCH = 1000;
/** Key digests kept for keys read again (a token's revocation check on each request, the consent epoch). */
const DIGEST_CACHE_SIZE = 4096;

export interface EmbeddedKvOptions {
  /** The SQLite file (created with its folder when missing). */
  file: string;
  /** Key root (base64): keys are digested and values sealed under keys derived from it. */
  rootKey: string;
  logger?: Logger;
  /** Clock (epoch ms); tests freeze it. */
  now?: () => number;
  /** How often a subscribed process reads messages other processes published (ms, default 100). */
  pollMs?: number;
  /** How often expired rows and old messages are deleted (ms, default 60 s). */
  sweepMs?: number;
}

type Row = { v: Buffer | number | bigint; expires_at: number | null };

export class EmbeddedKeyValueStore implements KeyValueStore {
  readonly description: { adapter: 'embedded'; location: string };
  private readonly db: Database;
  private readonly keyMac: Buffer;
  private readonly sealKey: Buffer;
  private readonly now: () => number;
  /** Tells this process's own messages from other processes' in the message table. */
  private readonly origin = randomBytes(12).toString('base64url');
  private readonly bus = new EventEmitter();
  /** Digest (hex) of each subscribed channel → its name. */
  private readonly channels = new Map<string, string>();
  private readonly digests = new Map<string, Buffer>();
  private readonly statements: Record<
    'get' | 'set' | 'setIfAbsent' | 'take' | 'delete' | 'increment' | 'publish' | 'messages' | 'lastMessage' | 'sweepEntries' | 'sweepMessages',
    Statement
  >;
  private readonly sweeper: NodeJS.Timeout;
  private poller: NodeJS.Timeout | undefined;
  private lastMessageId: number;
  private pollOk = true;
  private closed = false;

  constructor(private readonly options: EmbeddedKvOptions) {
    this.now = options.now ?? Date.now;
    this.description = { adapter: 'embedded', location: options.file };
    this.keyMac = deriveKey(options.rootKey, 'kv-embedded-key');
    this.sealKey = deriveKey(options.rootKey, 'kv-embedded-seal');
    let db: Database | undefined;
    try {
      db = openSqlite(options.file);
      this.migrate(db);
    } catch (err) {
      db?.close();
      throw unavailable(`the KV store ${options.file} could not be opened: ${(err as Error).message}`, err);
    }
    this.db = db;
    const expired = '(kv_entry.expires_at IS NOT NULL AND kv_entry.expires_at <= @now)';
    this.statements = {
      get: db.prepare(`SELECT v, expires_at FROM kv_entry WHERE k = ? AND (expires_at IS NULL OR expires_at > ?)`),
      set: db.prepare('INSERT OR REPLACE INTO kv_entry (k, v, expires_at) VALUES (@k, @v, @expiresAt)'),
      setIfAbsent: db.prepare(`INSERT INTO kv_entry (k, v, expires_at) VALUES (@k, @v, @expiresAt)
        ON CONFLICT (k) DO UPDATE SET v = excluded.v, expires_at = excluded.expires_at WHERE ${expired}`),
      take: db.prepare('DELETE FROM kv_entry WHERE k = ? RETURNING v, expires_at'),
      delete: db.prepare('DELETE FROM kv_entry WHERE k = ?'),
      // a counter past its window (or a key holding something else) starts again at 1 with a new expiry
      increment: db.prepare(`INSERT INTO kv_entry (k, v, expires_at) VALUES (@k, 1, @expiresAt)
        ON CONFLICT (k) DO UPDATE SET
          v = CASE WHEN ${expired} OR typeof(kv_entry.v) <> 'integer' THEN 1 ELSE kv_entry.v + 1 END,
          expires_at = CASE WHEN ${expired} OR typeof(kv_entry.v) <> 'integer' THEN excluded.expires_at ELSE kv_entry.expires_at END
        RETURNING v`),
      publish: db.prepare('INSERT INTO kv_message (channel, message, origin, at) VALUES (?, ?, ?, ?)'),
      messages: db.prepare('SELECT id, channel, message, origin FROM kv_message WHERE id > ? ORDER BY id LIMIT 1000'),
      lastMessage: db.prepare('SELECT COALESCE(MAX(id), 0) AS id FROM kv_message'),
      sweepEntries: db.prepare(`DELETE FROM kv_entry WHERE k IN (SELECT k FROM kv_entry WHERE expires_at <= @now LIMIT ${SWEEP_BATCH})`),
      sweepMessages: db.prepare('DELETE FROM kv_message WHERE at <= ?'),
    };
    // only messages published from now on are delivered here
    this.lastMessageId = Number((this.statements.lastMessage.get() as { id: number | bigint }).id);
    this.sweeper = setInterval(() => this.sweep(), options.sweepMs ?? 60_000);
    this.sweeper.unref();
    this.bus.setMaxListeners(0);
  }

  async get(key: string): Promise<string | undefined> {
    const k = this.digest(key);
    const row = this.run(() => this.statements.get.get(k, this.now()) as Row | undefined);
    return row ? this.valueOf(k, row.v) : undefined;
  }

  async set(key: string, value: string, ttlMs?: number): Promise<void> {
    const k = this.digest(key);
    const v = this.seal(k, value);
    this.run(() => this.statements.set.run({ k, v, expiresAt: ttlMs ? this.now() + ttlMs : null }));
  }

  async setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean> {
    const k = this.digest(key);
    const v = this.seal(k, value);
    const now = this.now();
    return this.run(() => this.statements.setIfAbsent.run({ k, v, expiresAt: now + ttlMs, now }).changes === 1);
  }

  async take(key: string): Promise<string | undefined> {
    const k = this.digest(key);
    const row = this.run(() => this.statements.take.get(k) as Row | undefined);
    if (!row || (row.expires_at !== null && row.expires_at <= this.now())) return undefined;
    return this.valueOf(k, row.v);
  }

  async delete(key: string): Promise<void> {
    const k = this.digest(key);
    this.run(() => this.statements.delete.run(k));
  }

  async increment(key: string, ttlMs: number): Promise<number> {
    const k = this.digest(key);
    const now = this.now();
    const row = this.run(() => this.statements.increment.get({ k, expiresAt: now + ttlMs, now }) as { v: number | bigint });
    return Number(row.v);
  }

  async publish(channel: string, message: string): Promise<void> {
    // this process's subscribers first: dropping a cache never waits for the disk
    this.bus.emit(channel, message);
    const c = this.digest(`channel\0${channel}`);
    const sealed = this.seal(c, message);
    this.run(() => this.statements.publish.run(c, sealed, this.origin, this.now()));
  }

  async subscribe(channel: string, handler: (message: string) => void): Promise<() => Promise<void>> {
    if (this.closed) throw unavailable('the KV store is closed');
    const hex = this.digest(`channel\0${channel}`).toString('hex');
    this.channels.set(hex, channel);
    this.bus.on(channel, handler);
    if (!this.poller) {
      this.poller = setInterval(() => this.poll(), this.options.pollMs ?? 100);
      this.poller.unref();
    }
    return async () => {
      this.bus.off(channel, handler);
      if (this.bus.listenerCount(channel) === 0) this.channels.delete(hex);
    };
  }

  /**
   * True while the message table can be read: a message another process publishes then reaches
   * this one within `pollMs`; this process's own reach its subscribers at once.
   */
  subscriptionLive(): boolean {
    return !this.closed && this.pollOk;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.sweeper);
    if (this.poller) clearInterval(this.poller);
    this.bus.removeAllListeners();
    this.channels.clear();
    this.digests.clear();
    this.db.close();
  }

  /** Deletes expired rows and old messages now (also run every `sweepMs`); returns the rows deleted. */
  sweep(): number {
    if (this.closed) return 0;
    let deleted = 0;
    try {
      const now = this.now();
      for (let n = SWEEP_BATCH; n === SWEEP_BATCH;) {
        n = this.statements.sweepEntries.run({ now }).changes;
        deleted += n;
      }
      deleted += this.statements.sweepMessages.run(now - MESSAGE_RETENTION_MS).changes;
    } catch (err) {
      // another process holding the lock, a full disk: the next sweep tries again (reads never see expired rows)
      this.options.logger?.warn({ err: (err as Error).message, kv: this.options.file }, 'kv: sweeping expired entries failed');
    }
    return deleted;
  }

  /** Delivers messages other processes published since the last poll. */
  private poll(): void {
    if (this.closed || this.channels.size === 0) return;
    try {
      const rows = this.statements.messages.all(this.lastMessageId) as { id: number | bigint; channel: Buffer; message: Buffer; origin: string }[];
      this.pollOk = true;
      for (const row of rows) {
        this.lastMessageId = Number(row.id);
        if (row.origin === this.origin) continue;
        const channel = this.channels.get(row.channel.toString('hex'));
        if (channel === undefined) continue;
        const message = this.open(row.channel, row.message);
        if (message !== undefined) this.bus.emit(channel, message);
      }
    } catch (err) {
      if (this.pollOk) this.options.logger?.warn({ err: (err as Error).message, kv: this.options.file }, 'kv: reading published messages failed');
      this.pollOk = false;
    }
  }

  private migrate(db: Database): void {
    const version = db.pragma('user_version', { simple: true }) as number;
    if (version > SCHEMA_VERSION) throw new Error(`${this.options.file} was written by a newer GlucoGuard (schema ${version})`);
    db.exec(`
      CREATE TABLE IF NOT EXISTS kv_meta (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
      CREATE TABLE IF NOT EXISTS kv_entry (k BLOB PRIMARY KEY, v NOT NULL, expires_at INTEGER) WITHOUT ROWID;
      CREATE TABLE IF NOT EXISTS kv_message (id INTEGER PRIMARY KEY AUTOINCREMENT, channel BLOB NOT NULL, message BLOB NOT NULL, origin TEXT NOT NULL, at INTEGER NOT NULL);
      PRAGMA user_version = ${SCHEMA_VERSION};
    `);
    // Entries digested under another key root would all read as absent (revocations forgotten
    // without a word): refuse such a file instead.
    const check = createHmac('sha256', this.keyMac).update('glucoguard-kv-check').digest();
    db.prepare('INSERT OR IGNORE INTO kv_meta (name, value) VALUES (?, ?)').run('check', check);
    const stored = (db.prepare('SELECT value FROM kv_meta WHERE name = ?').get('check') as { value: Buffer }).value;
    if (stored.length !== check.length || !timingSafeEqual(stored, check)) {
      throw new Error(`${this.options.file} was written under another key root (master key): move it aside to start with an empty KV store`);
    }
  }

  /** HMAC of a key; a request path reads the same few keys again and again, so recent ones are kept (an HMAC costs more than the SQLite read). */
  private digest(key: string): Buffer {
    let k = this.digests.get(key);
    if (!k) {
      k = createHmac('sha256', this.keyMac).update(key).digest();
      if (this.digests.size >= DIGEST_CACHE_SIZE) this.digests.clear();
      this.digests.set(key, k);
    }
    return k;
  }

  /** iv (12) | tag (16) | ciphertext, with the key's digest as associated data. */
  private seal(k: Buffer, value: string): Buffer {
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', this.sealKey, iv);
    cipher.setAAD(k);
    const data = Buffer.concat([cipher.update(value, 'utf8'), cipher.final()]);
    return Buffer.concat([iv, cipher.getAuthTag(), data]);
  }

  private open(k: Buffer, sealed: Buffer): string | undefined {
    try {
      const decipher = createDecipheriv('aes-256-gcm', this.sealKey, sealed.subarray(0, 12));
      decipher.setAAD(k);
      decipher.setAuthTag(sealed.subarray(12, 28));
      return Buffer.concat([decipher.update(sealed.subarray(28)), decipher.final()]).toString('utf8');
    } catch {
      return undefined;
    }
  }

  private valueOf(k: Buffer, v: Buffer | number | bigint): string | undefined {
    if (typeof v === 'number' || typeof v === 'bigint') return String(v);
    // a value that does not open was not written here under this key (tampered): as if absent
    return this.open(k, v);
  }

  private run<T>(statement: () => T): T {
    if (this.closed) throw unavailable('the KV store is closed');
    try {
      return statement();
    } catch (err) {
      throw unavailable('the KV store could not be read or written', err);
    }
  }
}
