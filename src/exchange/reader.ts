/**
 * Reads everything a requester may see of one resource type, page by page with bounded memory,
 * through exactly the steps of a FHIR search: the policy's type-level authorize, parseSearch, the
 * policy's narrowing (consent: granted patients and data periods), the repository, then every
 * outbound guard (SMART scopes, consent, integrity) at the moment the page is read. The router's
 * `searchAll` does the same but collects all matches in memory; exports need pages.
 *
 * Paging: patient-linked types are read one patient at a time, the policy's narrowing worked out
 * once per patient (consent: nothing at all for a patient who granted nothing, else only the granted
 * data period). Where the repository offers bulk reads (the embedded adapter's `searchChunks`), that
 * patient's narrowed search is streamed in chunks in index order; otherwise Observations (the bulk
 * of the data) are paged by a keyset on `date` (ge the last date seen, skipping the ids already
 * emitted at that instant), so the repository does not rescan earlier pages, and other types by
 * offset pages. Every chunk goes through the outbound guards before it is handed on.
 *
 * Several queries for one type (an export's `_typeFilter`s, OR'ed) are read one after the other
 * for each patient, and a resource already handed on for that patient is not handed on again, so
 * what matches several queries is exported once while memory stays bounded by one patient's ids.
 */
import { Operator, type SearchRequest } from '@medplum/core';
import type { Observation, OperationOutcomeIssue, Resource } from '@medplum/fhirtypes';
import { badRequest, isGlucoGuardError } from '../errors.js';
import type { AccessContext } from '../fhir/access.js';
import { patientCompartmentParams } from '../fhir/compartment.js';
import type { AccessPolicy } from '../fhir/policy.js';
import type { FhirRouter } from '../fhir/router.js';
import { parseSearch } from '../fhir/search.js';
import { pairsToQuery, queryPairs } from '../fhir/paging.js';
import type { Repository, SearchOptions } from '../repository/port.js';
import { CONSENT_NO_MATCH_ID } from '../consent/policy.js';

/**
 * Every page is guarded: a version whose stored bytes do not authenticate comes as its stand-in,
 * which the integrity check withholds and reports (an issue in the export's error file, a security
 * AuditEvent), as it does a version whose content fails its commitment.
 */
const GUARDED_READ: SearchOptions = { standIns: true };

export interface GuardedPage {
  resources: Resource[];
  issues: OperationOutcomeIssue[];
}

/** A repository that can stream a search in chunks (EmbeddedRepository.searchChunks). */
export interface BulkSearch {
  searchChunks(request: SearchRequest, chunk?: number, options?: Pick<SearchOptions, 'standIns'>): AsyncIterable<Resource[]>;
}

/** The bulk-read side of a repository, looking through decorators (`adapter`) to the adapter. */
export function bulkSearchOf(repository: Repository): BulkSearch | undefined {
  for (let r: unknown = repository, depth = 0; r && depth < 8; r = (r as { adapter?: unknown }).adapter, depth++) {
    if (typeof (r as Partial<BulkSearch>).searchChunks === 'function') return r as BulkSearch;
  }
  return undefined;
}

export interface ReaderOptions {
  fhir: FhirRouter;
  policy: AccessPolicy;
  repository: Repository;
  /** Rows per repository page (default 250: a chunk that dies young costs the GC little; larger ones get promoted). */
  pageSize?: number;
}

const KEYSET_START = '1900-01-01T00:00:00.000Z';

/**
 * Whether the policy's narrowing left a search that selects nothing the requester may see. Such a
 * search is never sent: on an upstream each is an HTTP search, and an export reads every patient
 * of the repository for each type — a study granted by two patients of an EHR with 100,000 would
 * send 600,000 searches to learn nothing. (Whatever one could match, the guards would withhold.)
 */
function selectsNothing(request: SearchRequest): boolean {
  return (request.filters ?? []).some((f) => f.code === '_id' && f.operator === Operator.EQUALS && f.value === CONSENT_NO_MATCH_ID);
}

/**
 * `query` with one more `name=value`: a repeated parameter, so ANDed with any filter of that name the
 * caller gave (a `_typeFilter`'s patient or `_id`), never in its place.
 */
function andWith(query: Record<string, string | string[]>, name: string, value: string): Record<string, string | string[]> {
  return pairsToQuery([...queryPairs(query), [name, value]]);
}

export class GuardedReader {
  private readonly pageSize: number;
  private readonly bulk: BulkSearch | undefined;

  constructor(private readonly options: ReaderOptions) {
    this.pageSize = options.pageSize ?? 250;
    this.bulk = bulkSearchOf(options.repository);
  }

