/**
 * Which search parameters the embedded repository answers, per resource type, and how each one is
 * turned into index entries at write time. Semantics (what matches) always come from the
 * SearchParameter definitions loaded into @medplum/core; the index only narrows candidates.
 */
import {
  convertToSearchableDates, convertToSearchableQuantities, convertToSearchableReferences, convertToSearchableTokens,
  getParsedExpressionForResourceType, getSearchParameter, getSearchParameters, parseFhirPath, toTypedValue,
} from '@medplum/core';
import type { FhirPathAtom, TypedValue } from '@medplum/core';
import type { Resource, SearchParameter } from '@medplum/fhirtypes';
import { loadFhirDefinitions } from '../../fhir/definitions.js';
import { canonicalForms, inBaseUnits, molarMassFor, UCUM } from '../../fhir/quantities.js';
import { foldText } from '../../fhir/folding.js';
import { compilePath, type PathEvaluator } from '../../fhir/member-paths.js';
import { stringValues } from './match.js';

interface TypeConfig {
  /** Supported search parameters besides `_id`, `_lastUpdated` and META_PARAMS. */
  params: string[];
  /**
   * The date parameter combined with `patient` in the patient+date index, so that
   * `patient=X&date=…` is one index range scan.
   */
  patientDate?: string;
  /**
   * The index generation since which the type has rows at all (1 when absent): a store written
   * before has none for any of its parameters, `meta` ones included.
   */
  since?: number;
}

const TYPES: Record<string, TypeConfig> = {
  Observation: {
    params: ['patient', 'subject', 'code', 'date', 'category', 'device', 'status', 'identifier', 'encounter', 'performer', 'based-on',
      'value-quantity', 'component-code', 'component-value-quantity',
      'code-value-quantity', 'component-code-value-quantity', 'combo-code-value-quantity', 'code-value-concept', 'component-code-value-concept'],
    patientDate: 'date',
  },
  Patient: {
    params: ['identifier', 'name', 'family', 'given', 'birthdate', 'gender', 'active', 'general-practitioner', 'organization',
      'address', 'address-city', 'address-postalcode', 'address-state', 'address-country', 'telecom', 'phone', 'email', 'deceased', 'language'],
  },
  Device: { params: ['identifier', 'patient', 'type', 'status', 'manufacturer', 'model', 'device-name', 'udi-di', 'organization'] },
  Consent: {
    params: ['identifier', 'patient', 'status', 'category', 'date', 'period', 'actor', 'scope', 'purpose', 'action', 'organization', 'consentor', 'source-reference'],
    patientDate: 'date',
  },
  AuditEvent: {
    params: ['patient', 'date', 'agent', 'entity', 'type', 'subtype', 'action', 'outcome', 'entity-type', 'source'],
    patientDate: 'date',
  },
  MedicationAdministration: {
    params: ['identifier', 'patient', 'subject', 'code', 'status', 'effective-time', 'medication', 'device', 'request', 'performer', 'context'],
    patientDate: 'effective-time',
  },
  DiagnosticReport: {
    params: ['identifier', 'patient', 'subject', 'code', 'date', 'status', 'category', 'result', 'issued', 'performer', 'based-on', 'encounter'],
    patientDate: 'date',
  },
  ServiceRequest: {
    params: ['identifier', 'patient', 'subject', 'code', 'status', 'authored', 'category', 'intent', 'requester', 'performer', 'occurrence', 'encounter', 'based-on'],
    patientDate: 'authored',
  },
  Practitioner: { params: ['identifier', 'name', 'family', 'given', 'active', 'gender', 'address', 'telecom', 'phone', 'email'] },
  Organization: { params: ['identifier', 'name', 'type', 'active', 'partof', 'address'] },
  // A patient's relatives, served since they became grantees. No `since`: the facade refused the
  // type before, so a store holds none and no rows are missing (INDEX_GENERATION stays); one
  // written in-process before (a test, a script) is rebuilt by `glucoguard reindex --all`.
  RelatedPerson: { params: ['identifier', 'patient', 'name', 'relationship', 'active', 'gender', 'birthdate', 'telecom', 'phone', 'email', 'address'] },
  Provenance: { params: ['target', 'patient', 'agent', 'recorded', 'entity'], patientDate: 'recorded' },
  // `member` is the Group's link to the Patient compartment: consent narrows a Group search by it
  // (src/consent/policy.ts), as it narrows other types by `patient`
  Group: { params: ['identifier', 'type', 'actual', 'code', 'member', 'managing-entity', 'characteristic'], since: 8 },
};

