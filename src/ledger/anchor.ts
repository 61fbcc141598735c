/**
 * The anchorer: turns the commitment queue (store.ts) into ResourceAnchor batches. A batch closes
 * at `maxLeaves` (1,000) commitments or when its oldest has waited `maxDelayMs` (1 s); one
 * transaction per batch, proofs stored with each version and the whole tree with the batch.
 * Batches are pipelined: a batch is sent as soon as it closes while up to `maxInFlight` (4) earlier
 * ones still wait for their receipts (each watched in the background), so closing batches never
 * waits for a block; otherwise a steady write rate near one batch per block period falls behind by
 * the RPC round trips of every step.
 *
 * Crash safety: a batch is written locally (`prepared`, with root and proofs) before its
 * transaction is sent. After a restart every prepared batch is resolved first: if the contract
 * already knows its root it is marked anchored (batch id, block and transaction read back from the
 * chain), otherwise the very same batch is sent again. The contract only accepts a batch starting
 * at the authority's next sequence number, so no version is skipped or anchored twice.
 *
 * Chain down: commitments keep queuing on disk (writes never wait for the chain); the anchorer
 * retries with back-off and catches up in batches of `maxLeaves` once the node answers again.
 */
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { holderDied, leaseOwner } from '../lease-owner.js';
import { toBeHex, type Contract, type Log } from 'ethers';
import type { Logger } from 'pino';
import type { ChainClient } from './client.js';
import { buildMerkleTree } from './merkle.js';
import { waitForReceipt, withRetry } from './rpc.js';
import { metrics } from '../observability/metrics.js';
import { patientOrder, type BatchRecord, type CommitmentStore } from './store.js';

export interface AnchorerOptions {
  store: CommitmentStore;
  chain: ChainClient;
  /** Close a batch at this many commitments (default 1000). */
  maxLeaves?: number;
  /** …or when the oldest queued commitment has waited this long (default 1000 ms). */
  maxDelayMs?: number;
  /** Give up waiting for one receipt after this long and retry the batch (default 60 s). */
  receiptTimeoutMs?: number;
  /** Receipt poll interval (default 50 ms). */
  pollMs?: number;
  /**
   * Called once a batch is known anchored (its receipt seen, or found on chain after a restart),
   * after the store records it: the ledger reads the batch's root back ahead of its first read.
   * While another process sharing the store anchors, called for each batch it is seen to anchor
   * (looked for on every standby turn, about once a second).
   */
  onAnchored?: (batch: BatchRecord) => void;
  /** How often a persisting failure is logged again (default 5 minutes; the first time at once). */
  repeatLogMs?: number;
  /** Batches sent before the first receipt is seen (default 4): capacity beyond one batch per block. */
  maxInFlight?: number;
  /**
   * How long the anchoring lease lasts without renewal (default 10 s): of the processes sharing a
   * store only the holder anchors; the others take over when it stops or stops renewing.
   */
  leaseMs?: number;
  logger?: Logger;
}

/**
 * The commitment store and the contract disagree about this authority's sequence numbers: the
 * chain and the store come from different moments (a restore that mixed backups), batches were
 * removed from the store, or another store anchors with this key. Anchoring cannot go on (nothing
 * is skipped or anchored twice) until the operator restores a consistent data directory.
 */
export class AnchorSequenceError extends Error {
  readonly code = 'ERR_ANCHOR_SEQUENCE';
  constructor(message: string, readonly local?: number, readonly expected?: number) {
    super(message);
  }

  /** What it means and what to do, for the log. */
  advice(): string {
    const cause = this.expected === undefined || this.local === undefined ? ''
      : this.expected < this.local
        ? 'the chain is older than the commitment store (chain/ restored from an earlier moment than ledger/, or the embedded chain lost its newest blocks): '
        + 'consent changes recorded on chain after that moment are missing too; '
        : 'the chain holds anchors of this authority that the commitment store does not (ledger/ restored from an earlier moment than the chain, batches removed from the store, '
        + 'or another data directory anchoring with this authority\'s key); ';
    return `${cause}anchoring is stopped, commitments stay queued, /readyz fails its anchoring check (ERR_ANCHOR_SEQUENCE). `
      + 'Stop the server and restore the whole data directory (store, ledger and chain) from one backup (docs/operations.md, Backups and restores); glucoguard verify reports what differs';
  }
}

