/**
 * Integrity on every read. For each resource leaving /fhir the guard recomputes its commitment
 * (SHA-256 of the stored salt ‖ the canonical text — ready bytes from the embedded adapter, a
 * canonicalisation for upstream resources) and compares it with the recorded leaf; for anchored
 * versions it checks the Merkle proof against the root the contract holds for that batch.
 *
 * - match, anchored: served as is (the leaf is then cached, so the next read is one SHA-256);
 * - match, not anchored yet: served with meta.tag urn:glucoguard:integrity#pending;
 * - no commitment (data that predates the ledger, e.g. on an upstream server): served with
 *   #unverified, or withheld when the mode is `strict` (GLUCOGUARD_INTEGRITY=strict);
 * - no commitment for this version, but for earlier ones (written through GlucoGuard, then changed
 *   directly on the upstream — an EHR's own write, or not): served with #changed-outside and a
 *   logged warning, or withheld in `strict` mode, never labelled like legacy data;
 * - mismatch (content, proof or root), or a stand-in (stand-ins.ts: bytes that do not authenticate,
 *   a committed version missing, a rolled-back current version): withheld, an OperationOutcome
 *   issue says the integrity check failed and why, and a Security Alert AuditEvent is written —
 *   once per version per hour (audit/alert-throttle.ts), however often it is read.
 *
 * Roots are read from the chain once per batch and cached: PoA blocks here (Clique with one
 * signer, Besu QBFT) are final when sealed. A root that cannot be read (node down) makes the
 * version "unverified" for that read, not a failure.
 */
import type { AuditEvent, Coding, OperationOutcomeIssue, Resource } from '@medplum/fhirtypes';
import type { Contract } from 'ethers';
import type { Logger } from 'pino';
import type { AccessContext } from '../fhir/access.js';
import type { GuardOptions, GuardResult, OutboundGuard } from '../fhir/policy.js';
import { patientHint, patientIdsOf } from '../fhir/compartment.js';
import { versionIdOf } from '../repository/deferred.js';
import { canonicalTextOf, isImmutable, isTamperedStandIn } from '../repository/port.js';
import { canonicalResourceText, commitmentOf } from './canonical.js';
import { buildMerkleTree, hashPair, nodeCount, rootOfLeaves } from './merkle.js';
import { ProvenIndex } from './proven-index.js';
import { positionOf, type CommitmentStore, type ProofRecord } from './store.js';
import { glucoguardSource } from '../audit/balp.js';
import { AlertThrottle } from '../audit/alert-throttle.js';
import { causeOf, type StandInCause } from './stand-ins.js';

export const INTEGRITY_TAG_SYSTEM = 'urn:glucoguard:integrity';
export type IntegrityMode = 'lenient' | 'strict';

/** Outcome of checking one resource version. */
export type CheckResult =
  | { status: 'verified' }
  | { status: 'pending' }
  | { status: 'unverified'; reason: 'no-commitment' | 'changed-outside' | 'root-unavailable' }
  | { status: 'failed'; reason: FailureReason };

/**
 * Why a version failed: content, proof or root against its commitment; or, for a stand-in
 * (stand-ins.ts), stored bytes that do not authenticate, a committed version missing from the
 * store, a current version older than the newest committed one.
 */
export type FailureReason = 'content' | 'proof' | 'root' | StandInCause;

/** What the issue and the Security Alert say of each reason (no content, no salt). */
const FAILURE_TEXT: Record<FailureReason, string> = {
  content: 'content does not match its anchored commitment',
  proof: 'its Merkle proof does not lead to the anchored root',
  root: 'the chain holds another root for its batch',
  unauthenticated: 'stored data does not authenticate (altered, swapped or corrupted on disk)',
  missing: 'a committed version is missing from the repository (removed)',
  'rolled-back': 'served as current while a newer version is committed (the store was rolled back)',
};

