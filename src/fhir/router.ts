/**
 * The FHIR R4 REST facade (https://hl7.org/fhir/R4/http.html), free of express: a FhirRequest in,
 * a FhirResponse out, never a thrown error. Authorization plugs in through AccessPolicy and
 * OutboundGuards (src/fhir/policy.ts); storage through the Repository port.
 */
import { toPeriod } from '@medplum/core';
import type { SearchRequest } from '@medplum/core';
import { applyPatch, type Operation } from 'rfc6902';
import type { Bundle, BundleEntry, BundleLink, CapabilityStatement, OperationOutcomeIssue, Parameters, Resource, TerminologyCapabilities } from '@medplum/fhirtypes';
import {
  badRequest, conflict, forbidden, GlucoGuardError, isGlucoGuardError, preconditionFailed, methodNotAllowed, notFound, scanLimitExceeded, unprocessable,
  unsupportedMediaType,
} from '../errors.js';
import type { Logger } from '../log.js';
import { metrics } from '../observability/metrics.js';
import { versionIdOf } from '../repository/deferred.js';
import { TamperedVersionError, type HistoryEntry, type HistoryRequest, type Repository, type SearchOptions } from '../repository/port.js';
import type { AccessContext } from './access.js';
import {
  conditionalReferences, entryRequest, processBatch, processTransaction, refuseConditionalReferences, withReferencesResolved, withRelativeEntryUrls,
} from './bundles.js';
import { isChained, resolveChains, type ChainContext } from './chains.js';
import { applyFhirPathPatch, isFhirPathPatch, parseFhirPathPatch } from './fhirpath-patch.js';
import { errorToResponse, informational, operationOutcome } from './outcomes.js';
import { PageTokens, pairsToQuery, queryOfText, queryPairs, toQueryString, type PagePosition } from './paging.js';
import { OPEN_POLICY, type AccessPolicy, type GuardOptions, type OutboundGuard } from './policy.js';
import { isSupportedType } from './resource-types.js';
import { asksForTotal, isResultParam, parseSearch, type SearchParseOptions } from './search.js';
import { parseSubsetting, subsetResource } from './subsetting.js';
import type { FhirRequest, FhirResponse, HttpMethod } from './types.js';
import { assertWellFormed, isJsonObject, type ProfileValidator } from './validation.js';

export interface FhirRouterOptions {
  repository: Repository;
  validator: ProfileValidator;
  /** Absolute FHIR base of the proxy (`https://host/fhir`), used in fullUrl, Location and links. */
  fhirBase: string;
  /** Key for page-token MACs (derived from the master key). */
  pageTokenKey: Buffer;
  defaultPageSize: number;
  maxPageSize: number;
  /** SearchOptions.scanLimit of the searches it runs for requests; 0 or absent = none. */
  searchScanLimit?: number;
  /** Returns the CapabilityStatement for `GET metadata`. */
  capabilityStatement: () => Resource;
  policy?: AccessPolicy;
  guards?: OutboundGuard[];
  logger?: Logger;
  /** Called once per handled request with its response (the access log); must not throw. */
  onResponse?: (request: FhirRequest, response: FhirResponse) => void;
  /**
   * Awaited before a request that may read AuditEvents (their type, compartment, system-level and
   * Bundle requests, operations): the access log stores what `onResponse` recorded first, so its
   * readers see every request answered before theirs.
   */
  beforeAuditRead?: () => Promise<void>;
  /**
   * Tag systems only the server writes (the integrity guard's `urn:glucoguard:integrity`): a tag of
   * one of them in a written resource is dropped, as meta.versionId is, so a resource read with its
   * tags and written back (read, modify, PUT) does not store the server's verdict of that read.
   */
  serverTagSystems?: readonly string[];
}

/**
 * Writes of one resource type handled by another module instead of the repository (e.g. Consent:
 * a grant goes to the chain first). Such writes are refused inside transactions (policy.mayWrite).
 */
export interface TypeWriteHandler {
  /** Fills what a client may leave out, before the body is validated (a Consent's category and policy). */
  defaults?(resource: Resource): Resource;
  create(request: FhirRequest): Promise<FhirResponse>;
  update(request: FhirRequest, id: string): Promise<FhirResponse>;
  delete(request: FhirRequest, id: string): Promise<FhirResponse>;
}

/** A FHIR operation (`$name`) registered by another module (CGM ingest, summaries, export…). */
export interface OperationHandler {
  name: string;
  /** Where it can be invoked: system (`/$x`), type (`/Patient/$x`) or instance (`/Patient/1/$x`). */
  levels: ('system' | 'type' | 'instance')[];
  /** Resource types it applies to at type/instance level; empty means any. */
  resourceTypes?: string[];
  methods: HttpMethod[];
  /**
   * The handler authorizes its requester itself, because the interaction depends on its input
   * (`$validate` with mode create, update or delete). Without it the router checks `operation`.
   */
  authorizesItself?: boolean;
  handle(request: FhirRequest, target: { resourceType?: string; id?: string }): Promise<FhirResponse>;
}

type Route =
  | { kind: 'metadata' }
  | { kind: 'bundle' }
  | { kind: 'system-history' }
  | { kind: 'type'; type: string }
  | { kind: 'type-search'; type: string }
  | { kind: 'type-history'; type: string }
  | { kind: 'instance'; type: string; id: string }
  | { kind: 'instance-history'; type: string; id: string }
  | { kind: 'vread'; type: string; id: string; vid: string }
  | { kind: 'operation'; name: string; type?: string; id?: string };

/** The page-token field that carries a history walk's snapshot (HistoryRequest.snapshot); never a client parameter. */
const HISTORY_SNAPSHOT = '_snapshot';
const FHIR_ID = /^[A-Za-z0-9\-.]{1,64}$/;
/** The Allow header of a 405 (RFC 9110 §15.5.6), per kind of target. */
const READ_ONLY = ['GET', 'HEAD'];
const TYPE_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH']; // PUT, DELETE and PATCH with search parameters (conditional)
const INSTANCE_METHODS = ['GET', 'HEAD', 'PUT', 'DELETE', 'PATCH'];
/**
 * The answer to `_total=estimate|accurate`: a hint servers may decline (search.html#total), and this
 * one always does, as a count over data filtered for the requester would reveal what was withheld.
 */
const NO_TOTAL: OperationOutcomeIssue = {
  severity: 'information',
  code: 'informational',
  diagnostics: 'Bundle.total is not given: this server does not count matches over data filtered for the requester; follow the next links to the end',
};

export class FhirRouter {
  private readonly operations = new Map<string, OperationHandler>();
  private readonly writeHandlers = new Map<string, TypeWriteHandler>();
  private readonly policy: AccessPolicy;
  private readonly guards: OutboundGuard[];
  private readonly pages: PageTokens;
  /**
   * How the searches of requests run (the scan limit). Every match passes the guards, so a version
   * whose stored bytes do not authenticate comes as its stand-in, for the integrity check to
   * withhold and report (SearchOptions.standIns).
   */
  private readonly searchOptions: SearchOptions;
  /** searchOptions for a search page (SearchOptions.deferred). */
  private readonly deferredSearch: SearchOptions;

  constructor(private readonly options: FhirRouterOptions) {
    this.searchOptions = { scanLimit: options.searchScanLimit ?? 0, standIns: true };
    this.deferredSearch = { ...this.searchOptions, deferred: true };
    this.policy = options.policy ?? OPEN_POLICY;
    this.guards = options.guards ?? [];
    this.pages = new PageTokens(options.pageTokenKey);
  }

  get repository(): Repository {
    return this.options.repository;
  }

  /** Adds a `$operation`. */
  registerOperation(op: OperationHandler): void {
    this.operations.set(op.name, op);
  }

  /** Hands create/update/delete of `type` to another module (after the type-level authorize). */
  registerWriteHandler(type: string, handler: TypeWriteHandler): void {
    this.writeHandlers.set(type, handler);
  }

  /** Types whose writes another module handles (no conditional update or delete for them). */
  handledWriteTypes(): string[] {
    return [...this.writeHandlers.keys()];
  }

  registeredOperations(): OperationHandler[] {
    return [...this.operations.values()];
  }

  /** Handles one request; errors become OperationOutcome responses. */
  async handle(request: FhirRequest): Promise<FhirResponse> {
    let response: FhirResponse;
    try {
      if (this.options.beforeAuditRead && mayReadAuditEvents(request)) await this.options.beforeAuditRead();
      response = await this.dispatch(request);
    } catch (err) {
      response = errorToResponse(err, this.options.logger);
      if (isGlucoGuardError(err) && err.issues[0]?.code === 'too-costly') {
        const type = request.path.split('/')[0] ?? '';
        metrics.searchesTooCostly.inc({ type: isSupportedType(type) ? type : 'other' });
      }
    }
    this.options.onResponse?.(request, response);
    return response;
  }

  private async dispatch(req: FhirRequest): Promise<FhirResponse> {
    const method = req.method === 'HEAD' ? 'GET' : req.method;
    const route = this.route(req.path, method);
    switch (route.kind) {
      case 'metadata':
        if (method !== 'GET') throw methodNotAllowed('metadata supports GET only', READ_ONLY);
        return { status: 200, body: capabilitiesOf(this.options.capabilityStatement(), req.query.mode) };
      case 'bundle':
        if (method !== 'POST') throw methodNotAllowed('The FHIR base supports POST of batch/transaction Bundles', ['POST']);
        return this.bundle(req);
      case 'system-history':
        if (method !== 'GET') throw methodNotAllowed('_history supports GET only', READ_ONLY);
        return this.history(req, undefined, undefined);
      case 'type':
        if (method === 'GET') return this.search(req, route.type, req.query);
        if (method === 'POST') return this.writeHandlers.has(route.type) ? this.handledWrite(req, route.type, 'create') : this.create(req, route.type);
        if ((method === 'PUT' || method === 'DELETE' || method === 'PATCH') && !this.writeHandlers.has(route.type)) {
          if (method === 'PATCH') return this.conditionalPatch(req, route.type);
          return method === 'PUT' ? this.conditionalUpdate(req, route.type) : this.conditionalDelete(req, route.type);
        }
        throw methodNotAllowed(`${method} is not allowed on ${route.type}`, this.writeHandlers.has(route.type) ? ['GET', 'HEAD', 'POST'] : TYPE_METHODS);
      case 'type-search':
        if (method !== 'POST') throw methodNotAllowed('_search supports POST only', ['POST']);
        return this.search(req, route.type, mergeQuery(req.query, formBody(req)));
      case 'type-history':
        if (method !== 'GET') throw methodNotAllowed('_history supports GET only', READ_ONLY);
        return this.history(req, route.type, undefined);
      case 'instance':
        if (method === 'GET') return this.read(req, route.type, route.id);
        if (this.writeHandlers.has(route.type) && (method === 'PUT' || method === 'DELETE')) {
          return this.handledWrite(req, route.type, method === 'PUT' ? 'update' : 'delete', route.id);
        }
        if (method === 'PUT') return this.update(req, route.type, route.id);
        if (method === 'DELETE') return this.delete(req, route.type, route.id);
        if (method === 'PATCH' && !this.writeHandlers.has(route.type)) return this.patch(req, route.type, route.id);
        throw methodNotAllowed(`${method} is not allowed on ${route.type}/${route.id}`, this.writeHandlers.has(route.type) ? ['GET', 'HEAD', 'PUT', 'DELETE'] : INSTANCE_METHODS);
      case 'instance-history':
        if (method !== 'GET') throw methodNotAllowed('_history supports GET only', READ_ONLY);
        return this.history(req, route.type, route.id);
      case 'vread':
        if (method !== 'GET') throw methodNotAllowed('vread supports GET only', READ_ONLY);
        return this.vread(req, route.type, route.id, route.vid);
      case 'operation':
        return this.operation(req, route);
    }
  }