/**
 * Parameters every type answers besides `_id` and `_lastUpdated`: the tags, security labels and
 * profiles of `meta`.
 */
const META_PARAMS = ['_tag', '_security', '_profile'];

/**
 * Index generations. Writes put index rows for every indexable parameter; a store records the
 * generation its rows are complete for (store.ts, `index-generation`), and the planner looks up
 * only parameters of that generation or older: a store written before a parameter was indexed has
 * no rows for its older resources, and an index lookup would miss them. Until `glucoguard reindex`
 * (EmbeddedRepository.reindex) has rebuilt the rows, such parameters are matched on the decrypted
 * candidates of whatever else narrows the search. A store created now starts at the current one.
 *
 * 1: the parameters of the first stores; 2 (session 11): the `meta` parameters, `component-code`
 * and the contact parameters; 3 (session 11): quantities; 4 (session 12): string parameters (names,
 * addresses), as keyed hashes of the folded prefixes of each part (stringPrefixKey); 5 (session 13):
 * quantities also in base units, for unit conversion (quantityCanonicalKey); 6 (session 14): the
 * identifiers of logical references (`subject:identifier=…`, referenceIdentifierParam); 7 (session
 * 15): the folded three-character pieces of each string part, for `:contains` (stringGramKey); 8
 * (session 22): Group, every parameter of it (TypeConfig.since), `member` above all, which consent
 * narrows a grantee's Group search by.
 */
export const INDEX_GENERATION = 8;
/** The generation since which reference parameters have rows for `Reference.identifier`. */
export const REFERENCE_IDENTIFIER_SINCE = 6;
/** The generation since which string parameters have rows for the pieces `:contains` looks up. */
export const STRING_CONTAINS_SINCE = 7;
/** Length of the pieces (trigrams) of a string part indexed for `:contains`: shorter values are matched on the candidates. */
export const STRING_GRAM = 3;
/** The generation since which string parameters have rows. */
const STRING_SINCE = 4;
/** Longest prefix of a string part that gets a row: a longer search value is looked up by its first STRING_PREFIX_MAX characters. */
export const STRING_PREFIX_MAX = 12;
const SINCE = new Map<string, number>([
  ...[...META_PARAMS, 'component-code', 'telecom', 'phone', 'email', 'deceased', 'language'].map((c) => [c, 2] as const),
  ...['value-quantity', 'component-value-quantity'].map((c) => [c, 5] as const),
]);

/**
 * Parameter kinds; `token`, `reference`, `uri`, `date`, `quantity` and `string` parameters are
 * indexed (strings by the prefixes of each part, generation 4). A `composite` one (`code-value-quantity`)
 * has no rows of its own: its parts narrow through the plain parameters they imply (compositeParts).
 */
export type IndexKind = 'token' | 'reference' | 'date' | 'string' | 'quantity' | 'uri' | 'composite';

/** One part of a composite parameter, evaluated on each element its expression selects. */
export interface CompositePart {
  kind: 'token' | 'quantity';
  atom: FhirPathAtom;
  /** The atom's values on an element (src/fhir/member-paths.ts). */
  evaluate: PathEvaluator;
  /** The type its expression casts to (`value.as(Quantity)`): @medplum/core's `as()` does not filter, so values are kept by it. */
  type?: string;
  /**
   * The plain parameter of the type with the part's definition (`code`, `value-quantity`), when the
   * repository answers it: its values on the whole resource include the part's on any element, so
   * a filter on it is implied by the composite filter and can use its index.
   */
  implied?: string;
}

export interface ParamInfo {
  code: string;
  kind: IndexKind;
  definition: SearchParameter;
  atom: FhirPathAtom;
  /** The atom's values on a resource, as `evalFhirPathTyped(atom, …)` gives them (src/fhir/member-paths.ts). */
  evaluate: PathEvaluator;
  /** Target types of a reference parameter. */
  targets: string[];
  /** Whether writes put index rows for it. */
  indexable: boolean;
  /** The index generation since which its rows are written (the planner trusts them from then on). */
  since: number;
  /** The parts of a composite parameter, in the order of its `$`-separated values. */
  parts?: CompositePart[];
}

/** Index entries of one resource version. */
export interface IndexEntries {
  /** Hash inputs for the token/reference index (hashed by the key ring). */
  keys: string[];
  /** Date rows: hash input, start and end in epoch ms (inclusive). */
  dates: { key: string; start: number; end: number }[];
}

export const MIN_TIME = -8.64e15;
export const MAX_TIME = 8.64e15;

