/**
 * Turning a search query into a checked @medplum/core SearchRequest: unknown or unsupported
 * parameters are refused with 400 (or dropped under `Prefer: handling=lenient`), parameters the
 * facade does not offer (`_text`, `_filter`…) are refused the same way. `_total` is a hint
 * (search.html#total) the facade takes and never honours: no count over filtered data.
 * Chains and `_has` are resolved before this (src/fhir/chains.ts). `_summary` and
 * `_elements` never reach the repository: where the caller subsets answers (src/fhir/subsetting.ts)
 * they are left out here, elsewhere they are refused.
 */
import { getSearchParameter, Operator, parseSearchRequest, splitSearchOnComma, type Filter, type SearchRequest } from '@medplum/core';
import { badRequest } from '../errors.js';
import { pairsToQuery, queryPairs } from './paging.js';

/** Result-control parameters handled by the facade or the repository, not filters. */
const CONTROL_PARAMS = new Set(['_count', '_sort', '_include', '_revinclude', '_format', '_pretty', '_pageToken', '_offset', '_total']);
/** Parameters the facade never offers (`_text` and `_content` would be full-text search, `_filter` a language of its own). */
const REFUSED_PARAMS = new Set(['_contained', '_containedType', '_text', '_content', '_list', '_query', '_filter', '_type']);
/** Common parameters every resource type supports here. */
const COMMON_FILTERS = new Set(['_id', '_lastUpdated']);
/**
 * Modifiers the embedded repository answers, per parameter type (an upstream server checks its own);
 * `:not` on references is this repository's own, the rest are search.html#modifiers.
 */
const MODIFIERS: Record<string, string[]> = {
  string: ['missing', 'exact', 'contains'],
  token: ['missing', 'not', 'text', 'of-type'],
  reference: ['missing', 'not', 'identifier'],
  date: ['missing'],
  quantity: ['missing'],
  uri: ['missing'],
  composite: ['missing'],
};
/** Sort keys the embedded index orders by; others are refused (they can act as oracles on hidden elements). */
const SORTABLE = new Set(['date', '_lastUpdated', '_id', 'birthdate']);

export interface SearchParseOptions {
  lenient: boolean;
  /** Parameters supported per type, or undefined to accept any standard parameter (upstream pass-through). */
  supported: Record<string, string[]> | undefined;
  defaultCount: number;
  maxCount: number;
  /** The caller subsets the answer (`_summary`, `_elements`, checked by parseSubsetting): leave them out. Otherwise they are refused. */
  subsetting?: boolean;
  /** Filled with the names of the parameters left out under `lenient` (`_sort` when any of its keys was). */
  dropped?: Set<string>;
}

const TOTAL_VALUES = ['none', 'estimate', 'accurate'];

/** Whether the query asks for Bundle.total (`_total=estimate|accurate`), which the facade does not give. */
export function asksForTotal(query: Record<string, string | string[] | undefined>): boolean {
  return [query._total ?? []].flat().some((v) => v === 'estimate' || v === 'accurate');
}

/** Result parameters that shape what is returned of each resource, not what matches. */
const SUBSETTING_PARAMS = new Set(['_summary', '_elements']);

/**
 * A parameter (modifier aside) that shapes a search's answer or its format rather than selecting
 * matches (search.html#modifyingresults): not a criterion of a conditional write.
 */
export function isResultParam(name: string): boolean {
  const base = name.split(':')[0]!;
  return CONTROL_PARAMS.has(base) || SUBSETTING_PARAMS.has(base) || base === '_contained' || base === '_containedType';
}