  private route(rawPath: string, method: string): Route {
    const parts = rawPath.split('/').filter((p) => p.length > 0);
    if (parts.length === 0) return { kind: 'bundle' };
    const [a, b, c, d] = parts;
    if (parts.length === 1 && a === 'metadata') return { kind: 'metadata' };
    if (parts.length === 1 && a === '_history') return { kind: 'system-history' };
    // system-level search (http.html#search: [base]/_search) would read as a type named "_search"
    if (parts.length === 1 && a === '_search') throw badRequest('System-level search is not supported: search one resource type ([base]/Type?… or [base]/Type/_search)');
    if (a!.startsWith('$')) return this.checkOperation({ kind: 'operation', name: a!.slice(1) }, parts.length === 1);
    const type = this.checkType(a!);
    if (parts.length === 1) return { kind: 'type', type };
    if (b === '_search' && parts.length === 2) return { kind: 'type-search', type };
    if (b === '_history' && parts.length === 2) return { kind: 'type-history', type };
    if (b!.startsWith('$')) return this.checkOperation({ kind: 'operation', name: b!.slice(1), type }, parts.length === 2);
    // an id that cannot exist is not found; one a PUT would create with (update as create) is a bad request
    if (method === 'PUT' && parts.length === 2 && !FHIR_ID.test(b!)) throw badRequest(`"${b!.slice(0, 64)}" is not a valid FHIR id (1–64 of A–Z, a–z, 0–9, "-" and ".")`, 'id');
    const id = checkId(b!);
    if (parts.length === 2) return { kind: 'instance', type, id };
    if (c === '_history' && parts.length === 3) return { kind: 'instance-history', type, id };
    if (c === '_history' && parts.length === 4) return { kind: 'vread', type, id, vid: checkId(d!) };
    if (c!.startsWith('$') && parts.length === 3) return this.checkOperation({ kind: 'operation', name: c!.slice(1), type, id }, true);
    throw notFound(`Unknown path`);
  }

  private checkType(type: string): string {
    if (!isSupportedType(type)) throw notFound(`Unknown resource type "${type.slice(0, 64)}"`);
    return type;
  }

  private checkOperation(route: Route & { kind: 'operation' }, ok: boolean): Route {
    if (!ok) throw notFound('Unknown path');
    return route;
  }

  // ---- instance level ------------------------------------------------------------------------

  private async read(req: FhirRequest, type: string, id: string): Promise<FhirResponse> {
    await this.policy.authorize(req.access, 'read', type);
    const subsetting = parseSubsetting(type, req.query, { lenient: preferLenient(req), including: false });
    const resource = await this.fetchFor(req.access, type, id, () => this.options.repository.read(type, id));
    const { allowed, issues } = await this.guard(req.access, [resource]);
    if (allowed.length === 0) return this.withheld(issues, req.access);
    if (notModified(req, resource)) return { status: 304, headers: versionHeaders(resource) };
    return { status: 200, body: subsetting ? subsetResource(allowed[0]!, subsetting) : allowed[0]!, headers: versionHeaders(resource) };
  }

  private async vread(req: FhirRequest, type: string, id: string, vid: string): Promise<FhirResponse> {
    await this.policy.authorize(req.access, 'vread', type);
    const subsetting = parseSubsetting(type, req.query, { lenient: preferLenient(req), including: false });
    const resource = await this.fetchFor(req.access, type, id, () => this.options.repository.vread(type, id, vid), vid);
    const { allowed, issues } = await this.guard(req.access, [resource]);
    if (allowed.length === 0) return this.withheld(issues, req.access);
    if (notModified(req, resource)) return { status: 304, headers: versionHeaders(resource) };
    return { status: 200, body: subsetting ? subsetResource(allowed[0]!, subsetting) : allowed[0]!, headers: versionHeaders(resource) };
  }

  private async handledWrite(req: FhirRequest, type: string, interaction: 'create' | 'update' | 'delete', id?: string): Promise<FhirResponse> {
    await this.policy.authorize(req.access, interaction, type);
    const handler = this.writeHandlers.get(type)!;
    // validated like any write before the module reads it (422 listing the issues), with the module's
    // defaults filled in first (what it would add itself is not the client's to send); its own checks follow
    if (interaction !== 'delete' && isJsonObject(req.body) && req.body.resourceType === type) {
      const body = handler.defaults ? handler.defaults(req.body as unknown as Resource) : (req.body as unknown as Resource);
      this.prepareWrite(body);
      req = { ...req, body: body as unknown as FhirRequest['body'] };
    }
    if (interaction === 'create') return handler.create(req);
    return interaction === 'update' ? handler.update(req, id!) : handler.delete(req, id!);
  }

  private async create(req: FhirRequest, type: string): Promise<FhirResponse> {
    await this.policy.authorize(req.access, 'create', type);
    const resource = resourceBody(req, type);
    delete resource.id;
    refuseConditionalReferences(resource);
    this.prepareWrite(resource);
    if (!(await this.policy.mayWrite(req.access, resource, 'create'))) throw forbiddenWrite();
    let ifNoneExist = ifNoneExistQuery(type, req.headers['if-none-exist'], 'If-None-Exist');
    if (ifNoneExist !== undefined) {
      this.checkConditionalQuery(type, ifNoneExist);
      // chains and _has become the filters they select, for the requester (or nothing matches: a plain create)
      const resolved = await this.resolvedCriteria(req.access, type, queryOfText(ifNoneExist.replace(/^\?/, '')));
      ifNoneExist = resolved ? toQueryString(queryPairs(resolved)) : undefined;
    }
    if (ifNoneExist !== undefined && req.access.kind !== 'open') {
      // For a limited requester the match is decided over what they may see: answering 200 for a
      // match they cannot see would tell them it exists (a conditional-create oracle).
      const visible = await this.visibleMatches(req.access, type, ifNoneExist);
      if (visible.length > 1) throw preconditionFailed('If-None-Exist matches more than one resource');
      if (visible.length === 1) return this.writeResponse(req, visible[0]!, 200, 'Existing resource matched If-None-Exist', true);
      const created = await this.createUnlessVisibleMatch(req.access, type, resource, ifNoneExist);
      if (!created.created) return this.writeResponse(req, created.resource, 200, 'Existing resource matched If-None-Exist', true);
      return this.writeResponse(req, created.resource, 201, 'Created');
    }
    const result = await this.options.repository.create(resource, ifNoneExist !== undefined ? { ifNoneExist } : undefined);
    const status = result.outcome === 'created' ? 201 : 200;
    return this.writeResponse(req, result.resource, status, result.outcome === 'existing' ? 'Existing resource matched If-None-Exist' : 'Created');
  }

  private async update(req: FhirRequest, type: string, id: string): Promise<FhirResponse> {
    await this.policy.authorize(req.access, 'update', type);
    const resource = resourceBody(req, type);
    if (resource.id === undefined) throw badRequest('The resource must carry the id of the URL', 'id');
    if (resource.id !== id) throw badRequest(`Resource id "${resource.id}" does not match the URL id "${id}"`, 'id');
    refuseConditionalReferences(resource);
    this.prepareWrite(resource);
    // Absent first: what the body may say is asked only about a resource the requester can see (a
    // Patient body names its own id, so judging it first would tell a hidden id from a free one).
    const replaced = await this.versionToChange(req.access, type, id);
    if (!(await this.policy.mayWrite(req.access, resource, 'update', replaced))) throw forbiddenWrite();
    // RFC 9110 §13.1.2: `If-None-Match: *` creates only (the version the requester sees exists: 412)
    if (String(req.headers['if-none-match'] ?? '').split(',').some((t) => t.trim() === '*')
      && (replaced ?? (req.access.kind === 'open' ? await this.currentOf(type, id) : undefined))) {
      throw preconditionFailed(`${type}/${id} exists and the request said If-None-Match: * (create only)`);
    }
    const ifMatch = parseIfMatch(req.headers['if-match']);
    const result = await this.options.repository.update(resource, ifMatch !== undefined ? { ifMatch } : undefined);
    return this.writeResponse(req, result.resource, result.outcome === 'created' ? 201 : 200, 'Updated');
  }

  private async delete(req: FhirRequest, type: string, id: string): Promise<FhirResponse> {
    await this.policy.authorize(req.access, 'delete', type);
    const ifMatch = parseIfMatch(req.headers['if-match']);
    const current = await this.currentOf(type, id);
    // A resource the requester cannot see is absent to them: deleting it changes nothing and answers
    // like deleting an id never stored (with If-Match, like one: no current version to match).
    const visible = await this.mayChange(req.access, current);
    // checked here too, not only by the repository: an upstream server may ignore If-Match on DELETE
    if (ifMatch !== undefined && (!visible || current?.meta?.versionId !== ifMatch)) throw preconditionFailed(`If-Match ${ifMatch} is not the current version of ${type}/${id}`);
    if (!visible) return this.deletedResponse(req, type, id);
    if (current && !(await this.policy.mayWrite(req.access, current, 'delete'))) throw forbiddenWrite();
    await this.options.repository.delete(type, id, ifMatch !== undefined ? { ifMatch } : undefined);
    return this.deletedResponse(req, type, id);
  }

  private deletedResponse(req: FhirRequest, type: string, id: string): FhirResponse {
    if (preferReturn(req) === 'OperationOutcome') return { status: 200, body: informational(`Deleted ${type}/${id}`) };
    return { status: 204 };
  }

