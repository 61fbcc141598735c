/**
 * Search over the embedded store (https://hl7.org/fhir/R4/search.html). The SQLite indexes only
 * narrow the candidates; every candidate is decrypted and checked with medplum's matching
 * semantics (match.ts), so the index can never widen or change an answer.
 *
 * Plan: one "driver" index picks the candidates, in this order of preference — `_id`; the
 * patient+date index (`patient=X` with the type's main date, e.g. Observation `date`); a
 * reference or token (`ix_ref`); a date range (`ix_date`); `_lastUpdated`; else every current
 * resource of the type. Other token/reference filters become EXISTS checks in the same query.
 * Filters that the driver's SQL proves exactly are not re-checked (see Plan.proven).
 * When the driver already yields rows in the requested order, candidates are streamed and the
 * scan stops as soon as the page (plus one, for `hasMore`) is full. A later page of a walk starts
 * strictly after the position of the last match examined (keyset, seek.ts): by the index when rows
 * come in the order, else by filtering the sorted matches.
 */
import { Operator, splitSearchOnComma, toTypedValue } from '@medplum/core';
import type { Filter, IncludeTarget, SearchRequest } from '@medplum/core';
import type { Resource } from '@medplum/fhirtypes';
import type { Database, Statement } from 'better-sqlite3';
import { badRequest, scanLimitExceeded } from '../../errors.js';
import { patientIdOfReference } from '../../fhir/compartment.js';
import type { SearchResult } from '../port.js';
import {
  dateKey, datesOf, MAX_TIME, MIN_TIME, paramsOf, patientDateKey, patientDateParam, quantityCanonicalKey, quantityKey, quantitySystemKey, quantityUnitKey,
  REFERENCE_IDENTIFIER_SINCE, referenceIdentifierParam, referenceKey, referencesOf, STRING_CONTAINS_SINCE, STRING_GRAM, stringGramKey, STRING_PREFIX_MAX,
  stringPrefixKey, systemTokenKey, tokenKey, undatedKey,
} from './params.js';
import type { ParamInfo } from './params.js';
import { ixStartsUnder, type VersionRow } from './store.js';
import { compareKeys, computedOrder, parsePosition, positionText, sortOrderId, type OrderKey } from './seek.js';
import { foldText } from '../../fhir/folding.js';
import { compileMatcher, compositeProblem, parseQuantity, quantityProblem, splitComposite, splitPrefix } from './match.js';

/** Date rows spanning more than this go to a separate "long" bucket that is scanned whole. */
export const LONG_SPAN_MS = 24 * 3600 * 1000;
export const DEFAULT_COUNT = 20;
const ID_PATTERN = /^[A-Za-z0-9\-.]{1,64}$/;

/** What the search needs from the repository. */
export interface SearchContext {
  db: Database;
  hash(value: string): number;
  hashPair(value: string): [number, number];
  /** Decrypts a row; undefined when its key was erased or the row does not decrypt. */
  decode(row: VersionRow): Resource | undefined;
  /** `decode` answering a deferred resource for a row read the first time (SearchOptions.deferred). */
  decodeDeferred?(row: VersionRow): Resource | undefined;
  /**
   * Current, non-deleted, readable resource or undefined; with `standIn`, the stand-in of one whose
   * stored bytes do not authenticate (see `standIn`).
   */
  readCurrent(type: string, id: string, standIn?: boolean): Resource | undefined;
  /**
   * For a row `decode` did not answer: the stand-in of its version when its data key is there, so
   * its bytes did not authenticate (TamperedVersionError); undefined when its key was erased.
   */
  standIn(row: VersionRow): Resource | undefined;
  /** A cached prepared statement. */
  prepare(sql: string): Statement<unknown[], VersionRow>;
  /** The index generation the store's rows are complete for (params.ts INDEX_GENERATION). */
  indexGeneration(): number;
  /**
   * True when the rows of this search may be read without their bodies (SELECT_LIGHT): the
   * repository's decoded cache has been answering most reads, and `decode` fetches the body of
   * any row it does not hold.
   */
  light?(): boolean;
}

/** Hash input of a date row, putting long spans in their own bucket. */
export function dateRowKey(key: string, start: number, end: number): string {
  return end - start > LONG_SPAN_MS ? key + '\0long' : key;
}

/**
 * Index rows the planner counts first when it weighs a date or quantity range against a plain token
 * (planSearch), and at most (the limit grows eightfold from the first to the last).
 */
const COUNT_PROBE = 1_000;
const COUNT_PROBE_MAX = 512_000;

/** How a search is read: the driver index, its conditions and order (planSearch). */
export interface Plan {
  from: string;
  where: string[];
  args: unknown[];
  orderBy: string;
  /** Order the driver yields: the sort code it satisfies ('' = default order), and its direction. */
  yields?: { code: string; descending: boolean };
  /**
   * Second query for long-span (and, when sorting without a date filter, undated) rows; `undated`:
   * the key of the undated rows, which stand after every date (as in a sort of resources without one).
   */
  long?: { where: string[]; args: unknown[]; undated?: [number, number] };
  /**
   * The order rows come in (named as in seek.ts): the column of its first key (none: seq alone),
   * the seq column, and the direction of both.
   */
  order: { id: string; key?: string; seq: string; descending: boolean };
  /** The driver query resuming strictly after a row's keys in `order` (its key and seq, or its seq). */
  seek(keys: number[]): { where: string[]; args: unknown[] };
  /**
   * The conditions on the driver's own index rows (`ix_date` plans; `d.h = ?` first): a resource with
   * several rows under the key stands at the first of them that meets them (runSearch, keyset).
   */
  rows?: { where: string[]; args: unknown[] };
  /**
   * Filters the driver's SQL already proves for every row it yields, not re-evaluated on the
   * decrypted resource: date filters of the range scan, whose row conditions are medplum's
   * comparisons in epoch ms (one row satisfies them all, so each filter holds); and the
   * single-valued `patient` filter of the patient+date index, whose rows are keyed by a 96-bit
   * keyed hash of exactly that reference (the two halves `h`, `h2`).
   */
  proven?: Filter[];
}

