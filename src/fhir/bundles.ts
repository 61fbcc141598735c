/**
 * batch and transaction Bundles (https://hl7.org/fhir/R4/http.html#transaction). A batch runs each
 * entry through the router on its own; a transaction is validated and authorized whole before the
 * repository commits its writes atomically, and its reads run afterwards through the router so
 * that every read rule applies to them too.
 */
import type { Binary, Bundle, BundleEntry, OperationOutcomeIssue, Resource } from '@medplum/fhirtypes';
import { badRequest, conflict, GlucoGuardError, unprocessable } from '../errors.js';
import { errorToResponse, informational } from './outcomes.js';
import { queryOfText } from './paging.js';
import type { FhirRequest, FhirResponse, HttpMethod } from './types.js';

const STATUS_TEXT: Record<number, string> = {
  200: 'OK', 201: 'Created', 204: 'No Content', 304: 'Not Modified', 400: 'Bad Request', 401: 'Unauthorized',
  403: 'Forbidden', 404: 'Not Found', 405: 'Method Not Allowed', 409: 'Conflict', 410: 'Gone', 412: 'Precondition Failed',
  415: 'Unsupported Media Type', 422: 'Unprocessable Entity', 429: 'Too Many Requests', 500: 'Internal Server Error',
  502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout',
};

/**
 * Processes a batch: independent entries, each answered in order. An entry whose absolute URL is on
 * another server's base is that entry's 400 (as in a transaction): it asks that server, not this one.
 */
export async function processBatch(bundle: Bundle, parent: FhirRequest, handle: (req: FhirRequest) => Promise<FhirResponse>, fhirBase: string): Promise<FhirResponse> {
  const entries = bundle.entry ?? [];
  const out: BundleEntry[] = [];
  for (const [i, entry] of entries.entries()) {
    let response: FhirResponse;
    try {
      response = await handle(entryRequest(relativeEntry(entry, i, fhirBase), i, parent));
    } catch (err) {
      response = errorToResponse(err);
    }
    out.push(responseEntry(response, entry.request?.method === 'HEAD'));
  }
  return { status: 200, body: { resourceType: 'Bundle', type: 'batch-response', entry: out } };
}

export interface TransactionSteps {
  /**
   * Types whose writes another module handles (the router's registerWriteHandler: a Consent is
   * recorded on chain, a Subscription checked and handshaken): such a write cannot be one step of
   * an all-or-nothing commit, and written as plain storage it would skip all of that.
   */
  handledWriteTypes?: readonly string[];
  /** The FHIR base, for each written resource's `fullUrl` in the transaction-response. */
  fhirBase?: string;
  validate(resource: Resource): void;
  authorize(interaction: 'create' | 'update' | 'delete', resource: Resource): Promise<void>;
  checkType(type: string): string;
  commit(bundle: Bundle): Promise<Bundle>;
  read(req: FhirRequest): Promise<FhirResponse>;
  guard(resources: Resource[]): Promise<{ allowed: Resource[]; issues: OperationOutcomeIssue[] }>;
}

/**
 * A write entry's authorization. A type no client may write (the access log: 405 on its own URL,
 * with the methods that URL takes) is a 400 naming the entry here: the transaction's own URL takes
 * POST, so a 405 and its `Allow` would misstate it.
 */
async function authorizeEntry(steps: TransactionSteps, index: number, interaction: 'create' | 'update' | 'delete', resource: Resource): Promise<void> {
  try {
    await steps.authorize(interaction, resource);
  } catch (err) {
    if (!(err instanceof GlucoGuardError) || err.code !== 'ERR_METHOD_NOT_ALLOWED') throw err;
    const details = `Bundle.entry[${index}]: ${err.issues[0]?.diagnostics ?? err.message}; the transaction was not applied`;
    throw new GlucoGuardError('ERR_INVALID', details, [{ severity: 'error', code: 'not-supported', diagnostics: details, expression: [`Bundle.entry[${index}].request.method`] }]);
  }
}