  /**
   * Conditional update (http.html#cond-update), `PUT [type]?[criteria]`, decided over the matches
   * the requester may see, as a conditional create is. One match: that resource is updated (an id
   * in the body must be its id, else 400). No match: the body is created; with an id, it is updated
   * as `PUT [type]/[id]` would be, except that an existing resource of that id that does not match
   * is a 409 (R5's rule: the criteria must not be a way to overwrite something else). More than one
   * match: 412. A match that appears between the search and the create is updated instead.
   */
  private async conditionalUpdate(req: FhirRequest, type: string): Promise<FhirResponse> {
    await this.policy.authorize(req.access, 'update', type);
    const asked = conditionalCriteria(req, 'update');
    const resource = resourceBody(req, type);
    refuseConditionalReferences(resource);
    this.prepareWrite(resource);
    const criteria = await this.resolvedCriteria(req.access, type, asked);
    for (let attempt = 0; ; attempt++) {
      const matches = criteria ? await this.visibleMatches(req.access, type, criteria) : [];
      if (matches.length > 1) throw preconditionFailed('The conditional update criteria match more than one resource');
      if (matches.length === 1) {
        const target = matches[0]!.id!;
        if (resource.id !== undefined && resource.id !== target) throw badRequest(`Resource id "${resource.id}" is not the id of the resource the criteria match`, 'id');
        return this.update({ ...req, body: { ...resource, id: target } }, type, target);
      }
      if (resource.id !== undefined) {
        const current = await this.currentOf(type, resource.id);
        if (current && (await this.mayChange(req.access, current))) throw conflict(`${type}/${resource.id} exists but does not match the criteria`);
        return this.update(req, type, resource.id); // one they cannot see answers as an id never stored does
      }
      await this.policy.authorize(req.access, 'create', type);
      if (!(await this.policy.mayWrite(req.access, resource, 'create'))) throw forbiddenWrite();
      // The repository re-checks the criteria as it creates (no duplicate from a race), for a
      // limited requester over what they may see (createUnlessVisibleMatch).
      const ifNoneExist = criteria ? toQueryString(queryPairs(criteria)) : undefined;
      const created = ifNoneExist !== undefined && req.access.kind !== 'open'
        ? await this.createUnlessVisibleMatch(req.access, type, resource, ifNoneExist)
        : await this.options.repository.create(resource, ifNoneExist !== undefined ? { ifNoneExist } : undefined)
          .then((r) => ({ resource: r.resource, created: r.outcome === 'created' }));
      if (created.created) return this.writeResponse(req, created.resource, 201, 'Created');
      if (attempt > 0) throw conflict('The resources matching the criteria changed while updating; try again');
    }
  }

  /**
   * patch (http.html#patch) with a JSON Patch document (RFC 6902, `application/json-patch+json`):
   * the current version the requester may change (as for an update; 404 otherwise) is patched,
   * validated and stored as a new version, with the same checks as an update. The patch applies to
   * the version it was read against: `If-Match` names it, or else the version current when the patch
   * is read; a version written in between is a 409 (with If-Match: 412), never silently overwritten.
   * A patch that does not apply (a failed `test`, a missing path) or that changes `resourceType`
   * or `id` is 422 and stores nothing.
   */
  private async patch(req: FhirRequest, type: string, id: string): Promise<FhirResponse> {
    const { current, patched, ifMatch } = await this.applyPatchRequest(req, type, id);
    refuseConditionalReferences(patched);
    this.prepareWrite(patched);
    if (!(await this.policy.mayWrite(req.access, patched, 'update', current))) throw forbiddenWrite();
    try {
      const result = await this.options.repository.update(patched, { ifMatch: current.meta!.versionId! });
      // not the requester's own content alone (the rest came from the store): it leaves through the guards, as a read
      return this.writeResponse(req, result.resource, 200, 'Patched');
    } catch (err) {
      if (ifMatch === undefined && isGlucoGuardError(err, 'ERR_PRECONDITION_FAILED')) throw conflict(`${type}/${id} changed while the patch was applied; read it and patch again`);
      throw err;
    }
  }

  /**
   * The version a PATCH request (or a transaction's PATCH entry, `entry` its index) applies to, and
   * the patched copy: the requester needs update rights and must be able to change the current
   * version (404 otherwise); `If-Match` must name it (412); a patch that does not apply, or changes
   * `resourceType` or `id`, is 422 (issue paths inside the entry for a transaction's).
   */
  private async applyPatchRequest(req: FhirRequest, type: string, id: string, entry?: number): Promise<{ current: Resource; patched: Resource; ifMatch: string | undefined }> {
    const where = entry === undefined ? '' : `Bundle.entry[${entry}]: `;
    await this.policy.authorize(req.access, 'update', type);
    const applyTo = patchOf(req);
    const current = await this.changeable(req.access, type, id);
    const ifMatch = parseIfMatch(req.headers['if-match']);
    if (ifMatch !== undefined && ifMatch !== current.meta?.versionId) throw preconditionFailed(`${where}If-Match ${ifMatch} is not the current version`);
    const patched = structuredClone(current) as Resource; // the current version may be a frozen shared object
    const failures = applyTo(patched);
    if (failures.length) {
      // a transaction's: the patch's own paths (`Parameters.parameter[0]`, JSON Patch `[0]`) as paths into the entry
      throw unprocessable(entry === undefined ? failures
        : failures.map((f) => ({ ...f, expression: (f.expression ?? ['']).map((e) => `Bundle.entry[${entry}].resource${e.replace(/^Parameters/, '')}`) })));
    }
    if (patched.resourceType !== type || patched.id !== id) {
      throw unprocessable([{ severity: 'error', code: 'processing', diagnostics: `${where}A patch may not change resourceType or id` }]);
    }
    return { current, patched, ifMatch };
  }

  /** Conditional patch (http.html#patch): `PATCH [type]?[criteria]` patches the one match the requester may see (none: 404; more: 412). */
  private async conditionalPatch(req: FhirRequest, type: string): Promise<FhirResponse> {
    await this.policy.authorize(req.access, 'update', type);
    const criteria = await this.resolvedCriteria(req.access, type, conditionalCriteria(req, 'patch'));
    const matches = criteria ? await this.visibleMatches(req.access, type, criteria) : [];
    if (matches.length > 1) throw preconditionFailed('The conditional patch criteria match more than one resource');
    if (matches.length === 0) throw notFound('No resource matched the criteria');
    return this.patch(req, type, matches[0]!.id!);
  }

  /**
   * Conditional delete (http.html#cdelete), `DELETE [type]?[criteria]`, decided over the matches the
   * requester may see: one match is deleted as `DELETE [type]/[id]` would; none is a successful
   * no-op (204, as for an id never stored); more than one is 412 (single deletes only).
   */
  private async conditionalDelete(req: FhirRequest, type: string): Promise<FhirResponse> {
    await this.policy.authorize(req.access, 'delete', type);
    const criteria = await this.resolvedCriteria(req.access, type, conditionalCriteria(req, 'delete'));
    const matches = criteria ? await this.visibleMatches(req.access, type, criteria) : [];
    if (matches.length > 1) throw preconditionFailed('The conditional delete criteria match more than one resource');
    if (matches.length === 1) return this.delete(req, type, matches[0]!.id!);
    if (preferReturn(req) === 'OperationOutcome') return { status: 200, body: informational('No resource matched the criteria; nothing was deleted') };
    return { status: 204 };
  }

  /**
   * The current version an update or delete by the requester changes, read once, for the policy's
   * `mayWrite` (which judges it too). Open access may change anything: nothing is read, undefined.
   * Anyone else may change only a resource whose current version they can see (it passes their
   * guards: scopes, consent, integrity), else 404: an id they cannot see and an id never stored (or
   * deleted) are alike to them, with no update-as-create either, or its 201 would tell them apart.
   */
  private async versionToChange(access: AccessContext, type: string, id: string): Promise<Resource | undefined> {
    if (access.kind === 'open') return undefined;
    const current = await this.currentOf(type, id);
    if (!(await this.mayChange(access, current))) throw notFound('Not found');
    return current;
  }

  /** May the requester change this current version (undefined: never stored, or deleted)? versionToChange's rule. */
  private async mayChange(access: AccessContext, current: Resource | undefined): Promise<boolean> {
    if (access.kind === 'open') return true;
    return current !== undefined && (await this.guard(access, [current])).allowed.length > 0;
  }

  /**
   * The current version of a resource the requester may change, read once. Open access gets the
   * read's own answer (404, 410); anyone else a 404 for anything they cannot change, a deleted
   * resource too (versionToChange's rule: hidden, deleted and never stored look alike).
   */
  private async changeable(access: AccessContext, type: string, id: string): Promise<Resource> {
    if (access.kind === 'open') return this.options.repository.read(type, id);
    const current = await this.currentOf(type, id);
    if (!current || !(await this.mayChange(access, current))) throw notFound('Not found');
    return current;
  }

  /**
   * Readies a resource about to be written, in place: drops the tags only the server writes
   * (`serverTagSystems`), then validates it (422 listing the issues).
   */
  private prepareWrite(resource: Resource): void {
    const systems = this.options.serverTagSystems;
    const tags = resource.meta?.tag;
    if (systems?.length && Array.isArray(tags) && tags.some((t) => systems.includes(t?.system as string))) {
      const kept = tags.filter((t) => !systems.includes(t?.system as string));
      if (kept.length) resource.meta!.tag = kept;
      else delete resource.meta!.tag;
      if (Object.keys(resource.meta!).length === 0) delete resource.meta;
    }
    this.options.validator.assertValid(resource);
  }

  /** The current version, or undefined when the id was never stored or its resource is deleted. */
  private async currentOf(type: string, id: string): Promise<Resource | undefined> {
    try {
      return await this.options.repository.read(type, id);
    } catch (err) {
      if (isGlucoGuardError(err, 'ERR_NOT_FOUND') || isGlucoGuardError(err, 'ERR_GONE')) return undefined;
      throw err;
    }
  }

  /** Answers a write per `Prefer: return=…` (http.html#ops), with Location/ETag/Last-Modified. */
  private async writeResponse(req: FhirRequest, resource: Resource, status: number, message: string, alreadyGuarded = false): Promise<FhirResponse> {
    const headers = { ...versionHeaders(resource), Location: `${this.options.fhirBase}/${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}` };
    const prefer = preferReturn(req);
    if (prefer === 'minimal') return { status, headers };
    if (prefer === 'OperationOutcome') return { status, headers, body: informational(message) };
    // The requester's own content (created/updated from its body) comes back as written; anything
    // else (a conditional create that matched an existing resource) goes through the guards like a read.
    if (message === 'Created' || message === 'Updated' || alreadyGuarded) return { status, headers, body: resource };
    // Guards run once per resource: a guarded copy (e.g. integrity-tagged) is not guarded again.
    const { allowed } = await this.guard(req.access, [resource]);
    return allowed.length ? { status, headers, body: allowed[0]! } : { status, headers };
  }

  // ---- type level ----------------------------------------------------------------------------

