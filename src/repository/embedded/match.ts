/**
 * The final check of every search candidate: @medplum/core `matchesSearchRequest` semantics
 * (packages/core/src/search/match.ts, same helpers and comparisons), with two differences:
 * - FHIRPath expressions are compiled once per type (medplum re-parses the expression string on
 *   every call, which costs ~1 ms for `Observation.date`'s long union and would dominate a
 *   288-reading day query);
 * - string parameters follow the FHIR rule (case- and accent-insensitive starts-with, `:exact`,
 *   `:contains`) over each part of a HumanName/Address, where medplum matches "contains";
 * - quantity parameters, which medplum's matcher does not answer, follow search.html#quantity here
 *   (implied precision of `eq`/`ne`, the prefixes, `system|code` or `||code-or-unit`; a UCUM
 *   value converted to each candidate's commensurable UCUM unit, src/fhir/quantities.ts), and uri
 *   parameters match exactly;
 * - `:identifier` on references matches `Reference.identifier` as a token (search.html#modifiers).
 */
import {
  convertToSearchableQuantities, convertToSearchableReferences, convertToSearchableTokens, Operator,
  splitSearchOnComma, toPeriod, toTypedValue,
} from '@medplum/core';
import type { Filter, TypedValue } from '@medplum/core';
import type { Coding, Period, Quantity, Resource } from '@medplum/fhirtypes';
import { foldText } from '../../fhir/folding.js';
import { baseFactor, inBaseUnits, molarMassFor, molarMassOf, UCUM, ucumScale } from '../../fhir/quantities.js';
import { referenceIdentifiers } from './params.js';
import type { CompositePart, ParamInfo } from './params.js';

/** A compiled check of all filters of a search (already validated against `params`). */
export type Matcher = (resource: Resource) => boolean;

/**
 * Compiles the filters once per search: values split and date filter periods computed up front,
 * each parameter's expression evaluated once per resource even when several filters use it.
 */
export function compileMatcher(params: Map<string, ParamInfo>, filters: Filter[]): Matcher {
  const groups = new Map<string, { info: ParamInfo; checks: Check[] }>();
  for (const filter of filters) {
    const info = params.get(filter.code)!;
    let group = groups.get(filter.code);
    if (!group) groups.set(filter.code, group = { info, checks: [] });
    group.checks.push(compileFilter(info, filter));
  }
  const compiled = [...groups.values()];
  return (resource) => {
    if (compiled.length === 0) return true;
    const typed = [toTypedValue(resource)];
    for (const { info, checks } of compiled) {
      const values = info.evaluate(typed);
      let periods: Period[] | undefined;
      const periodsOf = (): Period[] => periods ??= values.map((v) => toPeriod(v.value)).filter((p): p is Period => !!p);
      for (const check of checks) if (!check(values, periodsOf, resource)) return false;
    }
    return true;
  };
}

/** One filter's check of a resource, given its parameter's values (and their periods, for dates). */
type Check = (values: TypedValue[], periods: () => Period[], resource: Resource) => boolean;

