/**
 * Standard Ethereum JSON-RPC over HTTP for the embedded node: what ethers v6 and operators use, with
 * batches and geth-compatible errors (code 3 + revert data for reverts, -32000 for rejected transactions).
 */
import type { Block } from '@ethereumjs/block';
import { bytesToHex, createAddressFromString, hexToBytes, setLengthLeft, type PrefixedHexString } from '@ethereumjs/util';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { RpcError, invalidParams } from './errors.js';
import { formatBlock, formatLogs, formatReceipt, formatTx, q } from './format.js';
import type { CallRequest, ChainLogger, ChainNode } from './node.js';

const MAX_BODY_BYTES = 10 * 1024 * 1024;
const MAX_BATCH = 1000;
const MAX_LOGS = 10_000;
const MAX_FEE_HISTORY = 1024;

type Params = unknown[];
type Handler = (params: Params) => Promise<unknown>;

const HEX = /^0x[0-9a-fA-F]*$/;
const ADDRESS = /^0x[0-9a-fA-F]{40}$/;
const HASH = /^0x[0-9a-fA-F]{64}$/;

function hexParam(v: unknown, name: string): PrefixedHexString {
  if (typeof v !== 'string' || !HEX.test(v)) throw invalidParams(`${name} must be 0x-prefixed hex`);
  return v as PrefixedHexString;
}
function addressParam(v: unknown, name = 'address'): string {
  if (typeof v !== 'string' || !ADDRESS.test(v)) throw invalidParams(`${name} must be a 20-byte 0x address`);
  return v.toLowerCase();
}
function hashParam(v: unknown, name = 'hash'): string {
  if (typeof v !== 'string' || !HASH.test(v)) throw invalidParams(`${name} must be a 32-byte 0x hash`);
  return v.toLowerCase();
}
function quantity(v: unknown, name: string): bigint {
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return BigInt(v);
  if (typeof v !== 'string' || !/^0x[0-9a-fA-F]+$/.test(v)) throw invalidParams(`${name} must be a hex quantity`);
  return BigInt(v);
}
function callParam(v: unknown): CallRequest {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw invalidParams('call object expected');
  const o = v as Record<string, unknown>;
  const req: CallRequest = {};
  if (o.from !== undefined && o.from !== null) req.from = addressParam(o.from, 'from');
  if (o.to !== undefined && o.to !== null) req.to = addressParam(o.to, 'to');
  if (o.data !== undefined && o.data !== null) req.data = hexParam(o.data, 'data');
  if (o.input !== undefined && o.input !== null) req.input = hexParam(o.input, 'input');
  if (o.value !== undefined && o.value !== null) req.value = q(quantity(o.value, 'value'));
  if (o.gas !== undefined && o.gas !== null) req.gas = q(quantity(o.gas, 'gas'));
  return req;
}

export class RpcHandlers {
  private readonly methods: Record<string, Handler>;

