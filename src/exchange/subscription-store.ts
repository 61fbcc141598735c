/**
 * Delivery state of Subscriptions, `<dataDir>/exports/subscriptions.sqlite`:
 * - `subscription_state`: one JSON row per Subscription (SubscriptionState) and its revision, which
 *   every write of the Subscription (create, update, in whichever process) raises;
 * - `subscription_events`: the events numbered for each Subscription (number, time, the version it
 *   is about), the last EVENT_LOG_KEEP per Subscription, which `$events` answers from;
 * - `meta`: the delivery lease — processes sharing a data directory (a server, and CLI commands
 *   that open the app) must not all deliver: one holds the lease, the others stay passive — and the
 *   definitions counter, raised with every create, update and delete, which the holder polls to
 *   take up Subscriptions written through the passive processes.
 *   It also keeps the commitment seq up to which the holder numbered written versions, so the next
 *   holder (after a crash, a restart or a lease handover) goes on from there.
 *
 * A Subscription's event counter and its event rows are written in one transaction, when the
 * events are numbered (when they happen), before any delivery is tried. The holder writes delivery
 * state only over the revision it loaded: a Subscription redefined or deleted by another process
 * meanwhile is neither overwritten nor brought back.
 */
import { holderDied } from '../lease-owner.js';
import path from 'node:path';
import type Database from 'better-sqlite3';
import { openSqlite } from '../sqlite.js';

/** Events kept per Subscription for `$events` (older ones are gone; their numbers stay used). */
export const EVENT_LOG_KEEP = 10_000;

export interface LoggedEvent {
  number: number;
  timestamp: string;
  type: string;
  id: string;
  version: string;
  interaction: 'create' | 'update';
}

/** A stored row: the SubscriptionState as text, and the revision of its definition. */
export interface StoredRow {
  id: string;
  json: string;
  rev: number;
}

export class SubscriptionStore {
  private readonly db: Database.Database;

