/**
 * What checking each recorded version cannot see: versions removed together with their commitments.
 * `glucoguard verify` walks the commitment store, so a row deleted from both the repository and
 * the store leaves nothing to check. It leaves gaps, though:
 *
 * - in the store: seqs are contiguous from 1 and rows are never deleted, and every batch records
 *   the seq range it covers (`CommitmentStore.gaps`): a batch with fewer rows than leaves, a seq
 *   range no batch covers (a batch removed), seqs missing from the queue;
 * - against the chain: ResourceAnchor keeps, per batch, its root, authority, leaf count and
 *   first/last sequence number, and per authority the next sequence number. Every anchored batch's
 *   record must be the local one (shifted by `seq_base`), and no batch of this authority may lie
 *   beyond the store's last one (a batch removed at the end, its seqs reused since).
 *
 * A missing leaf is named where the store still knows it: the batch's stored tree holds every
 * leaf and its salt at its position, so a version still in the repository whose commitment row
 * was removed is found by recomputing its commitment with the missing leaves' salts; one removed
 * from both is placed by its neighbours (written between two versions still recorded; in the
 * tree among the versions of one patient, leaves being ordered by patient).
 */
import type { Resource } from '@medplum/fhirtypes';
import type { Contract } from 'ethers';
import { isGlucoGuardError } from '../errors.js';
import { patientIdsOf } from '../fhir/compartment.js';
import { canonicalTextOf, TamperedVersionError, type Repository, type VersionKey } from '../repository/port.js';
import { canonicalResourceText, commitmentOf } from './canonical.js';
import { nodeCount } from './merkle.js';
import { positionOf, type BatchRecord, type CommitmentStore } from './store.js';

/** A leaf of a batch that has no commitment row. */
export interface MissingLeaf {
  seq: number;
  /** Its place in the batch's tree, when the tree is stored. */
  position?: number;
  /** The version whose commitment it is, found in the repository by its salt and leaf. */
  version?: string;
  /** The versions recorded just before and after it (seq order). */
  after?: string;
  before?: string;
  /** The patient the versions around it in the tree are recorded under (leaves are ordered by patient). */
  patient?: string;
}

export interface CompletenessReport {
  /** Batches with leaves that have no commitment row. */
  batches: { batch: BatchRecord; missing: MissingLeaf[] }[];
  /** Seq ranges below the last batch that no batch covers. */
  unbatched: { from: number; to: number }[];
  /** Seqs missing from the queue (after the last batch). */
  queued: number[];
  /** Where the chain's records and the store disagree. */
  chain: string[];
  /** Versions in the repository without a commitment, among committed ones of their type (`among`) or after them. */
  uncommitted: { ref: string; among: boolean }[];
  /** Whether versions without a commitment were looked for (the embedded repository lists version keys). */
  listed: boolean;
  /** When they were looked for among some types only (those an upstream adapter keeps in the embedded store, port.ts localPart). */
  listedTypes?: string[];
  /** Why the chain's records could not be compared (node unreachable), if they could not. */
  chainUnavailable?: string;
}

/** Most on-chain batches looked at past the store's last anchored one. */
const TAIL_BATCHES = 1000;
/** Most commitments recomputed to name missing leaves (versions without a commitment × missing leaves). */
const MATCH_BUDGET = 2_000_000;

/** Missing commitments in all (leaves, seq ranges, queued seqs): what the start-up log and `chain status` report. */
export function missingCount(gaps: { batches: { missing: unknown[] }[]; unbatched: { from: number; to: number }[]; queued: unknown[] }): number {
  return gaps.batches.reduce((n, b) => n + b.missing.length, 0) + gaps.unbatched.reduce((n, r) => n + r.to - r.from + 1, 0) + gaps.queued.length;
}

/** What the store's gaps are, in one line (no ids), or undefined when there are none. */
export function describeGaps(gaps: ReturnType<CommitmentStore['gaps']>): string | undefined {
  const parts: string[] = [];
  const leaves = gaps.batches.reduce((n, b) => n + b.missing.length, 0);
  if (leaves) parts.push(`${leaves} leaves of ${gaps.batches.length} batch${gaps.batches.length === 1 ? '' : 'es'} (${gaps.batches.map((b) => b.batch.id).slice(0, 10).join(', ')}${gaps.batches.length > 10 ? ', …' : ''}) have no commitment row`);
  for (const r of gaps.unbatched.slice(0, 10)) parts.push(`seqs ${r.from}–${r.to} have no batch (a batch removed)`);
  if (gaps.queued.length) parts.push(`${gaps.queued.length} queued commitments removed`);
  return parts.length ? parts.join('; ') : undefined;
}

/**
 * The store's gaps, each missing leaf named as far as the store and the repository allow, the
 * chain's records compared with the store's (when `anchor` is given), and the repository's
 * versions without a commitment (when it lists version keys; of `patient` only, when given).
 */