/**
 * A range driver (date or quantity): its plan given the EXISTS checks of the other filters. With none
 * (NO_EXTRA) its conditions are on its own index rows alone, which is what the planner counts.
 */
type Ranged = (extra: { where: string[]; args: unknown[] }) => Plan;
const NO_EXTRA = { where: [] as string[], args: [] as unknown[] };

interface DateBounds { conditions: string[]; args: number[]; startMin: number; startMax: number; proven: Filter[] }

export const SELECT = 'SELECT v.seq, v.type, v.id, v.version, v.last_updated, v.method, v.key_id, v.key_version, v.body, NULL AS ix';
/**
 * Only what a decoded-cache hit needs (`light` = 1; see SearchContext.light): the row's seq and its
 * data key. A row the cache does not hold is read again whole by its seq.
 */
export const SELECT_LIGHT = 'SELECT v.seq, v.key_id, v.key_version, 1 AS light';

/** A candidate row, with the order columns a search reads beside it. */
type OrderedRow = VersionRow & { k?: number; d_h?: number; d_h2?: number; ix_rows?: Buffer | null };

/**
 * A match and where it stands in the order of its search (seek.ts): its row's seq and first order
 * key (`k`) when rows come in that order, its computed keys when the order is computed here.
 */
interface Match { resource: Resource; seq: number; k?: number; keys?: OrderKey[] }

/**
 * Runs a parsed search request. Throws ERR_INVALID for parameters this adapter does not support,
 * and (too-costly) once more than `scanLimit` candidates were examined beyond what the page needs
 * (SearchOptions.scanLimit; 0 = no limit). With `deferred`, matches that nothing here needs to read
 * (every filter proven by the index, rows in the asked order, no includes) may come deferred. With
 * `standIns` (SearchOptions.standIns), a candidate whose bytes do not authenticate is a match as its
 * stand-in: the index chose it, and nothing of its content is left to match it against.
 *
 * `after` (SearchOptions.after) is the position of a match of an earlier page: the page is then the
 * matches strictly after it in the search's order (seek.ts), read from there by the index when rows
 * come in that order; when the search is now read in another default order (another index drives
 * it), the walk's own order is computed over every match; failing that, `request.offset` pages it.
 */
export function runSearch(ctx: SearchContext, request: SearchRequest, scanLimit = 0, deferred = false, standIns = false, after?: string): SearchResult {
  const type = request.resourceType;
  const params = paramsFor(type);
  const asked = (request.filters ?? []).map((f) => normalizeFilter(type, params, f));
  // a composite filter adds the plain filters it implies, so their indexes narrow the candidates
  const filters = [...asked, ...asked.flatMap((f) => impliedFilters(params, f))];
  const sortRules = request.sortRules ?? [];
  for (const rule of sortRules) {
    const info = params.get(rule.code);
    if (!info || (info.kind !== 'date' && info.kind !== 'string' && rule.code !== '_id')) {
      throw badRequest(`Unsupported _sort parameter: ${rule.code}`, '_sort');
    }
  }
  validateIncludes(type, request.include ?? [], request.revInclude ?? []);

  const count = Math.max(0, request.count ?? DEFAULT_COUNT);
  const plan = planSearch(ctx, type, params, filters, sortRules.length > 0 ? sortRules[0]! : undefined);
  // Rows come in the order asked when it is the plan's own (no _sort) or the one rule it yields;
  // any other order is computed here over every match.
  const rowOrdered = sortRules.length === 0 || (sortRules.length === 1 && plan.yields?.code === sortRules[0]!.code
    && plan.yields.descending === !!sortRules[0]!.descending);
  const order = sortRules.length ? sortOrderId(sortRules) : plan.order.id;
  const resume = after === undefined ? undefined : parsePosition(after);
  const computed = !rowOrdered ? computedOrder(order, params) : resume && resume.order !== order ? computedOrder(resume.order, params) : undefined;
  const rowKeyCount = plan.order.key ? 2 : 1;
  const from = resume && resume.order === (computed?.id ?? order) && (computed
    ? resume.keys.length === computed.descending.length
    : resume.keys.length === rowKeyCount && resume.keys.every((k) => typeof k === 'number')) ? resume : undefined;
  const offset = from ? 0 : Math.max(0, request.offset ?? 0);
  const wanted = offset + count + 1;
  const rowDirections = Array<boolean>(rowKeyCount).fill(plan.order.descending);
  const rowKeysOf = (row: { k?: number; seq: number }): number[] => (plan.order.key ? [row.k!, row.seq] : [row.seq]);

  const matches: Match[] = [];
  const unproven = filters.filter((f) => !plan.proven?.includes(f));
  const isMatch = compileMatcher(params, unproven);
  const seen = new Set<number>();
  let examined = 0;
  let decode = (row: VersionRow): Resource | undefined => ctx.decode(row);
  const accept = (row: OrderedRow): boolean => {
    if (seen.has(row.seq)) return false;
    seen.add(row.seq);
    if (scanLimit > 0 && ++examined - Math.min(matches.length, wanted) > scanLimit) {
      // when the order asked for is not the order rows come in, the sort is what needs every match
      throw scanLimitExceeded(scanLimit, type, streamable ? undefined : sortRules.map((r) => `${r.descending ? '-' : ''}${r.code}`).join(',') || undefined);
    }
    let resource = decode(row);
    if (!resource) {
      resource = standIns ? ctx.standIn(row) : undefined;
      if (!resource) return false;
    } else if (!isMatch(resource)) {
      return false;
    }
    matches.push({ resource, seq: row.seq, k: row.k });
    return true;
  };

  let longRows: OrderedRow[] = [];
  if (plan.long) {
    const undated = plan.long.undated;
    longRows = (ctx.prepare(`${SELECT}, d.start AS k, d.h AS d_h, d.h2 AS d_h2 FROM ${plan.from} WHERE ${plan.long.where.join(' AND ')}`)
      .all(...plan.long.args) as OrderedRow[])
      .map((row) => (undated && row.d_h === undated[0] && row.d_h2 === undated[1] ? { ...row, k: MAX_TIME } : row));
  }
  const streamable = longRows.length === 0 && rowOrdered && !computed;
  // a resource with several rows under the key, met again past the position, may have stood before it
  const severalRows = streamable && from !== undefined && plan.rows !== undefined;
  // (a first page read in order leaves its rows' keys out: the one position asked for is looked up, orderKeyOf)
  const keyed = plan.order.key !== undefined && (!streamable || from !== undefined);
  const select = `${ctx.light?.() ? SELECT_LIGHT : SELECT}${keyed ? `, ${plan.order.key} AS k` : ''}${severalRows ? ', v.ix AS ix_rows' : ''}`;
  const source = streamable && from ? plan.seek(from.keys as number[]) : plan;
  const statement = ctx.prepare(`${select} FROM ${plan.from} WHERE ${source.where.join(' AND ')} ORDER BY ${plan.orderBy} LIMIT ? OFFSET ?`);

  if (deferred && ctx.decodeDeferred && streamable && unproven.length === 0 && !request.include?.length && !request.revInclude?.length) {
    decode = (row) => ctx.decodeDeferred!(row);
  }

  if (streamable) {
    const stoodBefore = severalRows ? standingBefore(ctx, plan, from!.keys as number[]) : undefined;
    // Batches rather than iterate(): far fewer native calls; most candidates match, so one
    // batch of `wanted` rows is usually the whole answer.
    const batch = Math.max(wanted, 64);
    for (let skip = 0; ; skip += batch) {
      const rows = statement.all(...source.args, batch, skip) as OrderedRow[];
      for (const row of rows) {
        if (stoodBefore?.(row)) seen.add(row.seq);
        else accept(row);
        if (matches.length >= wanted) break;
      }
      if (matches.length >= wanted || rows.length < batch) break;
    }
  } else if (!computed) {
    // Long-span (or undated) rows among them: every row in the plan's order, each resource where
    // its first row stands, and only as many resources read as the page needs.
    const rows = [...longRows, ...(statement.all(...plan.args, -1, 0) as OrderedRow[])];
    rows.sort((a, b) => compareKeys(rowKeysOf(a), rowKeysOf(b), rowDirections));
    for (const row of rows) {
      if (from && !seen.has(row.seq) && compareKeys(rowKeysOf(row), from.keys, rowDirections) <= 0) seen.add(row.seq);
      else accept(row);
      if (matches.length >= wanted) break;
    }
  } else {
    for (const row of longRows) accept(row);
    for (const row of statement.iterate(...plan.args, -1, 0)) accept(row);
    for (const m of matches) m.keys = computed.keysOf(m.resource, m.seq);
    matches.sort((a, b) => compareKeys(a.keys!, b.keys!, computed.descending));
    if (from) matches.splice(0, matches.filter((m) => compareKeys(m.keys!, from.keys, computed.descending) <= 0).length);
  }

  const page = matches.slice(offset, offset + count);
  const resources = page.map((m) => m.resource);
  const positionOrder = computed?.id ?? order;
  return {
    resources,
    included: collectIncludes(ctx, resources, request.include ?? [], request.revInclude ?? [], standIns),
    hasMore: matches.length > offset + count,
    positionOf: (index) => {
      const m = page[index]!;
      if (m.keys) return positionText({ order: positionOrder, keys: m.keys });
      const k = m.k ?? (plan.order.key ? orderKeyOf(ctx, plan, m.seq) : undefined);
      return positionText({ order: positionOrder, keys: rowKeysOf({ seq: m.seq, k }) });
    },
  };
}