const infoCache = new Map<string, Map<string, ParamInfo>>();

/** `{ type: [param, …] }` for `supportedSearchParams()`. */
export function supportedParams(): Record<string, string[]> {
  return Object.fromEntries(Object.entries(TYPES).map(([type, c]) => [type, ['_id', '_lastUpdated', ...META_PARAMS, ...c.params]]));
}

/** The configured parameters of a type (plus `_id`, `_lastUpdated` and the `meta` ones), compiled once. */
export function paramsOf(resourceType: string): Map<string, ParamInfo> {
  let infos = infoCache.get(resourceType);
  if (!infos) {
    loadFhirDefinitions();
    infos = new Map();
    const config = TYPES[resourceType];
    // (`_id` and `_lastUpdated` are answered from the versions table, which every store has)
    const typeSince = (code: string): number => (code === '_id' || code === '_lastUpdated' ? 1 : config?.since ?? 1);
    for (const code of ['_id', '_lastUpdated', ...(config ? [...META_PARAMS, ...config.params] : [])]) {
      const definition = getSearchParameter(resourceType, code);
      if (!definition?.expression) throw new Error(`no SearchParameter ${resourceType}.${code}`);
      const kind = kindOf(definition);
      if (!kind) throw new Error(`unsupported parameter type ${definition.type} for ${resourceType}.${code}`);
      // (a composite's expression as written: the per-type parse drops the bare `Observation` of `Observation | Observation.component`)
      const atom = kind === 'composite' ? parseFhirPath(definition.expression) : getParsedExpressionForResourceType(resourceType, definition.expression);
      infos.set(code, {
        code, kind, definition, atom, evaluate: compilePath(atom),
        targets: definition.target ?? [],
        indexable: kind !== 'composite',
        since: Math.max(typeSince(code), kind === 'string' ? STRING_SINCE : SINCE.get(code) ?? 1),
        ...(kind === 'composite' ? { parts: compositeParts(resourceType, definition, config?.params ?? []) } : {}),
      });
    }
    infoCache.set(resourceType, infos);
  }
  return infos;
}

/**
 * The types with a parameter indexed since `generation` (params whose rows a store of that
 * generation lacks): what a rebuild from it must visit. From generation 7, Groups; from 3, the
 * types with string parameters; from 1, every type (the `meta` parameters).
 */
export function typesIndexedSince(generation: number): string[] {
  return Object.keys(TYPES).filter((type) => paramsIndexedSince(generation, type).length > 0);
}

/** The names of the parameters (of one type, or of any) indexed since `generation`, for the start-up warning. */
export function paramsIndexedSince(generation: number, type?: string): string[] {
  const names = (type ? [type] : Object.keys(TYPES)).flatMap((t) => [...paramsOf(t).values()].flatMap((p) => [
    ...(p.indexable && p.since > generation ? [p.code] : []),
    ...(p.kind === 'reference' && Math.max(p.since, REFERENCE_IDENTIFIER_SINCE) > generation ? [referenceIdentifierParam(p.code)] : []),
    ...(p.kind === 'string' && Math.max(p.since, STRING_CONTAINS_SINCE) > generation ? [`${p.code}:contains`] : []),
  ]));
  return [...new Set(names)];
}

export function patientDateParam(resourceType: string): string | undefined {
  return TYPES[resourceType]?.patientDate;
}

function compositeParts(resourceType: string, definition: SearchParameter, configured: string[]): CompositePart[] {
  const all = Object.values(getSearchParameters(resourceType) ?? {});
  return (definition.component ?? []).map((component) => {
    const plain = all.find((p) => p.url === component.definition);
    if ((plain?.type !== 'token' && plain?.type !== 'quantity') || !component.expression) {
      throw new Error(`unsupported composite part ${component.definition} of ${resourceType}.${definition.code}`);
    }
    const cast = /\.as\((\w+)\)$/.exec(component.expression)?.[1];
    const atom = parseFhirPath(component.expression);
    return {
      kind: plain.type, atom, evaluate: compilePath(atom),
      ...(cast ? { type: cast } : {}),
      ...(configured.includes(plain.code!) ? { implied: plain.code! } : {}),
    };
  });
}

function kindOf(p: SearchParameter): IndexKind | undefined {
  switch (p.type) {
    case 'token': return 'token';
    case 'reference': return 'reference';
    case 'date': return 'date';
    case 'string': return 'string';
    case 'quantity': return 'quantity';
    case 'uri': return 'uri';
    case 'composite': return 'composite';
    default: return undefined;
  }
}

