/**
 * Search parameter expressions made of member paths (`Observation.subject`, `Observation.component.code`,
 * `(Observation.value as Quantity) | (Observation.value as SampledData)`), evaluated as plain
 * functions over @medplum/core's own property access.
 *
 * @medplum/core's FHIRPath evaluator costs ~1.5 µs per call on such a path, against ~0.3 µs for the
 * property reads it is made of (a new context per input, a `$this` variable looked up on every
 * symbol, `flatMap`/`filter` copies). Every write evaluates each indexed parameter of its type (16
 * for an Observation) and every search candidate the filtered ones, so the evaluator was a quarter
 * of a CGM reading's write. The functions here do what medplum's atoms do, step for step
 * (`packages/core/src/fhirpath/atoms.ts`: FhirPathAtom, SymbolAtom, DotAtom, UnionAtom, AsAtom;
 * `ofType` in functions.ts; `evalFhirPathTyped` in parse.ts), with the same `getTypedPropertyValue`,
 * `isResource` and `removeDuplicates`; so does `where(resolve() is Patient)`, the filter of most
 * `patient` parameters (`resolve`, `where`, IsAtom and `fhirPathIs` there), on references whose
 * target type their text names. Any other atom (other functions such as `exists()`, comparisons,
 * indexers) is left to medplum's evaluator: the whole expression then goes through it.
 * test/unit/fhir/member-paths.test.ts compares both on every parameter of every type the embedded
 * repository indexes.
 */
import {
  AsAtom, DotAtom, evalFhirPathTyped, FhirPathAtom, FunctionAtom, getElementDefinitionFromElements, getTypedPropertyValue, isEmpty,
  IsAtom, isResource, removeDuplicates, SymbolAtom, toJsBoolean, tryGetDataType, UnionAtom,
} from '@medplum/core';
import type { Atom, InternalSchemaElement, InternalTypeSchema, TypedValue } from '@medplum/core';

/** An expression's values over an input collection, as `evalFhirPathTyped(atom, input)` gives them. */
export type PathEvaluator = (input: TypedValue[]) => TypedValue[];

/** Whether compilePath makes a plain function of the expression (else it is medplum's evaluator). */
export function isMemberPath(atom: FhirPathAtom): boolean {
  return compileAtom(atom.child) !== undefined;
}

/** A plain function for an expression of member paths, or medplum's evaluator for anything else. */
export function compilePath(atom: FhirPathAtom): PathEvaluator {
  const child = compileAtom(atom.child);
  if (!child) return (input) => evalFhirPathTyped(atom, input);
  return (input) => {
    // FhirPathAtom.eval: the child on each input item alone, flattened; evalFhirPathTyped then
    // copies each value out with valueOf()
    const out: TypedValue[] = [];
    for (const item of input) {
      for (const v of child([item])) out.push({ type: v.type, value: v.value?.valueOf() });
    }
    return out;
  };
}

type Step = (input: TypedValue[]) => TypedValue[];

function compileAtom(atom: Atom): Step | undefined {
  if (atom instanceof SymbolAtom) return symbol(atom.name);
  if (atom instanceof DotAtom) {
    const left = compileAtom(atom.left);
    const right = compileAtom(atom.right);
    return left && right ? (input) => right(left(input)) : undefined;
  }
  if (atom instanceof UnionAtom) {
    const left = compileAtom(atom.left);
    const right = compileAtom(atom.right);
    return left && right ? (input) => removeDuplicates([...left(input), ...right(input)]) : undefined;
  }
  if (atom instanceof AsAtom && atom.right instanceof SymbolAtom) {
    const left = compileAtom(atom.left);
    const type = atom.right.name;
    return left ? (input) => left(input).filter((e) => e.type === type) : undefined;
  }
  if (atom instanceof FunctionAtom && atom.name === 'where' && atom.args.length === 1) return whereResolvesTo(atom.args[0]!);
  return undefined;
}

/**
 * Types `fhirPathIs` does not decide by name (utils.ts): `is` with one of these, or with a `System.`
 * or `FHIR.` prefix, stays with medplum.
 */
const TYPES_NOT_BY_NAME = new Set(['Boolean', 'Decimal', 'Integer', 'Date', 'DateTime', 'Time', 'Period', 'Quantity']);

/**
 * `where(resolve() is T)` (functions.ts `where` and `resolve`, IsAtom): keeps the references whose
 * target is a T. medplum resolves a reference without reading anything: `T/id` and `T?query` are a
 * T; an absolute URL, a `#local` reference or no reference at all are nothing, so `is` is empty and
 * `where` drops them. Values of any other shape (a Reference with an inline `resource`, one known by
 * `type` and `identifier` alone, a `reference` that is not text) are decided by medplum's own atoms.
 */
