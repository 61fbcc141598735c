/**
 * The embedded Repository adapter (default): a SQLite file under `<dataDir>/store/`, every
 * version kept, every body encrypted with its patient's data key (keys.ts), searchable through
 * keyed-hash and date indexes (search.ts).
 *
 * Writes go through one async lock and each runs in one IMMEDIATE SQLite transaction, so a write
 * that throws has changed nothing, and processes sharing the store (replicas, CLI imports) take
 * turns at whole writes. Reads need no lock: better-sqlite3 is synchronous.
 *
 * Choices the FHIR spec leaves open:
 * - an update whose content equals the current version still makes a new version (the
 *   anchoring layer commits to every write; skipping it would hide a write from the ledger);
 * - deleting an absent or already deleted resource does nothing and succeeds;
 * - `eraseSubject` crypto-shreds: rows stay on disk, unreadable; reads answer ERR_GONE.
 */
import { parseSearchRequest } from '@medplum/core';
import type { SearchRequest } from '@medplum/core';
import type { Bundle, Resource } from '@medplum/fhirtypes';
import Database from 'better-sqlite3';
import type { Database as DB, Statement } from 'better-sqlite3';
import type { Logger } from 'pino';
import { badRequest, gone, notFound, preconditionFailed } from '../../errors.js';
import { patientIdsOf } from '../../fhir/compartment.js';
import { orderedValueLists } from '../../fhir/search.js';
import { loadFhirDefinitions } from '../../fhir/definitions.js';
import type {
  HistoryEntry, HistoryRequest, HistoryResult, Repository, RepositoryDescription, SearchOptions, SearchResult, VersionKey, WriteResult,
} from '../port.js';
import { attachCanonicalText, TamperedVersionError, type StandInSource } from '../port.js';
import { deferredResource } from '../deferred.js';
import { canonicalResourceText } from '../../ledger/canonical.js';
import { historyRows, TYPES_SQL, VERSION_KEYS_SQL } from './history.js';
import { loadServerKeys, type ServerKeys } from '../../keys.js';
import { KeyRing, openText, seal } from './keys.js';
import { extractIndexEntries, INDEX_GENERATION, supportedParams, paramsIndexedSince, typesIndexedSince } from './params.js';
import { dateRowKey, runSearch } from './search.js';
import type { SearchContext } from './search.js';
import { DecodedCache } from './decoded-cache.js';
import { bindRowTimes, currentVersions, METHOD, METHOD_NAME, openStore, packIx, prepareStatements, readIndexGeneration, readTimeBoundFrom, unpackIx, writeIndexGeneration } from './store.js';
import { streamSearch } from './stream.js';
import type { Statements, VersionRow } from './store.js';
import { runTransaction } from './transaction.js';
import { newResourceId } from './ids.js';

export interface EmbeddedRepositoryOptions {
  /** Directory holding `store/` (SQLite) and, without `masterKey`, `keys/master.key`. */
  dataDir: string;
  /** The master key and key root as the app loaded them (src/keys.ts); absent: loaded here from `masterKey` or the data directory. */
  keys?: ServerKeys;
  /** Base64 of 32 bytes; wraps every data key. Absent: a key file is made on first start. */
  masterKey?: string;
  /** Bytes of decoded versions kept for reads that come back (decoded-cache.ts); 0 turns it off. Default 64 MiB. */
  readCacheBytes?: number;
  /** Bytes of the store file read through a memory map (store.ts openStore); 0 = off. Default 0. */
  mmapBytes?: number;
  logger?: Logger;
}

const ID_PATTERN = /^[A-Za-z0-9\-.]{1,64}$/;
const DEFAULT_READ_CACHE_BYTES = 64 * 1024 * 1024;
/** Searches read rows without their bodies once this share of recent reads came from the decoded cache. */
const LIGHT_READS_FROM = 0.5;
const BULK_CHUNK = 5000;
/** Versions re-indexed per write transaction (reindex): short enough not to hold up other writes for long. */
const REINDEX_CHUNK = 2000;
/** Page cache of the bulk-read connection (KiB): a scan reads each page once, so a small cache does. */
const BULK_READ_CACHE_KIB = 4096;

/** Runs async jobs one after another. */
class Mutex {
  private tail: Promise<unknown> = Promise.resolve();
  run<T>(job: () => T | Promise<T>): Promise<T> {
    const result = this.tail.then(job);
    this.tail = result.catch(() => undefined);
    return result;
  }
}