function compileFilter(info: ParamInfo, filter: Filter): Check {
  if (filter.operator === Operator.MISSING || filter.operator === Operator.PRESENT) {
    const desired = (filter.operator === Operator.MISSING && filter.value === 'false') ||
      (filter.operator === Operator.PRESENT && filter.value === 'true');
    if (info.kind === 'composite') {
      // present: some element has a value for every part (`code-value-quantity` on a coded Observation without a value is missing)
      return (values) => desired === values.some((element) => info.parts!.every((part) => {
        const found = partValues(part, element);
        return (part.kind === 'quantity' ? convertToSearchableQuantities(found) : convertToSearchableTokens(found)).length > 0;
      }));
    }
    return (values) => desired === values.length > 0;
  }
  const negated = filter.operator === Operator.NOT_EQUALS || filter.operator === Operator.NOT;
  const wanted = splitSearchOnComma(filter.value);
  switch (info.kind) {
    case 'reference':
      if (filter.operator === Operator.IDENTIFIER) {
        // search.html#modifiers: on Reference.identifier, as a token; the resource referred to is never read
        return (values) => referenceIdentifiers(values).some((id) => wanted.some((w) => matchesToken(id, w)));
      }
      return (values) => {
        if (filter.value === '' && values.length === 0) return filter.operator === Operator.EQUALS;
        const refs = convertToSearchableReferences(values);
        return wanted.some((w) => refs.includes(w)) !== negated;
      };
    case 'token': {
      if (filter.operator === Operator.TEXT) {
        // case- and accent-insensitive, from the start of any word: `glucose`, `interstitial fl`
        const phrases = wanted.map((w) => words(w).join(' ')).filter(Boolean);
        return (values) => tokenTexts(values).some((text) => {
          const all = words(text);
          return all.some((_, i) => phrases.some((p) => all.slice(i).join(' ').startsWith(p)));
        });
      }
      if (filter.operator === Operator.OF_TYPE) {
        const types = wanted.map((w) => w.split('|') as [string, string, string]);
        return (values) => values.some((v) => {
          const id = v.value as { value?: string; type?: { coding?: { system?: string; code?: string }[] } } | undefined;
          return !!id?.value && types.some(([system, code, value]) => id.value!.toLowerCase() === value.toLowerCase()
            && !!id.type?.coding?.some((c) => (!system || c.system === system) && c.code === code));
        });
      }
      // Plain `system|value` filters become one set lookup per token, so a bulk lookup of thousands
      // of identifiers (CGM ingest) costs O(candidates), not O(candidates × values).
      const exact = new Set<string>();
      const others: string[] = [];
      for (const w of wanted) {
        const parts = w.split('|');
        if (parts.length === 2 && parts[0] && parts[1]) exact.add(w.toLowerCase());
        else others.push(w);
      }
      return (values) => convertToSearchableTokens(values).some((t) =>
        (exact.size > 0 && !!t.system && !!t.value && exact.has(`${t.system}|${t.value}`.toLowerCase())) ||
        others.some((w) => matchesToken(t, w))) !== negated;
    }
    case 'date': {
      const filterPeriods = wanted.map((w) => toPeriod(w)).filter((p): p is Period => !!p);
      return (_values, periods) =>
        periods().some((p) => filterPeriods.some((f) => matchesDate(p, filter.operator, f))) !== negated;
    }
    case 'string':
      return (values) => {
        const strings = stringValues(values.map((t) => t.value));
        return strings.some((s) => wanted.some((w) => matchesString(s, filter.operator, w)));
      };
    case 'quantity': {
      const targets = wanted.map(parseQuantity);
      const operator = negated ? Operator.EQUALS : filter.operator;
      return (values, _periods, resource) => {
        const quantities = convertToSearchableQuantities(values);
        // `ne` asks for a value that differs: a resource without any value does not match it
        if (negated && quantities.length === 0) return false;
        const molarMass = molarMassFor(resource, info.code);
        return quantities.some((q) => targets.some((t) => matchesQuantity(q, operator, t, molarMass))) !== negated;
      };
    }
    case 'uri':
      return (values) => values.some((v) => typeof v.value === 'string' && wanted.includes(v.value));
    case 'composite': {
      // `values` are the elements the composite's expression selects (the resource, or each
      // component): one element must satisfy every part of one of the alternatives
      const parts = info.parts!;
      const alternatives = wanted.map((w) => splitComposite(w).map((text, i) => compositeTerm(parts[i]!, text)));
      return (values) => values.some((element) => {
        const byPart = parts.map((part) => partValues(part, element));
        // a quantity converts mass ↔ substance by the analyte its own element is coded as (code-value-quantity)
        let molarMass: number | undefined | null = null;
        const analyte = (): number | undefined => molarMass === null ? molarMass = molarMassOf(
          parts.flatMap((part, i) => part.kind === 'token' ? byPart[i]!.flatMap((v) => (v.value as { coding?: Coding[] } | undefined)?.coding ?? []) : []),
        ) : molarMass;
        return alternatives.some((terms) => terms.every((term, i) => term(byPart[i]!, analyte)));
      });
    }
  }
}

/** A composite part's values on one element, of the type its expression casts to. */
function partValues(part: CompositePart, element: TypedValue): TypedValue[] {
  const values = part.evaluate([element]);
  return part.type ? values.filter((v) => v.type === part.type) : values;
}

const PREFIX = /^(eq|ne|gt|lt|ge|le|sa|eb|ap)(?=[-+.\d])/;

/** The `$`-separated values of a composite search value (`\$` is a literal dollar sign). */
export function splitComposite(text: string): string[] {
  return text.split(/(?<!\\)\$/).map((p) => p.replaceAll('\\$', '$'));
}

/** A quantity part's prefix and value (`gt250|…` → gt, `250|…`); `eq` when there is none. */
export function splitPrefix(text: string): { operator: string; value: string } {
  const m = PREFIX.exec(text);
  return m ? { operator: m[1]!, value: text.slice(2) } : { operator: Operator.EQUALS, value: text };
}