/** Processes a transaction: all writes or none; reads after writes. */
export async function processTransaction(bundle: Bundle, parent: FhirRequest, steps: TransactionSteps): Promise<FhirResponse> {
  const entries = bundle.entry ?? [];
  refuseDuplicateFullUrls(entries);
  const writes: { index: number; entry: BundleEntry }[] = [];
  const reads: { index: number; entry: BundleEntry }[] = [];
  const issues: OperationOutcomeIssue[] = [];
  for (const [i, entry] of entries.entries()) {
    const method = entry.request?.method;
    const url = entry.request?.url;
    if (!method || !url) throw badRequest(`Bundle.entry[${i}].request needs method and url`, `Bundle.entry[${i}].request`);
    if (method === 'GET' || method === 'HEAD') {
      reads.push({ index: i, entry });
      continue;
    }
    // (the router turns each PATCH into the update it makes before the transaction gets here)
    if (method === 'PATCH') throw badRequest('PATCH is not supported inside a transaction', `Bundle.entry[${i}].request.method`);
    const type = steps.checkType(url.split(/[/?]/)[0]!);
    if (steps.handledWriteTypes?.includes(type)) {
      throw badRequest(`Bundle.entry[${i}]: a ${type} is written on its own (${method} ${type}) or in a batch, not in a transaction: its write does more than store it; the transaction was not applied`, `Bundle.entry[${i}].request.url`);
    }
    // A conditional PUT or DELETE would be matched by the repository over everything it holds,
    // hidden resources too; single requests and batch entries decide it over what the requester may see.
    if ((method === 'PUT' || method === 'DELETE') && url.includes('?')) {
      throw badRequest(`Conditional ${method === 'PUT' ? 'update' : 'delete'} is not supported inside a transaction; send it on its own or in a batch`, `Bundle.entry[${i}].request.url`);
    }
    if (method === 'DELETE') {
      await authorizeEntry(steps, i, 'delete', { resourceType: type, id: url.split('/')[1] } as Resource);
      writes.push({ index: i, entry });
      continue;
    }
    const resource = entry.resource;
    if (!resource || resource.resourceType !== type) {
      throw badRequest(`Bundle.entry[${i}].resource must be a ${type}`, `Bundle.entry[${i}].resource`);
    }
    // an update carries the id of its URL (http.html#update: none, or another, is 400), in a
    // transaction as on its own; the embedded store would take the URL's, an upstream refuse it
    if (method === 'PUT' && resource.id !== url.split(/[/?]/)[1]) {
      throw badRequest(`Bundle.entry[${i}].resource.id must be the id of request.url (${type}/<id>)`, `Bundle.entry[${i}].resource.id`);
    }
    try {
      steps.validate(resource);
    } catch (err) {
      if (!(err instanceof GlucoGuardError) || err.code !== 'ERR_UNPROCESSABLE') throw err;
      issues.push(...err.issues.map((is) => ({ ...is, expression: (is.expression ?? [resource.resourceType]).map((e) => `Bundle.entry[${i}].resource.${e.replace(/^[A-Z][A-Za-z]+\.?/, '')}`.replace(/\.$/, '')) })));
      continue;
    }
    await authorizeEntry(steps, i, method === 'POST' ? 'create' : 'update', resource);
    writes.push({ index: i, entry });
  }
  if (issues.length) throw unprocessable(issues);
  refuseDanglingEntryReferences(writes);
  // Two writes to the same resource in one transaction cannot both win (http.html#trules).
  const targets = new Map<string, number>();
  for (const w of writes) {
    const method = w.entry.request!.method;
    if (method !== 'PUT' && method !== 'DELETE') continue;
    const target = w.entry.request!.url.split('?')[0]!;
    const first = targets.get(target);
    if (first !== undefined) throw conflict(`Bundle.entry[${first}] and Bundle.entry[${w.index}] both write ${target}`);
    targets.set(target, w.index);
  }

  const out: BundleEntry[] = new Array(entries.length);
  // A read that fails fails the transaction (http.html#transaction: accept all actions or reject
  // all). Reads the writes cannot change run before the commit, so their failure writes nothing;
  // a read of what the transaction deletes is refused up front (it could only answer 410).
  const deleted = new Set(writes.filter((w) => w.entry.request!.method === 'DELETE').map((w) => w.entry.request!.url.split('?')[0]!));
  const writtenTypes = new Set(writes.map((w) => w.entry.request!.url.split(/[/?]/)[0]!));
  const afterCommit: typeof reads = [];
  for (const r of reads) {
    const target = readTarget(r.entry.request!.url);
    if (target.instance && deleted.has(target.instance)) {
      throw badRequest(`Bundle.entry[${r.index}] reads ${target.instance}, which this transaction deletes; the transaction was not applied`, `Bundle.entry[${r.index}].request.url`);
    }
    if (!independentOf(target, writtenTypes)) {
      afterCommit.push(r);
      continue;
    }
    const response = await readEntry(steps, r, parent);
    if (response.status >= 400) return failedRead(r.index, response);
    out[r.index] = responseEntry(response, r.entry.request!.method === 'HEAD');
  }
  if (writes.length) {
    const committed = await steps.commit({ resourceType: 'Bundle', type: 'transaction', entry: writes.map((w) => w.entry) });
    const echoed = (committed.entry ?? []).flatMap((e) => (e.resource ? [e.resource] : []));
    const { allowed } = await steps.guard(echoed);
    // Guards may hand back transformed copies (integrity tags), so match by version, not identity.
    const key = (r: Resource): string => `${r.resourceType}/${r.id}/${r.meta?.versionId ?? ''}`;
    const visible = new Map(allowed.map((r) => [key(r), r]));
    // `Prefer: return=…` (http.html#ops) shapes each write's entry as it shapes a single write's
    // answer, as it does a batch's entries
    const prefer = /return=(minimal|representation|OperationOutcome)/.exec(parent.headers.prefer ?? '')?.[1];
    for (const [k, w] of writes.entries()) {
      const { resource, ...answered } = committed.entry?.[k] ?? {};
      const rest = completedEntry(answered, resource, steps.fhirBase);
      const shown = resource ? visible.get(key(resource)) : undefined;
      if (prefer === 'minimal' || prefer === 'OperationOutcome') {
        const response = rest.response ?? { status: '200 OK' };
        out[w.index] = prefer === 'minimal' ? { ...rest, response } : { ...rest, response: { ...response, outcome: informational(response.status) } };
        continue;
      }
      out[w.index] = shown ? { ...rest, resource: shown } : rest;
    }
  }
  // Reads of what the writes touch see them; one that fails now leaves the committed writes in
  // place and answers the error in its entry (docs/architecture.md, Transactions).
  for (const r of afterCommit) out[r.index] = responseEntry(await readEntry(steps, r, parent), r.entry.request!.method === 'HEAD');
  return { status: 200, body: { resourceType: 'Bundle', type: 'transaction-response', entry: out } };
}

