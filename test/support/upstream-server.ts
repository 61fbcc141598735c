/**
 * A real FHIR R4 server for tests, standing in for HAPI/Epic/Cerner behind UPSTREAM_FHIR_URL: a node
 * http server on 127.0.0.1 (port 0) routing through @medplum/fhir-router's `FhirRouter` onto an
 * in-memory repository (`UpstreamMemoryRepository`, a MemoryRepository that also keeps real version
 * history and tombstones).
 *
 * What it does like a real server:
 * - read, vread, create (server-assigned id, `If-None-Exist`), update (`If-Match`), delete (then 410),
 *   search with `_count`/`_offset` paging (`next`/`previous` links), `_include`/`_revinclude`
 *   (search mode `include`), `_sort`, instance/type/system `_history` (`_count`, `_offset`, `_since`,
 *   entries with `request` and `response`), transaction/batch Bundles, `GET metadata`;
 * - absolute URLs of its own base in `fullUrl`, `link`, `Location`; `ETag` and `Last-Modified`;
 * - with `opaquePaging`, paging as Epic and Oracle Health do: `_offset` is ignored, and `next` /
 *   `previous` links carry an opaque `_page` token instead;
 * - optional bearer-token enforcement, and a SMART Backend Services token endpoint (`tokenUrl`) that
 *   verifies `private_key_jwt` client assertions (RS384/ES384) against given public JWKs.
 *
 * Test hooks: `requests` (what the server received), `tokenRequests`, `setDelay(ms)` (slow upstream),
 * `intercept(fn)` (answer instead of the router: 5xx, odd bodies), `transform(fn)` (alter outgoing
 * bodies), `revokeTokens()` (make issued tokens fail with 401), `repo.tamper()` (change stored data
 * without a new version, for integrity tests), and direct access to `repo`.
 *
 * Usage:
 *   const upstream = await startUpstreamFhirServer();            // open server
 *   const upstream = await startUpstreamFhirServer({ bearerTokens: ['s3cret'] });
 *   const upstream = await startUpstreamFhirServer({ backendServices: { clientId: 'gg', publicJwks: [jwk] } });
 *   …  new UpstreamRepository({ config: { url: upstream.url, … } })  …
 *   await upstream.close();
 */
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  OperationOutcomeError, Operator, deepClone, evalFhirPath, generateId, getSearchParameter, getStatus, gone,
  normalizeOperationOutcome, notFound, type SearchRequest, type WithId,
} from '@medplum/core';
import { FhirRouter, MemoryRepository, type ReadHistoryOptions } from '@medplum/fhir-router';
import type {
  Bundle, BundleEntry, BundleLink, OperationOutcome, Reference, Resource,
} from '@medplum/fhirtypes';
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify, type JWK } from 'jose';
import { afterAll, beforeAll } from '@jest/globals';
import { loadFhirDefinitions } from '../../src/fhir/definitions.js';
import { startTestApp, type TestApp } from './app.js';

export interface UpstreamServerOptions {
  /** Path of the FHIR base on the server; default `/fhir`. */
  basePath?: string;
  /**
   * Require `Authorization: Bearer <token>` on every FHIR request; accepted are these static tokens
   * and any token the Backend Services endpoint issued (and has not expired or been revoked).
   */
  bearerTokens?: string[];
  /** Serve a SMART Backend Services token endpoint at `tokenUrl`; turns bearer enforcement on. */
  backendServices?: {
    clientId: string;
    /** Public keys the client registered (its JWKS); assertions must name one by `kid`. */
    publicJwks: JWK[];
    /** `expires_in` of issued tokens; default 300. */
    tokenLifetimeSeconds?: number;
  };
  /** Delay before answering any request, in ms (see also setDelay). */
  delayMs?: number;
  /**
   * Page only by the server's own links, as Epic and Oracle Health do: a request's `_offset` is
   * ignored (the first page again), and `next`/`previous` links carry an opaque `_page` token.
   */
  opaquePaging?: boolean;
}

export interface RecordedRequest {
  method: string;
  /** Path and query as received, e.g. `/fhir/Patient/1`. */
  url: string;
  headers: IncomingHttpHeaders;
  /** Parsed JSON body, when there was one. */
  body?: unknown;
}

export interface TokenRequestRecord {
  /** The form fields received (the client assertion included). */
  form: Record<string, string>;
  /** Decoded assertion header and claims when it verified. */
  assertion?: { header: Record<string, unknown>; claims: Record<string, unknown> };
  /** OAuth error answered, when refused. */
  error?: string;
}

