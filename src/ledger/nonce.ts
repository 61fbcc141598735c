/**
 * One sender per authority account: nonces are handed out in order under a lock, so concurrent sends
 * never collide, and a send that fails before reaching the node gives its nonce back, so no gap is left.
 * Transactions are signed here and broadcast raw: a broadcast retried after a transient RPC error that
 * the node had in fact accepted ("already known") is recognised by its hash instead of being sent twice.
 */
import {
  type BaseWallet, type FeeData, JsonRpcApiProvider, type Provider, Transaction, type TransactionRequest, TransactionResponse, isError,
} from 'ethers';

export interface NonceManagerOptions {
  /** Attempts per transaction for transient RPC errors (default 5). */
  attempts?: number;
  /** First retry delay in ms, doubled each attempt (default 100). */
  retryDelayMs?: number;
}

const TRANSIENT = new Set(['NETWORK_ERROR', 'SERVER_ERROR', 'TIMEOUT']);

/**
 * How long fee data is reused. ethers offers `maxFeePerGas = 2 × base fee + tip`, and EIP-1559 lets
 * the base fee rise by at most 12.5 % per block, so such an offer stays valid for at least five full
 * blocks; one second is one block at most on the chains GlucoGuard uses.
 */
const FEE_DATA_TTL_MS = 1000;

/** True for RPC failures worth retrying (connection refused, 5xx, timeouts). */
export function isTransientRpcError(err: unknown): boolean {
  if (typeof err === 'object' && err !== null && TRANSIENT.has((err as { code?: string }).code ?? '')) return true;
  const code = (err as { cause?: { code?: string }; code?: string })?.cause?.code ?? (err as { code?: string })?.code;
  return code === 'ECONNREFUSED' || code === 'ECONNRESET' || code === 'ETIMEDOUT';
}

export class NonceManager {
  private next: number | undefined;
  private lock: Promise<unknown> = Promise.resolve();
  private fees: { at: number; data: Promise<FeeData> } | undefined;
  private readonly attempts: number;
  private readonly retryDelayMs: number;

  private readonly provider: Provider;

  constructor(readonly wallet: BaseWallet, opts: NonceManagerOptions = {}) {
    if (!wallet.provider) throw new Error('NonceManager needs a wallet connected to a provider');
    this.provider = wallet.provider;
    this.attempts = opts.attempts ?? 5;
    this.retryDelayMs = opts.retryDelayMs ?? 100;
  }

  get address(): string {
    return this.wallet.address;
  }

  /** Forgets the cached nonce (and fee data); the next send asks the node ("pending"). */
  reset(): void {
    this.next = undefined;
    this.fees = undefined;
  }

  /**
   * Fills in gas and fees (outside the lock, so estimates run in parallel; the gas estimate and the fee
   * data are asked for together, one JSON-RPC batch when the provider batches), then assigns the next
   * nonce, signs and broadcasts under the lock. Rejects with the node's error when the transaction is
   * refused (e.g. a revert found by estimateGas); the nonce is then reused by the next send.
   */
  async send(request: TransactionRequest): Promise<TransactionResponse> {
    const { nonce: _ignored, ...rest } = request;
    const needsFees = rest.gasPrice == null && (rest.maxFeePerGas == null || rest.maxPriorityFeePerGas == null);
    const [gasLimit, fees] = await Promise.all([
      rest.gasLimit ?? this.wallet.estimateGas(rest),
      needsFees ? this.feeData() : undefined,
    ]);
    const filled: TransactionRequest = { ...rest, gasLimit };
    if (fees && rest.type !== 0 && rest.type !== 1 && fees.maxFeePerGas != null && fees.maxPriorityFeePerGas != null) {
      filled.type = 2;
      filled.maxFeePerGas ??= fees.maxFeePerGas;
      filled.maxPriorityFeePerGas ??= fees.maxPriorityFeePerGas;
    } else if (fees) {
      filled.gasPrice = fees.gasPrice;
    }
    // the placeholder nonce keeps ethers from asking the node for one; the real one is set under the lock
    const populated = await this.wallet.populateTransaction({ ...filled, nonce: 0 });
    delete populated.nonce;
    return this.exclusive(() => this.broadcast(populated));
  }