/** Why a composite search value cannot be read for these parts, or undefined when it can. */
export function compositeProblem(parts: CompositePart[], text: string): string | undefined {
  const values = splitComposite(text);
  if (values.length !== parts.length) return `expected ${parts.length} values separated by $`;
  for (const [i, part] of parts.entries()) {
    const value = values[i]!;
    if (part.kind === 'token' && (value === '' || value === '|')) return `value ${i + 1} is an empty token`;
    if (part.kind === 'quantity') {
      const problem = quantityProblem(splitPrefix(value).value);
      if (problem) return `value ${i + 1}: ${problem}`;
    }
  }
  return undefined;
}

function compositeTerm(part: CompositePart, text: string): (values: TypedValue[], molarMass: () => number | undefined) => boolean {
  if (part.kind === 'token') return (values) => convertToSearchableTokens(values).some((t) => matchesToken(t, text));
  const { operator, value } = splitPrefix(text);
  const target = parseQuantity(value);
  if (operator === Operator.NOT_EQUALS) {
    return (values, molarMass) => {
      const quantities = convertToSearchableQuantities(values);
      return quantities.length > 0 && !quantities.some((q) => matchesQuantity(q, Operator.EQUALS, target, molarMass()));
    };
  }
  return (values, molarMass) => convertToSearchableQuantities(values).some((q) => matchesQuantity(q, operator, target, molarMass()));
}

/** A quantity search value: `[number]`, `[number]|[system]|[code]` or `[number]||[code or unit]`. */
export interface QuantityTarget {
  value: number;
  /** Half the width of the range the value's written precision implies (`5.4` → 0.05, `100` → 0.5). */
  half: number;
  system?: string;
  code?: string;
  /** A UCUM value in a unit that converts: the same in base units of its dimension, which every comparison then uses. */
  base?: { value: number; half: number; dimension: string };
}

const NUMBER = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;

/** Why a quantity search value cannot be read, or undefined when it can (normalizeFilter refuses it). */
export function quantityProblem(text: string): string | undefined {
  // (the value is not echoed: answers never repeat request values, which may name patients)
  const parts = text.split('|');
  if (parts.length !== 1 && parts.length !== 3) return 'expected number, number|system|code or number||code';
  if (!NUMBER.test(parts[0]!) || !Number.isFinite(Number(parts[0]))) return 'the value is not a number';
  if (parts.length === 3 && parts[1] && !parts[2]) return 'a unit system needs a unit code';
  return undefined;
}

export function parseQuantity(text: string): QuantityTarget {
  const [number, system, code] = text.split('|') as [string, string | undefined, string | undefined];
  const exponent = /[eE]([+-]?\d+)$/.exec(number);
  const mantissa = exponent ? number.slice(0, exponent.index) : number;
  const decimals = mantissa.includes('.') ? mantissa.length - mantissa.indexOf('.') - 1 : 0;
  const value = Number(number);
  const half = 0.5 * 10 ** ((exponent ? Number(exponent[1]) : 0) - decimals);
  const scale = system === UCUM && code ? ucumScale(code) : undefined;
  return {
    value,
    half,
    ...(system ? { system } : {}),
    ...(code ? { code } : {}),
    ...(scale ? { base: { value: inBaseUnits(value, scale.factor), half: half * scale.factor, dimension: scale.dimension } } : {}),
  };
}

/**
 * One value of the resource against one search value. A value with a comparator (`<5`) stands for
 * the range it bounds; the prefixes then read as in search.html#prefix: `gt`/`lt`/`ge`/`le` some
 * of the range lies beyond the value, `sa`/`eb` all of it, `eq` all of it within the implied
 * precision, `ap` some of it within 10 % (at least the implied precision).
 */
function matchesQuantity(q: Quantity, operator: string, wanted: QuantityTarget, molarMass: number | undefined): boolean {
  if (typeof q.value !== 'number') return false;
  const pair = comparable(q, q.value, wanted, molarMass);
  if (!pair) return false;
  const { v, t } = pair;
  const below = q.comparator === '<' || q.comparator === '<=';
  const above = q.comparator === '>' || q.comparator === '>=';
  const open = q.comparator === '<' || q.comparator === '>';
  const lo = below ? -Infinity : v;
  const hi = above ? Infinity : v;
  switch (operator) {
    case Operator.EQUALS: return lo >= t.value - t.half && (open && below ? hi <= t.value + t.half : hi < t.value + t.half);
    case Operator.GREATER_THAN: return hi > t.value;
    case Operator.GREATER_THAN_OR_EQUALS: return open && below ? hi > t.value : hi >= t.value;
    case Operator.LESS_THAN: return lo < t.value;
    case Operator.LESS_THAN_OR_EQUALS: return open && above ? lo < t.value : lo <= t.value;
    case Operator.STARTS_AFTER: return open && above ? lo >= t.value : lo > t.value;
    case Operator.ENDS_BEFORE: return open && below ? hi <= t.value : hi < t.value;
    case Operator.APPROXIMATELY: {
      const d = Math.max(Math.abs(t.value) * 0.1, t.half);
      return lo <= t.value + d && hi >= t.value - d;
    }
    default: return false;
  }
}

