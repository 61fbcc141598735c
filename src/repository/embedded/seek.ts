/**
 * Positions of matches in the order of a search, for keyset paging (SearchOptions.after): a page
 * after the first resumes strictly after the position of the last match the caller examined, so
 * resources created, updated or deleted meanwhile shift nothing of what comes after it.
 *
 * Every order here is total: its keys end with the version row's `seq`, unique and never changed
 * for a version (an update writes a new version, a new seq, and so may move its resource).
 * Orders are named, so that a position is only ever compared within the order it was taken in:
 * - `seq`: the order of the `_id` and reference/token index plans (the default order there);
 * - `_lastUpdated`: last updated, then seq (the default order of a search by type alone);
 * - `date:<code>`: the start of a date parameter's value, then seq (the default order of a
 *   patient+date or date range plan); `quantity:<code>:<key>` likewise for a quantity range;
 * - `sort:<rules>`: the `_sort` rules asked for (`sort:-date`, `sort:_id`), then seq in the
 *   direction of the first rule — however the plan reads them, from the index in order or all
 *   read and sorted here.
 */
import type { Resource } from '@medplum/fhirtypes';
import { toTypedValue } from '@medplum/core';
import { datesOf, MAX_TIME } from './params.js';
import type { ParamInfo } from './params.js';
import { stringValues } from './match.js';

export type OrderKey = number | string;

/** A match's place in a named order. */
export interface Position {
  order: string;
  keys: OrderKey[];
}

/** An order this module can compute from the decoded resources (and their rows' seq). */
export interface ComputedOrder {
  id: string;
  /** Descending flag of each key, the seq last. */
  descending: boolean[];
  keysOf(resource: Resource, seq: number): OrderKey[];
}

/** The position as text (opaque to the caller, SearchResult.positionOf). */
export function positionText(position: Position): string {
  return JSON.stringify([position.order, ...position.keys]);
}

/** A position text back; undefined for anything not made by positionText. */
export function parsePosition(text: string): Position | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!Array.isArray(parsed) || parsed.length < 2 || typeof parsed[0] !== 'string') return undefined;
  const keys = parsed.slice(1);
  if (!keys.every((k) => typeof k === 'string' || (typeof k === 'number' && Number.isFinite(k)))) return undefined;
  if (typeof keys[keys.length - 1] !== 'number') return undefined;
  return { order: parsed[0], keys: keys as OrderKey[] };
}

/** Negative when `a` comes before `b` in an order with these key directions. */
export function compareKeys(a: OrderKey[], b: OrderKey[], descending: boolean[]): number {
  for (let i = 0; i < descending.length; i++) {
    const x = a[i]!;
    const y = b[i]!;
    if (x === y) continue;
    const before = typeof x === typeof y ? x < y : typeof x === 'number';
    return (before ? -1 : 1) * (descending[i] ? -1 : 1);
  }
  return 0;
}

/** The `sort:` order name of sort rules. */
export function sortOrderId(rules: { code: string; descending?: boolean }[]): string {
  return `sort:${rules.map((r) => `${r.descending ? '-' : ''}${r.code}`).join(',')}`;
}

/**
 * How to compute a named order from decoded resources: every `sort:` order of sortable parameters,
 * and the default orders `seq`, `_lastUpdated` and `date:<code>` (a page token of a walk whose
 * search is now read through another index). Undefined for others (`quantity:`): that walk goes on
 * by offset.
 */
export function computedOrder(id: string, params: Map<string, ParamInfo>): ComputedOrder | undefined {
  if (id === 'seq') return { id, descending: [false], keysOf: (_r, seq) => [seq] };
  if (id === '_lastUpdated') return { id, descending: [false, false], keysOf: (r, seq) => [Date.parse(r.meta?.lastUpdated ?? '') || MAX_TIME, seq] };
  if (id.startsWith('date:')) {
    const info = params.get(id.slice(5));
    if (info?.kind !== 'date') return undefined;
    // the earliest start: where a walk of the index in ascending order first meets the resource
    return { id, descending: [false, false], keysOf: (r, seq) => [Math.min(MAX_TIME, ...datesOf(info.evaluate([toTypedValue(r)])).map((d) => d.start)), seq] };
  }
  if (!id.startsWith('sort:')) return undefined;
  const rules = id.slice(5).split(',').map((text) => ({ code: text.replace(/^-/, ''), descending: text.startsWith('-') }));
  for (const rule of rules) {
    const info = params.get(rule.code);
    if (rule.code !== '_id' && info?.kind !== 'date' && info?.kind !== 'string') return undefined;
  }
  return {
    id,
    descending: [...rules.map((r) => r.descending), rules[0]!.descending],
    keysOf: (r, seq) => [...rules.map((rule) => sortKeyOf(r, rule.code, params)), seq],
  };
}

/** A resource's key for a `_sort` rule: the first value (missing ones last, ascending). */
function sortKeyOf(resource: Resource, code: string, params: Map<string, ParamInfo>): OrderKey {
  if (code === '_id') return resource.id ?? '';
  const info = params.get(code)!;
  const values = info.evaluate([toTypedValue(resource)]);
  if (info.kind === 'date') return datesOf(values)[0]?.start ?? MAX_TIME;
  return stringValues(values.map((t) => t.value))[0]?.toLowerCase() ?? '\uffff';
}