const VERIFIED_CACHE_MAX = 200_000;
/** Verified canonical texts kept for the equality fast path, in UTF-16 code units (~64 MB at most). */
const VERIFIED_TEXT_BUDGET = 32 * 1024 * 1024;
const VERIFIED: CheckResult = Object.freeze({ status: 'verified' });
const CHANGED_OUTSIDE: CheckResult = Object.freeze({ status: 'unverified', reason: 'changed-outside' });
/** Versions changed outside GlucoGuard already warned about (each is logged once, not on every read). */
const WARNED_MAX = 10_000;
/** Most blocks one eth_getLogs spans when roots are read from events (see rootsFromEvents). */
const LOG_WINDOW = 5_000;

/** A version to prove: where it is in the caller's list, its key, and its canonical text when the adapter supplied it. */
interface Missing {
  at: number;
  type: string;
  id: string;
  version: string;
  /** The patient the version is probably recorded under (see patientHint). */
  patient: string | undefined;
  text: string | undefined;
}

// The patient a version's commitment is most likely recorded under: patientHint (compartment.ts).
// The commitment store records the first patient of the compartment, which for these is the same;
// when it is not, the hint only costs the store a scan that finds nothing (CommitmentStore.treeGroups).

interface Verified {
  type: string;
  version: string;
  salt: Buffer;
  leaf: Buffer;
  /** The exact canonical text that was hashed and proven, when the adapter supplied it. */
  text?: string;
}

/** Checks resource versions against their commitments and the anchored roots. */
export class IntegrityChecker {
  /**
   * id → the version of that id last proven against an on-chain root, with its type (insertion order =
   * eviction order). Keyed by the id alone, which the resource already carries as a string: building
   * a type/id/version key per entry cost more than the rest of a warm check.
   */
  private readonly verified = new Map<string, Verified>();
  /**
   * Immutable resource objects (the embedded repository's decoded cache hands out the same frozen
   * object only while its row is known unchanged: same ciphertext, or no other connection has
   * committed to the store since) whose exact
   * canonical text was found equal to a proven one: checking such an object again is a lookup.
   */
  private provenObjects = new WeakSet<object>();
  private verifiedTextSize = 0;
  /** local batch id → on-chain root (checked equal to the local one) or false (chain disagrees). */
  private readonly roots = new Map<number, Buffer | false>();
  /** Root reads in flight, so concurrent checks of one batch share one eth_call. */
  private readonly rootReads = new Map<number, Promise<Buffer | false | null | undefined>>();
  /** Versions of the newest anchored batches proven at start-up (proveAhead). */
  private proven: ProvenIndex | undefined;

  constructor(private readonly store: CommitmentStore, private readonly anchor: Contract) {}

  /** Checks one version (see checkMany). */
  async check(resource: Resource): Promise<CheckResult> {
    return (await this.checkMany([resource]))[0]!;
  }

  /**
   * Checks many versions at once, answering in the same order. A version whose canonical text is
   * identical to the text already hashed and proven costs one string comparison; any other proven
   * version one SHA-256. The rest are grouped by batch (one root per batch, from the cache or one
   * eth_call) and proven a batch at a time through the batch's stored tree (checkByTrees); what that
   * does not settle is checked version by version, each proof walked up only until it meets a node
   * another proof of the same batch has already led to the root (checkByProofs). Either way a day
   * of readings from one batch costs about twice as many hashes as it has entries.
   */
  async checkMany(resources: readonly Resource[], options: { remember?: boolean } = {}): Promise<CheckResult[]> {
    const results = await this.checkManyCommitted(resources, options);
    // a version without a commitment of a resource that has committed versions was made outside GlucoGuard
    results.forEach((r, at) => {
      const resource = resources[at]!;
      if (r.status === 'unverified' && r.reason === 'no-commitment' && resource.id && this.store.hasAnyVersion(resource.resourceType, resource.id)) {
        results[at] = CHANGED_OUTSIDE;
      }
    });
    return results;
  }

