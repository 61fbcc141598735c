/**
 * The Repository port: everything the FHIR facade needs from a patient repository. Two adapters
 * implement it: `embedded/` (default; on disk, encrypted at rest) and `upstream/` (any FHIR R4
 * server). Only src/app.ts constructs them.
 *
 * Semantics follow the FHIR R4 RESTful API (https://hl7.org/fhir/R4/http.html); each method names
 * the section it implements. Errors are GlucoGuardError kinds from src/errors.ts:
 * ERR_NOT_FOUND, ERR_GONE (deleted), ERR_PRECONDITION_FAILED (If-Match / multiple conditional
 * matches), ERR_CONFLICT, ERR_INVALID, ERR_UPSTREAM / ERR_UPSTREAM_TIMEOUT (upstream only).
 * A method that throws has changed nothing.
 */
import type { SearchRequest } from '@medplum/core';
import type { Bundle, Resource } from '@medplum/fhirtypes';
import { builtObjectOf, deferredCanonicalText, deferredJsonText, isDeferred } from './deferred.js';
import { GlucoGuardError, issue } from '../errors.js';

/** How one search may run. */
export interface SearchOptions {
  /**
   * How many candidates the embedded store may examine beyond those the page needs (candidates that
   * do not match, or matches past the page when it must sort them itself) before it refuses the
   * search as too costly (400, issue code `too-costly`): a search it cannot narrow by an index
   * otherwise holds the process for as long as reading every resource of the type takes.
   * Undefined or 0: no limit (internal callers). An upstream server applies its own limits.
   */
  scanLimit?: number;
  /**
   * The caller reads little of the matches and passes them on (the FHIR router's search pages: the
   * guards read a few members, the rest leaves as text): the embedded store may answer deferred
   * resources (src/repository/deferred.ts), parsed only as far as they are read, their JSON cut
   * from the stored text. Adapters without stored text ignore it.
   */
  deferred?: boolean;
  /**
   * The caller passes every match through the integrity guard (the FHIR router's searches and
   * includes, exports): a version whose stored bytes do not authenticate while its data key is there
   * (altered, swapped or corrupted on disk) comes back as its stand-in (TamperedVersionError,
   * isTamperedStandIn) rather than being left out, so the guard withholds it and says so. Nothing of
   * its content can be matched or sorted on: it stands wherever the index placed it (a sort puts it
   * last). A version whose data key was erased is still left out. Adapters that cannot tell ignore it.
   */
  standIns?: boolean;
  /**
   * Keyset paging: a mark from an earlier page's SearchResult.positionOf. The page holds the matches
   * strictly after that one in the search's order (`request.offset` is then not counted), so
   * resources created, updated or deleted since the mark was taken shift nothing after it. When the
   * adapter cannot resume from it (a mark of an order this search is no longer read in, that it cannot
   * compute), it pages by `request.offset` instead, which the caller keeps counting for that. Adapters
   * without positions ignore it.
   */
  after?: string;
}

/** One version of one resource. */
export interface VersionKey {
  resourceType: string;
  id: string;
  versionId: string;
}

export interface RepositoryDescription {
  /** Adapter name for the start-up log: 'embedded' or 'upstream'. */
  adapter: 'embedded' | 'upstream';
  /** Where the data lives: a directory or an upstream base URL (never credentials). */
  location: string;
  /**
   * How the adapter reaches it, for the start-up log (upstream: the auth mode, and for Backend
   * Services the client id, token URL, algorithm and kid; never a secret).
   */
  access?: string;
}

/** Result of a write. `outcome` tells the facade which status to answer (201, 200, or 200 for an existing match). */
export interface WriteResult<T extends Resource = Resource> {
  resource: T;
  outcome: 'created' | 'updated' | 'existing';
}

export interface SearchResult {
  /** Matches for this page, in the requested order; at most `request.count`. */
  resources: Resource[];
  /** Resources added by `_include` / `_revinclude` (search mode `include`). */
  included: Resource[];
  /** True when more matches exist after `offset + count`. */
  hasMore: boolean;
  /**
   * The position of `resources[index]` in the search's order, to resume after it
   * (SearchOptions.after); an opaque mark, worked out when asked. Absent: the adapter pages by
   * offset only (upstream).
   */
  positionOf?(index: number): string;
}

