/**
 * The embedded single-signer Clique (EIP-225) node: EthereumJS Blockchain (with CliqueConsensus
 * validation) + VM over LevelDB, a transaction pool and a sealer. JSON-RPC lives in rpc.ts.
 *
 * Invariants: `vm.stateManager` is at the state of `head` whenever no block is being built; a block's
 * state, receipts and the block itself (with its Clique snapshot) reach LevelDB in one atomic batch, so
 * after kill -9 the head always has its state and receipts.
 */
import { type Block, type BlockHeader, createBlock, cliqueSigner } from '@ethereumjs/block';
import { createBlockchain, type Blockchain } from '@ethereumjs/blockchain';
import { type Common, ConsensusAlgorithm, parseGethGenesisState } from '@ethereumjs/common';
import { chainCommon } from './common.js';
import { MerklePatriciaTrie } from '@ethereumjs/mpt';
import { Caches } from '@ethereumjs/statemanager';
import { createTx, createTxFromRLP, type TypedTransaction, type TypedTxData } from '@ethereumjs/tx';
import {
  Address, bytesToHex, concatBytes, createAddressFromPrivateKey, createAddressFromString, createZeroAddress, hexToBytes,
  type PrefixedHexString,
} from '@ethereumjs/util';
import { buildBlock, createVM, runTx, type RunTxResult, type VM } from '@ethereumjs/vm';
import { ClassicLevel } from 'classic-level';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { RpcError, reverted, txRejected } from './errors.js';
import { BLOCK_GAS_LIMIT, cliqueGenesis, type GethGenesis } from './genesis.js';
import { chainDir, loadOrCreateSignerKey } from './keys.js';
import { SealerCliqueConsensus } from './clique.js';
import { LevelDB, type RootBatchOp } from './level.js';
import { MAX_NONCE_GAP, MAX_POOL_SIZE, type PoolEntry, TxPool } from './pool.js';
import { CachedStorageStateManager } from './state.js';
import { ReceiptStore, type StoredReceipt } from './store.js';

export interface ChainLogger {
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
}

export interface ChainNodeOptions {
  dataDir: string;
  /** Seconds between blocks while transactions are pending; 0 seals at once (tests). */
  blockPeriod: number;
  chainId: number;
  /** Largest number of transactions in one block. */
  maxTxsPerBlock?: number;
  logger?: ChainLogger;
}

/** A call or gas estimate request (eth_call / eth_estimateGas object). */
export interface CallRequest {
  from?: string;
  to?: string | null;
  data?: string;
  input?: string;
  value?: string;
  gas?: string;
}

const CLIQUE_VANITY = new TextEncoder().encode('glucoguard'.padEnd(32, '\0'));
const NONCE_AUTH = new Uint8Array(8).fill(0xff);
const NONCE_DROP = new Uint8Array(8);
const SEND_WAIT_MS = 30_000;
const quiet: ChainLogger = { info() {}, warn() {}, error() {} };

export class ChainNode {
  readonly pool = new TxPool();
  readonly signer: Address;
  head!: Block;
  private readonly proposals = new Map<string, boolean>();
  private sealTimer: { cancel(): void } | undefined;
  private sealing: Promise<void> | undefined;
  private lastSealAt = 0;
  private closed = false;
  private readonly waiters = new Map<string, () => void>();
  private callVm!: VM;
  private callRoot: Uint8Array | undefined;
  private callLock: Promise<unknown> = Promise.resolve();
  private watchCalls = false;
  private sawSubcall = false;
  private readonly periodMs: number;
  private readonly maxTxs: number;
  private readonly log: ChainLogger;
  /** Set when a block's batch could not be written: memory is ahead of disk, so nothing more is sealed. */
  private storageFailure: Error | undefined;

  private constructor(
    readonly common: Common,
    readonly genesis: GethGenesis,
    private readonly level: ClassicLevel<string, string>,
    readonly blockchain: Blockchain,
    readonly vm: VM,
    readonly receipts: ReceiptStore,
    private readonly signerKey: Uint8Array,
    opts: ChainNodeOptions,
    private readonly stateDb: LevelDB,
    private readonly chainDb: LevelDB,
  ) {
    this.signer = createAddressFromPrivateKey(signerKey);
    this.periodMs = Math.max(opts.blockPeriod, genesis.config.clique.period) * 1000;
    this.maxTxs = opts.maxTxsPerBlock ?? 200;
    this.log = opts.logger ?? quiet;
  }

