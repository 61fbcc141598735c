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
 * `isResource` and `removeDuplicates`. Any other atom (functions such as `where(resolve() is
 * Patient)`, `exists()`, comparisons, indexers) is left to medplum's evaluator: the whole expression
 * then goes through it. test/unit/fhir/member-paths.test.ts compares both on every parameter of
 * every type the embedded repository indexes.
 */
import {
  AsAtom, DotAtom, evalFhirPathTyped, FhirPathAtom, getTypedPropertyValue, isResource, removeDuplicates, SymbolAtom, UnionAtom,
} from '@medplum/core';
import type { Atom, TypedValue } from '@medplum/core';

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
  return undefined;
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
        if (item.value !== undefined) out.push(item);
        continue;
      }
      const found = getTypedPropertyValue(item, name);
      if (Array.isArray(found)) {
        for (const v of found) if (v?.value !== undefined) out.push(v);
      } else if (found?.value !== undefined) {
        out.push(found);
      }
    }
    return out;
  };
}