  constructor(private readonly node: ChainNode) {
    const n = node;
    this.methods = {
      web3_clientVersion: async () => 'GlucoGuard-embedded-clique/0.1.0/ethereumjs',
      eth_chainId: async () => q(n.chainId),
      net_version: async () => String(n.chainId),
      net_listening: async () => true,
      net_peerCount: async () => '0x0',
      eth_syncing: async () => false,
      eth_accounts: async () => [],
      eth_blockNumber: async () => q(n.head.header.number),
      eth_getBlockByNumber: async ([tag, full]) => {
        const block = await this.blockAt(tag, false);
        return block ? this.formatBlockWithTd(block, full === true) : null;
      },
      eth_getBlockByHash: async ([hash, full]) => {
        const block = await this.blockByHash(hashParam(hash, 'block hash'));
        return block ? this.formatBlockWithTd(block, full === true) : null;
      },
      eth_getBalance: async ([address, tag]) => {
        const addr = createAddressFromString(addressParam(address));
        const block = await this.stateBlock(tag);
        return q((await n.withStateAt(block, (vm) => vm.stateManager.getAccount(addr)))?.balance ?? 0n);
      },
      eth_getCode: async ([address, tag]) => {
        const addr = createAddressFromString(addressParam(address));
        const block = await this.stateBlock(tag);
        return bytesToHex(await n.withStateAt(block, (vm) => vm.stateManager.getCode(addr)));
      },
      eth_getStorageAt: async ([address, slot, tag]) => {
        const addr = createAddressFromString(addressParam(address));
        const key = setLengthLeft(hexToBytes(q(quantity(slot, 'slot')) as PrefixedHexString), 32);
        const block = await this.stateBlock(tag);
        const value = await n.withStateAt(block, (vm) => vm.stateManager.getStorage(addr, key));
        return bytesToHex(setLengthLeft(value, 32));
      },
      eth_getTransactionCount: async ([address, tag]) => {
        const addr = addressParam(address);
        if (tag === 'pending') return q(await n.pendingNonce(addr));
        const block = await this.stateBlock(tag);
        const a = createAddressFromString(addr);
        return q((await n.withStateAt(block, (vm) => vm.stateManager.getAccount(a)))?.nonce ?? 0n);
      },
      eth_gasPrice: async () => q(n.head.header.calcNextBaseFee()),
      eth_maxPriorityFeePerGas: async () => '0x0',
      eth_feeHistory: async ([count, newest, percentiles]) => this.feeHistory(count, newest, percentiles),
      eth_estimateGas: async ([call, tag]) => q(await n.estimateGas(callParam(call), await this.stateBlock(tag))),
      eth_call: async ([call, tag]) => n.call(callParam(call), await this.stateBlock(tag)),
      eth_sendRawTransaction: async ([raw]) => n.sendRawTransaction(hexToBytes(hexParam(raw, 'transaction'))),
      eth_getTransactionByHash: async ([hash]) => this.transactionByHash(hashParam(hash)),
      eth_getTransactionReceipt: async ([hash]) => this.receipt(hashParam(hash)),
      eth_getLogs: async ([filter]) => this.logs(filter),
      clique_getSigners: async ([tag]) => {
        const block = await this.blockAt(tag ?? 'latest', false);
        if (!block) throw new RpcError(-32000, 'unknown block');
        try {
          return n.signers(block.header.number + 1n);
        } catch {
          throw new RpcError(-32000, 'signer history not available for that block');
        }
      },
      clique_propose: async ([address, auth]) => {
        if (typeof auth !== 'boolean') throw invalidParams('auth must be a boolean');
        n.propose(addressParam(address), auth);
        return null;
      },
    };
  }

  /** Handles one parsed JSON-RPC request object; returns the response object (undefined for notifications). */
  async handle(request: unknown, log: ChainLogger): Promise<Record<string, unknown> | undefined> {
    const r = request as { jsonrpc?: unknown; id?: unknown; method?: unknown; params?: unknown };
    const id = typeof r === 'object' && r !== null && 'id' in r ? r.id ?? null : null;
    const isNotification = typeof r === 'object' && r !== null && !('id' in r);
    if (typeof r !== 'object' || r === null || r.jsonrpc !== '2.0' || typeof r.method !== 'string'
      || (r.params !== undefined && !Array.isArray(r.params))) {
      return { jsonrpc: '2.0', id, error: { code: -32600, message: 'invalid request' } };
    }
    const handler = Object.hasOwn(this.methods, r.method) ? this.methods[r.method] : undefined;
    let response: Record<string, unknown>;
    if (!handler) {
      response = { jsonrpc: '2.0', id, error: { code: -32601, message: `the method ${r.method} does not exist/is not available` } };
    } else {
      try {
        const result = await handler((r.params as Params | undefined) ?? []);
        response = { jsonrpc: '2.0', id, result: result === undefined ? null : result };
      } catch (err) {
        if (err instanceof RpcError) {
          response = { jsonrpc: '2.0', id, error: { code: err.code, message: err.message, ...(err.data !== undefined ? { data: err.data } : {}) } };
        } else {
          log.error(`chain rpc: ${r.method} failed: ${(err as Error).stack ?? String(err)}`);
          response = { jsonrpc: '2.0', id, error: { code: -32603, message: 'internal error' } };
        }
      }
    }
    return isNotification ? undefined : response;
  }

  private headJson: { block: Block; full: boolean; json: Record<string, unknown> } | undefined;

  private async formatBlockWithTd(block: Block, full: boolean): Promise<Record<string, unknown>> {
    // ethers asks for the latest block before every send (fee data): answer repeats from memory
    if (this.headJson && this.headJson.block === block && this.headJson.full === full) return this.headJson.json;
    const td = await this.node.blockchain.getTotalDifficulty(block.hash(), block.header.number).catch(() => undefined);
    const json = formatBlock(block, full, td);
    if (block === this.node.head) this.headJson = { block, full, json };
    return json;
  }

  /** Blocks are immutable; keeping recent ones saves decoding them (and their transactions) again. */
  private readonly recentBlocks = new Map<string, Block>();

