/**
 * A Repository decorator that records the commitment of every version written through it (create,
 * update, transaction, and the embedded adapter's bulk `createMany`) in the commitment store, where
 * the anchorer picks it up. Reads pass straight through; the integrity guard checks what leaves.
 *
 * The commitment is computed once, here, right after the write: SHA-256(salt ‖ canonical text)
 * with a fresh 32-byte salt; the embedded adapter hands over the canonical text it just stored.
 * Deletions make no resource and are not committed.
 *
 * A crash between the repository's write and the record leaves a version without commitment;
 * `reconcile()` (run at start-up) walks repository history since the last recorded write and
 * records whatever is missing.
 */
import { randomBytes } from 'node:crypto';
import type { SearchRequest } from '@medplum/core';
import type { Bundle, Resource } from '@medplum/fhirtypes';
import { patientIdsOf } from '../fhir/compartment.js';
import type { HistoryRequest, HistoryResult, Repository, SearchResult, WriteResult } from '../repository/port.js';
import { canonicalTextOf } from '../repository/port.js';
import { canonicalResourceText, commitmentOf } from './canonical.js';
import type { CommitmentStore, NewCommitment } from './store.js';

/** Reconciliation looks this far before the last recorded write (clock steps, slow writes). */
const RECONCILE_SLACK_MS = 60_000;

export class AnchoredRepository implements Repository {
  readonly description;

  constructor(
    private readonly inner: Repository,
    private readonly store: CommitmentStore,
    private readonly onRecorded: (added: number) => void = () => undefined,
  ) {
    this.description = inner.description;
  }

  /** The repository being decorated (tools that need adapter-specific calls). */
  get adapter(): Repository {
    return this.inner;
  }

  supportedSearchParams() {
    return this.inner.supportedSearchParams();
  }

  async create<T extends Resource>(resource: T, options?: { ifNoneExist?: string }): Promise<WriteResult<T>> {
    const result = await this.inner.create(resource, options);
    if (result.outcome !== 'existing') this.record([result.resource]);
    return result;
  }

  async update<T extends Resource>(resource: T, options?: { ifMatch?: string }): Promise<WriteResult<T>> {
    const result = await this.inner.update(resource, options);
    this.record([result.resource]);
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
    const written: Resource[] = [];
    const missing: { type: string; id: string; version: string }[] = [];
    (bundle.entry ?? []).forEach((entry, i) => {
      const method = entry.request?.method;
      if (method !== 'POST' && method !== 'PUT' && method !== 'PATCH') return;
      const out = response.entry?.[i];
      const location = out?.response?.location?.match(/([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})\/_history\/([A-Za-z0-9\-.]{1,64})/);
      const resource = out?.resource;
      if (resource?.id && resource.meta?.versionId) written.push(resource);
      else if (location) missing.push({ type: location[1]!, id: location[2]!, version: location[3]! });
    });
    for (const m of missing) written.push(await this.inner.vread(m.type, m.id, m.version));
    this.record(written);
    return response;
  }

  /** Bulk create of the embedded adapter (CGM ingest of large exports), committed like single creates. */
  async createMany<T extends Resource>(resources: T[]): Promise<T[]> {
    const bulk = (this.inner as Repository & { createMany?: (r: T[]) => Promise<T[]> }).createMany;
    if (!bulk) {
      const out: T[] = [];
      for (const r of resources) out.push((await this.create(r)).resource);
      return out;
    }
    const stored = await bulk.call(this.inner, resources);
    this.record(stored);
    return stored;
  }

  /**
   * Records versions written while the process was down between write and record. Walks history
   * from shortly before the last recorded write; does nothing on a store that never recorded one
   * (data that existed before the ledger stays "unverified" rather than being vouched for now).
   * Returns how many versions were recorded.
   */
  async reconcile(pageSize = 500): Promise<number> {
    const watermark = this.store.getMeta('watermark');
    if (watermark === undefined) return 0;
    const since = new Date(Number(watermark) - RECONCILE_SLACK_MS).toISOString();
    let recorded = 0;
    for (let offset = 0; ; offset += pageSize) {
      const page = await this.inner.history({ since, count: pageSize, offset });
      const missing = page.entries.filter((e) => e.resource && !this.store.get(e.resourceType, e.id, e.versionId)).map((e) => e.resource!);
      recorded += this.record(missing);
      if (!page.hasMore) return recorded;
    }
  }

  async close(): Promise<void> {
    await this.inner.close();
  }

  private record(resources: Resource[]): number {
    const items: NewCommitment[] = [];
    const salts = randomBytes(32 * resources.length);
    for (const [i, r] of resources.entries()) {
      if (!r.id || !r.meta?.versionId) continue;
      const salt = salts.subarray(32 * i, 32 * i + 32);
      const text = canonicalTextOf(r) ?? canonicalResourceText(r);
      items.push({ type: r.resourceType, id: r.id, version: r.meta.versionId, patient: patientIdsOf(r)[0], salt, leaf: commitmentOf(salt, text) });
    }
    if (!items.length) return 0;
    const added = this.store.add(items);
    this.onRecorded(added);
    return added;
  }
}
