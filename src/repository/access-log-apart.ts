/**
 * An upstream FHIR server for the patients' data, with the access log (AuditEvent) kept apart in
 * the embedded store of the data directory (GLUCOGUARD_AUDIT_STORE=local): for an upstream that
 * takes no AuditEvent from third parties, as many EHR APIs do, which would otherwise keep no record
 * of who looked. Every interaction on AuditEvent goes to the local store, everything else upstream;
 * the ledger above commits both alike.
 *
 * What crosses the two is not joined: a search of another type that includes AuditEvents
 * (`_revinclude=AuditEvent:…`) gets none, system-level history lists the upstream's versions only,
 * and a transaction mixing AuditEvents with other resources is refused (400). The access log is
 * written by GlucoGuard alone, one event at a time on this path.
 */
import type { SearchRequest } from '@medplum/core';
import type { Bundle, Resource } from '@medplum/fhirtypes';
import { badRequest } from '../errors.js';
import type { HistoryRequest, HistoryResult, Repository, RepositoryDescription, SearchOptions, SearchResult, WriteResult } from './port.js';

const LOG_TYPE = 'AuditEvent';

export class AccessLogApartRepository implements Repository {
  readonly description: RepositoryDescription;
  /** The ledger reconciles and checks the access log as the embedded store's own (port.ts). */
  readonly localPart: { types: ReadonlySet<string>; repository: Repository };

  constructor(private readonly main: Repository, private readonly log: Repository) {
    this.description = { ...main.description, location: `${main.description.location}; access log (AuditEvent) kept in ${log.description.location}` };
    this.localPart = { types: new Set([LOG_TYPE]), repository: log };
  }

  private of(type: string | undefined): Repository {
    return type === LOG_TYPE ? this.log : this.main;
  }

  supportedSearchParams(): Record<string, string[]> | undefined {
    return this.main.supportedSearchParams();
  }

  create<T extends Resource>(resource: T, options?: { ifNoneExist?: string }): Promise<WriteResult<T>> {
    return this.of(resource.resourceType).create(resource, options);
  }

  read<T extends Resource = Resource>(resourceType: string, id: string): Promise<T> {
    return this.of(resourceType).read<T>(resourceType, id);
  }

  vread<T extends Resource = Resource>(resourceType: string, id: string, versionId: string): Promise<T> {
    return this.of(resourceType).vread<T>(resourceType, id, versionId);
  }

  update<T extends Resource>(resource: T, options?: { ifMatch?: string }): Promise<WriteResult<T>> {
    return this.of(resource.resourceType).update(resource, options);
  }

  delete(resourceType: string, id: string, options?: { ifMatch?: string }): Promise<void> {
    return this.of(resourceType).delete(resourceType, id, options);
  }

  search(request: SearchRequest, options?: SearchOptions): Promise<SearchResult> {
    return this.of(request.resourceType).search(request, options);
  }

  history(request: HistoryRequest): Promise<HistoryResult> {
    return this.of(request.resourceType).history(request);
  }

  transaction(bundle: Bundle): Promise<Bundle> {
    const types = new Set((bundle.entry ?? []).map((e) => e.resource?.resourceType ?? e.request?.url?.split(/[/?]/)[0]));
    if (!types.has(LOG_TYPE)) return this.main.transaction(bundle);
    if (types.size === 1) return this.log.transaction(bundle);
    throw badRequest('A transaction cannot write AuditEvents together with other resources: the access log is kept apart from the repository (GLUCOGUARD_AUDIT_STORE=local)');
  }

  async close(): Promise<void> {
    await Promise.all([this.main.close(), this.log.close()]);
  }
}
