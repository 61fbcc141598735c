/**
 * Pending transactions, by sender and nonce. Only transactions whose nonce continues the sender's
 * account nonce without a gap are executable; later ones wait (up to MAX_NONCE_GAP ahead).
 */
import type { TypedTransaction } from '@ethereumjs/tx';
import { bytesToHex } from '@ethereumjs/util';

export const MAX_POOL_SIZE = 8192;
export const MAX_NONCE_GAP = 64n;

export interface PoolEntry {
  tx: TypedTransaction;
  hash: string;
  sender: string;
  seq: number;
}

export class TxPool {
  private readonly bySender = new Map<string, Map<bigint, PoolEntry>>();
  private readonly byHash = new Map<string, PoolEntry>();
  private seq = 0;

  get size(): number {
    return this.byHash.size;
  }

  get(hash: string): PoolEntry | undefined {
    return this.byHash.get(hash);
  }

  bySenderNonce(sender: string, nonce: bigint): PoolEntry | undefined {
    return this.bySender.get(sender)?.get(nonce);
  }

  /** Adds (or replaces the same-nonce entry of) a validated transaction. */
  add(tx: TypedTransaction, sender: string): PoolEntry {
    const hash = bytesToHex(tx.hash());
    const entry: PoolEntry = { tx, hash, sender, seq: this.seq++ };
    let txs = this.bySender.get(sender);
    if (!txs) this.bySender.set(sender, (txs = new Map()));
    const replaced = txs.get(tx.nonce);
    if (replaced) this.byHash.delete(replaced.hash);
    txs.set(tx.nonce, entry);
    this.byHash.set(hash, entry);
    return entry;
  }

  remove(entry: PoolEntry): void {
    this.byHash.delete(entry.hash);
    const txs = this.bySender.get(entry.sender);
    if (txs?.get(entry.tx.nonce) === entry) txs.delete(entry.tx.nonce);
    if (txs?.size === 0) this.bySender.delete(entry.sender);
  }

  /** Next nonce of `sender` counting its executable pending transactions. */
  pendingNonce(sender: string, accountNonce: bigint): bigint {
    const txs = this.bySender.get(sender);
    let n = accountNonce;
    while (txs?.has(n)) n++;
    return n;
  }

  /**
   * Executable transactions in arrival order, per-sender nonce order kept, at most `limit`.
   * Entries with a nonce below the account nonce are dropped on the way.
   */
  async executable(limit: number, accountNonce: (sender: string) => Promise<bigint>): Promise<PoolEntry[]> {
    const runs: PoolEntry[][] = [];
    for (const [sender, txs] of this.bySender) {
      const start = await accountNonce(sender);
      for (const [nonce, entry] of txs) if (nonce < start) this.remove(entry);
      const run: PoolEntry[] = [];
      for (let n = start; txs.has(n); n++) run.push(txs.get(n)!);
      if (run.length) runs.push(run);
    }
    // merge runs by arrival order while keeping each sender's nonce order
    const out: PoolEntry[] = [];
    const heads = runs.map(() => 0);
    while (out.length < limit) {
      let best = -1;
      for (let i = 0; i < runs.length; i++) {
        const e = runs[i]![heads[i]!];
        if (e && (best < 0 || e.seq < runs[best]![heads[best]!]!.seq)) best = i;
      }
      if (best < 0) break;
      out.push(runs[best]![heads[best]!++]!);
    }
    return out;
  }

  hasExecutableCandidates(): boolean {
    return this.byHash.size > 0;
  }
}