  private get clique(): SealerCliqueConsensus {
    return this.blockchain.consensus as SealerCliqueConsensus;
  }

  get chainId(): number {
    return this.genesis.config.chainId;
  }

  /** Opens (creating on first start) the chain in `<dataDir>/chain`. */
  static async open(opts: ChainNodeOptions): Promise<ChainNode> {
    const dir = chainDir(opts.dataDir);
    const signerKey = loadOrCreateSignerKey(opts.dataDir);
    const signer = createAddressFromPrivateKey(signerKey);
    const genesisFile = path.join(dir, 'genesis.json');
    let genesis: GethGenesis;
    if (existsSync(genesisFile)) {
      genesis = JSON.parse(readFileSync(genesisFile, 'utf8')) as GethGenesis;
      if (genesis.config.chainId !== opts.chainId) {
        throw new Error(`chain data in ${dir} belongs to chain id ${genesis.config.chainId}, not ${opts.chainId}`);
      }
    } else {
      genesis = cliqueGenesis({ chainId: opts.chainId, signer: signer.toString(), period: Math.floor(opts.blockPeriod), timestamp: Math.floor(Date.now() / 1000) });
      writeFileSync(genesisFile, `${JSON.stringify(genesis, null, 2)}\n`, { mode: 0o600 });
    }
    const common = chainCommon(genesis);
    if (common.consensusAlgorithm() !== ConsensusAlgorithm.Clique) throw new Error('genesis is not a Clique genesis');

    // LevelDB makes its files as the umask says; an owner-only folder keeps them to this user either way
    mkdirSync(path.join(dir, 'db'), { recursive: true, mode: 0o700 });
    const level = new ClassicLevel<string, string>(path.join(dir, 'db'), { keyEncoding: 'utf8', valueEncoding: 'utf8' });
    try {
      await level.open();
    } catch (err) {
      const cause = (err as { cause?: { code?: string } }).cause;
      if (cause?.code === 'LEVEL_LOCKED') throw new Error(`chain database ${path.join(dir, 'db')} is in use by another process`);
      throw err;
    }
    try {
      const genesisState = parseGethGenesisState(genesis as never);
      const chainDb = new LevelDB(level.sublevel('b'));
      const consensus = new SealerCliqueConsensus(signer);
      const blockchain = await createBlockchain({
        db: chainDb as never,
        common,
        genesisState,
        validateBlocks: true,
        validateConsensus: true,
        consensusDict: { [ConsensusAlgorithm.Clique]: consensus },
      }).catch((err: unknown) => {
        // EthereumJS's own words name neither the directory nor what to do
        if (!/genesis block in the DB has a different hash/i.test((err as Error).message ?? '')) throw err;
        throw new Error(`the embedded chain database ${path.join(dir, 'db')} is not the chain of ${genesisFile}: `
          + 'the database was lost or replaced (copied from another installation?). Restore the chain directory from a backup of this data directory; '
          + 'a new chain would hold none of the anchored roots and consent grants', { cause: err });
      });
      // A block this node has just built from its own state was checked while building (transactions
      // on entry and by the VM, header fields from the parent): validating it again would re-derive its
      // transaction trie and re-read its parent. Any other block gets the full validation.
      const validateBlock = blockchain.validateBlock.bind(blockchain);
      blockchain.validateBlock = async (block) => (consensus.isOwn(block) ? undefined : validateBlock(block));
      // One bounded node cache, in the adapter, shared by the state trie, storage tries and the call VM.
      const stateDb = new LevelDB(level.sublevel('s'), 30_000);
      const trie = new MerklePatriciaTrie({
        db: stateDb as never,
        useKeyHashing: true,
        valueEncoding: 'view',
        cacheSize: 0,
        common,
      });
      // Bounded LRU caches: memory stays flat however long the chain grows.
      const caches = new Caches({ account: { size: 10_000, type: 'lru' }, storage: { size: 20_000, type: 'lru' }, code: { size: 100, type: 'lru' } });
      const stateManager = new CachedStorageStateManager({ trie, common, caches });
      // The EVM asks for the Clique signer to answer COINBASE.
      const vm = await createVM({ common, blockchain, stateManager, evmOpts: { cliqueSigner: (h) => cliqueSigner(h as unknown as BlockHeader) } });
      const head = await blockchain.getCanonicalHeadBlock();
      if (!(await stateManager.hasStateRoot(head.header.stateRoot))) {
        if (head.header.number !== 0n) throw new Error(`state of head block ${head.header.number} is missing from ${dir}`);
        await stateManager.generateCanonicalGenesis(genesisState);
      }
      await stateManager.setStateRoot(head.header.stateRoot);
      const node = new ChainNode(common, genesis, level, blockchain, vm, new ReceiptStore(level.sublevel('x') as never), signerKey, opts, stateDb, chainDb);
      node.head = head;
      // No canonical number → hash entry exists above this node's head (blocks are only appended, each in
      // one atomic batch), so putting a block need not ask LevelDB for stale ones: two misses per block.
      const numberToHash = blockchain.safeNumberToHash.bind(blockchain);
      blockchain.safeNumberToHash = async (n) => (n > node.head.header.number ? false : numberToHash(n));
      node.callVm = await vm.shallowCopy(false);
      // eth_estimateGas needs to know whether a call made inner calls (see estimateGas)
      node.callVm.evm.events?.on('beforeMessage', (message: { depth: number }) => {
        if (node.watchCalls && message.depth > 0) node.sawSubcall = true;
      });
      return node;
    } catch (err) {
      await level.close();
      throw err;
    }
  }

