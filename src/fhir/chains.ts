/**
 * Chained parameters and reverse chaining (search.html#chaining, #has), answered by the facade for
 * either repository adapter:
 *
 * - `Observation?patient.identifier=urn:mrn|123`, `subject:Patient.name=peter` (several links:
 *   `subject:Patient.general-practitioner.name=…`): the chain's target search runs first and the
 *   parameter becomes `patient=Patient/a,Patient/b…`. Without a `:Type` the chain applies to every
 *   target type of the reference that has the chained parameter.
 * - `Patient?_has:Observation:patient:code=…`: the Observations matching `code` are found, and the
 *   search keeps the Patients they reference in `patient` (`_id=a,b…`).
 *
 * Every inner search runs as the requester (ChainContext.matches: authorization, consent narrowing
 * and outbound guards, like any search), so a chain selects only by resources the requester could
 * fetch themselves: it never reveals an element of a hidden resource. An inner search matching more
 * than its limit is refused as too costly (400 `too-costly`) rather than turned into a huge filter.
 */
import { convertToSearchableReferences, evalFhirPathTyped, getSearchParameter, toTypedValue } from '@medplum/core';
import type { Resource, SearchParameter } from '@medplum/fhirtypes';
import { badRequest, isGlucoGuardError, tooCostly } from '../errors.js';
import { pairsToQuery } from './paging.js';
import { isSupportedType } from './resource-types.js';

/** Links one parameter may follow (`a.b.c` is three; each `_has` is one). */
export const MAX_CHAIN_LINKS = 3;
/** Resources a forward chain's target search may select (they become one reference filter). */
export const CHAIN_TARGET_LIMIT = 1_000;
/** Resources a `_has` source search may match (their references become one `_id` filter). */
export const HAS_SOURCE_LIMIT = 10_000;

export type Query = Record<string, string | string[]>;

export interface ChainContext {
  /** Search parameters per type the repository answers, or undefined for any standard one (upstream). */
  supported: Record<string, string[]> | undefined;
  /** Prefer: handling=lenient — a chain that cannot be answered is dropped instead of refused. */
  lenient: boolean;
  /** Filled with the names of the chains dropped under `lenient`. */
  dropped?: Set<string>;
  /** The proxy's FHIR base, so absolute references to it count as local ones. */
  fhirBase: string;
  /**
   * The matches of a one-parameter search of `type` that the requester may see (its own chains
   * resolved at `links` depth): at most `limit` + 1, so the caller can tell it went past. Throws
   * like a search (400, 403).
   */
  matches(type: string, query: Query, limit: number, links: number): Promise<Resource[]>;
}

/** True when the parameter name is a chain or a `_has` (what resolveChains rewrites). */
export function isChained(name: string): boolean {
  return name.startsWith('_has:') || name === '_has' || name.split(':')[0]!.includes('.') || /^[^.:]+:[A-Z][A-Za-z]*\./.test(name);
}

/**
 * The query with every chained and `_has` parameter replaced by the reference or `_id` filter it
 * selects; undefined when one of them selects nothing (then nothing can match). `links` is the
 * number of links already followed to get here.
 */
export async function resolveChains(type: string, query: Query, ctx: ChainContext, links = 0): Promise<Query | undefined> {
  if (!Object.keys(query).some(isChained)) return query;
  // a filter a chain selects is ANDed with any given under the same name (a repeated parameter)
  const out: [string, string][] = [];
  for (const [name, raw] of Object.entries(query)) {
    if (!isChained(name)) {
      for (const v of [raw].flat()) out.push([name, v]);
      continue;
    }
    if (links >= MAX_CHAIN_LINKS) throw badRequest(`Chains of more than ${MAX_CHAIN_LINKS} links are not supported`, name);
    // A repeated parameter is AND: each value selects on its own.
    for (const value of [raw].flat()) {
      let selected: { name: string; value: string } | undefined;
      try {
        selected = name.startsWith('_has') ? await reverse(type, name, value, ctx, links) : await forward(type, name, value, ctx, links);
      } catch (err) {
        // Under lenient handling a chain the server cannot answer is ignored like any unknown parameter; cost stays an error.
        if (ctx.lenient && isGlucoGuardError(err, 'ERR_INVALID') && err.issues[0]?.code !== 'too-costly') {
          ctx.dropped?.add(name);
          break;
        }
        throw err;
      }
      if (!selected) return undefined;
      out.push([selected.name, selected.value]);
    }
  }
  return pairsToQuery(out);
}