/**
 * A write's transaction-response entry as http.html#transaction-response has it, whichever
 * repository committed it: the status with its reason phrase, the `etag` and `lastModified` of
 * the version written, and the resource's `fullUrl` on this server. An upstream answers some of
 * these (`"status": "201"`, no etag), the embedded store others; taken from the version written
 * where the repository left them out.
 */
function completedEntry(entry: Omit<BundleEntry, 'resource'>, resource: Resource | undefined, fhirBase: string | undefined): Omit<BundleEntry, 'resource'> {
  const response = { ...(entry.response ?? { status: '200' }) };
  const code = /^(\d{3})$/.exec(response.status.trim())?.[1];
  if (code && STATUS_TEXT[Number(code)]) response.status = `${code} ${STATUS_TEXT[Number(code)]}`;
  if (!response.etag && resource?.meta?.versionId) response.etag = `W/"${resource.meta.versionId}"`;
  if (!response.lastModified && resource?.meta?.lastUpdated) response.lastModified = resource.meta.lastUpdated;
  const fullUrl = entry.fullUrl ?? (fhirBase && resource?.id ? `${fhirBase}/${resource.resourceType}/${resource.id}` : undefined);
  return { ...entry, ...(fullUrl ? { fullUrl } : {}), response };
}

async function readEntry(steps: TransactionSteps, r: { index: number; entry: BundleEntry }, parent: FhirRequest): Promise<FhirResponse> {
  try {
    return await steps.read(entryRequest(r.entry, r.index, parent));
  } catch (err) {
    return errorToResponse(err);
  }
}