  private async search(req: FhirRequest, type: string, rawQuery: Record<string, string | string[]>): Promise<FhirResponse> {
    await this.policy.authorize(req.access, 'search', type);
    let query = rawQuery;
    // where this page starts: a `next` link's token resumes after the last match the page before
    // examined (keyset), a token without a position (a `previous` link, or issued before positions) by offset
    let at: PagePosition = { offset: 0 };
    const token = single(rawQuery._pageToken);
    if (token !== undefined) {
      const state = this.pages.open(req.access, token);
      query = pairsToQuery(state.query);
      at = state.after === undefined ? { offset: state.offset } : { offset: state.offset, after: state.after };
    }
    const including = Object.keys(query).some((k) => k.startsWith('_include') || k.startsWith('_revinclude'));
    const subsetting = parseSubsetting(type, query, { lenient: preferLenient(req), including });
    const parseOptions = {
      lenient: preferLenient(req),
      supported: this.options.repository.supportedSearchParams(),
      defaultCount: this.options.defaultPageSize,
      maxCount: this.options.maxPageSize,
      subsetting: true,
      dropped: new Set<string>(),
    };
    const resolved = await this.withChainsResolved(req.access, type, query, parseOptions);
    const parsed = parseSearch(type, resolved ?? {}, parseOptions);
    const count = parsed.count ?? this.options.defaultPageSize;
    if (subsetting?.kind !== 'summary') parseOptions.dropped.add('_summary');
    if (subsetting?.kind !== 'elements') parseOptions.dropped.add('_elements');
    const { matches, included, hasMore, next } = resolved
      ? await this.filledPage(req.access, await this.policy.narrowSearch(req.access, { ...parsed, offset: at.offset }), at, count)
      // a chain selected nothing: nothing can match
      : { matches: { allowed: [], issues: [] }, included: { allowed: [], issues: [] }, hasMore: false, next: at };
    const firstPageQuery = usedQuery(query, parsed, parseOptions.dropped);
    const links: BundleLink[] = [{ relation: 'self', url: this.pageUrl(req, type, firstPageQuery, at) }];
    if (hasMore) links.push({ relation: 'next', url: this.pageUrl(req, type, firstPageQuery, next) });
    // No position goes backwards: `previous` is the page `count` matches back by offset (pages
    // before this one may have shifted under writes since; a walk forward never does).
    if (at.offset > 0) links.push({ relation: 'previous', url: this.pageUrl(req, type, firstPageQuery, { offset: Math.max(0, at.offset - count) }) });
    // subsets are cut from versions the guards passed whole (src/fhir/subsetting.ts)
    const shown = (r: Resource, include: boolean): Resource => (subsetting ? subsetResource(r, subsetting, include) : r);
    const entry: BundleEntry[] = [
      ...matches.allowed.map((r) => this.entry(shown(r, false), 'match')),
      ...included.allowed.map((r) => this.entry(shown(r, true), 'include')),
    ];
    const issues = [...matches.issues, ...included.issues, ...(asksForTotal(query) ? [NO_TOTAL] : []), ...(this.policy.notices?.(req.access) ?? [])];
    if (issues.length) entry.push({ resource: operationOutcome(issues), search: { mode: 'outcome' } });
    const bundle: Bundle = { resourceType: 'Bundle', type: 'searchset', link: links, entry };
    return { status: 200, body: bundle };
  }

  /**
   * One page of `count` matches that pass the guards, re-paged after filtering: when guards drop
   * entries the next repository rows fill the page, and `next` appears only when at least one more
   * visible match exists (found by looking ahead), so no short or empty page hints at hidden data.
   * Offsets in page tokens are repository offsets. Where the repository gives positions
   * (SearchResult.positionOf), `next` resumes strictly after the last match this page examined —
   * taken or withheld, not the last one returned — so writes meanwhile shift nothing after it
   * (SearchOptions.after); the re-paging within one page resumes the same way.
   */
  private async filledPage(access: AccessContext, narrowed: SearchRequest, at: PagePosition, count: number): Promise<{
    matches: { allowed: Resource[]; issues: OperationOutcomeIssue[] };
    included: { allowed: Resource[]; issues: OperationOutcomeIssue[] };
    hasMore: boolean;
    next: PagePosition;
  }> {
    const matches = { allowed: [] as Resource[], issues: [] as OperationOutcomeIssue[] };
    const included = { allowed: [] as Resource[], issues: [] as OperationOutcomeIssue[] };
    // No entries and no `next` link: its page would be this one again (a client following `next`
    // would never stop), and for a limited requester it would say whether hidden matches exist.
    if (count === 0) return { matches, included, hasMore: false, next: at };
    let repoOffset = at.offset;
    let after = at.after;
    // Matches the guards withhold are re-paged past, each page from the repository costing as much
    // as the pages before it: past the scan limit they make the search too costly, as non-matches do.
    let withheld = 0;
    const scanLimit = this.searchOptions.scanLimit ?? 0;
    for (;;) {
      // Matches are mostly passed on as they are: they may come deferred (parsed as far as guards read them).
      const result = await this.options.repository.search({ ...narrowed, offset: repoOffset, count },
        after === undefined ? this.deferredSearch : { ...this.deferredSearch, after });
      // the position past the first `i` matches of this result (none from an adapter that pages by offset only)
      const past = (i: number): string | undefined => (!result.positionOf ? undefined : i > 0 ? result.positionOf(i - 1) : after);
      const guarded = await this.guard(access, result.resources);
      // Guards may hand back copies (e.g. with an integrity tag) and leave some out: match them by
      // version, unless they passed every one as it came (the common case: no key built per entry).
      const key = (r: Resource): string => `${r.resourceType}/${r.id}/${versionIdOf(r)}`;
      const asGiven = guarded.allowed.length === result.resources.length && guarded.allowed.every((r, i) => r === result.resources[i]);
      const visible = asGiven ? undefined : new Map(guarded.allowed.map((r) => [key(r), r]));
      const filling = matches.allowed.length < count;
      for (let i = 0; i < result.resources.length; i++) {
        const r = visible ? visible.get(key(result.resources[i]!)) : result.resources[i];
        if (!r) {
          if (scanLimit > 0 && ++withheld > scanLimit) throw scanLimitExceeded(scanLimit, narrowed.resourceType);
          continue;
        }
        if (matches.allowed.length === count) return { matches, included, hasMore: true, next: position(repoOffset + i, past(i)) };
        matches.allowed.push(r);
      }
      if (filling) {
        matches.issues.push(...guarded.issues);
        const inc = await this.guard(access, result.included);
        included.allowed.push(...inc.allowed);
        included.issues.push(...inc.issues);
      }
      repoOffset += result.resources.length;
      // (no `next` link follows: no position is worked out)
      if (!result.hasMore || result.resources.length === 0) return { matches, included, hasMore: false, next: { offset: repoOffset } };
      after = past(result.resources.length);
    }
  }

  private pageUrl(req: FhirRequest, type: string, firstPageQuery: [string, string][], at: PagePosition): string {
    const base = `${this.options.fhirBase}/${type}`;
    if (at.offset === 0 && at.after === undefined) {
      const qs = toQueryString(firstPageQuery);
      return qs ? `${base}?${qs}` : base;
    }
    return `${base}?_pageToken=${this.pages.issue(req.access, { query: firstPageQuery, ...at })}`;
  }

  private async history(req: FhirRequest, type: string | undefined, id: string | undefined): Promise<FhirResponse> {
    // instance history is a read (SMART `r`); type and system history list resources like a search (`s`)
    await this.policy.authorize(req.access, id ? 'history' : 'history-type', type ?? '*');
    let query = req.query;
    let offset = 0;
    // where history stood when the first page was read (in the page token only): later pages leave
    // out what was written since, so a walk neither repeats nor skips entries (FhirRouter.filledHistory)
    let snapshot: string | undefined;
    const token = single(req.query._pageToken);
    if (token !== undefined) {
      const state = this.pages.open(req.access, token);
      query = pairsToQuery(state.query.filter(([k]) => k !== HISTORY_SNAPSHOT));
      snapshot = state.query.find(([k]) => k === HISTORY_SNAPSHOT)?.[1];
      offset = state.offset;
    }
    for (const name of Object.keys(query)) {
      if (!['_count', '_since', '_at', '_format', '_pretty', '_pageToken'].includes(name) && !preferLenient(req)) {
        throw badRequest(`Unsupported history parameter "${name}"`, name);
      }
    }
    const countRaw = single(query._count);
    if (countRaw !== undefined && !/^\d+$/.test(countRaw)) throw badRequest('_count must be a non-negative integer', '_count');
    const count = Math.min(countRaw !== undefined ? Number(countRaw) : this.options.defaultPageSize, this.options.maxPageSize);
    const since = single(query._since);
    if (since !== undefined && Number.isNaN(Date.parse(since))) throw badRequest('_since must be an instant', '_since');
    if (type && id) {
      await this.options.repository.read(type, id).catch((err: unknown) => {
        if (isGlucoGuardError(err, 'ERR_NOT_FOUND') && req.access.kind !== 'open') throw this.notFoundFor(req.access);
        if (!isGlucoGuardError(err, 'ERR_GONE')) throw err; // a deleted resource still has a history
      });
    }
    const at = single(query._at);
    const current = at === undefined ? undefined : await this.versionsCurrentDuring(type, id, at);
    const result = await this.filledHistory(req.access, { resourceType: type, id, since, snapshot }, offset, count, current && ((e) => current.has(e.versionId)));
    // A resource none of whose versions the requester may see has no history for them: the same 404 as an id never stored.
    if (type && id && req.access.kind !== 'open' && offset === 0 && result.entries.length === 0 && !(await this.anyVersionVisible(req.access, type, id))) {
      throw this.notFoundFor(req.access);
    }
    // a PUT that made the resource (update as create) was a 201: its first version, or the one after a
    // deletion when that deletion is on this page too
    const methods = new Map(result.entries.map((e) => [`${e.resourceType}/${e.id}/${e.versionId}`, e.method]));
    const created = (e: HistoryEntry): boolean => e.method === 'POST' || (e.method === 'PUT' &&
      (e.versionId === '1' || methods.get(`${e.resourceType}/${e.id}/${Number(e.versionId) - 1}`) === 'DELETE'));
    const entry: BundleEntry[] = result.entries
      .map((e) => ({
        fullUrl: `${this.options.fhirBase}/${e.resourceType}/${e.id}`,
        ...(e.resource ? { resource: e.resource } : {}),
        request: { method: e.method, url: e.method === 'POST' ? e.resourceType : `${e.resourceType}/${e.id}` },
        response: {
          status: created(e) ? '201 Created' : e.method === 'DELETE' ? '204 No Content' : '200 OK',
          etag: `W/"${e.versionId}"`,
          lastModified: e.lastUpdated,
        },
      }));
    const issues = [...result.issues, ...(this.policy.notices?.(req.access) ?? [])];
    if (issues.length) entry.push({ resource: operationOutcome(issues), search: { mode: 'outcome' } });
    const path = [type, id, '_history'].filter(Boolean).join('/');
    const firstPageQuery = queryPairs(query).filter(([k]) => !['_pageToken', '_format', '_pretty'].includes(k));
    const marked: [string, string][] = result.snapshot !== undefined ? [...firstPageQuery, [HISTORY_SNAPSHOT, result.snapshot]] : firstPageQuery;
    const url = (o: number): string => o === 0
      ? `${this.options.fhirBase}/${path}${firstPageQuery.length ? `?${toQueryString(firstPageQuery)}` : ''}`
      : `${this.options.fhirBase}/${path}?_pageToken=${this.pages.issue(req.access, { query: marked, offset: o })}`;
    const link: BundleLink[] = [{ relation: 'self', url: url(offset) }];
    if (result.hasMore) link.push({ relation: 'next', url: url(result.nextOffset) });
    if (offset > 0) link.push({ relation: 'previous', url: url(Math.max(0, offset - count)) });
    return { status: 200, body: { resourceType: 'Bundle', type: 'history', link, entry } };
  }