/** `ref[:Type].rest=value` → `ref=Type/a,Type/b…` (undefined: no target matched). */
async function forward(type: string, name: string, value: string, ctx: ChainContext, links: number): Promise<{ name: string; value: string } | undefined> {
  const dot = name.indexOf('.');
  const [code, typeModifier, ...more] = name.slice(0, dot).split(':');
  const rest = name.slice(dot + 1);
  if (more.length || !code || rest === '') throw badRequest(`Malformed chained parameter "${name}"`, name);
  const param = referenceParam(type, code!, ctx, name);
  let targets = targetTypes(param);
  if (typeModifier !== undefined) {
    if (!targets.includes(typeModifier)) throw badRequest(`"${code}" of ${type} cannot refer to "${typeModifier}"`, name);
    targets = [typeModifier];
  }
  const restCode = rest.split(/[:.]/)[0]!;
  // without a :Type, the types the chained parameter exists on (search.html#chaining)
  const usable = targets.filter((t) => isSupportedType(t) && (restCode.startsWith('_has') || knows(t, restCode, ctx)));
  if (usable.length === 0) throw badRequest(`Unknown or unsupported chained parameter "${rest}" for ${targets.join(', ') || 'the target'} of "${code}"`, name);
  const refs: string[] = [];
  for (const target of usable) {
    const found = await ctx.matches(target, { [rest]: value }, CHAIN_TARGET_LIMIT - refs.length, links + 1);
    for (const r of found) refs.push(`${r.resourceType}/${r.id}`);
    if (refs.length > CHAIN_TARGET_LIMIT) throw chainTooCostly(name, CHAIN_TARGET_LIMIT);
  }
  return refs.length ? { name: code!, value: refs.join(',') } : undefined;
}

/** `_has:Source:ref:rest=value` → `_id=a,b…` of the resources those Sources refer to in `ref`. */
async function reverse(type: string, name: string, value: string, ctx: ChainContext, links: number): Promise<{ name: string; value: string } | undefined> {
  const [, source, code, ...restParts] = name.split(':');
  const rest = restParts.join(':');
  if (!source || !code || rest === '') throw badRequest(`Malformed _has parameter "${name}": use _has:Type:reference:parameter`, name);
  if (!isSupportedType(source)) throw badRequest(`Unknown or unsupported resource type "${source.slice(0, 64)}" in _has`, name);
  const param = referenceParam(source, code, ctx, name);
  const targets = targetTypes(param);
  if (targets.length && !targets.includes(type)) throw badRequest(`"${code}" of ${source} cannot refer to ${type}`, name);
  const restCode = rest.split(/[:.]/)[0]!;
  if (!restCode.startsWith('_has') && !knows(source, restCode, ctx)) throw badRequest(`Unknown or unsupported search parameter "${restCode}" for ${source} in _has`, name);
  const sources = await ctx.matches(source, { [rest]: value }, HAS_SOURCE_LIMIT, links + 1);
  if (sources.length > HAS_SOURCE_LIMIT) throw chainTooCostly(name, HAS_SOURCE_LIMIT);
  const ids = new Set<string>();
  for (const s of sources) {
    for (const ref of convertToSearchableReferences(evalFhirPathTyped(param.expression!, [toTypedValue(s)]))) {
      const id = localId(ref, type, ctx.fhirBase);
      if (id) ids.add(id);
    }
  }
  return ids.size ? { name: '_id', value: [...ids].join(',') } : undefined;
}

function referenceParam(type: string, code: string, ctx: ChainContext, name: string): SearchParameter {
  const param = getSearchParameter(type, code);
  if (!param || !knows(type, code, ctx)) throw badRequest(`Unknown or unsupported search parameter "${code}" for ${type}`, name);
  if (param.type !== 'reference' || !param.expression) throw badRequest(`"${code}" of ${type} is not a reference parameter: it cannot be chained`, name);
  return param;
}

function targetTypes(param: SearchParameter): string[] {
  return [...(param.target ?? [])];
}

function knows(type: string, code: string, ctx: ChainContext): boolean {
  if (code === '_id' || code === '_lastUpdated') return true;
  if (ctx.supported) return (ctx.supported[type] ?? []).includes(code);
  return getSearchParameter(type, code) !== undefined;
}

/** The id in a reference to a `type` held here (`Type/id`, `Type/id/_history/v`, or under this server's base). */
function localId(reference: string, type: string, fhirBase: string): string | undefined {
  const relative = reference.startsWith(`${fhirBase}/`) ? reference.slice(fhirBase.length + 1) : reference;
  const match = /^([A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})(\/_history\/[^/]+)?$/.exec(relative);
  return match && match[1] === type ? match[2] : undefined;
}

function chainTooCostly(name: string, limit: number): Error {
  return tooCostly(`The search in "${name}" matches more than ${limit} resources: narrow it (for example with an identifier or a date)`, name);
}
