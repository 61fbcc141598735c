/**
 * Fast validation of converted resources. Full profile validation (@medplum/core) costs about a
 * millisecond per resource, far too slow for 90 days of 5-minute readings; but the converters build
 * every reading from one template, so resources of the same *shape* (same keys, same codes, systems,
 * units, profiles, statuses) pass or fail together. This wrapper runs the full check once per shape
 * and, for later resources of a shape that passed, checks only what varies: date-times against the
 * FHIR dateTime grammar, numbers finite, strings non-empty. A shape that fails is never cached, so
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
    const problems: string[] = [];
    const shape = signature(resource, '', problems);
    if (problems.length === 0 && passed.has(shape)) return [];
    full++;
    const issues = check(resource);
    if (problems.length === 0 && !issues.some((i) => i.severity === 'error' || i.severity === 'fatal') && passed.size < maxShapes) passed.add(shape);
    if (problems.length && !issues.some((i) => i.severity === 'error')) {
      issues.push(...problems.map((p): OperationOutcomeIssue => ({ severity: 'error', code: 'value', diagnostics: `invalid value at ${p}`, expression: [p] })));
    }
    return issues;
  };
  return Object.assign(wrapped, { fullChecks: () => full });
}

function signature(value: unknown, path: string, problems: string[], key = ''): string {
  if (Array.isArray(value)) return `[${value.map((v, i) => signature(v, `${path}[${i}]`, problems, key)).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    let out = '{';
    for (const [k, v] of Object.entries(value)) out += `${k}:${signature(v, path ? `${path}.${k}` : k, problems, k)};`;
    return `${out}}`;
  }
  if (typeof value === 'string') {
    if (SHAPE_KEYS.has(key)) return JSON.stringify(value);
    if (value.trim() === '') problems.push(path);
    if (DATE_LIKE.test(value)) {
      if (!FHIR_DATETIME.test(value)) problems.push(path);
      return 'D';
    }
    return 'S';
  }
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) problems.push(path);
    return Number.isInteger(value) ? 'I' : 'N';
  }
  if (typeof value === 'boolean') return 'B';
  problems.push(path);
  return '?';
}