/**
 * The first order key of a match whose row was read without it (`plan.order.key`): its last-updated
 * time; or, on the date and quantity indexes, the start of its first row under the driver's key in
 * the plan's order that meets the plan's row conditions — where the scan met it. Its packed index
 * rows (`versions.ix`) list its rows; most resources have one there.
 */
function orderKeyOf(ctx: SearchContext, plan: Plan, seq: number): number | undefined {
  const row = ctx.prepare('SELECT v.last_updated, v.ix FROM versions v WHERE v.seq = ?').get(seq);
  if (!row) return undefined;
  if (plan.order.key === 'v.last_updated') return row.last_updated;
  const rows = plan.rows!;
  const starts = row.ix ? ixStartsUnder(row.ix, rows.args[0] as number) : [];
  starts.sort((a, b) => (plan.order.descending ? b - a : a - b));
  if (starts.length <= 1) return starts[0];
  const lookup = ctx.prepare(`SELECT d.seq FROM ix_date d WHERE ${rows.where.join(' AND ')} AND d.start = ? AND d.seq = ?`);
  return starts.find((start) => lookup.get(...rows.args, start, seq) !== undefined);
}

/**
 * For a walk resumed past `keys` in an `ix_date` plan's order: whether a row's resource has another
 * row under the key (its packed index rows say so) that stands at or before `keys` and meets the
 * plan's row conditions — the resource stood there, on a page before. Most resources have one row
 * under a key and cost no look-up.
 */
function standingBefore(ctx: SearchContext, plan: Plan, keys: number[]): (row: OrderedRow) => boolean {
  const rows = plan.rows!;
  const lookup = ctx.prepare(`SELECT d.seq FROM ix_date d WHERE ${rows.where.join(' AND ')} AND d.start = ? AND d.seq = ?`);
  const directions = [plan.order.descending, plan.order.descending];
  return (row) => {
    const starts = row.ix_rows ? ixStartsUnder(row.ix_rows, rows.args[0] as number) : [];
    return starts.length > 1 && starts.some((start) => start !== row.k
      && compareKeys([start, row.seq], keys, directions) <= 0 && lookup.get(...rows.args, start, row.seq) !== undefined);
  };
}

/**
 * The plain filters a one-valued composite filter implies: `code-value-quantity=L|99504-3$gt250`
 * implies `code=L|99504-3` and `value-quantity=gt250`, each part's values being among those of its
 * plain parameter (CompositePart.implied). They only add index narrowing: every candidate is still
 * matched against the composite filter, which pairs the parts on one element. `ne` implies nothing
 * usable, and alternatives (a comma) are left to the matcher.
 */
