/**
 * The ledger side of the proxy, built once by src/app.ts: the commitment store
 * (`<dataDir>/ledger/commitments.db`), the Repository decorator that records a commitment for
 * every version written, the anchorer that puts them on chain in Merkle batches, and the
 * integrity guard that checks every resource leaving /fhir.
 */
import path from 'node:path';
import type { AuditEvent } from '@medplum/fhirtypes';
import type { Logger } from 'pino';
import type { Repository } from '../repository/port.js';
import { AnchoredRepository } from './anchored-repository.js';
import { AnchorSequenceError, Anchorer } from './anchor.js';
import type { ChainClient } from './client.js';
import { IntegrityChecker, IntegrityGuard, type IntegrityMode } from './integrity.js';
import { CommitmentStore } from './store.js';
import { describeGaps, missingCount } from './completeness.js';
import { completenessAuditEvent } from './integrity.js';
import { metrics } from '../observability/metrics.js';

export { AnchoredRepository } from './anchored-repository.js';
export { Anchorer } from './anchor.js';
export { EventFollower, FileCursorStore, type CursorStore, type EventCursor, type FollowedEvent } from './events.js';
export { IntegrityChecker, IntegrityGuard, INTEGRITY_TAG_SYSTEM, type IntegrityMode } from './integrity.js';
export { CommitmentStore } from './store.js';
export { withRetry, waitForReceipt } from './rpc.js';
export { canonicalResourceText, commitmentOf } from './canonical.js';

export interface LedgerOptions {
  dataDir: string;
  chain: ChainClient;
  /** The repository adapter to decorate. */
  repository: Repository;
  logger: Logger;
  /** lenient (default): unverifiable resources served with a tag; strict: withheld. */
  integrity?: IntegrityMode;
  /**
   * Run the anchorer in this process (default true). Operator commands beside a running server
   * leave anchoring to the server, whose loop picks their commitments up from the shared store.
   */
  anchor?: boolean;
  /**
   * The chain is this process's own embedded node (answering now): a chain older than the store's
   * anchored batches is refused at start (restored from an earlier moment: consent changes made
   * since are missing from it), not only reported.
   */
  ownChain?: boolean;
  /**
   * Versions of the newest anchored batches the anchoring process proves at start-up, in the
   * background, so that their first reads are one hash each (GLUCOGUARD_PROVE_AHEAD, default
   * 1,000,000; 0: none; IntegrityChecker.proveAhead).
   */
  proveAhead?: number;
  /** Batch window (default 1000 ms) and size (default 1000). */
  maxDelayMs?: number;
  maxLeaves?: number;
  /**
   * How often an anchoring process looks for commitments removed from the store while it runs
   * (GLUCOGUARD_LEDGER_CHECK_MS, default 10 minutes; watchCompleteness).
   */
  completenessCheckMs?: number;
}

export interface Ledger {
  store: CommitmentStore;
  repository: AnchoredRepository;
  anchorer: Anchorer;
  checker: IntegrityChecker;
  guard: IntegrityGuard;
  /**
   * Proves the newest anchored batches ahead again, in the background (after an erasure emptied the
   * checker's caches); no-op in a process that does not anchor.
   */
  proveAhead(): void;
  /** Resolves once the background reads of the start (anchored roots, versions proven ahead) are done. */
  warmed(): Promise<void>;
  /** Stops the anchorer (queued commitments stay on disk) and closes the store. */
  close(): Promise<void>;
}

/** Versions proven ahead at start-up unless configured (~100 MB of memory for 1,000,000). */
export const DEFAULT_PROVE_AHEAD = 1_000_000;

/** Where the commitment store lives. */
export function commitmentStorePath(dataDir: string): string {
  return path.join(dataDir, 'ledger', 'commitments.db');
}

/**
 * Opens the store, reconciles versions written but not recorded before a crash, and starts the
 * anchorer in the background (it first resolves any batch sent before the last stop).
 */
