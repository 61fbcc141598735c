/**
 * `_summary` and `_elements` on search and read (https://hl7.org/fhir/R4/search.html#summary,
 * #elements): the facade answers a subset of each resource's top-level elements.
 *
 * Subsetting happens on the way out, after the guards (scopes, consent, integrity) have passed the
 * whole version: the repository is always asked for, and the integrity check always proves, complete
 * versions, so a subset never weakens either. A resource that lost elements carries the SUBSETTED
 * tag, so nobody writes it back as if it were complete. `_summary=count` stays refused (DESIGN §7:
 * no counts over filtered sets).
 *
 * - `_summary=true`: the elements the base definition marks `isSummary`;
 * - `_summary=text`: `text`, `id`, `meta` and the mandatory elements (not with `_include`/`_revinclude`);
 * - `_summary=data`: everything but `text`; `_summary=false`: everything;
 * - `_elements=a,b`: those elements of the matches (not of included resources) plus the mandatory ones.
 *
 * Every subset keeps `resourceType`, `id`, `meta`, and the modifier elements (`implicitRules`,
 * `modifierExtension`): dropping a modifier would change what the rest means, and a server is not
 * obliged to return only what was asked for.
 */
import { tryGetDataType } from '@medplum/core';
import type { Coding, Resource } from '@medplum/fhirtypes';
import { badRequest } from '../errors.js';

export const SUBSETTED: Readonly<Coding> = Object.freeze({
  system: 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue',
  code: 'SUBSETTED',
  display: 'subsetted',
});

export type Subsetting =
  | { kind: 'summary'; mode: 'true' | 'text' | 'data' }
  | { kind: 'elements'; names: string[] };

/** Elements every subset keeps (see the module comment). */
const ALWAYS = new Set(['resourceType', 'id', 'meta', 'implicitRules', 'modifierExtension']);
const ELEMENT_NAME = /^[a-z][A-Za-z0-9]*$/;

/**
 * Reads `_summary` and `_elements` from a query. Throws 400 for a malformed or unknown value, for
 * `_summary=count` and for both parameters at once; under `lenient` (Prefer: handling=lenient)
 * what cannot be honoured is left out instead. Undefined when the whole resource is wanted.
 */
export function parseSubsetting(
  resourceType: string,
  query: Record<string, string | string[] | undefined>,
  options: { lenient: boolean; including: boolean },
): Subsetting | undefined {
  const refuse = (details: string, expression: string): undefined => {
    if (options.lenient) return undefined;
    throw badRequest(details, expression);
  };
  let summary: Subsetting | undefined;
  const summaryValues = [query._summary ?? []].flat();
  if (summaryValues.length > 1) refuse('_summary may be given once', '_summary');
  else if (summaryValues.length === 1) {
    const mode = summaryValues[0]!;
    if (mode === 'count') refuse('_summary=count is not supported: this server never answers counts over data filtered for the requester', '_summary');
    else if (mode === 'text' && options.including) refuse('_summary=text cannot be combined with _include or _revinclude', '_summary');
    else if (mode === 'true' || mode === 'text' || mode === 'data') summary = { kind: 'summary', mode };
    else if (mode !== 'false') refuse(`_summary must be true, text, data or false, not "${mode.slice(0, 32)}"`, '_summary');
  }
  const elementValues = [query._elements ?? []].flat();
  let elements: Subsetting | undefined;
  if (elementValues.length) {
    const names: string[] = [];
    for (const raw of elementValues.flatMap((v) => v.split(','))) {
      const name = raw.trim().startsWith(`${resourceType}.`) ? raw.trim().slice(resourceType.length + 1) : raw.trim();
      if (!ELEMENT_NAME.test(name) || baseElementOf(resourceType, name) === undefined) {
        refuse(`_elements: "${raw.slice(0, 64)}" is not a top-level element of ${resourceType}`, '_elements');
        continue;
      }
      names.push(name);
    }
    if (names.length) elements = { kind: 'elements', names };
  }
  if (summary && elements) {
    return refuse('_summary and _elements cannot be used together', '_elements') ?? summary;
  }
  return summary ?? elements;
}