  private async checkManyCommitted(resources: readonly Resource[], options: { remember?: boolean }): Promise<CheckResult[]> {
    const keep = options.remember !== false;
    const results: CheckResult[] = new Array(resources.length);
    /** Versions not proven yet (verified versions are keyed by id). */
    const missing: Missing[] = [];
    let slot: number;
    resources.forEach((resource, at) => {
      if (isTamperedStandIn(resource)) {
        results[at] = { status: 'failed', reason: causeOf(resource) };
        return;
      }
      if (this.provenObjects.has(resource)) {
        results[at] = VERIFIED;
        return;
      }
      const version = versionIdOf(resource);
      // each member read once: on a deferred resource every read is a Proxy trap
      const { id: key, resourceType: type } = resource;
      if (!key || !version) {
        results[at] = { status: 'unverified', reason: 'no-commitment' };
        return;
      }
      const hit = this.verified.get(key);
      const cached = hit && hit.version === version && hit.type === type ? hit : undefined;
      const ready = canonicalTextOf(resource);
      if (cached?.text !== undefined && ready === cached.text) {
        results[at] = VERIFIED;
        if (keep && isImmutable(resource)) this.provenObjects.add(resource);
      } else if (cached) {
        if (!commitmentOf(cached.salt, ready ?? canonicalResourceText(resource)).equals(cached.leaf)) {
          results[at] = { status: 'failed', reason: 'content' };
        } else {
          if (ready !== undefined && keep) {
            // proven before, hashed now: keep the text so the next read is a comparison
            this.remember(key, { ...cached, text: ready });
          }
          results[at] = VERIFIED;
        }
      } else if (this.proven && (slot = this.proven.slotOf(key)) >= 0 && this.proven.proves(slot, type, version, ready ?? canonicalResourceText(resource))) {
        results[at] = VERIFIED;
        if (keep && isImmutable(resource)) this.provenObjects.add(resource);
      } else {
        missing.push({ at, type, id: key, version, patient: patientHint(resource), text: ready });
      }
    });
    if (!missing.length) return results;
    const rest = await this.checkByTrees(missing, resources, results, keep);
    if (rest.length) await this.checkByProofs(rest, resources, results, keep);
    return results;
  }

  /**
   * First way for versions not proven yet: those in batches with a stored tree are proven a batch at
   * a time — their leaves recomputed (salt ‖ text), hashed up through the tree to the root, which
   * must be the anchored one. Only their positions are read per version (from the store's key
   * index); salts and sibling nodes come with the batch. Answers the versions this did not settle:
   * no tree, root not readable or not anchored yet, or a root that did not match (then each version
   * of the batch is checked on its own, to find which one failed).
   */
  private async checkByTrees(missing: Missing[], resources: readonly Resource[], results: CheckResult[], keep: boolean): Promise<Missing[]> {
    const { groups, rest } = this.store.treeGroups(missing, { keep });
    const unsettled = rest.map((i) => missing[i]!);
    const roots = await Promise.all(groups.map((g) => this.rootOf(g.batch)));
    groups.forEach((group, g) => {
      const root = roots[g];
      const members = group.members.map(({ at, index }) => ({ m: missing[at]!, index }));
      if (!(root instanceof Buffer) || group.salts.length !== 32 * group.size) {
        for (const { m } of members) unsettled.push(m);
        return;
      }
      members.sort((a, b) => a.index - b.index);
      const known: { index: number; leaf: Buffer; salt: Buffer }[] = [];
      let consistent = true;
      for (const { m, index } of members) {
        const salt = group.salts.subarray(32 * index, 32 * index + 32);
        const leaf = commitmentOf(salt, m.text ?? canonicalResourceText(resources[m.at]!));
        const last = known[known.length - 1];
        if (last?.index === index) {
          // one version twice in the list: both copies must be the same text
          if (!last.leaf.equals(leaf)) consistent = false;
          continue;
        }
        known.push({ index, leaf, salt });
      }
      const proven = consistent && rootOfLeaves(group.size, group.nodes, known)?.equals(root) === true;
      if (!proven) {
        for (const { m } of members) unsettled.push(m);
        return;
      }
      const byIndex = new Map(known.map((k) => [k.index, k]));
      for (const { m, index } of members) {
        const { leaf, salt } = byIndex.get(index)!;
        if (keep) this.remember(m.id, { type: m.type, version: m.version, salt: Buffer.from(salt), leaf, text: m.text });
        results[m.at] = VERIFIED;
      }
    });
    return unsettled;
  }

