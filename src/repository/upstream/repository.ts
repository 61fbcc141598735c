/**
 * The upstream adapter of the Repository port (src/repository/port.ts): any FHIR R4 server at
 * UPSTREAM_FHIR_URL holds GlucoGuard's patient data. Each port method is one upstream interaction
 * (https://hl7.org/fhir/R4/http.html); responses come back with the proxy's FHIR base in place of the
 * upstream's. Searches and histories are paged by the upstream's own `next` links (paging.ts), never
 * by the non-standard `_offset`, so the upstream needs nothing beyond R4 paging (Epic, Oracle Health).
 */
import type { SearchRequest } from '@medplum/core';
import type { Bundle, BundleEntry, CapabilityStatement, Resource } from '@medplum/fhirtypes';
import { checkedEndpoint, type UpstreamConfig } from '../../config.js';
import { badRequest, preconditionFailed, upstreamError } from '../../errors.js';
import type {
  HistoryEntry, HistoryRequest, HistoryResult, Repository, RepositoryDescription, SearchResult, WriteResult,
} from '../port.js';
import { credentialsFor, type UpstreamCredentials } from './auth.js';
import { FhirUpstreamClient, type FhirExchange, type FhirReply } from './client.js';
import { forwardableHeaders, type HeaderInput } from './headers.js';
import { UpstreamPaging, type FetchedPage, type PagingLimits } from './paging.js';
import { historyQuery, searchQuery } from './query.js';
import { DEFAULT_MAX_BODY_BYTES, UpstreamTransport, type UpstreamLogger } from './transport.js';

export interface UpstreamRepositoryOptions {
  config: UpstreamConfig;
  /** The proxy's public FHIR base, e.g. `http://localhost:8080/fhir`; replaces the upstream base in responses. */
  proxyFhirBase: string;
  logger?: UpstreamLogger;
  /** Replaces global fetch (tests, custom dispatchers). */
  fetchImpl?: typeof fetch;
  /** Clock for the access-token cache only (tests freeze it); defaults to Date.now. */
  now?: () => number;
  /** Bounds of the paging state (learned upstream links, the page fetched last); tests shorten them. */
  paging?: PagingLimits;
}

const RESOURCE_TYPE = /^[A-Z][A-Za-z]{1,63}$/;
const ID = /^[A-Za-z0-9\-.]{1,64}$/;

export class UpstreamRepository implements Repository {
  readonly description: RepositoryDescription;
  private readonly client: FhirUpstreamClient;
  private readonly logger?: UpstreamLogger;
  private readonly paging: UpstreamPaging;
  private readonly credentials: UpstreamCredentials;
  /** Caller headers forwarded upstream; empty unless this is a view made by forCaller(). */
  private caller: Record<string, string> = {};

  constructor(options: UpstreamRepositoryOptions) {
    const { config } = options;
    const base = checkedEndpoint(config.url, 'UPSTREAM_FHIR_URL').replace(/\/+$/, ''); // as loadConfig checks it: a config built in code may skip that
    const transport = new UpstreamTransport(options.fetchImpl ?? globalThis.fetch, config.timeoutMs, options.logger, config.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES);
    const credentials = credentialsFor(config, transport, options.now ?? Date.now);
    this.credentials = credentials;
    this.client = new FhirUpstreamClient(base, options.proxyFhirBase.replace(/\/+$/, ''), transport, credentials, config.retryAfterMaxSeconds ?? 2);
    this.logger = options.logger;
    this.paging = new UpstreamPaging(options.paging, undefined, options.logger);
    this.description = { adapter: 'upstream', location: publicLocation(base), access: accessOf(config) };
  }

  /**
   * A view of this repository whose upstream requests also carry the caller's forwardable headers
   * (see forwardableHeaders: never its credentials, cookies or hop-by-hop headers), e.g. a request id
   * or Accept-Language. Shares the connection settings and the token cache.
   */
  forCaller(headers: HeaderInput): UpstreamRepository {
    const view = Object.create(this) as UpstreamRepository;
    view.caller = forwardableHeaders(headers);
    return view;
  }

  /**
   * Start-up check of the upstream credentials (UpstreamCredentials.checkAtStartup): a client the
   * token endpoint refuses throws ConfigError; an unreachable one is logged and left to /readyz.
   */
  checkAtStartup(): Promise<void> {
    return this.credentials.checkAtStartup();
  }

