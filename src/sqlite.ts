/**
 * Opening the SQLite files GlucoGuard keeps under its data directory, one way everywhere: the
 * folder created owner-only, WAL (readers never wait for the writer), and `synchronous = NORMAL`
 * by default (a process crash loses nothing; a power cut can lose the last commits, which the
 * stores of derived or reconciled data recover from); `FULL` for rarely written data that cannot be
 * re-derived (users, clients, keys).
 */
import Database from 'better-sqlite3';
import type { Database as DB } from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import path from 'node:path';

export function openSqlite(file: string, options: { synchronous?: 'NORMAL' | 'FULL' } = {}): DB {
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.pragma(`synchronous = ${options.synchronous ?? 'NORMAL'}`);
  return db;
}
