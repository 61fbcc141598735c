/**
 * Which version rows a history page holds (https://hl7.org/fhir/R4/http.html#history): newest
 * first (by `seq`, the order of writes), optionally only versions updated at or after `_since`,
 * paged by offset. Versions whose data key was erased are not part of any history.
 *
 * Reads cost what they return, not the size of the store:
 * - instance history reads the resource's own versions (`versions_by_id`);
 * - without `_since`, the page is the newest rows of the store (or of the type) and the walk down
 *   `seq` stops when it is full;
 * - with `_since`, the versions updated since are first counted on `versions_by_time`
 *   (type, last_updated), up to one page past the offset. Fewer than that: they are the whole
 *   answer, sorted by `seq` here. As many or more: the newest rows are walked down `seq` as
 *   without `_since`, stopping when the page is full.
 *
 * `last_updated` is the writer's clock and may step back, so it is never taken as a bound on
 * `seq`: every branch filters on `last_updated` itself and returns exactly the rows that match.
 * A clock step back can only make the walk pass over the versions written while the clock was
 * behind `_since`.
 */
import type { Statement } from 'better-sqlite3';
import { SELECT } from './search.js';
import { METHOD, type VersionRow } from './store.js';

export interface HistoryQuery {
  type?: string;
  /** Instance history (needs `type`). */
  id?: string;
  /** `_since` in epoch ms. */
  since?: number;
  /** Type and system history: only rows under these data key ids (a patient's versions and deletions). */
  keyIds?: string[];
  /** Only rows written up to this `seq` (HistoryRequest.snapshot): later pages of one walk. */
  maxSeq?: number;
  count: number;
  offset: number;
}

/** Rows of versions that are part of history: deletions, and bodies whose data key still exists. */
const READABLE = '(v.body IS NULL OR (k.wrapped IS NOT NULL AND k.version = v.key_version))';
const KEYS = 'LEFT JOIN data_keys k ON k.key_id = v.key_id';

/**
 * The SQL counting the versions updated at or after `?` (the type's when `type`, else every
 * type's), up to `LIMIT ?`. For all types, the types are found by skipping along the index
 * (one look-up per type) and each type's range is read from it.
 */
export function sinceMatchesSql(type: boolean, bounded = false): string {
  const upTo = bounded ? ' AND v.seq <= ?' : '';
  if (type) {
    return `SELECT v.seq AS seq FROM versions v INDEXED BY versions_by_time ${KEYS} ` +
      `WHERE v.type = ? AND v.last_updated >= ?${upTo} AND ${READABLE} LIMIT ?`;
  }
  return `${TYPES_CTE} SELECT v.seq AS seq FROM types JOIN versions v INDEXED BY versions_by_time ON v.type = types.t ${KEYS} ` +
    `WHERE v.last_updated >= ?${upTo} AND ${READABLE} LIMIT ?`;
}

/** The types that have versions, found by skipping along `versions_by_time` (one look-up each). */
const TYPES_CTE = 'WITH RECURSIVE types(t) AS (' +
  'SELECT (SELECT type FROM versions INDEXED BY versions_by_time ORDER BY type LIMIT 1) ' +
  'UNION ALL SELECT (SELECT type FROM versions INDEXED BY versions_by_time WHERE type > types.t ORDER BY type LIMIT 1) ' +
  'FROM types WHERE types.t IS NOT NULL)';

/** The SQL listing the types that have versions. */
export const TYPES_SQL = `${TYPES_CTE} SELECT t FROM types WHERE t IS NOT NULL`;

/**
 * The SQL of one chunk of a type's versions updated at or after a time, in (last_updated, seq)
 * order after the cursor `(?, ?)`, up to `LIMIT ?`: what `versionKeysSince` walks, one index range,
 * no body read. Each row says whether it is a readable version (not a deletion, data key not erased).
 */
export const VERSION_KEYS_SQL = 'SELECT v.seq AS seq, v.last_updated AS lastUpdated, v.id AS id, v.version AS version, ' +
  `(v.method <> ${METHOD.DELETE} AND k.wrapped IS NOT NULL AND k.version = v.key_version) AS readable ` +
  `FROM versions v INDEXED BY versions_by_time ${KEYS} WHERE v.type = ? AND (v.last_updated, v.seq) > (?, ?) ` +
  'ORDER BY v.last_updated, v.seq LIMIT ?';

