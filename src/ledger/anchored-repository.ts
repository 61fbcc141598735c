/**
 * A Repository decorator that records the commitment of every version written through it (create,
 * update, transaction, and the embedded adapter's bulk `createMany`) in the commitment store, where
 * the anchorer picks it up. Reads pass straight through (the integrity guard checks what leaves),
 * except that the embedded store's "not found" of a committed version or id, and a current version
 * older than a committed one, are answered as versions failing integrity (see read and vread).
 *
 * The commitment is computed once, here, right after the write: SHA-256(salt ‖ canonical text)
 * with a fresh 32-byte salt; the embedded adapter hands over the canonical text it just stored.
 * Deletions make no resource and are not committed.
 *
 * A crash between the repository's write and the record leaves a version without commitment;
 * `reconcile()` (run at start-up) walks repository history since the last recorded write and
 * records what is missing — on the embedded store a crash's tail (versions after every committed
 * one), on an upstream server only versions GlucoGuard was writing: each write to an upstream is
 * recorded as a WriteIntent before it is sent and removed once its commitments are, and a version
 * without a commitment is adopted only when it matches an outstanding intent. Anything else an
 * upstream holds without a commitment was written there by someone else (the EHR itself, or
 * not) and stays unverified (withheld in strict mode), however recent.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { Bundle, Resource } from '@medplum/fhirtypes';
import { isGlucoGuardError } from '../errors.js';
import { patientIdsOf } from '../fhir/compartment.js';
import { WriteObservingRepository, type WrittenVersion } from '../repository/observed.js';
import type { Repository, VersionKey, WriteResult } from '../repository/port.js';
import { canonicalTextOf, TamperedVersionError, type StandInSource } from '../repository/port.js';
import { canonicalResourceText, commitmentOf } from './canonical.js';
import type { CommitmentStore, NewCommitment, WriteIntent } from './store.js';
import { withCause } from './stand-ins.js';

/** Reconciliation looks this far before the last recorded write (clock steps, slow writes). */
const RECONCILE_SLACK_MS = 60_000;
/** How long a write to an upstream can be in flight: older intents no version matched never landed. */
const INTENT_TTL_MS = 10 * 60_000;

type NewIntent = Omit<WriteIntent, 'seq' | 'createdAt'>;

/** Most versions kept waiting for their commitment record; past it writes fail with the store's error. */
const MAX_UNRECORDED = 100_000;
/** Back-off of the record's retries. */
const RECORD_RETRY_MS = [1_000, 5_000, 15_000, 60_000];

/** What the ledger hears of commitment records that failed after their versions were written. */
export interface UnrecordedEvents {
  /** A record failed (`pending` versions now wait); called once per failing streak. */
  failed(err: unknown, pending: number): void;
  /** The waiting versions were recorded. */
  recovered(recorded: number): void;
  /** More versions wait behind those (how many wait now). */
  waiting?(pending: number): void;
}

export class AnchoredRepository extends WriteObservingRepository {
  constructor(
    inner: Repository,
    private readonly store: CommitmentStore,
    private readonly onRecorded: (added: number) => void = () => undefined,
    private readonly unrecordedEvents?: UnrecordedEvents,
  ) {
    super(inner);
    this.localStore = 'standInPatient' in inner;
    this.localTypes = inner.localPart?.types;
    // a version found altered on disk is reported under the patient its commitment names (port.ts StandInSource)
    const embedded = this.localStore ? inner : inner.localPart?.repository;
    if (embedded && 'standInPatient' in embedded) (embedded as unknown as StandInSource).standInPatient = (type, id, version) => store.get(type, id, version)?.patient ?? undefined;
  }

  /** The adapter is the embedded store, whose every version stays (an upstream server may purge old ones). */
  private readonly localStore: boolean;
  /** The types an upstream adapter keeps in the embedded store all the same (port.ts localPart). */
  private readonly localTypes: ReadonlySet<string> | undefined;

  /** Whether versions of `type` are kept in the embedded store (see localStore). */
  private isLocal(type: string): boolean {
    return this.localStore || (this.localTypes?.has(type) ?? false);
  }