  /** Current Clique signers (sorted, checksummed lowercase hex). */
  signers(blockNumber = this.head.header.number + 1n): string[] {
    return this.clique.cliqueActiveSigners(blockNumber).map((a) => a.toString());
  }

  /** Queues a Clique vote to add (auth) or drop a signer in the blocks this node seals. */
  propose(address: string, auth: boolean): void {
    this.proposals.set(createAddressFromString(address).toString(), auth);
  }

  // ---- state reads ---------------------------------------------------------------------------

  /** Nonce of an account in the head state (used by the sealer, which runs only between blocks). */
  private async accountNonce(address: string): Promise<bigint> {
    const account = await this.vm.stateManager.getAccount(createAddressFromString(address));
    return account?.nonce ?? 0n;
  }

  /** Next nonce of `address` counting its pooled transactions (eth_getTransactionCount "pending"). */
  async pendingNonce(address: string): Promise<bigint> {
    const addr = createAddressFromString(address);
    const account = await this.withStateAt(this.head, (vm) => vm.stateManager.getAccount(addr));
    return this.pool.pendingNonce(addr.toString(), account?.nonce ?? 0n);
  }

  /** Runs `fn` on a VM positioned at `block`'s state; calls are serialised and never change state. */
  async withStateAt<T>(block: Block, fn: (vm: VM) => Promise<T>): Promise<T> {
    const run = async (): Promise<T> => {
      const vm = this.callVm;
      if (this.callRoot === undefined || !equal(this.callRoot, block.header.stateRoot)) {
        if (!(await vm.stateManager.hasStateRoot(block.header.stateRoot))) throw new RpcError(-32000, 'state not available');
        // An outer checkpoint stays open while positioned, so reverting a call never flushes to the trie.
        if (this.callRoot !== undefined) await vm.stateManager.revert();
        this.callRoot = undefined;
        await vm.stateManager.setStateRoot(block.header.stateRoot);
        await vm.stateManager.checkpoint();
        this.callRoot = block.header.stateRoot;
      }
      await vm.stateManager.checkpoint();
      try {
        return await fn(vm);
      } finally {
        await vm.stateManager.revert();
      }
    };
    const result = this.callLock.then(run, run);
    this.callLock = result.catch(() => undefined);
    return result;
  }