/** A response an interceptor sends instead of the FHIR router's. */
export interface InterceptedResponse {
  status: number;
  headers?: Record<string, string>;
  /** Sent as JSON when an object, as-is when a string. */
  body?: unknown;
}

export type Interceptor = (req: RecordedRequest) => InterceptedResponse | undefined | Promise<InterceptedResponse | undefined>;
export type Transformer = (req: RecordedRequest, status: number, body: Resource) => Resource;

export interface UpstreamFhirServer {
  /** FHIR base URL, e.g. `http://127.0.0.1:41234/fhir`. */
  url: string;
  /** `http://127.0.0.1:PORT`. */
  origin: string;
  /** Backend Services token endpoint (answers 404 unless `backendServices` was given). */
  tokenUrl: string;
  repo: UpstreamMemoryRepository;
  /** Every FHIR request received, oldest first (token requests are in tokenRequests). */
  requests: RecordedRequest[];
  tokenRequests: TokenRequestRecord[];
  /** Delay every later response by `ms` (0 to stop). */
  setDelay(ms: number): void;
  /** Answer FHIR requests with `fn` when it returns a response; `undefined` removes the interceptor. */
  intercept(fn: Interceptor | undefined): void;
  /** Pass every outgoing FHIR body through `fn`; `undefined` removes it. */
  transform(fn: Transformer | undefined): void;
  /** Invalidate every token the token endpoint issued (the next FHIR request with one gets 401). */
  revokeTokens(): void;
  close(): Promise<void>;
}

interface VersionRecord {
  resourceType: string;
  id: string;
  versionId: string;
  lastUpdated: string;
  method: 'POST' | 'PUT' | 'DELETE';
  resource?: Resource;
}

export interface HistoryFilter {
  resourceType?: string;
  id?: string;
  since?: string;
  offset?: number;
  count?: number;
}

/**
 * MemoryRepository with what a real server has and Medplum's mock lacks: every version kept in order
 * with the interaction that made it, tombstones (read of a deleted resource → 410, and vread of the
 * deletion version → 410), type and system history, `_include`/`_revinclude`, and reference search
 * by bare id (`patient=123`).
 */
export class UpstreamMemoryRepository extends MemoryRepository {
  private readonly versions: VersionRecord[] = [];
  private readonly tombstones = new Set<string>();
  private nextMethod?: 'PUT';

  override async createResource<T extends Resource>(resource: T): Promise<WithId<T>> {
    // updateResource() calls this synchronously, so the flag it set is read before any other request runs.
    const method = this.nextMethod ?? 'POST';
    this.nextMethod = undefined;
    const result = await super.createResource(resource);
    this.tombstones.delete(`${result.resourceType}/${result.id}`);
    this.versions.push({
      resourceType: result.resourceType, id: result.id, versionId: result.meta!.versionId!,
      lastUpdated: result.meta!.lastUpdated!, method, resource: deepClone(result),
    });
    return result;
  }

  override async updateResource<T extends Resource>(resource: T, options?: { ifMatch?: string }): Promise<WithId<T>> {
    this.nextMethod = 'PUT';
    try {
      return await super.updateResource(resource, options);
    } finally {
      this.nextMethod = undefined;
    }
  }

  override async deleteResource(resourceType: string, id: string): Promise<void> {
    await super.deleteResource(resourceType, id);
    this.tombstones.add(`${resourceType}/${id}`);
    this.versions.push({ resourceType, id, versionId: generateId(), lastUpdated: new Date().toISOString(), method: 'DELETE' });
  }

  override async readResource<T extends Resource>(resourceType: string, id: string): Promise<T> {
    if (this.tombstones.has(`${resourceType}/${id}`)) throw new OperationOutcomeError(gone);
    return super.readResource<T>(resourceType, id);
  }

  override async readVersion<T extends Resource>(resourceType: string, id: string, versionId: string): Promise<T> {
    const version = this.versions.find((v) => v.resourceType === resourceType && v.id === id && v.versionId === versionId);
    if (!version) throw new OperationOutcomeError(notFound);
    if (!version.resource) throw new OperationOutcomeError(gone);
    return deepClone(version.resource as T);
  }