export async function checkCompleteness(deps: {
  store: CommitmentStore; repository: Repository; anchor?: Contract; authority?: string; patient?: string;
}): Promise<CompletenessReport> {
  const { store, repository } = deps;
  const gaps = store.gaps();
  const report: CompletenessReport = {
    batches: gaps.batches.map(({ batch, missing }) => ({ batch, missing: missing.map((seq) => ({ seq })) })),
    unbatched: gaps.unbatched, queued: gaps.queued, chain: [], uncommitted: [], listed: false,
  };
  const candidates = await uncommittedVersions(store, repository, report);
  for (const { batch, missing } of report.batches) placeLeaves(store, batch, missing, candidates);
  // a version whose commitment is a batch's missing leaf lost it: not a tail still to be recorded
  const named = new Set(report.batches.flatMap((b) => b.missing.flatMap((m) => (m.version ? [m.version] : []))));
  for (const u of report.uncommitted) if (named.has(u.ref)) u.among = true;
  if (deps.patient !== undefined) {
    const patient = deps.patient;
    report.uncommitted = report.uncommitted.filter((u) => candidates.get(u.ref)?.patients.includes(patient));
  }
  if (deps.anchor && deps.authority) {
    try {
      report.chain = await compareWithChain(store, deps.anchor, deps.authority);
    } catch (err) {
      // as for roots that cannot be read: not a finding, said apart
      const e = err as { code?: string; shortMessage?: string; message?: string };
      report.chainUnavailable = e.code ?? e.shortMessage ?? 'no answer';
    }
  }
  return report;
}

interface Candidate {
  resource: Resource;
  patients: string[];
}

/**
 * The repository's readable versions without a commitment (listed by `versionKeysSince`), marked
 * `among` when a committed version of the same type comes after it in the listing — not a crash's
 * tail that the next start records (AnchoredRepository.reconcile) — keyed by reference.
 */
async function uncommittedVersions(store: CommitmentStore, repository: Repository, report: CompletenessReport): Promise<Map<string, Candidate>> {
  const out = new Map<string, Candidate>();
  const part = repository.versionKeysSince ? undefined : repository.localPart;
  const lister = part ? part.repository : repository;
  const list = lister.versionKeysSince?.bind(lister);
  if (!list) return out;
  report.listed = true;
  if (part) report.listedTypes = [...part.types];
  const lastCommitted = new Map<string, number>();
  const position = new Map<string, number>();
  const without: { key: VersionKey; at: number }[] = [];
  for (const key of list(0)) {
    const at = (position.get(key.resourceType) ?? -1) + 1;
    position.set(key.resourceType, at);
    if (store.has(key.resourceType, key.id, key.versionId)) lastCommitted.set(key.resourceType, at);
    else without.push({ key, at });
  }
  for (const { key, at } of without) {
    let resource: Resource;
    try {
      resource = await repository.vread(key.resourceType, key.id, key.versionId);
    } catch (err) {
      // bytes that do not authenticate, erased, deleted since: nothing to recompute
      if (err instanceof TamperedVersionError || isGlucoGuardError(err, 'ERR_GONE') || isGlucoGuardError(err, 'ERR_NOT_FOUND')) continue;
      throw err;
    }
    const ref = `${key.resourceType}/${key.id}/_history/${key.versionId}`;
    const patients = patientIdsOf(resource);
    out.set(ref, { resource, patients: key.resourceType === 'Patient' ? [...patients, key.id] : patients });
    report.uncommitted.push({ ref, among: at < (lastCommitted.get(key.resourceType) ?? -1) });
  }
  return out;
}

/** Names the missing leaves of one batch: the version they commit to (if still in the repository), their neighbours. */
function placeLeaves(store: CommitmentStore, batch: BatchRecord, missing: MissingLeaf[], candidates: Map<string, Candidate>): void {
  const size = batch.lastSeq - batch.firstSeq + 1;
  const rows = store.keysBetween(batch.firstSeq - 1, batch.lastSeq + 1);
  const bySeq = new Map(rows.map((r) => [r.seq, r]));
  const refOf = (r: { type: string; id: string; version: string }) => `${r.type}/${r.id}/_history/${r.version}`;
  for (const leaf of missing) {
    for (let s = leaf.seq - 1; s >= batch.firstSeq - 1; s--) {
      const r = bySeq.get(s);
      if (r) { leaf.after = refOf(r); break; }
    }
    for (let s = leaf.seq + 1; s <= batch.lastSeq + 1; s++) {
      const r = bySeq.get(s);
      if (r) { leaf.before = refOf(r); break; }
    }
  }
  const tree = store.treeOfBatchRecord(batch.id);
  if (!tree || tree.salts.length !== 32 * size || tree.nodes.length !== 32 * nodeCount(size)) return;
  // tree position → seq offset, to find the versions next to a missing leaf in the tree
  const atPosition = new Array<number>(size);
  for (let offset = 0; offset < size; offset++) atPosition[positionOf(tree.positions, offset)] = offset;
  let budget = MATCH_BUDGET;
  for (const leaf of missing) {
    const position = positionOf(tree.positions, leaf.seq - batch.firstSeq);
    leaf.position = position;
    const salt = tree.salts.subarray(32 * position, 32 * position + 32);
    const committed = tree.nodes.subarray(32 * position, 32 * position + 32);
    const left = position > 0 ? bySeq.get(batch.firstSeq + atPosition[position - 1]!) : undefined;
    const right = position + 1 < size ? bySeq.get(batch.firstSeq + atPosition[position + 1]!) : undefined;
    const patient = left?.patient ?? right?.patient;
    if (patient && (!left || !right || left.patient === right.patient)) leaf.patient = patient;
    for (const [ref, candidate] of candidates) {
      if (budget-- <= 0) break;
      const text = canonicalTextOf(candidate.resource) ?? canonicalResourceText(candidate.resource);
      if (commitmentOf(salt, text).equals(committed)) {
        leaf.version = ref;
        break;
      }
    }
  }
}