  /**
   * Which of `interactions` on `type` the upstream's CapabilityStatement does not list (the
   * server's own word: a server may still refuse what it lists); undefined when its metadata
   * cannot be read or lists no resources at all (nothing can be told from it).
   */
  async undeclared(type: string, interactions: string[]): Promise<string[] | undefined> {
    try {
      const reply = await this.send({ method: 'GET', path: 'metadata', what: 'metadata' });
      const statement = reply.body as CapabilityStatement;
      const resources = (statement.rest ?? []).filter((r) => r.mode === 'server').flatMap((r) => r.resource ?? []);
      if (statement.resourceType !== 'CapabilityStatement' || !resources.length) return undefined;
      const declared = new Set(resources.filter((r) => r.type === type).flatMap((r) => (r.interaction ?? []).map((i) => i.code)));
      return interactions.filter((i) => !declared.has(i as never));
    } catch {
      return undefined;
    }
  }

  supportedSearchParams(): undefined {
    return undefined;
  }

  async create<T extends Resource>(resource: T, options: { ifNoneExist?: string } = {}): Promise<WriteResult<T>> {
    const type = checkType(resource.resourceType);
    if (options.ifNoneExist !== undefined && !/^[\x21-\x7e]+$/.test(options.ifNoneExist)) {
      throw badRequest('Invalid If-None-Exist query');
    }
    // The server assigns id and version (http.html#create); sending ours would only be ignored or refused.
    const { id: _id, ...body } = resource;
    if (body.meta) {
      const { versionId: _v, lastUpdated: _l, ...meta } = body.meta;
      body.meta = meta;
    }
    const reply = await this.send({
      method: 'POST', path: type, what: `create ${type}`, body,
      headers: { prefer: 'return=representation', ...(options.ifNoneExist ? { 'if-none-exist': options.ifNoneExist } : {}) },
    });
    const stored = await this.writtenResource<T>(reply, type);
    // Only a conditional create can find an existing match (200); some servers answer 200 to plain creates.
    return { resource: stored, outcome: reply.status === 200 && options.ifNoneExist !== undefined ? 'existing' : 'created' };
  }

  async read<T extends Resource = Resource>(resourceType: string, id: string): Promise<T> {
    const type = checkType(resourceType);
    const reply = await this.send({ method: 'GET', path: `${type}/${checkId(id)}`, what: `read ${type}` });
    return expectResource<T>(reply.body, type, id);
  }

  async vread<T extends Resource = Resource>(resourceType: string, id: string, versionId: string): Promise<T> {
    const type = checkType(resourceType);
    const reply = await this.send({
      method: 'GET', path: `${type}/${checkId(id)}/_history/${checkId(versionId, 'versionId')}`, what: `vread ${type}`,
    });
    return expectResource<T>(reply.body, type, id, versionId);
  }

  async update<T extends Resource>(resource: T, options: { ifMatch?: string } = {}): Promise<WriteResult<T>> {
    const type = checkType(resource.resourceType);
    if (!resource.id) throw badRequest('An update needs the resource id', `${type}.id`);
    const id = checkId(resource.id);
    const reply = await this.send({
      method: 'PUT', path: `${type}/${id}`, what: `update ${type}`, body: resource,
      headers: {
        prefer: 'return=representation',
        ...(options.ifMatch !== undefined ? { 'if-match': `W/"${checkId(options.ifMatch, 'If-Match')}"` } : {}),
      },
    });
    const stored = await this.writtenResource<T>(reply, type);
    return { resource: stored, outcome: reply.status === 201 ? 'created' : 'updated' };
  }

  async delete(resourceType: string, id: string, options: { ifMatch?: string } = {}): Promise<void> {
    const type = checkType(resourceType);
    const path = `${type}/${checkId(id)}`;
    if (options.ifMatch === undefined) {
      // Deleting what is absent or already deleted succeeds (the port's delete is idempotent).
      await this.send({ method: 'DELETE', path, what: `delete ${type}`, alsoOk: [404, 410] });
      return;
    }
    // An absent or deleted resource has no current version: If-Match cannot hold.
    const reply = await this.send({ method: 'DELETE', path, what: `delete ${type}`, alsoOk: [404, 410], headers: { 'if-match': `W/"${checkId(options.ifMatch, 'If-Match')}"` } });
    if (reply.status === 404 || reply.status === 410) throw preconditionFailed(`version conflict on ${type}/${id}`);
  }

  async search(request: SearchRequest): Promise<SearchResult> {
    const system = !RESOURCE_TYPE.test(request.resourceType ?? '') && (request.types?.length ?? 0) > 0;
    const type = system ? '' : checkType(request.resourceType);
    const what = `search ${type || 'system'}`;
    // the query without paging; the first page asks for `_count`, later ones follow the upstream's links
    const { offset, count, ...rest } = request;
    const query = searchQuery(rest as SearchRequest);
    const first = count === undefined ? `${type}${query}` : `${type}${query}${query ? '&' : '?'}_count=${count}`;
    const page = await this.paging.page(`${what}\n${type}${query}`, type, first, offset ?? 0, count, async (target) => {
      const reply = await this.send({ method: 'GET', ...('url' in target ? { url: target.url, path: '' } : { path: target.path }), what });
      return searchPage(expectBundle(reply.body, 'searchset'), reply.next);
    }, resourceKey, what);
    return { resources: page.items, included: page.included, hasMore: page.hasMore };
  }

