/**
 * The KV port: small shared state that proxy replicas must agree on — single-use authorization
 * codes, refresh tokens, token revocations, `jti` replay cache, rate-limit counters, cached consent
 * decisions — and pub/sub for invalidation. Adapters: `embedded.ts` (default: a SQLite file in the
 * data directory, survives restarts, shared by the processes on that directory), `redis.ts`
 * (REDIS_URL, shared by replicas) and `memory.ts` (GLUCOGUARD_KV=memory: one process, forgotten at
 * exit; tests). Only src/app.ts constructs them.
 *
 * Every method that cannot reach its backend throws ERR_UNAVAILABLE so callers fail closed.
 */
export interface KeyValueStore {
  /** Adapter name and where its data lives, for the start-up log. */
  readonly description: { adapter: 'embedded' | 'memory' | 'redis'; location: string };
  get(key: string): Promise<string | undefined>;
  /** Sets a value; `ttlMs` makes it expire. */
  set(key: string, value: string, ttlMs?: number): Promise<void>;
  /** Sets only when absent; true when this call set it (replay caches, locks). */
  setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean>;
  /** Gets and deletes atomically (single-use codes); undefined when absent. */
  take(key: string): Promise<string | undefined>;
  delete(key: string): Promise<void>;
  /** Increments a counter, creating it with `ttlMs` when absent; returns the new value (rate limits). */
  increment(key: string, ttlMs: number): Promise<number>;
  /** Publishes to every subscriber in every replica. */
  publish(channel: string, message: string): Promise<void>;
  /** Subscribes; returns a function that unsubscribes. */
  subscribe(channel: string, handler: (message: string) => void): Promise<() => Promise<void>>;
  /**
   * True while published messages are being received (the subscriber connection and the command
   * connection are both up): callers may then rely on pub/sub for invalidation between their own
   * reads. False when a message could be missed right now.
   */
  subscriptionLive(): boolean;
  close(): Promise<void>;
}