  /**
   * `_at` (http.html#history): the versions of one resource that were current at some time in the
   * period the value names (`2026-03` is the whole month; a dateTime, that second), a deletion
   * included while it was the last word. Each version is current from its `lastUpdated` until the
   * next one's. Read from the whole instance history, which one resource keeps short.
   */
  private async versionsCurrentDuring(type: string | undefined, id: string | undefined, at: string): Promise<Set<string>> {
    if (!type || !id) throw badRequest('_at is supported on the history of one resource (Type/id/_history)', '_at');
    // the period as search reads a date value (@medplum/core toPeriod: end inclusive, to the ms)
    const named = toPeriod(at);
    if (!named?.start || !named.end) throw badRequest('_at must be a date or a dateTime (YYYY, YYYY-MM, YYYY-MM-DD, or with a time)', '_at');
    const period = { start: Date.parse(named.start), end: Date.parse(named.end) + 1 };
    const all: HistoryEntry[] = [];
    for (let offset = 0; ; offset += 1000) {
      // a version that does not authenticate still held its place in time (its stand-in's lastUpdated)
      const page = await this.options.repository.history({ resourceType: type, id, count: 1000, offset, standIns: true });
      all.push(...page.entries);
      if (!page.hasMore || page.entries.length === 0) break;
    }
    const current = new Set<string>();
    all.forEach((e, k) => {
      // newest first: a version lasts until the version after it (all[k - 1])
      const from = Date.parse(e.lastUpdated);
      const until = k === 0 ? Infinity : Date.parse(all[k - 1]!.lastUpdated);
      if (from < period.end && until > period.start) current.add(e.versionId);
    });
    return current;
  }

  /**
   * One page of `count` history entries the requester may see, re-paged after filtering like a
   * search (filledPage): hidden versions neither leave gaps nor leave a `next` link to an empty
   * page, so page counts reveal nothing of them. A deletion entry is shown only to a requester who
   * could see the version it deleted (its fullUrl alone would name a hidden resource).
   */
  private async filledHistory(access: AccessContext, request: Omit<HistoryRequest, 'count' | 'offset'>, offset: number, count: number,
    keep?: (e: HistoryEntry) => boolean): Promise<{
    entries: HistoryEntry[];
    issues: OperationOutcomeIssue[];
    hasMore: boolean;
    nextOffset: number;
    /** The adapter's mark of where history stood (HistoryResult.snapshot), for the next page's token. */
    snapshot?: string;
  }> {
    const entries: HistoryEntry[] = [];
    const issues: OperationOutcomeIssue[] = [];
    // type and system history of a requester limited to some patients reads only those patients' versions
    if (access.kind !== 'open' && request.id === undefined) {
      const patients = await this.policy.visiblePatients?.(access);
      if (patients !== undefined) request = { ...request, patients };
    }
    // No entries and no `next` link, as for a search (filledPage).
    if (count === 0) return { entries, issues, hasMore: false, nextOffset: offset };
    // A limited requester's page may sit behind many hidden versions (other patients' data, the
    // access log): read on in larger batches than the page, or the scan costs a query per `count`.
    const batch = access.kind === 'open' ? count : Math.max(count, 200);
    let repoOffset = offset;
    let snapshot = request.snapshot;
    for (;;) {
      // a version that does not authenticate comes as its stand-in: the guards withhold and report it
      const result = await this.options.repository.history({ ...request, snapshot, count: batch, offset: repoOffset, standIns: true });
      snapshot ??= result.snapshot;
      const visible = await this.visibleHistory(access, keep ? result.entries.filter(keep) : result.entries);
      if (entries.length < count) issues.push(...visible.issues);
      for (let i = 0; i < result.entries.length; i++) {
        const e = visible.entries.get(result.entries[i]!);
        if (!e) continue;
        if (entries.length === count) return { entries, issues, hasMore: true, nextOffset: repoOffset + i, snapshot };
        entries.push(e);
      }
      repoOffset += result.entries.length;
      if (!result.hasMore || result.entries.length === 0) return { entries, issues, hasMore: false, nextOffset: repoOffset, snapshot };
      // Open access hides nothing from consent: a full page needs no look-ahead query.
      if (access.kind === 'open' && entries.length === count) return { entries, issues, hasMore: true, nextOffset: repoOffset, snapshot };
    }
  }

  /** The entries of a history page the requester may see (guarded copies for versions with a body). */
  private async visibleHistory(access: AccessContext, page: HistoryEntry[]): Promise<{ entries: Map<HistoryEntry, HistoryEntry>; issues: OperationOutcomeIssue[] }> {
    const guarded = await this.guard(access, page.flatMap((e) => (e.resource ? [e.resource] : [])));
    const key = (type: string, id: string | undefined, version: string | undefined): string => `${type}/${id}/${version}`;
    const allowed = new Map(guarded.allowed.map((r) => [key(r.resourceType, r.id, r.meta?.versionId), r]));
    const out = new Map<HistoryEntry, HistoryEntry>();
    for (const e of page) {
      if (e.resource) {
        const r = allowed.get(key(e.resourceType, e.id, e.versionId));
        if (r) out.set(e, { ...e, resource: r });
      } else if (access.kind === 'open' || (await this.deletedVisible(access, e.resourceType, e.id, e.versionId))) {
        out.set(e, e);
      }
    }
    return { entries: out, issues: guarded.issues };
  }

  /**
   * A repository read for one id as a limited requester may learn of it: "never stored" answers
   * exactly like "not allowed" (the withheld 404, same issue and text), and "deleted" (410) only
   * to a requester who could see the resource as it was when deleted — otherwise a made-up id, a
   * hidden one and a hidden deleted one would tell each other apart.
   */
  private async fetchFor<T>(access: AccessContext, type: string, id: string, fetch: () => Promise<T>, version?: string): Promise<T> {
    try {
      return await fetch();
    } catch (err) {
      // altered on disk: the guards decide (the integrity check fails it: withheld, issue, security AuditEvent)
      if (err instanceof TamperedVersionError) return err.standIn as T;
      if (access.kind === 'open') throw err;
      if (isGlucoGuardError(err, 'ERR_NOT_FOUND')) throw this.notFoundFor(access);
      if (isGlucoGuardError(err, 'ERR_GONE') && !(await this.deletedVisible(access, type, id, version))) throw this.notFoundFor(access);
      throw err;
    }
  }

  /**
   * Could the requester see the last version before a deletion (`deletion`: its versionId; default
   * the newest)? A version id that is not a deletion is judged the same way (its own body was gone).
   */
  private async deletedVisible(access: AccessContext, type: string, id: string, deletion?: string): Promise<boolean> {
    let passedDeletion = deletion === undefined;
    for (let offset = 0; ; offset += 100) {
      const { entries, hasMore } = await this.options.repository.history({ resourceType: type, id, count: 100, offset });
      for (const e of entries) {
        if (!passedDeletion) {
          passedDeletion = e.versionId === deletion;
          continue;
        }
        if (e.resource) return (await this.guard(access, [e.resource])).allowed.length > 0;
      }
      if (!hasMore || entries.length === 0) return false;
    }
  }

  /** Does any version of the resource pass the requester's guards? */
  private async anyVersionVisible(access: AccessContext, type: string, id: string): Promise<boolean> {
    for (let offset = 0; ; offset += 100) {
      const { entries, hasMore } = await this.options.repository.history({ resourceType: type, id, count: 100, offset });
      const bodies = entries.flatMap((e) => (e.resource ? [e.resource] : []));
      if (bodies.length && (await this.guard(access, bodies)).allowed.length > 0) return true;
      if (!hasMore || entries.length === 0) return false;
    }
  }

  // ---- system level --------------------------------------------------------------------------

  private async bundle(req: FhirRequest): Promise<FhirResponse> {
    const body = req.body;
    if (!isJsonObject(body) || body.resourceType !== 'Bundle') throw badRequest('Expected a Bundle of type batch or transaction');
    const bundle = body as unknown as Bundle;
    assertWellFormed(bundle);
    if (bundle.type === 'batch') return processBatch(bundle, req, (sub) => this.handle(sub), this.options.fhirBase);
    if (bundle.type === 'transaction') {
      const relative = withIfNoneExistQueries(withRelativeEntryUrls(bundle, this.options.fhirBase));
      const visible = req.access.kind === 'open' ? relative : await this.visibleConditionals(req.access, relative);
      const decided = await this.referencesResolved(req.access, await this.patchesAsUpdates(req, visible));
      return processTransaction(decided, req, {
        handledWriteTypes: this.handledWriteTypes(),
        fhirBase: this.options.fhirBase,
        validate: (resource) => this.prepareWrite(resource),
        authorize: async (interaction, resource) => {
          await this.policy.authorize(req.access, interaction, resource.resourceType);
          const current = interaction !== 'create' && resource.id ? await this.versionToChange(req.access, resource.resourceType, resource.id) : undefined;
          // a delete entry names only type and id: judged on the version it deletes, as a DELETE is
          const allowed = interaction === 'delete'
            ? await this.policy.mayWrite(req.access, current ?? resource, 'delete')
            : await this.policy.mayWrite(req.access, resource, interaction, current);
          if (!allowed) throw forbiddenWrite();
        },
        checkType: (type) => this.checkType(type),
        commit: (tx) => this.options.repository.transaction(tx),
        read: (sub) => this.handle(sub),
        guard: (resources) => this.guard(req.access, resources),
      });
    }
    throw badRequest('Bundle.type must be batch or transaction', 'Bundle.type');
  }

  /**
   * A transaction's PATCH entries as the updates they make: each is applied to the current version
   * the requester may change (404 otherwise, as for a single patch), and becomes a PUT with
   * `ifMatch` set to the version it was read at, so a version written before the transaction
   * commits fails the whole transaction (412) instead of being overwritten. The PUT then goes
   * through the transaction's own checks (validation, authorization, `mayWrite`). A patch that does
   * not apply is 422 for the whole transaction; a conditional PATCH is refused (as conditional PUT is).
   */
  private async patchesAsUpdates(req: FhirRequest, bundle: Bundle): Promise<Bundle> {
    const entries = bundle.entry ?? [];
    if (!entries.some((e) => e.request?.method === 'PATCH')) return bundle;
    const out: BundleEntry[] = [];
    for (const [i, entry] of entries.entries()) {
      if (entry.request?.method !== 'PATCH') {
        out.push(entry);
        continue;
      }
      const sub = entryRequest(entry, i, req);
      const [type, id, ...rest] = sub.path.split('/');
      if (!type || !id || rest.length || Object.keys(sub.query).length) {
        throw badRequest('A PATCH inside a transaction names one resource (Type/id); send a conditional patch on its own or in a batch', `Bundle.entry[${i}].request.url`);
      }
      this.checkType(type);
      const { current, patched } = await this.applyPatchRequest(sub, type, checkId(id), i);
      out.push({ ...(entry.fullUrl ? { fullUrl: entry.fullUrl } : {}), resource: patched, request: { method: 'PUT', url: `${type}/${id}`, ifMatch: `W/"${current.meta!.versionId}"` } });
    }
    return { ...bundle, entry: out };
  }

