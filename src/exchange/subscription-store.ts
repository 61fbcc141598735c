/**
 * Delivery state of Subscriptions, `<dataDir>/exports/subscriptions.sqlite`:
 * - `subscription_state`: one JSON row per Subscription (SubscriptionState);
 * - `subscription_events`: the events numbered for each Subscription (number, time, the version it
 *   is about), the last EVENT_LOG_KEEP per Subscription, which `$events` answers from;
 * - `meta`: the delivery lease — processes sharing a data directory (a server, and CLI commands
 *   that open the app) must not all deliver: one holds the lease, the others stay passive.
 *
 * A Subscription's event counter and its event rows are written in one transaction, when the
 * events are numbered (when they happen), before any delivery is tried.
 */
import { mkdirSync } from 'node:fs';
import { holderDied } from '../lease-owner.js';
import path from 'node:path';
import Database from 'better-sqlite3';

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

export class SubscriptionStore {
  private readonly db: Database.Database;

  constructor(dir: string) {
    mkdirSync(dir, { recursive: true });
    this.db = new Database(path.join(dir, 'subscriptions.sqlite'));
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('busy_timeout = 5000');
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS subscription_state (id TEXT PRIMARY KEY, json TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS subscription_events (
        subscription TEXT NOT NULL, number INTEGER NOT NULL, at TEXT NOT NULL, type TEXT NOT NULL, id TEXT NOT NULL,
        version TEXT NOT NULL, interaction TEXT NOT NULL, PRIMARY KEY (subscription, number)) WITHOUT ROWID;
      CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
    `);
  }

  /** Every stored row, as text (the caller parses, so one broken row cannot stop the others). */
  rows(): { id: string; json: string }[] {
    return this.db.prepare('SELECT id, json FROM subscription_state').all() as { id: string; json: string }[];
  }

  save(id: string, json: string): void {
    this.db.prepare('INSERT INTO subscription_state (id, json) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET json = excluded.json').run(id, json);
  }

  remove(id: string): void {
    this.db.transaction(() => {
      this.db.prepare('DELETE FROM subscription_state WHERE id = ?').run(id);
      this.db.prepare('DELETE FROM subscription_events WHERE subscription = ?').run(id);
    })();
  }

  /** Records numbered events and the state that counts them, in one transaction. */
  recordEvents(id: string, stateJson: string, events: LoggedEvent[]): void {
    if (events.length === 0) {
      this.save(id, stateJson);
      return;
    }
    const insert = this.db.prepare('INSERT OR REPLACE INTO subscription_events (subscription, number, at, type, id, version, interaction) VALUES (?, ?, ?, ?, ?, ?, ?)');
    this.db.transaction(() => {
      this.save(id, stateJson);
      for (const e of events) insert.run(id, e.number, e.timestamp, e.type, e.id, e.version, e.interaction);
      this.db.prepare('DELETE FROM subscription_events WHERE subscription = ? AND number <= ?').run(id, events[events.length - 1]!.number - EVENT_LOG_KEEP);
    })();
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