export interface HistoryRequest {
  resourceType?: string;
  id?: string;
  /** Only versions updated at or after this instant (`_since`). */
  since?: string;
  /**
   * Type and system history only: at most the versions of resources whose first patient link is one
   * of these patients, and their deletions — a requester limited to some patients' data can see
   * nothing else, so paging past everyone else's versions would only cost time. A pre-filter: the
   * router's guards still decide every version. An adapter that cannot narrow may ignore it.
   */
  patients?: string[];
  /** Page size and start (newest first). */
  count: number;
  offset: number;
  /** As SearchOptions.standIns: a version whose stored bytes do not authenticate comes as its stand-in. */
  standIns?: boolean;
  /**
   * The adapter's own mark from an earlier page's HistoryResult.snapshot: this page holds only
   * versions written before it, so versions written since (an AuditEvent per page read, on system
   * history) do not shift the pages a client walks. Adapters without one ignore it.
   */
  snapshot?: string;
}

export interface HistoryEntry {
  resourceType: string;
  id: string;
  versionId: string;
  lastUpdated: string;
  method: 'POST' | 'PUT' | 'DELETE';
  /** Absent for deletions. */
  resource?: Resource;
}

export interface HistoryResult {
  entries: HistoryEntry[];
  hasMore: boolean;
  /** Where history stood when this page was read (HistoryRequest.snapshot), for the pages after it. */
  snapshot?: string;
}

export interface Repository {
  readonly description: RepositoryDescription;

  /**
   * Search parameters this adapter can answer, per resource type, or `undefined` when it passes
   * any standard parameter through (upstream). The facade refuses others with 400 and the
   * CapabilityStatement lists exactly these.
   */
  supportedSearchParams(): Record<string, string[]> | undefined;

  /** create (http.html#create); with `ifNoneExist` a conditional create (http.html#ccreate). */
  create<T extends Resource>(resource: T, options?: { ifNoneExist?: string }): Promise<WriteResult<T>>;

  /** read (http.html#read): current version; ERR_GONE when the current version is a deletion. */
  read<T extends Resource = Resource>(resourceType: string, id: string): Promise<T>;

  /** vread (http.html#vread). ERR_GONE when that version is a deletion. */
  vread<T extends Resource = Resource>(resourceType: string, id: string, versionId: string): Promise<T>;

  /** update (http.html#update), update-as-create allowed; `ifMatch` is a bare versionId (http.html#concurrency). */
  update<T extends Resource>(resource: T, options?: { ifMatch?: string }): Promise<WriteResult<T>>;

  /**
   * delete (http.html#delete); deleting an absent or deleted resource succeeds (idempotent). With
   * `ifMatch` (a bare versionId, http.html#concurrency) ERR_PRECONDITION_FAILED unless that is the
   * current version: an absent or deleted resource has none.
   */
  delete(resourceType: string, id: string, options?: { ifMatch?: string }): Promise<void>;

  /**
   * search (search.html), parsed by @medplum/core `parseSearchRequest`; offset/count page it, or
   * count and a position (SearchOptions.after, SearchResult.positionOf) where the adapter has them.
   */
  search(request: SearchRequest, options?: SearchOptions): Promise<SearchResult>;

  /** instance, type and system history (http.html#history), newest first. */
  history(request: HistoryRequest): Promise<HistoryResult>;

  /**
   * Optional, for start-up reconciliation of the ledger (src/ledger/anchored-repository.ts): the
   * keys of the readable versions (not deletions) last updated at or after `since` (epoch ms), in
   * no particular order, read from an index without decoding any body. Without it, reconciliation
   * walks history page by page.
   */
  versionKeysSince?(since: number): Iterable<VersionKey>;

  /**
   * Optional, for an adapter that keeps some types in the embedded store and the rest on an
   * upstream server (access-log-apart.ts): that embedded part and the types it holds, which the
   * ledger treats as the embedded store's own (reconciled from its listing, no write intents,
   * a committed version missing from it is an integrity failure).
   */
  readonly localPart?: { types: ReadonlySet<string>; repository: Repository };

  /**
   * transaction (http.html#transaction): all entries succeed or nothing changes; `urn:uuid:`
   * references resolved; conditional creates honoured. Returns a `transaction-response` Bundle.
   */
  transaction(bundle: Bundle): Promise<Bundle>;

  /** Flushes and releases resources (files, sockets). */
  close(): Promise<void>;
}

/**
 * Side channel from an adapter that keeps each version's RFC 8785 canonical text (the embedded
 * adapter stores its bodies that way) to the integrity layer: reads and writes attach the exact
 * text behind a returned resource, so checking it costs one SHA-256 instead of a canonicalisation.
 * The text omits meta.versionId/meta.lastUpdated (src/ledger/canonical.ts). A resource object
 * changed after it was returned must not be looked up here (callers copy before changing).
 */
