/**
 * How the adapter authenticates to the upstream FHIR server: not at all, with a static bearer token,
 * or as a SMART Backend Services client (https://hl7.org/fhir/smart-app-launch/backend-services.html):
 * a `client_credentials` grant authenticated by a `private_key_jwt` client assertion (RFC 7523)
 * signed with RS384 or ES384. Tokens are cached until shortly before they expire and never logged.
 */
import { createPrivateKey, randomUUID, type KeyObject, type JsonWebKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { SignJWT, calculateJwkThumbprint, exportJWK } from 'jose';
import { checkedEndpoint, ConfigError, type UpstreamConfig } from '../../config.js';
import { upstreamError } from '../../errors.js';
import type { UpstreamTransport } from './transport.js';

/** Seconds a client assertion stays valid; SMART allows at most 5 minutes, less leaves room for clock skew. */
const ASSERTION_LIFETIME_S = 240;
/** A token is renewed this long before it expires (or at half its lifetime, when that is shorter). */
const RENEW_MARGIN_MS = 60_000;

export interface UpstreamCredentials {
  /** The `Authorization` header value for the next upstream request, if any. */
  authorization(): Promise<string | undefined>;
  /**
   * Upstream answered 401 to a request sent with `authorization`. Returns true when asking again with
   * fresh credentials may help (a cached Backend Services token), after forgetting the rejected one.
   */
  rejected(authorization: string | undefined): boolean;
  /**
   * Called once at start-up: obtains credentials now, so that a client the token endpoint refuses
   * (wrong key, client id or scope) stops the start with ConfigError rather than failing at first
   * use. A token endpoint that cannot be reached is only logged: the upstream may come up later
   * (the repository readiness check, /readyz, stays 503 until it does).
   */
  checkAtStartup(): Promise<void>;
}

/** The token endpoint refused the client: `status` and the RFC 6749 §5.2 error code, if it sent one. */
export class TokenRefused extends Error {
  constructor(readonly status: number, readonly oauthError: string | undefined) {
    super(`upstream token request refused (${status}${oauthError ? ` ${oauthError}` : ''})`);
    this.name = 'TokenRefused';
  }

  /**
   * A refusal that asking again will not change: 400/401/403 (RFC 6749 §5.2: `invalid_client`,
   * `invalid_grant`, `unauthorized_client`, `invalid_scope`, …). A 5xx or 429 is passing trouble.
   */
  get definitive(): boolean {
    return this.status === 400 || this.status === 401 || this.status === 403;
  }
}

export function credentialsFor(config: UpstreamConfig, transport: UpstreamTransport, now: () => number): UpstreamCredentials {
  switch (config.auth) {
    case 'none':
      return { authorization: async () => undefined, rejected: () => false, checkAtStartup: async () => undefined };
    case 'bearer': {
      if (!config.bearerToken) throw new ConfigError(['UPSTREAM_AUTH=bearer needs UPSTREAM_BEARER_TOKEN']);
      const header = `Bearer ${config.bearerToken}`;
      return { authorization: async () => header, rejected: () => false, checkAtStartup: async () => undefined };
    }
    case 'backend-services':
      return new BackendServicesCredentials(config, transport, now);
  }
}

interface CachedToken {
  header: string;
  renewAt: number;
}

/** SMART Backend Services client: one token request at a time, token reused until shortly before expiry. */
export class BackendServicesCredentials implements UpstreamCredentials {
  private readonly clientId: string;
  private readonly tokenUrl: string;
  private readonly alg: 'RS384' | 'ES384';
  private readonly key: SigningKey;
  private cached?: CachedToken;
  private pending?: Promise<string>;

  constructor(private readonly config: UpstreamConfig, private readonly transport: UpstreamTransport, private readonly now: () => number) {
    const missing = (['clientId', 'tokenUrl', 'privateKeyFile'] as const).filter((k) => !config[k]);
    if (missing.length) throw new ConfigError(missing.map((k) => `UPSTREAM_AUTH=backend-services needs upstream.${k}`));
    this.clientId = config.clientId!;
    this.tokenUrl = checkedEndpoint(config.tokenUrl!, 'UPSTREAM_TOKEN_URL'); // as loadConfig checks it
    this.alg = config.alg ?? 'RS384';
    this.key = loadSigningKey(config.privateKeyFile!, this.alg, config.kid);
  }

  async authorization(): Promise<string> {
    if (this.cached && this.now() < this.cached.renewAt) return this.cached.header;
    // Concurrent requests share one token request.
    this.pending ??= this.requestToken().finally(() => { this.pending = undefined; });
    return this.pending;
  }

  rejected(authorization: string | undefined): boolean {
    if (authorization === undefined) return false;
    if (this.cached?.header === authorization) this.cached = undefined;
    return true;
  }

  async checkAtStartup(): Promise<void> {
    try {
      await this.authorization();
      this.transport.logger?.info({ clientId: this.clientId }, 'upstream token endpoint issued a token to the configured client');
    } catch (err) {
      const refused = (err as { cause?: unknown }).cause;
      if (refused instanceof TokenRefused && refused.definitive) {
        throw new ConfigError([`the upstream token endpoint refused client "${this.clientId}" (HTTP ${refused.status}${refused.oauthError ? ` ${refused.oauthError}` : ''}): `
          + 'check UPSTREAM_CLIENT_ID, UPSTREAM_PRIVATE_KEY_FILE and UPSTREAM_KID against the key registered with the EHR, and UPSTREAM_SCOPE']);
      }
      const code = (err as { code?: unknown }).code;
      this.transport.logger?.warn({ code, status: refused instanceof TokenRefused ? refused.status : undefined },
        'upstream token endpoint did not issue a token at start-up; starting anyway, /readyz answers 503 until it does');
    }
  }

  private async requestToken(): Promise<string> {
    const form = new URLSearchParams({
      grant_type: 'client_credentials',
      scope: this.config.scope ?? 'system/*.rs',
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
      client_assertion: await this.clientAssertion(),
    });
    const requestedAt = this.now();
    const response = await this.transport.send({
      url: this.tokenUrl,
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
      body: form.toString(),
      what: 'token',
    });
    const body = parseJsonObject(response.text);
    if (response.status !== 200 || typeof body?.access_token !== 'string' || body.access_token === '') {
      // The OAuth error code (RFC 6749 §5.2) is safe to log; descriptions and bodies are not logged.
      const oauthError = typeof body?.error === 'string' ? body.error.slice(0, 64) : undefined;
      this.transport.logger?.warn({ status: response.status, oauthError }, response.status === 200
        ? 'upstream token endpoint answered without a usable access_token' : 'upstream token request refused');
      throw upstreamError('Upstream FHIR server authorization failed', new TokenRefused(response.status, oauthError));
    }
    if (typeof body.token_type === 'string' && body.token_type.toLowerCase() !== 'bearer') {
      this.transport.logger?.warn({ tokenType: body.token_type.slice(0, 32) }, 'upstream token is not a bearer token');
      throw upstreamError('Upstream FHIR server authorization failed');
    }
    // expires_in is RECOMMENDED (RFC 6749 §5.1); some servers send it as a string. Assume 5 minutes when absent.
    const expiresIn = Number(body.expires_in);
    const lifetimeMs = (Number.isFinite(expiresIn) && expiresIn > 0 ? expiresIn : 300) * 1000;
    const header = `Bearer ${body.access_token}`;
    this.cached = { header, renewAt: requestedAt + lifetimeMs - Math.min(RENEW_MARGIN_MS, lifetimeMs / 2) };
    this.transport.logger?.debug({ expiresInS: lifetimeMs / 1000 }, 'upstream access token obtained');
    return header;
  }

  /** RFC 7523 client assertion as SMART Backend Services requires (iss = sub = client id, aud = token URL). */
  private async clientAssertion(): Promise<string> {
    const nowS = Math.floor(Date.now() / 1000);
    return new SignJWT({ jti: randomUUID() })
      .setProtectedHeader({ alg: this.alg, kid: await this.key.kid(), typ: 'JWT' })
      .setIssuer(this.clientId)
      .setSubject(this.clientId)
      .setAudience(this.tokenUrl)
      .setIssuedAt(nowS)
      .setExpirationTime(nowS + ASSERTION_LIFETIME_S)
      .sign(this.key.key);
  }
}

interface SigningKey {
  key: KeyObject;
  kid(): Promise<string>;
}

/**
 * Reads the Backend Services private key: PEM (PKCS#8, also PKCS#1/SEC1) or JWK JSON (a single JWK or
 * a JWKS, from which the key with the configured `kid`, else the first private key, is taken). The key
 * type must fit the algorithm: RSA for RS384, EC P-384 for ES384. The `kid` is the configured one, else
 * the JWK's own, else the RFC 7638 thumbprint of the public key. Messages never include key material.
 */
export function loadSigningKey(file: string, alg: 'RS384' | 'ES384', configuredKid?: string): SigningKey {
  let text: string;
  try {
    text = readFileSync(file, 'utf8').trim();
  } catch {
    throw new ConfigError([`UPSTREAM_PRIVATE_KEY_FILE: cannot read ${file}`]);
  }
  let key: KeyObject;
  let fileKid: string | undefined;
  try {
    if (text.startsWith('{')) {
      const json = JSON.parse(text) as { keys?: JsonWebKey[] } & JsonWebKey;
      const jwks: (JsonWebKey & { kid?: string })[] = Array.isArray(json.keys) ? json.keys : [json];
      const jwk = jwks.find((k) => configuredKid !== undefined && k.kid === configuredKid && k.d) ?? jwks.find((k) => k.d);
      if (!jwk) throw new Error('no private key');
      key = createPrivateKey({ key: jwk, format: 'jwk' });
      fileKid = typeof jwk.kid === 'string' ? jwk.kid : undefined;
    } else {
      key = createPrivateKey(text);
    }
  } catch {
    throw new ConfigError([`UPSTREAM_PRIVATE_KEY_FILE: ${file} does not hold a private key (PEM PKCS#8 or JWK JSON)`]);
  }
  const fits = alg === 'RS384'
    ? key.asymmetricKeyType === 'rsa'
    : key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'secp384r1';
  if (!fits) {
    throw new ConfigError([`UPSTREAM_PRIVATE_KEY_FILE: ${alg} needs ${alg === 'RS384' ? 'an RSA' : 'an EC P-384'} key`]);
  }
  let kid: Promise<string> | undefined;
  return {
    key,
    kid: () => (kid ??= (async () => configuredKid ?? fileKid ?? calculateJwkThumbprint(await exportJWK(key)))()),
  };
}

function parseJsonObject(text: string): Record<string, unknown> | undefined {
  try {
    const parsed: unknown = JSON.parse(text);
    return parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed) ? parsed as Record<string, unknown> : undefined;
  } catch {
    return undefined;
  }
}
