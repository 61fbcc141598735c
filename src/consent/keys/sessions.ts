/**
 * Key unlocks held for a signed-in patient, server-side only. At sign-in the patient's password is
 * stretched into an `unlock` (wrap.ts) and kept here under the OAuth grant id (`gid`) of the tokens
 * that sign-in produces, so any replica can sign for that session and nothing else can. The unlock
 * never reaches the browser or the logs; in the KV port (Redis when shared) it is sealed under a key
 * derived from the key root, so a KV dump alone does not open a patient's key.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { deriveKey } from '../../keys.js';
import { tooManyRequests } from '../../errors.js';
import type { KeyValueStore } from '../../kv/port.js';

interface Stored {
  /** The patient's pseudonym: an unlock only ever serves the patient it was made for. */
  p: string;
  iv: string;
  tag: string;
  data: string;
}

export class KeySessions {
  private readonly sealKey: Buffer;

  constructor(private readonly kv: KeyValueStore, rootKey: string, private readonly now: () => number = Date.now) {
    this.sealKey = deriveKey(rootKey, 'key-session');
  }

  async put(gid: string, pseudonym: string, unlock: Buffer, ttlMs: number): Promise<void> {
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', this.sealKey, iv);
    cipher.setAAD(Buffer.from(`${gid}|${pseudonym}`));
    const data = Buffer.concat([cipher.update(unlock), cipher.final()]);
    const stored: Stored = { p: pseudonym, iv: iv.toString('base64'), tag: cipher.getAuthTag().toString('base64'), data: data.toString('base64') };
    await this.kv.set(this.key(gid), JSON.stringify(stored), ttlMs);
  }

  /** The unlock of this session for this patient, or undefined (no session, expired, another patient). */
  async get(gid: string | undefined, pseudonym: string): Promise<Buffer | undefined> {
    if (!gid) return undefined;
    const raw = await this.kv.get(this.key(gid));
    if (!raw) return undefined;
    const stored = JSON.parse(raw) as Stored;
    if (stored.p !== pseudonym) return undefined;
    try {
      const decipher = createDecipheriv('aes-256-gcm', this.sealKey, Buffer.from(stored.iv, 'base64'));
      decipher.setAAD(Buffer.from(`${gid}|${pseudonym}`));
      decipher.setAuthTag(Buffer.from(stored.tag, 'base64'));
      return Buffer.concat([decipher.update(Buffer.from(stored.data, 'base64')), decipher.final()]);
    } catch {
      return undefined;
    }
  }

  /**
   * Counts an attempt at a patient's secret (current password, recovery code): each costs a scrypt,
   * so a token holder may not guess on or load the CPU. 429 past `limit` in any `windowMs`, counted
   * as a sliding window: this window's attempts plus the previous window's, weighted by how much of
   * it still lies within `windowMs` of now. A fixed window would allow twice the limit across a
   * window boundary (and forget 10 attempts made a second before it).
   */
  async countAttempt(pseudonym: string, limit = 10, windowMs = 15 * 60_000): Promise<void> {
    const now = this.now();
    const window = Math.floor(now / windowMs);
    const count = await this.kv.increment(`keys:attempts:${pseudonym}:${window}`, 2 * windowMs);
    const previous = Number(await this.kv.get(`keys:attempts:${pseudonym}:${window - 1}`) ?? 0);
    const stillWithin = 1 - (now - window * windowMs) / windowMs;
    if (count + previous * stillWithin > limit) throw tooManyRequests('Too many attempts: wait a few minutes and try again');
  }

  async drop(gid: string): Promise<void> {
    await this.kv.delete(this.key(gid));
  }

  private key(gid: string): string {
    return `keys:unlock:${createHash('sha256').update(gid).digest('base64url')}`;
  }
}