const canonicalTexts = new WeakMap<object, string>();

/** The canonical text the adapter read or wrote this exact object from, if it has one. */
export function canonicalTextOf(resource: Resource): string | undefined {
  const own = canonicalTexts.get(resource);
  if (own !== undefined || !isDeferred(resource)) return own;
  return deferredCanonicalText(resource) ?? canonicalTexts.get(builtObjectOf(resource));
}

/** Adapters: attach the canonical text behind a resource object they return. */
export function attachCanonicalText(resource: Resource, text: string): void {
  canonicalTexts.set(resource, text);
}

/**
 * Resource objects an adapter hands to many callers (deep-frozen: they can never change, see
 * src/repository/embedded/decoded-cache.ts). What is worked out from one of them once (the
 * consent facts of src/consent/decision.ts) may be kept with the object itself.
 */
const immutables = new WeakSet<object>();

export function markImmutable(resource: Resource): void {
  immutables.add(resource);
}

export function isImmutable(resource: object): boolean {
  return immutables.has(resource);
}

/** JSON texts of immutable resources, worked out at their first serialisation. */
const jsonTexts = new WeakMap<object, string>();

/**
 * `JSON.stringify(resource)`, kept with the object when it is immutable: a version read again from
 * the embedded repository's decoded cache is the same frozen object, so its text cannot have
 * changed (the text lives as long as the object; the cache counts it in its budget). A deferred
 * resource's text is cut from its stored text (src/repository/deferred.ts).
 */
export function jsonTextOf(resource: object): string {
  let text = jsonTexts.get(resource);
  if (text === undefined) {
    if (isDeferred(resource)) return deferredJsonText(resource) ?? JSON.stringify(builtObjectOf(resource));
    text = JSON.stringify(resource);
    if (immutables.has(resource)) jsonTexts.set(resource, text);
  }
  return text;
}

/** Stand-ins for versions whose stored bytes did not authenticate (TamperedVersionError). */
const tamperedStandIns = new WeakSet<object>();
/** The patient a stand-in's version is recorded under (its commitment's), when known. */
const standInPatients = new WeakMap<object, string>();

/**
 * A read or vread of a version whose data key is there but whose stored bytes do not authenticate
 * (altered, swapped or corrupted on disk): not an erasure. It is ERR_GONE to every caller that
 * only reads (nothing of it can be served), and carries `standIn` — the version's type, id and
 * meta, nothing else — for the FHIR router to hand to the outbound guards, where the integrity
 * check fails it (withheld, OperationOutcome issue, security AuditEvent) as it does any altered version.
 * Searches and history asked for stand-ins (SearchOptions.standIns) return the stand-in in its place.
 * Its content is unreadable, so the patient it belongs to is given apart (`patient`: the one its
 * commitment was recorded under, src/ledger/anchored-repository.ts) and found by patientIdsOf
 * (standInPatientOf): consent lets the stand-in reach the integrity check for open access and for
 * that patient (their own data); a grantee cannot place it in a granted code or data period, so it
 * is left out for them, as any resource they may not see.
 */
export class TamperedVersionError extends GlucoGuardError {
  readonly standIn: Resource;
  constructor(type: string, id: string, versionId: string, lastUpdated: string, patient?: string) {
    const details = `${type}/${id} is no longer available`;
    super('ERR_GONE', details, [issue('ERR_GONE', details)]);
    this.name = 'TamperedVersionError';
    this.standIn = { resourceType: type, id, meta: { versionId, lastUpdated } } as Resource;
    tamperedStandIns.add(this.standIn);
    if (patient !== undefined) standInPatients.set(this.standIn, patient);
  }
}

/**
 * An adapter that makes stand-ins (the embedded one) and can be told whose they are: the ledger
 * decorator sets `standInPatient` to look a version's patient up in its commitment record.
 */
export interface StandInSource {
  standInPatient: ((type: string, id: string, versionId: string) => string | undefined) | undefined;
}

/** The patient a stand-in (TamperedVersionError.standIn) belongs to, when known; undefined for any other resource. */
export function standInPatientOf(resource: object): string | undefined {
  return standInPatients.get(resource);
}

/** True for the stand-in of a version whose stored bytes did not authenticate (never to be served). */
export function isTamperedStandIn(resource: object): boolean {
  return tamperedStandIns.has(resource);
}
