/**
 * SMART scopes, v1 (`patient/Observation.read`) and v2 (`patient/Observation.rs?category=…`).
 * SMART App Launch 2.2 §3 "Scopes and Launch Context":
 * https://hl7.org/fhir/smart-app-launch/STU2.2/scopes-and-launch-context.html
 */
import type { Resource } from '@medplum/fhirtypes';
import type { AccessContext } from '../fhir/access.js';
import { patientIdsOf } from '../fhir/compartment.js';

export type Interaction = 'read' | 'search' | 'create' | 'update' | 'delete';
type Permission = 'c' | 'r' | 'u' | 'd' | 's';

/** A parsed resource scope such as `patient/Observation.rs?category=…`. */
export interface ResourceScope {
  readonly raw: string;
  readonly context: 'patient' | 'user' | 'system';
  /** A resource type or `*`. */
  readonly resourceType: string;
  readonly permissions: ReadonlySet<Permission>;
  /** Granular filter (`?category=a|b,c|d`): every pair must match. Empty when none. */
  readonly filter: ReadonlyArray<readonly [string, string]>;
  readonly version: 1 | 2;
}

/** Scopes that are not about resources and that this server understands. */
const CONTEXT_SCOPES = new Set([
  'openid', 'fhirUser', 'profile', 'launch', 'launch/patient', 'launch/encounter', 'offline_access', 'online_access',
]);

const INTERACTION_PERMISSION: Record<Interaction, Permission> = {
  read: 'r', search: 's', create: 'c', update: 'u', delete: 'd',
};

const RESOURCE_SCOPE = /^(patient|user|system)\/([A-Z][A-Za-z]*|\*)\.([a-z*]+)(\?.*)?$/;
const V2_PERMISSIONS = /^c?r?u?d?s?$/;

/** Parses one resource scope; undefined when `raw` is not a well-formed resource scope. */
export function parseResourceScope(raw: string): ResourceScope | undefined {
  // every resource leaving the proxy is checked against each scope of its token: parse each once
  if (parsedScopes.has(raw)) return parsedScopes.get(raw);
  const scope = parseScopeText(raw);
  if (parsedScopes.size >= PARSED_SCOPES_MAX) parsedScopes.clear();
  parsedScopes.set(raw, scope);
  return scope;
}

/** Scopes parsed so far (shared, read-only results); a small vocabulary, dropped whole when full. */
const parsedScopes = new Map<string, ResourceScope | undefined>();
const PARSED_SCOPES_MAX = 10_000;

function parseScopeText(raw: string): ResourceScope | undefined {
  const match = RESOURCE_SCOPE.exec(raw);
  if (!match) return undefined;
  const [, context, resourceType, perms, query] = match as unknown as [string, ResourceScope['context'], string, string, string | undefined];
  let permissions: Set<Permission>;
  let version: 1 | 2;
  if (perms === 'read') [permissions, version] = [new Set(['r', 's']), 1];
  else if (perms === 'write') [permissions, version] = [new Set(['c', 'u', 'd']), 1];
  else if (perms === '*') [permissions, version] = [new Set(['c', 'r', 'u', 'd', 's']), 1];
  else if (V2_PERMISSIONS.test(perms) && perms.length > 0) [permissions, version] = [new Set(perms.split('') as Permission[]), 2];
  else return undefined;
  const filter: Array<[string, string]> = [];
  if (query !== undefined) {
    if (version === 1) return undefined;
    for (const [name, value] of new URLSearchParams(query.slice(1))) {
      if (!/^[a-z][a-z-]*$/.test(name) || value === '') return undefined;
      filter.push([name, value]);
    }
    if (filter.length === 0) return undefined;
  }
  return { raw, context, resourceType, permissions, filter, version };
}

/** True when `raw` is a scope this server can grant. */
export function isKnownScope(raw: string): boolean {
  return CONTEXT_SCOPES.has(raw) || raw === 'system/launch' || parseResourceScope(raw) !== undefined;
}

/**
 * A scope in the form of a SMART resource scope, readable or not: a context, a type and
 * permissions (`patient/Observation.rs`), also misspelt (`Patient/*.read`, `usr/*.rs`).
 */
export function isResourceScopeShaped(raw: string): boolean {
  return /^[A-Za-z]+\/[A-Za-z*]+\.[A-Za-z*]/.test(raw);
}

/** Splits a space-separated scope string, dropping duplicates. */
export function splitScopes(scope: string | undefined): string[] {
  return [...new Set((scope ?? '').split(/\s+/).filter(Boolean))];
}

/**
 * True when `granted` (e.g. a client's registered scopes or an earlier grant) covers `requested`:
 * same context, same or wildcard type, a superset of permissions and no filter or the same filter.
 */
export function scopeCovers(granted: readonly string[], requested: string): boolean {
  if (granted.includes(requested)) return true;
  const want = parseResourceScope(requested);
  if (!want) return false;
  return granted.some((g) => {
    const have = parseResourceScope(g);
    if (!have || have.context !== want.context) return false;
    if (have.resourceType !== '*' && have.resourceType !== want.resourceType) return false;
    for (const p of want.permissions) if (!have.permissions.has(p)) return false;
    if (have.filter.length === 0) return true;
    return sameFilter(have.filter, want.filter);
  });
}

function sameFilter(a: ReadonlyArray<readonly [string, string]>, b: ReadonlyArray<readonly [string, string]>): boolean {
  const key = (f: ReadonlyArray<readonly [string, string]>): string => f.map(([n, v]) => `${n}=${v}`).sort().join('&');
  return key(a) === key(b);
}

