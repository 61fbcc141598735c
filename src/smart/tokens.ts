/**
 * Authorization codes, access tokens, refresh tokens, id_tokens and revocation. Codes and refresh
 * tokens are random 256-bit values stored in the KV port under their SHA-256 digest, so a KV dump
 * holds no usable token. Every token belongs to a grant (`gid`); revoking any token of a grant
 * revokes the whole grant — its access tokens and its refresh token (RFC 7009 §2.1). The tokens
 * of a client or user an operator disabled stop working at once (`cutOff`, read on every check).
 *
 * Lifetimes: access tokens of a user's sign-in live `accessSeconds` (an hour); those of Backend
 * Services (client_credentials) `backendAccessSeconds`, five minutes as SMART Backend Services
 * recommends ("an expires_in value of 300 seconds"): the client gets a new one with a fresh
 * assertion whenever it needs one, and a token that leaks is worth little.
 */
import { randomBytes } from 'node:crypto';
import type { KeyValueStore } from '../kv/port.js';
import type { SigningKeys } from './keys.js';
import { sha256, type UserCutoff } from './store.js';

/** What an authorization decided; carried by codes, refresh tokens and access tokens. */
export interface Grant {
  gid: string;
  clientId: string;
  scopes: string[];
  /** Username, or the client id for client_credentials. */
  sub: string;
  /** `Patient/ID` or `Practitioner/ID`. */
  fhirUser?: string;
  patient?: string;
  encounter?: string;
  fhirContext?: Array<{ reference: string }>;
  needPatientBanner?: boolean;
  /** An EHR launch's intent (SMART launch context), answered in the token response. */
  intent?: string;
  nonce?: string;
  authTime?: number;
}

export interface CodeRecord extends Grant {
  redirectUri: string;
  codeChallenge: string;
  expiresAt: number;
  /** Epoch ms (records stored before it was kept count as issued at 0). */
  issuedAt?: number;
}

export interface RefreshRecord extends Grant {
  expiresAt: number;
  /** Epoch ms (records stored before it was kept count as issued at 0). */
  issuedAt?: number;
}

/** Verified claims of one of our access tokens. */
export interface AccessClaims {
  jti: string;
  gid: string;
  iss: string;
  aud: string;
  sub: string;
  client_id: string;
  scope: string;
  iat: number;
  /**
   * When it was issued, in epoch milliseconds (`iat` is in whole seconds): a password change cuts
   * off what was issued before it, and a sign-in in the same second after it must live. Tokens
   * issued before this claim was kept count as issued at the start of their `iat` second.
   */
  iat_ms?: number;
  exp: number;
  fhirUser?: string;
  patient?: string;
  encounter?: string;
  /** Launch context the token response gave besides patient and encounter, for introspection (SMART: SHALL). */
  fhirContext?: Array<{ reference: string }>;
  need_patient_banner?: boolean;
}

export interface TokenLifetimes {
  codeSeconds: number;
  /** Access tokens of authorization-code and refresh grants (apps acting for a user). */
  accessSeconds: number;
  /** Access tokens of client_credentials grants (SMART Backend Services: at most 300 s recommended). */
  backendAccessSeconds: number;
  offlineRefreshSeconds: number;
  onlineRefreshSeconds: number;
}

export const DEFAULT_LIFETIMES: TokenLifetimes = {
  codeSeconds: 60,
  accessSeconds: 3600,
  backendAccessSeconds: 300,
  offlineRefreshSeconds: 90 * 24 * 3600,
  onlineRefreshSeconds: 24 * 3600,
};

export class TokenService {
  constructor(
    private readonly kv: KeyValueStore,
    private readonly keys: SigningKeys,
    private readonly fhirBase: string,
    private readonly now: () => number,
    readonly lifetimes: TokenLifetimes = DEFAULT_LIFETIMES,
    /** Whether an operator disabled this client (SmartStore.isDisabled); its tokens are then dead. */
    private readonly clientDisabled: (clientId: string) => boolean = () => false,
    /**
     * The instant before which a subject's tokens are dead (SmartStore.userCutoff: Infinity while
     * disabled), but for the grant a password change kept: a username, or the Practitioner an EHR
     * launch vouched for.
     */
    private readonly userCutoff: (subject: string) => UserCutoff = () => ({}),
  ) {}