  /** Second way: each version through its own row (salt, leaf, proof), as batches without a stored tree are. */
  private async checkByProofs(missing: Missing[], resources: readonly Resource[], results: CheckResult[], keep: boolean): Promise<void> {
    const records = this.store.proofsOf(missing);
    const byBatch = new Map<number, { m: (typeof missing)[number]; record: ProofRecord }[]>();
    missing.forEach((m, i) => {
      const record = records[i];
      if (!record) {
        results[m.at] = { status: 'unverified', reason: 'no-commitment' };
      } else if (!commitmentOf(record.salt, m.text ?? canonicalResourceText(resources[m.at]!)).equals(record.leaf)) {
        results[m.at] = { status: 'failed', reason: 'content' };
      } else if (record.batch === null || !record.proof) {
        results[m.at] = { status: 'pending' };
      } else {
        const group = byBatch.get(record.batch) ?? [];
        group.push({ m, record });
        byBatch.set(record.batch, group);
      }
    });
    const batchIds = [...byBatch.keys()];
    const roots = await Promise.all(batchIds.map((b) => this.rootOf(b)));
    batchIds.forEach((batchId, i) => {
      const root = roots[i];
      const group = byBatch.get(batchId)!;
      const proven = new Set<string>();
      for (const { m, record } of group) {
        if (root === undefined) results[m.at] = { status: 'pending' };
        else if (root === null) results[m.at] = { status: 'unverified', reason: 'root-unavailable' };
        else if (root === false) results[m.at] = { status: 'failed', reason: 'root' };
        else if (!provesTo(record.leaf, record.proof!, root, proven)) results[m.at] = { status: 'failed', reason: 'proof' };
        else {
          if (keep) this.remember(m.id, { type: m.type, version: m.version, salt: record.salt, leaf: record.leaf, text: m.text });
          results[m.at] = VERIFIED;
        }
      }
    });
  }

  /**
   * Reads the roots of anchored batches not cached yet (the newest `limit`): called in the background
   * at start-up so the first reads after a restart do not each wait for an eth_call. The roots come
   * first from the contract's BatchAnchored events, a few `eth_getLogs` over the blocks the batches
   * were anchored in (`rootsFromEvents`; for a single batch one `getBatch` costs the same); a batch they do not settle is read by `getBatch`, 200
   * requests at a time. Stops between two requests once `signal` is aborted (the ledger closing).
   * Answers how many roots were read.
   */
  async warmRoots(limit = 20_000, signal?: AbortSignal): Promise<number> {
    const all = this.store.anchoredBatches(0, Number.MAX_SAFE_INTEGER);
    const wanted = all.slice(-limit).filter((b) => !this.roots.has(b.id));
    const fromEvents = wanted.length > 1 ? await this.rootsFromEvents(wanted, signal) : 0;
    const rest = wanted.filter((b) => !this.roots.has(b.id));
    let read = fromEvents;
    for (let i = 0; i < rest.length && !signal?.aborted; i += 200) {
      const slice = rest.slice(i, i + 200);
      await Promise.all(slice.map((b) => this.rootOf(b.id)));
      read += slice.length;
    }
    return read;
  }

  /** How many versions are proven ahead now (proveAhead). */
  provenAhead(): number {
    return this.proven?.size ?? 0;
  }

