/**
 * Validation of every write: base FHIR R4 (structure, cardinality, types, invariants as far as
 * @medplum/core checks them) plus each profile in `meta.profile` that profiles/ holds. Profiles
 * named in `meta.profile` but not held here are reported as a warning and otherwise ignored, as a
 * FHIR server that does not know a profile would.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { crawlTypedValue, isPrimitiveType, isResourceType, loadDataType, OperationOutcomeError, validateResource, type InternalSchemaElement } from '@medplum/core';
import type { Bundle, OperationOutcomeIssue, Resource, StructureDefinition } from '@medplum/fhirtypes';
import { GlucoGuardError, unprocessable } from '../errors.js';
import { loadFhirDefinitions, loadTypesProfiledIn } from './definitions.js';
import { requiredCodes } from './required-codes.js';
import { narrativeIssues } from './narrative.js';

export class ProfileValidator {
  private readonly profiles = new Map<string, StructureDefinition>();

  /** Loads every StructureDefinition JSON file found under `dir` (recursively). */
  constructor(dir: string) {
    loadFhirDefinitions();
    for (const file of listJson(dir)) {
      const json = JSON.parse(readFileSync(file, 'utf8')) as Resource;
      if (json.resourceType !== 'StructureDefinition') continue;
      const sd = relaxResolveSlices(json as StructureDefinition);
      if (!sd.url) continue;
      loadTypesProfiledIn(sd);
      // Extensions and data-type profiles must be known to the validator when a profile uses them.
      if (sd.kind !== 'resource' || sd.type === 'Extension') loadDataType(sd);
      this.profiles.set(sd.url, sd);
      if (sd.version) this.profiles.set(`${sd.url}|${sd.version}`, sd);
    }
  }

  /** Canonical URLs of the profiles held (without versions). */
  profileUrls(): string[] {
    return [...this.profiles.keys()].filter((k) => !k.includes('|'));
  }

  /** The profile with this canonical URL (optionally `|version`). */
  profile(url: string): StructureDefinition | undefined {
    return this.profiles.get(url);
  }

  /** Issues found (errors and warnings); empty when the resource is valid. Never throws for invalid input. */
  check(resource: Resource, extraProfiles: string[] = []): OperationOutcomeIssue[] {
    const shape = jsonShapeIssues(resource);
    if (shape.length) return shape;
    const issues: OperationOutcomeIssue[] = narrativeIssues(resource);
    issues.push(...runValidator(resource));
    const wanted = new Set([...(resource.meta?.profile ?? []), ...extraProfiles]);
    for (const url of wanted) {
      const sd = this.profiles.get(url);
      if (!sd) {
        issues.push({ severity: 'warning', code: 'not-supported', diagnostics: `Profile ${url} is not known to this server; not validated against it` });
        continue;
      }
      issues.push(...runValidator(resource, sd).map((i) => ({ ...i, diagnostics: `${i.diagnostics ?? ''} (profile ${sd.name ?? url})`.trim() })));
    }
    return issues;
  }

  /** Throws ERR_UNPROCESSABLE (422) listing every error issue with its expression path. */
  assertValid(resource: Resource, extraProfiles: string[] = []): void {
    const errors = this.check(resource, extraProfiles).filter((i) => i.severity === 'error' || i.severity === 'fatal');
    if (errors.length) throw unprocessable(errors);
  }
}

/**
 * JSON values of the wrong kind that @medplum/core's validator lets through (4.5): an object or a
 * list where a primitive belongs (`"system": {}` — it reads the object as the primitive's
 * extension part, which FHIR JSON keeps under `_system`), and a single value where a list belongs
 * (`"profile": {}`). Everything after validation (indexing, search, consent) may rely on each
 * value having the JSON kind of its FHIR type, so these are refused first, each with its path.
 * Likewise empty values, which FHIR JSON does not have (json.html: a string has content, a list
 * items, an object members; ele-1) and that validator lets through where it reads `""` as a
 * missing value, or does not look (`[]`, an empty `_given` part): emptyValueIssues.
 * Also what that validator does not check at all: a `code` outside the value set it is bound to
 * with strength required (`"status": "bogus"`), where the value set can be listed here
 * (src/fhir/required-codes.ts); issue code `code-invalid`, without repeating the code.
 */