  /** eth_call: the return data, or a code-3 error carrying the revert data. */
  async call(req: CallRequest, block: Block): Promise<string> {
    const result = await this.simulate(req, block, req.gas ? BigInt(req.gas) : BLOCK_GAS_LIMIT);
    const ex = result.execResult.exceptionError;
    if (ex) {
      if (ex.error === 'revert') throw reverted(bytesToHex(result.execResult.returnValue), decodeReason(result.execResult.returnValue));
      throw new RpcError(-32000, ex.error);
    }
    return bytesToHex(result.execResult.returnValue);
  }

  /** eth_estimateGas: the smallest gas limit (within a few %) that succeeds. */
  async estimateGas(req: CallRequest, block: Block): Promise<bigint> {
    const cap = req.gas ? BigInt(req.gas) : BLOCK_GAS_LIMIT;
    const first = await this.simulate(req, block, cap, true);
    const ex = first.execResult.exceptionError;
    if (ex) {
      if (ex.error === 'revert') throw reverted(bytesToHex(first.execResult.returnValue), decodeReason(first.execResult.returnValue));
      throw new RpcError(-32000, `gas required exceeds allowance (${cap}) or always failing transaction: ${ex.error}`);
    }
    // Gas at the peak of execution: refunds (capped at 1/5 in London) are only credited at the end.
    const refund = first.gasRefund ?? 0n;
    const peak = refund * 4n <= first.totalGasSpent ? first.totalGasSpent + refund : (first.totalGasSpent * 5n + 3n) / 4n;
    // Without inner calls the peak (+ the 2300 SSTORE stipend check) is enough; with them the 63/64 rule
    // (EIP-150) can need more, so verify and search.
    if (!this.sawSubcall) return peak + 2_300n < cap ? peak + 2_300n : cap;
    const ok = async (gas: bigint): Promise<boolean> => !(await this.simulate(req, block, gas)).execResult.exceptionError;
    let hi = (peak * 64n) / 63n + 2_300n;
    if (hi > cap) hi = cap;
    if (await ok(hi)) return hi;
    let lo = hi;
    hi = cap;
    while (hi - lo > hi / 100n + 1n) {
      const mid = (lo + hi) / 2n;
      if (await ok(mid)) hi = mid;
      else lo = mid;
    }
    return hi;
  }

  private async simulate(req: CallRequest, block: Block, gasLimit: bigint, watchCalls = false): Promise<RunTxResult> {
    const data = req.input ?? req.data;
    const txData: TypedTxData = {
      type: 2,
      to: (req.to ?? undefined) as PrefixedHexString | undefined,
      data: (data ?? '0x') as PrefixedHexString,
      value: BigInt(req.value ?? 0),
      gasLimit,
      maxFeePerGas: 0n,
      maxPriorityFeePerGas: 0n,
      nonce: 0n,
    };
    const tx = createTx(txData, { common: this.common, freeze: false });
    const from = req.from ? createAddressFromString(req.from) : createZeroAddress();
    (tx as { getSenderAddress: () => Address }).getSenderAddress = () => from;
    const next = createBlock({
      header: {
        number: block.header.number + 1n,
        parentHash: block.hash(),
        timestamp: nextTimestamp(block.header.timestamp),
        gasLimit: block.header.gasLimit,
        baseFeePerGas: 0n,
        coinbase: this.signer,
        difficulty: 2n,
      },
    }, { common: this.common, skipConsensusFormatValidation: true });
    return this.withStateAt(block, async (vm) => {
      if (watchCalls) this.sawSubcall = false;
      this.watchCalls = watchCalls;
      try {
        return await runTx(vm, {
          tx, block: next, skipNonce: true, skipBalance: true, skipBlockGasLimitValidation: true, skipHardForkValidation: true,
        });
      } finally {
        this.watchCalls = false;
      }
    });
  }

  // ---- transactions ----------------------------------------------------------------------------

