/**
 * Bulk reads for exports: a search answered in chunks, with the filters and matching of runSearch
 * (search.ts) but no paging by offset, no `_include` and no total order promise beyond the one
 * stated here.
 *
 * When the plan walks the patient+date index (one patient's Observations, say, possibly cut to a
 * date range), chunks follow the index by keyset on (start, seq): every chunk costs its own rows
 * only, whatever the patient's history holds before it. Long-span and undated rows of that patient
 * (a side bucket, few) come first. Any other plan is read by offset chunks over its candidates.
 *
 * Each chunk is one SQLite read (its own snapshot); writes that land between chunks may or may not
 * be seen, as with any paged read.
 */
import type { SearchRequest } from '@medplum/core';
import type { Resource } from '@medplum/fhirtypes';
import { compileMatcher } from './match.js';
import { patientDateParam } from './params.js';
import { normalizeFilter, paramsFor, planSearch, SELECT, type SearchContext } from './search.js';
import type { VersionRow } from './store.js';

type KeyedRow = VersionRow & { d_start: number };

/**
 * The matches of `request` (sort rules ignored), `chunk` at a time; with `standIns`, candidates whose
 * bytes do not authenticate as their stand-ins (runSearch).
 */
export function* streamSearch(ctx: SearchContext, request: SearchRequest, chunk: number, standIns = false): Generator<Resource[]> {
  const type = request.resourceType;
  const params = paramsFor(type);
  const filters = (request.filters ?? []).map((f) => normalizeFilter(type, params, f));
  const dateParam = patientDateParam(type);
  const plan = planSearch(ctx, type, params, filters, dateParam ? { code: dateParam } : undefined);
  const isMatch = compileMatcher(params, filters.filter((f) => !plan.proven?.includes(f)));
  // A resource with several rows under one key (several dates) is a candidate once per row.
  const seen = new Set<number>();
  const matching = (rows: VersionRow[]): Resource[] => {
    const out: Resource[] = [];
    for (const row of rows) {
      if (seen.has(row.seq)) continue;
      seen.add(row.seq);
      const resource = ctx.decode(row);
      if (resource) {
        if (isMatch(resource)) out.push(resource);
      } else if (standIns) {
        const standIn = ctx.standIn(row);
        if (standIn) out.push(standIn);
      }
    }
    return out;
  };

  const keyset = dateParam !== undefined && plan.from.startsWith('ix_date ') && plan.yields?.code === dateParam && !plan.yields.descending;
  // Long-span and undated rows of the plan's key (a side bucket, few) come first.
  if (plan.long) {
    const side = matching(ctx.prepare(`${SELECT} FROM ${plan.from} WHERE ${plan.long.where.join(' AND ')} ORDER BY d.seq`).all(...plan.long.args));
    for (let i = 0; i < side.length; i += chunk) yield side.slice(i, i + chunk);
  }
  if (!keyset) {
    // The `_id` plan (a consent narrowing that leaves nothing: `_id=<no match>`) must look ids up by
    // their index: ordered by seq, SQLite prefers walking every resource of the type in seq order
    // (versions_by_type), a full scan per patient who granted nothing.
    const from = plan.from === 'versions v' ? 'versions v INDEXED BY versions_by_id' : plan.from;
    const statement = ctx.prepare(`${SELECT} FROM ${from} WHERE ${plan.where.join(' AND ')} ORDER BY ${plan.orderBy} LIMIT ? OFFSET ?`);
    for (let skip = 0; ; skip += chunk) {
      const rows = statement.all(...plan.args, chunk, skip);
      const out = matching(rows);
      if (out.length) yield out;
      if (rows.length < chunk) return;
    }
  }

  const where = plan.where.join(' AND ');
  const first = ctx.prepare(`${SELECT}, d.start AS d_start FROM ${plan.from} WHERE ${where} ORDER BY d.start, d.seq LIMIT ?`) as unknown as
    { all(...args: unknown[]): KeyedRow[] };
  const next = ctx.prepare(`${SELECT}, d.start AS d_start FROM ${plan.from} WHERE ${where} AND d.start >= ? AND (d.start > ? OR d.seq > ?) ` +
    'ORDER BY d.start, d.seq LIMIT ?') as unknown as { all(...args: unknown[]): KeyedRow[] };
  let rows = first.all(...plan.args, chunk);
  for (;;) {
    const out = matching(rows);
    if (out.length) yield out;
    if (rows.length < chunk) return;
    const last = rows[rows.length - 1]!;
    rows = next.all(...plan.args, last.d_start, last.d_start, last.seq, chunk);
  }
}