export function jsonShapeIssues(resource: Resource): OperationOutcomeIssue[] {
  // The JSON kinds depend on the member names, the kinds and the resource types alone, and so do
  // the places of codes bound to a required value set and the empty values (the layout tells an
  // empty string, list or object from others): a resource laid out like one that passed has only
  // its codes checked again (the walk costs ~80 µs for a CGM reading).
  const layout = layoutOf(resource);
  const known = layout === undefined ? undefined : wellFormedLayouts.get(layout);
  if (known) return codeIssuesAt(resource, known);
  const issues: OperationOutcomeIssue[] = [];
  const sites: CodeSite[] = [];
  shapeIssues(resource.resourceType, resource, resource.resourceType, issues, sites);
  if (!issues.length && layout !== undefined && wellFormedLayouts.size < MAX_LAYOUTS) wellFormedLayouts.set(layout, sites);
  return issues.length ? issues : codeIssuesAt(resource, sites);
}

/**
 * A `code` element bound to a required value set this server can list (src/fhir/required-codes.ts),
 * or (`codes` undefined) a `date`, `dateTime` or `instant`: the members and indexes leading to it
 * from the resource, its path for an issue, its codes.
 */
interface CodeSite {
  steps: (string | number)[];
  at: string;
  valueSet?: string;
  codes?: ReadonlySet<string>;
  /** A Reference: the resource types it may name (null: any). */
  targets?: ReadonlySet<string> | null;
}

/**
 * Issues for the codes at `sites` of `resource` that are not in their value sets (the code itself
 * is not repeated), and for the dates there that name no day of the calendar.
 */
function codeIssuesAt(resource: Resource, sites: readonly CodeSite[]): OperationOutcomeIssue[] {
  const issues: OperationOutcomeIssue[] = [];
  for (const site of sites) {
    let value: unknown = resource;
    for (const step of site.steps) value = (value as Record<string | number, unknown> | undefined)?.[step];
    if (site.targets !== undefined) {
      const reference = isJsonObject(value) ? value.reference : undefined;
      const problem = typeof reference === 'string' ? referenceProblem(reference, site.targets) : undefined;
      if (problem) issues.push({ severity: 'error', code: 'value', diagnostics: `${site.at}.reference ${problem}`, expression: [`${site.at}.reference`] });
      continue;
    }
    if (typeof value !== 'string') continue;
    if (site.codes === undefined) {
      if (!isCalendarDate(value)) issues.push({ severity: 'error', code: 'value', diagnostics: `${site.at} is not a date of the calendar (datatypes.html#date: dates SHALL be valid dates)`, expression: [site.at] });
    } else if (!site.codes.has(value)) {
      issues.push({ severity: 'error', code: 'code-invalid', diagnostics: `The code of ${site.at} is not in the value set it is bound to (${site.valueSet})`, expression: [site.at] });
    }
  }
  return issues.slice(0, MAX_SHAPE_ISSUES);
}

const DATE_TYPES = new Set(['date', 'dateTime', 'instant']);

/**
 * What is wrong with a literal relative reference (`Type/id`, optionally `/_history/vid`), which
 * resolves on this server: a type that is no resource type, or one the element may not refer to
 * (Observation.subject to a Practitioner), or an id no resource can have. Such a reference would
 * be stored, indexed and judged by consent as written while naming nothing; a base R4 validator
 * refuses it. Other forms are left alone: contained (`#id`), absolute URLs, `urn:uuid:` entries and
 * conditional references (`Patient?identifier=…`) are resolved or checked where they are used.
 */
function referenceProblem(reference: string, targets: ReadonlySet<string> | null): string | undefined {
  if (reference.startsWith('#') || reference.includes(':') || reference.includes('?')) return undefined;
  const m = /^([^/]+)\/([^/]+)(?:\/_history\/[^/]+)?$/.exec(reference);
  if (!m) return 'must be Type/id (or an absolute URL, or #id for a contained resource)';
  const [, type, id] = m as unknown as [string, string, string];
  if (!isResourceType(type)) return `names "${type.slice(0, 64)}", which is not a FHIR resource type`;
  if (!/^[A-Za-z0-9\-.]{1,64}$/.test(id)) return 'has an id that is not a FHIR id (1–64 of A–Z, a–z, 0–9, "-" and ".")';
  if (targets && !targets.has(type)) return `may refer to ${[...targets].join(', ')}, not ${type}`;
  return undefined;
}