export class EmbeddedRepository implements Repository {
  readonly description: RepositoryDescription;
  /** Whose a version is that does not authenticate (StandInSource; set by the ledger decorator). */
  standInPatient: StandInSource['standInPatient'] = undefined;
  private readonly lock = new Mutex();
  private readonly statements = new Map<string, Statement<unknown[], VersionRow>>();
  private readonly searchContext: SearchContext;
  /** Read-only connection of bulk reads (searchChunks), opened on first use. */
  private bulk: { db: DB; context: SearchContext } | undefined;
  /** Decoded versions of ordinary reads (bulk reads do not fill it: an export would flush it). */
  readonly decoded: DecodedCache;
  /** `PRAGMA data_version` as last seen (see syncDecoded). */
  private readonly dataVersion: Statement<[], number>;
  private lastDataVersion: number | undefined;
  private closed = false;
  /** The index generation the store's rows are complete for (params.ts). */
  private generation: number;
  /** The first seq whose body also binds its `last_updated`; Infinity while the store writes unbound rows (store.ts readTimeBoundFrom). */
  private timeBoundFrom: number;

  private constructor(
    private readonly db: DB,
    private readonly keys: KeyRing,
    private readonly sql: Statements,
    dataDir: string,
    private readonly file?: string,
    readCacheBytes = DEFAULT_READ_CACHE_BYTES,
  ) {
    this.description = { adapter: 'embedded', location: dataDir };
    this.decoded = new DecodedCache(readCacheBytes);
    this.dataVersion = db.prepare<[], number>('PRAGMA data_version').pluck();
    this.searchContext = {
      db,
      hash: (value) => keys.hash(value),
      hashPair: (value) => keys.hashPair(value),
      decode: (row) => this.decode(row, this.decoded),
      decodeDeferred: (row) => this.decode(row, this.decoded, true),
      readCurrent: (type, id, standIn) => {
        const row = this.sql.currentOf.get(type, id);
        if (!row || row.method === METHOD.DELETE) return undefined;
        return this.decode(row, this.decoded) ?? (standIn ? this.tampered(row)?.standIn : undefined);
      },
      standIn: (row) => this.tampered(row)?.standIn,
      prepare: (text) => this.prepare(text),
      light: () => this.decoded.enabled && this.decoded.recentHitRate >= LIGHT_READS_FROM,
      indexGeneration: () => this.generation,
    };
    this.generation = readIndexGeneration(db);
    this.timeBoundFrom = readTimeBoundFrom(db);
  }

  /**
   * Binds the write time of every row this process writes from now on (store.ts bindRowTimes):
   * for a store an earlier release made, once no process of that release runs on it. Other
   * processes bind from their next start. Answers the first seq bound.
   */
  async bindRowTimes(): Promise<number> {
    return this.write(() => {
      this.timeBoundFrom = bindRowTimes(this.db);
      return this.timeBoundFrom;
    });
  }

  /** Whether this process writes rows that bind their write time. */
  get bindsRowTimes(): boolean {
    return this.timeBoundFrom !== Number.POSITIVE_INFINITY;
  }

  /** Opens (creating when needed) the store under `<dataDir>/store/`. */
  static async open(options: EmbeddedRepositoryOptions): Promise<EmbeddedRepository> {
    loadFhirDefinitions();
    const { master, root } = options.keys ?? loadServerKeys({ dataDir: options.dataDir, masterKey: options.masterKey });
    const { db, file } = openStore(options.dataDir, options.mmapBytes);
    try {
      const keys = db.transaction(() => new KeyRing(db, Buffer.from(master, 'base64'), Buffer.from(root, 'base64'))).immediate();
      const repo = new EmbeddedRepository(db, keys, prepareStatements(db), options.dataDir, file, options.readCacheBytes);
      options.logger?.info({ adapter: 'embedded', file }, 'repository opened'); // where the master key came from: the start-up summary (app.ts)
      if (repo.indexGeneration < INDEX_GENERATION) {
        options.logger?.warn({ indexGeneration: repo.indexGeneration, current: INDEX_GENERATION },
          `search parameters indexed since this store was written (${paramsIndexedSince(repo.indexGeneration).join(', ')}) `
          + 'are matched without their index until the index is rebuilt (`serve` does it in the background unless GLUCOGUARD_AUTO_REINDEX=off; or `glucoguard reindex`)');
      }
      return repo;
    } catch (err) {
      db.close();
      throw err;
    }
  }