/** How often a failure that persists is logged again (the first time at once). */
const REPEAT_LOG_MS = 5 * 60_000;

export class Anchorer {
  private readonly store: CommitmentStore;
  private readonly chain: ChainClient;
  private readonly maxLeaves: number;
  private readonly maxDelayMs: number;
  private abort: AbortController | undefined;
  private wake: (() => void) | undefined;
  private loop: Promise<void> | undefined;
  private stepping: Promise<unknown> = Promise.resolve();
  /** Batches sent in this process and not confirmed yet: local batch id → transaction hash and nonce. */
  private readonly sent = new Map<number, { hash: string; nonce: number }>();
  /** Receipt watchers of sent batches, by local batch id. */
  private readonly watching = new Map<number, Promise<void>>();
  /** The first failure of a watcher, reported by the next step once every watcher has settled. */
  private watchFailure: { err: unknown } | undefined;
  /** Batches prepared by this process (their roots cannot be on chain before they are sent). */
  private readonly fresh = new Set<number>();
  private gasLimit: bigint | undefined;
  private readonly maxInFlight: number;
  private failing = false;
  /** When the current run of failures began, and when it was last logged. */
  private failingSince = 0;
  private failureLoggedAt = 0;
  /** Set while the contract refuses this store's sequence numbers; cleared once a batch is anchored. */
  private sequenceProblem: AnchorSequenceError | undefined;
  private queued = 0;
  /** This anchorer's name in the store's anchoring lease: host/pid/random. */
  private readonly owner = leaseOwner(randomUUID().slice(0, 8));
  private readonly leaseMs: number;
  /** Until when (epoch ms) this process is known to hold the lease without asking the store again. */
  private leadingUntil = 0;
  private leading: boolean | undefined;
  /** Standing by: the newest batch anchored by another process that onAnchored was told of. */
  private seenAnchored = 0;

  constructor(private readonly options: AnchorerOptions) {
    this.store = options.store;
    this.chain = options.chain;
    this.maxLeaves = options.maxLeaves ?? 1000;
    this.maxDelayMs = options.maxDelayMs ?? 1000;
    this.maxInFlight = options.maxInFlight ?? 4;
    this.leaseMs = options.leaseMs ?? 10_000;
  }

  /** Whether this process held the anchoring lease when it last looked (no look, no renewal: leads() does those). */
  heldLease(): boolean {
    return this.leading === true;
  }

  /**
   * True while this process holds the store's anchoring lease (taken or renewed here; renewed once
   * half of it has run, so a busy loop writes it at most twice per lease). Logs each change of role.
   */
  leads(): boolean {
    const now = Date.now();
    if (this.leading && now < this.leadingUntil) return true;
    const leads = this.store.holdLease(this.owner, this.leaseMs, now, holderDied);
    this.leadingUntil = leads ? now + this.leaseMs / 2 : 0;
    if (leads !== this.leading) {
      if (leads) this.options.logger?.info('anchoring: this process anchors the commitment store');
      else this.options.logger?.info('anchoring: another process sharing this data directory anchors the commitment store; standing by');
      this.leading = leads;
    }
    return leads;
  }

  private get anchor(): Contract {
    return this.chain.contract('ResourceAnchor');
  }