function impliedFilters(params: Map<string, ParamInfo>, filter: Filter): Filter[] {
  const info = params.get(filter.code)!;
  if (info.kind !== 'composite' || filter.operator !== Operator.EQUALS || splitSearchOnComma(filter.value).length !== 1) return [];
  const values = splitComposite(filter.value);
  return info.parts!.flatMap((part, i): Filter[] => {
    if (!part.implied || !params.has(part.implied)) return [];
    if (part.kind === 'token') return [{ code: part.implied, operator: Operator.EQUALS, value: values[i]! }];
    const { operator, value } = splitPrefix(values[i]!);
    return operator === Operator.NOT_EQUALS ? [] : [{ code: part.implied, operator: operator as Operator, value }];
  });
}

export function paramsFor(type: string): Map<string, ParamInfo> {
  try {
    return paramsOf(type);
  } catch {
    throw badRequest(`Unsupported resource type: ${type}`);
  }
}

/** Rejects unknown parameters and unsupported modifiers; turns bare reference ids into `Type/id`. */
export function normalizeFilter(type: string, params: Map<string, ParamInfo>, filter: Filter): Filter {
  const info = params.get(filter.code);
  if (!info) throw badRequest(`Unsupported search parameter for ${type}: ${filter.code}`, filter.code);
  const op = filter.operator;
  const allowed: Record<string, string[]> = {
    token: [Operator.EQUALS, Operator.NOT, Operator.NOT_EQUALS, Operator.MISSING, Operator.PRESENT, Operator.TEXT, Operator.OF_TYPE],
    reference: [Operator.EQUALS, Operator.NOT, Operator.MISSING, Operator.PRESENT, Operator.IDENTIFIER],
    date: [Operator.EQUALS, Operator.NOT_EQUALS, Operator.GREATER_THAN, Operator.GREATER_THAN_OR_EQUALS, Operator.LESS_THAN,
      Operator.LESS_THAN_OR_EQUALS, Operator.STARTS_AFTER, Operator.ENDS_BEFORE, Operator.APPROXIMATELY, Operator.MISSING, Operator.PRESENT],
    string: [Operator.EQUALS, Operator.EXACT, Operator.CONTAINS, Operator.MISSING, Operator.PRESENT],
    quantity: [Operator.EQUALS, Operator.NOT_EQUALS, Operator.GREATER_THAN, Operator.GREATER_THAN_OR_EQUALS, Operator.LESS_THAN,
      Operator.LESS_THAN_OR_EQUALS, Operator.STARTS_AFTER, Operator.ENDS_BEFORE, Operator.APPROXIMATELY, Operator.MISSING, Operator.PRESENT],
    uri: [Operator.EQUALS, Operator.MISSING, Operator.PRESENT],
    composite: [Operator.EQUALS, Operator.MISSING, Operator.PRESENT],
  };
  if (!allowed[info.kind]!.includes(op)) throw badRequest(`Unsupported modifier or prefix "${op}" for ${filter.code}`, filter.code);
  if ((op === Operator.MISSING || op === Operator.PRESENT) && filter.value !== 'true' && filter.value !== 'false') {
    throw badRequest(`${filter.code}:${op} takes true or false`, filter.code);
  }
  if (info.kind === 'date' && op !== Operator.MISSING && op !== Operator.PRESENT) {
    for (const v of splitSearchOnComma(filter.value)) {
      if (datesOf([toTypedValue(v)]).length === 0) throw badRequest(`Invalid date for ${filter.code}: ${v}`, filter.code);
    }
  }
  if (info.kind === 'quantity' && op !== Operator.MISSING && op !== Operator.PRESENT) {
    for (const v of splitSearchOnComma(filter.value)) {
      const problem = quantityProblem(v);
      if (problem) throw badRequest(`Invalid quantity for ${filter.code}: ${problem}`, filter.code);
    }
  }
  if (op === Operator.OF_TYPE) {
    if (filter.code !== 'identifier') throw badRequest(`:of-type applies to identifier parameters, not ${filter.code}`, filter.code);
    for (const v of splitSearchOnComma(filter.value)) {
      const parts = v.split('|');
      if (parts.length !== 3 || !parts[1] || !parts[2]) throw badRequest(`identifier:of-type takes system|type-code|value`, filter.code);
    }
  }
  if (op === Operator.TEXT && filter.value.trim() === '') throw badRequest(`${filter.code}:text needs some text`, filter.code);
  if (info.kind === 'composite' && op === Operator.EQUALS) {
    for (const v of splitSearchOnComma(filter.value)) {
      const problem = compositeProblem(info.parts!, v);
      if (problem) throw badRequest(`Invalid value for ${filter.code}: ${problem}`, filter.code);
    }
  }
  if (op === Operator.IDENTIFIER) {
    for (const v of splitSearchOnComma(filter.value)) {
      const parts = v.split('|');
      if (parts.length > 2 || parts.every((part) => part === '')) {
        throw badRequest(`${filter.code}:identifier takes [system|]value`, filter.code);
      }
    }
    return filter;
  }
  if (info.kind !== 'reference' || op === Operator.MISSING || op === Operator.PRESENT) return filter;
  const values = splitSearchOnComma(filter.value).flatMap((v) => {
    if (!ID_PATTERN.test(v)) return [v];
    if (info.targets.length === 0) throw badRequest(`Reference search on ${filter.code} needs Type/id`, filter.code);
    return info.targets.map((t) => `${t}/${v}`);
  });
  return { ...filter, value: values.map((v) => v.replaceAll(',', '\\,')).join(',') };
}

function validateIncludes(type: string, include: IncludeTarget[], revInclude: IncludeTarget[]): void {
  for (const target of include) {
    if (target.resourceType !== type && target.modifier !== Operator.ITERATE) {
      throw badRequest(`_include must start with ${type}: ${target.resourceType}:${target.searchParam}`, '_include');
    }
    checkReferenceParam(target, '_include');
  }
  for (const target of revInclude) checkReferenceParam(target, '_revinclude');
}

function checkReferenceParam(target: IncludeTarget, what: string): void {
  let info: ParamInfo | undefined;
  try {
    info = paramsOf(target.resourceType).get(target.searchParam);
  } catch {
    info = undefined;
  }
  if (info?.kind !== 'reference') throw badRequest(`Unsupported ${what}: ${target.resourceType}:${target.searchParam}`, what);
}

