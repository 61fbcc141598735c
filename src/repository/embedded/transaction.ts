/**
 * FHIR transaction processing (https://hl7.org/fhir/R4/http.html#transaction) for the embedded
 * store. The caller runs this inside one SQLite transaction, so any failing entry rolls back
 * every entry. Conditional creates are resolved against the state before the transaction;
 * `urn:uuid:` fullUrls are replaced everywhere in the bundle by the ids assigned here; entries
 * run in the order the spec gives (DELETE, POST, PUT, GET) and answer in request order.
 */
import { parseSearchRequest } from '@medplum/core';
import type { SearchRequest } from '@medplum/core';
import type { Bundle, BundleEntry, BundleEntryResponse, Resource } from '@medplum/fhirtypes';
import { badRequest, GlucoGuardError, isGlucoGuardError, preconditionFailed } from '../../errors.js';
import type { SearchResult, WriteResult } from '../port.js';
import { newResourceId } from './ids.js';

/** What a transaction may do, each step synchronous and inside the caller's SQLite transaction. */
export interface TransactionOps {
  /** Creates with the given (fresh) id. */
  insert(resource: Resource): Resource;
  update(resource: Resource, ifMatch?: string): WriteResult;
  /** With `ifMatch`, ERR_PRECONDITION_FAILED unless it is the current version. */
  delete(resourceType: string, id: string, ifMatch?: string): void;
  read(resourceType: string, id: string): Resource;
  vread(resourceType: string, id: string, versionId: string): Resource;
  search(request: SearchRequest): SearchResult;
  /** Current matches of a conditional query (at most 2). */
  findOne(resourceType: string, query: string): Resource[];
}

type Method = 'POST' | 'PUT' | 'DELETE' | 'GET';
const ORDER: Method[] = ['DELETE', 'POST', 'PUT', 'GET'];
const TYPE_ID = /^([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})$/;

interface Planned {
  index: number;
  method: Method;
  type: string;
  id?: string;
  resource?: Resource;
  /** POST that matched an existing resource through ifNoneExist. */
  existing?: Resource;
  url: string;
  ifMatch?: string;
}

export function runTransaction(bundle: Bundle, ops: TransactionOps): Bundle {
  if (bundle?.resourceType !== 'Bundle' || bundle.type !== 'transaction') {
    throw badRequest('expected a Bundle of type transaction', 'Bundle.type');
  }
  const entries = structuredClone(bundle.entry ?? []);
  const planned = entries.map((entry, index) => withEntry(index, () => plan(entry, index, ops)));

  const targets = new Set<string>();
  for (const p of planned) {
    if ((p.method === 'PUT' || p.method === 'DELETE') && p.id) {
      const key = `${p.type}/${p.id}`;
      if (targets.has(key)) throw badRequest(`Bundle.entry[${p.index}]: ${key} appears more than once`);
      targets.add(key);
    }
  }

  const rewrites = new Map<string, string>();
  entries.forEach((entry, i) => {
    const p = planned[i]!;
    if (entry.fullUrl && p.id && (p.method === 'POST' || p.method === 'PUT')) rewrites.set(entry.fullUrl, `${p.type}/${p.id}`);
  });
  for (const p of planned) if (p.resource) rewriteReferences(p.resource, rewrites);

  const responses: BundleEntry[] = new Array(planned.length);
  for (const method of ORDER) {
    for (const p of planned) {
      if (p.method !== method) continue;
      responses[p.index] = withEntry(p.index, () => execute(p, ops));
    }
  }
  return { resourceType: 'Bundle', type: 'transaction-response', entry: responses };
}

