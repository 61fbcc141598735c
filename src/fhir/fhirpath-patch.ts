/**
 * FHIRPath Patch (https://hl7.org/fhir/R4/fhirpatch.html): a `Parameters` resource of `operation`
 * parameters, each with a `type` (add, insert, delete, replace, move) and a FHIRPath `path`,
 * applied in order to a copy of the resource. Paths are evaluated with the `fhirpath` package
 * (R4 model); each node it answers carries its parent, property name and index, which is how the
 * element is found in the copy and changed in place.
 *
 * - add: `path` names one element (the container), `name` the child to add, `value` its value; a
 *   repeating child gets the value appended, a single one must not exist yet;
 * - insert: `path` names a list (it ends with an element name), `index` where the value goes (0 to its length);
 * - delete: `path` names at most one element; none is not an error;
 * - replace: `path` names one element, `value` replaces it (a choice element may change type);
 * - move: `path` names a list, `source` and `destination` are indexes in it.
 *
 * A `value` is a `value[x]` of any data type, or `part`s naming the children of an element that
 * has no data type of its own (a backbone element such as Observation.component).
 * Malformed parameters are 400; an operation that cannot be applied (no such element, several
 * where one is needed, an index out of range) is 422; nothing is applied unless all apply.
 * Paths may call only the functions that select elements (PATH_FUNCTIONS): no `repeat`, `select`,
 * `descendants` or `aggregate`, which can make a short expression run for as long as it likes, no
 * `matches` (a regular expression can backtrack for ever), no `trace` (it would print resource
 * content) and no `resolve`/`memberOf`; that is checked on the parsed expression (400).
 */
import type { OperationOutcomeIssue, Parameters, ParametersParameter, Resource } from '@medplum/fhirtypes';
import fhirpath from 'fhirpath';
import r4 from 'fhirpath/fhir-context/r4/index.js';
import { badRequest } from '../errors.js';
import { isJsonObject } from './validation.js';

/** What a FHIRPath node answers about where it sits (fhirpath's ResourceNode with `resolveInternalTypes: false`). */
interface Node {
  data: unknown;
  path?: string;
  propName?: string;
  index?: number | null;
  fhirNodeDataType?: string;
  parentResNode?: Node | null;
}

type OperationType = 'add' | 'insert' | 'delete' | 'replace' | 'move';

interface PatchOperation {
  type: OperationType;
  path: string;
  name?: string;
  value?: unknown;
  /** The data type of `value` as its `value[x]` key names it (`Quantity`, `String`…), for choice elements. */
  valueType?: string;
  index?: number;
  source?: number;
  destination?: number;
}

const TYPES: readonly OperationType[] = ['add', 'insert', 'delete', 'replace', 'move'];
/** Element names as FHIR writes them; never an object prototype's member. */
const ELEMENT_NAME = /^[a-z][A-Za-z0-9]{0,63}$/;
const isElementName = (name: unknown): name is string =>
  typeof name === 'string' && ELEMENT_NAME.test(name) && !['constructor', 'prototype', 'toString', 'valueOf', 'hasOwnProperty'].includes(name);
const MAX_PATH = 1000;
/** Functions a patch path may call: enough to pick elements (`where(system = 'x')`, `first()`, `ofType(Quantity)`). */
const PATH_FUNCTIONS = new Set(['where', 'first', 'last', 'ofType', 'as', 'is', 'exists', 'empty', 'not', 'hasValue',
  'startsWith', 'endsWith', 'contains', 'lower', 'upper', 'length', 'count', 'toString']);
const MAX_OPERATIONS = 1000;

/** The body of a FHIRPath Patch: whether it is one, and its operations (400 when malformed). */
export function isFhirPathPatch(body: unknown): body is Parameters {
  return !!body && typeof body === 'object' && (body as { resourceType?: unknown }).resourceType === 'Parameters';
}