/** Hash input of a token `code` irrespective of system. */
export const tokenKey = (type: string, param: string, code: string): string => `${type}\0${param}\0c\0${code.toLowerCase()}`;
/** Hash input of a token `system|code`. */
export const systemTokenKey = (type: string, param: string, system: string, code: string): string =>
  `${type}\0${param}\0s\0${system.toLowerCase()}|${code.toLowerCase()}`;
/** Hash input of a string parameter's folded prefix (foldText, at most STRING_PREFIX_MAX characters). */
export const stringPrefixKey = (type: string, param: string, prefix: string): string => `${type}\0${param}\0p\0${prefix}`;
/** Hash input of a STRING_GRAM-character piece of a string parameter's folded part, anywhere in it (`:contains`). */
export const stringGramKey = (type: string, param: string, gram: string): string => `${type}\0${param}\0g\0${gram}`;
/**
 * The `:identifier` side of a reference parameter (search.html#modifiers: the search is on
 * `Reference.identifier`, not on the resource referred to), keyed as a token parameter of its own.
 */
export const referenceIdentifierParam = (param: string): string => `${param}:identifier`;
/** Hash input of a reference value (`Type/id` or an absolute URL, exactly). */
export const referenceKey = (type: string, param: string, ref: string): string => `${type}\0${param}\0r\0${ref}`;
/** Date index key of a parameter. */
export const dateKey = (type: string, param: string): string => `${type}\0${param}\0d`;
/** Patient+date index key of a patient reference. */
export const patientDateKey = (type: string, patientRef: string): string => `${type}\0$patient-date\0${patientRef}`;

/**
 * Quantity index keys of a parameter (rows in `ix_date`, the value as start and end): any unit, a
 * `system|code` unit, or a code or unit as `number||code` names it.
 */
export const quantityKey = (type: string, param: string): string => `${type}\0${param}\0q`;
export const quantitySystemKey = (type: string, param: string, system: string, code: string): string => `${quantityKey(type, param)}\0s\0${system}|${code}`;
export const quantityUnitKey = (type: string, param: string, codeOrUnit: string): string => `${quantityKey(type, param)}\0u\0${codeOrUnit}`;
/** A UCUM value converted to base units (src/fhir/quantities.ts), keyed by its dimension (`g1.m-3;mol0`). */
export const quantityCanonicalKey = (type: string, param: string, dimension: string): string => `${quantityKey(type, param)}\0c\0${dimension}`;
/** Bounds of a quantity a comparator leaves open (`<5`: from the lowest number). */
export const QUANTITY_MIN = -Number.MAX_VALUE;
export const QUANTITY_MAX = Number.MAX_VALUE;

/** Patient+date index key for resources of that patient that have no date value. */
export const undatedKey = (key: string): string => `${key}\0undated`;

