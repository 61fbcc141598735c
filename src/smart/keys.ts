/**
 * Signing keys of the authorization server, generated into `<dataDir>/keys/smart-signing-keys.json`
 * (mode 0600) on first start: ES256 for access tokens, RS256 for id_tokens. Rotation makes a new
 * current key and keeps the previous public key in the JWKS so tokens already issued still verify.
 *
 * The file is sealed (AES-256-GCM) under a key derived from the key root (src/keys.ts): a copy of
 * the data directory without the master key must not let anyone mint tokens the live server
 * accepts. A file written in clear by an earlier version is sealed the first time it is opened.
 *
 * Our own tokens are signed and verified with node:crypto directly (synchronous, KeyObjects cached
 * by `kid`): it is the hot path of every FHIR request.
 *
 * Every process on the data directory (replicas, the server beside `glucoguard signing-keys rotate`)
 * reads the file again when it changed: it is looked at (one stat) at most once a second, and at
 * once when a token names a kid this process does not know. So a rotation reaches every running
 * process within a second — replicas sign with the new key, accept each other's tokens, and stop
 * accepting a key a second rotation dropped — without a restart.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type JsonWebKey, type KeyObject } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { deriveKey } from '../keys.js';
import { open, seal } from '../repository/embedded/keys.js';

type Alg = 'ES256' | 'RS256';

interface StoredKeyPair {
  kid: string;
  alg: Alg;
  /** Private JWK of the current key. */
  privateJwk: JsonWebKey;
}

interface StoredKeys {
  version: 1;
  access: { current: StoredKeyPair; previous: Array<{ kid: string; alg: Alg; publicJwk: JsonWebKey }> };
  id: { current: StoredKeyPair; previous: Array<{ kid: string; alg: Alg; publicJwk: JsonWebKey }> };
}

interface LoadedKey {
  kid: string;
  alg: Alg;
  publicKey: KeyObject;
  publicJwk: JsonWebKey;
}

const FILE = 'smart-signing-keys.json';
const SEAL_AAD = 'glucoguard-smart-signing-keys\0v2';
/** How often a process looks whether another one rotated the keys. */
const RELOAD_CHECK_MS = 1000;

/** The file as written: the keys sealed (version 2), or in clear as versions before sealing wrote them. */
type KeyFile = { version: 2; sealed: string } | StoredKeys;

export class SigningKeys {
  private accessSigner!: { kid: string; key: KeyObject };
  private idSigner!: { kid: string; key: KeyObject };
  private verifiers = new Map<string, LoadedKey>();
  /**
   * Tokens whose signature already verified, by exact token string. ECDSA verification is the
   * cost of the FHIR request path; a hit skips only the signature — expiry, audience and
   * revocation are still checked by the caller on every request. Cleared on rotation.
   */
  private readonly verified = new Map<string, Record<string, unknown>>();
  private static readonly VERIFIED_CACHE_SIZE = 10_000;
  /** Identity of the file version loaded (inode, size, mtime): a rename or rewrite changes it. */
  private loadedStamp = '';
  private checkedAt = 0;

  private constructor(private readonly file: string, private readonly sealKey: Buffer, private readonly now: () => number) {}

  /** Loads the keys (sealing a file an earlier version wrote in clear), generating them on first start. `rootKey`: src/keys.ts. */
  static open(dataDir: string, rootKey: string, now: () => number = Date.now): SigningKeys {
    const dir = path.join(dataDir, 'keys');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const keys = new SigningKeys(path.join(dir, FILE), deriveKey(rootKey, 'smart-signing-keys'), now);
    if (!existsSync(keys.file)) keys.write({ version: 1, access: { current: generate('ES256'), previous: [] }, id: { current: generate('RS256'), previous: [] } });
    keys.load();
    return keys;
  }

  /** Makes new current keys; the previous public keys stay in the JWKS. */
  rotate(): void {
    const stored = this.read();
    const demote = (pair: StoredKeyPair) => ({ kid: pair.kid, alg: pair.alg, publicJwk: publicJwkOf(pair.privateJwk) });
    this.write({
      version: 1,
      access: { current: generate('ES256'), previous: [demote(stored.access.current)] },
      id: { current: generate('RS256'), previous: [demote(stored.id.current)] },
    });
    this.load();
  }

  /** The public JWKS: current and previous keys of both kinds. */
  jwks(): { keys: Array<JsonWebKey & { kid: string; alg: string; use: string }> } {
    this.reloadIfChanged(false);
    return { keys: [...this.verifiers.values()].map((k) => ({ ...k.publicJwk, kid: k.kid, alg: k.alg, use: 'sig' })) };
  }

  /** Compact JWS of `payload` with the current access-token key (ES256). */
  signAccessToken(payload: object): string {
    this.reloadIfChanged(false);
    return signJws({ alg: 'ES256', typ: 'at+jwt', kid: this.accessSigner.kid }, payload, this.accessSigner.key);
  }

  /** Compact JWS of `payload` with the current id_token key (RS256). */
  signIdToken(payload: object): string {
    this.reloadIfChanged(false);
    return signJws({ alg: 'RS256', typ: 'JWT', kid: this.idSigner.kid }, payload, this.idSigner.key);
  }