  /**
   * Validates and pools a signed transaction. In instant mode (period 0) resolves once the transaction
   * is in a block, so a client's first receipt poll finds it.
   */
  async sendRawTransaction(raw: Uint8Array): Promise<string> {
    if (this.closed) throw new RpcError(-32000, 'node is shutting down');
    if (this.storageFailure) throw new RpcError(-32000, 'node cannot write its database; restart it');
    let tx: TypedTransaction;
    try {
      tx = createTxFromRLP(raw, { common: this.common });
    } catch (err) {
      throw new RpcError(-32602, `invalid transaction: ${(err as Error).message.split('\n')[0]}`);
    }
    if (!tx.isSigned()) throw txRejected('transaction is not signed');
    if (tx.type === 0 && !tx.supports(155)) {
      throw txRejected('only replay-protected (EIP-155) transactions allowed over RPC');
    }
    const hash = bytesToHex(tx.hash());
    if (this.pool.get(hash)) throw txRejected('already known');
    if (await this.receipts.txLocation(hash)) throw txRejected('already known');
    let senderAddr: Address;
    try {
      senderAddr = tx.getSenderAddress();
    } catch {
      throw txRejected('invalid sender');
    }
    const sender = senderAddr.toString();
    const errors = tx.getValidationErrors();
    if (errors.length) throw txRejected(`invalid transaction: ${errors[0]}`);
    if (tx.gasLimit > this.head.header.gasLimit) throw txRejected('exceeds block gas limit');
    const baseFee = this.head.header.calcNextBaseFee();
    const maxFee = 'maxFeePerGas' in tx ? (tx.maxFeePerGas as bigint) : (tx as { gasPrice: bigint }).gasPrice;
    if (maxFee < baseFee) throw txRejected(`max fee per gas less than block base fee: maxFeePerGas: ${maxFee}, baseFee: ${baseFee}`);
    const account = await this.withStateAt(this.head, (vm) => vm.stateManager.getAccount(senderAddr));
    const nonce = account?.nonce ?? 0n;
    if (tx.nonce < nonce) throw txRejected(`nonce too low: next nonce ${nonce}, tx nonce ${tx.nonce}`);
    if (tx.nonce > nonce + MAX_NONCE_GAP) throw txRejected(`nonce too high: next nonce ${nonce}, tx nonce ${tx.nonce}`);
    const cost = tx.gasLimit * maxFee + tx.value;
    if ((account?.balance ?? 0n) < cost) throw txRejected('insufficient funds for gas * price + value');
    const existing = this.pool.bySenderNonce(sender, tx.nonce);
    if (existing) {
      const oldFee = 'maxFeePerGas' in existing.tx ? (existing.tx.maxFeePerGas as bigint) : (existing.tx as { gasPrice: bigint }).gasPrice;
      if (maxFee * 10n < oldFee * 11n) throw txRejected('replacement transaction underpriced');
    } else if (this.pool.size >= MAX_POOL_SIZE) {
      throw txRejected('txpool is full');
    }
    this.pool.add(tx, sender);
    const included = this.periodMs === 0 ? this.waitForInclusion(hash) : undefined;
    this.scheduleSeal();
    if (included) await included;
    return hash;
  }