  private async operation(req: FhirRequest, route: Route & { kind: 'operation' }): Promise<FhirResponse> {
    const op = this.operations.get(route.name);
    const level = route.id ? 'instance' : route.type ? 'type' : 'system';
    if (!op || !op.levels.includes(level) || (route.type && op.resourceTypes?.length && !op.resourceTypes.includes(route.type))) {
      throw notFound(`Unknown operation $${route.name.slice(0, 64)}`);
    }
    const method = req.method === 'HEAD' ? 'GET' : req.method;
    // An operation invoked by GET can be invoked by POST with its parameters in a Parameters body
    // (operations.html#request): answered as that GET.
    const asGet = method === 'POST' && op.methods.includes('GET') && !op.methods.includes('POST');
    const allowed = asGet ? ['GET', 'POST'] : op.methods;
    if (!allowed.includes(method)) throw methodNotAllowed(`$${op.name} does not support ${method}`, allowed.flatMap((m) => (m === 'GET' ? ['GET', 'HEAD'] : [m])));
    if (!op.authorizesItself) await this.policy.authorize(req.access, 'operation', route.type ?? '*');
    // an operation's input (Parameters, or a Bundle) is read by its handler: values of the wrong kind are refused first
    if (isJsonObject(req.body) && (req.body.resourceType === 'Parameters' || req.body.resourceType === 'Bundle')) assertWellFormed(inputEnvelope(op.name, req.body));
    if (asGet) req = { ...req, method: 'GET', query: mergeQuery(req.query, parametersAsQuery(req, op.name)), body: undefined };
    return op.handle(req, { resourceType: route.type, id: route.id });
  }

  /**
   * `$validate` (operation-resource-validate.html): the issues a write would meet, without writing.
   * Every mode checks the requester may make that kind of write (no mode: a create). Content is
   * checked against base R4, the profiles in `meta.profile` and `profiles` (held in profiles/), as
   * every write is. `update` and `delete` name a resource: one the requester cannot see is a 404,
   * as for the write itself; `delete` checks no content. What the policy would refuse of this
   * content (`mayWrite`: e.g. data about a patient the requester may not write for) is an issue.
   */
  async validateWrite(access: AccessContext, type: string, mode: 'create' | 'update' | 'delete' | undefined, target: { id?: string; resource?: Resource; profiles: string[] }): Promise<OperationOutcomeIssue[]> {
    const interaction = mode ?? 'create';
    try {
      await this.policy.authorize(access, interaction, type);
    } catch (err) {
      // a type no client writes (the access log): the check's answer, not a 405 whose Allow misstates this URL
      if (isGlucoGuardError(err, 'ERR_METHOD_NOT_ALLOWED')) return (err as GlucoGuardError).issues;
      throw err;
    }
    for (const url of target.profiles) {
      // a profile named for this check must be one the server can check (the operation's rule)
      if (!this.options.validator.profile(url)) throw badRequest(`Cannot validate against profile ${url.slice(0, 200)}: this server does not hold it`, 'profile');
    }
    const current = mode === 'update' || mode === 'delete' ? await this.versionToChange(access, type, target.id!) : undefined;
    if (mode === 'delete') {
      return current && !(await this.policy.mayWrite(access, current, 'delete')) ? [forbiddenWrite().issues[0]!] : [];
    }
    const resource = target.resource!;
    const issues = this.options.validator.check(resource, target.profiles);
    if (mode === 'update' && resource.id !== target.id) {
      issues.push({ severity: 'error', code: 'invalid', diagnostics: `Resource id "${String(resource.id).slice(0, 64)}" does not match the URL id "${target.id}"`, expression: ['id'] });
    }
    if (mode && !(await this.policy.mayWrite(access, resource, interaction, current))) issues.push(forbiddenWrite().issues[0]!);
    return issues;
  }

  // ---- helpers -------------------------------------------------------------------------------

  /**
   * One page of a search for the requester, for operations that page (`$everything`): the same
   * authorization, narrowing, guards and re-paging past withheld matches as a search's page.
   * `at` and `next` are positions in the repository's matches, as in a search's page tokens.
   * `lenient`: unknown parameters are left out (the request's Prefer: handling=lenient), else a 400.
   */
  async searchPage(access: AccessContext, resourceType: string, query: Record<string, string | string[]>, at: PagePosition, count: number, options: { lenient?: boolean } = {}): Promise<{
    resources: Resource[];
    /** What the guards said of the page (an integrity failure: the version withheld), for the caller's outcome entry. */
    issues: OperationOutcomeIssue[];
    hasMore: boolean;
    next: PagePosition;
  }> {
    await this.policy.authorize(access, 'search', resourceType);
    const parsed = parseSearch(this.checkType(resourceType), query, {
      lenient: options.lenient === true,
      supported: this.options.repository.supportedSearchParams(),
      defaultCount: count,
      maxCount: count,
    });
    const page = await this.filledPage(access, await this.policy.narrowSearch(access, { ...parsed, offset: at.offset }), at, count);
    return { resources: page.matches.allowed, issues: page.matches.issues, hasMore: page.hasMore, next: page.next };
  }

  /** The page size a request asks for (`_count`), checked as a search's is: the default when absent, at most the maximum. */
  pageSize(query: Record<string, string | string[] | undefined>): number {
    const asked = single(query._count);
    if (asked === undefined) return this.options.defaultPageSize;
    if (!/^\d+$/.test(asked) || Number(asked) < 1) throw badRequest('_count must be a positive integer', '_count');
    return Math.min(Number(asked), this.options.maxPageSize);
  }

  /** Page tokens for operations that page: bound to the requester and MAC'd like a search's (src/fhir/paging.ts). */
  get pageTokens(): PageTokens {
    return this.pages;
  }

  /**
   * Every match of a search that the requester may see, for operations that compute over data
   * (`$cgm-summary`, `$cgm-agp`): the same authorization, policy narrowing and outbound guards as
   * a search, paging through all matches in-process. Throws like a search (403, 400). What the
   * guards say (an integrity failure) is added to `issues` when given. `lenient` as for searchPage.
   */
  async searchAll(access: AccessContext, resourceType: string, query: Record<string, string | string[]>, issues?: OperationOutcomeIssue[], options: { lenient?: boolean } = {}): Promise<Resource[]> {
    await this.policy.authorize(access, 'search', resourceType);
    // Large pages (90 days of 5-minute readings is one page); a page after one resumes from its last
    // match where the repository gives positions, else the repository finds page k by scanning k pages.
    const pageSize = 50_000;
    const parsed = parseSearch(this.checkType(resourceType), query, {
      lenient: options.lenient === true,
      supported: this.options.repository.supportedSearchParams(),
      defaultCount: pageSize,
      maxCount: pageSize,
    });
    const narrowed: SearchRequest = await this.policy.narrowSearch(access, { ...parsed, offset: 0 });
    const out: Resource[] = [];
    let after: string | undefined;
    for (let offset = 0; ; offset += pageSize) {
      const result = await this.options.repository.search({ ...narrowed, count: pageSize, offset }, after === undefined ? this.searchOptions : { ...this.searchOptions, after });
      const guarded = await this.guard(access, result.resources);
      out.push(...guarded.allowed);
      issues?.push(...guarded.issues);
      if (!result.hasMore || result.resources.length === 0) return out;
      after = result.positionOf?.(result.resources.length - 1);
    }
  }

  /**
   * How chains and `_has` are resolved for a requester (src/fhir/chains.ts): each inner search is
   * authorized, narrowed and guarded like the requester's own search, and paged past hidden matches.
   */
  private chainContext(access: AccessContext, lenient: boolean, dropped?: Set<string>): ChainContext {
    const supported = this.options.repository.supportedSearchParams();
    const ctx: ChainContext = {
      supported,
      lenient,
      dropped,
      fhirBase: this.options.fhirBase,
      matches: async (type, query, limit, links) => {
        await this.policy.authorize(access, 'search', type);
        const resolved = await resolveChains(type, query, ctx, links);
        if (!resolved) return [];
        const parsed = parseSearch(type, resolved, { lenient: false, supported, defaultCount: limit + 1, maxCount: limit + 1 });
        const narrowed = await this.policy.narrowSearch(access, { ...parsed, offset: 0 });
        return (await this.filledPage(access, narrowed, { offset: 0 }, limit + 1)).matches.allowed;
      },
    };
    return ctx;
  }

  /** Runs every outbound guard in turn (consent, then integrity, …). */
  async guard(access: AccessContext, resources: Resource[], options?: GuardOptions): Promise<{ allowed: Resource[]; issues: OperationOutcomeIssue[] }> {
    let allowed = resources;
    const issues: OperationOutcomeIssue[] = [];
    for (const g of this.guards) {
      if (allowed.length === 0) break;
      const r = await g.guard(access, allowed, options);
      allowed = r.allowed;
      issues.push(...r.issues);
    }
    return { allowed, issues };
  }

  /** A resource that may not leave looks exactly like one that is not there (404), plus any integrity issue. */
  private withheld(issues: OperationOutcomeIssue[], access?: AccessContext): FhirResponse {
    const notThere = access ? this.notFoundFor(access) : notFound('Not found');
    return { status: 404, body: operationOutcome([...notThere.issues, ...issues]) };
  }

  /**
   * The 404 of an id the requester may not learn of — the same whether it was never stored, is
   * hidden, or was deleted out of their sight — with the policy's notices about how they asked
   * (AccessPolicy.notices: no purpose of use stated), which depend on the request alone.
   */
  private notFoundFor(access: AccessContext): GlucoGuardError {
    const err = notFound('Not found');
    err.issues.push(...(this.policy.notices?.(access) ?? []));
    return err;
  }

  private entry(resource: Resource, mode: 'match' | 'include'): BundleEntry {
    return { fullUrl: `${this.options.fhirBase}/${resource.resourceType}/${resource.id}`, resource, search: { mode } };
  }

  /**
   * A limited requester's transaction with conditional creates: each `ifNoneExist` is decided over
   * what the requester may see, as for a single create, before the repository applies the Bundle —
   * one visible match becomes `_id=<it>` (so references to the entry's fullUrl still resolve to it),
   * none drops the condition (a plain create) when the repository holds a match they cannot see,
   * two or more are 412. The repository deciding over everything would answer "200, exists, at
   * Location" for a match the requester cannot see. When it holds no match at all the condition
   * stays, for the repository to decide again as it commits: the same transaction sent twice at
   * once (through two replicas) then creates the resource once.
   */
  private async visibleConditionals(access: AccessContext, bundle: Bundle): Promise<Bundle> {
    if (!bundle.entry?.some((e) => e.request?.method === 'POST' && e.request.ifNoneExist !== undefined)) return bundle;
    const entry = [];
    for (const [i, e] of bundle.entry.entries()) {
      const query = e.request?.ifNoneExist;
      if (e.request?.method !== 'POST' || query === undefined) {
        entry.push(e);
        continue;
      }
      const type = this.checkType(e.request.url.split(/[/?]/)[0]!);
      this.checkConditionalQuery(type, query);
      // asked first: a match another request stores after it is one the repository finds at commit
      if (!(await this.anyStoredMatch(type, query))) {
        entry.push(e);
        continue;
      }
      const visible = await this.visibleMatches(access, type, query);
      if (visible.length > 1) throw preconditionFailed(`Bundle.entry[${i}].request.ifNoneExist matches more than one resource`);
      const { ifNoneExist: _dropped, ...request } = e.request;
      entry.push({ ...e, request: visible.length === 1 ? { ...request, ifNoneExist: `_id=${visible[0]!.id}` } : request });
    }
    return { ...bundle, entry };
  }