/** Reads the operations of a FHIRPath Patch document; throws 400 for one that is malformed. */
export function parseFhirPathPatch(body: Parameters): PatchOperation[] {
  const parameters: unknown = body.parameter ?? [];
  if (!Array.isArray(parameters)) throw badRequest('Parameters.parameter of a FHIRPath Patch document is a list of operations', 'Parameters.parameter');
  if (parameters.length === 0) throw badRequest('A FHIRPath Patch document has at least one operation parameter', 'Parameters.parameter');
  if (parameters.length > MAX_OPERATIONS) throw badRequest(`A FHIRPath Patch document has at most ${MAX_OPERATIONS} operations`, 'Parameters.parameter');
  return parameters.map((p: unknown, i) => parseOperation(p, i));
}

function parseOperation(p: unknown, i: number): PatchOperation {
  const where = `Parameters.parameter[${i}]`;
  if (!isJsonObject(p) || p.name !== 'operation' || !Array.isArray(p.part)) throw badRequest(`${where} is not an operation (a parameter named "operation" with parts)`, where);
  const parts = new Map<string, ParametersParameter>();
  for (const part of p.part as unknown[]) {
    if (!isJsonObject(part)) throw badRequest(`${where}: each part of an operation is an object`, where);
    if (typeof part.name !== 'string' || parts.has(part.name)) throw badRequest(`${where}: each part of an operation is named, once`, where);
    parts.set(part.name, part as unknown as ParametersParameter);
  }
  const type = parts.get('type')?.valueCode as OperationType | undefined;
  if (!type || !TYPES.includes(type)) throw badRequest(`${where}: type must be one of ${TYPES.join(', ')}`, `${where}.part`);
  const path = parts.get('path')?.valueString;
  if (typeof path !== 'string' || path.length === 0 || path.length > MAX_PATH) throw badRequest(`${where}: path must be a FHIRPath expression of at most ${MAX_PATH} characters`, `${where}.part`);
  const problem = pathProblem(path);
  if (problem) throw badRequest(`${where}: ${problem}`, `${where}.part`);
  const op: PatchOperation = { type, path };
  const needs: string[] = ({ add: ['name', 'value'], insert: ['index', 'value'], delete: [], replace: ['value'], move: ['source', 'destination'] } as Record<OperationType, string[]>)[type];
  for (const [name] of parts) {
    if (name !== 'type' && name !== 'path' && !needs.includes(name)) throw badRequest(`${where}: a ${type} operation takes no "${name.slice(0, 32)}" part`, `${where}.part`);
  }
  for (const name of needs) if (!parts.has(name)) throw badRequest(`${where}: a ${type} operation needs a "${name}" part`, `${where}.part`);
  if (needs.includes('name')) {
    const name = parts.get('name')!.valueString;
    if (!isElementName(name)) throw badRequest(`${where}: name must be an element name`, `${where}.part`);
    op.name = name;
  }
  for (const key of ['index', 'source', 'destination'] as const) {
    if (!needs.includes(key)) continue;
    const n = parts.get(key)!.valueInteger;
    if (!Number.isInteger(n) || n! < 0) throw badRequest(`${where}: ${key} must be a non-negative integer`, `${where}.part`);
    op[key] = n;
  }
  if (needs.includes('value')) {
    const { value, type: valueType } = valueOf(parts.get('value')!, `${where}.part`);
    op.value = value;
    if (valueType) op.valueType = valueType;
  }
  return op;
}

/** Why a path cannot be used: not FHIRPath, or calling a function outside PATH_FUNCTIONS. */
function pathProblem(path: string): string | undefined {
  let ast: unknown;
  try {
    ast = fhirpath.parse(path);
  } catch {
    return 'path is not a FHIRPath expression';
  }
  const stack: unknown[] = [ast];
  while (stack.length) {
    const node = stack.pop() as { type?: string; text?: string; children?: unknown[] } | null;
    if (!node || typeof node !== 'object') continue;
    if (node.type === 'Functn' && !PATH_FUNCTIONS.has(String(node.text))) {
      return `path may call only ${[...PATH_FUNCTIONS].join(', ')}`;
    }
    if (Array.isArray(node.children)) stack.push(...node.children);
  }
  return undefined;
}