/** What a read entry's URL reads: its resource type (none at system level), the instance it names, whether it crosses to other types. */
interface ReadTarget { type?: string; instance?: string; crossesTypes: boolean }

function readTarget(url: string): ReadTarget {
  const relative = url.replace(ABSOLUTE_FHIR_BASE, '');
  const [path, qs = ''] = relative.split('?', 2) as [string, string | undefined];
  const segments = path.split('/').filter(Boolean);
  const type = segments[0] && /^[A-Z][A-Za-z]+$/.test(segments[0]) ? segments[0] : undefined;
  const instance = type && segments[1] && !segments[1].startsWith('$') && !segments[1].startsWith('_') ? `${type}/${segments[1]}` : undefined;
  // operations ($everything, $lastn…), includes, reverse chains, chains and typed references read other types
  const names = qs.split('&').filter(Boolean).map((p) => decodeURIComponent(p.split('=', 1)[0]!));
  const crossesTypes = segments.some((s) => s.startsWith('$'))
    || names.some((n) => n.startsWith('_include') || n.startsWith('_revinclude') || n.startsWith('_has') || n.includes('.') || /:[A-Z]/.test(n));
  return { type, instance, crossesTypes };
}

function independentOf(target: ReadTarget, writtenTypes: Set<string>): boolean {
  if (!writtenTypes.size) return true;
  return target.type !== undefined && !writtenTypes.has(target.type) && !target.crossesTypes;
}

/** A failed read as the transaction's answer: its status and outcome, naming the entry. */
function failedRead(index: number, response: FhirResponse): FhirResponse {
  const body = response.body as { resourceType?: string; issue?: OperationOutcomeIssue[] } | undefined;
  const issues = body?.resourceType === 'OperationOutcome' && body.issue?.length ? body.issue : [{ severity: 'error' as const, code: 'processing' as const }];
  return {
    status: response.status,
    headers: response.headers?.['Retry-After'] ? { 'Retry-After': response.headers['Retry-After'] } : undefined,
    body: {
      resourceType: 'OperationOutcome',
      issue: issues.map((is) => ({
        ...is,
        diagnostics: `Bundle.entry[${index}]: ${is.diagnostics ?? is.details?.text ?? `the read answered ${response.status}`}; the transaction was not applied`,
        expression: [`Bundle.entry[${index}]`, ...(is.expression ?? [])],
      })),
    },
  };
}

/** A conditional reference (http.html#trules): `Patient?identifier=urn:mrn|123` in place of `Patient/id`. */
const CONDITIONAL_REFERENCE = /^([A-Z][A-Za-z]+)\?(.+)$/;

/** The conditional references a resource holds, each as its type and criteria. */
export function conditionalReferences(resource: unknown): { reference: string; type: string; criteria: string }[] {
  const found: { reference: string; type: string; criteria: string }[] = [];
  const walk = (node: unknown): void => {
    if (Array.isArray(node)) node.forEach(walk);
    else if (node && typeof node === 'object') {
      for (const [key, value] of Object.entries(node)) {
        const m = key === 'reference' && typeof value === 'string' ? CONDITIONAL_REFERENCE.exec(value) : null;
        if (m) found.push({ reference: value as string, type: m[1]!, criteria: m[2]! });
        else walk(value);
      }
    }
  };
  walk(resource);
  return found;
}

/** The resource with each reference found in `resolved` replaced by what it resolved to (a copy). */
export function withReferencesResolved<T>(resource: T, resolved: Map<string, string>): T {
  const map = (node: unknown): unknown => {
    if (Array.isArray(node)) return node.map(map);
    if (!node || typeof node !== 'object') return node;
    return Object.fromEntries(Object.entries(node).map(([key, value]) =>
      [key, key === 'reference' && typeof value === 'string' && resolved.has(value) ? resolved.get(value) : map(value)]));
  };
  return map(resource) as T;
}

