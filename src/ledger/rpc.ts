/**
 * Small pieces every ledger component needs on top of ethers: retrying transient RPC failures and
 * waiting for a receipt with a deadline by polling (ethers' own wait polls at the provider's
 * 4 s interval, far slower than a 1 s block period).
 */
import type { Provider, TransactionReceipt } from 'ethers';
import { isTransientRpcError } from './nonce.js';

export { isTransientRpcError } from './nonce.js';

export interface RetryOptions {
  /** Attempts in all (default 5). */
  attempts?: number;
  /** First delay in ms, doubled after each failure up to `maxDelayMs` (default 100). */
  delayMs?: number;
  maxDelayMs?: number;
  /** Which errors to retry (default: transient RPC errors — connection refused/reset, 5xx, timeouts). */
  retryable?: (err: unknown) => boolean;
}

/** Runs `fn`, retrying transient RPC errors with exponential back-off; rethrows anything else at once. */
export async function withRetry<T>(fn: () => Promise<T>, opts: RetryOptions = {}): Promise<T> {
  const attempts = opts.attempts ?? 5;
  const retryable = opts.retryable ?? isTransientRpcError;
  let delay = opts.delayMs ?? 100;
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (attempt >= attempts || !retryable(err)) throw err;
      await sleep(delay);
      delay = Math.min(delay * 2, opts.maxDelayMs ?? 5000);
    }
  }
}

export class ReceiptTimeoutError extends Error {
  readonly code = 'ERR_RECEIPT_TIMEOUT';
  constructor(readonly hash: string, timeoutMs: number) {
    super(`no receipt for ${hash} within ${timeoutMs} ms`);
  }
}

/**
 * The sender's nonce was used by another transaction, so this one can never be mined: another
 * process holding the same key sent a different transaction with that nonce and a higher fee, which
 * replaced this one in the node's pool. The caller sends again with a fresh nonce.
 */
export class TransactionReplacedError extends Error {
  readonly code = 'ERR_TX_REPLACED';
  constructor(readonly hash: string, readonly nonce: number) {
    super(`transaction ${hash} was replaced: nonce ${nonce} was used by another transaction`);
  }
}

/** How often, while a receipt is awaited, the sender's mined nonce is looked at (ms). */
const REPLACED_CHECK_MS = 1000;

/**
 * Polls for the receipt of `hash` every `pollMs` until it arrives or `timeoutMs` passes
 * (ReceiptTimeoutError; the transaction may still be mined later). Transient RPC errors while
 * polling are ignored until the deadline. An aborted `signal` stops the wait with its reason.
 * Given the `sender` and `nonce`, it also looks every second at the sender's mined nonce: once that
 * has passed `nonce` and there is still no receipt, the transaction was replaced
 * (TransactionReplacedError) — the nonce is read before the receipt, so a transaction mined in
 * between is found, not taken for replaced.
 */
export async function waitForReceipt(
  provider: Provider, hash: string,
  opts: { timeoutMs?: number; pollMs?: number; signal?: AbortSignal; sender?: string; nonce?: number } = {},
): Promise<TransactionReceipt> {
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const pollMs = opts.pollMs ?? 50;
  const deadline = Date.now() + timeoutMs;
  let checkAt = Date.now() + REPLACED_CHECK_MS;
  for (;;) {
    opts.signal?.throwIfAborted();
    try {
      const watchNonce = opts.sender !== undefined && opts.nonce !== undefined && Date.now() >= checkAt;
      const mined = watchNonce ? await provider.getTransactionCount(opts.sender!, 'latest') : undefined;
      const receipt = await provider.getTransactionReceipt(hash);
      if (receipt) return receipt;
      if (watchNonce) {
        checkAt = Date.now() + REPLACED_CHECK_MS;
        if (mined! > opts.nonce!) throw new TransactionReplacedError(hash, opts.nonce!);
      }
    } catch (err) {
      if (!isTransientRpcError(err)) throw err;
    }
    if (Date.now() + pollMs > deadline) throw new ReceiptTimeoutError(hash, timeoutMs);
    await sleep(pollMs, opts.signal);
  }
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}