  override async readHistory<T extends Resource>(resourceType: string, id: string, options?: ReadHistoryOptions): Promise<Bundle<T>> {
    return this.historyBundle({ resourceType, id, offset: options?.offset, count: options?.limit }).bundle as Bundle<T>;
  }

  /**
   * A history Bundle, newest first, with `request`/`response` on each entry, and the total number of
   * versions matching the filter (for paging links). Instance history of an unknown resource → 404.
   */
  historyBundle(filter: HistoryFilter): { bundle: Bundle; total: number } {
    let matching = this.versions.filter((v) =>
      (!filter.resourceType || v.resourceType === filter.resourceType) && (!filter.id || v.id === filter.id)
      && (!filter.since || v.lastUpdated >= filter.since));
    if (filter.id && !this.versions.some((v) => v.resourceType === filter.resourceType && v.id === filter.id)) {
      throw new OperationOutcomeError(notFound);
    }
    matching = [...matching].reverse();
    const offset = filter.offset ?? 0;
    const page = matching.slice(offset, filter.count === undefined ? undefined : offset + filter.count);
    const entry: BundleEntry[] = page.map((v) => ({
      ...(v.resource ? { resource: deepClone(v.resource) } : {}),
      request: { method: v.method, url: v.method === 'POST' ? v.resourceType : `${v.resourceType}/${v.id}` },
      response: {
        status: v.method === 'POST' ? '201 Created' : v.method === 'DELETE' ? '204 No Content' : '200 OK',
        etag: `W/"${v.versionId}"`,
        lastModified: new Date(v.lastUpdated).toUTCString(),
      },
    }));
    return { bundle: { resourceType: 'Bundle', type: 'history', total: matching.length, entry }, total: matching.length };
  }

  override async search<T extends Resource>(searchRequest: SearchRequest<T>): Promise<Bundle<WithId<T>>> {
    const { include, revInclude, ...plain } = searchRequest;
    const filters = plain.filters?.map((f) => {
      const param = getSearchParameter(plain.resourceType, f.code);
      const onlyTarget = param?.type === 'reference' && param.target?.length === 1 ? param.target[0] : undefined;
      return onlyTarget && f.value && !f.value.includes('/') && !f.value.includes(',') ? { ...f, value: `${onlyTarget}/${f.value}` } : f;
    });
    const bundle = await super.search({ ...plain, filters } as SearchRequest<T>);
    const entries: BundleEntry[] = (bundle.entry ?? []).map((e) => ({ ...e, search: { mode: 'match' } }));
    const seen = new Set(entries.map((e) => `${e.resource!.resourceType}/${e.resource!.id}`));
    const add = (r: Resource): void => {
      const key = `${r.resourceType}/${r.id}`;
      if (seen.has(key)) return;
      seen.add(key);
      entries.push({ resource: r, search: { mode: 'include' } });
    };
    const matches = entries.map((e) => e.resource!);
    for (const target of include ?? []) {
      const expression = getSearchParameter(target.resourceType, target.searchParam)?.expression;
      if (!expression) continue;
      for (const match of matches.filter((m) => m.resourceType === target.resourceType)) {
        for (const ref of evalFhirPath(expression, match) as Reference[]) {
          const [type, id] = (ref?.reference ?? '').split('/');
          if (!type || !id || (target.targetType && type !== target.targetType)) continue;
          try {
            add(await this.readResource(type, id));
          } catch {
            // Dangling references are skipped, as servers do.
          }
        }
      }
    }
    for (const target of revInclude ?? []) {
      for (const match of matches) {
        const found = await super.search({
          resourceType: target.resourceType as T['resourceType'],
          filters: [{ code: target.searchParam, operator: Operator.EQUALS, value: `${match.resourceType}/${match.id}` }],
        });
        for (const e of found.entry ?? []) add(e.resource!);
      }
    }
    return { ...bundle, entry: entries.length ? entries as BundleEntry<WithId<T>>[] : undefined };
  }

  /**
   * Changes the stored current version of a resource in place, without a new version or a new
   * lastUpdated: what an attacker with database access would do. For integrity tests.
   */
  tamper(resourceType: string, id: string, mutate: (resource: Resource) => void): void {
    const stored = (this as unknown as { resources: Map<string, Map<string, Resource>> }).resources.get(resourceType)?.get(id);
    if (!stored) throw new Error(`tamper: no ${resourceType}/${id}`);
    mutate(stored);
    const version = this.versions.findLast((v) => v.resourceType === resourceType && v.id === id);
    if (version) version.resource = deepClone(stored);
  }
}