  /** Throws 403 when the requester may never search this type (scopes). */
  async authorize(access: AccessContext, type: string): Promise<void> {
    await this.options.policy.authorize(access, 'search', type);
  }

  /** True when resources of this type belong to patients (read per patient). */
  static isPatientLinked(type: string): boolean {
    return type === 'Patient' || patientCompartmentParams(type).includes('patient') || patientCompartmentParams(type).includes('subject');
  }

  /**
   * Guarded pages of `type` matching `query`. With `patients`, only those patients' resources
   * (patient-linked types); without, every match.
   */
  async *pages(access: AccessContext, type: string, query: Record<string, string | string[]>, patients?: AsyncIterable<string> | Iterable<string>): AsyncGenerator<GuardedPage> {
    await this.authorize(access, type);
    if (type === 'Patient' && patients) {
      let batch: string[] = [];
      for await (const id of patients) {
        batch.push(id);
        if (batch.length === 100) {
          yield* this.offsetPages(access, type, andWith(query, '_id', batch.join(',')));
          batch = [];
        }
      }
      if (batch.length) yield* this.offsetPages(access, type, andWith(query, '_id', batch.join(',')));
      return;
    }
    if (patients && type !== 'Patient' && GuardedReader.isPatientLinked(type) && this.hasPatientParam(type)) {
      for await (const id of patients) {
        const q = andWith(query, 'patient', `Patient/${id}`);
        if (this.bulk) yield* this.streamedPages(access, type, q, this.bulk);
        else if (type === 'Observation') yield* this.keysetPages(access, type, q);
        else yield* this.offsetPages(access, type, q);
      }
      return;
    }
    yield* this.offsetPages(access, type, query);
  }

  /**
   * Guarded pages of `type` matching any of `queries` (none: every resource of the type), each
   * resource once; with `patients` as for `pages`.
   */
  async *pagesOfAny(access: AccessContext, type: string, queries: Record<string, string | string[]>[], patients?: AsyncIterable<string> | Iterable<string>): AsyncGenerator<GuardedPage> {
    if (queries.length <= 1) {
      yield* this.pages(access, type, queries[0] ?? {}, patients);
      return;
    }
    await this.authorize(access, type);
    if (patients && type !== 'Patient' && GuardedReader.isPatientLinked(type) && this.hasPatientParam(type)) {
      for await (const id of patients) yield* this.anyOf(access, type, queries, [id]);
      return;
    }
    if (type === 'Patient' && patients) {
      let batch: string[] = [];
      for await (const id of patients) {
        batch.push(id);
        if (batch.length === 100) {
          yield* this.anyOf(access, type, queries, batch);
          batch = [];
        }
      }
      if (batch.length) yield* this.anyOf(access, type, queries, batch);
      return;
    }
    // not read per patient (a system export of a type outside the patient compartment): few resources
    yield* this.anyOf(access, type, queries);
  }

  /** Each query's pages in turn, a resource already passed on left out. */
  private async *anyOf(access: AccessContext, type: string, queries: Record<string, string | string[]>[], patients?: string[]): AsyncGenerator<GuardedPage> {
    const once = onlyOnce();
    for (const query of queries) for await (const page of this.pages(access, type, query, patients)) yield once(page);
  }

  /**
   * Throws what the job would throw for this query (400 for an unknown parameter, a bad modifier or
   * value, a malformed chain; 403 when the requester may not search the type), before a job exists:
   * the same chain resolution, parser and policy narrowing as `pages`, then a repository search
   * that reads at most a row or two (the repository checks values: a quantity that is no number).
   */
  async check(access: AccessContext, type: string, query: Record<string, string | string[]>): Promise<void> {
    await this.authorize(access, type);
    const resolved = await this.resolved(access, type, query);
    if (!resolved) return;
    const request = await this.narrowed(access, type, resolved);
    try {
      await this.options.repository.search({ ...request, count: 0, offset: 0 }, { scanLimit: 1 });
    } catch (err) {
      // past the one-row scan limit: every filter passed the checks that precede the scan
      if (isGlucoGuardError(err, 'ERR_INVALID') && err.issues[0]?.code === 'too-costly') return;
      throw err;
    }
  }

  /**
   * Whether the requester may read this resource as a read by id would decide (the type's read
   * permission, then every outbound guard); a caller answers one they may not like a missing one.
   */
  async readable(access: AccessContext, resource: Resource): Promise<boolean> {
    const { allowed } = await this.options.fhir.guard(access, [resource], { oneOff: true });
    return allowed.length === 1;
  }

  /** Throws 403 when the requester may never read this type (scopes), whatever the id. */
  async authorizeRead(access: AccessContext, type: string): Promise<void> {
    await this.options.policy.authorize(access, 'read', type);
  }