  private async blockByHash(hash: string): Promise<Block | undefined> {
    const head = this.node.head;
    if (bytesToHex(head.hash()) === hash) return head;
    const hit = this.recentBlocks.get(hash);
    if (hit) return hit;
    try {
      const block = await this.node.blockchain.getBlock(hexToBytes(hash as PrefixedHexString));
      this.recentBlocks.set(hash, block);
      if (this.recentBlocks.size > 128) this.recentBlocks.delete(this.recentBlocks.keys().next().value!);
      return block;
    } catch {
      return undefined;
    }
  }

  private async blockByNumber(n: bigint): Promise<Block | undefined> {
    if (n > this.node.head.header.number) return undefined;
    if (n === this.node.head.header.number) return this.node.head;
    try {
      return await this.node.blockchain.getBlock(n);
    } catch {
      return undefined;
    }
  }

  /** Resolves a block tag, number or EIP-1898 object. */
  private async blockAt(tag: unknown, _forState: boolean): Promise<Block | undefined> {
    if (tag === undefined || tag === null || tag === 'latest' || tag === 'pending' || tag === 'safe' || tag === 'finalized') {
      return this.node.head;
    }
    if (tag === 'earliest') return this.blockByNumber(0n);
    if (typeof tag === 'object' && !Array.isArray(tag)) {
      const o = tag as { blockHash?: unknown; blockNumber?: unknown };
      if (o.blockHash !== undefined) return this.blockByHash(hashParam(o.blockHash, 'blockHash'));
      if (o.blockNumber !== undefined) return this.blockAt(o.blockNumber, _forState);
    }
    if (typeof tag === 'string' && /^0x[0-9a-fA-F]{64}$/.test(tag)) return this.blockByHash(tag.toLowerCase());
    return this.blockByNumber(quantity(tag, 'block'));
  }

  private async stateBlock(tag: unknown): Promise<Block> {
    const block = await this.blockAt(tag, true);
    if (!block) throw new RpcError(-32000, 'header not found');
    return block;
  }

  private async transactionByHash(hash: string): Promise<Record<string, unknown> | null> {
    const pooled = this.node.pool.get(hash);
    if (pooled) return formatTx(pooled.tx);
    const loc = await this.node.receipts.txLocation(hash);
    if (!loc) return null;
    const block = await this.blockByHash(loc.blockHash);
    const tx = block?.transactions[loc.index];
    return block && tx ? formatTx(tx, { block, index: loc.index }) : null;
  }

  private async receipt(hash: string): Promise<Record<string, unknown> | null> {
    const loc = await this.node.receipts.txLocation(hash);
    if (!loc) return null;
    const block = await this.blockByHash(loc.blockHash);
    const receipts = await this.node.receipts.receipts(loc.blockHash);
    const r = receipts?.[loc.index];
    if (!block || !r || block.header.number > this.node.head.header.number) return null;
    const firstLogIndex = receipts!.slice(0, loc.index).reduce((sum, x) => sum + x.logs.length, 0);
    return formatReceipt(r, hash, block, loc.index, firstLogIndex);
  }

  private async logs(filter: unknown): Promise<Record<string, unknown>[]> {
    if (typeof filter !== 'object' || filter === null || Array.isArray(filter)) throw invalidParams('filter object expected');
    const f = filter as { fromBlock?: unknown; toBlock?: unknown; blockHash?: unknown; address?: unknown; topics?: unknown };
    const addresses = f.address === undefined || f.address === null ? undefined
      : new Set((Array.isArray(f.address) ? f.address : [f.address]).map((a) => addressParam(a)));
    if (f.topics !== undefined && f.topics !== null && !Array.isArray(f.topics)) throw invalidParams('topics must be an array');
    const topics = ((f.topics as unknown[] | undefined) ?? []).map((t, i) => {
      if (t === null) return null;
      return new Set((Array.isArray(t) ? t : [t]).map((x) => hashParam(x, `topics[${i}]`)));
    });
    const matches = (address: string, logTopics: string[]): boolean =>
      (!addresses || addresses.has(address)) && topics.every((set, i) => set === null || (logTopics[i] !== undefined && set.has(logTopics[i]!)));

    let blocks: AsyncIterable<{ hash: string }> | { hash: string }[];
    if (f.blockHash !== undefined && f.blockHash !== null) {
      if (f.fromBlock !== undefined || f.toBlock !== undefined) throw invalidParams('blockHash excludes fromBlock/toBlock');
      const hash = hashParam(f.blockHash, 'blockHash');
      if (!(await this.blockByHash(hash))) throw new RpcError(-32000, 'unknown block');
      blocks = [{ hash }];
    } else {
      const from = (await this.blockAt(f.fromBlock ?? 'latest', false))?.header.number;
      const to = (await this.blockAt(f.toBlock ?? 'latest', false))?.header.number ?? this.node.head.header.number;
      if (from === undefined || from > to) return [];
      blocks = this.node.receipts.blocksWithLogs(from, to);
    }
    const out: Record<string, unknown>[] = [];
    for await (const { hash } of blocks) {
      const receipts = await this.node.receipts.receipts(hash);
      if (!receipts || !receipts.some((r) => r.logs.some(([a, t]) => matches(a, t)))) continue;
      const block = await this.blockByHash(hash);
      if (!block) continue;
      let logIndex = 0;
      receipts.forEach((r, i) => {
        const all = formatLogs(r, bytesToHex(block.transactions[i]!.hash()), block, i, logIndex);
        logIndex += r.logs.length;
        for (const log of all) if (matches(log.address as string, log.topics as string[])) out.push(log);
      });
      if (out.length > MAX_LOGS) throw new RpcError(-32005, `query returned more than ${MAX_LOGS} results`);
    }
    return out;
  }