/**
 * A resource's value and the search value in one scale, or undefined when they cannot be compared.
 * A UCUM search value in a unit that converts: both in base units of its dimension (the resource's
 * value converted as its index row was, src/fhir/quantities.ts). Otherwise as written: without a
 * system, `||code` names the code or the unit exactly; with one, the same system and code.
 */
function comparable(q: Quantity, value: number, t: QuantityTarget, molarMass: number | undefined): { v: number; t: QuantityTarget } | undefined {
  if (t.base) {
    const factor = q.system === UCUM && q.code !== undefined ? baseFactor(q.code, t.base.dimension, molarMass) : undefined;
    return factor === undefined ? undefined : { v: inBaseUnits(value, factor), t: t.base };
  }
  if (t.system === undefined) return t.code === undefined || q.code === t.code || q.unit === t.code ? { v: value, t } : undefined;
  return q.system === t.system && q.code === t.code ? { v: value, t } : undefined;
}

function matchesToken(token: { system?: string; value?: string }, filterValue: string): boolean {
  if (filterValue.includes('|')) {
    const [system, value] = filterValue.split('|').map((s) => s.toLowerCase());
    if (!system && !value) return false;
    if (!system) return !token.system && token.value?.toLowerCase() === value;
    return token.system?.toLowerCase() === system && (!value || token.value?.toLowerCase() === value);
  }
  return token.value?.toLowerCase() === filterValue.toLowerCase();
}

function matchesDate(resourceValue: Period, operator: string, filterPeriod: Period): boolean {
  const rs = resourceValue.start ?? '0000';
  const re = resourceValue.end ?? '9999';
  const fs = filterPeriod.start as string;
  const fe = filterPeriod.end as string;
  switch (operator) {
    case Operator.APPROXIMATELY:
    case Operator.EQUALS:
    case Operator.NOT_EQUALS: return rs < fe && re > fs;
    case Operator.LESS_THAN: return rs < fs;
    case Operator.GREATER_THAN: return re > fe;
    case Operator.LESS_THAN_OR_EQUALS: return rs <= fe;
    case Operator.GREATER_THAN_OR_EQUALS: return re >= fs;
    case Operator.STARTS_AFTER: return rs > fe;
    case Operator.ENDS_BEFORE: return re < fs;
    default: return false;
  }
}

/**
 * The text a token's `:text` modifier searches (search.html#modifiers): CodeableConcept.text and
 * its codings' displays, a Coding's display, an Identifier's type text.
 */
function tokenTexts(values: TypedValue[]): string[] {
  const out: string[] = [];
  for (const { value } of values) {
    if (!value || typeof value !== 'object') continue;
    const o = value as { text?: unknown; display?: unknown; coding?: { display?: unknown }[]; type?: { text?: unknown } };
    for (const t of [o.text, o.display, o.type?.text, ...(o.coding ?? []).map((c) => c.display)]) if (typeof t === 'string') out.push(t);
  }
  return out;
}

const fold = foldText;
const words = (s: string): string[] => fold(s).split(/[^\p{L}\p{N}]+/u).filter(Boolean);

function matchesString(value: string, operator: string, wanted: string): boolean {
  if (operator === Operator.EXACT) return value === wanted;
  if (operator === Operator.CONTAINS) return fold(value).includes(fold(wanted));
  return fold(value).startsWith(fold(wanted));
}

/** The strings a string parameter matches on: each part of a HumanName or Address, or the value itself. */
export function stringValues(values: unknown[]): string[] {
  const out: string[] = [];
  const push = (v: unknown): void => {
    if (typeof v === 'string') out.push(v);
    else if (Array.isArray(v)) v.forEach(push);
  };
  for (const v of values) {
    if (v && typeof v === 'object') {
      const o = v as Record<string, unknown>;
      for (const k of ['text', 'family', 'given', 'prefix', 'suffix', 'line', 'city', 'district', 'state', 'postalCode', 'country']) push(o[k]);
    } else {
      push(v);
    }
  }
  return out;
}