  private waitForInclusion(hash: string): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiters.delete(hash);
        resolve();
      }, SEND_WAIT_MS);
      this.waiters.set(hash, () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  // ---- sealing ---------------------------------------------------------------------------------

  private scheduleSeal(delayMs?: number): void {
    if (this.closed || this.storageFailure || this.sealing || this.sealTimer || this.pool.size === 0) return;
    const wait = delayMs ?? Math.max(0, this.lastSealAt + this.periodMs - Date.now());
    const seal = (): void => {
      this.sealTimer = undefined;
      this.sealing = this.sealOnce()
        .then((retryMs) => {
          this.sealing = undefined;
          this.scheduleSeal(retryMs);
        });
    };
    // setTimeout(0) waits at least 1 ms: in instant mode that was a millisecond added to every transaction
    if (wait > 0) {
      const timer = setTimeout(seal, wait);
      this.sealTimer = { cancel: () => clearTimeout(timer) };
    } else {
      const immediate = setImmediate(seal);
      this.sealTimer = { cancel: () => clearImmediate(immediate) };
    }
  }

  /** Seals one block from the pool; returns a retry delay when sealing is not possible now. */
  private async sealOnce(): Promise<number | undefined> {
    const parent = this.head;
    const number = parent.header.number + 1n;
    const signers = this.signers(number);
    const index = signers.indexOf(this.signer.toString());
    if (index < 0) {
      this.log.warn(`chain: ${this.signer} is not a Clique signer at block ${number}; transactions stay pending`);
      return 5_000;
    }
    if (!this.clique.maySeal(this.signer, number)) {
      // EIP-225: with N signers one may seal at most one of any floor(N/2)+1 consecutive blocks.
      this.log.warn(`chain: ${this.signer} signed too recently to seal block ${number}; waiting for another signer`);
      return Math.max(this.periodMs, 1_000);
    }
    const entries = await this.pool.executable(this.maxTxs, (s) => this.accountNonce(s));
    if (entries.length === 0) return undefined;
    this.lastSealAt = Date.now();
    try {
      const block = await this.buildAndPut(parent, number, signers, index, entries);
      if (block) this.log.info(`chain: sealed block ${number} with ${block.transactions.length} transaction(s)`);
      return undefined;
    } catch (err) {
      await this.vm.stateManager.setStateRoot(parent.header.stateRoot);
      this.log.error(`chain: sealing block ${number} failed: ${(err as Error).message}`);
      return Math.max(this.periodMs, 1_000);
    }
  }

  private async buildAndPut(parent: Block, number: bigint, signers: string[], index: number, entries: PoolEntry[]): Promise<Block | undefined> {
    const epoch = BigInt(this.genesis.config.clique.epoch);
    const isEpoch = number % epoch === 0n;
    let coinbase = createZeroAddress();
    let nonce: Uint8Array = NONCE_DROP;
    if (!isEpoch) {
      for (const [addr, auth] of this.proposals) {
        const isSigner = signers.includes(addr);
        if (auth === isSigner) {
          this.proposals.delete(addr); // already done
          continue;
        }
        coinbase = createAddressFromString(addr);
        nonce = auth ? NONCE_AUTH : NONCE_DROP;
        break;
      }
    }
    // vanity, the signer list on epoch blocks, and room for the seal that buildBlock fills in
    const extraData = concatBytes(CLIQUE_VANITY, ...(isEpoch ? signers.map((s) => hexToBytes(s as PrefixedHexString)) : []), new Uint8Array(65));
    // One outer checkpoint for the whole block: its trie nodes are handed to the state DB on commit
    // instead of one write per updated account or slot. Storage tries are separate trie instances
    // outside that checkpoint, so the state DB also holds writes until the block's batch.
    this.stateDb.bufferWrites();
    await this.vm.stateManager.checkpoint();
    let committed = false;
    try {
      return await this.buildInCheckpoint(parent, number, entries, { coinbase, nonce, extraData, signers, index }, () => {
        committed = true;
      });
    } finally {
      if (!committed) await this.vm.stateManager.revert();
      // written by the block's batch by now, or abandoned with the block
      this.stateDb.discardWrites();
      this.chainDb.discardWrites();
    }
  }

  private async buildInCheckpoint(
    parent: Block, number: bigint, entries: PoolEntry[],
    h: { coinbase: Address; nonce: Uint8Array; extraData: Uint8Array; signers: string[]; index: number },
    onCommitted: () => void,
  ): Promise<Block | undefined> {
    const { coinbase, nonce, extraData, signers, index } = h;
    const builder = await buildBlock(this.vm, {
      parentBlock: parent,
      headerData: {
        number,
        timestamp: nextTimestamp(parent.header.timestamp),
        gasLimit: parent.header.gasLimit,
        difficulty: BigInt(number % BigInt(signers.length)) === BigInt(index) ? 2n : 1n,
        coinbase,
        nonce,
        extraData,
      },
      blockOpts: { cliqueSigner: this.signerKey, putBlockIntoBlockchain: false },
    });
    const included: PoolEntry[] = [];
    const results: RunTxResult[] = [];
    for (const entry of entries) {
      if (builder.gasUsed + entry.tx.gasLimit > parent.header.gasLimit) continue; // next block
      try {
        results.push(await builder.addTransaction(entry.tx));
        included.push(entry);
      } catch (err) {
        this.pool.remove(entry);
        this.log.warn(`chain: dropped transaction ${entry.hash}: ${(err as Error).message.split('\n')[0]}`);
        this.wake(entry.hash);
      }
    }
    if (included.length === 0) {
      await builder.revert();
      await this.vm.stateManager.setStateRoot(parent.header.stateRoot);
      return undefined;
    }
    const { block } = await builder.build();
    await this.vm.stateManager.commit();
    onCommitted();
    const baseFee = block.header.baseFeePerGas ?? 0n;
    const stored: StoredReceipt[] = included.map((entry, i) => {
      const r = results[i]!;
      const tx = entry.tx;
      const receipt = r.receipt as { status?: 0 | 1; cumulativeBlockGasUsed: bigint; bitvector: Uint8Array; logs: [Uint8Array, Uint8Array[], Uint8Array][] };
      return {
        from: entry.sender,
        to: tx.to?.toString() ?? null,
        contractAddress: r.createdAddress?.toString() ?? null,
        status: receipt.status ?? 1,
        cumulativeGasUsed: hex(receipt.cumulativeBlockGasUsed),
        gasUsed: hex(r.totalGasSpent),
        effectiveGasPrice: hex(tx.getEffectivePriorityFee(baseFee) + baseFee),
        type: tx.type,
        logsBloom: bytesToHex(receipt.bitvector),
        logs: receipt.logs.map(([address, topics, data]) => [bytesToHex(address), topics.map((t) => bytesToHex(t)), bytesToHex(data)]),
      };
    });
    const blockHash = bytesToHex(block.hash());
    // The block, its indexes and the Clique snapshot update are held too, and written with the state
    // and the receipts in one atomic batch: after a crash a block is there with everything, or not at all.
    this.chainDb.bufferWrites();
    this.clique.trust(block);
    try {
      await this.blockchain.putBlock(block);
    } finally {
      this.clique.forget(block);
    }
    const txHashes = included.map((e) => e.hash);
    await this.writeBlock([
      ...this.stateDb.takeWrites(),
      ...this.receipts.blockOps(blockHash, number, txHashes, stored),
      ...this.chainDb.takeWrites(),
    ]);
    this.receipts.remember(blockHash, txHashes, stored);
    this.head = block;
    if (!coinbase.isZero() && this.signers(number + 1n).includes(coinbase.toString()) === (nonce === NONCE_AUTH)) {
      this.proposals.delete(coinbase.toString());
    }
    for (const entry of included) {
      this.pool.remove(entry);
      this.wake(entry.hash);
    }
    return block;
  }

  private async writeBlock(ops: RootBatchOp[]): Promise<void> {
    try {
      await this.level.batch(ops as never);
    } catch (err) {
      // the blockchain in memory already has this block: sealing on would build on a head that is not on disk
      this.storageFailure = err as Error;
      this.log.error(`chain: writing a block to the database failed; sealing stopped, restart the node: ${(err as Error).message}`);
      throw err;
    }
  }

  private wake(hash: string): void {
    const waiter = this.waiters.get(hash);
    if (waiter) {
      this.waiters.delete(hash);
      waiter();
    }
  }

  /** Signer of a sealed block header (Clique seal). */
  static blockSigner(block: Block): string {
    return cliqueSigner(block.header).toString();
  }

  /** Stops sealing, waits for a block being sealed, and closes the database. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.sealTimer?.cancel();
    this.sealTimer = undefined;
    await this.sealing;
    await this.callLock;
    for (const hash of [...this.waiters.keys()]) this.wake(hash);
    await this.level.close();
  }
}

/** Clique needs strictly increasing timestamps: wall clock, or parent + 1 when blocks come faster. */
function nextTimestamp(parent: bigint): bigint {
  const now = BigInt(Math.floor(Date.now() / 1000));
  return now > parent ? now : parent + 1n;
}

function hex(n: bigint): string {
  return `0x${n.toString(16)}`;
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/** Decodes `Error(string)` revert data into its reason, if that is what it is. */
function decodeReason(data: Uint8Array): string | undefined {
  if (data.length < 68 || bytesToHex(data.subarray(0, 4)) !== '0x08c379a0') return undefined;
  const len = Number(BigInt(bytesToHex(data.subarray(36, 68))));
  if (68 + len > data.length) return undefined;
  return new TextDecoder().decode(data.subarray(68, 68 + len));
}