  async history(request: HistoryRequest): Promise<HistoryResult> {
    let path = '_history';
    if (request.resourceType) {
      const type = checkType(request.resourceType);
      path = request.id ? `${type}/${checkId(request.id)}/_history` : `${type}/_history`;
    } else if (request.id) {
      throw badRequest('Instance history needs a resource type');
    }
    const what = `history ${request.resourceType ?? 'system'}`;
    const first = path + historyQuery({ count: request.count, since: request.since });
    const page = await this.paging.page(`${what}\n${path}${historyQuery({ since: request.since })}`, request.resourceType ?? '', first, request.offset, request.count, async (target) => {
      const reply = await this.send({ method: 'GET', ...('url' in target ? { url: target.url, path: '' } : { path: target.path }), what });
      const bundle = expectBundle(reply.body, 'history');
      const entries = (bundle.entry ?? []).map(historyEntry).filter((e): e is HistoryEntry => e !== undefined);
      return { items: entries, included: [], ...(reply.next !== undefined ? { next: reply.next } : {}) };
    }, (e) => `${e.resourceType}/${e.id}/${e.versionId}`, what);
    return { entries: page.items, hasMore: page.hasMore };
  }

  async transaction(bundle: Bundle): Promise<Bundle> {
    if (bundle?.resourceType !== 'Bundle' || bundle.type !== 'transaction') {
      throw badRequest('A transaction needs a Bundle of type "transaction"', 'Bundle.type');
    }
    const reply = await this.send({ method: 'POST', path: '', what: 'transaction', body: bundle });
    const response = expectBundle(reply.body, 'transaction-response');
    return { ...response, ...(response.entry ? { entry: response.entry.map((e) => this.transactionEntry(e)) } : {}) };
  }

  /**
   * One entry of the upstream's transaction-response, built from what it says rather than passed
   * on: an upstream that names itself by another address than UPSTREAM_FHIR_URL (an internal host
   * name behind its load balancer) would otherwise hand that address to clients in `fullUrl` or
   * `location`, which the base rewriting cannot know. `fullUrl` is the resource on the proxy's base,
   * `location` the relative `Type/id/_history/vid` it names, and the upstream's free-text `outcome`
   * is left out (a client's write answers carry GlucoGuard's own, under Prefer).
   */
  private transactionEntry(entry: BundleEntry): BundleEntry {
    const resource = entry.resource;
    const response = entry.response;
    const location = /([A-Z][A-Za-z]+\/[A-Za-z0-9\-.]{1,64}(?:\/_history\/[A-Za-z0-9\-.]{1,64})?)\/?$/.exec(response?.location ?? '')?.[1];
    return {
      ...(resource?.id && RESOURCE_TYPE.test(resource.resourceType) && ID.test(resource.id) ? { fullUrl: `${this.client.proxyBase}/${resource.resourceType}/${resource.id}` } : {}),
      ...(resource ? { resource } : {}),
      ...(response ? {
        response: {
          status: response.status,
          ...(location ? { location } : {}),
          ...(response.etag ? { etag: response.etag } : {}),
          ...(response.lastModified ? { lastModified: response.lastModified } : {}),
        },
      } : {}),
    };
  }

  async close(): Promise<void> {
    // fetch's connection pool is global and idles out by itself; nothing is held per adapter.
  }

  private send(x: FhirExchange): Promise<FhirReply> {
    // after a write, pages of its type are read afresh rather than from what was fetched before it
    if (x.method !== 'GET') this.paging.forgetPages(/^[A-Z][A-Za-z]+/.exec(x.path)?.[0]);
    return this.client.exchange({ ...x, caller: this.caller });
  }