export async function createLedger(options: LedgerOptions): Promise<Ledger> {
  const store = new CommitmentStore(commitmentStorePath(options.dataDir));
  const checker = new IntegrityChecker(store, options.chain.contract('ResourceAnchor', options.chain.provider));
  const anchorer = new Anchorer({
    store, chain: options.chain, logger: options.logger, maxDelayMs: options.maxDelayMs, maxLeaves: options.maxLeaves,
    onAnchored: (batch) => checker.readRootAhead(batch.id),
  });
  const repository = new AnchoredRepository(options.repository, store, (added) => anchorer.notify(added), {
    failed: (err, pending) => {
      metrics.queueDepth.set({ queue: 'unrecorded' }, pending);
      options.logger.error({ err, pending },
        'ledger: the commitment store refused the record of versions just written; they are stored, served as unverified until recorded, and recorded again with back-off');
    },
    waiting: (pending) => metrics.queueDepth.set({ queue: 'unrecorded' }, pending),
    recovered: (recorded) => {
      metrics.queueDepth.set({ queue: 'unrecorded' }, 0);
      options.logger.warn({ versions: recorded }, 'ledger: recorded the commitments that had waited');
    },
  });
  if (options.ownChain) {
    try {
      const problem = await compareSequence(store, options.chain);
      if (problem && problem.expected! < problem.local!) {
        throw new AnchorSequenceError(`refusing to start: the embedded chain holds this authority's anchors up to sequence ${problem.expected! - 1}, `
          + `but the commitment store recorded batches anchored up to ${problem.local! - 1}: ${problem.advice()}`, problem.local, problem.expected);
      }
    } catch (err) {
      store.close();
      throw err;
    }
  }
  try {
    const reconciled = await repository.reconcile();
    if (reconciled) options.logger.warn({ versions: reconciled }, 'ledger: recorded commitments of versions written before a crash');
    if (repository.outside) {
      options.logger.info({ versions: repository.outside }, 'ledger: recent versions on the upstream without a commitment that GlucoGuard did not write (no write intent matches): left unverified');
    }
    if (repository.gaps) {
      options.logger.error({ versions: repository.gaps }, 'ledger: versions without a commitment lie among committed ones (not a crash tail): their commitments were removed or the versions put there; they are left unverified — run glucoguard verify');
    }
  } catch (err) {
    // The versions a crash left without a commitment are found in the repository's system history;
    // an upstream server may not offer it (GET [base]/_history is optional in FHIR R4).
    const upstream = options.repository.description.adapter === 'upstream';
    options.logger.warn({ err: (err as Error).message },
      'ledger: could not reconcile with repository history: versions written just before the last stop may have no commitment, '
      + 'and read as unverified' + (upstream ? ' (the upstream FHIR server must answer system-level history, GET [base]/_history, for this check)' : ''));
  }
  const guard = new IntegrityGuard({
    checker, mode: options.integrity, logger: options.logger, audit: (event) => repository.create(event),
  });
  const warming = new AbortController();
  let warmed: Promise<void> | undefined;
  const proveAhead = async (): Promise<void> => {
    const started = performance.now();
    try {
      const versions = await checker.proveAhead(options.proveAhead ?? DEFAULT_PROVE_AHEAD, warming.signal);
      metrics.provenAhead.set(checker.provenAhead());
      if (versions) options.logger.info({ versions, ms: Math.round(performance.now() - started) }, 'ledger: proved the newest anchored versions ahead of their first reads');
    } catch (err) {
      if (!warming.signal.aborted) options.logger.warn({ err: (err as Error).message }, 'ledger: could not prove anchored versions ahead (each is proven on its first read instead)');
    }
  };
  if (options.anchor !== false) {
    anchorer.start();
    // roots are final once sealed: read those of earlier batches now, not on each first read
    warmed = checker.warmRoots(undefined, warming.signal).then(
      (n) => { if (n) options.logger.info({ roots: n }, 'ledger: cached the on-chain roots of anchored batches'); },
      (err: unknown) => options.logger.warn({ err: (err as Error).message }, 'ledger: could not read anchored roots ahead (read on demand instead)'))
      .then(proveAhead);
  }
  const backfill = options.anchor !== false ? addMissingTrees(store, options.logger) : undefined;
  const counts = store.counts();
  options.logger.info({ ...counts, lastAnchoredAt: undefined }, `ledger: ${counts.commitments} commitments, ${counts.pending} waiting to be anchored`);
  // rows are never deleted: a gap is a commitment removed from the store (with its version, or not)
  const completeness = watchCompleteness(store, options.logger, (event) => repository.create(event),
    options.anchor !== false ? options.completenessCheckMs ?? 600_000 : undefined, () => anchorer.heldLease());
  void checkChainTail(store, options.chain, options.logger, anchorer); // close() need not wait for it: a closed store ends it
  return {
    store, repository, anchorer, checker, guard,
    proveAhead() {
      metrics.provenAhead.set(checker.provenAhead());
      if (options.anchor === false || warming.signal.aborted) return;
      warmed = Promise.all([warmed, proveAhead()]).then(() => undefined);
    },
    async warmed() {
      await warmed;
    },
    async close() {
      completeness.stop();
      backfill?.stop();
      warming.abort(); // the reads under way finish before the store closes
      await Promise.all([backfill?.done, warmed]);
      repository.stopRetries();
      // one last try; what still waits is a crash tail the next start's reconcile records
      if (!repository.flushUnrecorded()) options.logger.error({ pending: repository.unrecordedCount }, 'ledger: commitments still unrecorded at shutdown; the next start records them (reconcile)');
      await anchorer.stop();
      store.close();
    },
  };
}

