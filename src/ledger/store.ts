/**
 * The commitment store: `<dataDir>/ledger/commitments.db` (SQLite), kept apart from the repository
 * so it works the same for the embedded and the upstream adapter.
 *
 * - `commitments`: one row per recorded resource version, keyed by (type, id, version). `seq`
 *   (rowid, contiguous from 1 because rows are never deleted) is the version's place in the
 *   anchoring queue; `salt` (32 random bytes) and `leaf` (SHA-256(salt ‖ canonical JSON)) never
 *   leave this file; `batch` and `proof` are set when the batch holding it is prepared.
 * - `batches`: one row per Merkle batch, `prepared` (root and proofs written, transaction maybe in
 *   flight) then `anchored` (on-chain batch id, block, transaction).
 * - `batch_trees`: per batch, its members' salts in seq order and every node of its Merkle tree
 *   (merkle.ts `nodes()`), written with the batch: a page of versions from one batch is checked
 *   with one read of these and the versions' positions, which the key index alone holds (the seq is
 *   its rowid), instead of a table row per version. Batches prepared before this table existed are
 *   checked through each version's row until their trees are added (`addMissingTree`, run in the
 *   background at start-up).
 * - `meta`: `seq_base`, the authority's on-chain sequence number of local seq 1 (read from the
 *   contract before the first batch), and `watermark` (last write time seen, for reconciliation).
 *
 * The queue is "rows with seq above the last prepared batch": nothing can be skipped, because a
 * batch always starts right after the previous one, and nothing is anchored twice, because the
 * contract refuses a batch that does not start at the authority's next sequence number.
 */
import type { Database as DB, Statement } from 'better-sqlite3';
import { openSqlite } from '../sqlite.js';
import { buildMerkleTree, type MerkleTree } from './merkle.js';

export interface CommitmentRecord {
  seq: number;
  type: string;
  id: string;
  version: string;
  patient: string | null;
  salt: Buffer;
  leaf: Buffer;
  createdAt: number;
  batch: number | null;
  proof: Buffer | null;
}

export type ProofRecord = Pick<CommitmentRecord, 'salt' | 'leaf' | 'batch' | 'proof'>;

export interface BatchRecord {
  id: number;
  firstSeq: number;
  lastSeq: number;
  root: Buffer;
  status: 'prepared' | 'anchored';
  chainBatchId: number | null;
  block: number | null;
  tx: string | null;
  preparedAt: number;
  anchoredAt: number | null;
}

/** Versions of one anchored or prepared batch, with what checking them needs (CommitmentStore.treeGroups). */
export interface TreeGroup {
  batch: number;
  /** Leaves in the batch (its tree's width). */
  size: number;
  /** Every leaf's salt, 32 bytes each, in tree order; every node of the batch's tree (not trusted: checked against the root). */
  salts: Buffer;
  nodes: Buffer;
  /** Versions asked for: index into the caller's keys, and the version's place among the tree's leaves. */
  members: { at: number; index: number }[];
}

/**
 * A write to an upstream server, recorded before it is sent and removed once its versions' commitments
 * are (AnchoredRepository): the evidence that a version a crash left without a commitment is one
 * GlucoGuard wrote. `id`: the resource's id when the write names it (an update, a patch); `digest`:
 * of the content sent (AnchoredRepository's contentDigest), none for a patch, whose result only the server
 * knows; `dropped`: the paths of `urn:` references the server replaces, left out of the digest.
 */
export interface WriteIntent {
  seq: number;
  type: string;
  id: string | null;
  digest: Buffer | null;
  dropped: string[];
  createdAt: number;
}

export interface NewCommitment {
  type: string;
  id: string;
  version: string;
  patient: string | undefined;
  salt: Buffer;
  leaf: Buffer;
}

interface Row {
  seq: number; type: string; id: string; version: string; patient: string | null; salt: Buffer; leaf: Buffer;
  created_at: number; batch: number | null; proof: Buffer | null;
}
interface BatchRow {
  id: number; first_seq: number; last_seq: number; root: Buffer; status: 'prepared' | 'anchored'; chain_batch: number | null;
  block: number | null; tx: string | null; prepared_at: number; anchored_at: number | null;
}

/** Fewest versions of one type read by a range scan rather than one lookup each (proofsOf). */
const RANGE_SCAN_MIN = 8;

/** How often the reconciliation watermark is written (ms); reconciliation starts a minute before it. */
const WATERMARK_EVERY_MS = 1000;

/**
 * Bytes of batch trees kept in memory (treeGroups): 64 MiB holds every tree of ~1,000,000 versions
 * in 1,000-version batches. Trees are not trusted (each check hashes up to the on-chain root), so
 * keeping them changes no verdict. A tree whose salts another process sharing the store erased
 * (`forgetSalts`) stays here until evicted; the erased versions' bodies are unreadable by then.
 */
const TREE_CACHE_BYTES = 64 * 1024 * 1024;

/** What a kept tree (salts, nodes, positions) counts against TREE_CACHE_BYTES. */
function treeBytesOf(tree: readonly [Buffer, Buffer, Buffer | null]): number {
  return tree[0].length + tree[1].length + (tree[2]?.length ?? 0);
}

