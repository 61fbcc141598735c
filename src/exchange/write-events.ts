/**
 * A Repository decorator that tells listeners about every stored version after the write
 * succeeded (create, update, transaction, bulk create), so subscriptions fire from every write
 * path — FHIR facade, CGM ingest, CLI — without those paths knowing. Listeners run after the
 * write returned and their errors never reach the writer.
 */
import type { SearchRequest } from '@medplum/core';
import type { Bundle, Resource } from '@medplum/fhirtypes';
import type { HistoryRequest, HistoryResult, Repository, SearchResult, WriteResult } from '../repository/port.js';

export interface WrittenVersion {
  resource: Resource;
  interaction: 'create' | 'update';
}

export type WriteListener = (written: WrittenVersion[]) => void;

type BulkRepository = Repository & { createMany?<T extends Resource>(resources: T[]): Promise<T[]> };

export class NotifyingRepository implements Repository {
  readonly description;
  private readonly listeners: WriteListener[] = [];

  constructor(private readonly inner: BulkRepository) {
    this.description = inner.description;
  }

  /** Adds a listener; returns a function that removes it. */
  onWrite(listener: WriteListener): () => void {
    this.listeners.push(listener);
    return () => {
      const i = this.listeners.indexOf(listener);
      if (i >= 0) this.listeners.splice(i, 1);
    };
  }

  private emit(written: WrittenVersion[]): void {
    if (written.length === 0) return;
    for (const l of this.listeners) {
      try {
        l(written);
      } catch {
        // a listener's failure is its own business (it logs); the write already succeeded
      }
    }
  }

  /** The decorated repository (adapter-specific tools). */
  get adapter(): Repository {
    return this.inner;
  }

  supportedSearchParams() {
    return this.inner.supportedSearchParams();
  }

  async create<T extends Resource>(resource: T, options?: { ifNoneExist?: string }): Promise<WriteResult<T>> {
    const result = await this.inner.create(resource, options);
    if (result.outcome !== 'existing') this.emit([{ resource: result.resource, interaction: 'create' }]);
    return result;
  }

  async update<T extends Resource>(resource: T, options?: { ifMatch?: string }): Promise<WriteResult<T>> {
    const result = await this.inner.update(resource, options);
    this.emit([{ resource: result.resource, interaction: result.outcome === 'created' ? 'create' : 'update' }]);
    return result;
  }

  delete(resourceType: string, id: string): Promise<void> {
    return this.inner.delete(resourceType, id);
  }

  read<T extends Resource = Resource>(resourceType: string, id: string): Promise<T> {
    return this.inner.read(resourceType, id);
  }

  vread<T extends Resource = Resource>(resourceType: string, id: string, versionId: string): Promise<T> {
    return this.inner.vread(resourceType, id, versionId);
  }

  search(request: SearchRequest): Promise<SearchResult> {
    return this.inner.search(request);
  }

  history(request: HistoryRequest): Promise<HistoryResult> {
    return this.inner.history(request);
  }

  async transaction(bundle: Bundle): Promise<Bundle> {
    const response = await this.inner.transaction(bundle);
    const written: WrittenVersion[] = [];
    for (const e of response.entry ?? []) {
      const r = e.resource;
      const status = e.response?.status ?? '';
      if (r?.id && r.meta?.versionId && /^20[01]/.test(status)) written.push({ resource: r, interaction: status.startsWith('201') ? 'create' : 'update' });
    }
    this.emit(written);
    return response;
  }

  /** Bulk create (CGM ingest of large exports). */
  async createMany<T extends Resource>(resources: T[]): Promise<T[]> {
    let stored: T[];
    if (this.inner.createMany) stored = await this.inner.createMany(resources);
    else {
      stored = [];
      for (const r of resources) stored.push((await this.inner.create(r)).resource);
    }
    this.emit(stored.map((resource) => ({ resource, interaction: 'create' as const })));
    return stored;
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