const referenceTargetSets = new Map<string, ReadonlySet<string> | null>();

/** The resource types an element's targetProfiles name (the base ones, `…/StructureDefinition/Patient`); null for any. */
function referenceTargets(profiles: readonly string[] | undefined): ReadonlySet<string> | null {
  const key = (profiles ?? []).join(' ');
  let targets = referenceTargetSets.get(key);
  if (targets !== undefined) return targets;
  const types = (profiles ?? []).map((url) => /^http:\/\/hl7\.org\/fhir\/StructureDefinition\/([A-Za-z]+)$/.exec(url.split('|')[0]!)?.[1]);
  // a profile of another publisher (a CGM IG device profile) names no type here: then any is taken
  targets = types.length === 0 || types.some((t) => t === undefined || t === 'Resource') ? null : new Set(types as string[]);
  referenceTargetSets.set(key, targets);
  return targets;
}

/**
 * False for a date whose day its month does not have (`2026-02-30`, `2025-02-29`, `2026-04-31`):
 * the FHIR regex lets any day up to 31 through, and JavaScript reads such a day as one in the next
 * month, so a reading dated 30 February would be indexed, searched and judged by consent as 2 March.
 * The rest of the syntax is the validator's.
 */
export function isCalendarDate(value: string): boolean {
  const m = /^(\d{4})-(\d{2})-(\d{2})/.exec(value);
  if (!m) return true;
  const [year, month, day] = [Number(m[1]), Number(m[2]), Number(m[3])];
  // day 0 of the next month is the last day of this one
  return month < 1 || month > 12 || day <= new Date(Date.UTC(year, month, 0)).getUTCDate();
}