  /**
   * Whether a token of this grant, issued at `issuedAt` (epoch ms), is dead because of whom it was
   * issued to: a disabled client, or a user disabled since (for an EHR-launch grant, whose `sub` is
   * `Practitioner/<id>`, a user who is that practitioner). Client credentials grants have the
   * client as their `sub` and no user.
   */
  /** Whether what a requester was given at `since` (epoch ms) is dead as its tokens of then are (see cutOff): a Subscription it made. */
  isCutOff(clientId: string, sub: string, since: number): boolean {
    return this.cutOff(clientId, sub, since);
  }

  /** `gid`: the grant of the token; without it (isCutOff) no grant is the kept one. */
  private cutOff(clientId: string, sub: string, issuedAt: number, gid?: string): boolean {
    if (this.clientDisabled(clientId)) return true;
    if (sub === clientId) return false;
    const { before, keptGrant } = this.userCutoff(sub);
    if (before === Infinity) return true;
    if (gid !== undefined && gid === keptGrant) return false;
    // at or before: nothing is issued to a disabled user, and a token of an older version counts
    // from the start of its whole-second iat
    return before !== undefined && issuedAt <= before;
  }

  static newGrantId(): string {
    return randomBytes(16).toString('base64url');
  }

  /** A single-use code bound to the client, redirect URI and PKCE challenge. */
  async issueCode(grant: Grant, redirectUri: string, codeChallenge: string): Promise<string> {
    const code = randomBytes(32).toString('base64url');
    const record: CodeRecord = { ...grant, redirectUri, codeChallenge, expiresAt: this.now() + this.lifetimes.codeSeconds * 1000, issuedAt: this.now() };
    await this.kv.set(`smart:code:${sha256(code)}`, JSON.stringify(record), this.lifetimes.codeSeconds * 1000);
    return code;
  }

  /**
   * Consumes a code. A second use finds only a tombstone naming the grant, so the caller can
   * revoke the tokens the first use got (RFC 6749 §4.1.2).
   */
  async takeCode(code: string): Promise<{ record?: CodeRecord; reusedGrant?: string }> {
    const key = sha256(code);
    const raw = await this.kv.take(`smart:code:${key}`);
    if (!raw) {
      const reusedGrant = await this.kv.get(`smart:code-used:${key}`);
      return reusedGrant ? { reusedGrant } : {};
    }
    const record = JSON.parse(raw) as CodeRecord;
    if (record.expiresAt <= this.now() || this.cutOff(record.clientId, record.sub, record.issuedAt ?? 0, record.gid)) return {};
    await this.kv.set(`smart:code-used:${key}`, record.gid, this.lifetimes.offlineRefreshSeconds * 1000);
    return { record };
  }

  /** Signs an access token for a grant, living `seconds` (default `accessSeconds`); returns it with its lifetime. */
  signAccessToken(grant: Grant, seconds = this.lifetimes.accessSeconds): { token: string; expiresIn: number; claims: AccessClaims } {
    const issuedAt = this.now();
    const iat = Math.floor(issuedAt / 1000);
    const claims: AccessClaims = {
      jti: randomBytes(12).toString('base64url'),
      gid: grant.gid,
      iss: this.fhirBase,
      aud: this.fhirBase,
      sub: grant.sub,
      client_id: grant.clientId,
      scope: grant.scopes.join(' '),
      iat,
      iat_ms: issuedAt,
      exp: iat + seconds,
      ...(grant.fhirUser ? { fhirUser: grant.fhirUser } : {}),
      ...(grant.patient ? { patient: grant.patient } : {}),
      ...(grant.encounter ? { encounter: grant.encounter } : {}),
      ...(grant.fhirContext ? { fhirContext: grant.fhirContext } : {}),
      // as the token response says it (token.ts tokenResponse): for a user's token
      ...(grant.fhirUser ? { need_patient_banner: grant.needPatientBanner ?? true } : {}),
    };
    return { token: this.keys.signAccessToken(claims), expiresIn: seconds, claims };
  }

