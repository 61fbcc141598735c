/** Ethereum JSON-RPC shapes (hex quantities, 0x data) of blocks, transactions, receipts and logs. */
import type { Block } from '@ethereumjs/block';
import type { TypedTransaction } from '@ethereumjs/tx';
import { bytesToHex } from '@ethereumjs/util';
import type { StoredReceipt } from './store.js';

export const q = (n: bigint | number): string => `0x${n.toString(16)}`;

export interface TxLocation {
  block: Block;
  index: number;
}

export function formatBlock(block: Block, fullTransactions: boolean, totalDifficulty?: bigint): Record<string, unknown> {
  const h = block.header;
  return {
    number: q(h.number),
    hash: bytesToHex(block.hash()),
    parentHash: bytesToHex(h.parentHash),
    nonce: bytesToHex(h.nonce),
    mixHash: bytesToHex(h.mixHash),
    sha3Uncles: bytesToHex(h.uncleHash),
    logsBloom: bytesToHex(h.logsBloom),
    transactionsRoot: bytesToHex(h.transactionsTrie),
    stateRoot: bytesToHex(h.stateRoot),
    receiptsRoot: bytesToHex(h.receiptTrie),
    miner: h.coinbase.toString(),
    difficulty: q(h.difficulty),
    totalDifficulty: totalDifficulty === undefined ? undefined : q(totalDifficulty),
    extraData: bytesToHex(h.extraData),
    size: q(block.serialize().length),
    gasLimit: q(h.gasLimit),
    gasUsed: q(h.gasUsed),
    timestamp: q(h.timestamp),
    baseFeePerGas: h.baseFeePerGas === undefined ? undefined : q(h.baseFeePerGas),
    transactions: block.transactions.map((tx, index) => (fullTransactions ? formatTx(tx, { block, index }) : bytesToHex(tx.hash()))),
    uncles: [],
  };
}

export function formatTx(tx: TypedTransaction, at?: TxLocation): Record<string, unknown> {
  const json = tx.toJSON() as Record<string, unknown>;
  const baseFee = at?.block.header.baseFeePerGas ?? 0n;
  const gasPrice = 'maxFeePerGas' in tx
    ? (at ? tx.getEffectivePriorityFee(baseFee) + baseFee : (tx.maxFeePerGas as bigint))
    : (tx as { gasPrice: bigint }).gasPrice;
  return {
    ...json,
    blockHash: at ? bytesToHex(at.block.hash()) : null,
    blockNumber: at ? q(at.block.header.number) : null,
    transactionIndex: at ? q(at.index) : null,
    from: tx.getSenderAddress().toString(),
    gas: q(tx.gasLimit),
    gasLimit: undefined,
    gasPrice: q(gasPrice),
    hash: bytesToHex(tx.hash()),
    input: bytesToHex(tx.data),
    data: undefined,
    type: q(tx.type),
    yParity: tx.type === 0 ? undefined : json.v,
  };
}

export function formatReceipt(r: StoredReceipt, txHash: string, block: Block, index: number, firstLogIndex: number): Record<string, unknown> {
  return {
    transactionHash: txHash,
    transactionIndex: q(index),
    blockHash: bytesToHex(block.hash()),
    blockNumber: q(block.header.number),
    from: r.from,
    to: r.to,
    cumulativeGasUsed: r.cumulativeGasUsed,
    gasUsed: r.gasUsed,
    effectiveGasPrice: r.effectiveGasPrice,
    contractAddress: r.contractAddress,
    logs: formatLogs(r, txHash, block, index, firstLogIndex),
    logsBloom: r.logsBloom,
    status: q(r.status),
    type: q(r.type),
  };
}

export function formatLogs(r: StoredReceipt, txHash: string, block: Block, index: number, firstLogIndex: number): Record<string, unknown>[] {
  const blockHash = bytesToHex(block.hash());
  return r.logs.map(([address, topics, data], i) => ({
    address,
    topics,
    data,
    blockNumber: q(block.header.number),
    blockHash,
    transactionHash: txHash,
    transactionIndex: q(index),
    logIndex: q(firstLogIndex + i),
    removed: false,
  }));
}
