/**
 * Wrapping a custodial private key (AES-256-GCM) under a key-encryption key (KEK) that needs two
 * things: the server's key root (src/keys.ts) AND a secret the server does not keep — the patient's password
 * (the "login wrap") or a recovery code shown to the patient once (the "recovery wrap"). The
 * secret goes through scrypt first, so a stolen key file plus the key root still leaves an
 * offline password guess at scrypt cost per try.
 *
 *   unlock = scrypt(secret, salt, N=2^15, r=8, p=1)                       (32 bytes)
 *   KEK    = HMAC-SHA256(HKDF(root, "custodial-<kind>:<pseudonym>"), unlock)
 *   wrap   = AES-256-GCM(KEK, privateKey, aad = "<pseudonym>|<kind>")
 */
import { createCipheriv, createDecipheriv, createHmac, randomBytes, scrypt } from 'node:crypto';
import { deriveKey } from '../../keys.js';

export interface ScryptParams {
  N: number;
  r: number;
  p: number;
  /** base64; absent for the login wrap, whose salt is derived from the patient (see loginSalt). */
  salt?: string;
}

/** AES-256-GCM output, base64. */
export interface Wrap {
  iv: string;
  tag: string;
  data: string;
  kdf?: ScryptParams;
}

export type WrapKind = 'login' | 'recovery';

export const SCRYPT_PARAMS: Readonly<ScryptParams> = Object.freeze({ N: 2 ** 15, r: 8, p: 1 });

/** scrypt of a low-entropy secret (password, recovery code). */
export function stretch(secret: string, salt: Buffer, params: ScryptParams = SCRYPT_PARAMS): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(secret.normalize('NFC'), salt, 32, { N: params.N, r: params.r, p: params.p, maxmem: 256 * params.N * params.r }, (err, key) =>
      err ? reject(err) : resolve(key));
  });
}

function kek(rootKey: string, pseudonym: string, kind: WrapKind, unlock: Buffer): Buffer {
  return createHmac('sha256', deriveKey(rootKey, `custodial-${kind}:${pseudonym}`)).update(unlock).digest();
}

export function wrapKey(rootKey: string, pseudonym: string, kind: WrapKind, unlock: Buffer, privateKey: string, kdf?: ScryptParams): Wrap {
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', kek(rootKey, pseudonym, kind, unlock), iv);
  cipher.setAAD(Buffer.from(`${pseudonym}|${kind}`));
  const data = Buffer.concat([cipher.update(privateKey, 'utf8'), cipher.final()]);
  return { iv: iv.toString('base64'), tag: cipher.getAuthTag().toString('base64'), data: data.toString('base64'), ...(kdf ? { kdf } : {}) };
}

/** The private key, or undefined when the unlock does not open this wrap (wrong password or code). */
export function unwrapKey(rootKey: string, pseudonym: string, kind: WrapKind, unlock: Buffer, wrap: Wrap): string | undefined {
  try {
    const decipher = createDecipheriv('aes-256-gcm', kek(rootKey, pseudonym, kind, unlock), Buffer.from(wrap.iv, 'base64'));
    decipher.setAAD(Buffer.from(`${pseudonym}|${kind}`));
    decipher.setAuthTag(Buffer.from(wrap.tag, 'base64'));
    return Buffer.concat([decipher.update(Buffer.from(wrap.data, 'base64')), decipher.final()]).toString('utf8');
  } catch {
    return undefined;
  }
}

const CODE_ALPHABET = 'ABCDEFGHJKLMNPQRSTUVWXYZ23456789'; // no 0/O, 1/I: read aloud and typed by hand

/** A recovery code of 25 characters from a 32-letter alphabet (125 bits), in groups of five. */
export function newRecoveryCode(): string {
  const bytes = randomBytes(25);
  const chars = [...bytes].map((b) => CODE_ALPHABET[b & 31]);
  return [0, 5, 10, 15, 20].map((i) => chars.slice(i, i + 5).join('')).join('-');
}

/** The code as typed: case, spaces and dashes do not matter. */
export function normaliseRecoveryCode(code: string): string {
  return code.toUpperCase().replace(/[\s-]/g, '');
}