  supportedSearchParams(): Record<string, string[]> {
    return supportedParams();
  }

  async create<T extends Resource>(resource: T, options?: { ifNoneExist?: string }): Promise<WriteResult<T>> {
    return this.write(() => this.createSync(resource, options?.ifNoneExist));
  }

  /**
   * Bulk load: creates every resource (server-assigned ids) in transactions of 5,000. Used by
   * ingest of large exports and the benchmark. A chunk that fails leaves earlier chunks stored.
   */
  async createMany<T extends Resource>(resources: T[]): Promise<T[]> {
    const out: T[] = [];
    for (let i = 0; i < resources.length; i += BULK_CHUNK) {
      const chunk = resources.slice(i, i + BULK_CHUNK);
      out.push(...await this.write(() => chunk.map((r) => this.createSync(r).resource)));
    }
    return out;
  }

  async read<T extends Resource = Resource>(resourceType: string, id: string): Promise<T> {
    this.checkOpen();
    const row = this.sql.currentOf.get(resourceType, id);
    if (!row) throw notFound(`${resourceType}/${id} not found`);
    if (row.method === METHOD.DELETE) throw gone(`${resourceType}/${id} was deleted`);
    return this.decodeOrGone(row) as T;
  }

  async vread<T extends Resource = Resource>(resourceType: string, id: string, versionId: string): Promise<T> {
    this.checkOpen();
    const version = Number(versionId);
    const row = Number.isSafeInteger(version) ? this.sql.versionOf.get(resourceType, id, version) : undefined;
    if (!row) throw notFound(`${resourceType}/${id}/_history/${versionId} not found`);
    if (row.method === METHOD.DELETE) throw gone(`${resourceType}/${id}/_history/${versionId} is a deletion`);
    return this.decodeOrGone(row) as T;
  }

  async update<T extends Resource>(resource: T, options?: { ifMatch?: string }): Promise<WriteResult<T>> {
    return this.write(() => this.updateSync(resource, options?.ifMatch));
  }

  async delete(resourceType: string, id: string, options?: { ifMatch?: string }): Promise<void> {
    return this.write(() => this.deleteSync(resourceType, id, options?.ifMatch));
  }

  async search(request: SearchRequest, options?: SearchOptions): Promise<SearchResult> {
    this.checkOpen();
    this.syncDecoded();
    return runSearch(this.searchContext, request, options?.scanLimit, options?.deferred, options?.standIns, options?.after);
  }

  /**
   * Empties the decoded cache when another connection has committed to the store file since the
   * last read (SQLite's `data_version`): this process's own writes never change a stored version's
   * body, anyone else's might, so what the cache holds is known to match the file only until then.
   */
  private syncDecoded(): void {
    if (!this.decoded.enabled) return;
    const version = this.dataVersion.get() as number;
    if (version !== this.lastDataVersion) {
      if (this.lastDataVersion !== undefined) this.decoded.clear();
      this.lastDataVersion = version;
    }
  }

  /**
   * Bulk read (exports): the matches of a search, `chunk` at a time, with the filters and matching
   * of `search` (sort rules, paging and `_include` ignored). One patient's resources by date are
   * read by keyset on the patient+date index (stream.ts). Reads go through a read-only connection
   * of their own with a small page cache, so a scan of millions of rows neither evicts the pages
   * interactive reads keep warm nor holds their 64 MB cache for itself. `options.standIns` as for
   * `search` (SearchOptions.standIns).
   */
  async *searchChunks(request: SearchRequest, chunk = 1000, options?: Pick<SearchOptions, 'standIns'>): AsyncGenerator<Resource[]> {
    this.checkOpen();
    const context = this.bulkContext();
    for (const page of streamSearch(context, request, Math.max(1, chunk), options?.standIns)) {
      yield page;
      this.checkOpen();
    }
  }

  private bulkContext(): SearchContext {
    if (!this.file) return this.searchContext;
    if (!this.bulk) {
      const db = new Database(this.file, { readonly: true, fileMustExist: true });
      db.pragma(`cache_size = -${BULK_READ_CACHE_KIB}`);
      const statements = new Map<string, Statement<unknown[], VersionRow>>();
      this.bulk = {
        db,
        context: {
          ...this.searchContext,
          db,
          decode: (row) => this.decode(row),
          light: undefined,
          prepare: (text) => {
            let statement = statements.get(text);
            if (!statement) {
              statement = db.prepare<unknown[], VersionRow>(text);
              if (statements.size > 100) statements.clear();
              statements.set(text, statement);
            }
            return statement;
          },
        },
      };
    }
    return this.bulk.context;
  }