/**
 * The authority's next sequence number on chain against the store, as an AnchorSequenceError
 * (`local`: where the store says the chain must be at least or at most, `expected`: the chain's)
 * when they cannot both be right; undefined when they agree or before anything was anchored.
 * The store's anchored end is read before the chain and its batched end after: an anchorer running
 * meanwhile only moves the chain forward between the two reads, never into a false finding.
 */
export async function compareSequence(store: CommitmentStore, chain: ChainClient): Promise<AnchorSequenceError | undefined> {
  const base = store.getMeta('seq_base');
  if (base === undefined) return undefined;
  const anchoredEnd = Number(base) + store.lastAnchoredSeq();
  const next = Number(await chain.contract('ResourceAnchor', chain.provider).nextSeq(chain.authorityAddress));
  const batchedEnd = Number(base) + store.lastBatchedSeq();
  if (next < anchoredEnd) {
    return new AnchorSequenceError(`the contract expects sequence ${next} for ${chain.authorityAddress}, but the commitment store's anchored batches end at ${anchoredEnd - 1}`, anchoredEnd, next);
  }
  if (next > batchedEnd) {
    return new AnchorSequenceError(`the contract expects sequence ${next} for ${chain.authorityAddress}, past the commitment store's last batch (ending at ${batchedEnd - 1})`, batchedEnd, next);
  }
  // between the two: only the end of a batch will do (one in flight, or anchored by a process
  // sharing the store since the first read)
  const ends = new Set([anchoredEnd, ...store.batchEndsFrom(anchoredEnd - Number(base)).map((end) => Number(base) + end)]);
  if (!ends.has(next)) {
    return new AnchorSequenceError(`the contract expects sequence ${next} for ${chain.authorityAddress}, which is not where any of the commitment store's batches ends`, anchoredEnd, next);
  }
  return undefined;
}

/**
 * A batch removed from the end of the store leaves no gap in it; the chain still counts its leaves
 * in the authority's next sequence number. And a chain restored from an earlier moment than the
 * store lacks batches the store recorded as anchored. Compared once at start-up, in the
 * background; either stops anchoring for good, so the anchorer reports it (error log, readiness).
 * An unreachable chain is left to `glucoguard chain status` and `verify`.
 */