  /** Runs in the background until `stop()`. */
  start(): void {
    if (this.loop) return;
    const abort = (this.abort = new AbortController());
    this.seenAnchored = this.store.lastAnchoredBatchId(); // those anchored before the start are the ledger's to warm
    this.loop = (async () => {
      let backoff = 200;
      while (!abort.signal.aborted) {
        let waitMs: number;
        try {
          if (!this.leads()) {
            // another process anchors this store: look again before its lease could run out
            waitMs = Math.min(1000, this.leaseMs / 2);
            this.failing = false;
            this.tellAnchoredElsewhere();
          } else {
            await this.step(false);
            if (this.failing && !this.sequenceProblem) this.options.logger?.info('anchoring: chain reachable again, catching up');
            this.failing = false;
            backoff = 200;
            const { count, oldest } = this.store.backlog();
            const full = this.store.preparedBatches().length >= this.maxInFlight; // a receipt wakes the loop
            waitMs = full ? 1000 : count >= this.maxLeaves ? 0 : count > 0 ? Math.max(0, oldest! + this.maxDelayMs - Date.now()) : 1000;
          }
        } catch (err) {
          this.failed(err);
          waitMs = backoff;
          backoff = Math.min(backoff * 2, 10_000);
        }
        this.reportLag();
        this.remindProblem();
        if (waitMs > 0) await new Promise<void>((resolve) => {
          const t = setTimeout(done, waitMs);
          const onAbort = () => done();
          abort.signal.addEventListener('abort', onAbort, { once: true });
          this.wake = done;
          function done() {
            clearTimeout(t);
            abort.signal.removeEventListener('abort', onAbort);
            resolve();
          }
        });
      }
    })();
  }

  /**
   * Logs a failed step: at once the first time, then again every REPEAT_LOG_MS while it persists. A
   * sequence mismatch is an error the operator must act on (and fails readiness until a batch is
   * anchored); anything else is a warning (the chain unreachable: retried with back-off).
   */
  private failed(err: unknown): void {
    const now = Date.now();
    if (!this.failing) this.failingSince = now;
    const sequence = err instanceof AnchorSequenceError ? err : undefined;
    const newProblem = sequence !== undefined && this.sequenceProblem === undefined;
    if (sequence) this.sequenceProblem = sequence;
    if (!this.failing || newProblem || now - this.failureLoggedAt >= this.repeatLogMs) {
      const since = new Date(this.failingSince).toISOString();
      if (sequence) {
        this.logProblem(sequence);
      } else {
        this.options.logger?.warn({ err: describe(err), since }, this.failing ? 'anchoring still failing; commitments stay queued, retrying' : 'anchoring failed; commitments stay queued, retrying');
        this.failureLoggedAt = now;
      }
    }
    this.failing = true;
  }

  private get repeatLogMs(): number {
    return this.options.repeatLogMs ?? REPEAT_LOG_MS;
  }

  /**
   * Why anchoring cannot go on, while it cannot: the contract refuses this store's sequence
   * numbers (found when a batch was sent, or by the ledger's start-up comparison). What the
   * `anchoring` readiness check reports.
   */
  problem(): AnchorSequenceError | undefined {
    return this.sequenceProblem;
  }

  /** A sequence mismatch found outside a send (the ledger's start-up comparison with the chain): logged and reported like one. */
  reportSequenceProblem(err: AnchorSequenceError): void {
    if (this.sequenceProblem) return;
    this.sequenceProblem = err;
    this.logProblem(err);
  }

  private logProblem(err: AnchorSequenceError): void {
    this.options.logger?.error({ code: err.code, since: new Date(this.failingSince || Date.now()).toISOString() }, `anchoring stopped: ${err.message}: ${err.advice()}`);
    this.failureLoggedAt = Date.now();
  }

  /** While anchoring is stopped, says so again every REPEAT_LOG_MS, also when nothing is being sent. */
  private remindProblem(): void {
    if (this.sequenceProblem && Date.now() - this.failureLoggedAt >= this.repeatLogMs) this.logProblem(this.sequenceProblem);
  }

  /** Sets the anchoring-lag and queue-depth gauges from the store (also while the chain is down, and while batches wait unconfirmed). */
  private reportLag(): void {
    try {
      const { count, oldest } = this.store.unanchored();
      metrics.anchoringLag.set(count > 0 && oldest !== null ? Math.max(0, Date.now() - oldest) / 1000 : 0);
      metrics.queueDepth.set({ queue: 'anchor' }, count);
    } catch {
      // store closed while stopping
    }
  }