  /**
   * A version the embedded store no longer holds while its commitment is recorded was removed from
   * the store (rows deleted, the store rolled back): an integrity failure, as for read, not a
   * version that never was. An erased patient's versions answer ERR_GONE and stay so.
   */
  override async vread<T extends Resource = Resource>(resourceType: string, id: string, versionId: string): Promise<T> {
    try {
      return await super.vread<T>(resourceType, id, versionId);
    } catch (err) {
      if (!this.isLocal(resourceType) || !isGlucoGuardError(err, 'ERR_NOT_FOUND')) throw err;
      const committed = this.store.get(resourceType, id, versionId);
      if (!committed) throw err;
      throw withCause(new TamperedVersionError(resourceType, id, versionId, new Date(committed.createdAt).toISOString(), committed.patient ?? undefined), 'missing');
    }
  }

  /**
   * Records the commitments of versions just written. When the commitment store refuses (disk full,
   * I/O error) the versions are in the repository all the same: answering the write with an error
   * would have its caller send it again and store it twice (the access log's retries did). So they
   * wait here and are recorded again with back-off, served meanwhile as unverified (withheld in
   * strict mode), as after a crash; an upstream write keeps its intents until then, so a restart's
   * reconcile still adopts them. Past MAX_UNRECORDED waiting, writes fail with the store's error.
   */
  protected override written(versions: WrittenVersion[]): void {
    const resources = versions.map((v) => v.resource);
    if (this.unrecorded.length) {
      // behind versions still waiting: in write order, and not at all past the limit
      if (this.unrecorded.length + resources.length > MAX_UNRECORDED) throw this.recordError;
      this.unrecorded.push(...resources);
      this.unrecordedEvents?.waiting?.(this.unrecorded.length);
      return;
    }
    try {
      this.record(resources);
    } catch (err) {
      this.recordError = err;
      this.unrecorded.push(...resources);
      this.unrecordedEvents?.failed(err, this.unrecorded.length);
      this.retryRecord(0);
    }
  }

  /** Versions written whose commitments the store refused so far (see written). */
  private unrecorded: Resource[] = [];
  private recordError: unknown;
  private retryTimer: NodeJS.Timeout | undefined;
  /** Intents of upstream writes that landed while versions waited: removed once those are recorded. */
  private intentsAfterRecord: number[] = [];

  /** How many written versions wait for their commitment record. */
  get unrecordedCount(): number {
    return this.unrecorded.length;
  }

