/**
 * The SQLite files GlucoGuard keeps (src/sqlite.ts): created owner-only whatever the process's
 * umask, and a file that cannot be opened is named with the reason instead of SQLite's bare
 * "unable to open database file".
 */
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, test } from '@jest/globals';
import { openOwnerOnly, openSqlite, SqliteOpenError } from '../../src/sqlite.js';

const dir = mkdtempSync(path.join(tmpdir(), 'gg-sqlite-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('SQLite files under the data directory', () => {
  test('a damaged file (not a database) is named, with what to do, instead of SQLite\'s bare "file is not a database"', () => {
    const file = path.join(dir, 'ledger', 'commitments.db');
    openSqlite(file).close();
    writeFileSync(file, Buffer.alloc(8192, 0x5a)); // overwritten: no SQLite header
    for (const suffix of ['-wal', '-shm']) rmSync(`${file}${suffix}`, { force: true });
    expect(() => openSqlite(file)).toThrow(`cannot open ${file}: file is not a database (SQLITE_NOTADB): it is damaged or not a GlucoGuard file`);
  });

  test('a new store, its folder and its WAL files are owner-only even under umask 022', () => {
    const previous = process.umask(0o022);
    try {
      const file = path.join(dir, 'exports', 'jobs.sqlite');
      const db = openSqlite(file);
      db.exec('CREATE TABLE t (x)');
      db.prepare('INSERT INTO t VALUES (1)').run();
      const modes = ['', '-wal', '-shm'].map((suffix) => (statSync(`${file}${suffix}`).mode & 0o777).toString(8));
      db.close();
      expect(modes).toEqual(['600', '600', '600']);
      expect(statSync(path.dirname(file)).mode & 0o777).toBe(0o700);
      const again = openOwnerOnly(path.join(dir, 'exports', 'subscriptions.sqlite'));
      again.close();
      expect(statSync(path.join(dir, 'exports', 'subscriptions.sqlite')).mode & 0o777).toBe(0o600);
    } finally {
      process.umask(previous);
    }
  });

  test('a store that cannot be opened is named with why (ERR_DATA_DIR)', () => {
    const blocker = path.join(dir, 'store');
    writeFileSync(blocker, 'not a folder');
    const file = path.join(blocker, 'glucoguard.db');
    let error: unknown;
    try {
      openSqlite(file);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(SqliteOpenError);
    expect((error as SqliteOpenError).code).toBe('ERR_DATA_DIR');
    expect((error as Error).message).toBe(`cannot open ${file}: ${blocker} is not a directory`);
    expect((error as Error).message).not.toBe('unable to open database file');
  });
});