  /**
   * Proves the stored trees of the newest anchored batches, up to `versions` versions, against
   * their on-chain roots now, each whole (about one hash per version), and keeps what a first read
   * of their versions then needs (ProvenIndex): called in the background at start-up, after
   * warmRoots. A batch whose tree or versions are not all there, or do not lead to its root, is
   * left to the read's own check. Yields between batches; stops once `signal` is aborted,
   * clearCache runs or a root cannot be read (the chain does not answer: not one eth_call per
   * batch against it). Answers how many versions it kept.
   */
  async proveAhead(versions: number, signal?: AbortSignal): Promise<number> {
    if (versions <= 0) return 0;
    const spans = this.store.newestAnchoredSpans(versions);
    if (!spans.length) return 0;
    const index = new ProvenIndex(spans.reduce((n, s) => n + s.lastSeq - s.firstSeq + 1, 0));
    this.proven = index;
    const stopped = (): boolean => signal?.aborted === true || this.proven !== index;
    for (const span of spans) {
      if (stopped()) break;
      const root = await this.rootOf(span.id);
      if (root === null) break; // the chain does not answer: the rest are proven on their first reads
      if (!(root instanceof Buffer) || stopped()) continue;
      const contents = this.store.batchContents(span);
      const size = span.lastSeq - span.firstSeq + 1;
      if (!contents || contents.salts.length !== 32 * size || contents.nodes.length !== 32 * nodeCount(size) || contents.keys.length !== size
        || (contents.positions !== null && contents.positions.length !== 4 * size)) continue;
      const leaves = contents.nodes.subarray(0, 32 * size);
      if (!buildMerkleTree(Array.from({ length: size }, (_, p) => leaves.subarray(32 * p, 32 * p + 32))).root.equals(root)) continue;
      const { keys, positions } = contents;
      index.add(contents.salts, leaves, newestFirst(keys, positions));
      await new Promise((resolve) => setImmediate(resolve));
    }
    return index.size;
  }

  /**
   * Roots of `batches` from the contract's BatchAnchored events. The contract never changes a batch
   * once anchored, so the root its event carries is the root `getBatch` answers; one eth_getLogs
   * answers many batches where `getBatch` is one call (one EVM run on the node) per batch: 1,050
   * calls for a store of 1,000,000 readings. Only roots equal to the local ones are taken from here;
   * anything else (another root, no event found, a node refusing the range) is left to `getBatch`,
   * which is authoritative and records a mismatch. Block windows are at most LOG_WINDOW blocks
   * (Besu's default `--rpc-max-logs-range` is 5,000) and only span blocks that hold wanted batches.
   */
  private async rootsFromEvents(batches: { id: number; chainBatchId: number; root: Buffer; block: number | null }[], signal?: AbortSignal): Promise<number> {
    const byChainId = new Map(batches.map((b) => [b.chainBatchId, b]));
    const blocks = [...new Set(batches.flatMap((b) => (b.block === null ? [] : [b.block])))].sort((a, b) => a - b);
    let settled = 0;
    for (let i = 0; i < blocks.length && !signal?.aborted;) {
      const from = blocks[i]!;
      while (i < blocks.length && blocks[i]! < from + LOG_WINDOW) i++;
      let events: Awaited<ReturnType<Contract['queryFilter']>>;
      try {
        events = await this.anchor.queryFilter(this.anchor.filters.BatchAnchored!(), from, blocks[i - 1]!);
      } catch {
        return settled; // the rest are read one by one
      }
      for (const event of events) {
        const args = (event as { args?: { batchId?: bigint; merkleRoot?: string } }).args;
        if (args?.batchId === undefined || typeof args.merkleRoot !== 'string') continue;
        const batch = byChainId.get(Number(args.batchId));
        if (!batch || this.roots.has(batch.id)) continue;
        const root = Buffer.from(args.merkleRoot.slice(2), 'hex');
        if (!root.equals(batch.root)) continue;
        this.roots.set(batch.id, root);
        settled++;
      }
    }
    return settled;
  }