/** Builds a SearchRequest from a query, throwing 400 for anything the facade cannot answer faithfully. */
export function parseSearch(resourceType: string, query: Record<string, string | string[]>, options: SearchParseOptions): SearchRequest {
  const kept: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(withTypedReferences(resourceType, query))) {
    if (SUBSETTING_PARAMS.has(name)) {
      if (options.subsetting) continue;
      if (!options.lenient) throw badRequest(`${name} is not supported here`, name);
      options.dropped?.add(name);
      continue;
    }
    const problem = checkParam(resourceType, name, value, options);
    if (!problem) kept[name] = value;
    else if (!options.lenient) throw badRequest(problem, name);
    else options.dropped?.add(name);
  }
  delete kept._format;
  delete kept._pretty;
  delete kept._pageToken;
  delete kept._offset;
  // a hint the repository never sees: it would count matches the guards have not filtered
  delete kept._total;
  // @medplum/core's parser does not read composite parameters: they become filters here, as
  // given (`code$value`), for the repository to check (embedded: normalizeFilter)
  const composites: Filter[] = [];
  for (const [name, value] of Object.entries(kept)) {
    const [code, modifier] = name.split(':') as [string, string | undefined];
    if (getSearchParameter(resourceType, code)?.type !== 'composite') continue;
    for (const v of [value].flat()) composites.push({ code, operator: modifier === 'missing' ? Operator.MISSING : Operator.EQUALS, value: v });
    delete kept[name];
  }
  const orderedLists = orderedValueLists(resourceType, kept);
  let request: SearchRequest;
  try {
    request = parseSearchRequest(resourceType, kept);
  } catch (err) {
    throw badRequest(`Invalid search: ${(err as Error).message}`);
  }
  if (composites.length || orderedLists.length) request.filters = [...(request.filters ?? []), ...composites, ...orderedLists];
  const count = request.count ?? options.defaultCount;
  if (!Number.isInteger(count) || count < 0) throw badRequest('_count must be a non-negative integer', '_count');
  for (const rule of request.sortRules ?? []) {
    if (!SORTABLE.has(rule.code) || !isKnownParam(resourceType, rule.code, options.supported)) {
      if (options.lenient) continue;
      throw badRequest(`Sorting by "${rule.code}" is not supported`, '_sort');
    }
  }
  if (options.lenient && request.sortRules) {
    const sortable = request.sortRules.filter((r) => SORTABLE.has(r.code) && isKnownParam(resourceType, r.code, options.supported));
    if (sortable.length < request.sortRules.length) options.dropped?.add('_sort');
    request.sortRules = sortable;
  }
  for (const target of [...(request.include ?? []), ...(request.revInclude ?? [])]) {
    if (!getSearchParameter(target.resourceType, target.searchParam)) {
      throw badRequest(`Unknown include target ${target.resourceType}:${target.searchParam}`, '_include');
    }
  }
  return { ...request, count: Math.min(count, options.maxCount), offset: 0 };
}

/** Parameter types whose values take a prefix (search.html#prefix). */
const ORDERED_TYPES = new Set(['date', 'number', 'quantity']);

/**
 * Comma lists (OR, search.html#combining) of date, number and quantity values: @medplum/core's
 * parser reads `2026-01-01,2026-01-03` as one malformed date. They become one equality filter
 * with the alternatives as its comma-separated value, which both repositories read as OR (the
 * embedded matcher splits it; an upstream gets `date=2026-01-01%2C2026-01-03`). Each alternative
 * is checked as a single value would be. A list with prefixes (`lt70,gt180`) is refused: a filter
 * has one operator, and the prefix of each alternative would be lost on its way upstream.
 * Such values are taken out of `query`; the filters they make are returned.
 */
export function orderedValueLists(resourceType: string, query: Record<string, string | string[]>): Filter[] {
  const filters: Filter[] = [];
  for (const [name, value] of Object.entries(query)) {
    if (name.includes(':') || !ORDERED_TYPES.has(getSearchParameter(resourceType, name)?.type ?? '')) continue;
    const single: string[] = [];
    for (const v of [value].flat()) {
      const alternatives = splitSearchOnComma(v);
      if (alternatives.length < 2) {
        single.push(v);
        continue;
      }
      const plain = alternatives.map((a) => a.replace(/^eq(?=[-+\d.])/, ''));
      if (plain.some((a) => /^(ne|gt|lt|ge|le|sa|eb|ap)(?=[-+\d.])/.test(a))) {
        throw badRequest(`${name}: a comma list (OR) takes values without a prefix (${name}=a,b); search once per range for prefixed values`, name);
      }
      for (const a of plain) {
        try {
          parseSearchRequest(resourceType, { [name]: a });
        } catch (err) {
          throw badRequest(`Invalid search: ${(err as Error).message}`, name);
        }
      }
      filters.push({ code: name, operator: Operator.EQUALS, value: plain.join(',') });
    }
    if (single.length === 0) delete query[name];
    else query[name] = single.length === 1 ? single[0]! : single;
  }
  return filters;
}

