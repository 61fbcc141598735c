/**
 * Fixed-window rate limits through the KV port, shared by every replica: token endpoint and login,
 * per client and per IP. A KV outage throws ERR_UNAVAILABLE (fail closed).
 */
import type { KeyValueStore } from '../kv/port.js';
import { tooManyRequests } from './oauth-error.js';

export interface RateLimits {
  /** Window length in ms. */
  windowMs: number;
  tokenPerIp: number;
  tokenPerClient: number;
  loginPerIp: number;
  loginPerClient: number;
}

export const DEFAULT_RATE_LIMITS: RateLimits = {
  windowMs: 60_000,
  tokenPerIp: 1200,
  tokenPerClient: 600,
  loginPerIp: 30,
  loginPerClient: 100,
};

export type LimitName = 'tokenPerIp' | 'tokenPerClient' | 'loginPerIp' | 'loginPerClient';

export class RateLimiter {
  constructor(private readonly kv: KeyValueStore, private readonly limits: RateLimits, private readonly now: () => number) {}

  /** Counts one hit of `name` for `who`; throws a 429 OAuthError past the limit. */
  async hit(name: LimitName, who: string): Promise<void> {
    const window = Math.floor(this.now() / this.limits.windowMs);
    const count = await this.kv.increment(`smart:rl:${name}:${who}:${window}`, this.limits.windowMs);
    if (count > this.limits[name]) {
      const retryAfter = Math.ceil(((window + 1) * this.limits.windowMs - this.now()) / 1000);
      throw tooManyRequests(Math.max(1, retryAfter));
    }
  }
}