  constructor(dir: string) {
    // owner-only: it holds patient ids and grant ids
    this.db = openSqlite(path.join(dir, 'subscriptions.sqlite'), { synchronous: 'FULL' });
    this.db.pragma('busy_timeout = 5000');
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS subscription_state (id TEXT PRIMARY KEY, json TEXT NOT NULL, rev INTEGER NOT NULL DEFAULT 1);
      CREATE TABLE IF NOT EXISTS subscription_events (
        subscription TEXT NOT NULL, number INTEGER NOT NULL, at TEXT NOT NULL, type TEXT NOT NULL, id TEXT NOT NULL,
        version TEXT NOT NULL, interaction TEXT NOT NULL, PRIMARY KEY (subscription, number)) WITHOUT ROWID;
      CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
      CREATE INDEX IF NOT EXISTS subscription_events_version ON subscription_events (subscription, type, id, version);
    `);
    // a store made before revisions: every row is at its first (looked at again under the write lock, as another process may be adding it)
    const revised = () => this.db.prepare<[], { name: string }>('PRAGMA table_info(subscription_state)').all().some((c) => c.name === 'rev');
    if (!revised()) {
      this.db.transaction(() => {
        if (!revised()) this.db.exec('ALTER TABLE subscription_state ADD COLUMN rev INTEGER NOT NULL DEFAULT 1');
      }).immediate();
    }
  }

  /** Every stored row, as text (the caller parses, so one broken row cannot stop the others). */
  rows(): StoredRow[] {
    return this.db.prepare('SELECT id, json, rev FROM subscription_state').all() as StoredRow[];
  }

  /** One stored row, or undefined. */
  row(id: string): StoredRow | undefined {
    return this.db.prepare<[string], StoredRow>('SELECT id, json, rev FROM subscription_state WHERE id = ?').get(id);
  }

  /**
   * Writes a Subscription as created or updated: `build` gets the stored row (undefined for a new
   * one) inside the transaction, so counters it carries over are the latest any process wrote.
   * Raises the revision and the definitions counter; answers the new revision.
   */
  define(id: string, build: (current: StoredRow | undefined) => string): number {
    return this.db.transaction(() => {
      const current = this.row(id);
      const rev = (current?.rev ?? 0) + 1;
      this.db.prepare('INSERT INTO subscription_state (id, json, rev) VALUES (?, ?, ?) ON CONFLICT(id) DO UPDATE SET json = excluded.json, rev = excluded.rev')
        .run(id, build(current), rev);
      this.bumpDefinitions();
      return rev;
    }).immediate();
  }

  /**
   * Writes the delivery state of revision `rev`; false (nothing written) when the Subscription was
   * redefined or deleted since that revision was loaded.
   */
  save(id: string, rev: number, json: string): boolean {
    return this.db.prepare('UPDATE subscription_state SET json = ? WHERE id = ? AND rev = ?').run(json, id, rev).changes === 1;
  }

  remove(id: string): void {
    this.db.transaction(() => {
      this.db.prepare('DELETE FROM subscription_state WHERE id = ?').run(id);
      this.db.prepare('DELETE FROM subscription_events WHERE subscription = ?').run(id);
      this.bumpDefinitions();
    })();
  }

  /**
   * How many times Subscriptions were created, updated or deleted, by any process: when it moved,
   * the holder compares revisions to find what changed.
   */
  definitions(): number {
    return Number(this.db.prepare<[], { v: string }>("SELECT v FROM meta WHERE k = 'definitions'").get()?.v ?? 0);
  }

  private bumpDefinitions(): void {
    this.db.prepare("INSERT INTO meta (k, v) VALUES ('definitions', '1') ON CONFLICT (k) DO UPDATE SET v = CAST(CAST(v AS INTEGER) + 1 AS TEXT)").run();
  }

  /**
   * Records numbered events and the state of revision `rev` that counts them, in one transaction;
   * false (nothing written) when the Subscription was redefined or deleted since.
   */
  recordEvents(id: string, rev: number, stateJson: string, events: LoggedEvent[]): boolean {
    const insert = this.db.prepare('INSERT OR REPLACE INTO subscription_events (subscription, number, at, type, id, version, interaction) VALUES (?, ?, ?, ?, ?, ?, ?)');
    return this.db.transaction(() => {
      if (!this.save(id, rev, stateJson)) return false;
      if (events.length === 0) return true;
      for (const e of events) insert.run(id, e.number, e.timestamp, e.type, e.id, e.version, e.interaction);
      this.db.prepare('DELETE FROM subscription_events WHERE subscription = ? AND number <= ?').run(id, events[events.length - 1]!.number - EVENT_LOG_KEEP);
      return true;
    })();
  }

  /** Whether an event about this version is logged for the Subscription (numbered before, by any holder). */
  isLogged(subscription: string, type: string, id: string, version: string): boolean {
    return this.db.prepare('SELECT 1 FROM subscription_events WHERE subscription = ? AND type = ? AND id = ? AND version = ?')
      .get(subscription, type, id, version) !== undefined;
  }

  /**
   * The commitment seq up to which the holder has numbered what was written (undefined: never
   * recorded), so the next holder — this server restarted, or another process taking the lease —
   * goes on from there instead of from the newest commitment, skipping what came in meanwhile.
   */
  commitmentsSeen(): number | undefined {
    const v = this.db.prepare<[], { v: string }>("SELECT v FROM meta WHERE k = 'commitments-seen'").get()?.v;
    return v === undefined ? undefined : Number(v);
  }

  setCommitmentsSeen(seq: number): void {
    this.db.prepare("INSERT INTO meta (k, v) VALUES ('commitments-seen', ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v").run(String(seq));
  }

  /** Logged events numbered from `since` to `until` (inclusive), at most `limit`, oldest first. */
  events(id: string, since: number, until: number, limit: number): LoggedEvent[] {
    return this.db.prepare('SELECT number, at AS timestamp, type, id, version, interaction FROM subscription_events '
      + 'WHERE subscription = ? AND number >= ? AND number <= ? ORDER BY number LIMIT ?').all(id, since, until, limit) as LoggedEvent[];
  }

  /**
   * Takes or renews the delivery lease for `owner` until `now + ttlMs`, unless another owner holds
   * one that has not expired and whose process is still running; answers whether `owner` holds it.
   */
  holdLease(owner: string, ttlMs: number, now = Date.now()): boolean {
    return this.db.transaction(() => {
      const [holder, until] = (this.db.prepare<[], { v: string }>("SELECT v FROM meta WHERE k = 'deliverer'").get()?.v ?? '').split(' ');
      if (holder && holder !== owner && Number(until) > now && !holderDied(holder)) return false;
      this.db.prepare("INSERT INTO meta (k, v) VALUES ('deliverer', ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v").run(`${owner} ${now + ttlMs}`);
      return true;
    }).immediate();
  }

  releaseLease(owner: string): void {
    this.db.prepare("DELETE FROM meta WHERE k = 'deliverer' AND v LIKE ? || ' %'").run(owner);
  }

  close(): void {
    this.db.close();
  }
}