/** Evaluates every indexed parameter of the resource's type. */
export function extractIndexEntries(resource: Resource): IndexEntries {
  const type = resource.resourceType;
  const entries: IndexEntries = { keys: [], dates: [] };
  const config = TYPES[type];
  if (!config) return entries;
  const typed = [toTypedValue(resource)];
  let patientRefs: string[] = [];
  let patientDates: { start: number; end: number }[] = [];
  for (const info of paramsOf(type).values()) {
    if (info.code === '_id' || info.code === '_lastUpdated' || !info.indexable) continue;
    const values = info.evaluate(typed);
    if (values.length === 0) continue;
    if (info.kind === 'token') {
      for (const t of convertToSearchableTokens(values)) {
        if (t.value === undefined || t.value === '') continue;
        entries.keys.push(tokenKey(type, info.code, t.value));
        if (t.system) entries.keys.push(systemTokenKey(type, info.code, t.system, t.value));
      }
    } else if (info.kind === 'uri') {
      for (const v of values) if (typeof v.value === 'string' && v.value) entries.keys.push(tokenKey(type, info.code, v.value));
    } else if (info.kind === 'quantity') {
      for (const q of convertToSearchableQuantities(values)) {
        if (typeof q.value !== 'number' || !Number.isFinite(q.value)) continue;
        const start = q.comparator === '<' || q.comparator === '<=' ? QUANTITY_MIN : q.value;
        const end = q.comparator === '>' || q.comparator === '>=' ? QUANTITY_MAX : q.value;
        const forms = q.system === UCUM && q.code ? canonicalForms(q.code, molarMassFor(resource, info.code)) : [];
        const keys = [quantityKey(type, info.code)];
        // a UCUM value whose unit converts is looked up by its dimension (quantityPlan), never by system|code
        if (q.system && q.code && forms.length === 0) keys.push(quantitySystemKey(type, info.code, q.system, q.code));
        for (const u of new Set([q.code, q.unit])) if (u) keys.push(quantityUnitKey(type, info.code, u));
        for (const key of keys) entries.dates.push({ key, start, end });
        const scaled = (bound: number, factor: number): number => bound === QUANTITY_MIN || bound === QUANTITY_MAX ? bound : inBaseUnits(bound, factor);
        for (const { dimension, factor } of forms) {
          const low = scaled(start, factor);
          entries.dates.push({ key: quantityCanonicalKey(type, info.code, dimension), start: low, end: end === start ? low : scaled(end, factor) });
        }
      }
    } else if (info.kind === 'string') {
      // each part (family, given, a line of an address…) as the keyed hashes of its folded prefixes:
      // a starts-with search is then one key lookup, and the matcher still checks every candidate
      for (const part of stringValues(values.map((v) => v.value))) {
        const folded = foldText(part);
        for (let n = 1; n <= Math.min(folded.length, STRING_PREFIX_MAX); n++) entries.keys.push(stringPrefixKey(type, info.code, folded.slice(0, n)));
        // and every piece of STRING_GRAM characters: a `:contains` value holds its first piece
        for (let i = 0; i + STRING_GRAM <= folded.length; i++) entries.keys.push(stringGramKey(type, info.code, folded.slice(i, i + STRING_GRAM)));
      }
    } else if (info.kind === 'reference') {
      const refs = referencesOf(values);
      for (const ref of refs) entries.keys.push(referenceKey(type, info.code, ref));
      const identifiers = referenceIdentifiers(values);
      // (most references carry none: the `:identifier` key is built only for those that do)
      const identifierParam = identifiers.length ? referenceIdentifierParam(info.code) : '';
      for (const id of identifiers) {
        entries.keys.push(tokenKey(type, identifierParam, id.value));
        if (id.system) entries.keys.push(systemTokenKey(type, identifierParam, id.system, id.value));
      }
      if (info.code === 'patient') patientRefs = refs.filter((r) => r.startsWith('Patient/'));
    } else {
      const ranges = datesOf(values);
      const key = dateKey(type, info.code);
      for (const r of ranges) entries.dates.push({ key, ...r });
      if (info.code === config.patientDate) patientDates = ranges;
    }
  }
  for (const ref of patientRefs) {
    for (const r of patientDates) entries.dates.push({ key: patientDateKey(type, ref), ...r });
    // Without a date the resource still belongs in `patient=X&_sort=date` answers.
    if (patientDates.length === 0 && config.patientDate) entries.dates.push({ key: undatedKey(patientDateKey(type, ref)), start: 0, end: 0 });
  }
  entries.keys = [...new Set(entries.keys)];
  return entries;
}

/** Reference strings, relative ones without a `_history` suffix; contained and identifier-only ones dropped. */
export function referencesOf(values: TypedValue[]): string[] {
  const refs = new Set<string>();
  for (const ref of convertToSearchableReferences(values)) {
    if (!ref || ref.startsWith('#') || ref.startsWith('identifier:')) continue;
    const history = ref.indexOf('/_history/');
    refs.add(history > 0 && !ref.includes('://') ? ref.slice(0, history) : ref);
  }
  return [...refs];
}

/** The identifiers of reference values (`{ identifier: { system, value } }`), those with a value. */
export function referenceIdentifiers(values: TypedValue[]): { system?: string; value: string }[] {
  const out: { system?: string; value: string }[] = [];
  for (const v of values) {
    const id = (v.value as { identifier?: { system?: unknown; value?: unknown } } | undefined)?.identifier;
    if (!id || typeof id !== 'object' || typeof id.value !== 'string' || id.value === '') continue;
    out.push(typeof id.system === 'string' && id.system ? { system: id.system, value: id.value } : { value: id.value });
  }
  return out;
}

/** Date values as inclusive epoch-ms ranges (open ends as MIN_TIME / MAX_TIME). */
export function datesOf(values: TypedValue[]): { start: number; end: number }[] {
  const out: { start: number; end: number }[] = [];
  for (const period of convertToSearchableDates(values)) {
    const start = period.start ? Date.parse(period.start) : MIN_TIME;
    const end = period.end ? Date.parse(period.end) : MAX_TIME;
    if (Number.isNaN(start) || Number.isNaN(end)) continue;
    out.push({ start, end });
  }
  return out;
}
