/**
 * Follows contract events with a persisted cursor: every matching log is handed to the handler
 * once, in chain order (block, then log index), and the cursor — the last handled log — is saved
 * after each one, so a restart resumes right after it: no event missed, none handled twice.
 *
 * The one window left is a crash after the handler's effect and before the cursor is saved. A
 * handler whose effect lives in its own database closes it by keeping the cursor in the same
 * transaction: pass a `CursorStore` instead of a file and save the cursor inside that transaction.
 *
 *   const follower = new EventFollower({
 *     provider: chain.provider, contract: chain.contract('ConsentRegistry'),
 *     events: ['ConsentGranted', 'ConsentRevoked'],
 *     cursor: path.join(dataDir, 'ledger', 'consent.cursor.json'),
 *     handler: async (e) => { … e.name, e.args.grantId, e.blockNumber … },
 *   });
 *   follower.start();   // polls until stop(); or `await follower.poll()` for one round
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import type { Contract, Log, LogDescription, Provider, Result } from 'ethers';
import { sleep, withRetry } from './rpc.js';

/** Position of the last handled log. `block: -1` means nothing handled yet. */
export interface EventCursor {
  block: number;
  logIndex: number;
}

export interface CursorStore {
  load(): EventCursor | undefined;
  save(cursor: EventCursor): void;
}

export interface FollowedEvent {
  name: string;
  args: Result;
  blockNumber: number;
  blockHash: string;
  transactionHash: string;
  logIndex: number;
  log: Log;
  description: LogDescription;
}

export interface EventFollowerOptions {
  provider: Provider;
  /** The contract (its address and ABI are used; the runner is not). */
  contract: Contract;
  /** Event names in the contract's ABI. */
  events: string[];
  /** A cursor file (written atomically) or your own store. */
  cursor: string | CursorStore;
  handler: (event: FollowedEvent) => void | Promise<void>;
  /** Block to start at when there is no cursor yet (default 0). */
  fromBlock?: number;
  /** Only follow blocks this many below the head (default 0: Clique/QBFT blocks here are final at once). */
  confirmations?: number;
  /** Poll interval in ms (default 1000). */
  pollMs?: number;
  /** Largest block range per eth_getLogs (default 2000). */
  maxRange?: number;
  /** Called when a poll round fails (RPC down, handler threw); the round is retried after pollMs. */
  onError?: (err: unknown) => void;
}

/** A cursor kept as a small JSON file, replaced atomically (write to a temp file, then rename). */
export class FileCursorStore implements CursorStore {
  constructor(readonly file: string) {}
  load(): EventCursor | undefined {
    if (!existsSync(this.file)) return undefined;
    const c = JSON.parse(readFileSync(this.file, 'utf8')) as EventCursor;
    if (!Number.isInteger(c.block) || !Number.isInteger(c.logIndex)) throw new Error(`${this.file} is not an event cursor`);
    return c;
  }
  save(cursor: EventCursor): void {
    mkdirSync(path.dirname(this.file), { recursive: true, mode: 0o700 });
    const tmp = `${this.file}.${randomBytes(4).toString('hex')}.tmp`;
    writeFileSync(tmp, JSON.stringify(cursor), { mode: 0o600 });
    renameSync(tmp, this.file);
  }
}

export class EventFollower {
  private readonly cursorStore: CursorStore;
  private readonly topics: string[];
  private cursorValue: EventCursor;
  private running: Promise<void> | undefined;
  private abort: AbortController | undefined;
  private round: Promise<number> | undefined;

  constructor(private readonly options: EventFollowerOptions) {
    this.cursorStore = typeof options.cursor === 'string' ? new FileCursorStore(options.cursor) : options.cursor;
    this.topics = options.events.map((name) => {
      const event = options.contract.interface.getEvent(name);
      if (!event) throw new Error(`the contract has no event ${name}`);
      return event.topicHash;
    });
    this.cursorValue = this.cursorStore.load() ?? { block: (options.fromBlock ?? 0) - 1, logIndex: Number.MAX_SAFE_INTEGER };
  }

  /** The last handled log (or the position before `fromBlock`). */
  get cursor(): EventCursor {
    return { ...this.cursorValue };
  }

  /**
   * One round: fetches logs from the cursor's block up to the (confirmed) head, hands each new one
   * to the handler, saving the cursor after each. Returns how many were handled. Rounds never overlap.
   */
  poll(): Promise<number> {
    const previous = this.round ?? Promise.resolve(0);
    const next = previous.catch(() => 0).then(() => this.pollOnce());
    this.round = next;
    return next;
  }

  /** Polls every `pollMs` until `stop()`. */
  start(): void {
    if (this.running) return;
    this.abort = new AbortController();
    const signal = this.abort.signal;
    this.running = (async () => {
      while (!signal.aborted) {
        try {
          await this.poll();
        } catch (err) {
          this.options.onError?.(err);
        }
        await sleep(this.options.pollMs ?? 1000, signal);
      }
    })();
  }

  async stop(): Promise<void> {
    this.abort?.abort();
    await this.running;
    await this.round?.catch(() => undefined);
    this.running = undefined;
  }

  private async pollOnce(): Promise<number> {
    const { provider, contract } = this.options;
    const head = await withRetry(() => provider.getBlockNumber());
    const to = head - (this.options.confirmations ?? 0);
    const maxRange = this.options.maxRange ?? 2000;
    const address = await contract.getAddress();
    let handled = 0;
    // Start at the cursor's own block when it stopped inside it: logs after its logIndex there are still new.
    const start = this.cursorValue.logIndex === Number.MAX_SAFE_INTEGER ? this.cursorValue.block + 1 : this.cursorValue.block;
    for (let from = Math.max(0, start); from <= to; from += maxRange) {
      const until = Math.min(to, from + maxRange - 1);
      const logs = await withRetry(() => provider.getLogs({ address, topics: [this.topics], fromBlock: from, toBlock: until }));
      logs.sort((a, b) => a.blockNumber - b.blockNumber || a.index - b.index);
      for (const log of logs) {
        if (log.blockNumber < this.cursorValue.block || (log.blockNumber === this.cursorValue.block && log.index <= this.cursorValue.logIndex)) continue;
        if (log.removed) continue;
        const description = contract.interface.parseLog(log);
        if (!description) continue;
        await this.options.handler({
          name: description.name, args: description.args, blockNumber: log.blockNumber, blockHash: log.blockHash,
          transactionHash: log.transactionHash, logIndex: log.index, log, description,
        });
        this.cursorValue = { block: log.blockNumber, logIndex: log.index };
        this.cursorStore.save(this.cursorValue);
        handled++;
      }
    }
    // Nothing more up to `to`: move the cursor to the end of that block so the next round starts after it.
    if (to > this.cursorValue.block) {
      this.cursorValue = { block: to, logIndex: Number.MAX_SAFE_INTEGER };
      this.cursorStore.save(this.cursorValue);
    }
    return handled;
  }
}