/**
 * Refuses a single write (or a batch entry) that holds a conditional reference or a reference to a
 * Bundle entry (`urn:uuid:`, `urn:oid:`): they are resolved only inside a transaction, and stored
 * as written they would link to nothing (http.html#brules: batch entries SHALL NOT depend on each other).
 */
export function refuseConditionalReferences(resource: Resource): void {
  if (conditionalReferences(resource).length) {
    throw badRequest('Conditional references (Type?criteria) are resolved only inside a transaction Bundle; send this write in one, or reference the resource by Type/id', 'reference');
  }
  if (hasEntryReference(resource)) {
    throw badRequest('References to Bundle entries (urn:uuid:, urn:oid:) are resolved only inside a transaction Bundle; send this write in one, or reference the resource by Type/id', 'reference');
  }
}

/**
 * A transaction's references to Bundle entries (`urn:uuid:`, `urn:oid:`) must each name the
 * fullUrl of an entry the transaction creates or updates (bundle.html#references): one naming no
 * entry would be stored as written and link to nothing, leaving, say, a reading outside every
 * patient's compartment. 400 naming the entry, and nothing is written (as HAPI answers "Unable to
 * satisfy placeholder ID").
 */
function refuseDanglingEntryReferences(writes: { index: number; entry: BundleEntry }[]): void {
  const fullUrls = new Set(writes.flatMap((w) => (w.entry.resource && w.entry.fullUrl ? [w.entry.fullUrl] : [])));
  for (const w of writes) {
    const dangling = entryReferences(w.entry.resource).find((ref) => !fullUrls.has(ref));
    if (dangling !== undefined) {
      throw badRequest(`Bundle.entry[${w.index}].resource refers to ${dangling.slice(0, 80)}, which is the fullUrl of no entry this transaction writes; the transaction was not applied`, `Bundle.entry[${w.index}].resource`);
    }
  }
}

/**
 * Two entries with one fullUrl (bdl-7, unless their versions differ) make a reference to it
 * ambiguous: which of them it names would depend on the order the store resolves them in. 400
 * naming both, and nothing is written.
 */
function refuseDuplicateFullUrls(entries: BundleEntry[]): void {
  const seen = new Map<string, number>();
  for (const [i, e] of entries.entries()) {
    if (!e.fullUrl) continue;
    const key = `${e.fullUrl}\n${e.resource?.meta?.versionId ?? ''}`;
    const first = seen.get(key);
    if (first !== undefined) {
      throw badRequest(`Bundle.entry[${first}] and Bundle.entry[${i}] have the same fullUrl (bdl-7); the transaction was not applied`, `Bundle.entry[${i}].fullUrl`);
    }
    seen.set(key, i);
  }
}

/** Every `reference` naming a Bundle entry (`urn:uuid:`, `urn:oid:`) in a resource. */
function entryReferences(node: unknown, found: string[] = []): string[] {
  if (Array.isArray(node)) node.forEach((n) => entryReferences(n, found));
  else if (node && typeof node === 'object') {
    for (const [key, value] of Object.entries(node)) {
      if (key === 'reference' && typeof value === 'string') {
        if (/^urn:(uuid|oid):/i.test(value)) found.push(value);
      } else entryReferences(value, found);
    }
  }
  return found;
}

function hasEntryReference(node: unknown): boolean {
  if (Array.isArray(node)) return node.some(hasEntryReference);
  if (!node || typeof node !== 'object') return false;
  for (const [key, value] of Object.entries(node)) {
    if (key === 'reference' && typeof value === 'string' ? /^urn:(uuid|oid):/i.test(value) : hasEntryReference(value)) return true;
  }
  return false;
}

/** An entry URL's absolute FHIR base (`https://host[/prefix]/fhir/`): entries may name it or not. */
const ABSOLUTE_FHIR_BASE = /^https?:\/\/[^/]+(\/[^?]*)?\/fhir\//;

/**
 * A transaction with each entry's `request.url` relative to the FHIR base. R4 gives it relative
 * (Bundle.entry.request.url), but clients also send it absolute on this server's base, as a batch
 * entry may be (entryRequest); the transaction's checks and the repository read it as `Type[/id][?query]`.
 * An absolute URL on any other base is 400: this server does not write elsewhere.
 */