function whereResolvesTo(criteria: Atom): Step | undefined {
  if (!(criteria instanceof IsAtom) || !(criteria.left instanceof FunctionAtom) || criteria.left.name !== 'resolve'
    || criteria.left.args.length !== 0 || !(criteria.right instanceof SymbolAtom)) return undefined;
  const type = criteria.right.name;
  if (TYPES_NOT_BY_NAME.has(type) || type.startsWith('System.') || type.startsWith('FHIR.')) return undefined;
  const byMedplum = (item: TypedValue): boolean => toJsBoolean(criteria.eval({ variables: {} }, [item]));
  return (input) => input.filter((item) => {
    const value = item.value as unknown;
    let reference: unknown;
    if (typeof value === 'string') reference = value;
    else if (value && typeof value === 'object' && !(value as { resource?: unknown }).resource) {
      reference = (value as { reference?: unknown }).reference;
      if (!reference && (value as { type?: unknown }).type && (value as { identifier?: unknown }).identifier) return byMedplum(item);
    } else {
      return byMedplum(item);
    }
    if (!reference) return false;
    if (typeof reference !== 'string') return byMedplum(item);
    const query = reference.indexOf('?');
    if (query >= 0) return reference.slice(0, query) === type;
    const slash = reference.indexOf('/');
    return slash >= 0 && reference.slice(0, slash) === type;
  });
}

/**
 * SymbolAtom.eval outside any variable: `$this` and `%…` names are variables (left to medplum); a
 * name equal to the input resource's type selects the resource; any other reads that property.
 */
function symbol(name: string): Step | undefined {
  if (name.startsWith('$') || name.startsWith('%')) return undefined;
  return (input) => {
    const out: TypedValue[] = [];
    for (const item of input) {
      const value = item.value;
      if (!value || typeof value !== 'object') continue;
      if (isResource(value, name as never)) {
        out.push(item);
        continue;
      }
      const found = propertyValue(item, name);
      if (Array.isArray(found)) {
        for (const v of found) if (v?.value !== undefined) out.push(v);
      } else if (found?.value !== undefined) {
        out.push(found);
      }
    }
    return out;
  };
}

/** A property name an element may take in JSON (`valueQuantity` for `value[x]`) and the type it then has. */
interface Candidate { name: string; extension: string; type: string }

/** Per type schema (so a re-indexed definition is never read stale): property → element and its candidates. */
const candidateCache = new WeakMap<InternalTypeSchema, Map<string, { element: InternalSchemaElement; candidates: Candidate[] } | null>>();

/**
 * `getTypedPropertyValue(input, name)` (packages/core/src/fhirpath/utils.ts) with the element's
 * candidate property names worked out once per type and property: medplum builds them (a string
 * replace and a capitalisation per type of the element) on every call, ~0.5 µs each. A value with a
 * primitive extension (`_status`), and any type without a schema, go to medplum's function itself.
 */
function propertyValue(input: TypedValue, name: string): TypedValue[] | TypedValue | undefined {
  const value = input.value;
  if (!value) return undefined;
  const schema = tryGetDataType(input.type);
  if (!schema) return getTypedPropertyValue(input, name);
  let byName = candidateCache.get(schema);
  if (!byName) candidateCache.set(schema, byName = new Map());
  let entry = byName.get(name);
  if (entry === undefined) {
    const element = getElementDefinitionFromElements(schema.elements, name);
    entry = element ? { element, candidates: candidatesOf(element) } : null;
    byName.set(name, entry);
  }
  if (!entry) return getTypedPropertyValue(input, name);
  let found: unknown;
  let type = 'undefined';
  for (const candidate of entry.candidates) {
    found = value[candidate.name];
    if (value[candidate.extension] !== undefined) return getTypedPropertyValue(input, name);
    if (found !== undefined) {
      type = candidate.type;
      break;
    }
  }
  if (isEmpty(found)) return undefined;
  if (type === 'Element' || type === 'BackboneElement') type = entry.element.type[0]!.code;
  return Array.isArray(found) ? found.map((v: unknown) => typed(v, type)) : typed(found, type);
}

function candidatesOf(element: InternalSchemaElement): Candidate[] {
  const last = element.path.substring(element.path.lastIndexOf('.') + 1);
  return (element.type ?? []).map((t) => {
    const name = last.replace('[x]', t.code ? t.code.charAt(0).toUpperCase() + t.code.substring(1) : '');
    return { name, extension: '_' + name, type: t.code };
  });
}

function typed(value: unknown, type: string): TypedValue {
  return { type: type === 'Resource' && isResource(value) ? value.resourceType : type, value };
}