/**
 * Every anchored batch's on-chain record against the local one, and the authority's batches on
 * chain past the store's last one. Answers what disagrees, in words (no ids of resources).
 */
async function compareWithChain(store: CommitmentStore, anchor: Contract, authority: string): Promise<string[]> {
  const problems: string[] = [];
  const known = store.getMeta('seq_base');
  if (known === undefined) return problems; // nothing was ever sent
  const base = Number(known);
  // the chain first: a server running on this store may anchor meanwhile, and every batch on chain
  // now was prepared (written here) before it was sent, so it is in what is read from the store next
  const next = Number(await anchor.nextSeq(authority));
  const count = Number(await anchor.batchCount());
  const local = store.allBatches();
  const anchored = local.filter((b) => b.status === 'anchored' && b.chainBatchId !== null);
  for (let i = 0; i < anchored.length; i += 50) {
    await Promise.all(anchored.slice(i, i + 50).map(async (b) => {
      let onChain: { merkleRoot: string; authority: string; leafCount: bigint; firstSeq: bigint; lastSeq: bigint };
      try {
        onChain = await anchor.getBatch(b.chainBatchId);
      } catch (err) {
        if ((err as { revert?: { name?: string } }).revert?.name === 'ResourceAnchorUnknownBatch') {
          problems.push(`batch ${b.id}: the chain has no batch #${b.chainBatchId}`);
          return;
        }
        throw err;
      }
      const size = b.lastSeq - b.firstSeq + 1;
      const expected = { root: '0x' + b.root.toString('hex'), first: base + b.firstSeq - 1, last: base + b.lastSeq - 1 };
      if (String(onChain.merkleRoot).toLowerCase() !== expected.root) problems.push(`batch ${b.id}: chain batch #${b.chainBatchId} holds another root`);
      if (String(onChain.authority).toLowerCase() !== authority.toLowerCase()) problems.push(`batch ${b.id}: chain batch #${b.chainBatchId} was anchored by another authority (${onChain.authority})`);
      if (Number(onChain.leafCount) !== size || Number(onChain.firstSeq) !== expected.first || Number(onChain.lastSeq) !== expected.last) {
        problems.push(`batch ${b.id}: chain batch #${b.chainBatchId} covers sequences ${onChain.firstSeq}–${onChain.lastSeq} (${onChain.leafCount} leaves), the store ${expected.first}–${expected.last} (${size})`);
      }
    }));
  }
  const lastBatched = local.reduce((m, b) => Math.max(m, b.lastSeq), 0);
  if (next > base + lastBatched) {
    problems.push(`the chain holds sequences ${base + lastBatched}–${next - 1} of this authority (${next - base - lastBatched} leaves) that no batch of the store covers: batches removed from the store (or another store anchors with this authority's key)`);
  }
  // batches of this authority anchored after the store's last anchored one must be its prepared ones (in flight)
  const lastChainId = anchored.reduce((m, b) => Math.max(m, b.chainBatchId!), 0);
  const prepared = new Set(local.filter((b) => b.status === 'prepared').map((b) => '0x' + b.root.toString('hex')));
  for (let id = Math.max(lastChainId + 1, count - TAIL_BATCHES + 1); id <= count; id++) {
    const onChain = await anchor.getBatch(id);
    // those beyond the store's last batch are counted above
    if (String(onChain.authority).toLowerCase() !== authority.toLowerCase() || Number(onChain.firstSeq) < base || Number(onChain.firstSeq) >= base + lastBatched) continue;
    if (prepared.has(String(onChain.merkleRoot).toLowerCase())) continue;
    problems.push(`chain batch #${id} (sequences ${onChain.firstSeq}–${onChain.lastSeq}) of this authority is not in the store: removed from it`);
  }
  return problems;
}