function plan(entry: BundleEntry, index: number, ops: TransactionOps): Planned {
  const method = entry.request?.method as Method | undefined;
  const url = (entry.request?.url ?? '').replace(/^\/+/, '');
  if (!method || !ORDER.includes(method)) throw badRequest('request.method must be POST, PUT, DELETE or GET', `Bundle.entry[${index}].request.method`);
  if (!url) throw badRequest('request.url is required', `Bundle.entry[${index}].request.url`);
  if (method === 'GET') return { index, method, type: url.split(/[/?]/)[0]!, url };

  const match = TYPE_ID.exec(url.split('?')[0]!);
  if (method === 'POST') {
    const resource = entry.resource;
    if (!resource || resource.resourceType !== url.split('?')[0]) {
      throw badRequest('POST needs a resource of the type in request.url', `Bundle.entry[${index}].resource`);
    }
    const ifNoneExist = entry.request?.ifNoneExist;
    if (ifNoneExist) {
      const found = ops.findOne(resource.resourceType, ifNoneExist);
      if (found.length > 1) throw preconditionFailed('ifNoneExist matched more than one resource');
      if (found.length === 1) return { index, method, type: resource.resourceType, id: found[0]!.id, existing: found[0], url };
    }
    const id = newResourceId();
    return { index, method, type: resource.resourceType, id, resource: { ...resource, id }, url };
  }
  if (!match || url.includes('?')) throw badRequest(`${method} needs request.url of the form Type/id`, `Bundle.entry[${index}].request.url`);
  const [, type, id] = match as unknown as [string, string, string];
  const ifMatch = entry.request?.ifMatch?.replace(/^W\/"(.*)"$/, '$1');
  if (method === 'DELETE') return { index, method, type, id, url, ifMatch };
  const resource = entry.resource;
  if (!resource || resource.resourceType !== type) throw badRequest('PUT needs a resource of the type in request.url', `Bundle.entry[${index}].resource`);
  if (resource.id !== undefined && resource.id !== id) throw badRequest('resource id does not match request.url', `Bundle.entry[${index}].resource.id`);
  return { index, method, type, id, resource: { ...resource, id }, url, ifMatch };
}

function execute(p: Planned, ops: TransactionOps): BundleEntry {
  switch (p.method) {
    case 'DELETE':
      ops.delete(p.type, p.id!, p.ifMatch);
      return { response: { status: '204 No Content' } };
    case 'POST':
      if (p.existing) return { resource: p.existing, response: { status: '200 OK', ...versionInfo(p.existing) } };
      return withResource(ops.insert(p.resource!), '201 Created');
    case 'PUT': {
      const result = ops.update(p.resource!, p.ifMatch);
      return withResource(result.resource, result.outcome === 'created' ? '201 Created' : '200 OK');
    }
    case 'GET':
      return get(p.url, ops);
  }
}

function get(url: string, ops: TransactionOps): BundleEntry {
  const [path, query] = url.split('?') as [string, string | undefined];
  const parts = path.split('/');
  if (parts.length === 1 || query !== undefined) {
    const request = parseSearchRequest(url);
    const result = ops.search(request);
    const searchset: Bundle = {
      resourceType: 'Bundle',
      type: 'searchset',
      entry: [
        ...result.resources.map((resource) => ({ resource, search: { mode: 'match' as const } })),
        ...result.included.map((resource) => ({ resource, search: { mode: 'include' as const } })),
      ],
    };
    return { resource: searchset, response: { status: '200 OK' } };
  }
  if (parts.length === 2) return withResource(ops.read(parts[0]!, parts[1]!), '200 OK');
  if (parts.length === 4 && parts[2] === '_history') return withResource(ops.vread(parts[0]!, parts[1]!, parts[3]!), '200 OK');
  throw badRequest(`unsupported GET url: ${path}`);
}

function withResource(resource: Resource, status: string): BundleEntry {
  return { resource, response: { status, ...versionInfo(resource) } };
}

function versionInfo(resource: Resource): Partial<BundleEntryResponse> {
  const version = resource.meta?.versionId;
  return {
    location: `${resource.resourceType}/${resource.id}${version ? `/_history/${version}` : ''}`,
    ...(version ? { etag: `W/"${version}"` } : {}),
    ...(resource.meta?.lastUpdated ? { lastModified: resource.meta.lastUpdated } : {}),
  };
}

/** Replaces every `reference` that names a bundle fullUrl with the resource's new `Type/id`. */
function rewriteReferences(value: unknown, rewrites: Map<string, string>): void {
  if (rewrites.size === 0 || !value || typeof value !== 'object') return;
  if (Array.isArray(value)) {
    for (const item of value) rewriteReferences(item, rewrites);
    return;
  }
  const obj = value as Record<string, unknown>;
  for (const [k, v] of Object.entries(obj)) {
    if (k === 'reference' && typeof v === 'string' && rewrites.has(v)) obj[k] = rewrites.get(v);
    else if (v && typeof v === 'object') rewriteReferences(v, rewrites);
  }
}

/** Prefixes an entry's error with its position, keeping the error kind. */
function withEntry<T>(index: number, job: () => T): T {
  try {
    return job();
  } catch (err) {
    if (isGlucoGuardError(err)) {
      throw new GlucoGuardError(err.code, `Bundle.entry[${index}]: ${err.message}`,
        err.issues.map((i) => ({ ...i, diagnostics: `Bundle.entry[${index}]: ${i.diagnostics ?? ''}` })), { cause: err });
    }
    throw err;
  }
}