/** The members and indexes of a crawler path below `root` (`Observation.component[0].code` below `Observation`). */
function stepsOf(path: string, root: string): (string | number)[] {
  const steps: (string | number)[] = [];
  for (const segment of path.slice(root.length).split('.')) {
    if (!segment) continue;
    const m = /^([^[]+)(?:\[(\d+)\])?$/.exec(segment);
    if (!m) return [];
    steps.push(m[1]!);
    if (m[2] !== undefined) steps.push(Number(m[2]));
  }
  return steps;
}

/** Layouts of resources found well-formed (jsonShapeIssues), with their code sites, up to MAX_LAYOUTS. */
const wellFormedLayouts = new Map<string, CodeSite[]>();
const MAX_LAYOUTS = 10_000;
const MAX_LAYOUT_LENGTH = 4096;

/**
 * A resource's layout: its member names, the JSON kind of each value (an empty string, and a
 * member left undefined, kinds of their own: empty values are found by the layout alone, so a
 * layout found well-formed has none) and every `resourceType` (which picks the schema of a
 * contained or entry resource), nothing else of its values; undefined when it would be longer than
 * MAX_LAYOUT_LENGTH (such resources are walked every time).
 */
function layoutOf(resource: Resource): string | undefined {
  let out = '';
  const visit = (value: unknown, key: string): boolean => {
    if (out.length > MAX_LAYOUT_LENGTH) return false;
    if (Array.isArray(value)) {
      out += '[';
      for (const item of value) if (!visit(item, '')) return false;
      out += ']';
    } else if (value === null) {
      out += 'z';
    } else if (typeof value === 'object') {
      out += '{';
      for (const [k, v] of Object.entries(value)) {
        out += `${JSON.stringify(k)}:`;
        if (!visit(v, k)) return false;
      }
      out += '}';
    } else if (key === 'resourceType') {
      out += JSON.stringify(value);
    } else {
      out += typeof value === 'string' ? (value === '' ? 'e' : 's') : typeof value === 'number' ? 'n' : typeof value === 'boolean' ? 'b' : value === undefined ? 'u' : '?';
    }
    return true;
  };
  return visit(resource, '') && out.length <= MAX_LAYOUT_LENGTH ? out : undefined;
}

/**
 * jsonShapeIssues of a batch or transaction Bundle's envelope: the Bundle's own elements and each
 * entry's (fullUrl, request…), its resource only as far as being an object. Each entry's resource
 * is checked when its own write is (ProfileValidator.check), so one entry of a type this server does
 * not know is answered for that entry, as a batch's entries are.
 */
export function envelopeShapeIssues(bundle: Bundle): OperationOutcomeIssue[] {
  const issues: OperationOutcomeIssue[] = [];
  // each part walked on its own, its codes checked at once (no layout cache for envelopes)
  const walk = (type: string, value: Record<string, unknown>, path: string): void => {
    const sites: CodeSite[] = [];
    shapeIssues(type, value, path, issues, sites);
    issues.push(...codeIssuesAt(value as unknown as Resource, sites));
  };
  walk('Bundle', { ...bundle, entry: undefined }, 'Bundle');
  const entries: unknown = bundle.entry;
  if (entries === undefined) return issues;
  if (!Array.isArray(entries)) return [...issues, shapeIssue('Bundle.entry', 'Invalid JSON type: expected a list for entry')];
  entries.forEach((entry: unknown, i) => {
    const at = `Bundle.entry[${i}]`;
    if (!isJsonObject(entry)) {
      issues.push(shapeIssue(at, 'Invalid JSON type: expected a BundleEntry object for entry'));
      return;
    }
    if (entry.resource !== undefined && !isJsonObject(entry.resource)) issues.push(shapeIssue(`${at}.resource`, 'Invalid JSON type: expected a resource object for resource'));
    walk('BundleEntry', { ...entry, resource: undefined }, at);
  });
  return issues.slice(0, MAX_SHAPE_ISSUES);
}

/** A JSON object (not null, not a list). */
export function isJsonObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function shapeIssue(path: string, text: string): OperationOutcomeIssue {
  return { severity: 'error', code: 'structure', diagnostics: text, expression: [path] };
}

/**
 * Adds to `issues` the values of the wrong JSON kind and the empty values in `value`, of FHIR type
 * `type`, found at `path`, and to `sites` the places of its codes bound to a required value set.
 */
function shapeIssues(type: string, value: unknown, path: string, issues: OperationOutcomeIssue[], sites: CodeSite[]): void {
  const issue = (at: string, text: string): void => {
    if (issues.length < MAX_SHAPE_ISSUES) issues.push(shapeIssue(at, text));
  };
  const before = issues.length;
  try {
    crawlTypedValue({ type, value }, {
      visitProperty(parent, key, _path, _values, schema) {
        const holder = parent.value as Record<string, unknown> | null | undefined;
        if (!holder || typeof holder !== 'object') return;
        // a choice element (`value[x]`) comes under the name of the type it holds (`valueString`)
        const named = schema.elements[key];
        const found = named ? { element: named, code: named.type.length === 1 ? named.type[0]!.code : undefined } : choiceElement(schema.elements, key);
        if (!found) return;
        const { element, code } = found;
        const raw = holder[key];
        if (raw === undefined) return;
        const where = `${parent.path}.${key}`;
        if (raw === null) {
          // JSON null stands only in lists (of primitives with extensions under `_name`)
          issue(where, `Invalid JSON type: ${key} is null`);
          return;
        }
        if (!!element.isArray !== Array.isArray(raw)) {
          issue(where, `Invalid JSON type: expected ${element.isArray ? 'a list' : 'a single value, not a list'} for ${key}`);
          return;
        }
        if (code === undefined) return;
        const kind = jsonKindOf(code);
        for (const item of Array.isArray(raw) ? raw : [raw]) {
          // null stands in a list of primitives whose extensions are in `_name`; anywhere else it is wrong
          if (kind === 'object' ? item === null || typeof item !== 'object' || Array.isArray(item) : item !== null && typeof item !== kind) {
            issue(where, `Invalid JSON type: expected ${kind === 'object' ? `a ${code} object` : `a ${code} value (JSON ${kind})`} for ${key}`);
            return;
          }
        }
        if (DATE_TYPES.has(code)) {
          const steps = [...stepsOf(parent.path, path), key];
          if (Array.isArray(raw)) raw.forEach((_, i) => sites.push({ steps: [...steps, i], at: `${where}[${i}]` }));
          else sites.push({ steps, at: where });
        }
        if (code === 'Reference') {
          const targets = referenceTargets(element.type.find((t) => t.code === 'Reference')?.targetProfile);
          const steps = [...stepsOf(parent.path, path), key];
          if (Array.isArray(raw)) raw.forEach((_, i) => sites.push({ steps: [...steps, i], at: `${where}[${i}]`, targets }));
          else sites.push({ steps, at: where, targets });
        }
        const valueSet = code === 'code' && element.binding?.strength === 'required' ? element.binding.valueSet : undefined;
        const codes = valueSet === undefined ? undefined : requiredCodes(valueSet);
        if (codes) {
          const steps = [...stepsOf(parent.path, path), key];
          const url = valueSet!.split('|')[0]!;
          if (Array.isArray(raw)) raw.forEach((_, i) => sites.push({ steps: [...steps, i], at: `${where}[${i}]`, valueSet: url, codes }));
          else sites.push({ steps, at: where, valueSet: url, codes });
        }
      },
    }, { skipMissingProperties: true, initialPath: path });
  } catch {
    // the crawler stops at some wrong kinds (null in a list of objects) before visiting them
    if (issues.length === before) issue(path, 'Invalid resource structure: a value does not have the JSON kind its FHIR type needs');
  }
  // Empty values, not again where a value is of the wrong kind (`"birthDate": {}`). The value
  // itself is not judged: a resource has its resourceType, an envelope's part is walked without its resource.
  if (!isJsonObject(value)) return;
  const wrongKind = new Set(issues.slice(before).flatMap((i) => i.expression ?? []));
  const empties: OperationOutcomeIssue[] = [];
  emptyMemberIssues(value, path, empties);
  for (const empty of empties) if (!wrongKind.has(empty.expression![0]!)) issue(empty.expression![0]!, empty.diagnostics!);
}

/**
 * Adds to `issues` each empty string, list and object in the members of `holder`, found at `path`,
 * contained resources and extensions included; returns how many members it has. The path is
 * FHIRPath's, which does not tell a primitive's value from its extension part: `_given[1]` is at
 * `given[1]`; the text names the JSON member. null is not empty here: in a list of primitives it
 * stands for a value that has only its extension part, and in a `_name` list for a value without
 * one (json.html#primitive); null anywhere else is an issue of shapeIssues or medplum's validator.
 * A member whose value is undefined (a resource built in code) is left out, as JSON.stringify does.
 */
function emptyMemberIssues(holder: Record<string, unknown>, path: string, issues: OperationOutcomeIssue[]): number {
  let members = 0;
  for (const key of Object.keys(holder)) {
    const value = holder[key];
    if (value === undefined) continue;
    members++;
    emptyValueIssues(value, `${path}.${key.startsWith('_') ? key.slice(1) : key}`, key, issues);
  }
  return members;
}

/** emptyMemberIssues of one value, named `name` in its JSON (`given[1]`). */
function emptyValueIssues(value: unknown, path: string, name: string, issues: OperationOutcomeIssue[]): void {
  if (issues.length >= MAX_SHAPE_ISSUES) return;
  const empty = (what: string): void => {
    issues.push(shapeIssue(path, `Invalid empty value: ${name} is an empty ${what} (leave the element out instead)`));
  };
  if (value === '') {
    empty('string');
  } else if (Array.isArray(value)) {
    if (value.length === 0) empty('list');
    for (let i = 0; i < value.length; i++) emptyValueIssues(value[i], `${path}[${i}]`, `${name}[${i}]`, issues);
  } else if (isJsonObject(value) && emptyMemberIssues(value, path, issues) === 0) {
    empty('object');
  }
}

const MAX_SHAPE_ISSUES = 50;

/**
 * Throws 400 listing each value of the wrong JSON kind (jsonShapeIssues) in a request's own
 * resource — a batch or transaction Bundle, an operation's Parameters — before anything reads it.
 */
export function assertWellFormed(resource: Resource): void {
  const issues = resource.resourceType === 'Bundle' ? envelopeShapeIssues(resource as Bundle) : jsonShapeIssues(resource);
  if (issues.length) throw new GlucoGuardError('ERR_INVALID', `The ${resource.resourceType} is malformed`, issues);
}

/** The choice element (`value[x]`) a typed name (`valueString`) stands for, with that type; undefined for any other name. */
function choiceElement(elements: Record<string, InternalSchemaElement>, key: string): { element: InternalSchemaElement; code: string } | undefined {
  for (const [name, element] of Object.entries(elements)) {
    if (!name.endsWith('[x]') || !key.startsWith(name.slice(0, -3))) continue;
    const suffix = key.slice(name.length - 3);
    const type = element.type.find((t) => `${t.code[0]!.toUpperCase()}${t.code.slice(1)}` === suffix);
    if (type) return { element, code: type.code };
  }
  return undefined;
}

/** Types of FHIR's own primitives in the R4 definitions (Element.id, Extension.url, Resource.id): `System.String` and the like. */
const SYSTEM_TYPES = 'http://hl7.org/fhirpath/System.';
const NUMBER_TYPES = new Set(['integer', 'decimal', 'positiveInt', 'unsignedInt', 'integer64']);

/** The JSON kind a value of FHIR type `code` has (json.html#primitive): booleans and numbers as such, other primitives as strings. */
function jsonKindOf(code: string): 'string' | 'number' | 'boolean' | 'object' {
  if (code.startsWith(SYSTEM_TYPES)) {
    const name = code.slice(SYSTEM_TYPES.length);
    return name === 'Boolean' ? 'boolean' : name === 'Integer' || name === 'Decimal' ? 'number' : 'string';
  }
  if (!isPrimitiveType(code)) return 'object';
  return code === 'boolean' ? 'boolean' : NUMBER_TYPES.has(code) ? 'number' : 'string';
}

/**
 * Slices discriminated by `resolve()` (e.g. cgm-summary's hasMember slices, told apart by the code of
 * the referenced Observation) cannot be checked on one resource in isolation: the validator would
 * count every such slice as empty. Their minimum cardinality is relaxed to 0 so valid resources
 * pass; everything else in the profile is still enforced.
 */
function relaxResolveSlices(sd: StructureDefinition): StructureDefinition {
  const elements = sd.snapshot?.element;
  if (!elements) return sd;
  const slicedPaths = elements
    .filter((e) => e.slicing?.discriminator?.some((d) => d.path?.includes('resolve()')))
    .map((e) => e.id ?? e.path);
  if (slicedPaths.length === 0) return sd;
  const copy = structuredClone(sd);
  for (const element of copy.snapshot!.element!) {
    if (element.sliceName && slicedPaths.some((p) => element.id === `${p}:${element.sliceName}`)) element.min = 0;
  }
  return copy;
}

function runValidator(resource: Resource, profile?: StructureDefinition): OperationOutcomeIssue[] {
  try {
    return validateResource(resource, profile ? { profile } : undefined).map(normalize);
  } catch (err) {
    if (err instanceof OperationOutcomeError) return (err.outcome.issue ?? []).map(normalize);
    throw err;
  }
}

/**
 * One of medplum's issues as this server answers it: the human text in `diagnostics`. medplum puts
 * that text in `details.text` (`Invalid additional property "x"`; for an invariant `Constraint
 * obs-6 not met: …`) and, for an invariant, its FHIRPath expression as JSON in `diagnostics`
 * (`{"fhirpath":"…"}`, with the error when evaluating it failed, which stays server-side); the
 * expression follows the text.
 */
function normalize(issue: OperationOutcomeIssue): OperationOutcomeIssue {
  const text = issue.details?.text;
  const fhirpath = fhirPathOf(issue.diagnostics);
  const diagnostics = fhirpath === undefined ? text ?? issue.diagnostics : `${text ?? 'Invariant not met'} (FHIRPath: ${fhirpath})`;
  return {
    severity: issue.severity,
    code: issue.code,
    ...(diagnostics ? { diagnostics } : {}),
    ...(issue.expression ? { expression: issue.expression } : {}),
  };
}

/** The FHIRPath expression of medplum's JSON `diagnostics` (`{"fhirpath":"…"}`); undefined for other text. */
function fhirPathOf(diagnostics: string | undefined): string | undefined {
  if (!diagnostics?.startsWith('{')) return undefined;
  try {
    const parsed: unknown = JSON.parse(diagnostics);
    return isJsonObject(parsed) && typeof parsed.fhirpath === 'string' ? parsed.fhirpath : undefined;
  } catch {
    return undefined;
  }
}

function listJson(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...listJson(full));
    else if (entry.name.endsWith('.json')) out.push(full);
  }
  return out;
}