  /** The resource a create/update returned, or (when upstream ignored Prefer) the version its Location names. */
  private async writtenResource<T extends Resource>(reply: FhirReply, type: string): Promise<T> {
    const body = reply.body as Resource | undefined;
    if (body?.resourceType === type) return body as T;
    const match = reply.location && /([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/([A-Za-z0-9\-.]{1,64}))?\/?$/.exec(reply.location);
    if (match && match[1] === type) {
      return match[3] ? this.vread<T>(type, match[2]!, match[3]) : this.read<T>(type, match[2]!);
    }
    this.logger?.warn({ what: `write ${type}`, status: reply.status }, 'upstream write answered neither the resource nor a Location');
    throw upstreamError('Upstream FHIR server sent an invalid response');
  }
}

function checkType(resourceType: string | undefined): string {
  if (!resourceType || !RESOURCE_TYPE.test(resourceType)) throw badRequest('Invalid resource type', 'resourceType');
  return resourceType;
}

function checkId(id: string, what = 'id'): string {
  // `.` and `..` match the FHIR id pattern but would walk up the upstream URL path.
  if (!ID.test(id) || /^\.+$/.test(id)) throw badRequest(`Invalid ${what}`);
  return id;
}

/**
 * The resource a read or vread answered, which must be the one asked for: another id (or, for a
 * vread, another version) would be served to the client under the URL it asked for. A version the
 * upstream leaves unnamed is taken as the one asked for.
 */
function expectResource<T extends Resource>(body: unknown, type: string, id: string, versionId?: string): T {
  const resource = body as Resource | undefined;
  const version = resource?.meta?.versionId;
  if (resource?.resourceType !== type || resource.id !== id || (versionId !== undefined && version !== undefined && version !== versionId)) {
    throw upstreamError('Upstream FHIR server sent an invalid response');
  }
  return body as T;
}

function expectBundle(body: unknown, type: Bundle['type']): Bundle {
  const bundle = body as Bundle | undefined;
  if (bundle?.resourceType !== 'Bundle' || (bundle.type !== undefined && bundle.type !== type)) {
    throw upstreamError('Upstream FHIR server sent an invalid response');
  }
  return bundle;
}

/** The matches and includes of one upstream searchset page (mode `outcome` entries are warnings, not data). */
function searchPage(bundle: Bundle, next: string | undefined): FetchedPage<Resource> {
  const items: Resource[] = [];
  const included: Resource[] = [];
  for (const entry of bundle.entry ?? []) {
    if (!entry.resource) continue;
    const mode = entry.search?.mode;
    if (mode === 'include') included.push(entry.resource);
    else if (mode === undefined || mode === 'match') items.push(entry.resource);
  }
  return { items, included, ...(next !== undefined ? { next } : {}) };
}

function resourceKey(r: Resource): string {
  return `${r.resourceType}/${r.id ?? ''}/${r.meta?.versionId ?? ''}`;
}

/**
 * One history entry (http.html#history): the method from `request.method` (PATCH counts as PUT);
 * id, version and time from the resource, else from `request.url`, `response.etag` and
 * `response.lastModified`. Servers that omit `request` get POST for version "1", PUT otherwise, and
 * DELETE for entries without a resource.
 */
function historyEntry(entry: BundleEntry): HistoryEntry | undefined {
  const resource = entry.resource;
  const fromUrl = /([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/([A-Za-z0-9\-.]{1,64}))?\/?$/
    .exec(entry.request?.url?.split('?')[0] ?? entry.fullUrl ?? entry.response?.location ?? '');
  const resourceType = resource?.resourceType ?? fromUrl?.[1];
  const id = resource?.id ?? fromUrl?.[2];
  const versionId = resource?.meta?.versionId ?? etagVersion(entry.response?.etag) ?? fromUrl?.[3];
  const lastUpdated = resource?.meta?.lastUpdated ?? httpDateToInstant(entry.response?.lastModified);
  if (!resourceType || !id || !versionId || !lastUpdated) return undefined;
  const requested = entry.request?.method;
  const method: HistoryEntry['method'] = requested === 'DELETE' || (!requested && !resource) ? 'DELETE'
    : requested === 'POST' || (!requested && versionId === '1') ? 'POST' : 'PUT';
  return { resourceType, id, versionId, lastUpdated, method, ...(resource && method !== 'DELETE' ? { resource } : {}) };
}

function etagVersion(etag: string | undefined): string | undefined {
  return etag ? /^(?:W\/)?"?([^"]+)"?$/.exec(etag)?.[1] : undefined;
}

function httpDateToInstant(value: string | undefined): string | undefined {
  if (!value) return undefined;
  const time = Date.parse(value);
  return Number.isNaN(time) ? undefined : new Date(time).toISOString();
}

/** How the upstream is reached, for the start-up log: auth mode and Backend Services client, never a secret. */
function accessOf(config: UpstreamConfig): string {
  switch (config.auth) {
    case 'none': return 'auth none';
    case 'bearer': return 'auth bearer (static token)';
    case 'backend-services':
      return `auth backend-services (client ${config.clientId ?? '?'}, token URL ${publicLocation(config.tokenUrl ?? '')}, `
        + `${config.alg ?? 'RS384'}${config.kid ? `, kid ${config.kid}` : ''}, scope ${config.scope ?? 'system/*.rs'})`;
  }
}

/** The upstream base for start-up logs, without any userinfo or query that could hold a secret. */
function publicLocation(base: string): string {
  try {
    const u = new URL(base);
    return `${u.protocol}//${u.host}${u.pathname}`.replace(/\/+$/, '');
  } catch {
    return '(invalid upstream URL)';
  }
}