export function withRelativeEntryUrls(bundle: Bundle, fhirBase: string): Bundle {
  if (!bundle.entry?.some((e) => ABSOLUTE_URL.test(e.request?.url ?? ''))) return bundle;
  return { ...bundle, entry: bundle.entry.map((e, i) => relativeEntry(e, i, fhirBase)) };
}

const ABSOLUTE_URL = /^[a-z][a-z0-9+.-]*:/i;

/** One entry with its `request.url` relative to `fhirBase`; 400 for an absolute URL on any other base. */
function relativeEntry(e: BundleEntry, i: number, fhirBase: string): BundleEntry {
  const url = e.request?.url;
  if (!url || !ABSOLUTE_URL.test(url)) return e;
  const prefix = `${fhirBase.replace(/\/+$/, '')}/`;
  if (!url.startsWith(prefix)) {
    throw badRequest(`Bundle.entry[${i}].request.url must be relative to this server's FHIR base (or on it)`, `Bundle.entry[${i}].request.url`);
  }
  return { ...e, request: { ...e.request!, url: url.slice(prefix.length) } };
}

/** Builds the router request for one Bundle entry. */
export function entryRequest(entry: BundleEntry, index: number, parent: FhirRequest): FhirRequest {
  const method = entry.request?.method as HttpMethod | undefined;
  const url = entry.request?.url;
  if (!method || !url) throw badRequest(`Bundle.entry[${index}].request needs method and url`, `Bundle.entry[${index}].request`);
  const relative = url.replace(ABSOLUTE_FHIR_BASE, '');
  const [path, qs] = relative.split('?', 2) as [string, string | undefined];
  if (path === '' && method === 'POST') throw badRequest('Nested batch/transaction Bundles are not supported', `Bundle.entry[${index}]`);
  const query = queryOfText(qs ?? '');
  const headers: Record<string, string | undefined> = {
    'content-type': 'application/fhir+json',
    prefer: parent.headers.prefer,
    'if-none-exist': entry.request?.ifNoneExist,
    'if-match': entry.request?.ifMatch,
    'if-none-match': entry.request?.ifNoneMatch,
  };
  if (method === 'PATCH' && entry.resource?.resourceType === 'Binary') {
    // a JSON Patch travels in a Bundle as a Binary (http.html#patch)
    const binary = entry.resource as Binary;
    headers['content-type'] = binary.contentType;
    return { method, path, query, headers, body: binaryJson(binary, index), access: parent.access };
  }
  return { method, path, query, headers, body: entry.resource, access: parent.access };
}

/** The JSON a Binary's base64 `data` holds (a JSON Patch document in a PATCH entry). */
function binaryJson(binary: Binary, index: number): unknown {
  try {
    return JSON.parse(Buffer.from(binary.data ?? '', 'base64').toString('utf8'));
  } catch {
    throw badRequest(`Bundle.entry[${index}].resource: the Binary's data is not base64 of a JSON document`, `Bundle.entry[${index}].resource.data`);
  }
}

function responseEntry(response: FhirResponse, head = false): BundleEntry {
  const status = `${response.status} ${STATUS_TEXT[response.status] ?? ''}`.trim();
  const h = response.headers ?? {};
  const body = response.body as Resource | undefined;
  const isOutcome = body?.resourceType === 'OperationOutcome';
  return {
    // a HEAD entry answers as a HEAD request does: the GET's status and headers, no body
    ...(body && !isOutcome && !head ? { resource: body } : {}),
    response: {
      status,
      ...(h.Location ? { location: h.Location } : {}),
      ...(h.ETag ? { etag: h.ETag } : {}),
      // the version's own instant (Last-Modified, an HTTP date, has whole seconds only)
      ...(h['Last-Modified'] ? { lastModified: (!isOutcome && body?.meta?.lastUpdated) || new Date(h['Last-Modified']).toISOString() } : {}),
      ...(isOutcome ? { outcome: body } : {}),
    },
  };
}
