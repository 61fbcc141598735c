/**
 * Fixed-window rate limits through the KV port, shared by every replica: token endpoint per client
 * and per IP, authorization requests started and sign-in per IP, sign-in per account. A KV outage
 * throws ERR_UNAVAILABLE (fail closed).
 *
 * No limit counts what anyone may send for everyone: a count of all sign-ins of an app let a few
 * addresses posting wrong passwords shut every user of it (all patients, for the portal) out.
 * Guessing from many addresses is bounded per account instead — its wrong passwords, so that its
 * user's own sign-ins never use it up — which slows down only the account guessed at.
 */
import type { KeyValueStore } from '../kv/port.js';
import { tooManyRequests } from './oauth-error.js';

export interface RateLimits {
  /** Window length in ms. */
  windowMs: number;
  tokenPerIp: number;
  tokenPerClient: number;
  /** Authorization requests started (each is stored until sign-in, authorize.ts). */
  authorizePerIp: number;
  loginPerIp: number;
  /** Wrong passwords for one username, from any address and app (then every attempt is refused). */
  loginFailuresPerUser: number;
}

export const DEFAULT_RATE_LIMITS: RateLimits = {
  windowMs: 60_000,
  tokenPerIp: 1200,
  tokenPerClient: 600,
  authorizePerIp: 300,
  loginPerIp: 30,
  loginFailuresPerUser: 20,
};

export type LimitName = 'tokenPerIp' | 'tokenPerClient' | 'authorizePerIp' | 'loginPerIp';
export type FailureLimitName = 'loginFailuresPerUser';

export class RateLimiter {
  constructor(private readonly kv: KeyValueStore, private readonly limits: RateLimits, private readonly now: () => number) {}

  /** Counts one hit of `name` for `who`; throws a 429 OAuthError past the limit. */
  async hit(name: LimitName, who: string): Promise<void> {
    const window = this.window();
    const count = await this.kv.increment(`smart:rl:${name}:${who}:${window}`, this.limits.windowMs);
    if (count > this.limits[name]) throw tooManyRequests(this.retryAfter(window));
  }

  /** Throws a 429 OAuthError while `who` has used up `name`'s failures of this window (see failed). */
  async checkFailures(name: FailureLimitName, who: string): Promise<void> {
    const window = this.window();
    if (await this.kv.get(`smart:rl:${name}:${who}:${window}:over`)) throw tooManyRequests(this.retryAfter(window));
  }

  /** Counts one failure of `who`; at the limit, checkFailures refuses `who` until the window ends. */
  async failed(name: FailureLimitName, who: string): Promise<void> {
    const window = this.window();
    // "over" is a value beside the counter: the KV port has no read of a counter
    const count = await this.kv.increment(`smart:rl:${name}:${who}:${window}`, this.limits.windowMs);
    if (count >= this.limits[name]) await this.kv.set(`smart:rl:${name}:${who}:${window}:over`, '1', this.limits.windowMs);
  }

  private window(): number {
    return Math.floor(this.now() / this.limits.windowMs);
  }

  private retryAfter(window: number): number {
    return Math.max(1, Math.ceil(((window + 1) * this.limits.windowMs - this.now()) / 1000));
  }
}