  /** OpenID Connect id_token (RS256) with the SMART `fhirUser` claim as an absolute URL. */
  signIdToken(grant: Grant): string {
    const iat = Math.floor(this.now() / 1000);
    return this.keys.signIdToken({
      iss: this.fhirBase,
      sub: grant.sub,
      aud: grant.clientId,
      iat,
      exp: iat + this.lifetimes.accessSeconds,
      ...(grant.fhirUser ? { fhirUser: `${this.fhirBase}/${grant.fhirUser}` } : {}),
      ...(grant.nonce ? { nonce: grant.nonce } : {}),
      ...(grant.authTime ? { auth_time: grant.authTime } : {}),
    });
  }

  /** Stores a new refresh token for the grant (lifetime by offline_access / online_access). */
  async issueRefreshToken(grant: Grant): Promise<string> {
    const seconds = grant.scopes.includes('offline_access') ? this.lifetimes.offlineRefreshSeconds : this.lifetimes.onlineRefreshSeconds;
    const token = randomBytes(32).toString('base64url');
    const record: RefreshRecord = { ...grant, expiresAt: this.now() + seconds * 1000, issuedAt: this.now() };
    await this.kv.set(`smart:refresh:${sha256(token)}`, JSON.stringify(record), seconds * 1000);
    return token;
  }

  async findRefreshToken(token: string): Promise<RefreshRecord | undefined> {
    const raw = await this.kv.get(`smart:refresh:${sha256(token)}`);
    const record = raw ? (JSON.parse(raw) as RefreshRecord) : undefined;
    return record && record.expiresAt > this.now() && !this.cutOff(record.clientId, record.sub, record.issuedAt ?? 0, record.gid) ? record : undefined;
  }

  /**
   * Consumes a refresh token (rotation: each one is used once). A used one leaves a tombstone naming
   * its grant for as long as it would have lived, so a second use can be told from a made-up token
   * (reusedRefreshGrant).
   */
  async takeRefreshToken(token: string): Promise<RefreshRecord | undefined> {
    const key = sha256(token);
    const raw = await this.kv.take(`smart:refresh:${key}`);
    const record = raw ? (JSON.parse(raw) as RefreshRecord) : undefined;
    if (!record || record.expiresAt <= this.now()) return undefined;
    await this.kv.set(`smart:refresh-used:${key}`, `${record.gid} ${record.clientId}`, record.expiresAt - this.now());
    return record;
  }

  /**
   * The grant (and client) of a refresh token that was already used, or undefined (never issued, or
   * expired). Marks written before the client was kept name the grant alone.
   */
  async reusedRefreshGrant(token: string): Promise<{ gid: string; clientId?: string } | undefined> {
    const raw = await this.kv.get(`smart:refresh-used:${sha256(token)}`);
    if (raw === undefined) return undefined;
    const [gid, clientId] = raw.split(' ');
    return { gid: gid!, ...(clientId ? { clientId } : {}) };
  }

  /** Signature, issuer, audience and expiry of an access token; undefined for anything not live. */
  verifyAccessToken(token: string): AccessClaims | undefined {
    const claims = this.keys.verifyAccessToken(token) as Partial<AccessClaims> | undefined;
    if (!claims || typeof claims.exp !== 'number' || typeof claims.gid !== 'string' || typeof claims.scope !== 'string') return undefined;
    if (claims.iss !== this.fhirBase || claims.aud !== this.fhirBase) return undefined;
    if (claims.exp * 1000 <= this.now()) return undefined;
    if (typeof claims.client_id !== 'string' || typeof claims.sub !== 'string' || typeof claims.iat !== 'number') return undefined;
    const issuedAt = typeof claims.iat_ms === 'number' && Math.floor(claims.iat_ms / 1000) === claims.iat ? claims.iat_ms : claims.iat * 1000;
    if (this.cutOff(claims.client_id, claims.sub, issuedAt, claims.gid)) return undefined;
    return claims as AccessClaims;
  }

  async isRevoked(gid: string): Promise<boolean> {
    return (await this.kv.get(`smart:revoked:${gid}`)) !== undefined;
  }

  /** Revokes every token of a grant for as long as any of them could live. */
  async revokeGrant(gid: string): Promise<void> {
    const ttl = Math.max(this.lifetimes.offlineRefreshSeconds, this.lifetimes.accessSeconds, this.lifetimes.backendAccessSeconds) * 1000;
    await this.kv.set(`smart:revoked:${gid}`, '1', ttl);
  }
}
