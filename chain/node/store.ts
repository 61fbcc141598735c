/**
 * What EthereumJS's Blockchain does not keep: receipts per block, a transaction-hash index and an
 * index of blocks that emitted logs. Written in the same LevelDB batch as the block and its state,
 * so after a crash a stored block always has its receipts.
 */
import type { RootBatchOp, Sublevel } from './level.js';

/** One log: [address, topics, data], hex strings. */
export type StoredLog = [string, string[], string];

/** A receipt as stored (hex strings; numbers as hex quantities). */
export interface StoredReceipt {
  from: string;
  to: string | null;
  contractAddress: string | null;
  status: 0 | 1;
  cumulativeGasUsed: string;
  gasUsed: string;
  effectiveGasPrice: string;
  type: number;
  logsBloom: string;
  logs: StoredLog[];
}

const pad = (n: bigint): string => n.toString(16).padStart(16, '0');

/** Blocks whose receipts are also kept in memory: a client asks for a receipt right after its block. */
const RECENT_BLOCKS = 256;

export class ReceiptStore {
  private readonly recentBlocks = new Map<string, { txHashes: string[]; receipts: StoredReceipt[] }>();
  private readonly recentTxs = new Map<string, { blockHash: string; index: number }>();

  constructor(private readonly level: Sublevel) {}

  /** Keeps a block's receipts in memory once its batch is written (the newest RECENT_BLOCKS blocks). */
  remember(blockHash: string, txHashes: string[], receipts: StoredReceipt[]): void {
    this.recentBlocks.set(blockHash, { txHashes, receipts });
    txHashes.forEach((h, index) => this.recentTxs.set(h, { blockHash, index }));
    if (this.recentBlocks.size > RECENT_BLOCKS) {
      const [oldest, { txHashes: gone }] = this.recentBlocks.entries().next().value!;
      this.recentBlocks.delete(oldest);
      for (const h of gone) if (this.recentTxs.get(h)?.blockHash === oldest) this.recentTxs.delete(h);
    }
  }

  /**
   * The writes recording a block's receipts (`txHashes[i]` belongs to `receipts[i]`), for the batch
   * that also stores the block and its state.
   */
  blockOps(blockHash: string, blockNumber: bigint, txHashes: string[], receipts: StoredReceipt[]): RootBatchOp[] {
    const put = (key: string, value: string): RootBatchOp => ({ type: 'put', sublevel: this.level, key, value, keyEncoding: 'utf8', valueEncoding: 'utf8' });
    const ops = [put(`r${blockHash}`, JSON.stringify(receipts))];
    txHashes.forEach((h, i) => ops.push(put(`t${h}`, `${blockHash}:${i}`)));
    if (receipts.some((r) => r.logs.length > 0)) ops.push(put(`l${pad(blockNumber)}`, blockHash));
    return ops;
  }

  async receipts(blockHash: string): Promise<StoredReceipt[] | undefined> {
    const recent = this.recentBlocks.get(blockHash);
    if (recent) return recent.receipts;
    const raw = await this.level.get(`r${blockHash}`);
    return raw === undefined ? undefined : (JSON.parse(raw) as StoredReceipt[]);
  }

  /** Where a transaction was included: block hash and index, if known. */
  async txLocation(txHash: string): Promise<{ blockHash: string; index: number } | undefined> {
    const recent = this.recentTxs.get(txHash);
    if (recent) return recent;
    const raw = await this.level.get(`t${txHash}`);
    if (raw === undefined) return undefined;
    const [blockHash, index] = raw.split(':');
    return { blockHash: blockHash!, index: Number(index) };
  }

  /** Numbers and hashes of blocks in [from, to] that emitted at least one log, ascending. */
  async *blocksWithLogs(from: bigint, to: bigint): AsyncGenerator<{ number: bigint; hash: string }> {
    for await (const [key, hash] of this.level.iterator({ gte: `l${pad(from)}`, lte: `l${pad(to)}` })) {
      yield { number: BigInt(`0x${key.slice(1)}`), hash };
    }
  }

  async getMeta(name: string): Promise<string | undefined> {
    return this.level.get(`m${name}`);
  }

  async putMeta(name: string, value: string): Promise<void> {
    await this.level.put(`m${name}`, value);
  }
}