export class CommitmentStore {
  private readonly db: DB;
  private readonly insert: Statement<[string, string, string, string | null, Buffer, Buffer, number]>;
  private readonly byKey: Statement<[string, string, string], Row>;
  private readonly hasKey: Statement<[string, string, string], number>;
  private readonly newerKey: Statement<[string, string, number], number>;
  private readonly anyVersion: Statement<[string, string], number>;
  private readonly newestKey: Statement<[string, string], { version: string; created_at: number; patient: string | null }>;
  private readonly batchById: Statement<[number], BatchRow>;
  private readonly proofByKey: Statement<[string, string, string], [Buffer, Buffer, number | null, Buffer | null]>;
  private readonly proofRange: Statement<[string, string, string, number], [string, string, Buffer, Buffer, number | null, Buffer | null]>;
  private readonly seqByKey: Statement<[string, string, string], number>;
  private readonly seqRange: Statement<[string, string, string, number], [string, string, number]>;
  private readonly seqPatientRange: Statement<[string, string, string, string, number], [string, string, number]>;
  private readonly batchOfSeq: Statement<[number], [number, number, number]>;
  private readonly treeOf: Statement<[number], [Buffer, Buffer, Buffer | null]>;
  private closed = false;
  private watermarkAt = -Infinity;
  /**
   * Batch trees read lately (salts, nodes, positions), least recently used first, up to
   * TREE_CACHE_BYTES: a tree is written once with its batch, and only `forgetSalts` changes it
   * (dropping it here). A day of readings streamed in from many patients spans dozens of batches,
   * each tree ~50–70 kB and ~0.13 ms to read from SQLite even from the page cache.
   */
  private readonly trees = new Map<number, [Buffer, Buffer, Buffer | null]>();
  private treeBytes = 0;