/**
 * The pieces a `:contains` value looks up (params.ts indexes every STRING_GRAM-character piece of a
 * folded part): its first, middle and last, without repeats; none when it is shorter than a piece.
 */
function containsGrams(value: string): string[] {
  const folded = foldText(value);
  const last = folded.length - STRING_GRAM;
  if (last < 0) return [];
  const middle = Math.floor(last / 2);
  return [...new Set([folded.slice(0, STRING_GRAM), folded.slice(middle, middle + STRING_GRAM), folded.slice(last)])];
}

/**
 * More keys a one-valued `:contains` filter's candidates must all have besides its first piece
 * (indexKeys): the pieces in the middle and at the end of the value.
 */
function containsPieces(type: string, info: ParamInfo, filter: Filter): string[] {
  if (info.kind !== 'string' || filter.operator !== Operator.CONTAINS) return [];
  const values = splitSearchOnComma(filter.value);
  return values.length === 1 ? containsGrams(values[0]!).slice(1).map((g) => stringGramKey(type, info.code, g)) : [];
}

/** Hash keys (`ix_ref`) that a token, reference, uri or string filter matches, or undefined when the index cannot narrow it. */
function indexKeys(type: string, info: ParamInfo, filter: Filter): string[] | undefined {
  if (info.kind === 'string') {
    // :contains: the rows of the value's first piece (every part that contains the value has it);
    // a value shorter than a piece has none, and is matched on the candidates
    if (filter.operator === Operator.CONTAINS) {
      const firsts = splitSearchOnComma(filter.value).map((v) => containsGrams(v)[0]);
      return firsts.every((g) => g !== undefined) ? firsts.map((g) => stringGramKey(type, info.code, g!)) : undefined;
    }
    // starts-with (and :exact, a narrower question): the prefix rows of the folded value
    if (filter.operator !== Operator.EQUALS && filter.operator !== Operator.EXACT) return undefined;
    const prefixes = splitSearchOnComma(filter.value).map((v) => foldText(v).slice(0, STRING_PREFIX_MAX));
    return prefixes.every((p) => p !== '') ? prefixes.map((p) => stringPrefixKey(type, info.code, p)) : undefined;
  }
  // identifier:of-type=system|MR|12345: the identifiers of value 12345, whatever their system
  if (filter.operator === Operator.OF_TYPE) return splitSearchOnComma(filter.value).map((v) => tokenKey(type, info.code, v.split('|')[2]!));
  // subject:identifier=system|value: the rows of Reference.identifier (params.ts), as a token
  if (filter.operator === Operator.IDENTIFIER) return tokenKeys(type, referenceIdentifierParam(info.code), filter.value);
  if (filter.operator !== Operator.EQUALS) return undefined;
  const values = splitSearchOnComma(filter.value);
  if (info.kind === 'reference') return values.map((value) => referenceKey(type, info.code, value));
  if (info.kind === 'uri') return values.map((value) => tokenKey(type, info.code, value));
  return tokenKeys(type, info.code, filter.value);
}

/**
 * The rows a token filter value can only match: `code` and `|code` (no system: the matcher checks)
 * by the code, `system|code` by both; `system|` (any code of the system) has none to narrow by.
 */
function tokenKeys(type: string, param: string, filterValue: string): string[] | undefined {
  const keys: string[] = [];
  for (const value of splitSearchOnComma(filterValue)) {
    const bar = value.indexOf('|');
    if (bar < 0) keys.push(tokenKey(type, param, value));
    else if (value.slice(bar + 1) === '') return undefined;
    else if (bar === 0) keys.push(tokenKey(type, param, value.slice(1)));
    else keys.push(systemTokenKey(type, param, value.slice(0, bar), value.slice(bar + 1)));
  }
  return keys.length ? keys : undefined;
}

/**
 * The quantity index rows a one-valued quantity filter can only match: the key of its unit (any,
 * `system|code`, or `||code-or-unit`) and SQL conditions, for value rows (start = end = the value)
 * and for the rows of values a comparator leaves open (`<40`: the long bucket), each a superset of
 * what matchesQuantity (match.ts) accepts, which still checks every candidate. `ne` has none.
 */
function quantityPlan(type: string, filter: Filter): { key: string; points: { conditions: string[]; args: number[] }; ranges: { conditions: string[]; args: number[] } } | undefined {
  const values = splitSearchOnComma(filter.value);
  if (values.length !== 1 || filter.operator === Operator.NOT_EQUALS || filter.operator === Operator.MISSING || filter.operator === Operator.PRESENT) return undefined;
  const t = parseQuantity(values[0]!);
  // a UCUM value in a unit that converts reads the rows of its dimension, in base units computed as
  // the rows' were (inBaseUnits), so the bounds are exact
  const key = t.base ? quantityCanonicalKey(type, filter.code, t.base.dimension)
    : t.system !== undefined ? quantitySystemKey(type, filter.code, t.system, t.code!)
      : t.code !== undefined ? quantityUnitKey(type, filter.code, t.code) : quantityKey(type, filter.code);
  const { value: v, half } = t.base ?? t;
  const d = Math.max(Math.abs(v) * 0.1, half);
  const both = (points: [string, ...number[]], ranges: [string, ...number[]]) => ({
    key, points: { conditions: [points[0]], args: points.slice(1) as number[] }, ranges: { conditions: [ranges[0]], args: ranges.slice(1) as number[] },
  });
  switch (filter.operator) {
    case Operator.EQUALS: return both(['d.start >= ? AND d.start < ?', v - half, v + half], ['d.start < ? AND d.end >= ?', v + half, v - half]);
    case Operator.GREATER_THAN: return both(['d.start > ?', v], ['d.end > ?', v]);
    case Operator.GREATER_THAN_OR_EQUALS: return both(['d.start >= ?', v], ['d.end >= ?', v]);
    case Operator.LESS_THAN: return both(['d.start < ?', v], ['d.start < ?', v]);
    case Operator.LESS_THAN_OR_EQUALS: return both(['d.start <= ?', v], ['d.start <= ?', v]);
    case Operator.STARTS_AFTER: return both(['d.start > ?', v], ['d.start >= ?', v]);
    case Operator.ENDS_BEFORE: return both(['d.start < ?', v], ['d.end <= ?', v]);
    case Operator.APPROXIMATELY: return both(['d.start >= ? AND d.start <= ?', v - d, v + d], ['d.start <= ? AND d.end >= ?', v + d, v - d]);
    default: return undefined;
  }
}

