/**
 * The SQLite file of the embedded repository (`<dataDir>/store/glucoguard.db`) and its prepared
 * statements. Every version of every resource is one row of `versions`; the newest version of a
 * resource has `current = 1`. Index rows point at the `seq` of the current, non-deleted version
 * only, so superseded and deleted versions are never search candidates.
 *
 * Nothing readable about a patient's health is stored in clear: bodies are AES-GCM ciphertext
 * (keys.ts); `ix_ref` holds keyed hashes of tokens and references; `ix_date` holds a keyed hash
 * pair (h, h2) of the parameter (or of the patient for the patient+date index) with plaintext
 * epoch-ms bounds.
 */
import Database from 'better-sqlite3';
import type { Database as DB, Statement } from 'better-sqlite3';
import { chmodSync, existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';

import { INDEX_GENERATION } from './params.js';

const SCHEMA_VERSION = '2';

export const METHOD = { POST: 0, PUT: 1, DELETE: 2 } as const;
export const METHOD_NAME = ['POST', 'PUT', 'DELETE'] as const;

/** A row of `versions` as read back. */
export interface VersionRow {
  seq: number;
  type: string;
  id: string;
  version: number;
  last_updated: number;
  method: number;
  key_id: string | null;
  key_version: number | null;
  body: Buffer | null;
  ix: Buffer | null;
  /** 1 when the row was read without its body (SELECT_LIGHT in search.ts). */
  light?: number;
}

export interface Statements {
  insertVersion: Statement<[string, string, number, number, number, string | null, number | null, Buffer | null, Buffer | null]>;
  retireCurrent: Statement<[number]>;
  currentOf: Statement<[string, string], VersionRow>;
  versionOf: Statement<[string, string, number], VersionRow>;
  bySeq: Statement<[number], VersionRow>;
  /** Inserts a version's token/reference index rows (keyed hashes). */
  insertRefs(seq: number, refs: number[]): void;
  deleteRef: Statement<[number, number]>;
  /** Inserts a version's date/quantity index rows. */
  insertDates(seq: number, dates: { h: number; h2: number; start: number; end: number }[]): void;
  deleteDate: Statement<[number, number, number]>;
  clearIx: Statement<[number]>;
  setIx: Statement<[Buffer, number]>;
  /** Current, non-deleted versions after a seq, in seq order, `limit` of them (reindex). */
}

/** The embedded store's SQLite file in a data directory (whether or not it exists yet). */
export function storeFilePath(dataDir: string): string {
  return path.join(dataDir, 'store', 'glucoguard.db');
}

/**
 * Opens (creating when needed) the store file with WAL and the schema. `mmapBytes`: how much of the
 * file SQLite reads through a memory map (the OS page cache itself) rather than read calls into its
 * own page cache: a patient-day of readings streamed in among many patients' lies on ~288 pages,
 * each a read call otherwise: that search's p50 6.5–7.2 → 4.7 ms with 2 GiB, as fast as on a store
 * loaded patient after patient (docs/benchmarks.md, session 8).
 */
export function openStore(dataDir: string, mmapBytes = 0): { db: DB; file: string } {
  const file = storeFilePath(dataDir);
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const created = !existsSync(file);
  const db = new Database(file);
  // owner-only whatever the process's umask (the index holds patient ids, dates and values); SQLite
  // gives the -wal and -shm files the database file's permissions
  if (created) chmodSync(file, 0o600);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('temp_store = MEMORY');
  db.pragma('cache_size = -65536');
  db.pragma(`mmap_size = ${Math.max(0, Math.floor(mmapBytes))}`);
  db.exec(`
    CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS data_keys (key_id TEXT PRIMARY KEY, version INTEGER NOT NULL, wrapped BLOB);
    CREATE TABLE IF NOT EXISTS versions (
      seq INTEGER PRIMARY KEY,
      type TEXT NOT NULL,
      id TEXT NOT NULL,
      version INTEGER NOT NULL,
      last_updated INTEGER NOT NULL,
      method INTEGER NOT NULL,
      current INTEGER NOT NULL DEFAULT 1,
      key_id TEXT,
      key_version INTEGER,
      body BLOB,
      ix BLOB
    );
    CREATE UNIQUE INDEX IF NOT EXISTS versions_by_id ON versions (type, id, version);
    CREATE INDEX IF NOT EXISTS versions_by_key ON versions (key_id, type, seq);
    CREATE INDEX IF NOT EXISTS versions_by_type ON versions (type, seq);
    CREATE INDEX IF NOT EXISTS versions_live ON versions (type, last_updated) WHERE current = 1 AND method <> 2;
    -- history with _since (history.ts); a store made before it gets it at open (1.3 s for 1,000,000 versions)
    CREATE INDEX IF NOT EXISTS versions_by_time ON versions (type, last_updated);
    CREATE TABLE IF NOT EXISTS ix_ref (h INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (h, seq)) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS ix_date (
      h INTEGER NOT NULL, h2 INTEGER NOT NULL, start INTEGER NOT NULL, end INTEGER NOT NULL, seq INTEGER NOT NULL,
      PRIMARY KEY (h, start, seq)
    ) WITHOUT ROWID;
  `);
  // Deletions written before they kept the deleted version's data key id get it now, so history
  // confined to some patients (history.ts) finds them; only deletions have no key id (versions_by_key).
  db.prepare(`UPDATE versions SET key_id = (SELECT p.key_id FROM versions p INDEXED BY versions_by_id
    WHERE p.type = versions.type AND p.id = versions.id AND p.version = versions.version - 1)
    WHERE key_id IS NULL AND method = ${METHOD.DELETE}`).run();
  const version = db.prepare<[], { v: string }>("SELECT v FROM meta WHERE k = 'schema'").get();
  if (!version) {
    db.prepare("INSERT INTO meta (k, v) VALUES ('schema', ?)").run(SCHEMA_VERSION);
    // a new store: its rows are written complete for every parameter indexed now, and bind their
    // write time from the first (no earlier release ever wrote to it: readTimeBoundFrom)
    db.prepare("INSERT OR IGNORE INTO meta (k, v) VALUES ('index-generation', ?)").run(String(INDEX_GENERATION));
    db.prepare("INSERT OR IGNORE INTO meta (k, v) VALUES ('time-bound-from', '1')").run();
  } else if (version.v !== SCHEMA_VERSION) {
    throw new Error(`store schema ${version.v} is not supported (expected ${SCHEMA_VERSION})`);
  }
  return { db, file };
}

const VERSION_COLUMNS = 'seq, type, id, version, last_updated, method, key_id, key_version, body, ix';

/**
 * The current (not deleted) versions of some types, all types when `types` is undefined, in store
 * order: their count, and a page after a seq (what a rebuild of the index walks).
 */
export function currentVersions(db: Database.Database, types?: string[]): { count(): number; after(seq: number, limit: number): VersionRow[] } {
  const ofTypes = types ? ` AND type IN (${types.map(() => '?').join(',')})` : '';
  const live = `current = 1 AND method <> ${METHOD.DELETE}${ofTypes}`;
  const count = db.prepare<unknown[], number>(`SELECT count(*) FROM versions WHERE ${live}`).pluck();
  const page = db.prepare<unknown[], VersionRow>(`SELECT ${VERSION_COLUMNS} FROM versions WHERE seq > ? AND ${live} ORDER BY seq LIMIT ?`);
  return {
    count: () => count.get(...(types ?? [])) ?? 0,
    after: (seq, limit) => page.all(seq, ...(types ?? []), limit),
  };
}

/**
 * The index generation the store's rows are complete for (params.ts INDEX_GENERATION): stores made
 * before generations were recorded have the first one.
 */
export function readIndexGeneration(db: DB): number {
  const row = db.prepare<[], { v: string }>("SELECT v FROM meta WHERE k = 'index-generation'").get();
  return row ? Number(row.v) : 1;
}

/**
 * The first seq whose body binds its row's `last_updated` as well (index.ts `aad`); Infinity while
 * the store writes rows without it. A store this code creates binds from its first row. A store an
 * earlier release made goes on writing unbound rows — which every release reads, so replicas of both
 * can run side by side during a rolling upgrade — until the operator binds from now on
 * (`glucoguard keys bind-row-times`, bindRowTimes) once no earlier release runs on it: that release
 * cannot open a bound row. Rows are never deleted from `versions`, so every later write lands at or
 * after the value. Changing it helps no one: a body sealed with one binding never opens with the other.
 */
export function readTimeBoundFrom(db: DB): number {
  const row = db.prepare<[], { v: string }>("SELECT v FROM meta WHERE k = 'time-bound-from'").get();
  return row ? Number(row.v) : Number.POSITIVE_INFINITY;
}

/** Binds the write time of every row written from now on (see readTimeBoundFrom); answers the first seq bound. */
export function bindRowTimes(db: DB): number {
  db.prepare("INSERT OR IGNORE INTO meta (k, v) SELECT 'time-bound-from', CAST(COALESCE(MAX(seq), 0) + 1 AS TEXT) FROM versions").run();
  return readTimeBoundFrom(db);
}

export function writeIndexGeneration(db: DB, generation: number): void {
  db.prepare("INSERT INTO meta (k, v) VALUES ('index-generation', ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v").run(String(generation));
}

export function prepareStatements(db: DB): Statements {
  const cols = VERSION_COLUMNS;
  return {
    insertVersion: db.prepare('INSERT INTO versions (type, id, version, last_updated, method, key_id, key_version, body, ix) ' +
      'VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)'),
    retireCurrent: db.prepare('UPDATE versions SET current = 0, ix = NULL WHERE seq = ?'),
    currentOf: db.prepare(`SELECT ${cols} FROM versions WHERE type = ? AND id = ? AND current = 1`),
    versionOf: db.prepare(`SELECT ${cols} FROM versions WHERE type = ? AND id = ? AND version = ?`),
    bySeq: db.prepare(`SELECT ${cols} FROM versions WHERE seq = ?`),
    insertRefs: multiRowInsert(db, 'INSERT OR IGNORE INTO ix_ref (h, seq) VALUES ', '(?, ?)', (seq, refs: number[], args) => {
      for (const h of refs) args.push(h, seq);
    }),
    deleteRef: db.prepare('DELETE FROM ix_ref WHERE h = ? AND seq = ?'),
    insertDates: multiRowInsert(db, 'INSERT OR IGNORE INTO ix_date (h, h2, start, end, seq) VALUES ', '(?, ?, ?, ?, ?)',
      (seq, dates: { h: number; h2: number; start: number; end: number }[], args) => {
        for (const d of dates) args.push(d.h, d.h2, d.start, d.end, seq);
      }),
    deleteDate: db.prepare('DELETE FROM ix_date WHERE h = ? AND start = ? AND seq = ?'),
    clearIx: db.prepare('UPDATE versions SET ix = NULL WHERE seq = ?'),
    setIx: db.prepare('UPDATE versions SET ix = ? WHERE seq = ?'),
  };
}

/** Rows per multi-row INSERT statement (a version has ~20 index rows; a Patient's name prefixes more). */
const ROWS_PER_INSERT = 64;

/**
 * Inserts a version's index rows with one statement per ROWS_PER_INSERT rows instead of one per
 * row: a CGM reading's ~18 rows took 19 µs one by one and 13 µs as two statements (throw-away probe
 * `.prof/multirow.mjs`, docs/benchmarks.md session 14). One prepared statement per row count.
 */
function multiRowInsert<T>(db: DB, head: string, row: string, flatten: (seq: number, rows: T[], args: (number | bigint)[]) => void):
  (seq: number, rows: T[]) => void {
  const statements = new Map<number, Statement<(number | bigint)[]>>();
  const statementFor = (count: number): Statement<(number | bigint)[]> => {
    let statement = statements.get(count);
    if (!statement) statements.set(count, statement = db.prepare(head + Array(count).fill(row).join(', ')));
    return statement;
  };
  return (seq, rows) => {
    for (let i = 0; i < rows.length; i += ROWS_PER_INSERT) {
      const chunk = rows.length <= ROWS_PER_INSERT ? rows : rows.slice(i, i + ROWS_PER_INSERT);
      const args: (number | bigint)[] = [];
      flatten(seq, chunk, args);
      statementFor(chunk.length).run(...args);
    }
  };
}

/**
 * The index rows written for a version, packed (float64: ref count, ref hashes, then date
 * hash/start pairs) so they can be removed exactly when the version stops being current.
 */
export function packIx(refs: number[], dates: { h: number; start: number }[]): Buffer {
  const a = new Float64Array(1 + refs.length + dates.length * 2);
  a[0] = refs.length;
  refs.forEach((h, i) => { a[1 + i] = h; });
  dates.forEach((d, i) => { a[1 + refs.length + 2 * i] = d.h; a[2 + refs.length + 2 * i] = d.start; });
  return Buffer.from(a.buffer);
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** The starts of the date rows under key hash `h` in packed index rows (packIx), read in place: keyset paging asks it of every row. */
export function ixStartsUnder(buf: Buffer, h: number): number[] {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const starts: number[] = [];
  for (let at = (1 + view.getFloat64(0, LITTLE_ENDIAN)) * 8; at + 16 <= buf.byteLength; at += 16) {
    if (view.getFloat64(at, LITTLE_ENDIAN) === h) starts.push(view.getFloat64(at + 8, LITTLE_ENDIAN));
  }
  return starts;
}

export function unpackIx(buf: Buffer): { refs: number[]; dates: { h: number; start: number }[] } {
  const a = new Float64Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
  const n = a[0]!;
  const refs = Array.from(a.subarray(1, 1 + n));
  const dates: { h: number; start: number }[] = [];
  for (let i = 1 + n; i + 1 < a.length; i += 2) dates.push({ h: a[i]!, start: a[i + 1]! });
  return { refs, dates };
}