  /** Tells the loop `added` commitments were queued; it closes a full batch at once. Counted in memory: no query per write. */
  notify(added = 1): void {
    this.queued += added;
    if (this.queued >= this.maxLeaves) {
      this.queued = 0;
      this.wake?.();
    }
  }

  /** Anchors everything queued now, without waiting for the batch window; resolves when done. */
  async flush(): Promise<void> {
    while (this.store.backlog().count > 0 || this.store.preparedBatches().length > 0) {
      if (this.leads()) await this.step(true);
      else await new Promise((r) => setTimeout(r, 50)); // the process holding the lease anchors them
    }
  }

  /** Stops the loop and the receipt watchers; batches still in flight stay prepared and are resolved on the next start. */
  async stop(): Promise<void> {
    this.abort?.abort();
    this.wake?.();
    await this.loop;
    await this.stepping.catch(() => undefined);
    await Promise.allSettled([...this.watching.values()]);
    this.watchFailure = undefined;
    this.loop = undefined;
    this.abort = undefined;
    if (this.leading) this.store.releaseLease(this.owner);
    this.leading = undefined;
    this.leadingUntil = 0;
  }

  /**
   * One step: closes the batches that are due (`force`: whatever is queued) and sends every prepared
   * batch not sent yet, each then watched for its receipt in the background. With `force` it also
   * waits for those receipts and returns the last batch anchored. Steps never overlap.
   */
  step(force: boolean): Promise<BatchRecord | undefined> {
    const run = this.stepping.catch(() => undefined).then(() => this.stepOnce(force));
    this.stepping = run;
    return run;
  }

  private async stepOnce(force: boolean): Promise<BatchRecord | undefined> {
    if (!this.leads()) return undefined;
    await this.reportWatchFailure();
    // Close due batches, keeping at most `maxInFlight` prepared (sent, receipt not seen yet) at once.
    for (let prepared = this.store.preparedBatches().length; prepared < this.maxInFlight; prepared++) {
      const { count, oldest } = this.store.backlog();
      if (count === 0 || (!force && count < this.maxLeaves && oldest! + this.maxDelayMs > Date.now())) break;
      const rows = this.store.unbatched(this.maxLeaves);
      const order = patientOrder(rows);
      const tree = buildMerkleTree(order.map((k) => rows[k]!.leaf));
      const batch = this.store.prepareBatch(rows[0]!.seq, rows[rows.length - 1]!.seq, tree, order.map((k) => rows[k]!.salt), Date.now(), order);
      this.fresh.add(batch.id);
    }
    const prepared = this.store.preparedBatches();
    if (!prepared.length) return undefined;
    await this.sendAll(prepared);
    for (const batch of prepared) this.watch(batch);
    if (!force) return undefined;
    await Promise.allSettled(prepared.map((b) => this.watching.get(b.id)));
    await this.reportWatchFailure();
    return this.store.batch(prepared[prepared.length - 1]!.id);
  }

  /**
   * Watches a sent batch for its receipt in the background; the loop is woken when it settles.
   * Batches are mined in nonce order, so a watcher starts polling once the one before it has settled:
   * one receipt poll at a time however many batches are in flight (each poll is a JSON-RPC round
   * trip, on the same event loop as the writes when the node is embedded).
   */
  private watch(batch: BatchRecord): void {
    if (this.watching.has(batch.id) || !this.sent.has(batch.id)) return;
    const signal = this.abort?.signal;
    const before = [...this.watching.values()].at(-1) ?? Promise.resolve();
    const watcher = before.then(() => this.confirm(batch, signal))
      .then(() => undefined, (err: unknown) => {
        if (!signal?.aborted) this.watchFailure ??= { err };
      })
      .finally(() => {
        this.watching.delete(batch.id);
        this.wake?.();
      });
    this.watching.set(batch.id, watcher);
  }