  /**
   * A transaction's conditional references (`"reference": "Patient?identifier=urn:mrn|123"`,
   * http.html#trules) as the `Type/id` each matches, before anything is validated or written. Each
   * distinct one is matched among the resources the requester may see, as a conditional create's
   * criteria are; none or several matches fail the whole transaction (412), in the same words
   * whether the match is missing or hidden. The criteria are never echoed.
   */
  private async referencesResolved(access: AccessContext, bundle: Bundle): Promise<Bundle> {
    const resolved = new Map<string, string>();
    for (const [i, e] of (bundle.entry ?? []).entries()) {
      if (e.request?.method !== 'POST' && e.request?.method !== 'PUT') continue;
      for (const { reference, type, criteria } of conditionalReferences(e.resource)) {
        if (resolved.has(reference)) continue;
        const where = `Bundle.entry[${i}].resource`;
        this.checkType(type);
        this.checkConditionalQuery(type, criteria);
        const query = await this.resolvedCriteria(access, type, queryOfText(criteria));
        const matches = query ? await this.visibleMatches(access, type, query) : [];
        if (matches.length !== 1) {
          throw preconditionFailed(`${where}: a conditional reference to ${type} matches ${matches.length ? 'more than one resource' : 'no resource'}; the transaction was not applied`);
        }
        resolved.set(reference, `${type}/${matches[0]!.id}`);
      }
    }
    if (!resolved.size) return bundle;
    return { ...bundle, entry: bundle.entry!.map((e) => (e.resource ? { ...e, resource: withReferencesResolved(e.resource, resolved) } : e)) };
  }

  /**
   * A limited requester's create after their conditional query matched nothing they may see. The
   * repository re-checks the query as it creates, atomically, so a match another request or
   * replica created since (the same conditional create sent twice at once) is not created again:
   * it is answered instead (`created: false`) when the requester may see it. A match they may not
   * see is no match to them (no oracle): the resource is created as a plain create would.
   */
  private async createUnlessVisibleMatch(access: AccessContext, type: string, resource: Resource, query: string): Promise<{ resource: Resource; created: boolean }> {
    const repository = this.options.repository;
    try {
      const result = await repository.create(resource, { ifNoneExist: query });
      if (result.outcome === 'created') return { resource: result.resource, created: true };
    } catch (err) {
      if (!isGlucoGuardError(err, 'ERR_PRECONDITION_FAILED')) throw err; // several matches: who may see them is decided below
    }
    const visible = await this.visibleMatches(access, type, query);
    if (visible.length > 1) throw preconditionFailed('The conditional criteria match more than one resource');
    if (visible.length === 1) return { resource: visible[0]!, created: false };
    return { resource: (await repository.create(resource)).resource, created: true };
  }

  /** Whether the repository holds any current match of a conditional query, whoever may see it (never answered to the requester). */
  private async anyStoredMatch(type: string, query: string): Promise<boolean> {
    const parsed = parseSearch(type, queryOfText(query.replace(/^\?/, '')), { lenient: false, supported: this.options.repository.supportedSearchParams(), defaultCount: 1, maxCount: 1 });
    return (await this.options.repository.search({ ...parsed, count: 1, offset: 0 })).resources.length > 0;
  }

  /**
   * Matches of a conditional query among the resources the requester may see (at most two are
   * needed), paged past hidden matches as a search is (filledPage).
   */
  private async visibleMatches(access: AccessContext, type: string, query: string | Record<string, string | string[]>): Promise<Resource[]> {
    const asQuery = typeof query === 'string' ? queryOfText(query.replace(/^\?/, '')) : query;
    const parsed = parseSearch(type, asQuery, { lenient: false, supported: this.options.repository.supportedSearchParams(), defaultCount: 2, maxCount: 2 });
    const narrowed = await this.policy.narrowSearch(access, { ...parsed, offset: 0 });
    return (await this.filledPage(access, narrowed, { offset: 0 }, 2)).matches.allowed;
  }

  /**
   * Search criteria (of a conditional interaction, an `$export` `_typeFilter`) with their chains and
   * `_has` resolved as the requester's search would resolve them (src/fhir/chains.ts); undefined
   * when one of them selects nothing. The rest of the criteria is checked first (400).
   */
  async resolvedCriteria(access: AccessContext, type: string, criteria: Record<string, string | string[]>): Promise<Record<string, string | string[]> | undefined> {
    return this.withChainsResolved(access, type, criteria, { lenient: false, supported: this.options.repository.supportedSearchParams(), defaultCount: 2, maxCount: 2 });
  }

  /** The query with its chains resolved (resolveChains), the rest of it checked first with `options`; undefined: nothing can match. */
  private async withChainsResolved(access: AccessContext, type: string, query: Record<string, string | string[]>, options: SearchParseOptions): Promise<Record<string, string | string[]> | undefined> {
    if (!Object.keys(query).some(isChained)) return query;
    parseSearch(type, Object.fromEntries(Object.entries(query).filter(([k]) => !isChained(k))), options);
    return resolveChains(type, query, this.chainContext(access, options.lenient, options.dropped));
  }

  /** Checks an If-None-Exist query (its chains are checked as they are resolved). */
  private checkConditionalQuery(type: string, query: string): void {
    const asQuery = queryOfText(query.replace(/^\?/, ''));
    if (Object.keys(asQuery).length === 0) throw badRequest('If-None-Exist must carry search parameters', 'If-None-Exist');
    parseSearch(type, Object.fromEntries(Object.entries(asQuery).filter(([k]) => !isChained(k))), {
      lenient: false,
      supported: this.options.repository.supportedSearchParams(),
      defaultCount: 2,
      maxCount: 2,
    });
  }
}

/**
 * An If-None-Exist value (or a transaction entry's `ifNoneExist`) as the query it carries. R4 gives
 * the search parameters alone (http.html#ccreate), but HAPI-based clients and interface engines
 * (`conditionalByUrl("Patient?identifier=…")`) send them after the type, as a conditional update's
 * URL is written; that form is taken when it names the resource's own type, and another type is a
 * 400 rather than a parameter named `Observation?code`.
 */
function ifNoneExistQuery(type: string, value: string | undefined, where: string): string | undefined {
  if (value === undefined) return undefined;
  const typed = /^([A-Z][A-Za-z]+)\?(.*)$/s.exec(value);
  if (!typed) return value;
  if (typed[1] !== type) throw badRequest(`${where} names ${typed[1]!.slice(0, 64)}, but the resource created is a ${type}`, where);
  if (typed[2] === '') throw badRequest(`${where} must carry search parameters`, where);
  return typed[2]!;
}

/** A transaction whose POST entries' `ifNoneExist` are the queries they carry (ifNoneExistQuery). */
function withIfNoneExistQueries(bundle: Bundle): Bundle {
  if (!bundle.entry?.some((e) => e.request?.method === 'POST' && e.request.ifNoneExist !== undefined)) return bundle;
  return {
    ...bundle,
    entry: bundle.entry.map((e, i) => {
      const request = e.request;
      // an entry without a url is refused, naming it, by processTransaction
      if (request?.method !== 'POST' || request.ifNoneExist === undefined || typeof request.url !== 'string') return e;
      const type = request.url.split(/[/?]/)[0]!;
      return { ...e, request: { ...request, ifNoneExist: ifNoneExistQuery(type, request.ifNoneExist, `Bundle.entry[${i}].request.ifNoneExist`)! } };
    }),
  };
}

/**
 * The query a search page's links repeat: the parameters the search used (search.html#errors: the
 * self link SHALL say what was used), without those left out under lenient handling (`dropped`),
 * with `_count` as served (capped at the page size limit) and `_sort` as kept.
 */
function usedQuery(query: Record<string, string | string[]>, parsed: SearchRequest, dropped: Set<string>): [string, string][] {
  const used: [string, string][] = [];
  const once = (name: string, value: string): void => {
    if (!used.some(([n]) => n === name)) used.push([name, value]);
  };
  for (const [name, value] of queryPairs(query)) {
    if (name === '_pageToken' || name === '_format' || name === '_pretty') continue;
    if (name === '_count') once(name, String(parsed.count ?? value));
    else if (name === '_sort' && dropped.has(name)) {
      if (parsed.sortRules?.length) once(name, parsed.sortRules.map((r) => `${r.descending ? '-' : ''}${r.code}`).join(','));
    } else if (!dropped.has(name)) used.push([name, value]);
  }
  return used;
}

/** The search criteria of a conditional update, patch or delete: its query without the result parameters (isResultParam); none is 405. */
function conditionalCriteria(req: FhirRequest, interaction: 'update' | 'patch' | 'delete'): Record<string, string | string[]> {
  // only filters select: result parameters (`_count=1` would hide a second match) are left out
  const criteria = Object.fromEntries(Object.entries(req.query).filter(([k]) => !isResultParam(k)));
  if (Object.keys(criteria).length === 0) {
    throw methodNotAllowed(`${req.method} on a resource type needs search parameters (conditional ${interaction})`, ['GET', 'HEAD', 'POST']);
  }
  return criteria;
}

/** Why an RFC 6902 operation failed, by the library's error name (its messages may quote resource content). */
const PATCH_FAILURES: Record<string, string> = {
  MissingError: 'the path does not exist in the resource',
  TestError: 'the test failed: the value at the path differs',
  InvalidOperationError: 'not a JSON Patch operation',
};

/**
 * The patch a PATCH request carries, as a function applying it to a copy of the resource and
 * answering the issues of what could not be applied: a JSON Patch document
 * (`application/json-patch+json`) or a FHIRPath Patch `Parameters` resource (FHIR JSON). 415 for
 * other media types, 400 for a malformed document.
 */
