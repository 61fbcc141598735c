/**
 * Fast validation of converted resources. Full profile validation (@medplum/core) costs about a
 * millisecond per resource, far too slow for 90 days of 5-minute readings; but the converters build
 * every reading from one template, so resources of the same *shape* (same keys, same codes, systems,
 * units, profiles, statuses) pass or fail together. This wrapper runs the full check once per shape
 * and, for later resources of a shape that passed, checks only what varies: date-times in date
 * elements against the FHIR dateTime grammar, numbers finite, strings non-empty. A date-like text
 * anywhere else that is not a dateTime (a device called `2019-G6 receiver`) is not judged here: the
 * full check runs for it, every time. A shape that fails is never cached, so
 * every failing resource gets the full check and its exact issues. Warnings are reported for the
 * first resource of a shape only.
 */
import type { OperationOutcomeIssue, Resource } from '@medplum/fhirtypes';

/** Keys whose string values are part of the shape (they decide patterns, slices and bindings). */
const SHAPE_KEYS = new Set(['resourceType', 'system', 'code', 'unit', 'profile', 'status', 'type', 'url', 'method', 'use', 'mode']);
const DATE_LIKE = /^\d{4}-/;
const FHIR_DATETIME = /^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,9})?)?)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)?)?)?$/;

export type ResourceCheck = (resource: Resource) => OperationOutcomeIssue[];

/** Wraps a full check (e.g. `ProfileValidator.check`) with a per-shape cache; see the file comment. */
export function shapeCachedCheck(check: ResourceCheck, maxShapes = 10_000): ResourceCheck & { fullChecks: () => number } {
  const passed = new Set<string>();
  let full = 0;
  const wrapped = (resource: Resource): OperationOutcomeIssue[] => {
    const walk: Walk = { problems: [], unsure: false, at: [] };
    const shape = signature(resource, walk);
    const { problems } = walk;
    if (problems.length === 0 && !walk.unsure && passed.has(shape)) return [];
    full++;
    const issues = check(resource);
    if (problems.length === 0 && !walk.unsure && !issues.some((i) => i.severity === 'error' || i.severity === 'fatal') && passed.size < maxShapes) passed.add(shape);
    if (problems.length && !issues.some((i) => i.severity === 'error')) {
      issues.push(...problems.map((p): OperationOutcomeIssue => ({ severity: 'error', code: 'value', diagnostics: `invalid value at ${p}`, expression: [p] })));
    }
    return issues;
  };
  return Object.assign(wrapped, { fullChecks: () => full });
}

/**
 * What a signature walk found besides the shape: values invalid wherever they stand (`problems`, by
 * path), and whether a value the walk cannot judge alone asks for the full check (`unsure`).
 */
interface Walk {
  problems: string[];
  unsure: boolean;
  /** The members and indexes from the resource down to the value being read; a path is written only for a problem. */
  at: (string | number)[];
}

/** Members that hold a FHIR date, dateTime or instant: a date-like value there must match the grammar. */
const DATE_KEY = /(?:Date|DateTime|Instant)$|^(?:start|end|issued|recorded|lastUpdated|authoredOn|date|event)$/;

function pathOf(at: readonly (string | number)[]): string {
  let path = '';
  for (const step of at) path += typeof step === 'number' ? `[${step}]` : path ? `.${step}` : step;
  return path;
}

function signature(value: unknown, walk: Walk, key = ''): string {
  if (Array.isArray(value)) {
    let out = '[';
    for (let i = 0; i < value.length; i++) {
      walk.at.push(i);
      out += `${i ? ',' : ''}${signature(value[i], walk, key)}`;
      walk.at.pop();
    }
    return `${out}]`;
  }
  if (value !== null && typeof value === 'object') {
    let out = '{';
    for (const k of Object.keys(value)) {
      walk.at.push(k);
      out += `${k}:${signature((value as Record<string, unknown>)[k], walk, k)};`;
      walk.at.pop();
    }
    return `${out}}`;
  }
  if (typeof value === 'string') {
    if (SHAPE_KEYS.has(key)) return JSON.stringify(value);
    if (value.trim() === '') walk.problems.push(pathOf(walk.at));
    if (DATE_LIKE.test(value)) {
      if (!FHIR_DATETIME.test(value)) {
        // in a date element it is wrong; elsewhere (a device called `2019-G6 receiver`) it may be
        // any text, and the full check decides
        if (DATE_KEY.test(key)) walk.problems.push(pathOf(walk.at));
        else walk.unsure = true;
      }
      return 'D';
    }
    return 'S';
  }
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) walk.problems.push(pathOf(walk.at));
    return Number.isInteger(value) ? 'I' : 'N';
  }
  if (typeof value === 'boolean') return 'B';
  walk.problems.push(pathOf(walk.at));
  return '?';
}