  /**
   * Throws the failure of a receipt watcher once every watcher has settled, so that the next step
   * (after the loop's back-off) looks each unconfirmed batch up on chain before sending it again.
   */
  private async reportWatchFailure(): Promise<void> {
    if (!this.watchFailure) return;
    await Promise.allSettled([...this.watching.values()]);
    const { err } = this.watchFailure;
    this.watchFailure = undefined;
    throw err;
  }

  /** The on-chain sequence number of local seq 1, fixed before the first batch is ever sent. */
  private async seqBase(): Promise<number> {
    const known = this.store.getMeta('seq_base');
    if (known !== undefined) return Number(known);
    const next = Number(await withRetry(() => this.anchor.nextSeq(this.chain.authorityAddress)));
    this.store.setMeta('seq_base', String(next));
    return next;
  }

  /**
   * Sends, in order, every prepared batch not sent yet. Several may be in flight: nonces follow
   * batch order, so they are mined in order. Only the first batch with nothing of ours in flight
   * before it can be checked against the contract (a gas estimate, which simulates the call); the
   * ones behind it would not pass estimation before it is mined, so they carry its gas limit.
   */
  private async sendAll(prepared: BatchRecord[]): Promise<void> {
    const anchor = this.anchor;
    const base = await this.seqBase();
    for (const [i, batch] of prepared.entries()) {
      if (this.sent.has(batch.id) || this.watching.has(batch.id)) continue;
      const root = '0x' + batch.root.toString('hex');
      // a batch prepared before this process started (or whose receipt went missing) may be on chain already
      const existing = this.fresh.has(batch.id) ? 0 : Number(await withRetry(() => anchor.batchIdOfRoot(root)));
      if (existing !== 0) {
        await this.resolveAnchored(batch, existing);
        continue;
      }
      const firstSeq = base + batch.firstSeq - 1;
      const lastSeq = base + batch.lastSeq - 1;
      const count = batch.lastSeq - batch.firstSeq + 1;
      const ahead = prepared.slice(0, i).some((p) => this.sent.has(p.id));
      if (!ahead) {
        // The estimate simulates the call: a batch the contract would refuse is never sent. Only then is
        // the sequence asked for, to tell "someone else anchors with this key" from other reverts.
        let estimate: bigint;
        try {
          estimate = await withRetry(() => anchor.anchor.estimateGas(root, count, firstSeq, lastSeq));
        } catch (err) {
          const next = Number(await withRetry(() => anchor.nextSeq(this.chain.authorityAddress)));
          if (next !== firstSeq) {
            throw new AnchorSequenceError(`local batch ${batch.id} starts at sequence ${firstSeq} but the contract expects ${next} for ${this.chain.authorityAddress}`, firstSeq, next);
          }
          throw err;
        }
        this.gasLimit = (estimate * 3n) / 2n;
      }
      try {
        const tx = await anchor.anchor(root, count, firstSeq, lastSeq, { gasLimit: this.gasLimit ?? 500_000n });
        this.sent.set(batch.id, { hash: tx.hash, nonce: tx.nonce });
      } catch (err) {
        this.chain.authority.reset();
        throw err;
      }
    }
  }