  private remember(key: string, entry: Verified): void {
    this.forget(key);
    const size = entry.text?.length ?? 0;
    if (this.verified.size >= VERIFIED_CACHE_MAX || this.verifiedTextSize + size > VERIFIED_TEXT_BUDGET) this.evict(size);
    this.verified.set(key, entry);
    this.verifiedTextSize += size;
  }

  /**
   * Drops the oldest sixteenth (at least enough to fit `incoming` text) in one pass: a Map walked
   * from its start skips the slots of earlier deletions, so evicting one entry per insert would walk
   * them again every time.
   */
  private evict(incoming: number): void {
    let drop = Math.max(1, this.verified.size >> 4);
    for (const [oldest, value] of this.verified) {
      if (drop <= 0 && this.verifiedTextSize + incoming <= VERIFIED_TEXT_BUDGET) break;
      this.verified.delete(oldest);
      this.verifiedTextSize -= value.text?.length ?? 0;
      drop--;
    }
  }

  private forget(key: string): void {
    const entry = this.verified.get(key);
    if (!entry) return;
    this.verified.delete(key);
    this.verifiedTextSize -= entry.text?.length ?? 0;
  }

  /**
   * Forgets verified versions and those proven ahead, with their salts (an erasure; benchmarks measure
   * the cold path with it); roots stay, they are final.
   */
  clearCache(): void {
    this.proven = undefined;
    this.verified.clear();
    this.provenObjects = new WeakSet();
    this.verifiedTextSize = 0;
  }

  /**
   * Reads an anchored batch's root back from the chain now, in the background, so that the first
   * read of its versions does not wait for the eth_call (~4 ms on the embedded node; what a
   * server that has just anchored a bulk load would otherwise pay on nearly every first read).
   */
  readRootAhead(batchId: number): void {
    this.rootOf(batchId).catch(() => undefined); // on failure the first read asks again
  }

  /** undefined: batch not anchored yet; null: chain unreachable; false: chain holds another root. */
  private rootOf(batchId: number): Promise<Buffer | false | null | undefined> {
    const known = this.roots.get(batchId);
    if (known !== undefined) return Promise.resolve(known);
    let read = this.rootReads.get(batchId);
    if (!read) {
      read = this.readRoot(batchId).finally(() => this.rootReads.delete(batchId));
      this.rootReads.set(batchId, read);
    }
    return read;
  }

  private async readRoot(batchId: number): Promise<Buffer | false | null | undefined> {
    const batch = this.store.batch(batchId);
    if (!batch || batch.status !== 'anchored' || batch.chainBatchId === null) return undefined;
    let onChain: Buffer;
    try {
      const b = await this.anchor.getBatch(batch.chainBatchId);
      onChain = Buffer.from(String(b.merkleRoot).slice(2), 'hex');
    } catch (err) {
      const revert = (err as { revert?: { name?: string } }).revert;
      if (revert?.name === 'ResourceAnchorUnknownBatch') {
        this.roots.set(batchId, false);
        return false;
      }
      return null;
    }
    const value = onChain.equals(batch.root) ? onChain : false;
    this.roots.set(batchId, value);
    return value;
  }
}

/** A batch's version keys (seq order) newest first, each with its leaf's position in the tree. */
function* newestFirst(keys: readonly [string, string, string][], positions: Buffer | null): Generator<{ type: string; id: string; version: string; position: number }> {
  for (let offset = keys.length - 1; offset >= 0; offset--) {
    const [type, id, version] = keys[offset]!;
    yield { type, id, version, position: positionOf(positions, offset) };
  }
}

/**
 * True when `proof` leads from `leaf` to `root`. `proven` holds nodes (as latin1 strings) already
 * shown to lead to the same root: the walk stops at the first of them, and on success every node of
 * this path joins them. Sound because an inner node is a hash over 0x01 ‖ two children (never a
 * leaf), so meeting a proven node means the rest of the path is the one already checked.
 */