  constructor(readonly file: string) {
    // synchronous NORMAL, like the repository: a power cut can lose the last commits of both files
    // alike, and reconciliation (AnchoredRepository.reconcile) fills the gap.
    this.db = openSqlite(file);
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS commitments (
        seq INTEGER PRIMARY KEY,
        type TEXT NOT NULL, id TEXT NOT NULL, version TEXT NOT NULL,
        patient TEXT,
        salt BLOB NOT NULL, leaf BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        batch INTEGER, proof BLOB
      );
      CREATE UNIQUE INDEX IF NOT EXISTS commitments_by_key ON commitments (type, id, version);
      CREATE INDEX IF NOT EXISTS commitments_by_patient ON commitments (patient) WHERE patient IS NOT NULL;
      CREATE INDEX IF NOT EXISTS commitments_by_patient_key ON commitments (patient, type, id, version) WHERE patient IS NOT NULL;
      CREATE TABLE IF NOT EXISTS batches (
        id INTEGER PRIMARY KEY,
        first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, root BLOB NOT NULL,
        status TEXT NOT NULL, chain_batch INTEGER, block INTEGER, tx TEXT,
        prepared_at INTEGER NOT NULL, anchored_at INTEGER
      );
      CREATE INDEX IF NOT EXISTS batches_by_last_seq ON batches (last_seq);
      CREATE TABLE IF NOT EXISTS batch_trees (batch INTEGER PRIMARY KEY, salts BLOB NOT NULL, nodes BLOB NOT NULL, positions BLOB);
      CREATE INDEX IF NOT EXISTS batches_prepared ON batches (id) WHERE status = 'prepared';
      CREATE TABLE IF NOT EXISTS write_intents (seq INTEGER PRIMARY KEY, type TEXT NOT NULL, id TEXT, digest BLOB, dropped TEXT NOT NULL, created_at INTEGER NOT NULL);
    `);
    // trees stored before leaves were ordered by patient: every leaf at its seq's place
    if (!this.db.prepare("SELECT 1 FROM pragma_table_info('batch_trees') WHERE name = 'positions'").get()) {
      this.db.exec('ALTER TABLE batch_trees ADD COLUMN positions BLOB');
    }
    this.insert = this.db.prepare('INSERT OR IGNORE INTO commitments (type, id, version, patient, salt, leaf, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)');
    this.byKey = this.db.prepare('SELECT * FROM commitments WHERE type = ? AND id = ? AND version = ?');
    this.hasKey = this.db.prepare<[string, string, string], number>('SELECT 1 FROM commitments WHERE type = ? AND id = ? AND version = ?').pluck();
    this.anyVersion = this.db.prepare<[string, string], number>('SELECT 1 FROM commitments WHERE type = ? AND id = ? LIMIT 1').pluck();
    this.newestKey = this.db.prepare<[string, string], { version: string; created_at: number; patient: string | null }>(
      'SELECT version, created_at, patient FROM commitments INDEXED BY commitments_by_key WHERE type = ? AND id = ? ORDER BY CAST(version AS INTEGER) DESC, version DESC LIMIT 1');
    this.newerKey = this.db.prepare<[string, string, number], number>(
      'SELECT 1 FROM commitments INDEXED BY commitments_by_key WHERE type = ? AND id = ? AND CAST(version AS INTEGER) > ? LIMIT 1').pluck();
    this.batchById = this.db.prepare('SELECT * FROM batches WHERE id = ?');
    this.proofByKey = this.db.prepare<[string, string, string], [Buffer, Buffer, number | null, Buffer | null]>(
      'SELECT salt, leaf, batch, proof FROM commitments WHERE type = ? AND id = ? AND version = ?').raw();
    this.proofRange = this.db.prepare<[string, string, string, number], [string, string, Buffer, Buffer, number | null, Buffer | null]>(
      'SELECT id, version, salt, leaf, batch, proof FROM commitments INDEXED BY commitments_by_key WHERE type = ? AND id BETWEEN ? AND ? LIMIT ?').raw();
    // the key index holds type, id, version and the rowid (seq): these two read nothing else
    this.seqByKey = this.db.prepare<[string, string, string], number>(
      'SELECT seq FROM commitments INDEXED BY commitments_by_key WHERE type = ? AND id = ? AND version = ?').pluck();
    this.seqRange = this.db.prepare<[string, string, string, number], [string, string, number]>(
      'SELECT id, version, seq FROM commitments INDEXED BY commitments_by_key WHERE type = ? AND id BETWEEN ? AND ? LIMIT ?').raw();
    // one patient's versions of one type between two ids: the versions streamed in from many
    // patients lie far apart in the key index, next to each other here
    this.seqPatientRange = this.db.prepare<[string, string, string, string, number], [string, string, number]>(
      'SELECT id, version, seq FROM commitments INDEXED BY commitments_by_patient_key WHERE patient = ? AND type = ? AND id BETWEEN ? AND ? LIMIT ?').raw();
    this.batchOfSeq = this.db.prepare<[number], [number, number, number]>(
      'SELECT id, first_seq, last_seq FROM batches WHERE last_seq >= ? ORDER BY last_seq LIMIT 1').raw();
    this.treeOf = this.db.prepare<[number], [Buffer, Buffer, Buffer | null]>('SELECT salts, nodes, positions FROM batch_trees WHERE batch = ?').raw();
  }

  /** Records commitments in one transaction; a version already recorded is left as it is. Returns how many were new. */
  add(items: NewCommitment[], now = Date.now()): number {
    this.checkOpen();
    let added = 0;
    this.db.transaction(() => {
      for (const c of items) added += this.insert.run(c.type, c.id, c.version, c.patient ?? null, c.salt, c.leaf, now).changes;
      // at most once a second: reconciliation looks a minute before it, and an upsert per write
      // was ~2 % of the process at 1,000 writes/s
      if (items.length && now - this.watermarkAt >= WATERMARK_EVERY_MS) {
        this.setMeta('watermark', String(now));
        this.watermarkAt = now;
      }
    })();
    return added;
  }

  /** Whether a commitment of that version is recorded (the key index alone). */
  /** True when a version of type/id numbered above `version` has a commitment (numeric version ids). */
  hasNewer(type: string, id: string, version: number): boolean {
    this.checkOpen();
    return this.newerKey.get(type, id, version) !== undefined;
  }

  /** True when any version of type/id has a commitment (a prefix of the key index). */
  hasAnyVersion(type: string, id: string): boolean {
    this.checkOpen();
    return this.anyVersion.get(type, id) !== undefined;
  }

  has(type: string, id: string, version: string): boolean {
    this.checkOpen();
    return this.hasKey.get(type, id, version) !== undefined;
  }

  get(type: string, id: string, version: string): CommitmentRecord | undefined {
    this.checkOpen();
    const row = this.byKey.get(type, id, version);
    return row && toRecord(row);
  }

  /**
   * What the integrity check needs of many versions (salt, leaf, batch, proof), in the order asked
   * (undefined where none is recorded), read in one snapshot; only those columns, as raw rows,
   * because creating the row objects and blobs is most of the cost of a cold check.
   *
   * Versions of one type whose ids lie close together in id order (the embedded repository's ids
   * are time-ordered, so a day of readings uploaded together does) are read with one range scan of
   * the key index between the smallest and largest id, stopped after a few rows more than asked
   * for; whatever that scan did not find (ids far apart, ids of another server) is looked up one by one.
   */
  proofsOf(keys: readonly { type: string; id: string; version: string }[]): (ProofRecord | undefined)[] {
    this.checkOpen();
    return this.db.transaction(() => {
      const out: (ProofRecord | undefined)[] = new Array(keys.length);
      const found = new Array<boolean>(keys.length).fill(false);
      this.scanRanges(keys, out, found);
      keys.forEach((k, i) => {
        if (found[i]) return;
        const row = this.proofByKey.get(k.type, k.id, k.version);
        out[i] = row && { salt: row[0], leaf: row[1], batch: row[2], proof: row[3] };
      });
      return out;
    })();
  }

  private scanRanges(keys: readonly { type: string; id: string; version: string }[], out: (ProofRecord | undefined)[], found: boolean[]): void {
    for (const range of idRanges(keys, keys.map((_, i) => i), (k) => k.type)) {
      for (const row of this.proofRange.all(range.type, range.lo, range.hi, range.limit)) {
        const i = range.wanted.get(`${row[0]}/${row[1]}`);
        if (i === undefined) continue;
        out[i] = { salt: row[2], leaf: row[3], batch: row[4], proof: row[5] };
        found[i] = true;
      }
    }
  }

  /**
   * The versions among `keys` that sit in a batch with a stored tree, grouped by batch, with the
   * batch's salts and nodes; the indices of the others (not recorded, not batched yet, or batched
   * before trees were stored) in `rest`. One snapshot; the versions' seqs come from the indexes
   * alone: range scans of one patient's keys (`patient`: a hint, the patient the version is
   * probably recorded under), then of the key index (as in proofsOf), then single look-ups for
   * what those did not find; each batch's tree is one row.
   */
  treeGroups(keys: readonly { type: string; id: string; version: string; patient?: string }[], options: { keep?: boolean } = {}): { groups: TreeGroup[]; rest: number[] } {
    const keep = options.keep !== false;
    this.checkOpen();
    return this.db.transaction(() => {
      const seqs = new Array<number | undefined>(keys.length);
      const found = (i: number | undefined, seq: number): void => {
        if (i !== undefined) seqs[i] = seq;
      };
      const all = keys.map((_, i) => i);
      for (const range of idRanges(keys, all, (k) => (k.patient === undefined ? undefined : `${k.patient}\0${k.type}`))) {
        const patient = keys[range.wanted.values().next().value!]!.patient!;
        for (const row of this.seqPatientRange.all(patient, range.type, range.lo, range.hi, range.limit)) found(range.wanted.get(`${row[0]}/${row[1]}`), row[2]);
      }
      for (const range of idRanges(keys, all.filter((i) => seqs[i] === undefined), (k) => k.type)) {
        for (const row of this.seqRange.all(range.type, range.lo, range.hi, range.limit)) found(range.wanted.get(`${row[0]}/${row[1]}`), row[2]);
      }
      keys.forEach((k, i) => {
        if (seqs[i] === undefined) seqs[i] = this.seqByKey.get(k.type, k.id, k.version);
      });
      const order = keys.map((_, i) => i).filter((i) => seqs[i] !== undefined).sort((a, b) => seqs[a]! - seqs[b]!);
      const rest = keys.map((_, i) => i).filter((i) => seqs[i] === undefined);
      const groups: TreeGroup[] = [];
      let batch: [number, number, number] | undefined;
      let group: TreeGroup | undefined;
      let positions: Buffer | null = null;
      for (const i of order) {
        const seq = seqs[i]!;
        if (!batch || seq > batch[2]) {
          batch = this.batchOfSeq.get(seq);
          const tree = batch && batch[1] <= seq ? this.treeOfBatch(batch[0], keep) : undefined;
          group = tree && { batch: batch![0], size: batch![2] - batch![1] + 1, salts: tree[0], nodes: tree[1], members: [] };
          positions = tree?.[2] ?? null;
          if (group) groups.push(group);
          if (!batch) batch = [0, seq, Number.MAX_SAFE_INTEGER]; // not batched yet: nor is anything after it
        }
        if (group) group.members.push({ at: i, index: positionOf(positions, seq - batch[1]) });
        else rest.push(i);
      }
      return { groups, rest };
    })();
  }

  /**
   * A batch's stored tree, from the cache or read now; undefined when it has none. `keep` false (a
   * one-off check: bulk export, subscriptions) reads without keeping, so a pass over the whole store
   * neither fills the cache (64 MiB of memory an export would otherwise leave behind) nor evicts the
   * trees interactive reads use.
   */
  private treeOfBatch(batch: number, keep = true): [Buffer, Buffer, Buffer | null] | undefined {
    const hit = this.trees.get(batch);
    if (hit) {
      if (keep) {
        this.trees.delete(batch); // most recently used last
        this.trees.set(batch, hit);
      }
      return hit;
    }
    const tree = this.treeOf.get(batch);
    if (!tree) return undefined;
    const size = treeBytesOf(tree);
    if (!keep || size > TREE_CACHE_BYTES) return tree;
    for (const [oldest, kept] of this.trees) {
      if (this.treeBytes + size <= TREE_CACHE_BYTES) break;
      this.dropTree(oldest, kept);
    }
    this.trees.set(batch, tree);
    this.treeBytes += size;
    return tree;
  }

  private dropTree(batch: number, tree = this.trees.get(batch)): void {
    if (!tree) return;
    this.trees.delete(batch);
    this.treeBytes -= treeBytesOf(tree);
  }

  /** Anchored batches (local id, on-chain id, root, block it was anchored in) with local id above `afterId`, oldest first. */
  anchoredBatches(afterId = 0, limit = 10_000): { id: number; chainBatchId: number; root: Buffer; block: number | null }[] {
    return this.db.prepare<[number, number], { id: number; chain_batch: number; root: Buffer; block: number | null }>(
      "SELECT id, chain_batch, root, block FROM batches WHERE status = 'anchored' AND id > ? ORDER BY id LIMIT ?")
      .all(afterId, limit).map((r) => ({ id: r.id, chainBatchId: r.chain_batch, root: r.root, block: r.block }));
  }

  /**
   * The newest anchored batches holding together at most `versions` versions (newest first): what
   * the checker proves ahead at start-up (IntegrityChecker.proveAhead).
   */
  newestAnchoredSpans(versions: number): { id: number; firstSeq: number; lastSeq: number }[] {
    const out: { id: number; firstSeq: number; lastSeq: number }[] = [];
    let total = 0;
    for (const [id, firstSeq, lastSeq] of this.db.prepare<[], [number, number, number]>(
      "SELECT id, first_seq, last_seq FROM batches WHERE status = 'anchored' ORDER BY id DESC").raw().iterate()) {
      total += lastSeq - firstSeq + 1;
      if (total > versions) break;
      out.push({ id, firstSeq, lastSeq });
    }
    return out;
  }

  /**
   * A batch's stored tree (salts, nodes, positions; untrusted) and the key of each of its versions in
   * seq order, read in one snapshot without touching the tree cache; undefined when the batch has
   * no stored tree.
   */
  batchContents(span: { id: number; firstSeq: number; lastSeq: number }): { salts: Buffer; nodes: Buffer; positions: Buffer | null; keys: [string, string, string][] } | undefined {
    this.checkOpen();
    return this.db.transaction(() => {
      const tree = this.treeOf.get(span.id);
      if (!tree) return undefined;
      const keys = this.db.prepare<[number, number], [string, string, string]>('SELECT type, id, version FROM commitments WHERE seq BETWEEN ? AND ? ORDER BY seq')
        .raw().all(span.firstSeq, span.lastSeq);
      return { salts: tree[0], nodes: tree[1], positions: tree[2], keys };
    })();
  }

  /** The local id of the newest anchored batch (0 when none is). */
  lastAnchoredBatchId(): number {
    return this.db.prepare<[], { id: number | null }>("SELECT MAX(id) AS id FROM batches WHERE status = 'anchored'").get()!.id ?? 0;
  }

  /** Commitments not yet in any batch, oldest first. */
  unbatched(limit: number): CommitmentRecord[] {
    const after = this.lastBatchedSeq();
    return this.db.prepare<[number, number], Row>('SELECT * FROM commitments WHERE seq > ? ORDER BY seq LIMIT ?').all(after, limit).map(toRecord);
  }

  /** Number of commitments waiting for a batch, and the creation time of the oldest. */
  backlog(): { count: number; oldest: number | null } {
    const after = this.lastBatchedSeq();
    const row = this.db.prepare<[number], { n: number; oldest: number | null }>(
      'SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM commitments WHERE seq > ?').get(after)!;
    return { count: row.n, oldest: row.oldest };
  }

  /**
   * Commitments not anchored yet — queued, or in a batch prepared but not confirmed on chain (sent,
   * or refused by the contract) — and the creation time of the oldest: what the anchoring lag and
   * queue depth report. Prepared batches always follow the anchored ones (anchored in order), so
   * this is one range count from the first prepared batch (or the queue) on.
   */
  unanchored(): { count: number; oldest: number | null } {
    const first = this.db.prepare<[], { s: number | null }>("SELECT MIN(first_seq) AS s FROM batches WHERE status = 'prepared'").get()!.s;
    const from = first ?? this.lastBatchedSeq() + 1;
    const row = this.db.prepare<[number], { n: number; oldest: number | null }>(
      'SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM commitments WHERE seq >= ?').get(from)!;
    return { count: row.n, oldest: row.oldest };
  }

  /** The last seq of the newest anchored batch (0 when none): what the chain must hold at least. */
  lastAnchoredSeq(): number {
    return this.db.prepare<[], { s: number }>("SELECT last_seq AS s FROM batches WHERE status = 'anchored' ORDER BY id DESC LIMIT 1").get()?.s ?? 0;
  }

  /** The last seqs of the batches (prepared or anchored) ending at or after `seq`, in order. */
  batchEndsFrom(seq: number): number[] {
    return this.db.prepare<[number], number>('SELECT last_seq FROM batches WHERE last_seq >= ? ORDER BY last_seq').pluck().all(seq);
  }

  lastBatchedSeq(): number {
    return this.db.prepare<[], { s: number | null }>('SELECT MAX(last_seq) AS s FROM batches').get()!.s ?? 0;
  }

  /**
   * Writes a batch (status prepared) over the commitments `firstSeq`…`lastSeq`, whose leaves `tree`
   * was built from in `order` (`order[p]`: the seq offset of the leaf at position p; default seq
   * order, see patientOrder): each member's proof, and the batch's tree with the members' salts
   * (`salts`, in tree order) and the position of each member. Atomically.
   */
  prepareBatch(firstSeq: number, lastSeq: number, tree: MerkleTree, salts: readonly Buffer[], now = Date.now(), order?: readonly number[]): BatchRecord {
    const size = lastSeq - firstSeq + 1;
    if (salts.length !== size) throw new Error(`a batch of ${size} needs ${size} salts, not ${salts.length}`);
    const positions = order && positionsOf(order, size);
    return this.db.transaction(() => {
      if (firstSeq !== this.lastBatchedSeq() + 1) throw new Error(`batch must start at ${this.lastBatchedSeq() + 1}, not ${firstSeq}`);
      const id = Number(this.db.prepare('INSERT INTO batches (first_seq, last_seq, root, status, prepared_at) VALUES (?, ?, ?, ?, ?)')
        .run(firstSeq, lastSeq, tree.root, 'prepared', now).lastInsertRowid);
      const setProof = this.db.prepare('UPDATE commitments SET batch = ?, proof = ? WHERE seq = ?');
      for (let i = 0; i < size; i++) setProof.run(id, tree.proof(positionOf(positions ?? null, i)), firstSeq + i);
      this.db.prepare('INSERT INTO batch_trees (batch, salts, nodes, positions) VALUES (?, ?, ?, ?)').run(id, Buffer.concat(salts), tree.nodes(), positions ?? null);
      return this.batch(id)!;
    })();
  }

  /**
   * Stores the tree of the first batch after `afterId` that has none (batches prepared before trees
   * were stored), rebuilt from its members' rows, when it leads to the batch's root (a batch whose
   * rows do not is left to the version-by-version check). Answers the batch's id and whether its
   * tree was stored, or undefined when none is left.
   */
  addMissingTree(afterId: number): { id: number; stored: boolean } | undefined {
    this.checkOpen();
    const batch = this.db.prepare<[number], { id: number; first_seq: number; last_seq: number; root: Buffer }>(
      'SELECT b.id, b.first_seq, b.last_seq, b.root FROM batches b LEFT JOIN batch_trees t ON t.batch = b.id WHERE t.batch IS NULL AND b.id > ? ORDER BY b.id LIMIT 1').get(afterId);
    if (!batch) return undefined;
    const rows = this.db.prepare<[number, number], [Buffer, Buffer]>('SELECT salt, leaf FROM commitments WHERE seq BETWEEN ? AND ? ORDER BY seq')
      .raw().all(batch.first_seq, batch.last_seq);
    const tree = rows.length === batch.last_seq - batch.first_seq + 1 ? buildMerkleTree(rows.map((r) => r[1])) : undefined;
    if (!tree?.root.equals(batch.root)) return { id: batch.id, stored: false };
    this.db.prepare('INSERT OR IGNORE INTO batch_trees (batch, salts, nodes) VALUES (?, ?, ?)').run(batch.id, Buffer.concat(rows.map((r) => r[0])), tree.nodes());
    return { id: batch.id, stored: true };
  }

  /**
   * The versions recorded for `patient` whose salts are not overwritten yet (seq order): what an
   * erasure of the patient may have to forget (AnchoredRepository.forgetUnreadableSalts).
   */
  saltedVersionsOf(patient: string): { seq: number; type: string; id: string; version: string }[] {
    this.checkOpen();
    return this.db.prepare<[string], { seq: number; type: string; id: string; version: string }>(
      'SELECT seq, type, id, version FROM commitments WHERE patient = ? AND salt <> zeroblob(32) ORDER BY seq').all(patient);
  }

  /**
   * Right to erasure, the ledger's part: overwrites with zeros the salts of versions recorded for
   * `patient` — those at `only` (seqs, see saltedVersionsOf), or else every one — in their rows and
   * in their batches' trees, so the on-chain commitments of the erased data can no longer be tested
   * against guesses of its content. Leaves, proofs and trees stay (other versions of the same
   * batches are still proven with them). Answers how many salts were overwritten now (not those
   * an earlier erasure of the same id overwrote).
   *
   * An erasure names the versions it made unreadable (`only`): a record about the patient kept
   * under the shared key (an earlier erasure's AuditEvent) is recorded under the patient too, and
   * must keep its salt, or it stays readable but no longer proves.
   */
  forgetSalts(patient: string, only?: readonly number[]): number {
    this.checkOpen();
    const chosen = only && new Set(only);
    return this.db.transaction(() => {
      const rows = this.db.prepare<[string], [number, number | null]>('SELECT seq, batch FROM commitments WHERE patient = ? AND salt <> zeroblob(32)')
        .raw().all(patient).filter(([seq]) => !chosen || chosen.has(seq));
      if (!rows.length) return 0;
      const overwrite = this.db.prepare('UPDATE commitments SET salt = zeroblob(32) WHERE seq = ?');
      for (const [seq] of rows) overwrite.run(seq);
      const byBatch = new Map<number, number[]>();
      for (const [seq, batch] of rows) {
        if (batch === null) continue;
        const seqs = byBatch.get(batch);
        if (seqs) seqs.push(seq);
        else byBatch.set(batch, [seq]);
      }
      const readTree = this.db.prepare<[number], { first_seq: number; salts: Buffer | null; positions: Buffer | null }>(
        'SELECT b.first_seq, t.salts, t.positions FROM batches b LEFT JOIN batch_trees t ON t.batch = b.id WHERE b.id = ?');
      const writeSalts = this.db.prepare('UPDATE batch_trees SET salts = ? WHERE batch = ?');
      for (const [batch, seqs] of byBatch) {
        this.dropTree(batch);
        const tree = readTree.get(batch);
        if (!tree?.salts) continue;
        const salts = Buffer.from(tree.salts);
        for (const seq of seqs) {
          const at = positionOf(tree.positions, seq - tree.first_seq);
          salts.fill(0, 32 * at, 32 * at + 32);
        }
        writeSalts.run(salts, batch);
      }
      return rows.length;
    })();
  }

  markAnchored(id: number, chainBatchId: number, block: number, tx: string | null, now = Date.now()): void {
    this.db.prepare("UPDATE batches SET status = 'anchored', chain_batch = ?, block = ?, tx = ?, anchored_at = ? WHERE id = ?")
      .run(chainBatchId, block, tx, now, id);
  }

  batch(id: number): BatchRecord | undefined {
    const row = this.batchById.get(id);
    return row && toBatch(row);
  }

  /** Every batch, oldest first. */
  allBatches(): BatchRecord[] {
    return this.db.prepare<[], BatchRow>('SELECT * FROM batches ORDER BY id').all().map(toBatch);
  }

  preparedBatches(): BatchRecord[] {
    return this.db.prepare<[], BatchRow>("SELECT * FROM batches WHERE status = 'prepared' ORDER BY id").all().map(toBatch);
  }

  /**
   * Every commitment, optionally of one patient, in seq order (for `glucoguard verify`), read a page
   * at a time so no statement stays open while the caller works (it may read this store meanwhile).
   */
  *all(patient?: string, pageSize = 1000): IterableIterator<CommitmentRecord> {
    const page = patient === undefined
      ? this.db.prepare<[number, number], Row>('SELECT * FROM commitments WHERE seq > ? ORDER BY seq LIMIT ?')
      : this.db.prepare<[string, number, number], Row>('SELECT * FROM commitments WHERE patient = ? AND seq > ? ORDER BY seq LIMIT ?');
    for (let after = 0; ;) {
      const rows = patient === undefined
        ? (page as Statement<[number, number], Row>).all(after, pageSize)
        : (page as Statement<[string, number, number], Row>).all(patient, after, pageSize);
      for (const row of rows) yield toRecord(row);
      if (rows.length < pageSize) return;
      after = rows[rows.length - 1]!.seq;
    }
  }

  /**
   * Commitments recorded; those in anchored batches; the others (pending: queued or in a batch
   * still in flight); and `missing`, the leaves of batches that have no row here — rows are never
   * deleted, so each one is a commitment removed from this file (gaps() says where).
   *
   * From COUNT(*) (SQLite counts the smallest index) and range counts of the rows past the last
   * batch and of the prepared batches' rows, both short: a count per batch over the table took
   * ~0.1 s for 1,000,000 commitments, COUNT(*) ~15 ms (bench/chain.ts polls this while it waits).
   */
  counts(): { commitments: number; anchored: number; pending: number; missing: number; batches: number; lastAnchoredAt: number | null } {
    return this.db.transaction(() => {
      const c = this.db.prepare<[], { n: number }>('SELECT COUNT(*) AS n FROM commitments').get()!.n;
      const totals = this.batchTotals();
      const anchored = this.db.prepare<[], { b: number; at: number | null }>(
        "SELECT COUNT(*) AS b, MAX(anchored_at) AS at FROM batches WHERE status = 'anchored'").get()!;
      const prepared = this.db.prepare<[], { n: number | null }>(
        "SELECT SUM((SELECT COUNT(*) FROM commitments c WHERE c.seq BETWEEN b.first_seq AND b.last_seq)) AS n FROM batches b WHERE status = 'prepared'").get()!.n ?? 0;
      const present = totals.present(c);
      return { commitments: c, anchored: present - prepared, pending: c - present + prepared, missing: totals.leaves - present, batches: anchored.b, lastAnchoredAt: anchored.at };
    })();
  }

  /** Leaves of every batch; `present(c)`: the rows at or below the last batch, given COUNT(*) = c. */
  private batchTotals(): { leaves: number; lastBatched: number; present(count: number): number } {
    const t = this.db.prepare<[], { leaves: number | null; last: number | null }>('SELECT SUM(last_seq - first_seq + 1) AS leaves, MAX(last_seq) AS last FROM batches').get()!;
    const lastBatched = t.last ?? 0;
    const beyond = this.db.prepare<[number], { n: number }>('SELECT COUNT(*) AS n FROM commitments WHERE seq > ?').get(lastBatched)!.n;
    return { leaves: t.leaves ?? 0, lastBatched, present: (count) => count - beyond };
  }

  /**
   * What is missing from this file, found from its own records: rows are never deleted and seqs
   * are contiguous from 1, and batches cover seq ranges that follow each other from 1. Answers the
   * batches (prepared or anchored) with leaves that have no row, with the missing seqs; the seq
   * ranges below the last batch that no batch covers (batches removed); and the seqs missing
   * between the last batch and the newest row (queued commitments removed). A removal at the very
   * end of the queue leaves no trace here; one at the end of the batches is found against the
   * chain (ledger/completeness.ts).
   */
  gaps(): { batches: { batch: BatchRecord; missing: number[] }[]; unbatched: { from: number; to: number }[]; queued: number[] } {
    this.checkOpen();
    return this.db.transaction(() => {
      const batches: { batch: BatchRecord; missing: number[] }[] = [];
      const unbatched: { from: number; to: number }[] = [];
      // the usual answer, nothing missing, without a count per batch: batches that follow each other
      // from seq 1 and hold as many rows as leaves, and a queue with no hole
      const totals = this.batchTotals();
      const count = this.db.prepare<[], { n: number }>('SELECT COUNT(*) AS n FROM commitments').get()!.n;
      const breaks = this.db.prepare<[], { n: number }>(
        'SELECT COUNT(*) AS n FROM (SELECT first_seq, LAG(last_seq, 1, 0) OVER (ORDER BY first_seq) AS prev FROM batches) WHERE first_seq <> prev + 1').get()!.n;
      const queuedRows = count - totals.present(count);
      if (!breaks && totals.leaves === totals.present(count) && queuedRows === this.lastSeq() - totals.lastBatched) return { batches, unbatched, queued: [] };
      const countIn = this.db.prepare<[number, number], number>('SELECT COUNT(*) FROM commitments WHERE seq BETWEEN ? AND ?').pluck();
      const present = this.db.prepare<[number, number], number>('SELECT seq FROM commitments WHERE seq BETWEEN ? AND ? ORDER BY seq').pluck();
      const missingIn = (from: number, to: number): number[] => {
        if (to < from || countIn.get(from, to) === to - from + 1) return [];
        const have = new Set(present.all(from, to));
        const out: number[] = [];
        for (let seq = from; seq <= to; seq++) if (!have.has(seq)) out.push(seq);
        return out;
      };
      let next = 1;
      for (const row of this.db.prepare<[], BatchRow>('SELECT * FROM batches ORDER BY first_seq').iterate()) {
        if (row.first_seq > next) unbatched.push({ from: next, to: row.first_seq - 1 });
        next = Math.max(next, row.last_seq + 1);
        const missing = missingIn(row.first_seq, row.last_seq);
        if (missing.length) batches.push({ batch: toBatch(row), missing });
      }
      return { batches, unbatched, queued: missingIn(next, this.lastSeq()) };
    })();
  }

  /**
   * The rows of the seqs `from`…`to` that are there (type, id, version, patient): what a batch's
   * missing leaves are told apart by (their neighbours).
   */
  keysBetween(from: number, to: number): { seq: number; type: string; id: string; version: string; patient: string | null }[] {
    this.checkOpen();
    return this.db.prepare<[number, number], { seq: number; type: string; id: string; version: string; patient: string | null }>(
      'SELECT seq, type, id, version, patient FROM commitments WHERE seq BETWEEN ? AND ? ORDER BY seq').all(from, to);
  }

  /** A batch's stored tree: every leaf's salt in tree order, every node, and each member's position (null: seq order); undefined when it has none. */
  treeOfBatchRecord(batch: number): { salts: Buffer; nodes: Buffer; positions: Buffer | null } | undefined {
    this.checkOpen();
    const tree = this.treeOf.get(batch);
    return tree && { salts: tree[0], nodes: tree[1], positions: tree[2] };
  }

  /** The newest version of type/id with a commitment (numeric version ids compared as numbers), if any. */
  newestCommitted(type: string, id: string): { version: string; createdAt: number; patient: string | null } | undefined {
    this.checkOpen();
    const row = this.newestKey.get(type, id);
    return row && { version: row.version, createdAt: row.created_at, patient: row.patient };
  }

  /** True when a commitment is recorded under `patient`, or for Patient/`patient` itself. */
  knowsPatient(patient: string): boolean {
    this.checkOpen();
    return this.db.prepare('SELECT 1 FROM commitments WHERE patient = ? LIMIT 1').get(patient) !== undefined || this.hasAnyVersion('Patient', patient);
  }

  /** Stored → anchored delay (ms) of every anchored commitment with seq ≥ `fromSeq` (benchmarks, status). */
  anchoringLags(fromSeq = 1): number[] {
    return this.db.prepare<[number], { lag: number }>(
      "SELECT b.anchored_at - c.created_at AS lag FROM commitments c JOIN batches b ON b.id = c.batch WHERE c.seq >= ? AND b.status = 'anchored'")
      .all(fromSeq).map((r) => r.lag);
  }

  /**
   * Commitments recorded after `seq`, oldest first, at most `limit` (keys only): a server finds the
   * versions other processes sharing the data directory wrote (subscriptions notify them).
   */
  after(seq: number, limit: number): { seq: number; type: string; id: string; version: string }[] {
    this.checkOpen();
    return this.db.prepare<[number, number], { seq: number; type: string; id: string; version: string }>(
      'SELECT seq, type, id, version FROM commitments WHERE seq > ? ORDER BY seq LIMIT ?').all(seq, limit);
  }

  /** Highest seq recorded so far (0 when empty). */
  lastSeq(): number {
    return this.db.prepare<[], { s: number | null }>('SELECT MAX(seq) AS s FROM commitments').get()!.s ?? 0;
  }

  /**
   * The anchoring lease: processes sharing this store (replicas on one data directory) must not
   * all anchor it — they would send the same batches twice and race for the authority's nonces.
   * Takes or renews the lease for `owner` until `now + ttlMs`, unless another owner holds one that
   * has not expired and is not `gone` (e.g. a process known to have died); answers whether `owner` holds it. One immediate transaction, so two processes
   * asking at once cannot both win. Other leases are taken the same way under another `name` (a
   * patient's CGM import turn, src/cgm/turns.ts).
   */
  holdLease(owner: string, ttlMs: number, now = Date.now(), gone: (holder: string) => boolean = () => false, name = 'anchorer'): boolean {
    this.checkOpen();
    return this.db.transaction(() => {
      const [holder, until] = (this.getMeta(name) ?? '').split(' ');
      if (holder && holder !== owner && Number(until) > now && !gone(holder)) return false;
      this.setMeta(name, `${owner} ${now + ttlMs}`);
      return true;
    }).immediate();
  }

  /**
   * Gives the lease up at once (on a clean stop), so another process need not wait for it to expire.
   * `name`: another lease held the same way (holdLease), such as a patient's CGM import turn.
   */
  releaseLease(owner: string, name = 'anchorer'): void {
    if (this.closed) return;
    this.db.prepare('DELETE FROM meta WHERE k = ? AND v LIKE ? || \' %\'').run(name, owner);
  }

  /** Who holds the anchoring lease and until when (epoch ms), if anyone. */
  leaseHolder(): { owner: string; until: number } | undefined {
    const [owner, until] = (this.getMeta('anchorer') ?? '').split(' ');
    return owner ? { owner, until: Number(until) } : undefined;
  }

  /** Records writes about to be sent upstream (WriteIntent); answers their seqs, for removeIntents. */
  addIntents(items: readonly Omit<WriteIntent, 'seq' | 'createdAt'>[], now = Date.now()): number[] {
    this.checkOpen();
    const insert = this.db.prepare('INSERT INTO write_intents (type, id, digest, dropped, created_at) VALUES (?, ?, ?, ?, ?)');
    return this.db.transaction(() => items.map((i) => Number(insert.run(i.type, i.id, i.digest, JSON.stringify(i.dropped), now).lastInsertRowid)))();
  }

  removeIntents(seqs: readonly number[]): void {
    this.checkOpen();
    const remove = this.db.prepare('DELETE FROM write_intents WHERE seq = ?');
    this.db.transaction(() => seqs.forEach((seq) => remove.run(seq)))();
  }

  /** Every write intent outstanding, oldest first. */
  intents(): WriteIntent[] {
    this.checkOpen();
    return this.db.prepare<[], { seq: number; type: string; id: string | null; digest: Buffer | null; dropped: string; created_at: number }>(
      'SELECT * FROM write_intents ORDER BY seq').all()
      .map((r) => ({ seq: r.seq, type: r.type, id: r.id, digest: r.digest, dropped: JSON.parse(r.dropped) as string[], createdAt: r.created_at }));
  }

  /** Drops the intents recorded before `time` (writes that can no longer be in flight); answers how many. */
  removeIntentsBefore(time: number): number {
    this.checkOpen();
    return this.db.prepare('DELETE FROM write_intents WHERE created_at < ?').run(time).changes;
  }

  getMeta(k: string): string | undefined {
    return this.db.prepare<[string], { v: string }>('SELECT v FROM meta WHERE k = ?').get(k)?.v;
  }

  setMeta(k: string, v: string): void {
    this.db.prepare('INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v').run(k, v);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.db.close();
  }

  private checkOpen(): void {
    if (this.closed) throw new Error('commitment store is closed');
  }
}

/**
 * Where leaf `offset` (its seq minus the batch's first) sits in the batch's tree: stored positions
 * (4 bytes each, little-endian) for trees whose leaves are ordered by patient, else its offset.
 */
export function positionOf(positions: Buffer | null, offset: number): number {
  return positions ? positions.readUInt32LE(4 * offset) : offset;
}

/** The stored positions of a tree order (`order[p]`: the offset of the leaf at position p); null when it is seq order. */
function positionsOf(order: readonly number[], size: number): Buffer | null {
  if (order.length !== size) throw new Error(`a batch of ${size} needs an order of ${size} leaves, not ${order.length}`);
  const positions = Buffer.alloc(4 * size, 0xff);
  let identity = true;
  order.forEach((offset, p) => {
    if (!Number.isInteger(offset) || offset < 0 || offset >= size || positions.readUInt32LE(4 * offset) !== 0xffffffff) {
      throw new Error('a batch order must list every leaf once');
    }
    positions.writeUInt32LE(p, 4 * offset);
    if (offset !== p) identity = false;
  });
  return identity ? null : positions;
}

/**
 * The tree order of a batch's leaves that puts each patient's versions next to each other (by
 * patient, then seq): a patient's readings streamed in among other patients' then form a run of
 * neighbouring leaves, proven with about one hash each plus two per level (rootOfLeaves) instead
 * of a path of their own each.
 */
export function patientOrder(rows: readonly { patient: string | null }[]): number[] {
  return rows.map((_, k) => k).sort((a, b) => {
    const pa = rows[a]!.patient ?? '';
    const pb = rows[b]!.patient ?? '';
    return pa < pb ? -1 : pa > pb ? 1 : a - b;
  });
}

/**
 * Id ranges to scan for the keys at `at`, one per group (`groupOf`: undefined leaves a key out),
 * for groups of at least RANGE_SCAN_MIN keys: the group's smallest to largest id, the scan stopped
 * a few rows past twice the number wanted, with the caller's index of each `id/version` (a FHIR id
 * holds no `/`).
 */
function idRanges<K extends { type: string; id: string; version: string }>(keys: readonly K[], at: readonly number[],
  groupOf: (key: K) => string | undefined): { type: string; lo: string; hi: string; limit: number; wanted: Map<string, number> }[] {
  const groups = new Map<string, number[]>();
  for (const i of at) {
    const group = groupOf(keys[i]!);
    if (group === undefined) continue;
    const list = groups.get(group);
    if (list) list.push(i);
    else groups.set(group, [i]);
  }
  const ranges = [];
  for (const members of groups.values()) {
    if (members.length < RANGE_SCAN_MIN) continue;
    let lo = keys[members[0]!]!.id;
    let hi = lo;
    const wanted = new Map<string, number>();
    for (const i of members) {
      const k = keys[i]!;
      if (k.id < lo) lo = k.id;
      if (k.id > hi) hi = k.id;
      wanted.set(`${k.id}/${k.version}`, i);
    }
    ranges.push({ type: keys[members[0]!]!.type, lo, hi, limit: members.length * 2 + 16, wanted });
  }
  return ranges;
}

function toRecord(r: Row): CommitmentRecord {
  return {
    seq: r.seq, type: r.type, id: r.id, version: r.version, patient: r.patient, salt: r.salt, leaf: r.leaf,
    createdAt: r.created_at, batch: r.batch, proof: r.proof,
  };
}

function toBatch(r: BatchRow): BatchRecord {
  return {
    id: r.id, firstSeq: r.first_seq, lastSeq: r.last_seq, root: r.root, status: r.status, chainBatchId: r.chain_batch,
    block: r.block, tx: r.tx, preparedAt: r.prepared_at, anchoredAt: r.anchored_at,
  };
}