  /** A query with its chains and `_has` resolved for the requester (FhirRouter.resolvedCriteria); undefined: it selects nothing. */
  resolved(access: AccessContext, type: string, query: Record<string, string | string[]>): Promise<Record<string, string | string[]> | undefined> {
    return this.options.fhir.resolvedCriteria(access, type, query);
  }

  private hasPatientParam(type: string): boolean {
    const supported = this.options.repository.supportedSearchParams();
    return supported ? (supported[type] ?? []).includes('patient') : true;
  }

  private async narrowed(access: AccessContext, type: string, query: Record<string, string | string[]>): Promise<SearchRequest> {
    const parsed = parseSearch(type, query, {
      lenient: false,
      supported: this.options.repository.supportedSearchParams(),
      defaultCount: this.pageSize,
      maxCount: this.pageSize,
    });
    return this.options.policy.narrowSearch(access, { ...parsed, offset: 0 });
  }

  private async guarded(access: AccessContext, resources: Resource[]): Promise<GuardedPage> {
    // read once: checked like any read, but nothing about these versions is kept in per-version caches
    const { allowed, issues } = await this.options.fhir.guard(access, resources, { oneOff: true });
    return { resources: allowed, issues };
  }

  private async *offsetPages(access: AccessContext, type: string, query: Record<string, string | string[]>): AsyncGenerator<GuardedPage> {
    const request = await this.narrowed(access, type, query);
    if (selectsNothing(request)) return;
    for (let offset = 0; ; offset += this.pageSize) {
      const result = await this.options.repository.search({ ...request, count: this.pageSize, offset }, GUARDED_READ);
      yield await this.guarded(access, result.resources);
      if (!result.hasMore || result.resources.length === 0) return;
    }
  }

  private async *streamedPages(access: AccessContext, type: string, query: Record<string, string | string[]>, bulk: BulkSearch): AsyncGenerator<GuardedPage> {
    const request = await this.narrowed(access, type, query);
    if (selectsNothing(request)) return;
    for await (const chunk of bulk.searchChunks(request, this.pageSize, GUARDED_READ)) yield await this.guarded(access, chunk);
  }

  private async *keysetPages(access: AccessContext, type: string, query: Record<string, string | string[]>): AsyncGenerator<GuardedPage> {
    let cursor = KEYSET_START;
    let seenAtCursor = new Set<string>();
    for (;;) {
      const dates = [query.date ?? []].flat();
      const request = await this.narrowed(access, type, { ...query, date: [...dates, `ge${cursor}`], _sort: 'date' });
      if (selectsNothing(request)) return;
      // Rows at the cursor instant already emitted come first among the matches: ask for that many
      // more and drop them. (Not skipped by offset: an upstream pages by its own links, so an offset
      // of 1 cost a second search of a whole page for the one row past the first.)
      const result = await this.options.repository.search({ ...request, count: this.pageSize + seenAtCursor.size, offset: 0 });
      // Rows before the cursor (periods overlapping it) or at it and already emitted came in earlier pages.
      const fresh = result.resources.filter((r) => {
        const at = effectiveOf(r);
        return at !== undefined && (at > cursor || (at === cursor && !seenAtCursor.has(r.id!)));
      });
      if (fresh.length === 0) {
        if (result.hasMore) throw badRequest(`More than ${this.pageSize} resources share one effective time`);
        return;
      }
      yield await this.guarded(access, fresh);
      if (!result.hasMore) return;
      const last = effectiveOf(fresh[fresh.length - 1]!);
      if (last === undefined) return;
      if (last !== cursor) seenAtCursor = new Set();
      cursor = last;
      for (const r of fresh) if (effectiveOf(r) === cursor) seenAtCursor.add(r.id!);
    }
  }
}

/** Passes each resource (and each issue) once over the pages it is given. */
function onlyOnce(): (page: GuardedPage) => GuardedPage {
  const seen = new Set<string>();
  const told = new Set<string>();
  const first = (key: string, into: Set<string>): boolean => !into.has(key) && !!into.add(key);
  return (page) => ({
    resources: page.resources.filter((r) => first(`${r.resourceType}/${r.id}`, seen)),
    issues: page.issues.filter((i) => first(JSON.stringify(i), told)),
  });
}

/** The instant an Observation sorts by (`date`), normalised to ISO; undefined for undated ones. */
function effectiveOf(resource: Resource): string | undefined {
  const o = resource as Observation;
  const raw = o.effectiveDateTime ?? o.effectiveInstant ?? o.effectivePeriod?.start;
  if (!raw) return undefined;
  const t = Date.parse(raw);
  return Number.isNaN(t) ? undefined : new Date(t).toISOString();
}
