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
 * Polls for the receipt of `hash` every `pollMs` until it arrives or `timeoutMs` passes
 * (ReceiptTimeoutError; the transaction may still be mined later). Transient RPC errors while
 * polling are ignored until the deadline. An aborted `signal` stops the wait with its reason.
 */
export async function waitForReceipt(
  provider: Provider, hash: string, opts: { timeoutMs?: number; pollMs?: number; signal?: AbortSignal } = {},
): Promise<TransactionReceipt> {
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const pollMs = opts.pollMs ?? 50;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    opts.signal?.throwIfAborted();
    try {
      const receipt = await provider.getTransactionReceipt(hash);
      if (receipt) return receipt;
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