function patchOf(req: FhirRequest): (resource: Resource) => OperationOutcomeIssue[] {
  const contentType = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
  if (contentType === 'application/json-patch+json') {
    const operations = jsonPatchBody(req);
    return (resource) => applyPatch(resource, operations as Operation[])
      .map((error, i) => (error ? { severity: 'error' as const, code: 'processing' as const, diagnostics: `Patch operation ${i} (${operations[i]!.op} ${operations[i]!.path.slice(0, 200)}): ${PATCH_FAILURES[error.name] ?? 'cannot be applied'}`, expression: [`[${i}]`] } : undefined))
      .filter((x) => x !== undefined);
  }
  if (FHIR_JSON_TYPES.has(contentType)) {
    if (!isFhirPathPatch(req.body)) throw badRequest('A PATCH with a FHIR JSON body takes a FHIRPath Patch: a Parameters resource of operations');
    const operations = parseFhirPathPatch(req.body);
    return (resource) => applyFhirPathPatch(resource, operations);
  }
  throw unsupportedMediaType(`PATCH takes a JSON Patch document (application/json-patch+json) or a FHIRPath Patch (application/fhir+json), not "${contentType.slice(0, 64) || 'none'}"`);
}

/** A JSON Patch document (RFC 6902): an array of operations, each with an `op` and a `path`. */
function jsonPatchBody(req: FhirRequest): { op: string; path: string }[] {
  const body = req.body;
  if (!Array.isArray(body) || body.length === 0) throw badRequest('A JSON Patch document is a non-empty array of operations');
  body.forEach((op: unknown, i) => {
    const o = op as { op?: unknown; path?: unknown } | null;
    if (!isJsonObject(o) || typeof o.op !== 'string' || !['add', 'remove', 'replace', 'move', 'copy', 'test'].includes(o.op) || typeof o.path !== 'string') {
      throw badRequest(`Patch operation ${i} needs an op (add, remove, replace, move, copy or test) and a path`, `[${i}]`);
    }
    // no FHIR element has these names; as pointer tokens they would reach object prototypes
    for (const pointer of [o.path, (o as { from?: unknown }).from]) {
      if (typeof pointer === 'string' && pointer.split('/').some((t) => ['__proto__', 'constructor', 'prototype'].includes(t))) {
        throw badRequest(`Patch operation ${i}: "${pointer.slice(0, 64)}" is not a path into a FHIR resource`, `[${i}]`);
      }
    }
  });
  return body as { op: string; path: string }[];
}

function checkId(id: string): string {
  if (!FHIR_ID.test(id)) throw notFound('Not found');
  return id;
}

/**
 * True unless the request plainly reads or writes one other resource type (`Type`, `Type/id`,
 * `Type/id/_history…` or `Type/_search` for a Type other than AuditEvent) or asks for `metadata`.
 */
function mayReadAuditEvents(request: FhirRequest): boolean {
  const parts = request.path.split('/');
  const type = parts[0]!;
  if (type === 'metadata') return false;
  if (type === 'AuditEvent' || !/^[A-Z]/.test(type)) return true;
  return parts.length > 1 && (parts[1]!.startsWith('$') || (parts.length > 2 && !parts[2]!.startsWith('_history')));
}

/** Media types of FHIR JSON request bodies. */
const FHIR_JSON_TYPES = new Set(['application/fhir+json', 'application/json']);

/** 415 unless the request says its body is FHIR JSON (`application/fhir+json` or `application/json`). */
export function requireFhirJson(req: FhirRequest): void {
  const contentType = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
  if (!FHIR_JSON_TYPES.has(contentType)) {
    throw unsupportedMediaType(`Content-Type must be application/fhir+json (got "${contentType.slice(0, 64) || 'none'}")`);
  }
}

function resourceBody(req: FhirRequest, type: string): Resource {
  requireFhirJson(req);
  const body = req.body;
  if (!isJsonObject(body)) throw badRequest('The body must be a JSON object holding a FHIR resource');
  if (body.resourceType !== type) throw badRequest(`The body's resourceType must be ${type}`, 'resourceType');
  return structuredClone(body) as unknown as Resource;
}

function formBody(req: FhirRequest): Record<string, string | string[]> {
  if (req.body === undefined) return {};
  const contentType = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
  if (contentType !== 'application/x-www-form-urlencoded') {
    throw unsupportedMediaType('POST _search takes application/x-www-form-urlencoded');
  }
  // In-process callers can hand over any value; only a map of fields is a form.
  if (typeof req.body !== 'object' || req.body === null || Array.isArray(req.body)) throw badRequest('POST _search takes form fields');
  const fields = req.body as Record<string, unknown>;
  for (const [name, value] of Object.entries(fields)) {
    if (!(typeof value === 'string' || (Array.isArray(value) && value.every((v) => typeof v === 'string')))) {
      throw badRequest(`POST _search takes form fields whose values are text; "${name.slice(0, 64)}" is not`, name.slice(0, 64));
    }
  }
  return fields as Record<string, string | string[]>;
}

/**
 * What of an operation's input is checked for well-formedness before its handler reads it. The
 * resource given to `$validate` is what the operation answers about, 200 with its issues
 * (operation-resource-validate.html), as when it is sent bare: only the Parameters around it is
 * checked here, with that resource reduced to its type.
 */
function inputEnvelope(operation: string, body: Record<string, unknown>): Resource {
  if (operation !== 'validate' || body.resourceType !== 'Parameters' || !Array.isArray(body.parameter)) return body as unknown as Resource;
  const parameter = body.parameter.map((p: unknown) => (isJsonObject(p) && isJsonObject(p.resource) && typeof p.resource.resourceType === 'string'
    ? { ...p, resource: { resourceType: p.resource.resourceType } } : p));
  return { ...body, parameter } as unknown as Resource;
}

/** Parameters' value[x] types a query parameter can carry (primitive types). */
const PRIMITIVE_VALUES = ['valueString', 'valueCode', 'valueId', 'valueUri', 'valueUrl', 'valueCanonical', 'valueDate', 'valueDateTime', 'valueInstant',
  'valueTime', 'valueInteger', 'valuePositiveInt', 'valueUnsignedInt', 'valueDecimal', 'valueBoolean', 'valueOid', 'valueUuid'];

/**
 * The input of a POST to an operation that takes its parameters as a query (GET): a Parameters
 * body (or none), each parameter a name and one primitive value, as query parameters.
 */
function parametersAsQuery(req: FhirRequest, operation: string): Record<string, string | string[]> {
  if (req.body === undefined) return {};
  requireFhirJson(req);
  const body = req.body;
  if (!isJsonObject(body) || body.resourceType !== 'Parameters') throw badRequest(`POST to $${operation} takes a Parameters resource`, 'resourceType');
  const pairs: [string, string][] = [];
  const parameters = (body as unknown as Parameters).parameter ?? [];
  parameters.forEach((parameter, i) => {
    const fields = parameter as unknown as Record<string, unknown>;
    const values = PRIMITIVE_VALUES.filter((k) => fields[k] !== undefined);
    const value = values.length === 1 ? fields[values[0]!] : undefined;
    if (typeof parameter.name !== 'string' || !parameter.name || !['string', 'number', 'boolean'].includes(typeof value) || parameter.part || parameter.resource) {
      throw badRequest(`Parameters.parameter[${i}] of $${operation} must be a name and one primitive value`, `Parameters.parameter[${i}]`);
    }
    pairs.push([parameter.name, String(value)]);
  });
  return pairsToQuery(pairs);
}

function mergeQuery(a: Record<string, string | string[]>, b: Record<string, string | string[]>): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = { ...a };
  for (const [k, v] of Object.entries(b)) out[k] = k in out ? [out[k]!].flat().concat(v) : v;
  return out;
}

/** A page position (PagePosition) with its repository position only when there is one. */
function position(offset: number, after: string | undefined): PagePosition {
  return after === undefined ? { offset } : { offset, after };
}

function single(v: string | string[] | undefined): string | undefined {
  if (Array.isArray(v)) {
    if (v.length > 1) throw badRequest('Parameter given more than once');
    return v[0];
  }
  return v;
}


/**
 * Conditional read (http.html#cread, RFC 9110 §13.1.2–3), decided only after the guards passed the
 * version: `If-None-Match` naming its ETag (weak comparison; a list, or `*`), or else
 * `If-Modified-Since` at or after its last update (to the second), is 304 without a body.
 */
function notModified(req: FhirRequest, resource: Resource): boolean {
  const noneMatch = req.headers['if-none-match'];
  if (noneMatch !== undefined) {
    const version = resource.meta?.versionId;
    if (!version) return false;
    return String(noneMatch).split(',').some((tag) => {
      const t = tag.trim();
      return t === '*' || t.replace(/^W\//, '') === `"${version}"`;
    });
  }
  const since = req.headers['if-modified-since'];
  const lastUpdated = resource.meta?.lastUpdated;
  if (since === undefined || !lastUpdated) return false;
  const sinceMs = Date.parse(String(since));
  return !Number.isNaN(sinceMs) && Math.floor(Date.parse(lastUpdated) / 1000) * 1000 <= sinceMs;
}

function etagOf(resource: Resource): string | undefined {
  return resource.meta?.versionId ? `W/"${resource.meta.versionId}"` : undefined;
}

/** ETag and Last-Modified of a stored resource version. */
export function versionHeaders(resource: Resource): Record<string, string> {
  const headers: Record<string, string> = {};
  const etag = etagOf(resource);
  if (etag) headers.ETag = etag;
  if (resource.meta?.lastUpdated) headers['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
  return headers;
}

/** `W/"3"` or `"3"` → `3`. */
export function parseIfMatch(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  const m = /^(?:W\/)?"([^"]+)"$/.exec(header.trim());
  if (!m) throw badRequest('If-Match must be an ETag such as W/"1"', 'If-Match');
  return m[1];
}

function preferReturn(req: FhirRequest): 'minimal' | 'representation' | 'OperationOutcome' {
  const m = /return=(minimal|representation|OperationOutcome)/.exec(req.headers.prefer ?? '');
  return (m?.[1] as 'minimal' | 'representation' | 'OperationOutcome' | undefined) ?? 'representation';
}

/** `Prefer: handling=lenient`: unknown or unsupported parameters are left out rather than refused. */
export function preferLenient(req: FhirRequest): boolean {
  return /handling=lenient/.test(req.headers.prefer ?? '');
}

function forbiddenWrite(): GlucoGuardError {
  return forbidden('Not allowed to write this resource');
}

/**
 * `GET metadata[?mode=full|normal|terminology]` (http.html#capabilities): the CapabilityStatement,
 * which is the same in full and normal here; for `terminology` a TerminologyCapabilities saying that
 * this server runs no terminology service (no code system, $lookup, $validate-code, $expand or
 * $translate), rather than a CapabilityStatement the client did not ask for. Another mode is 400.
 */
function capabilitiesOf(statement: Resource, mode: string | string[] | undefined): Resource {
  if (mode === undefined || mode === 'full' || mode === 'normal') return statement;
  if (mode !== 'terminology') throw badRequest('mode must be full, normal or terminology', 'mode');
  const { date, software, implementation } = statement as CapabilityStatement;
  const capabilities: TerminologyCapabilities = {
    resourceType: 'TerminologyCapabilities', status: 'active', kind: 'instance', date: date ?? new Date().toISOString(),
    ...(software ? { software } : {}), ...(implementation ? { implementation } : {}),
    description: 'This server runs no terminology service: it supports no code system, and no $lookup, $validate-code, $expand, $subsumes or $translate.',
  };
  return capabilities;
}