/** The value a part carries: its one `value[x]`, or an element built from its own parts. */
function valueOf(part: ParametersParameter, where: string): { value: unknown; type?: string } {
  const keys = Object.keys(part).filter((k) => k.startsWith('value'));
  if (keys.length === 1 && !part.part) {
    const key = keys[0]!;
    return { value: structuredClone((part as unknown as Record<string, unknown>)[key]), type: key.slice('value'.length) };
  }
  if (keys.length === 0 && Array.isArray(part.part) && part.part.length > 0) {
    const element: Record<string, unknown> = {};
    for (const child of part.part as unknown[] as ParametersParameter[]) {
      if (!isJsonObject(child) || !isElementName(child.name)) throw badRequest(`${where}: the parts of a value are named by element names`, where);
      const { value } = valueOf(child, where);
      const existing = Object.hasOwn(element, child.name) ? element[child.name] : undefined;
      element[child.name] = existing === undefined ? value : Array.isArray(existing) ? [...existing, value] : [existing, value];
    }
    return { value: element };
  }
  throw badRequest(`${where}: a value is one value[x] or a list of parts`, where);
}

/**
 * Applies the operations in order to `resource` (changed in place: pass a copy). Answers the
 * issues of operations that could not be applied (422 for the caller); when there are any, the
 * copy is in an unspecified state and must be thrown away.
 */
export function applyFhirPathPatch(resource: Resource, operations: readonly PatchOperation[]): OperationOutcomeIssue[] {
  for (let i = 0; i < operations.length; i++) {
    const op = operations[i]!;
    const problem = applyOne(resource, op);
    if (problem) {
      return [{ severity: 'error', code: 'processing', diagnostics: `Patch operation ${i} (${op.type} ${op.path.slice(0, 200)}): ${problem}`, expression: [`Parameters.parameter[${i}]`] }];
    }
  }
  return [];
}

/** What went wrong, or undefined when the operation applied. */
function applyOne(resource: Resource, op: PatchOperation): string | undefined {
  switch (op.type) {
    case 'add': {
      const found = nodes(resource, op.path);
      if (typeof found === 'string') return found;
      if (found.length !== 1) return found.length ? 'the path names more than one element' : 'the path names no element';
      const container = found[0]!;
      if (!isRecord(container.data)) return 'the path names a value, not an element that has children';
      const key = keyFor(container, op.name!, op.valueType);
      const existing = Object.hasOwn(container.data, key) ? container.data[key] : undefined;
      if (Array.isArray(existing)) existing.push(op.value);
      else if (existing !== undefined) return `the element already has a ${key}`;
      else container.data[key] = repeating(container, op.name!) ? [op.value] : op.value;
      return undefined;
    }
    case 'insert':
    case 'move': {
      const list = listAt(resource, op.path);
      if (typeof list === 'string') return list;
      if (op.type === 'insert') {
        if (op.index! > list.length) return `index ${op.index} is past the end of the list (${list.length})`;
        list.splice(op.index!, 0, op.value);
        return undefined;
      }
      if (op.source! >= list.length || op.destination! >= list.length) return `source and destination must be below the length of the list (${list.length})`;
      const [moved] = list.splice(op.source!, 1);
      list.splice(op.destination!, 0, moved);
      return undefined;
    }
    case 'delete':
    case 'replace': {
      const found = nodes(resource, op.path);
      if (typeof found === 'string') return found;
      if (found.length === 0) return op.type === 'delete' ? undefined : 'the path names no element';
      if (found.length > 1) return 'the path names more than one element';
      const at = locate(found[0]!);
      if (!at) return 'the path does not name an element of the resource';
      const { parent, key, index } = at;
      if (op.type === 'delete') {
        if (index === undefined) {
          delete parent[key];
          delete parent[`_${key}`];
        } else {
          (parent[key] as unknown[]).splice(index, 1);
          const extensions = parent[`_${key}`];
          if (Array.isArray(extensions)) extensions.splice(index, 1);
          if ((parent[key] as unknown[]).length === 0) {
            delete parent[key];
            delete parent[`_${key}`];
          }
        }
        return undefined;
      }
      if (index !== undefined) {
        (parent[key] as unknown[])[index] = op.value;
        return undefined;
      }
      const stem = found[0]!.propName!;
      if (key !== stem && op.valueType && key !== stem + op.valueType) {
        // a choice element taking another type: valueQuantity → valueString
        delete parent[key];
        delete parent[`_${key}`];
        parent[stem + op.valueType] = op.value;
      } else {
        parent[key] = op.value;
      }
      return undefined;
    }
  }
}