  /**
   * In chunks, each read in full before it is handed out: the caller may use the repository
   * between two keys (better-sqlite3 allows no other statement on a connection mid-iteration).
   */
  *versionKeysSince(since: number, chunk = 5000): Generator<VersionKey> {
    this.checkOpen();
    const types = this.db.prepare<[], string>(TYPES_SQL).pluck().all();
    const next = this.db.prepare<[string, number, number, number], { seq: number; lastUpdated: number; id: string; version: number; readable: number | null }>(VERSION_KEYS_SQL);
    for (const type of types) {
      // the cursor starts just before `since`: (last_updated, seq) > (since - 1, max) is last_updated >= since
      let cursor: [number, number] = [since - 1, Number.MAX_SAFE_INTEGER];
      for (;;) {
        this.checkOpen();
        const rows = next.all(type, cursor[0], cursor[1], chunk);
        for (const row of rows) if (row.readable) yield { resourceType: type, id: row.id, versionId: String(row.version) };
        if (rows.length < chunk) break;
        const last = rows[rows.length - 1]!;
        cursor = [last.lastUpdated, last.seq];
      }
    }
  }

  async history(request: HistoryRequest): Promise<HistoryResult> {
    this.checkOpen();
    if (request.id) {
      if (!request.resourceType) throw badRequest('instance history needs a resource type');
      if (!this.sql.currentOf.get(request.resourceType, request.id)) {
        throw notFound(`${request.resourceType}/${request.id} not found`);
      }
    }
    let since: number | undefined;
    if (request.since !== undefined) {
      since = Date.parse(request.since);
      if (Number.isNaN(since)) throw badRequest(`_since is not an instant: ${request.since}`, '_since');
    }
    const count = Math.max(0, request.count);
    // later pages of one walk see history as the first page found it (HistoryRequest.snapshot)
    const marked = request.snapshot !== undefined && /^\d{1,15}$/.test(request.snapshot) ? Number(request.snapshot) : undefined;
    const maxSeq = marked ?? (this.prepare('SELECT MAX(seq) AS seq FROM versions').get() as unknown as { seq: number | null }).seq ?? 0;
    const rows = historyRows((text) => this.prepare(text), {
      type: request.resourceType || undefined, id: request.id || undefined, since, count, offset: Math.max(0, request.offset), maxSeq,
      // a patient's versions are the ones under that patient's data key (keyed by the first patient link)
      ...(request.patients && !request.id ? { keyIds: request.patients.map((p) => this.keys.patientKeyId(p)) } : {}),
    });
    const entries: HistoryEntry[] = [];
    for (const row of rows.slice(0, count)) {
      const resource = row.method === METHOD.DELETE ? undefined
        : this.decode(row) ?? (request.standIns ? this.tampered(row)?.standIn : undefined);
      if (row.method !== METHOD.DELETE && !resource) continue;
      entries.push({
        resourceType: row.type,
        id: row.id,
        versionId: String(row.version),
        lastUpdated: new Date(row.last_updated).toISOString(),
        method: METHOD_NAME[row.method] ?? 'PUT',
        ...(resource ? { resource } : {}),
      });
    }
    return { entries, hasMore: rows.length > count, snapshot: String(maxSeq) };
  }

  async transaction(bundle: Bundle): Promise<Bundle> {
    return this.write(() => runTransaction(bundle, {
      insert: (r) => { checkBody(r); return this.writeVersion(r, METHOD.POST, undefined); },
      update: (r, ifMatch) => this.updateSync(r, ifMatch),
      delete: (type, id, ifMatch) => this.deleteSync(type, id, ifMatch),
      read: (type, id) => this.readSync(type, id),
      vread: (type, id, version) => this.vreadSync(type, id, version),
      search: (request) => runSearch(this.searchContext, request),
      findOne: (type, query) => this.conditionalMatches(type, query),
    }));
  }