/**
 * The rows of one history page, newest first: up to `count + 1` (one more than the page says
 * whether more follow). `prepare` returns a cached prepared statement.
 */
export function historyRows(prepare: (sql: string) => Statement<unknown[], VersionRow>, query: HistoryQuery): VersionRow[] {
  const { type, id, since, count, offset, maxSeq } = query;
  const page = [count + 1, offset];
  const after = (since === undefined ? '' : ' AND v.last_updated >= ?') + (maxSeq === undefined ? '' : ' AND v.seq <= ?');
  const afterArgs = [...(since === undefined ? [] : [since]), ...(maxSeq === undefined ? [] : [maxSeq])];
  if (query.keyIds !== undefined && id === undefined) return keyedRows(prepare, { ...query, keyIds: query.keyIds });
  if (id !== undefined) {
    // the id index always: ordering by seq, SQLite would otherwise walk every version of the type
    return prepare(`${SELECT} FROM versions v INDEXED BY versions_by_id ${KEYS} ` +
      `WHERE v.type = ? AND v.id = ?${after} AND ${READABLE} ORDER BY v.seq DESC LIMIT ? OFFSET ?`)
      .all(type, id, ...afterArgs, ...page);
  }
  if (since !== undefined) {
    const need = offset + count + 1;
    const matches = prepare(sinceMatchesSql(type !== undefined, maxSeq !== undefined))
      .all(...(type !== undefined ? [type] : []), since, ...(maxSeq === undefined ? [] : [maxSeq]), need) as unknown as { seq: number }[];
    if (matches.length < need) {
      const bySeq = prepare(`${SELECT} FROM versions v WHERE v.seq = ?`);
      return matches.map((m) => m.seq).sort((a, b) => b - a).slice(offset, offset + count + 1)
        .map((seq) => bySeq.get(seq)!);
    }
  }
  // The newest rows down seq; `+` keeps SQLite from reading the time index and sorting instead.
  const from = type !== undefined ? 'versions v INDEXED BY versions_by_type' : 'versions v NOT INDEXED';
  const where = [...(type !== undefined ? ['v.type = ?'] : []), ...(since !== undefined ? ['+v.last_updated >= ?'] : []),
    ...(maxSeq !== undefined ? ['v.seq <= ?'] : []), READABLE];
  return prepare(`${SELECT} FROM ${from} ${KEYS} WHERE ${where.join(' AND ')} ORDER BY v.seq DESC LIMIT ? OFFSET ?`)
    .all(...(type !== undefined ? [type] : []), ...afterArgs, ...page);
}

/**
 * History confined to some data keys (patients): the seqs of the page are read from
 * `versions_by_key` (key_id, type, seq) alone — for one key in `seq` order, for several merged and
 * sorted from the index — then the rows themselves by seq. Costs what those patients have, not the
 * store. `_since` is checked on each candidate row.
 */
function keyedRows(
  prepare: (sql: string) => Statement<unknown[], VersionRow>, query: HistoryQuery & { keyIds: string[] },
): VersionRow[] {
  const { type, since, count, offset, keyIds, maxSeq } = query;
  if (keyIds.length === 0) return [];
  const where = [
    keyIds.length === 1 ? 'v.key_id = ?' : `v.key_id IN (${keyIds.map(() => '?').join(', ')})`,
    ...(type !== undefined ? ['v.type = ?'] : []),
    ...(since !== undefined ? ['v.last_updated >= ?'] : []),
    ...(maxSeq !== undefined ? ['v.seq <= ?'] : []),
    READABLE,
  ];
  const seqs = prepare(`SELECT v.seq AS seq FROM versions v INDEXED BY versions_by_key ${KEYS} WHERE ${where.join(' AND ')} ` +
    'ORDER BY v.seq DESC LIMIT ? OFFSET ?')
    .all(...keyIds, ...(type !== undefined ? [type] : []), ...(since !== undefined ? [since] : []), ...(maxSeq !== undefined ? [maxSeq] : []), count + 1, offset) as unknown as { seq: number }[];
  const bySeq = prepare(`${SELECT} FROM versions v WHERE v.seq = ?`);
  return seqs.map((m) => bySeq.get(m.seq)!);
}