/**
 * The subset of `resource` that `subsetting` asks for: a new object (the input, which may be a
 * frozen cached version, is never changed), tagged SUBSETTED when anything was left out. `include`:
 * the resource is an included one, which `_elements` does not narrow.
 */
export function subsetResource<T extends Resource>(resource: T, subsetting: Subsetting, include = false): T {
  if (include && subsetting.kind === 'elements') return resource;
  let byType = keepers.get(subsetting);
  if (!byType) keepers.set(subsetting, (byType = new Map()));
  let keep = byType.get(resource.resourceType);
  if (!keep) byType.set(resource.resourceType, (keep = keeperFor(resource.resourceType, subsetting)));
  const out: Record<string, unknown> = {};
  let dropped = false;
  for (const [key, value] of Object.entries(resource)) {
    if (keep(key)) out[key] = value;
    else dropped = true;
  }
  if (!dropped) return resource;
  const tags = resource.meta?.tag ?? [];
  out.meta = { ...resource.meta, tag: tags.some((t) => t.system === SUBSETTED.system && t.code === SUBSETTED.code) ? tags : [...tags, { ...SUBSETTED }] };
  return out as T;
}

/** The key test of each subsetting (one per request) by resource type: worked out once, not per entry. */
const keepers = new WeakMap<Subsetting, Map<string, (key: string) => boolean>>();

/** Whether a top-level key (an element, its choice form such as `valueQuantity`, or its `_` sibling) stays. */
function keeperFor(resourceType: string, subsetting: Subsetting): (key: string) => boolean {
  const schema = tryGetDataType(resourceType);
  const mandatory = schema?.mandatoryProperties ?? new Set<string>();
  let wanted: (base: string) => boolean;
  if (subsetting.kind === 'elements') {
    const names = new Set(subsetting.names.map((n) => baseElementOf(resourceType, n) ?? n));
    wanted = (base) => names.has(base) || mandatory.has(base);
  } else if (subsetting.mode === 'data') {
    wanted = (base) => base !== 'text';
  } else if (subsetting.mode === 'text') {
    wanted = (base) => base === 'text' || mandatory.has(base);
  } else {
    const summary = schema?.summaryProperties ?? new Set<string>();
    wanted = (base) => summary.has(base);
  }
  return (key) => {
    const name = key.startsWith('_') ? key.slice(1) : key;
    if (ALWAYS.has(name)) return true;
    const base = baseElementOf(resourceType, name);
    return base !== undefined && wanted(base);
  };
}

/**
 * The base element a top-level name stands for: itself, or for a choice element its `[x]` stem
 * (`valueQuantity` and `value` → `value`). Undefined when the type has no such element.
 */
function baseElementOf(resourceType: string, name: string): string | undefined {
  let names = baseNames.get(resourceType);
  if (!names) baseNames.set(resourceType, (names = new Map()));
  let base = names.get(name);
  if (base === undefined) {
    base = findBaseElement(resourceType, name);
    // only names that are elements are kept: a query's made-up names must not grow the map
    if (base !== undefined) names.set(name, base);
  }
  return base;
}

/** resource type → top-level element name (a choice element's typed form too) → its base element. */
const baseNames = new Map<string, Map<string, string>>();

function findBaseElement(resourceType: string, name: string): string | undefined {
  const elements = tryGetDataType(resourceType)?.elements;
  if (!elements) return undefined;
  if (Object.hasOwn(elements, name) || Object.hasOwn(elements, `${name}[x]`)) return name; // hasOwn: not `constructor`
  for (const [key, element] of Object.entries(elements)) {
    if (!key.endsWith('[x]')) continue;
    const stem = key.slice(0, -3);
    if (name.startsWith(stem) && element.type.some((t) => name === stem + t.code.charAt(0).toUpperCase() + t.code.slice(1))) return stem;
  }
  return undefined;
}
