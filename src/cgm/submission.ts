/**
 * How `$submit-cgm-bundle` stores a submitted transaction Bundle idempotently, per patient, with
 * corrections as new versions — the rules `/cgm/ingest` follows (service.ts), applied to a client's
 * Bundle:
 *
 * - Each POST is matched on the resource's first identifier (client identifiers are kept) or, when
 *   it has none, on an identifier GlucoGuard adds (`urn:glucoguard:cgm-submission|<SHA-256 of the
 *   content>`), *and* on the patient the resource names (`subject` or `patient`). Ingest gets the
 *   same scoping by putting the patient into its identifiers; a client's identifiers need not be
 *   unique across patients, so the match names the patient. A resource that names no patient (a
 *   Device without `patient`) is matched on its identifier alone.
 * - No match: a create (kept a conditional create, so a concurrent submission cannot create twice).
 *   A match with the same content (without id, meta, and with references to other entries taken
 *   as the resources they became): left as it is, 200 at the existing version. A match with other
 *   content: an update of that resource (a new version, If-Match the version read, so a concurrent
 *   change fails the transaction with 412 instead of being overwritten).
 * - A client's own `request.ifNoneExist` is a plain conditional create, as the client asked.
 */
import { createHash } from 'node:crypto';
import type { Bundle, Parameters, Resource } from '@medplum/fhirtypes';
import { badRequest } from '../errors.js';
import { sameContent, stableJson } from './stable-json.js';

/** Identifier system GlucoGuard adds to submitted resources that carry none (content hash). */
export const SUBMISSION_IDENTIFIER_SYSTEM = 'urn:glucoguard:cgm-submission';

/** Identifiers per search when looking submitted resources up (they travel in the URL upstream). */
const LOOKUP_BATCH = 50;

/** What a POST entry is matched on: its identifier (`system|value`) and the patient it names. */
interface EntryKey {
  index: number;
  type: string;
  identifier: string;
  /** `Patient/<id>`, when the resource names one. */
  patient?: string;
}

/**
 * Current resources of `type` carrying one of `identifiers` (`system|value`, commas escaped) and,
 * with `patient`, belonging to that patient; undefined when the requester may not search them.
 */
export type SubmissionLookup = (type: string, identifiers: string[], patient: string | undefined) => Promise<Resource[] | undefined>;

/** The Bundle of a `$submit-cgm-bundle` call: the body itself, or the `resource` parameter of Parameters. */
export function submittedBundle(body: unknown): Bundle {
  const resource = body as Resource | undefined;
  let bundle: Resource | undefined = resource;
  if (resource?.resourceType === 'Parameters') {
    const params = (resource as Parameters).parameter ?? [];
    const named = params.filter((p) => p.name === 'resource');
    if (named.length !== 1) throw badRequest('Parameters must carry exactly one "resource" parameter holding the Bundle', 'Parameters.parameter');
    bundle = named[0]!.resource;
  }
  if (bundle?.resourceType !== 'Bundle') throw badRequest('Expected a transaction Bundle (cgm-data-submission-bundle), or Parameters with it as "resource"');
  if ((bundle as Bundle).type !== 'transaction') throw badRequest('The submitted Bundle must be of type transaction', 'Bundle.type');
  return bundle as Bundle;
}

/**
 * Resolves in-bundle relative references and makes every POST a conditional create on its
 * identifier and patient (file comment). Relative references (`Observation/x`) to entries with
 * RESTful fullUrls (`https://example.org/Observation/x`) resolve to those entries (R4 bundle.html#references).
 */
export function prepareSubmission(input: Bundle): Bundle {
  return prepared(input).bundle;
}

/**
 * The submission as the transaction to run: `prepareSubmission`, then each POST that matches a
 * stored resource of the same patient with other content turned into an update of it (file comment).
 * `ignored` names elements that do not make content differ (`issued` of a recomputed summary).
 */
export async function submissionTransaction(input: Bundle, lookup: SubmissionLookup, ignored: readonly string[] = []): Promise<Bundle> {
  const { bundle, keys } = prepared(input);
  const entries = bundle.entry ?? [];
  const matched = await matches(keys, lookup);
  if (matched.size === 0) return bundle;
  // References to matched entries, as the stored resources hold them.
  const rewrites = new Map<string, string>();
  for (const [index, found] of matched) {
    const fullUrl = entries[index]!.fullUrl;
    if (fullUrl) rewrites.set(fullUrl, `${found.resourceType}/${found.id}`);
  }
  for (const [index, found] of matched) {
    const entry = entries[index]!;
    const incoming = withReferences(entry.resource!, rewrites);
    if (sameContent(found, incoming, ignored)) continue; // idempotent: the conditional create answers 200 at the stored version
    const versionId = found.meta?.versionId;
    entries[index] = {
      ...(entry.fullUrl ? { fullUrl: entry.fullUrl } : {}),
      resource: { ...entry.resource!, id: found.id },
      request: { method: 'PUT', url: `${found.resourceType}/${found.id}`, ...(versionId ? { ifMatch: `W/"${versionId}"` } : {}) },
    };
  }
  return bundle;
}