  /**
   * Verifies the signature of one of our access tokens and returns its payload; undefined when the
   * token is malformed, uses another alg or kid, or the signature does not verify.
   */
  verifyAccessToken(token: string): Record<string, unknown> | undefined {
    this.reloadIfChanged(false); // before the cache: a key another process dropped must stop verifying
    const hit = this.verified.get(token);
    if (hit) return hit;
    const payload = this.verifySignature(token);
    if (payload) {
      if (this.verified.size >= SigningKeys.VERIFIED_CACHE_SIZE) this.verified.delete(this.verified.keys().next().value!);
      this.verified.set(token, payload);
    }
    return payload;
  }

  private verifySignature(token: string): Record<string, unknown> | undefined {
    const parts = token.split('.');
    if (parts.length !== 3) return undefined;
    const header = parseSegment(parts[0]!);
    if (!header || header.alg !== 'ES256' || typeof header.kid !== 'string') return undefined;
    // a kid we do not know may be one another process rotated in just now: look at once
    if (!this.verifiers.has(header.kid)) this.reloadIfChanged(true);
    const key = this.verifiers.get(header.kid);
    if (!key || key.alg !== 'ES256') return undefined;
    const ok = verify('sha256', Buffer.from(`${parts[0]}.${parts[1]}`), { key: key.publicKey, dsaEncoding: 'ieee-p1363' },
      Buffer.from(parts[2]!, 'base64url'));
    const payload = ok ? parseSegment(parts[1]!) : undefined;
    return payload && Object.freeze(payload);
  }

  /**
   * Loads the file again when another process (or `signing-keys rotate`) replaced it. Looks at most
   * once per RELOAD_CHECK_MS unless `now`. A file that cannot be read or opened leaves the keys
   * loaded as they are (it is looked at again next time): the start-up check already refused a wrong
   * key root, and a rename never shows a half-written file.
   */
  private reloadIfChanged(now: boolean): void {
    const t = this.now();
    if (!now && t - this.checkedAt < RELOAD_CHECK_MS) return;
    this.checkedAt = t;
    try {
      if (this.stamp() !== this.loadedStamp) this.load();
    } catch {
      // keep the keys loaded; the next check tries again
    }
  }

  private stamp(): string {
    const st = statSync(this.file);
    return `${st.ino}:${st.size}:${st.mtimeMs}`;
  }

  /** Reads the file and swaps every key in at once (a key that fails to import leaves the old set whole). */
  private load(): void {
    const stamp = this.stamp();
    const stored = this.read();
    const accessSigner = { kid: stored.access.current.kid, key: createPrivateKey({ key: stored.access.current.privateJwk, format: 'jwk' }) };
    const idSigner = { kid: stored.id.current.kid, key: createPrivateKey({ key: stored.id.current.privateJwk, format: 'jwk' }) };
    const verifiers = new Map<string, LoadedKey>();
    for (const group of [stored.access, stored.id]) {
      for (const k of [{ kid: group.current.kid, alg: group.current.alg, publicJwk: publicJwkOf(group.current.privateJwk) }, ...group.previous]) {
        verifiers.set(k.kid, { ...k, publicKey: createPublicKey({ key: k.publicJwk, format: 'jwk' }) });
      }
    }
    [this.accessSigner, this.idSigner, this.verifiers, this.loadedStamp] = [accessSigner, idSigner, verifiers, stamp];
    this.verified.clear();
  }

  private read(): StoredKeys {
    const stored = JSON.parse(readFileSync(this.file, 'utf8')) as KeyFile;
    if (stored.version === 1) {
      this.write(stored); // written in clear by an earlier version: sealed from now on
      return stored;
    }
    const opened = open(this.sealKey, Buffer.from(stored.sealed, 'base64'), SEAL_AAD);
    if (!opened) throw new Error(`${this.file} does not open with this data directory's key root (another master key?)`);
    return JSON.parse(opened.toString('utf8')) as StoredKeys;
  }

  private write(keys: StoredKeys): void {
    const tmp = `${this.file}.tmp`;
    const sealed: KeyFile = { version: 2, sealed: seal(this.sealKey, Buffer.from(JSON.stringify(keys)), SEAL_AAD).toString('base64') };
    writeFileSync(tmp, `${JSON.stringify(sealed)}\n`, { mode: 0o600 });
    renameSync(tmp, this.file);
  }
}

function generate(alg: Alg): StoredKeyPair {
  const { privateKey } = alg === 'ES256'
    ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
    : generateKeyPairSync('rsa', { modulusLength: 2048 });
  const privateJwk = privateKey.export({ format: 'jwk' });
  return { kid: thumbprint(publicJwkOf(privateJwk)), alg, privateJwk };
}

function publicJwkOf(jwk: JsonWebKey): JsonWebKey {
  return jwk.kty === 'EC' ? { kty: 'EC', crv: jwk.crv, x: jwk.x, y: jwk.y } : { kty: 'RSA', n: jwk.n, e: jwk.e };
}

/** RFC 7638 JWK thumbprint (members in lexicographic order). */
function thumbprint(jwk: JsonWebKey): string {
  const members = jwk.kty === 'EC' ? { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y } : { e: jwk.e, kty: jwk.kty, n: jwk.n };
  return createHash('sha256').update(JSON.stringify(members)).digest('base64url');
}

function signJws(header: object, payload: object, key: KeyObject): string {
  const input = `${Buffer.from(JSON.stringify(header)).toString('base64url')}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}`;
  const signature = key.asymmetricKeyType === 'ec'
    ? sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' })
    : sign('sha256', Buffer.from(input), key);
  return `${input}.${signature.toString('base64url')}`;
}

function parseSegment(segment: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(Buffer.from(segment, 'base64url').toString('utf8'));
    return value && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}