  /**
   * Right to erasure: destroys the patient's data key and drops their resources from the search
   * indexes. Their ciphertext stays on disk (history, anchors) but can never be read again;
   * reads answer ERR_GONE. Returns how many current resources became unreadable. ERR_NOT_FOUND for an id
   * that never had data here, ERR_GONE when the key is already erased and nothing was stored since.
   */
  async eraseSubject(patientId: string): Promise<{ resources: number }> {
    return this.write(() => {
      // Refused, changing nothing: an id never stored (a typo must not read as a done erasure), and a
      // repeat with nothing stored since (a retry must not count or shred anything again).
      const state = this.keys.state(patientId);
      if (state === 'none') throw notFound(`Patient/${patientId} not found`);
      if (state === 'erased') throw gone(`Patient/${patientId} was already erased`);
      const key = this.keys.erase(patientId)!;
      this.decoded.clear();
      // only this key version's rows: those of an earlier erased version were counted and unindexed then
      const rows = this.db.prepare<[string, number], { seq: number; ix: Buffer | null }>(
        'SELECT seq, ix FROM versions WHERE key_id = ? AND key_version = ? AND current = 1 AND method <> 2').all(key.id, key.version);
      for (const row of rows) this.removeIndex(row.seq, row.ix);
      return { resources: rows.length };
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await this.lock.run(() => undefined);
    this.closed = true;
    this.statements.clear();
    this.decoded.clear();
    this.bulk?.db.close();
    this.bulk = undefined;
    this.db.close();
  }

  // --- internals (synchronous; called inside one SQLite transaction) ---------------------------

  private write<T>(job: () => T): Promise<T> {
    this.checkOpen();
    return this.lock.run(() => {
      this.checkOpen();
      try {
        // IMMEDIATE: the write lock is taken before the job reads, so another process on the
        // store (a replica, a CLI import) cannot commit between what the job reads (the current
        // version, a conditional match, a data key) and what it writes. A deferred transaction
        // failed there with SQLITE_BUSY(_SNAPSHOT), a 500, instead of waiting for the lock.
        return this.db.transaction(job).immediate();
      } catch (err) {
        this.keys.reset();
        throw err;
      }
    });
  }

  private createSync<T extends Resource>(resource: T, ifNoneExist?: string): WriteResult<T> {
    checkBody(resource);
    if (ifNoneExist !== undefined) {
      const matches = this.conditionalMatches(resource.resourceType, ifNoneExist);
      if (matches.length > 1) throw preconditionFailed('ifNoneExist matched more than one resource');
      if (matches.length === 1) return { resource: matches[0] as T, outcome: 'existing' };
    }
    const stored = this.writeVersion({ ...resource, id: newResourceId() }, METHOD.POST, undefined);
    return { resource: stored, outcome: 'created' };
  }

  private updateSync<T extends Resource>(resource: T, ifMatch?: string): WriteResult<T> {
    checkBody(resource);
    if (!resource.id) throw badRequest('update needs a resource id', 'id');
    const previous = this.sql.currentOf.get(resource.resourceType, resource.id);
    checkIfMatch(resource.resourceType, resource.id, previous, ifMatch);
    const live = previous !== undefined && previous.method !== METHOD.DELETE;
    const stored = this.writeVersion(resource, METHOD.PUT, previous);
    return { resource: stored, outcome: live ? 'updated' : 'created' };
  }

  private deleteSync(resourceType: string, id: string, ifMatch?: string): void {
    const previous = this.sql.currentOf.get(resourceType, id);
    checkIfMatch(resourceType, id, previous, ifMatch);
    if (!previous || previous.method === METHOD.DELETE) return;
    this.removeIndex(previous.seq, previous.ix);
    this.sql.retireCurrent.run(previous.seq);
    // a deletion keeps the data key id of what it deleted (no key version, no body): history narrowed to
    // a patient's key finds it
    this.sql.insertVersion.run(resourceType, id, previous.version + 1, Date.now(), METHOD.DELETE, previous.key_id, null, null, null);
  }

  private readSync(resourceType: string, id: string): Resource {
    const row = this.sql.currentOf.get(resourceType, id);
    if (!row) throw notFound(`${resourceType}/${id} not found`);
    if (row.method === METHOD.DELETE) throw gone(`${resourceType}/${id} was deleted`);
    return this.decodeOrGone(row);
  }

  private vreadSync(resourceType: string, id: string, versionId: string): Resource {
    const row = this.sql.versionOf.get(resourceType, id, Number(versionId));
    if (!row) throw notFound(`${resourceType}/${id}/_history/${versionId} not found`);
    if (row.method === METHOD.DELETE) throw gone(`${resourceType}/${id}/_history/${versionId} is a deletion`);
    return this.decodeOrGone(row);
  }

  /** Current resources matching a conditional query (`identifier=…`), at most 2. */
  private conditionalMatches(resourceType: string, query: string): Resource[] {
    let request: SearchRequest;
    try {
      // comma lists of dates and quantities are OR here as in a search (src/fhir/search.ts)
      const params: Record<string, string | string[]> = {};
      for (const [name, value] of new URLSearchParams(query.replace(/^\?/, ''))) {
        const had = params[name];
        params[name] = had === undefined ? value : [had, value].flat();
      }
      const lists = orderedValueLists(resourceType, params);
      request = parseSearchRequest(resourceType, params);
      request.filters = [...(request.filters ?? []), ...lists];
    } catch (err) {
      throw badRequest(`invalid conditional query: ${(err as Error).message}`);
    }
    if (!request.filters?.length) throw badRequest('conditional query has no search parameters');
    return runSearch(this.searchContext, { resourceType: request.resourceType, filters: request.filters, count: 2 }).resources;
  }

  /**
   * Whose data key a version is sealed with: its first patient's. An AuditEvent about a patient
   * whose key is erased (the erasure's own record first of all) goes under the shared key instead:
   * under a new key of that patient, a later erasure of the same id would destroy the record of
   * this one. It stays indexed, so it stays in the patient's access log.
   */
  private keyPatientOf(resource: Resource): string | undefined {
    const patient = patientIdsOf(resource)[0];
    if (patient !== undefined && resource.resourceType === 'AuditEvent' && this.keys.state(patient) === 'erased') return undefined;
    return patient;
  }

  /** Writes a new current version: meta set, body encrypted, index rows replaced. */
  private writeVersion<T extends Resource>(resource: T, method: number, previous: VersionRow | undefined): T {
    const id = resource.id!;
    const version = previous ? previous.version + 1 : 1;
    const now = Date.now();
    const stored = { ...resource, meta: { ...resource.meta, versionId: String(version), lastUpdated: new Date(now).toISOString() } } as T;
    const key = this.keys.keyFor(this.keyPatientOf(stored));
    // The body is the RFC 8785 text the ledger commits to (meta.versionId/lastUpdated come from the
    // row): reads hand it to the integrity check as ready bytes, so no read canonicalises.
    const text = canonicalResourceText(stored);
    attachCanonicalText(stored, text);
    const body = seal(key.key, Buffer.from(text), aad(stored.resourceType, id, version, this.timeBoundFrom === Number.POSITIVE_INFINITY ? undefined : now));
    const { refs, dates } = this.indexRows(stored);
    if (previous) {
      if (previous.method !== METHOD.DELETE) this.removeIndex(previous.seq, previous.ix);
      this.sql.retireCurrent.run(previous.seq);
    }
    const seq = Number(this.sql.insertVersion.run(stored.resourceType, id, version, now, method, key.id, key.version, body,
      packIx(refs, dates)).lastInsertRowid);
    this.insertIndex(seq, refs, dates);
    return stored;
  }

  /** The index rows of a version: keyed hashes of its token/reference/uri values and its date rows. */
  private indexRows(resource: Resource): { refs: number[]; dates: { h: number; h2: number; start: number; end: number }[] } {
    const entries = extractIndexEntries(resource);
    return {
      refs: entries.keys.map((k) => this.keys.hash(k)),
      dates: entries.dates.map((d) => {
        const [h, h2] = this.keys.hashPair(dateRowKey(d.key, d.start, d.end));
        return { h, h2, start: d.start, end: d.end };
      }),
    };
  }

  private insertIndex(seq: number, refs: number[], dates: { h: number; h2: number; start: number; end: number }[]): void {
    this.sql.insertRefs(seq, refs);
    this.sql.insertDates(seq, dates);
  }

  /** The index generation the store's rows are complete for (params.ts INDEX_GENERATION). */
  get indexGeneration(): number {
    return this.generation;
  }

  /**
   * Rebuilds the index rows of current versions, a chunk of rows per write transaction (writes of
   * other requests go on between chunks and write their own rows), then records the current index
   * generation: parameters indexed since the store was written are looked up from then on. A store
   * of an older generation rebuilds only the types that have parameters indexed since it
   * (typesIndexedSince: from generation 3 to 4, Patients and the other types with names, not a million
   * readings; from 4 to 5, the readings, for their quantities in base units); one at the current
   * generation none (its rows are complete); `all` rebuilds every type (an index suspected damaged).
   * A version whose data key was erased cannot be read and keeps the rows it had (none of its
   * resource can be read either). `onProgress` gets the versions done and the total; `chunk`: rows
   * per transaction (REINDEX_CHUNK); `background`: pause after each chunk as long as it took, so a
   * serving process keeps at least half its thread for requests.
   */
  async reindex(onProgress?: (done: number, total: number) => void, options: { chunk?: number; background?: boolean; all?: boolean } = {}): Promise<{ versions: number; unreadable: number; generation: number }> {
    const size = Math.max(1, options.chunk ?? REINDEX_CHUNK);
    this.checkOpen();
    const current = currentVersions(this.db, options.all ? undefined : typesIndexedSince(this.generation));
    const total = current.count();
    let after = 0;
    let versions = 0;
    let unreadable = 0;
    for (;;) {
      const began = performance.now();
      const done = await this.write(() => {
        const rows = current.after(after, size);
        for (const row of rows) {
          after = row.seq;
          const resource = this.decode(row);
          if (!resource) {
            unreadable++;
            continue;
          }
          const { refs, dates } = this.indexRows(resource);
          this.removeIndex(row.seq, row.ix);
          this.sql.setIx.run(packIx(refs, dates), row.seq);
          this.insertIndex(row.seq, refs, dates);
          versions++;
        }
        return rows.length < size;
      });
      onProgress?.(versions + unreadable, total);
      if (done) break;
      // Let requests and other I/O in between chunks: the mutex hands over through promise
      // callbacks alone, which would otherwise keep the event loop from ever reaching them. In the
      // background, rest as long as the chunk took: the rebuild takes at most half the thread.
      const rest = options.background ? performance.now() - began : 0;
      await new Promise((resolve) => (rest > 0 ? setTimeout(resolve, rest) : setImmediate(resolve)));
    }
    await this.write(() => writeIndexGeneration(this.db, INDEX_GENERATION));
    this.generation = INDEX_GENERATION;
    return { versions, unreadable, generation: INDEX_GENERATION };
  }

  private removeIndex(seq: number, ix: Buffer | null): void {
    if (!ix) return;
    const { refs, dates } = unpackIx(ix);
    for (const h of refs) this.sql.deleteRef.run(h, seq);
    for (const d of dates) this.sql.deleteDate.run(d.h, d.start, seq);
    this.sql.clearIx.run(seq);
  }

  /**
   * Decrypts and parses a row; with `cache`, a row decoded before from the same ciphertext comes
   * from it. With `deferred` (SearchOptions.deferred), a row read for the first time is decrypted
   * and authenticated as always, and its text is parsed only as far as it is read
   * (src/repository/deferred.ts); a row read before is decoded whole and cached at once.
   */
  private decode(row: VersionRow, decodedCache?: DecodedCache, deferred = false): Resource | undefined {
    // Reads inside a write transaction may see rows that are rolled back later (and whose seq is
    // then reused): they never touch the cache, and are never deferred.
    const cache = decodedCache && !this.db.inTransaction ? decodedCache : undefined;
    if (row.light) {
      // read without its body (SELECT_LIGHT): from the cache, else fetched now
      if (!row.key_id || row.key_version === null || !this.keys.keyById(row.key_id, row.key_version)) return undefined;
      const unchanged = cache?.getUnchanged(row.seq);
      if (unchanged) return unchanged;
      const full = this.sql.bySeq.get(row.seq);
      return full ? this.decode(full, cache, deferred) : undefined;
    }
    if (!row.body || !row.key_id || row.key_version === null) return undefined;
    const key = this.keys.keyById(row.key_id, row.key_version);
    if (!key) return undefined;
    const hit = cache?.get(row.seq, row.body);
    if (hit) return hit;
    // From timeBoundFrom on, a body binds its row's time; each form is tried if the other fails (a
    // row an earlier release wrote after it, or a bound row another process wrote since this one
    // read timeBoundFrom). Neither kind can be turned into the other without the data key, so a
    // bound row moved in time opens with neither.
    const bound = row.seq >= this.timeBoundFrom;
    const text = openText(key, row.body, aad(row.type, row.id, row.version, bound ? row.last_updated : undefined))
      ?? openText(key, row.body, aad(row.type, row.id, row.version, bound ? undefined : row.last_updated));
    if (text === undefined) return undefined;
    if (deferred && cache && !cache.seenBefore(row.seq)) {
      const meta = { versionId: String(row.version), lastUpdated: new Date(row.last_updated).toISOString() };
      return deferredResource(text, meta, () => parseStored(text, row));
    }
    const resource = parseStored(text, row);
    if (!cache) return resource;
    return deferred ? cache.set(row.seq, row.body, resource) : cache.offer(row.seq, row.body, resource);
  }

  private decodeOrGone(row: VersionRow): Resource {
    const resource = this.decode(row, this.decoded);
    if (resource) return resource;
    throw this.tampered(row) ?? gone(`${row.type}/${row.id} is no longer available`);
  }

  /**
   * For a row `decode` did not answer (only then: it costs a key look-up, and a row read for a light
   * one): when its data key is there the body did not authenticate — altered, swapped or corrupted
   * on disk, not erased — and this is the TamperedVersionError that says so; undefined when the key
   * was erased (or the row has no body).
   */
  private tampered(row: VersionRow): TamperedVersionError | undefined {
    const full = row.light ? this.sql.bySeq.get(row.seq) : row;
    if (!full?.body || !full.key_id || full.key_version === null || !this.keys.keyById(full.key_id, full.key_version)) return undefined;
    const version = String(full.version);
    return new TamperedVersionError(full.type, full.id, version, new Date(full.last_updated).toISOString(), this.standInPatient?.(full.type, full.id, version));
  }

  private prepare(text: string): Statement<unknown[], VersionRow> {
    let statement = this.statements.get(text);
    if (!statement) {
      statement = this.db.prepare<unknown[], VersionRow>(text);
      if (this.statements.size > 500) this.statements.clear();
      this.statements.set(text, statement);
    }
    return statement;
  }

  private checkOpen(): void {
    if (this.closed) throw new Error('repository is closed');
  }
}

/**
 * A stored body back to the resource: canonical text (keys sorted, no versionId/lastUpdated) gets
 * its meta from the row and resourceType/id/meta first again; bodies written before canonical
 * storage already carry meta.versionId and are returned as they are. A deferred resource
 * (src/repository/deferred.ts) stands for exactly this object.
 */
export function parseStored(text: string, row: Pick<VersionRow, 'version' | 'last_updated'>): Resource {
  const parsed = JSON.parse(text) as Resource;
  if (parsed.meta?.versionId !== undefined) return parsed;
  const resource = Object.assign({ resourceType: parsed.resourceType, id: parsed.id, meta: undefined }, parsed) as Resource;
  resource.meta = { ...parsed.meta, versionId: String(row.version), lastUpdated: new Date(row.last_updated).toISOString() };
  attachCanonicalText(resource, text);
  return resource;
}

/**
 * Additional authenticated data binding a ciphertext to its resource version and, for rows written
 * from the store's time-bound-from (store.ts readTimeBoundFrom), the time the row says it was written
 * (its `meta.lastUpdated`, not part of the committed text): such a row moved in time fails to decrypt.
 */
function aad(type: string, id: string, version: number, lastUpdated?: number): string {
  return lastUpdated === undefined ? `${type}/${id}/${version}` : `${type}/${id}/${version}/${lastUpdated}`;
}

function checkBody(resource: Resource): void {
  if (!resource || typeof resource !== 'object' || typeof resource.resourceType !== 'string' || !/^[A-Z][A-Za-z]{1,63}$/.test(resource.resourceType)) {
    throw badRequest('resource has no valid resourceType', 'resourceType');
  }
  if (resource.id !== undefined && (typeof resource.id !== 'string' || !ID_PATTERN.test(resource.id))) {
    throw badRequest('resource id is not a valid FHIR id', 'id');
  }
}

/** ERR_PRECONDITION_FAILED unless `ifMatch` (a bare versionId or a weak ETag) is the current version of the row; absent `ifMatch` passes. */
function checkIfMatch(type: string, id: string, previous: VersionRow | undefined, ifMatch: string | undefined): void {
  if (ifMatch === undefined) return;
  const current = previous && previous.method !== METHOD.DELETE ? String(previous.version) : undefined;
  if (current !== ifMatch.replace(/^W\/"(.*)"$/, '$1')) throw preconditionFailed(`version conflict on ${type}/${id}`);
}