const FHIR_JSON = 'application/fhir+json; charset=utf-8';

/**
 * For a describe block (or a file): an upstream server and an app whose repository is it (`env` adds
 * settings), started before its tests and closed after them. Read the fields inside tests, not at
 * definition time.
 */
export function withUpstreamApp(env: Record<string, string> = {}): { t: TestApp; upstream: UpstreamFhirServer } {
  const ctx = {} as { t: TestApp; upstream: UpstreamFhirServer };
  beforeAll(async () => {
    ctx.upstream = await startUpstreamFhirServer();
    ctx.t = await startTestApp({ ...env, UPSTREAM_FHIR_URL: ctx.upstream.url });
  }, 60_000);
  afterAll(async () => {
    await ctx.t?.close();
    await ctx.upstream?.close();
  });
  return ctx;
}

/** Starts the server on 127.0.0.1, port 0. */
export async function startUpstreamFhirServer(options: UpstreamServerOptions = {}): Promise<UpstreamFhirServer> {
  // MemoryRepository's search and sort need the R4 search parameters.
  loadFhirDefinitions();
  const basePath = (options.basePath ?? '/fhir').replace(/\/+$/, '');
  const repo = new UpstreamMemoryRepository();
  const router = new FhirRouter();
  const requests: RecordedRequest[] = [];
  const tokenRequests: TokenRequestRecord[] = [];
  const issuedTokens = new Map<string, number>();
  const usedJtis = new Set<string>();
  const staticTokens = new Set(options.bearerTokens ?? []);
  const requireToken = staticTokens.size > 0 || options.backendServices !== undefined;
  const jwks = options.backendServices ? createLocalJWKSet({ keys: options.backendServices.publicJwks }) : undefined;
  const pendingDelays = new Set<{ timer: NodeJS.Timeout; resolve: () => void }>();
  let delayMs = options.delayMs ?? 0;
  let interceptor: Interceptor | undefined;
  let transformer: Transformer | undefined;
  let origin = '';
  let fhirBase = '';
  let tokenUrl = '';
  /** opaquePaging: the offset each `_page` token issued stands for. */
  const pageTokens = new Map<string, number>();

  const sleep = (ms: number): Promise<void> => new Promise((resolve) => {
    const pending = { timer: setTimeout(() => { pendingDelays.delete(pending); resolve(); }, ms), resolve };
    pendingDelays.add(pending);
  });

  const send = (res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void => {
    if (res.destroyed || res.headersSent) return;
    const text = body === undefined ? '' : typeof body === 'string' ? body : JSON.stringify(body);
    res.writeHead(status, { ...(text && typeof body !== 'string' ? { 'content-type': FHIR_JSON } : {}), ...headers });
    res.end(text);
  };

  async function handleToken(req: IncomingMessage, raw: string, res: ServerResponse): Promise<void> {
    const form = Object.fromEntries(new URLSearchParams(raw));
    const record: TokenRequestRecord = { form };
    tokenRequests.push(record);
    const refuse = (error: string, description: string): void => {
      record.error = error;
      send(res, error === 'invalid_client' ? 401 : 400, { error, error_description: description }, { 'content-type': 'application/json' });
    };
    const bs = options.backendServices;
    if (!bs || !jwks || req.method !== 'POST') return send(res, 404, { error: 'not_found' }, { 'content-type': 'application/json' });
    if (form.grant_type !== 'client_credentials') return refuse('unsupported_grant_type', 'grant_type must be client_credentials');
    if (form.client_assertion_type !== 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer' || !form.client_assertion) {
      return refuse('invalid_request', 'client_assertion_type must be jwt-bearer with a client_assertion');
    }
    try {
      const header = decodeProtectedHeader(form.client_assertion);
      if (!header.kid) return refuse('invalid_client', 'client assertion header lacks kid');
      const { payload } = await jwtVerify(form.client_assertion, jwks, {
        algorithms: ['RS384', 'ES384'], issuer: bs.clientId, subject: bs.clientId, audience: tokenUrl,
      });
      const now = Math.floor(Date.now() / 1000);
      if (typeof payload.exp !== 'number' || payload.exp > now + 300 + 5) return refuse('invalid_client', 'exp must be at most 5 minutes ahead');
      if (typeof payload.jti !== 'string' || usedJtis.has(payload.jti)) return refuse('invalid_client', 'jti missing or replayed');
      usedJtis.add(payload.jti);
      record.assertion = { header: { ...header }, claims: { ...payload } };
    } catch {
      return refuse('invalid_client', 'client assertion did not verify');
    }
    const lifetime = bs.tokenLifetimeSeconds ?? 300;
    const token = randomBytes(24).toString('base64url');
    issuedTokens.set(token, Date.now() + lifetime * 1000);
    send(res, 200, { access_token: token, token_type: 'bearer', expires_in: lifetime, scope: form.scope ?? 'system/*.rs' },
      { 'content-type': 'application/json', 'cache-control': 'no-store' });
  }

  function authorized(headers: IncomingHttpHeaders): boolean {
    if (!requireToken) return true;
    const match = /^Bearer (.+)$/i.exec(headers.authorization ?? '');
    if (!match) return false;
    const token = match[1]!;
    if (staticTokens.has(token)) return true;
    const expires = issuedTokens.get(token);
    return expires !== undefined && expires > Date.now();
  }

  async function handleFhir(recorded: RecordedRequest, res: ServerResponse): Promise<void> {
    if (!authorized(recorded.headers)) {
      return send(res, 401, outcome('login', 'Unauthorized'), { 'www-authenticate': 'Bearer' });
    }
    const intercepted = interceptor ? await interceptor(recorded) : undefined;
    if (intercepted) return send(res, intercepted.status, intercepted.body, intercepted.headers);

    let relative = recorded.url.slice(basePath.length).replace(/^\/+/, '');
    const [path = '', query = ''] = relative.split(/\?(.*)/s);
    const params = new URLSearchParams(query);
    if (options.opaquePaging && recorded.method === 'GET') {
      // `_offset` means nothing here; only the server's own `_page` tokens move on
      params.delete('_offset');
      const page = params.get('_page');
      params.delete('_page');
      if (page !== null) {
        const at = pageTokens.get(page);
        if (at === undefined) return send(res, 410, outcome('not-found', 'Search page expired'));
        params.set('_offset', String(at));
      }
      relative = `${path}${params.size ? `?${params}` : ''}`;
    }
    const int = (name: string): number | undefined => (params.has(name) ? Number.parseInt(params.get(name)!, 10) : undefined);

    let status: number;
    let body: Resource;
    let total: number | undefined;
    try {
      const history = /^(?:([A-Z][A-Za-z]+)(?:\/([^/]+))?\/)?_history$/.exec(path);
      if (recorded.method === 'GET' && path === 'metadata') {
        [status, body] = [200, capabilityStatement()];
      } else if (recorded.method === 'GET' && history) {
        const result = repo.historyBundle({
          resourceType: history[1], id: history[2], since: params.get('_since') ?? undefined,
          offset: int('_offset'), count: int('_count'),
        });
        [status, body, total] = [200, result.bundle, result.total];
      } else {
        const requestBody = recorded.body as Resource | undefined;
        // A server assigns ids on create (http.html#create).
        if (recorded.method === 'POST' && /^[A-Z][A-Za-z]+$/.test(path) && requestBody && typeof requestBody === 'object') {
          delete requestBody.id;
        }
        // Update as create (http.html#upsert) answers 201; Medplum's router answers 200 to every update.
        const upsertTarget = recorded.method === 'PUT' ? /^([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})$/.exec(path) : null;
        const existedBefore = upsertTarget ? await repo.readResource(upsertTarget[1]!, upsertTarget[2]!).then(() => true, () => false) : true;
        const [outcomeResult, resource] = await router.handleRequest({
          method: recorded.method as 'GET', url: relative, pathname: '', body: requestBody, params: {}, query: {},
          headers: recorded.headers, config: { transactions: true },
        }, repo);
        status = getStatus(outcomeResult);
        if (status === 200 && !existedBefore) status = 201;
        body = resource ?? outcomeResult;
        if (body.resourceType === 'Bundle' && body.type === 'searchset') total = body.total;
      }
    } catch (err) {
      const failure = normalizeOperationOutcome(err);
      [status, body] = [getStatus(failure), failure];
    }

    body = absolutize(body, path, params, total);
    const headers: Record<string, string> = {};
    if (body.resourceType !== 'Bundle' && body.resourceType !== 'OperationOutcome' && body.id && body.meta?.versionId) {
      headers.etag = `W/"${body.meta.versionId}"`;
      if (body.meta.lastUpdated) headers['last-modified'] = new Date(body.meta.lastUpdated).toUTCString();
      if (status === 201) headers.location = `${fhirBase}/${body.resourceType}/${body.id}/_history/${body.meta.versionId}`;
    }
    if (transformer) body = transformer(recorded, status, body);
    send(res, status, body, headers);
  }

  /** Absolute fullUrls and paging links, as servers answer them. */
  function absolutize(body: Resource, path: string, params: URLSearchParams, total: number | undefined): Resource {
    if (body.resourceType !== 'Bundle') return body;
    const entry = body.entry?.map((e) => {
      const r = e.resource;
      const fromRequest = e.request?.url && e.request.url.includes('/') ? e.request.url : undefined;
      const fullUrl = r?.id && r.resourceType !== 'OperationOutcome' ? `${fhirBase}/${r.resourceType}/${r.id}`
        : fromRequest ? `${fhirBase}/${fromRequest}` : e.fullUrl;
      const response = e.response?.location && r?.meta?.versionId
        ? { ...e.response, location: `${e.response.location}/_history/${r.meta.versionId}` } : e.response;
      return { ...e, ...(fullUrl ? { fullUrl } : {}), ...(response ? { response } : {}) };
    });
    const link: BundleLink[] = [{ relation: 'self', url: `${fhirBase}/${path}${params.size ? `?${params}` : ''}` }];
    const count = params.has('_count') ? Number.parseInt(params.get('_count')!, 10) : undefined;
    const offset = params.has('_offset') ? Number.parseInt(params.get('_offset')!, 10) : 0;
    const pageAt = (at: number): string => {
      const p = new URLSearchParams(params);
      if (options.opaquePaging) {
        p.delete('_offset');
        const token = randomBytes(9).toString('base64url');
        pageTokens.set(token, at);
        p.set('_page', token);
      } else {
        p.set('_offset', String(at));
      }
      return `${fhirBase}/${path}?${p}`;
    };
    if (total !== undefined && count !== undefined && offset + count < total) link.push({ relation: 'next', url: pageAt(offset + count) });
    if (total !== undefined && count !== undefined && offset > 0) link.push({ relation: 'previous', url: pageAt(Math.max(0, offset - count)) });
    return { ...body, ...(entry ? { entry } : {}), ...(body.type === 'searchset' || body.type === 'history' ? { link } : {}) };
  }

  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      void (async () => {
        const raw = Buffer.concat(chunks).toString('utf8');
        const url = req.url ?? '/';
        if (delayMs > 0) await sleep(delayMs);
        if (url.split('?')[0] === new URL(tokenUrl).pathname) return handleToken(req, raw, res);
        if (url !== basePath && !url.startsWith(`${basePath}/`) && !url.startsWith(`${basePath}?`)) {
          return send(res, 404, outcome('not-found', 'Not a FHIR endpoint'));
        }
        let body: unknown;
        if (raw) {
          try {
            body = JSON.parse(raw);
          } catch {
            return send(res, 400, outcome('invalid', 'Body is not JSON'));
          }
        }
        const recorded: RecordedRequest = { method: req.method ?? 'GET', url, headers: req.headers, ...(body !== undefined ? { body: deepClone(body) } : {}) };
        requests.push(recorded);
        await handleFhir({ ...recorded, ...(body !== undefined ? { body } : {}) }, res);
      })().catch(() => send(res, 500, outcome('exception', 'Internal error')));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  fhirBase = `${origin}${basePath}`;
  tokenUrl = `${origin}/auth/token`;

  return {
    url: fhirBase,
    origin,
    tokenUrl,
    repo,
    requests,
    tokenRequests,
    setDelay: (ms) => { delayMs = ms; },
    intercept: (fn) => { interceptor = fn; },
    transform: (fn) => { transformer = fn; },
    revokeTokens: () => issuedTokens.clear(),
    close: async () => {
      for (const pending of pendingDelays) {
        clearTimeout(pending.timer);
        pending.resolve();
      }
      pendingDelays.clear();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function outcome(code: string, diagnostics: string): OperationOutcome {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: code as 'invalid', diagnostics }] };
}

function capabilityStatement(): Resource {
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    fhirVersion: '4.0.1',
    format: ['json'],
    rest: [{ mode: 'server', interaction: [{ code: 'transaction' }, { code: 'history-system' }] }],
  };
}