function prepared(input: Bundle): { bundle: Bundle; keys: EntryKey[] } {
  const bundle = structuredClone(input);
  const entries = bundle.entry ?? [];
  // `Type/id` → the fullUrl `<base>/Type/id` of the entry it names, when exactly one entry does.
  const byRelative = new Map<string, string | null>();
  for (const e of entries) {
    const m = e.fullUrl ? /^https?:\/\/.+\/([A-Z][A-Za-z]+\/[A-Za-z0-9\-.]{1,64})$/.exec(e.fullUrl) : null;
    if (m) byRelative.set(m[1]!, byRelative.has(m[1]!) ? null : e.fullUrl!);
  }
  for (const e of entries) if (e.resource) resolveReferences(e.resource, byRelative);
  const keys: EntryKey[] = [];
  for (const [i, e] of entries.entries()) {
    if (e.request?.method !== 'POST' || !e.resource || e.request.ifNoneExist) continue;
    const resource = e.resource as Resource & { identifier?: { system?: string; value?: string }[] };
    delete resource.id; // a create: the server assigns ids
    let identifier: string;
    const first = Array.isArray(resource.identifier) ? resource.identifier.find((x) => x.system && x.value) : undefined;
    if (first) identifier = `${first.system}|${first.value}`;
    else if (!('identifier' in resource) || Array.isArray(resource.identifier)) {
      const value = createHash('sha256').update(stableJson({ ...resource, meta: undefined })).digest('hex').slice(0, 40);
      resource.identifier = [...(resource.identifier ?? []), { system: SUBMISSION_IDENTIFIER_SYSTEM, value }];
      identifier = `${SUBMISSION_IDENTIFIER_SYSTEM}|${value}`;
    } else throw badRequest('identifier must be an array', `Bundle.entry[${i}].resource.identifier`);
    const patient = patientOf(resource);
    if (patient === null) continue; // names a patient created in this Bundle: nothing stored can be theirs yet
    const criteria = new URLSearchParams({ identifier: escapeComma(identifier), ...(patient ? { patient } : {}) });
    e.request.ifNoneExist = criteria.toString();
    keys.push({ index: i, type: resource.resourceType, identifier, ...(patient ? { patient } : {}) });
  }
  return { bundle, keys };
}

/** Entry index → the one stored resource it matches (same identifier, same patient). */
async function matches(keys: EntryKey[], lookup: SubmissionLookup): Promise<Map<number, Resource>> {
  const groups = new Map<string, EntryKey[]>();
  for (const k of keys) {
    const group = `${k.type}\u0000${k.patient ?? ''}`;
    (groups.get(group) ?? groups.set(group, []).get(group)!).push(k);
  }
  const out = new Map<number, Resource>();
  for (const group of groups.values()) {
    const { type, patient } = group[0]!;
    const identifiers = [...new Set(group.map((k) => k.identifier))];
    const byIdentifier = new Map<string, Resource[]>();
    for (let i = 0; i < identifiers.length; i += LOOKUP_BATCH) {
      const batch = identifiers.slice(i, i + LOOKUP_BATCH);
      const found = await lookup(type, batch.map(escapeComma), patient);
      if (found === undefined) return new Map(); // may not search: conditional creates only, as asked
      const wanted = new Set(batch);
      for (const r of found) {
        for (const id of identifiersOf(r)) if (wanted.has(id)) (byIdentifier.get(id) ?? byIdentifier.set(id, []).get(id)!).push(r);
      }
    }
    for (const k of group) {
      const found = byIdentifier.get(k.identifier) ?? [];
      // Several matches: the conditional create fails the transaction with 412, as it should.
      if (found.length === 1) out.set(k.index, found[0]!);
    }
  }
  return out;
}

/**
 * `Patient/<id>` the resource belongs to (its `subject`, else its `patient`), undefined when it
 * names none, null when it names one by a `urn:` or absolute URL (a patient entry of this Bundle,
 * or another server's): nothing stored here can be matched to it, so the entry is a plain create.
 */
function patientOf(resource: Resource): string | undefined | null {
  const r = resource as { subject?: { reference?: string }; patient?: { reference?: string } };
  const reference = r.subject?.reference ?? r.patient?.reference;
  if (reference === undefined) return undefined;
  if (/^Patient\/[A-Za-z0-9\-.]{1,64}$/.test(reference)) return reference;
  return /^(?:urn:|https?:)/.test(reference) ? null : undefined;
}

function identifiersOf(resource: Resource): string[] {
  const ids = (resource as { identifier?: { system?: string; value?: string }[] }).identifier ?? [];
  return ids.flatMap((x) => (x.system && x.value ? [`${x.system}|${x.value}`] : []));
}

/** A comma inside a search value is escaped, else it separates alternatives (search.html#escaping). */
function escapeComma(value: string): string {
  return value.replaceAll(',', '\\,');
}

/** What decides "same resource": the content without id and meta (as ingest compares readings). */
function withReferences(resource: Resource, rewrites: Map<string, string>): Resource {
  const copy = structuredClone(resource);
  resolveReferences(copy, rewrites);
  return copy;
}

function resolveReferences(value: unknown, byRelative: ReadonlyMap<string, string | null>): void {
  if (!value || typeof value !== 'object') return;
  if (Array.isArray(value)) {
    for (const v of value) resolveReferences(v, byRelative);
    return;
  }
  const obj = value as Record<string, unknown>;
  for (const [k, v] of Object.entries(obj)) {
    if (k === 'reference' && typeof v === 'string') {
      const target = byRelative.get(v);
      if (target) obj[k] = target;
    } else if (v && typeof v === 'object') resolveReferences(v, byRelative);
  }
}