function provesTo(leaf: Buffer, proof: Buffer, root: Buffer, proven: Set<string>): boolean {
  if (proof.length % 32 !== 0) return false;
  const path: string[] = [];
  let node = leaf;
  for (let o = 0; ; o += 32) {
    const id = node.toString('latin1');
    if (proven.has(id)) break;
    path.push(id);
    if (o >= proof.length) {
      if (!node.equals(root)) return false;
      break;
    }
    node = hashPair(node, proof.subarray(o, o + 32));
  }
  for (const id of path) proven.add(id);
  return true;
}

export interface IntegrityGuardOptions {
  checker: IntegrityChecker;
  mode?: IntegrityMode;
  /** Writes the AuditEvent of a failed check (through the repository). */
  audit: (event: AuditEvent) => Promise<unknown>;
  logger?: Logger;
  /** Alerts already raised (default: one per version per hour, audit/alert-throttle.ts). */
  alerts?: AlertThrottle;
}

/** The OutboundGuard the FHIR router runs on everything it returns (see src/fhir/router.ts `guard`). */
export class IntegrityGuard implements OutboundGuard {
  mode: IntegrityMode;
  private readonly alerts: AlertThrottle;

  constructor(private readonly options: IntegrityGuardOptions) {
    this.mode = options.mode ?? 'lenient';
    this.alerts = options.alerts ?? new AlertThrottle();
  }

  async guard(access: AccessContext, resources: Resource[], options?: GuardOptions): Promise<GuardResult> {
    const results = await this.options.checker.checkMany(resources, { remember: !options?.oneOff });
    // the common case, every entry proven: the answer is the input
    let proven = 0;
    while (proven < results.length && results[proven] === VERIFIED) proven++;
    if (proven === resources.length) return { allowed: resources.slice(), issues: [] };
    const allowed: Resource[] = resources.slice(0, proven);
    const issues: OperationOutcomeIssue[] = [];
    for (let i = proven; i < resources.length; i++) {
      const resource = resources[i]!;
      const result = results[i]!;
      switch (result.status) {
        case 'verified':
          allowed.push(resource);
          break;
        case 'pending':
          allowed.push(withTag(resource, { system: INTEGRITY_TAG_SYSTEM, code: 'pending', display: 'not yet anchored on the ledger' }));
          break;
        case 'unverified':
          if (result.reason === 'changed-outside') {
            this.warnChangedOutside(resource);
            if (this.mode === 'strict') {
              issues.push(issue('warning', resource, 'was changed outside GlucoGuard (no commitment for this version, earlier versions have one); withheld in strict mode', 'changed-outside'));
            } else {
              allowed.push(withTag(resource, { system: INTEGRITY_TAG_SYSTEM, code: 'changed-outside', display: 'changed outside GlucoGuard (earlier versions are committed, this one is not)' }));
            }
          } else if (this.mode === 'strict') {
            issues.push(issue('warning', resource, 'could not be verified (no anchored commitment); withheld in strict mode'));
          } else {
            allowed.push(withTag(resource, { system: INTEGRITY_TAG_SYSTEM, code: 'unverified', display: 'no anchored commitment to check against' }));
          }
          break;
        case 'failed':
          issues.push(issue('error', resource, `failed the integrity check (${FAILURE_TEXT[result.reason]}); withheld`));
          await this.recordFailure(access, resource, result.reason);
          break;
      }
    }
    return { allowed, issues };
  }

  private readonly warned = new Set<string>();

  /** One warning per version changed outside GlucoGuard (ids only, no content). */
  private warnChangedOutside(resource: Resource): void {
    const ref = `${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}`;
    if (this.warned.has(ref)) return;
    if (this.warned.size >= WARNED_MAX) this.warned.clear();
    this.warned.add(ref);
    this.options.logger?.warn({ resource: ref }, 'a version without a commitment of a resource whose earlier versions GlucoGuard committed: changed outside GlucoGuard (on an upstream: its own write, or not; on the embedded store: put there)');
  }