  private retryRecord(attempt: number): void {
    const delay = RECORD_RETRY_MS[Math.min(attempt, RECORD_RETRY_MS.length - 1)]!;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.flushUnrecorded(attempt + 1);
    }, delay);
    this.retryTimer.unref();
  }

  /** Tries the waiting records again now (and on close); answers whether none are left. */
  flushUnrecorded(attempt = 0): boolean {
    if (!this.unrecorded.length) return true;
    clearTimeout(this.retryTimer);
    try {
      const recorded = this.record(this.unrecorded);
      const count = this.unrecorded.length;
      this.unrecorded = [];
      this.recordError = undefined;
      if (this.intentsAfterRecord.length) this.store.removeIntents(this.intentsAfterRecord);
      this.intentsAfterRecord = [];
      this.unrecordedEvents?.recovered(Math.max(recorded, count));
      return true;
    } catch (err) {
      this.recordError = err;
      this.retryRecord(attempt);
      return false;
    }
  }

  /** Stops the retries (a closing server): what still waits is a crash tail for the next start's reconcile. */
  stopRetries(): void {
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
  }

  override create<T extends Resource>(resource: T, options?: { ifNoneExist?: string }): Promise<WriteResult<T>> {
    return this.intended(() => (this.isLocal(resource.resourceType) ? [] : [intentOf(resource, null)]), () => super.create(resource, options));
  }

  override update<T extends Resource>(resource: T, options?: { ifMatch?: string }): Promise<WriteResult<T>> {
    return this.intended(() => (this.isLocal(resource.resourceType) ? [] : [intentOf(resource, resource.id ?? null)]), () => super.update(resource, options));
  }

  override transaction(bundle: Bundle): Promise<Bundle> {
    return this.intended(() => intentsOf(bundle).filter((i) => !this.isLocal(i.type)), () => super.transaction(bundle));
  }

  /**
   * Runs a write to an upstream server between its intents' record and their removal (the class
   * comment). A write that fails keeps them: it may have landed all the same (a timeout), and the
   * next reconcile adopts what did. The embedded store needs none: its crash tail is its own.
   */
  private async intended<T>(intentsOfWrite: () => NewIntent[], write: () => Promise<T>): Promise<T> {
    if (this.localStore) return write(); // worked out only for an upstream: a digest per entry is no small cost
    const intents = intentsOfWrite();
    if (!intents.length) return write();
    const seqs = this.store.addIntents(intents);
    const result = await write();
    // versions waiting for their record (see written) keep their intents until they are recorded
    if (this.unrecorded.length) this.intentsAfterRecord.push(...seqs);
    else this.store.removeIntents(seqs);
    return result;
  }

  /**
   * A read of the current version, which must be the newest version committed: a store that
   * answers an older one while a newer one has a commitment was rolled back (its newer rows removed,
   * an older one made current). Answered as a version that fails integrity (TamperedVersionError:
   * the FHIR router withholds it with the integrity issue and the security AuditEvent), after one
   * read again, so that a version another process committed meanwhile is not taken for one.
   * Numeric version ids only (the embedded store's; an upstream server's are its own).
   *
   * An id the embedded store does not know (not found: no version, no deletion recorded) while
   * versions of it are committed was removed from the store: answered as its newest committed
   * version failing integrity, as vread does, not as an id that never was. Looked up only on the
   * not-found path: a read that finds the resource costs nothing more.
   */
  override async read<T extends Resource = Resource>(resourceType: string, id: string): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      let resource: T;
      try {
        resource = await super.read<T>(resourceType, id);
      } catch (err) {
        throw this.removedOrAsIs(err, resourceType, id);
      }
      const version = resource.meta?.versionId;
      if (version === undefined || !/^\d+$/.test(version) || !this.store.hasNewer(resourceType, id, Number(version))) return resource;
      if (attempt === 1) {
        throw withCause(new TamperedVersionError(resourceType, id, version, resource.meta!.lastUpdated ?? new Date(0).toISOString(), patientIdsOf(resource)[0]), 'rolled-back');
      }
    }
  }

  /** A read's not-found of an id with committed versions (embedded store): the stand-in of its newest committed version; else `err`. */
  private removedOrAsIs(err: unknown, resourceType: string, id: string): unknown {
    if (!this.isLocal(resourceType) || !isGlucoGuardError(err, 'ERR_NOT_FOUND')) return err;
    const newest = this.store.newestCommitted(resourceType, id);
    if (!newest) return err;
    return withCause(new TamperedVersionError(resourceType, id, newest.version, new Date(newest.createdAt).toISOString(), newest.patient ?? undefined), 'missing');
  }

  /**
   * Records versions written while the process was down between write and record: those updated
   * since shortly before the last recorded write that have no commitment. Where the adapter lists
   * version keys (`versionKeysSince`, embedded; for an upstream's embedded part, `localPart`, that
   * part's versions) they are checked from that listing and only the
   * missing versions read; otherwise history is walked newest first and the walk stops at the
   * first older version — not with a `_since` filter, which on a store where few versions match
   * makes an adapter read every version to prove there are no more. Does nothing on a store that
   * never recorded one (data that existed before the ledger stays "unverified" rather than being
   * vouched for now). Returns how many versions were recorded.
   *
   * After a bulk load every version of the last minute is in the window (~290,000 at the load
   * rate of the 1M benchmark): the history walk, paged by offset, took 12 s for 100,000 of them.
   *
   * Only a crash's tail is vouched for: versions of a type written after every version of that type
   * that has a commitment. A version without one that lies before a committed version of its type
   * did not lose its commitment to a crash — its commitment was removed, or it was put there — and
   * is left without one (served as unverified, or withheld in strict mode), counted in `gaps`.
   */
  async reconcile(pageSize = 500): Promise<number> {
    this.gaps = 0;
    this.outside = 0;
    const watermark = this.store.getMeta('watermark');
    if (watermark === undefined) return 0;
    const since = Number(watermark) - RECONCILE_SLACK_MS;
    const inner = this.inner;
    if (inner.versionKeysSince) return this.reconcileListed(() => inner.versionKeysSince!(since), pageSize);
    // the types an upstream adapter keeps in the embedded store: a crash's tail there, as on the embedded store
    const local = inner.localPart?.repository;
    let recorded = local?.versionKeysSince ? await this.reconcileListed(() => local.versionKeysSince!(since), pageSize) : 0;
    const intents = this.localStore ? undefined : this.store.intents();
    for (let offset = 0; ; offset += pageSize) {
      const page = await this.inner.history({ count: pageSize, offset });
      const recent = page.entries.filter((e) => Date.parse(e.lastUpdated) >= since);
      const missing = recent.filter((e) => e.resource && !this.store.has(e.resourceType, e.id, e.versionId)).map((e) => e.resource!);
      const vouched = intents ? missing.filter((r) => this.claimIntent(intents, r)) : missing;
      this.outside += missing.length - vouched.length;
      recorded += this.record(vouched);
      if (!page.hasMore || recent.length < page.entries.length) break;
    }
    if (intents) this.store.removeIntentsBefore(Date.now() - INTENT_TTL_MS);
    return recorded;
  }

  /** Versions an upstream holds without a commitment that the last reconcile did not adopt (no write intent of GlucoGuard's matched). */
  outside = 0;

  /** Whether an outstanding intent (taken off the list and the store when it is) vouches that GlucoGuard wrote `resource`. */
  private claimIntent(intents: WriteIntent[], resource: Resource): boolean {
    const at = intents.findIndex((i) => i.type === resource.resourceType && (i.id === null || i.id === resource.id)
      && (i.digest === null ? i.id !== null : contentDigest(resource, i.dropped).equals(i.digest)));
    if (at < 0) return false;
    const [claimed] = intents.splice(at, 1);
    this.store.removeIntents([claimed!.seq]);
    return true;
  }

  /**
   * Versions left without a commitment by the last reconcile because they were not a crash's tail
   * (see reconcile): a sign the ledger's records were altered.
   */
  gaps = 0;

  private async reconcileListed(listing: () => Iterable<VersionKey>, chunk: number): Promise<number> {
    // first pass: where in each type's listing (oldest first) the last committed version is
    const lastCommitted = new Map<string, number>();
    const position = new Map<string, number>();
    for (const key of listing()) {
      const at = (position.get(key.resourceType) ?? -1) + 1;
      position.set(key.resourceType, at);
      if (this.store.has(key.resourceType, key.id, key.versionId)) lastCommitted.set(key.resourceType, at);
    }
    position.clear();
    let recorded = 0;
    let missing: VersionKey[] = [];
    const recordMissing = async (): Promise<void> => {
      const resources: Resource[] = [];
      for (const k of missing) resources.push(await this.inner.vread(k.resourceType, k.id, k.versionId));
      recorded += this.record(resources);
      missing = [];
    };
    for (const key of listing()) {
      const at = (position.get(key.resourceType) ?? -1) + 1;
      position.set(key.resourceType, at);
      if (this.store.has(key.resourceType, key.id, key.versionId)) continue;
      if (at < (lastCommitted.get(key.resourceType) ?? -1)) {
        this.gaps++;
        continue;
      }
      missing.push(key);
      if (missing.length >= chunk) await recordMissing();
    }
    await recordMissing();
    return recorded;
  }

  /**
   * Right to erasure, the ledger's part, once the repository has destroyed the patient's data key:
   * overwrites the salts of the patient's versions that no longer read (CommitmentStore.forgetSalts).
   * A version that still reads keeps its salt, so it keeps proving: a record about the patient
   * written while their key was erased is sealed under the shared key (an earlier erasure's own
   * AuditEvent first of all), and must survive a later erasure of the same id, created again.
   * Answers how many salts were overwritten.
   */
  async forgetUnreadableSalts(patient: string): Promise<number> {
    const unreadable: number[] = [];
    for (const v of this.store.saltedVersionsOf(patient)) {
      if (!(await this.stillReads(v.type, v.id, v.version))) unreadable.push(v.seq);
    }
    return this.store.forgetSalts(patient, unreadable);
  }

  /**
   * Whether the adapter still reads a version: not when its data key was erased (ERR_GONE) or its
   * row is gone (ERR_NOT_FOUND: nothing left that the salt could prove). A version that reads but
   * does not authenticate is not erased data: it keeps its salt, the evidence of what it was.
   */
  private async stillReads(type: string, id: string, version: string): Promise<boolean> {
    try {
      await this.inner.vread(type, id, version);
      return true;
    } catch (err) {
      if (err instanceof TamperedVersionError) return true; // coded ERR_GONE as well: asked first
      if (isGlucoGuardError(err, 'ERR_GONE') || isGlucoGuardError(err, 'ERR_NOT_FOUND')) return false;
      throw err;
    }
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

/**
 * What a version's content is judged on against a write intent: SHA-256 of its canonical text without
 * `id` and `meta` (the server assigns them, and may add to meta) and without the `dropped` paths (the
 * `urn:` references a transaction's server replaces with the ids it gave).
 */
function contentDigest(resource: Resource, dropped: readonly string[]): Buffer {
  const copy = structuredClone(resource) as unknown as Record<string, unknown>;
  delete copy.id;
  delete copy.meta;
  for (const path of dropped) {
    const keys = path.split('.');
    let node: unknown = copy;
    for (const key of keys.slice(0, -1)) node = node && typeof node === 'object' ? (node as Record<string, unknown>)[key] : undefined;
    if (node && typeof node === 'object') delete (node as Record<string, unknown>)[keys[keys.length - 1]!];
  }
  return createHash('sha256').update(canonicalResourceText((withoutEmpty(copy) ?? {}) as unknown as Resource)).digest();
}

/**
 * A copy without empty lists, empty objects and nulls, which FHIR JSON does not have and servers
 * drop when they store a resource (an AuditEvent sent with `entity: []` comes back without it).
 */
function withoutEmpty(value: unknown): unknown {
  if (value === null) return undefined;
  if (Array.isArray(value)) {
    const items = value.map(withoutEmpty).filter((v) => v !== undefined);
    return items.length ? items : undefined;
  }
  if (typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).map(([k, v]) => [k, withoutEmpty(v)] as const).filter(([, v]) => v !== undefined);
    return entries.length ? Object.fromEntries(entries) : undefined;
  }
  return value;
}

