/**
 * KeyValueStore on Redis (node-redis 5), shared by every proxy replica (REDIS_URL).
 *
 * Fail closed: the offline queue is disabled, so while Redis is unreachable every call throws
 * ERR_UNAVAILABLE at once instead of waiting; the client keeps reconnecting in the background.
 * Pub/sub runs on a duplicated connection (a subscribed Redis connection cannot run commands).
 */
import { createClient, type RedisClientType } from 'redis';
import { unavailable } from '../errors.js';
import type { Logger } from '../log.js';
import type { KeyValueStore } from './port.js';

/** INCR that sets the expiry only when it creates the counter (fixed windows). */
const INCREMENT_SCRIPT = `local v = redis.call('INCR', KEYS[1])
if v == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return v`;

export interface RedisOptions {
  /** Prefix of every key and channel, so several deployments can share one Redis. */
  prefix?: string;
  logger?: Logger;
  /** Connect timeout in ms. */
  connectTimeoutMs?: number;
}

export class RedisKeyValueStore implements KeyValueStore {
  readonly description: { adapter: 'redis'; location: string };
  private subscriber: RedisClientType | undefined;
  private readonly prefix: string;

  private constructor(private readonly client: RedisClientType, url: string, private readonly options: RedisOptions) {
    this.prefix = options.prefix ?? 'glucoguard:';
    this.description = { adapter: 'redis', location: redactUrl(url) };
  }

  /** Connects; throws ERR_UNAVAILABLE when Redis does not answer within the connect timeout. */
  static async connect(url: string, options: RedisOptions = {}): Promise<RedisKeyValueStore> {
    const connectTimeout = options.connectTimeoutMs ?? 5000;
    const client = createClient({
      url,
      disableOfflineQueue: true,
      socket: { connectTimeout, reconnectStrategy: (retries: number) => Math.min(100 * 2 ** retries, 5000) },
    }) as RedisClientType;
    const store = new RedisKeyValueStore(client, url, options);
    let lastLogged = 0;
    client.on('error', (err: Error) => {
      // The client emits an error per failed reconnect; log at most one every 10 s.
      if (Date.now() - lastLogged > 10_000) {
        lastLogged = Date.now();
        options.logger?.warn({ err: err.message, redis: store.description.location }, 'redis unavailable');
      }
    });
    try {
      await withTimeout(client.connect(), connectTimeout);
    } catch (err) {
      client.destroy();
      throw unavailable(`Redis at ${store.description.location} is unreachable`, err);
    }
    return store;
  }

  async get(key: string): Promise<string | undefined> {
    return (await this.run(() => this.client.get(this.k(key)))) ?? undefined;
  }

  async set(key: string, value: string, ttlMs?: number): Promise<void> {
    await this.run(() => this.client.set(this.k(key), value, ttlMs ? { PX: Math.max(1, Math.ceil(ttlMs)) } : undefined));
  }

  async setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean> {
    const reply = await this.run(() => this.client.set(this.k(key), value, { NX: true, PX: Math.max(1, Math.ceil(ttlMs)) }));
    return reply === 'OK';
  }

  async take(key: string): Promise<string | undefined> {
    return (await this.run(() => this.client.getDel(this.k(key)))) ?? undefined;
  }

  async delete(key: string): Promise<void> {
    await this.run(() => this.client.del(this.k(key)));
  }

  async increment(key: string, ttlMs: number): Promise<number> {
    const reply = await this.run(() => this.client.eval(INCREMENT_SCRIPT, { keys: [this.k(key)], arguments: [String(Math.max(1, Math.ceil(ttlMs)))] }));
    return Number(reply);
  }

  async publish(channel: string, message: string): Promise<void> {
    await this.run(() => this.client.publish(this.k(channel), message));
  }

  async subscribe(channel: string, handler: (message: string) => void): Promise<() => Promise<void>> {
    const subscriber = await this.subscriberConnection();
    const listener = (message: string) => handler(message);
    await this.run(() => subscriber.subscribe(this.k(channel), listener));
    return async () => {
      if (subscriber.isOpen) await this.run(() => subscriber.unsubscribe(this.k(channel), listener));
    };
  }

  async close(): Promise<void> {
    const closing = [this.client, this.subscriber].filter((c): c is RedisClientType => !!c && c.isOpen)
      .map((c) => c.close().catch(() => c.destroy()));
    await Promise.all(closing);
  }

  private k(key: string): string {
    return this.prefix + key;
  }

  subscriptionLive(): boolean {
    return this.client.isReady && this.subscriber?.isReady === true;
  }

  private async subscriberConnection(): Promise<RedisClientType> {
    if (!this.subscriber) {
      const subscriber = this.client.duplicate() as RedisClientType;
      subscriber.on('error', (err: Error) => this.options.logger?.warn({ err: err.message }, 'redis subscriber error'));
      this.subscriber = subscriber;
      try {
        await subscriber.connect();
      } catch (err) {
        this.subscriber = undefined;
        subscriber.destroy();
        throw unavailable('Redis is unreachable', err);
      }
    }
    return this.subscriber;
  }

  /** Every failure to reach Redis is ERR_UNAVAILABLE, so callers deny rather than allow. */
  private async run<T>(command: () => Promise<T>): Promise<T> {
    if (!this.client.isReady) throw unavailable('Redis is unreachable');
    try {
      return await command();
    } catch (err) {
      throw unavailable('Redis command failed', err);
    }
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
    }),
  ]);
}

function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.href;
  } catch {
    return 'redis';
  }
}