/**
 * Reference parameters with a type modifier (`subject:Patient=123`, search.html#modifiers) as the
 * plain parameter with typed values (`subject=Patient/123`), ANDed with any plain filter of the
 * same parameter. A value that names another type is prefixed all the same, so it matches nothing.
 * Other parameters are left as they are.
 */
function withTypedReferences(resourceType: string, query: Record<string, string | string[]>): Record<string, string | string[]> {
  const typedNames = Object.keys(query).filter((name) => {
    const m = /^([a-z][a-z0-9-]*):([A-Z][A-Za-z]*)$/.exec(name);
    const param = m ? getSearchParameter(resourceType, m[1]!) : undefined;
    return param?.type === 'reference' && (param.target as string[] | undefined)?.includes(m![2]!);
  });
  if (typedNames.length === 0) return query;
  return pairsToQuery(queryPairs(query).map(([name, value]): [string, string] => {
    if (!typedNames.includes(name)) return [name, value];
    const [param, type] = name.split(':') as [string, string];
    return [param, value.split(',').map((one) => (one.startsWith(`${type}/`) || one.includes(`/${type}/`) ? one : `${type}/${one}`)).join(',')];
  }));
}

function checkParam(resourceType: string, name: string, value: string | string[], options: SearchParseOptions): string | undefined {
  // R4 pages by the server's links only (http.html#paging); taking `_offset` and answering the first
  // page would send a client that pages by it round the same page for ever
  if (name === '_offset') return '_offset is not supported: follow the Bundle\'s next links to page';
  // `_include:iterate` and `_revinclude:iterate` (search.html#revinclude): the one modifier of a control parameter
  if (CONTROL_PARAMS.has(name) || name === '_include:iterate' || name === '_revinclude:iterate') {
    if (name === '_count' && ![value].flat().every((v) => /^\d+$/.test(v))) return '_count must be a non-negative integer';
    if (name === '_total' && ![value].flat().every((v) => TOTAL_VALUES.includes(v))) return '_total must be none, estimate or accurate';
    return undefined;
  }
  if (name.startsWith('_has')) return '_has (reverse chaining) is not supported';
  const base = name.split(':')[0]!;
  if (REFUSED_PARAMS.has(base)) return `${base} is not supported`;
  if (base.includes('.')) return `Chained parameter "${name}" is not supported`;
  const modifier = name.includes(':') ? name.slice(base.length + 1) : undefined;
  if (!isKnownParam(resourceType, base, options.supported)) return `Unknown or unsupported search parameter "${base}" for ${resourceType}`;
  if (modifier && /^[A-Z]/.test(modifier)) return `"${base}" of ${resourceType} cannot refer to "${modifier.slice(0, 64)}"`;
  if (modifier !== undefined && modifier !== 'missing' && getSearchParameter(resourceType, base)?.type === 'composite') return `Modifier ":${modifier}" is not supported for "${base}"`;
  if (modifier !== undefined && options.supported && !MODIFIERS[getSearchParameter(resourceType, base)?.type ?? '']?.includes(modifier)) {
    // @medplum/core's parser reads a modifier it does not know as a plain `eq`: answering that would change the question
    return `Modifier ":${modifier}" is not supported for "${base}"`;
  }
  if ([value].flat().some((v) => v === '')) return `Empty value for search parameter "${name}"`;
  return undefined;
}

function isKnownParam(resourceType: string, code: string, supported: Record<string, string[]> | undefined): boolean {
  if (supported) return COMMON_FILTERS.has(code) || (supported[resourceType] ?? []).includes(code);
  return COMMON_FILTERS.has(code) || getSearchParameter(resourceType, code) !== undefined;
}