  private async feeHistory(countRaw: unknown, newestRaw: unknown, percentilesRaw: unknown): Promise<Record<string, unknown>> {
    let count = Number(quantity(countRaw, 'blockCount'));
    if (count > MAX_FEE_HISTORY) count = MAX_FEE_HISTORY;
    const newest = await this.blockAt(newestRaw, false);
    if (!newest) throw new RpcError(-32000, 'unknown block');
    const percentiles = Array.isArray(percentilesRaw) ? percentilesRaw.map(Number) : undefined;
    const oldest = newest.header.number - BigInt(count) + 1n > 0n ? newest.header.number - BigInt(count) + 1n : 0n;
    const baseFees: string[] = [];
    const ratios: number[] = [];
    const rewards: string[][] = [];
    for (let n = oldest; n <= newest.header.number; n++) {
      const block = (await this.blockByNumber(n))!;
      const baseFee = block.header.baseFeePerGas ?? 0n;
      baseFees.push(q(baseFee));
      ratios.push(Number(block.header.gasUsed) / Number(block.header.gasLimit));
      if (percentiles) {
        const tips = block.transactions.map((tx) => tx.getEffectivePriorityFee(baseFee)).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
        rewards.push(percentiles.map((p) => q(tips.length ? tips[Math.min(tips.length - 1, Math.floor((p / 100) * tips.length))]! : 0n)));
      }
    }
    baseFees.push(q(newest.header.calcNextBaseFee()));
    return { oldestBlock: q(oldest), baseFeePerGas: baseFees, gasUsedRatio: ratios, ...(percentiles ? { reward: rewards } : {}) };
  }
}

/** Serves the handlers over HTTP POST on host:port (port 0 picks a free one). */
export async function serveRpc(handlers: RpcHandlers, host: string, port: number, log: ChainLogger): Promise<{ server: Server; url: string }> {
  const server = createServer((req, res) => void respond(handlers, req, res, log));
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const shownHost = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return { server, url: `http://${shownHost}:${address.port}` };
}

async function respond(handlers: RpcHandlers, req: IncomingMessage, res: ServerResponse, log: ChainLogger): Promise<void> {
  const send = (status: number, body: unknown): void => {
    const text = body === undefined ? '' : JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  };
  if (req.method !== 'POST') {
    res.setHeader('allow', 'POST');
    return send(405, { jsonrpc: '2.0', id: null, error: { code: -32600, message: 'JSON-RPC requests are POSTed' } });
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) return send(413, { jsonrpc: '2.0', id: null, error: { code: -32600, message: 'request too large' } });
    chunks.push(chunk as Buffer);
  }
  let body: unknown;
  try {
    body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    return send(200, { jsonrpc: '2.0', id: null, error: { code: -32700, message: 'parse error' } });
  }
  if (Array.isArray(body)) {
    if (body.length === 0 || body.length > MAX_BATCH) {
      return send(200, { jsonrpc: '2.0', id: null, error: { code: -32600, message: `batch must hold 1 to ${MAX_BATCH} requests` } });
    }
    const responses = [];
    // Sequential, so a batch sees a consistent order (e.g. send then receipt).
    for (const item of body) {
      const r = await handlers.handle(item, log);
      if (r) responses.push(r);
    }
    return responses.length ? send(200, responses) : send(204, undefined);
  }
  const r = await handlers.handle(body, log);
  return r ? send(200, r) : send(204, undefined);
}
