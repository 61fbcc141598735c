/**
 * Opening the SQLite files GlucoGuard keeps under its data directory, one way everywhere: the
 * folder created owner-only, WAL (readers never wait for the writer), and `synchronous = NORMAL`
 * by default (a process crash loses nothing; a power cut can lose the last commits, which the
 * stores of derived or reconciled data recover from); `FULL` for rarely written data that cannot be
 * re-derived (users, clients, keys).
 */
import Database from 'better-sqlite3';
import type { Database as DB } from 'better-sqlite3';
import { chmodSync, constants, existsSync, mkdirSync, statSync } from 'node:fs';
import { pathProblem } from './config.js';
import path from 'node:path';

export function openSqlite(file: string, options: { synchronous?: 'NORMAL' | 'FULL' } = {}): DB {
  const db = openOwnerOnly(file);
  try {
    db.pragma('journal_mode = WAL');
    db.pragma(`synchronous = ${options.synchronous ?? 'NORMAL'}`);
  } catch (err) {
    db.close();
    throw sqliteOpenError(file, err);
  }
  return db;
}

/**
 * A SQLite file opened (created when absent) so that only the owner can read it: its folder made
 * 0700 and a new file set to 0600 before the first write, which the `-wal` and `-shm` files SQLite
 * makes beside it copy. The files hold patient ids and grant ids, never for other local users.
 * A file that cannot be opened is said with its path and why (SqliteOpenError).
 */
export function openOwnerOnly(file: string): DB {
  let db: DB;
  try {
    mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    const created = !existsSync(file);
    db = new Database(file);
    if (created) chmodSync(file, 0o600);
  } catch (err) {
    throw sqliteOpenError(file, err);
  }
  return db;
}

/** A data file that cannot be opened or written: `code` ERR_DATA_DIR, the message names the file and the cause. */
export class SqliteOpenError extends Error {
  readonly code = 'ERR_DATA_DIR';
}

/**
 * Why `file` could not be opened, in words: SQLite says only "unable to open database file" or
 * "attempt to write a readonly database", so the folder and the file are asked directly.
 */
function sqliteOpenError(file: string, err: unknown): Error {
  const e = err as { code?: string; message?: string };
  // a damaged file: SQLite's words alone ("file is not a database") do not say which of the data directory's files
  if (/^SQLITE_(NOTADB|CORRUPT)/.test(e.code ?? '')) {
    return new Error(`cannot open ${file}: ${e.message ?? String(err)} (${e.code}): it is damaged or not a GlucoGuard file; `
      + 'restore the whole data directory from one backup (docs/operations.md, Backups and restores)', { cause: err });
  }
  // only what a data directory's place or permissions cause; a busy or corrupt file stays as SQLite says it
  if (!/^(SQLITE_CANTOPEN|SQLITE_READONLY|SQLITE_PERM|EACCES$|EPERM$|EROFS$|ENOTDIR$|ENOENT$|EEXIST$)/.test(e.code ?? '')) return err as Error;
  return new SqliteOpenError(`cannot open ${file}: ${writeProblem(file) ?? e.message ?? String(err)}`, { cause: err });
}

/** What stops this process writing `file`, or creating it in its folder (or the nearest that exists). */
function writeProblem(file: string): string | undefined {
  if (existsSync(file)) return pathProblem(file, constants.R_OK | constants.W_OK) ?? pathProblem(path.dirname(file), constants.W_OK | constants.X_OK); // -wal and -shm go beside it
  let dir = path.dirname(file);
  while (!existsSync(dir) && path.dirname(dir) !== dir) dir = path.dirname(dir);
  if (!statSync(dir).isDirectory()) return `${dir} is not a directory`;
  return pathProblem(dir, constants.W_OK | constants.X_OK);
}