/** The nodes a path answers on the resource, or why it cannot be evaluated. */
function nodes(resource: Resource, path: string): Node[] | string {
  try {
    const result = fhirpath.evaluate(resource, path, {}, r4, { resolveInternalTypes: false, traceFn: () => undefined });
    if (!Array.isArray(result)) return 'the path did not evaluate to elements';
    return result as Node[];
  } catch {
    // (the library's message may quote the expression or content)
    return 'the path is not a FHIRPath expression this server can evaluate';
  }
}

/** The list a path ending in an element name names (`Patient.identifier`), created empty when absent. */
function listAt(resource: Resource, path: string): unknown[] | string {
  const match = /^(.*)\.([a-z][A-Za-z0-9]*)$/.exec(path);
  if (!match) return 'the path of an insert or move ends with the name of a list element';
  const found = nodes(resource, match[1]!);
  if (typeof found === 'string') return found;
  if (found.length !== 1 || !isRecord(found[0]!.data)) return 'the path does not name one list';
  const container = found[0]!;
  const data = container.data as Record<string, unknown>;
  const name = match[2]!;
  if (!repeating(container, name)) return `${name} is not a list`;
  const list = Object.hasOwn(data, name) ? data[name] : undefined;
  if (list === undefined) return (data[name] = []) as unknown[];
  return Array.isArray(list) ? list : `${name} is not a list`;
}

/** The object, key and list index holding a node's value in the resource. */
function locate(node: Node): { parent: Record<string, unknown>; key: string; index?: number } | undefined {
  const parent = node.parentResNode?.data;
  if (!isRecord(parent) || !node.propName) return undefined;
  const key = parent[node.propName] !== undefined ? node.propName : choiceKey(parent, node.propName);
  if (!key) return undefined;
  const held = parent[key];
  if (Array.isArray(held)) {
    if (typeof node.index !== 'number' || node.index >= held.length) return undefined;
    return { parent, key, index: node.index };
  }
  return { parent, key };
}

/** `value` → the `value[x]` key the element is stored under (`valueQuantity`). */
function choiceKey(parent: Record<string, unknown>, stem: string): string | undefined {
  return Object.keys(parent).find((k) => k.length > stem.length && k.startsWith(stem) && /[A-Z]/.test(k[stem.length]!));
}

/** The key a new child is stored under: the name, or for a choice element its typed form. */
function keyFor(container: Node, name: string, valueType: string | undefined): string {
  const paths = [`${container.path}.${name}`, `${container.fhirNodeDataType}.${name}`];
  const choice = paths.some((p) => (r4.choiceTypePaths as Record<string, string[]>)[p]);
  return choice && valueType ? name + valueType : name;
}

function repeating(container: Node, name: string): boolean {
  const table = r4.path2Repeating as Record<string, boolean>;
  return !!(table[`${container.path}.${name}`] || table[`${container.fhirNodeDataType}.${name}`]);
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return !!v && typeof v === 'object' && !Array.isArray(v);
}