/**
 * Whether the token's scopes allow `interaction` on `resourceType`.
 *
 * With `resource` given (a read result, each search entry, a write body) the answer is final: the
 * resource must match the scope's granular filter, and `patient/` scopes need the resource to
 * belong to the launch patient. Without `resource` (before a search or read is run) it answers
 * whether any scope could allow it; the caller must then check every returned resource.
 */
export function scopeAllows(access: AccessContext, interaction: Interaction, resourceType: string, resource?: object): boolean {
  if (access.kind === 'open') return true;
  const permission = INTERACTION_PERMISSION[interaction];
  for (const raw of access.scopes) {
    const scope = parseResourceScope(raw);
    if (!scope || !scope.permissions.has(permission)) continue;
    if (scope.resourceType !== '*' && scope.resourceType !== resourceType) continue;
    if (scope.context === 'patient' && !access.patient) continue;
    if (resource === undefined) return true;
    if (!matchesFilter(resource, scope.filter)) continue;
    if (scope.context === 'patient' && !belongsToPatient(resourceType, resource, access.patient!)) continue;
    return true;
  }
  return false;
}

/**
 * Whether some scope allows `interaction` on every resource of `resourceType` whatever its content:
 * no granular filter and not confined to a launch patient. Then scopeAllows is true for each such
 * resource without looking at it.
 */
export function scopeAllowsWholeType(access: AccessContext, interaction: Interaction, resourceType: string): boolean {
  if (access.kind === 'open') return true;
  const permission = INTERACTION_PERMISSION[interaction];
  return access.scopes.some((raw) => {
    const scope = parseResourceScope(raw);
    return !!scope && scope.permissions.has(permission) && (scope.resourceType === '*' || scope.resourceType === resourceType)
      && scope.context !== 'patient' && scope.filter.length === 0;
  });
}

/** The granular filters of the scopes that could allow `interaction` on `resourceType` ([] = unfiltered scope present). */
export function scopeFilters(access: AccessContext, interaction: Interaction, resourceType: string): ReadonlyArray<ReadonlyArray<readonly [string, string]>> {
  const permission = INTERACTION_PERMISSION[interaction];
  return access.scopes.map(parseResourceScope)
    .filter((s): s is ResourceScope => !!s && s.permissions.has(permission) && (s.resourceType === '*' || s.resourceType === resourceType))
    .map((s) => s.filter);
}

function belongsToPatient(resourceType: string, resource: object, patient: string): boolean {
  if (resourceType === 'Patient') return (resource as { id?: string }).id === patient;
  // The R4 Patient compartment, exact references only (`Patient/12` is not `Patient/123`).
  return patientIdsOf(resource as Resource).includes(patient);
}

/** Every `name=value` pair must match; a value is a comma-separated OR of tokens (`system|code`, `code`, `system|`). */
function matchesFilter(resource: object, filter: ReadonlyArray<readonly [string, string]>): boolean {
  return filter.every(([name, value]) => {
    const codings = codingsOf((resource as Record<string, unknown>)[name]);
    return value.split(',').some((token) => codings.some((c) => tokenMatches(token, c)));
  });
}

interface Coding { system?: string; code?: string }

function codingsOf(value: unknown): Coding[] {
  const items = Array.isArray(value) ? value : value === undefined ? [] : [value];
  return items.flatMap((item): Coding[] => {
    if (typeof item === 'string') return [{ code: item }];
    if (item && typeof item === 'object') {
      const cc = item as { coding?: Coding[]; system?: string; code?: string };
      if (Array.isArray(cc.coding)) return cc.coding;
      if (typeof cc.code === 'string') return [{ system: cc.system, code: cc.code }];
    }
    return [];
  });
}

function tokenMatches(token: string, coding: Coding): boolean {
  const bar = token.indexOf('|');
  if (bar < 0) return coding.code === token;
  const system = token.slice(0, bar);
  const code = token.slice(bar + 1);
  if (system === '') return !coding.system && coding.code === code;
  if (code === '') return coding.system === system;
  return coding.system === system && coding.code === code;
}

const CONTEXT_LABEL: Record<string, string> = {
  openid: 'Confirm your identity to the app',
  fhirUser: 'Tell the app who you are (your FHIR user record)',
  profile: 'Tell the app who you are',
  launch: 'Use the patient and encounter open in your EHR',
  'launch/patient': 'Know which patient is selected',
  'launch/encounter': 'Know which encounter is selected',
  offline_access: 'Keep access after you close the app (until you revoke it)',
  online_access: 'Keep access while you are signed in',
  'system/launch': 'Create EHR launch contexts',
};

/** Plain-language line for the approval page. */
export function describeScope(raw: string): string {
  const label = CONTEXT_LABEL[raw];
  if (label) return label;
  const scope = parseResourceScope(raw);
  if (!scope) return raw;
  const verbs: string[] = [];
  if (scope.permissions.has('r') || scope.permissions.has('s')) verbs.push('read');
  if (scope.permissions.has('c')) verbs.push('create');
  if (scope.permissions.has('u')) verbs.push('change');
  if (scope.permissions.has('d')) verbs.push('delete');
  const what = scope.resourceType === '*' ? 'all kinds of records' : `${scope.resourceType} records`;
  const whose = scope.context === 'patient' ? 'of the selected patient' : scope.context === 'user' ? 'you are allowed to see' : 'of any patient';
  const filter = scope.filter.length ? ` (only ${scope.filter.map(([n, v]) => `${n} ${v.split(',').map((t) => t.split('|').pop()).join(' or ')}`).join(', ')})` : '';
  return `${verbs.join(', ').replace(/^./, (c) => c.toUpperCase())} ${what} ${whose}${filter}`;
}
