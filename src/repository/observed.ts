/**
 * Base of the Repository decorators that act on every version written — the ledger's commitments
 * (src/ledger/anchored-repository.ts) and subscription notifications (src/exchange/write-events.ts).
 * Every port method is forwarded to the decorated adapter; after a successful write the versions it
 * produced are handed to `written()`. A transaction response without bodies is read back by
 * version, so no written version escapes. Deletions produce no resource and are not reported.
 */
import type { SearchRequest } from '@medplum/core';
import type { Bundle, Resource } from '@medplum/fhirtypes';
import type { HistoryRequest, HistoryResult, Repository, SearchOptions, SearchResult, WriteResult } from './port.js';

/** A version a write produced, and whether it created the resource or updated it. */
export interface WrittenVersion {
  resource: Resource;
  interaction: 'create' | 'update';
}

type BulkRepository = Repository & { createMany?<T extends Resource>(resources: T[]): Promise<T[]> };

const VERSION_LOCATION = /([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})\/_history\/([A-Za-z0-9\-.]{1,64})/;

export abstract class WriteObservingRepository implements Repository {
  readonly description;

  constructor(protected readonly inner: BulkRepository) {
    this.description = inner.description;
  }

  /** Called after each successful write with the versions it stored (never empty). */
  protected abstract written(versions: WrittenVersion[]): void;

  /** The repository being decorated (tools that need adapter-specific calls). */
  get adapter(): Repository {
    return this.inner;
  }

  supportedSearchParams(): Record<string, string[]> | undefined {
    return this.inner.supportedSearchParams();
  }

  async create<T extends Resource>(resource: T, options?: { ifNoneExist?: string }): Promise<WriteResult<T>> {
    const result = await this.inner.create(resource, options);
    if (result.outcome !== 'existing') this.report([{ resource: result.resource, interaction: 'create' }]);
    return result;
  }

  async update<T extends Resource>(resource: T, options?: { ifMatch?: string }): Promise<WriteResult<T>> {
    const result = await this.inner.update(resource, options);
    this.report([{ resource: result.resource, interaction: result.outcome === 'created' ? 'create' : 'update' }]);
    return result;
  }

  delete(resourceType: string, id: string, options?: { ifMatch?: string }): Promise<void> {
    return this.inner.delete(resourceType, id, options);
  }

  read<T extends Resource = Resource>(resourceType: string, id: string): Promise<T> {
    return this.inner.read(resourceType, id);
  }

  vread<T extends Resource = Resource>(resourceType: string, id: string, versionId: string): Promise<T> {
    return this.inner.vread(resourceType, id, versionId);
  }

  search(request: SearchRequest, options?: SearchOptions): Promise<SearchResult> {
    return this.inner.search(request, options);
  }

  history(request: HistoryRequest): Promise<HistoryResult> {
    return this.inner.history(request);
  }

  async transaction(bundle: Bundle): Promise<Bundle> {
    const response = await this.inner.transaction(bundle);
    const versions: WrittenVersion[] = [];
    for (const [i, entry] of (bundle.entry ?? []).entries()) {
      const method = entry.request?.method;
      if (method !== 'POST' && method !== 'PUT' && method !== 'PATCH') continue;
      const out = response.entry?.[i];
      const status = out?.response?.status ?? '';
      if (!/^20[01]/.test(status)) continue; // 200 for a conditional create that matched: nothing written
      if (method === 'POST' && status.startsWith('200')) continue;
      const interaction = status.startsWith('201') ? 'create' : 'update';
      const resource = out?.resource;
      if (resource?.id && resource.meta?.versionId) {
        versions.push({ resource, interaction });
        continue;
      }
      const location = out?.response?.location?.match(VERSION_LOCATION);
      if (location) versions.push({ resource: await this.inner.vread(location[1]!, location[2]!, location[3]!), interaction });
    }
    this.report(versions);
    return response;
  }

  /** Bulk create of the embedded adapter (CGM ingest of large exports), reported like single creates. */
  async createMany<T extends Resource>(resources: T[]): Promise<T[]> {
    if (!this.inner.createMany) {
      const out: T[] = [];
      for (const r of resources) out.push((await this.create(r)).resource);
      return out;
    }
    const stored = await this.inner.createMany(resources);
    this.report(stored.map((resource) => ({ resource, interaction: 'create' as const })));
    return stored;
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  private report(versions: WrittenVersion[]): void {
    if (versions.length) this.written(versions);
  }
}