async function checkChainTail(store: CommitmentStore, chain: ChainClient, logger: Logger, anchorer: Anchorer): Promise<void> {
  try {
    const problem = await compareSequence(store, chain);
    if (!problem) return;
    if (problem.expected! > problem.local!) {
      const leaves = problem.expected! - problem.local!;
      logger.error({ leaves }, `ledger: the chain holds ${leaves} leaves of this authority past the commitment store's last batch: batches were removed from the store (or another store anchors with this authority's key) — run glucoguard verify`);
    }
    anchorer.reportSequenceProblem(problem);
  } catch {
    // chain unreachable now, or the ledger closed meanwhile
  }
}

/**
 * Adds the trees of batches prepared before trees were stored (CommitmentStore.addMissingTree), one
 * batch per turn of the event loop so requests are served in between; logs how many when done.
 */
function addMissingTrees(store: CommitmentStore, logger: Logger): { stop(): void; done: Promise<void> } {
  let stopped = false;
  const done = (async () => {
    let added = 0;
    let skipped = 0;
    for (let after = 0; !stopped;) {
      const next = store.addMissingTree(after);
      if (!next) break;
      after = next.id;
      if (next.stored) added++;
      else skipped++;
      await new Promise((r) => setImmediate(r));
    }
    if (added || skipped) {
      logger.info({ batches: added, skipped }, 'ledger: stored the Merkle trees of batches prepared by an earlier version (faster first reads); skipped ones whose rows do not lead to their root');
    }
  })().catch((err: unknown) => logger.warn({ err: (err as Error).message }, 'ledger: could not add the trees of earlier batches (their versions are checked one by one)'));
  return { stop: () => { stopped = true; }, done };
}

/**
 * Looks for commitments removed from the store: at start, then every `everyMs` while the process
 * anchors (a removal while it runs, which no read can see, was found only by `glucoguard verify`
 * or the next start). Each time more are missing than were reported, the error is logged and (by
 * the process holding the anchoring lease, so replicas on one data directory alert once) a Security
 * Alert AuditEvent written; `glucoguard_commitments_missing` holds the count.
 */
function watchCompleteness(store: CommitmentStore, logger: Logger, audit: (event: AuditEvent) => Promise<unknown>, everyMs: number | undefined,
  anchors: () => boolean): { stop(): void } {
  let logged = 0;
  let alerted = 0;
  let stopped = false;
  const check = (): void => {
    if (stopped) return;
    const gaps = store.gaps();
    const missing = missingCount(gaps);
    metrics.commitmentsMissing.set(missing);
    if (missing <= logged && (missing <= alerted || !everyMs)) return;
    const text = `${missing} commitments are missing from the commitment store (${describeGaps(gaps)}): removed from it, their versions possibly removed from the repository too`;
    if (missing > logged) {
      logged = missing;
      logger.error({ missing }, `ledger: ${text} — run glucoguard verify`);
    }
    // the anchoring server's finding, once per count (a replica standing by and an operator command
    // only log it); at start the lease may not be taken yet: the next check alerts
    if (!everyMs || missing <= alerted || !anchors()) return;
    alerted = missing;
    audit(completenessAuditEvent(text)).catch((err: unknown) => {
      alerted = 0;
      logger.error({ err: (err as Error).message }, 'could not write the ledger completeness AuditEvent');
    });
  };
  check();
  const timer = everyMs ? setInterval(() => {
    try {
      check();
    } catch (err) {
      if (!stopped) logger.warn({ err: (err as Error).message }, 'ledger: could not check the commitment store for removed rows');
    }
  }, everyMs).unref() : undefined;
  return {
    stop() {
      stopped = true;
      if (timer) clearInterval(timer);
    },
  };
}