/** Paths (`a.0.reference`) of the `reference`s that are `urn:` ids in a transaction entry's resource. */
function urnReferencePaths(value: unknown, path: string[] = [], out: string[] = []): string[] {
  if (Array.isArray(value)) value.forEach((v, i) => urnReferencePaths(v, [...path, String(i)], out));
  else if (value && typeof value === 'object') {
    for (const [key, v] of Object.entries(value)) {
      if (key === 'reference' && typeof v === 'string' && v.startsWith('urn:')) out.push([...path, key].join('.'));
      else urnReferencePaths(v, [...path, key], out);
    }
  }
  return out;
}

function intentOf(resource: Resource, id: string | null): NewIntent {
  const dropped = urnReferencePaths(resource);
  return { type: resource.resourceType, id, digest: contentDigest(resource, dropped), dropped };
}

/** The intents of a batch's or transaction's writes: creates by content, updates by id and content, patches by id. */
function intentsOf(bundle: Bundle): NewIntent[] {
  const out: NewIntent[] = [];
  for (const entry of bundle.entry ?? []) {
    const method = entry.request?.method;
    const [type, id] = (entry.request?.url ?? '').split('?')[0]!.split('/');
    const named = id && !entry.request?.url?.includes('?') ? id : null;
    if (method === 'POST' && entry.resource) out.push(intentOf(entry.resource, null));
    else if (method === 'PUT' && entry.resource) out.push(intentOf(entry.resource, named ?? null));
    else if (method === 'PATCH' && type && named) out.push({ type, id: named, digest: null, dropped: [] });
  }
  return out;
}
