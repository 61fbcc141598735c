/**
 * What EthereumJS's Blockchain does not keep: receipts per block, a transaction-hash index and an
 * index of blocks that emitted logs. Written in one LevelDB batch before the block itself is put,
 * so after a crash a stored block always has its receipts (a receipt without its block is ignored).
 */
import type { Sublevel } from './level.js';

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

export class ReceiptStore {
  constructor(private readonly level: Sublevel) {}

  /** Records the receipts of a block about to be put; `txHashes[i]` belongs to `receipts[i]`. */
  async putBlock(blockHash: string, blockNumber: bigint, txHashes: string[], receipts: StoredReceipt[]): Promise<void> {
    const ops: { type: 'put'; key: string; value: string }[] = [
      { type: 'put', key: `r${blockHash}`, value: JSON.stringify(receipts) },
    ];
    txHashes.forEach((h, i) => ops.push({ type: 'put', key: `t${h}`, value: `${blockHash}:${i}` }));
    if (receipts.some((r) => r.logs.length > 0)) ops.push({ type: 'put', key: `l${pad(blockNumber)}`, value: blockHash });
    await this.level.batch(ops);
  }

  async receipts(blockHash: string): Promise<StoredReceipt[] | undefined> {
    const raw = await this.level.get(`r${blockHash}`);
    return raw === undefined ? undefined : (JSON.parse(raw) as StoredReceipt[]);
  }

  /** Where a transaction was included: block hash and index, if known. */
  async txLocation(txHash: string): Promise<{ blockHash: string; index: number } | undefined> {
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