  /** The provider's fee data, asked for at most once per FEE_DATA_TTL_MS (concurrent sends share one request). */
  private feeData(): Promise<FeeData> {
    const now = Date.now();
    if (!this.fees || now - this.fees.at > FEE_DATA_TTL_MS) {
      const data = this.provider.getFeeData();
      this.fees = { at: now, data };
      data.catch(() => {
        if (this.fees?.data === data) this.fees = undefined;
      });
    }
    return this.fees.data;
  }

  private async broadcast(tx: TransactionRequest): Promise<TransactionResponse> {
    const provider = this.provider;
    let delay = this.retryDelayMs;
    for (let attempt = 1; ; attempt++) {
      const nonce = this.next ?? (await provider.getTransactionCount(this.wallet.address, 'pending'));
      const signed = Transaction.from(await this.wallet.signTransaction({ ...tx, nonce }));
      const hash = signed.hash!;
      try {
        const response = await this.submit(signed);
        this.next = nonce + 1;
        return response;
      } catch (err) {
        this.fees = undefined; // a refusal may be about the fee (e.g. below a risen base fee): ask again next time
        if (/already known/i.test(String((err as Error).message))) {
          this.next = nonce + 1;
          const known = await provider.getTransaction(hash);
          if (known) return known;
        }
        if (isError(err, 'NONCE_EXPIRED') || isError(err, 'REPLACEMENT_UNDERPRICED')) {
          // someone else used this nonce (another process with the same key, or a restart): resync
          this.next = undefined;
        } else if (!isTransientRpcError(err)) {
          throw err;
        }
        if (attempt >= this.attempts) throw err;
        await new Promise((r) => setTimeout(r, delay));
        delay *= 2;
      }
    }
  }

  /**
   * Broadcasts a transaction this manager signed. Over JSON-RPC the response is built from what was
   * signed: ethers' `broadcastTransaction` would recover the sender from the signature again (a pure-JS
   * secp256k1 recovery, the largest client cost per transaction) and ask for the block number.
   */
  private async submit(signed: Transaction): Promise<TransactionResponse> {
    const provider = this.provider;
    if (!(provider instanceof JsonRpcApiProvider)) return provider.broadcastTransaction(signed.serialized);
    const hash = await provider.send('eth_sendRawTransaction', [signed.serialized]);
    if (String(hash).toLowerCase() !== signed.hash) throw new Error(`the node returned transaction hash ${hash} for ${signed.hash}`);
    // the same fields ethers fills in for a broadcast transaction (no index, no gasPrice for EIP-1559) until it is mined
    return new TransactionResponse({
      blockNumber: null, blockHash: null, hash: signed.hash, index: undefined as unknown as number, type: signed.type ?? 2, to: signed.to,
      from: this.wallet.address, nonce: signed.nonce, gasLimit: signed.gasLimit, gasPrice: signed.gasPrice as bigint,
      maxPriorityFeePerGas: signed.maxPriorityFeePerGas, maxFeePerGas: signed.maxFeePerGas, maxFeePerBlobGas: null,
      data: signed.data, value: signed.value, chainId: signed.chainId, signature: signed.signature!, accessList: signed.accessList,
      blobVersionedHashes: null, authorizationList: null,
    }, provider);
  }

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.lock.then(fn, fn);
    this.lock = result.catch(() => undefined);
    return result;
  }
}

/** Waits for a transaction's receipt; rejects with ethers' TIMEOUT error after `timeoutMs`. */
export async function waitForReceipt(provider: Provider, hash: string, timeoutMs: number) {
  const receipt = await provider.waitForTransaction(hash, 1, timeoutMs);
  if (!receipt) throw new Error(`no receipt for ${hash}`);
  return receipt;
}