/**
 * SQL conditions on a date row (`d.start`, `d.end`, inclusive epoch ms) equivalent to medplum's
 * date matching, plus bounds on `start` for the index range scan of the normal (short) bucket.
 */
function dateBounds(filters: Filter[]): DateBounds | undefined {
  const bounds: DateBounds = { conditions: [], args: [], startMin: MIN_TIME, startMax: MAX_TIME, proven: [] };
  for (const f of filters) {
    if (f.operator === Operator.NOT_EQUALS || f.operator === Operator.MISSING || f.operator === Operator.PRESENT) continue;
    const values = splitSearchOnComma(f.value);
    if (values.length !== 1) continue;
    const period = datesOf([toTypedValue(values[0])])[0]!;
    const fs = period.start;
    const fe = period.end;
    const add = (sql: string, ...args: number[]): void => { bounds.conditions.push(sql); bounds.args.push(...args); bounds.proven.push(f); };
    switch (f.operator) {
      case Operator.EQUALS:
      case Operator.APPROXIMATELY:
        add('d.start < ? AND d.end > ?', fe, fs);
        bounds.startMax = Math.min(bounds.startMax, fe);
        bounds.startMin = Math.max(bounds.startMin, fs - LONG_SPAN_MS);
        break;
      case Operator.LESS_THAN: add('d.start < ?', fs); bounds.startMax = Math.min(bounds.startMax, fs); break;
      case Operator.LESS_THAN_OR_EQUALS: add('d.start <= ?', fe); bounds.startMax = Math.min(bounds.startMax, fe); break;
      case Operator.GREATER_THAN: add('d.end > ?', fe); bounds.startMin = Math.max(bounds.startMin, fe - LONG_SPAN_MS); break;
      case Operator.GREATER_THAN_OR_EQUALS: add('d.end >= ?', fs); bounds.startMin = Math.max(bounds.startMin, fs - LONG_SPAN_MS); break;
      case Operator.STARTS_AFTER: add('d.start > ?', fe); bounds.startMin = Math.max(bounds.startMin, fe); break;
      case Operator.ENDS_BEFORE: add('d.end < ?', fs); bounds.startMax = Math.min(bounds.startMax, fs); break;
      default: break;
    }
  }
  return bounds.conditions.length ? bounds : undefined;
}