  /**
   * Logs and alerts once per version and reason per window (AlertThrottle): every read of it is
   * still refused with its issue, but a version read over and over does not bury the access log;
   * each request is in the access log all the same (its own BALP AuditEvent).
   */
  private async recordFailure(access: AccessContext, resource: Resource, reason: FailureReason): Promise<void> {
    const ref = `${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}`;
    // a new finding about the same version (altered, then removed) is alerted again
    const finding = `${ref} ${reason}`;
    if (!this.alerts.take(finding)) {
      this.options.logger?.debug({ resource: ref, reason }, 'integrity check failed again; resource withheld (alerted already)');
      return;
    }
    this.options.logger?.error({ resource: ref, reason }, 'integrity check failed; resource withheld');
    try {
      await this.options.audit(integrityAuditEvent(access, resource, reason));
    } catch (err) {
      this.alerts.release(finding);
      this.options.logger?.error({ err: (err as Error).message }, 'could not write the integrity AuditEvent');
    }
  }
}

function withTag<T extends Resource>(resource: T, tag: Coding): T {
  return { ...resource, meta: { ...resource.meta, tag: [...(resource.meta?.tag ?? []), tag] } };
}

function issue(severity: 'error' | 'warning', resource: Resource, text: string, code?: string): OperationOutcomeIssue {
  return {
    severity,
    code: severity === 'error' ? 'processing' : 'security',
    details: { coding: [{ system: INTEGRITY_TAG_SYSTEM, code: code ?? (severity === 'error' ? 'integrity-failed' : 'unverified') }] },
    diagnostics: `Integrity check: ${resource.resourceType}/${resource.id} version ${resource.meta?.versionId ?? '?'} ${text}`,
  };
}

/** A Security Alert AuditEvent (DICOM 110113) of one of the ledger's findings (subtype in INTEGRITY_TAG_SYSTEM). */
function securityAlert(subtype: Coding, action: AuditEvent['action'], outcomeDesc: string, agent: AuditEvent['agent'][number]): AuditEvent {
  return {
    resourceType: 'AuditEvent',
    type: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110113', display: 'Security Alert' },
    subtype: [{ system: INTEGRITY_TAG_SYSTEM, ...subtype }],
    action,
    recorded: new Date().toISOString(),
    outcome: '8',
    outcomeDesc,
    agent: [agent],
    source: glucoguardSource(),
  };
}

/**
 * The Security Alert for commitments removed from the commitment store, found by the server itself
 * (src/ledger/index.ts watchCompleteness): no version or patient is named, since which ones are
 * gone is for `glucoguard verify` to work out.
 */
export function completenessAuditEvent(description: string): AuditEvent {
  return securityAlert({ code: 'commitments-missing', display: 'Commitments missing from the commitment store' }, 'E', description,
    { who: { display: 'GlucoGuard ledger check' }, requestor: false });
}

/** The Security Alert naming the version that failed; no resource content. */
export function integrityAuditEvent(access: AccessContext, resource: Resource, reason: string): AuditEvent {
  const patient = patientIdsOf(resource)[0];
  const who = access.fhirUser ? { reference: access.fhirUser } : { display: access.subject ?? access.clientId ?? (access.kind === 'open' ? 'unauthenticated (auth off)' : 'unknown') };
  return {
    ...securityAlert({ code: 'integrity-failed', display: 'Integrity check failed' }, 'R',
      `integrity check failed (${reason}): ${FAILURE_TEXT[reason as FailureReason] ?? 'stored content does not match its anchored commitment'}; withheld`,
      { who, requestor: true, ...(access.clientId ? { altId: access.clientId } : {}) }),
    entity: [
      {
        what: { reference: `${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}` },
        type: { system: 'http://terminology.hl7.org/CodeSystem/audit-entity-type', code: '2', display: 'System Object' },
      },
      ...(patient ? [{
        what: { reference: `Patient/${patient}` },
        type: { system: 'http://terminology.hl7.org/CodeSystem/audit-entity-type', code: '1', display: 'Person' },
      }] : []),
    ],
  };
}