  /**
   * Waits for a sent batch's receipt and records it; on failure forgets this and later sends (looked
   * up on chain, then resolved or re-sent, by a later step). An abort (stop) just stops waiting.
   */
  private async confirm(batch: BatchRecord, signal?: AbortSignal): Promise<BatchRecord> {
    const current = this.store.batch(batch.id)!;
    if (current.status === 'anchored') return current;
    const sent = this.sent.get(batch.id);
    if (!sent) throw new Error(`batch ${batch.id} was not sent`);
    const hash = sent.hash;
    try {
      // a transaction replaced by another holder of the key fails here within a second or so, not at the timeout
      const receipt = await waitForReceipt(this.chain.provider, hash, {
        timeoutMs: this.options.receiptTimeoutMs, pollMs: this.options.pollMs, signal, sender: this.chain.authorityAddress, nonce: sent.nonce,
      });
      if (receipt.status !== 1) throw new Error(`anchor transaction ${hash} reverted`);
      const recorded = this.recordReceipt(batch, receipt.logs, receipt.blockNumber, receipt.hash);
      this.sent.delete(batch.id);
      this.fresh.delete(batch.id);
      metrics.anchors.inc({ outcome: 'confirmed' });
      return recorded;
    } catch (err) {
      if (signal?.aborted) throw err;
      metrics.anchors.inc({ outcome: 'failed' });
      // later batches depend on this one: forget them all; the next step looks each root up on chain first
      for (const id of [...this.sent.keys()]) if (id >= batch.id) this.sent.delete(id);
      for (const id of [...this.fresh]) if (id >= batch.id) this.fresh.delete(id);
      this.chain.authority.reset();
      throw err;
    }
  }

  private recordReceipt(batch: BatchRecord, logs: readonly Log[], block: number, hash: string): BatchRecord {
    const anchor = this.anchor;
    let chainBatchId: number | undefined;
    for (const log of logs) {
      const parsed = anchor.interface.parseLog(log);
      if (parsed?.name === 'BatchAnchored') chainBatchId = Number(parsed.args.batchId);
    }
    if (chainBatchId === undefined) throw new Error(`anchor transaction ${hash} has no BatchAnchored event`);
    this.store.markAnchored(batch.id, chainBatchId, block, hash);
    this.sequenceProblem = undefined;
    this.options.logger?.debug({ batch: batch.id, chainBatchId, block, leaves: batch.lastSeq - batch.firstSeq + 1 }, 'batch anchored');
    return this.anchored(batch.id);
  }

  /** The root is on chain already (sent before a crash, or a lost receipt): read batch, block and transaction back. */
  private async resolveAnchored(batch: BatchRecord, chainBatchId: number): Promise<BatchRecord> {
    const anchor = this.anchor;
    const onChain = await withRetry(() => anchor.getBatch(chainBatchId));
    const block = Number(onChain.blockNumber);
    const event = anchor.interface.getEvent('BatchAnchored')!;
    const logs = await withRetry(() => this.chain.provider.getLogs({
      address: this.chain.addresses.ResourceAnchor, topics: [event.topicHash, toBeHex(chainBatchId, 32)], fromBlock: block, toBlock: block,
    }));
    this.store.markAnchored(batch.id, chainBatchId, block, logs[0]?.transactionHash ?? null);
    this.sequenceProblem = undefined;
    this.options.logger?.info({ batch: batch.id, chainBatchId, block }, 'batch found on chain (sent before a restart)');
    return this.anchored(batch.id);
  }

  /** Standing by: tells onAnchored of the batches the lease holder anchored since the last look. */
  private tellAnchoredElsewhere(): void {
    if (!this.options.onAnchored) return;
    for (const { id } of this.store.anchoredBatches(this.seenAnchored, 1000)) {
      this.seenAnchored = id;
      this.anchored(id);
    }
  }

  private anchored(batchId: number): BatchRecord {
    const record = this.store.batch(batchId)!;
    this.options.onAnchored?.(record);
    return record;
  }
}

/**
 * The owner of the anchoring lease when it is another process that is still running (a server on
 * this data directory renews it every few seconds while it runs); undefined otherwise.
 */
export function anchoringElsewhere(store: CommitmentStore, now = Date.now()): string | undefined {
  const holder = store.leaseHolder();
  if (!holder || holder.until <= now) return undefined;
  const [host, pid] = holder.owner.split('/');
  if (host === hostname() && Number(pid) === process.pid) return undefined;
  return holderDied(holder.owner) ? undefined : holder.owner;
}


function describe(err: unknown): string {
  const e = err as { code?: string; shortMessage?: string; message?: string };
  return [e.code, e.shortMessage ?? e.message].filter(Boolean).join(': ') || String(err);
}