export function planSearch(ctx: SearchContext, type: string, params: Map<string, ParamInfo>, filters: Filter[],
  sort: { code: string; descending?: boolean } | undefined): Plan {
  const live = ['v.current = 1', 'v.method <> 2'];
  const generation = ctx.indexGeneration();
  /** Whether the store's index rows answer this parameter (params.ts, index generations). */
  const trusted = (info: ParamInfo, f?: Filter): boolean => info.indexable && info.since <= generation
    && (f?.operator !== Operator.IDENTIFIER || REFERENCE_IDENTIFIER_SINCE <= generation)
    && (f?.operator !== Operator.CONTAINS || STRING_CONTAINS_SINCE <= generation);
  /** Index rows a candidate must have: `code` names the entry (EXISTS checks skip the driver's), `param` its parameter. */
  const refFilters: { code: string; param: string; keys: string[] }[] = [];
  for (const f of filters) {
    const info = params.get(f.code)!;
    if ((info.kind === 'token' || info.kind === 'reference' || info.kind === 'uri' || info.kind === 'string') && trusted(info, f) && f.code !== '_id') {
      const keys = indexKeys(type, info, f);
      if (keys) refFilters.push({ code: f.code, param: f.code, keys });
      // one `:contains` value: its middle and last pieces must be there too (`ller1` is in far fewer names than `lle`)
      containsPieces(type, info, f).forEach((key, i) => refFilters.push({ code: `${f.code}:contains#${i}`, param: f.code, keys: [key] }));
    }
  }
  const exists = (skip?: { code: string }): { where: string[]; args: unknown[] } => {
    const where: string[] = [];
    const args: unknown[] = [];
    for (const r of refFilters) {
      if (r.code === skip?.code) continue;
      where.push(`EXISTS (SELECT 1 FROM ix_ref r WHERE r.seq = v.seq AND r.h IN (${r.keys.map(() => '?').join(',')}))`);
      args.push(...r.keys.map((k) => ctx.hash(k)));
    }
    return { where, args };
  };

  // 1. _id
  const idFilter = filters.find((f) => f.code === '_id' && f.operator === Operator.EQUALS);
  if (idFilter) {
    const ids = splitSearchOnComma(idFilter.value);
    const extra = exists();
    return {
      // the id index, always: ordering by seq, SQLite would otherwise walk every version of the type
      // (a consent-narrowed search matching no id made that a scan of every Observation)
      ...seqOrdered('versions v INDEXED BY versions_by_id', ['v.type = ?', `v.id IN (${ids.map(() => '?').join(',')})`, ...live, ...extra.where],
        [type, ...ids, ...extra.args], 'v.seq'),
    };
  }

  // 2. patient + main date
  const dateParam = patientDateParam(type);
  const patientRef = dateParam ? singlePatientRef(type, params, filters) : undefined;
  const dateFilters = (code: string): Filter[] => filters.filter((f) => f.code === code);
  if (dateParam && patientRef && (dateBounds(dateFilters(dateParam)) || sort?.code === dateParam)) {
    // (sort-only: undated resources of the patient come from a side bucket, like long spans)
    return datePlan(patientDateKey(type, patientRef.ref), dateBounds(dateFilters(dateParam)), exists(patientRef.filter),
      dateParam, sort?.code === dateParam && !!sort.descending, [patientRef.filter]);
  }

  // 3. reference / token: references first (most selective), then identifiers, then other tokens;
  // 4. a date range on an indexed date parameter; 4b. a quantity range (value-quantity=gt250|…|mg/dL).
  // A plain token (`code`, `status`) often holds most of a type: when a range is there too, the
  // index rows of each are counted (up to COUNT_PROBE) and the fewest drive the search.
  const rank = (param: string): number => (params.get(param)!.kind === 'reference' ? 0 : param === 'identifier' ? 1 : 2);
  const driver = [...refFilters].sort((a, b) => rank(a.param) - rank(b.param))[0];
  const ranges = [dateDriver(), quantityDriver()].filter((r): r is Ranged => r !== undefined);
  if (driver) {
    const extra = exists(driver);
    const keyed = { where: [`d.h IN (${driver.keys.map(() => '?').join(',')})`], args: driver.keys.map((k) => ctx.hash(k)) };
    const tokenPlan = seqOrdered('ix_ref d JOIN versions v ON v.seq = d.seq', [...keyed.where, ...extra.where], [...keyed.args, ...extra.args], 'd.seq');
    if (rank(driver.param) < 2 || ranges.length === 0) return tokenPlan;
    // Each side's own index rows (its plan without the EXISTS checks), counted up to a limit that
    // grows eightfold until one side falls below it: the cost follows the smaller side.
    const rowsOf = (plan: Plan, table: string, limit: number): number => rowsUpTo(`SELECT 1 FROM ${table} d WHERE ${plan.where.join(' AND ')}`, plan.args, limit)
      + (plan.long ? rowsUpTo(`SELECT 1 FROM ${table} d WHERE ${plan.long.where.join(' AND ')}`, plan.long.args, limit) : 0);
    const bare = ranges.map((range) => range(NO_EXTRA));
    for (let limit = COUNT_PROBE; ; limit *= 8) {
      const tokenRows = rowsUpTo(`SELECT 1 FROM ix_ref d WHERE ${keyed.where[0]}`, keyed.args, limit);
      const counted = ranges.map((range, i) => ({ range, rows: rowsOf(bare[i]!, 'ix_date', limit) })).sort((a, b) => a.rows - b.rows);
      const best = counted[0]!;
      if (tokenRows < limit || best.rows < limit || limit >= COUNT_PROBE_MAX) return best.rows < tokenRows ? best.range(exists()) : tokenPlan;
    }
  }
  if (ranges.length) return ranges[0]!(exists());

  // 5. _lastUpdated range, else 6. the whole type, in last-updated order
  const where = ['v.type = ?', ...live];
  const args: unknown[] = [type];
  const lu = dateBounds(dateFilters('_lastUpdated'));
  if (lu) {
    where.push(...lu.conditions.map((c) => c.replaceAll('d.start', 'v.last_updated').replaceAll('d.end', 'v.last_updated')));
    args.push(...lu.args);
  }
  const luDesc = sort?.code === '_lastUpdated' && !!sort.descending;
  return {
    from: 'versions v INDEXED BY versions_live',
    where,
    args,
    orderBy: `v.last_updated ${luDesc ? 'DESC' : 'ASC'}, v.seq ${luDesc ? 'DESC' : 'ASC'}`,
    yields: sort?.code === '_lastUpdated' ? { code: '_lastUpdated', descending: luDesc } : undefined,
    order: { id: '_lastUpdated', key: 'v.last_updated', seq: 'v.seq', descending: luDesc },
    seek: seekAfter(where, args, 'v.last_updated', 'v.seq', luDesc),
  };

  /** A plan whose rows come in seq order (the `_id` and reference/token plans). */
  function seqOrdered(from: string, where: string[], args: unknown[], seq: string): Plan {
    return { from, where, args, orderBy: seq, order: { id: 'seq', seq, descending: false }, seek: seekAfter(where, args, undefined, seq, false) };
  }

  /** The first date parameter with a range the index answers, as a plan given its EXISTS checks. */
  function dateDriver(): Ranged | undefined {
    for (const [code, info] of params) {
      if (info.kind !== 'date' || !trusted(info) || code === '_lastUpdated') continue;
      const bounds = dateBounds(dateFilters(code));
      if (bounds) return (extra) => datePlan(dateKey(type, code), bounds, extra, code, sort?.code === code && !!sort.descending);
    }
    return undefined;
  }

  /** The first quantity filter the index can answer as a range, as a plan given its EXISTS checks. */
  function quantityDriver(): Ranged | undefined {
    for (const f of filters) {
      const info = params.get(f.code)!;
      if (info.kind !== 'quantity' || !trusted(info)) continue;
      const q = quantityPlan(type, f);
      if (!q) continue;
      return (extra) => {
        const where = ['d.h = ?', 'd.h2 = ?', ...q.points.conditions, ...extra.where];
        const args = [...ctx.hashPair(q.key), ...q.points.args, ...extra.args];
        return {
          from: 'ix_date d JOIN versions v ON v.seq = d.seq',
          where,
          args,
          orderBy: 'd.start, d.seq',
          long: { where: ['d.h = ?', 'd.h2 = ?', ...q.ranges.conditions, ...extra.where], args: [...ctx.hashPair(q.key + '\0long'), ...q.ranges.args, ...extra.args] },
          // (the key is named by its keyed hash: a unit's or a dimension's values are in their own scale)
          order: { id: `quantity:${f.code}:${ctx.hash(q.key)}`, key: 'd.start', seq: 'd.seq', descending: false },
          seek: seekAfter(where, args, 'd.start', 'd.seq', false),
          rows: { where: ['d.h = ?', 'd.h2 = ?', ...q.points.conditions], args: [...ctx.hashPair(q.key), ...q.points.args] },
        };
      };
    }
    return undefined;
  }

  /** Rows a driver query yields, counted up to `limit` (a bounded walk of one index range). */
  function rowsUpTo(sql: string, args: unknown[], limit: number): number {
    return (ctx.prepare(`SELECT count(*) AS n FROM (${sql} LIMIT ${limit})`).get(...args) as unknown as { n: number }).n;
  }

  function datePlan(key: string, bounds: DateBounds | undefined, extra: { where: string[]; args: unknown[] },
    code: string, descending: boolean, provenByKey: Filter[] = []): Plan {
    const conditions = bounds?.conditions ?? [];
    const condArgs = bounds?.args ?? [];
    const dir = descending ? 'DESC' : 'ASC';
    const startMin = bounds?.startMin ?? MIN_TIME;
    const startMax = bounds?.startMax ?? MAX_TIME;
    const hashed = ctx.hashPair(key);
    const rows = (min: number, max: number): { where: string[]; args: unknown[] } => ({
      where: ['d.h = ?', 'd.h2 = ?', 'd.start >= ?', 'd.start <= ?', ...conditions],
      args: [...hashed, min, max, ...condArgs],
    });
    const own = rows(startMin, startMax);
    return {
      from: 'ix_date d JOIN versions v ON v.seq = d.seq',
      where: [...own.where, ...extra.where],
      args: [...own.args, ...extra.args],
      orderBy: `d.start ${dir}, d.seq ${dir}`,
      yields: { code, descending },
      order: { id: `date:${code}`, key: 'd.start', seq: 'd.seq', descending },
      // the index range itself starts at the row resumed after (one bound on d.start, not two)
      seek: ([start, seq]) => {
        const from = rows(descending ? startMin : Math.max(startMin, start!), descending ? Math.min(startMax, start!) : startMax);
        return {
          where: [...from.where, `(d.start ${descending ? '<' : '>'} ? OR d.seq ${descending ? '<' : '>'} ?)`, ...extra.where],
          args: [...from.args, start, seq, ...extra.args],
        };
      },
      rows: own,
      proven: [...(bounds?.proven ?? []), ...provenByKey],
      long: bounds ? {
        where: ['d.h = ?', 'd.h2 = ?', ...conditions, ...extra.where],
        args: [...ctx.hashPair(key + '\0long'), ...condArgs, ...extra.args],
      } : {
        where: ['((d.h = ? AND d.h2 = ?) OR (d.h = ? AND d.h2 = ?))', ...extra.where],
        args: [...ctx.hashPair(key + '\0long'), ...ctx.hashPair(undatedKey(key)), ...extra.args],
        undated: ctx.hashPair(undatedKey(key)),
      },
    };
  }
}

/**
 * `patient=X` (or `subject=Patient/X` where `patient` is defined as the subject when it is a
 * Patient) with exactly one value: the patient+date index answers it.
 */
function singlePatientRef(type: string, params: Map<string, ParamInfo>, filters: Filter[]): { ref: string; filter: Filter } | undefined {
  const subjectIsPatient = params.get('patient')?.definition.expression?.includes(`${type}.subject.where(resolve() is Patient)`);
  for (const f of filters) {
    if (f.operator !== Operator.EQUALS || (f.code !== 'patient' && !(f.code === 'subject' && subjectIsPatient))) continue;
    const values = splitSearchOnComma(f.value);
    if (values.length === 1 && patientIdOfReference(values[0])) return { ref: values[0]!, filter: f };
  }
  return undefined;
}

/**
 * A driver query resuming strictly after a row's keys: `(key, seq)` past the given ones in the
 * direction of the order (or `seq` alone), the key bound first so that the index range starts there.
 */
function seekAfter(where: string[], args: unknown[], key: string | undefined, seq: string, descending: boolean): Plan['seek'] {
  const past = descending ? '<' : '>';
  return (keys) => key === undefined
    ? { where: [...where, `${seq} ${past} ?`], args: [...args, keys[0]] }
    : { where: [...where, `${key} ${past}= ?`, `(${key} ${past} ? OR ${seq} ${past} ?)`], args: [...args, keys[0], keys[0], keys[1]] };
}

/**
 * `_include` and `_revinclude` for the page, then `:iterate` ones once more over what they added.
 * With `standIns`, an included version whose bytes do not authenticate comes as its stand-in (a
 * `_revinclude` one on the strength of its index row: its references cannot be read).
 */
function collectIncludes(ctx: SearchContext, page: Resource[], include: IncludeTarget[], revInclude: IncludeTarget[], standIns: boolean): Resource[] {
  if (page.length === 0 || (include.length === 0 && revInclude.length === 0)) return [];
  const known = new Set(page.map((r) => `${r.resourceType}/${r.id}`));
  const included: Resource[] = [];
  const add = (r: Resource): boolean => {
    const ref = `${r.resourceType}/${r.id}`;
    if (known.has(ref)) return false;
    known.add(ref);
    included.push(r);
    return true;
  };
  const pass = (sources: Resource[], iterateOnly: boolean): Resource[] => {
    const added: Resource[] = [];
    for (const target of include) {
      if (iterateOnly && target.modifier !== Operator.ITERATE) continue;
      const info = paramsOf(target.resourceType).get(target.searchParam)!;
      for (const source of sources) {
        if (source.resourceType !== target.resourceType) continue;
        for (const ref of referencesOf(info.evaluate([toTypedValue(source)]))) {
          const [refType, refId, ...rest] = ref.split('/');
          if (!refType || !refId || rest.length > 0 || ref.includes(':')) continue;
          if (target.targetType && refType !== target.targetType) continue;
          const found = ctx.readCurrent(refType, refId, standIns);
          if (found && add(found)) added.push(found);
        }
      }
    }
    for (const target of revInclude) {
      if (iterateOnly && target.modifier !== Operator.ITERATE) continue;
      const info = paramsOf(target.resourceType).get(target.searchParam)!;
      const lookup = ctx.prepare(`${SELECT} FROM ix_ref d JOIN versions v ON v.seq = d.seq WHERE d.h = ?`);
      for (const source of sources) {
        const ref = `${source.resourceType}/${source.id}`;
        for (const row of lookup.all(ctx.hash(referenceKey(target.resourceType, target.searchParam, ref)))) {
          if (row.type !== target.resourceType) continue;
          const found = ctx.decode(row);
          if (!found) {
            const standIn = standIns ? ctx.standIn(row) : undefined;
            if (standIn && add(standIn)) added.push(standIn);
            continue;
          }
          if (!referencesOf(info.evaluate([toTypedValue(found)])).includes(ref)) continue;
          if (add(found)) added.push(found);
        }
      }
    }
    return added;
  };
  const first = pass(page, false);
  if (first.length) pass(first, true);
  return included;
}
