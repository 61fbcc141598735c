/**
 * Users and registered clients, kept in `<dataDir>/smart/smart.sqlite` (better-sqlite3). Client
 * secrets are random 256-bit values, so a SHA-256 digest is enough to store them; user passwords
 * are low-entropy and get scrypt (passwords.ts).
 *
 * A client an operator disabled (`glucoguard clients disable`) is kept, marked, and is unknown to
 * `getClient`: authorization and token requests refuse it as they refuse an unknown client, and
 * the token service (tokens.ts) stops honouring its access and refresh tokens at once, in every
 * process that opens this file. A disabled user (`glucoguard users disable`) is the same: sign-in
 * refused, their tokens dead at once; enabled again, they may sign in, but the tokens issued before
 * the disabling stay dead. A password change (`endOtherSessions`) ends the user's tokens issued
 * before it likewise, except those of the session that changed it.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import path from 'node:path';
import Database from 'better-sqlite3';
import type { JSONWebKeySet } from 'jose';
import { badRequest, conflict } from '../errors.js';
import { openSqlite } from '../sqlite.js';
import { hashPassword } from './passwords.js';
import { isKnownScope, splitScopes } from './scopes.js';

export type ClientType = 'public' | 'confidential-symmetric' | 'confidential-asymmetric';

export interface Client {
  clientId: string;
  name: string;
  type: ClientType;
  redirectUris: string[];
  /** Scopes the client may be granted; an EHR launch within them needs no approval page. */
  scopes: string[];
  secretHash?: string;
  jwks?: JSONWebKeySet;
  jwksUrl?: string;
  launchUri?: string;
  /** When an operator disabled it (ISO instant); absent while it is active. */
  disabledAt?: string;
}

export interface User {
  username: string;
  passwordHash: string;
  /** `Patient/ID` or `Practitioner/ID`. */
  fhirUser: string;
  /** When an operator disabled the user (ISO instant); absent while they may sign in. */
  disabledAt?: string;
}

export interface NewClient {
  name: string;
  redirectUris?: string[];
  type: ClientType;
  jwks?: JSONWebKeySet;
  jwksUrl?: string;
  scopes?: string[];
  launchUri?: string;
}

/** Which of a subject's tokens are dead by what happened to the user (SmartStore.userCutoff). */
export interface UserCutoff {
  /** Tokens issued at or before this instant (epoch ms) are dead; Infinity while the user is disabled. */
  before?: number;
  /** The grant exempt from `before`: the session that changed the password. */
  keptGrant?: string;
}

const FHIR_USER = /^(Patient|Practitioner|RelatedPerson|Person)\/[A-Za-z0-9\-.]{1,64}$/;

/**
 * Refuses a registration SmartStore.addClient would refuse (ERR_INVALID), without a store: a
 * command checks it before it sets an installation up. Answers the redirect URIs and scopes to keep.
 */
export function checkNewClient(input: NewClient): { redirectUris: string[]; scopes: string[] } {
  const redirectUris = input.redirectUris ?? [];
  for (const uri of redirectUris) checkRedirectUri(uri);
  // Confidential clients without redirect URIs can only use client_credentials (Backend Services);
  // a public client has nothing else, so it needs one.
  if (input.type === 'public' && redirectUris.length === 0) throw badRequest('a redirect URI is required');
  if (input.type === 'confidential-asymmetric' && !input.jwks === !input.jwksUrl) throw badRequest('give exactly one of a JWKS or a JWKS URL');
  if (input.jwksUrl) checkHttpUrl(input.jwksUrl, 'JWKS URL');
  if (input.launchUri) checkHttpUrl(input.launchUri, 'launch URI');
  if (input.jwks) checkJwks(input.jwks);
  const scopes = input.scopes ?? defaultScopes(input.type);
  const unknown = scopes.filter((s) => !isKnownScope(s));
  if (unknown.length) throw badRequest(`unknown scopes: ${unknown.join(' ')}`);
  return { redirectUris, scopes };
}

export class SmartStore {
  private readonly db: Database.Database;
  private readonly statements;

  constructor(dataDir: string) {
    this.db = openSqlite(path.join(dataDir, 'smart', 'smart.sqlite'), { synchronous: 'FULL' });
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS users (
        username TEXT PRIMARY KEY, password_hash TEXT NOT NULL, fhir_user TEXT NOT NULL, created_at TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS clients (
        client_id TEXT PRIMARY KEY, name TEXT NOT NULL, type TEXT NOT NULL, redirect_uris TEXT NOT NULL,
        scopes TEXT NOT NULL, secret_hash TEXT, jwks TEXT, jwks_url TEXT, launch_uri TEXT, created_at TEXT NOT NULL);`);
    const columns = (this.db.prepare('PRAGMA table_info(clients)').all() as { name: string }[]).map((c) => c.name);
    if (!columns.includes('disabled_at')) this.db.exec('ALTER TABLE clients ADD COLUMN disabled_at TEXT');
    const userColumns = (this.db.prepare('PRAGMA table_info(users)').all() as { name: string }[]).map((c) => c.name);
    if (!userColumns.includes('disabled_at')) this.db.exec('ALTER TABLE users ADD COLUMN disabled_at TEXT; ALTER TABLE users ADD COLUMN tokens_before INTEGER');
    if (!userColumns.includes('tokens_kept_gid')) this.db.exec('ALTER TABLE users ADD COLUMN tokens_kept_gid TEXT');
    this.db.exec('CREATE INDEX IF NOT EXISTS users_fhir_user ON users (fhir_user)');
    this.statements = {
      getUser: this.db.prepare('SELECT username, password_hash, fhir_user, disabled_at FROM users WHERE username = ?'),
      listUsers: this.db.prepare('SELECT username, fhir_user, created_at, disabled_at FROM users ORDER BY created_at, username'),
      userCutoff: this.db.prepare('SELECT disabled_at, tokens_before, tokens_kept_gid FROM users WHERE username = ?'),
      fhirUserCutoff: this.db.prepare('SELECT disabled_at, tokens_before, tokens_kept_gid FROM users WHERE fhir_user = ?'),
      // a disabling ends every token, the session a password change kept included
      setUserDisabled: this.db.prepare('UPDATE users SET disabled_at = ?, tokens_before = coalesce(?, tokens_before), tokens_kept_gid = NULL WHERE username = ?'),
      endOtherSessions: this.db.prepare('UPDATE users SET tokens_before = max(coalesce(tokens_before, 0), ?), tokens_kept_gid = ? WHERE username = ?'),
      insertUser: this.db.prepare('INSERT INTO users (username, password_hash, fhir_user, created_at) VALUES (?, ?, ?, ?)'),
      setPassword: this.db.prepare('UPDATE users SET password_hash = ? WHERE username = ?'),
      getClient: this.db.prepare('SELECT * FROM clients WHERE client_id = ?'),
      listClients: this.db.prepare('SELECT * FROM clients ORDER BY created_at, client_id'),
      disabledAt: this.db.prepare('SELECT disabled_at FROM clients WHERE client_id = ?').pluck(),
      setDisabled: this.db.prepare('UPDATE clients SET disabled_at = ? WHERE client_id = ?'),
      setJwks: this.db.prepare('UPDATE clients SET jwks = ?, jwks_url = NULL WHERE client_id = ?'),
      insertClient: this.db.prepare(`INSERT INTO clients (client_id, name, type, redirect_uris, scopes, secret_hash, jwks, jwks_url, launch_uri, created_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
    };
  }

  /** Registers a user; the username must be new. */
  async addUser(input: { username: string; password: string; fhirUser: string }): Promise<User> {
    if (!/^[A-Za-z0-9._@-]{1,64}$/.test(input.username)) throw badRequest('username must be 1-64 letters, digits or . _ @ -');
    if (input.password.length < 8) throw badRequest('password must be at least 8 characters');
    if (!FHIR_USER.test(input.fhirUser)) throw badRequest('fhirUser must look like Patient/ID or Practitioner/ID');
    if (this.getUser(input.username)) throw conflict(`user "${input.username}" already exists`);
    const user: User = { username: input.username, passwordHash: await hashPassword(input.password), fhirUser: input.fhirUser };
    this.statements.insertUser.run(user.username, user.passwordHash, user.fhirUser, new Date().toISOString());
    return user;
  }

  /** Replaces a user's password (the caller checked the current one). */
  async setPassword(username: string, password: string): Promise<void> {
    if (password.length < 8) throw badRequest('password must be at least 8 characters');
    if (!this.getUser(username)) throw badRequest(`no user "${username}"`);
    this.statements.setPassword.run(await hashPassword(password), username);
  }

  getUser(username: string): User | undefined {
    const row = this.statements.getUser.get(username) as { username: string; password_hash: string; fhir_user: string; disabled_at: string | null } | undefined;
    return row && { username: row.username, passwordHash: row.password_hash, fhirUser: row.fhir_user, ...(row.disabled_at ? { disabledAt: row.disabled_at } : {}) };
  }

  /**
   * The instant (epoch ms) before which a subject's tokens are dead: Infinity while the user is
   * disabled, the moment they were last disabled once enabled again (so enabling gives back sign-in,
   * never the tokens issued before), undefined for a user never disabled or no such user. The
   * subject is a username, or the `Practitioner/<id>` an EHR launch vouched for (no sign-in, so no
   * username): then every user who is that practitioner counts, a disabled one cutting all off.
   * Read on every token check: one or a few indexed rows.
   */
  userTokensBefore(subject: string): number | undefined {
    return this.userCutoff(subject).before;
  }

  /**
   * userTokensBefore, and the grant whose tokens outlive `before` (the session that changed the
   * password, endOtherSessions). An EHR launch's grant is never the kept one: its subject is a
   * Practitioner, not the username that changed a password.
   */
  userCutoff(subject: string): UserCutoff {
    const ehr = subject.startsWith('Practitioner/');
    const rows = (ehr ? this.statements.fhirUserCutoff.all(subject) : [this.statements.userCutoff.get(subject)].filter(Boolean)) as
      { disabled_at: string | null; tokens_before: number | null; tokens_kept_gid: string | null }[];
    let before: number | undefined;
    for (const row of rows) {
      if (row.disabled_at) return { before: Infinity };
      if (row.tokens_before !== null) before = Math.max(before ?? 0, row.tokens_before);
    }
    const kept = !ehr ? rows[0]?.tokens_kept_gid : null;
    return { ...(before !== undefined ? { before } : {}), ...(kept ? { keptGrant: kept } : {}) };
  }

  /**
   * Ends every token the user was issued until `now` (epoch ms, the token service's clock) but those
   * of grant `keep`: after a password change, whoever had the old password keeps nothing of it.
   */
  endOtherSessions(username: string, now: number, keep: string | undefined): void {
    if (!this.getUser(username)) throw badRequest(`no user "${username}"`);
    this.statements.endOtherSessions.run(now, keep ?? null, username);
  }

  /**
   * Disables a user (sign-in refused, every token of theirs dead at once) or enables them again.
   * `now`: the token service's clock (tokens issued before it stay dead after an enable).
   */
  setUserDisabled(username: string, disabled: boolean, now = Date.now()): { username: string; fhirUser: string; disabledAt?: string } {
    const user = this.getUser(username);
    if (!user) throw badRequest(`no user "${username}"`);
    if (!!user.disabledAt !== disabled) this.statements.setUserDisabled.run(disabled ? new Date(now).toISOString() : null, disabled ? now : null, username);
    const after = this.getUser(username)!;
    return { username: after.username, fhirUser: after.fhirUser, ...(after.disabledAt ? { disabledAt: after.disabledAt } : {}) };
  }

  /** Registers a client; returns it and, for a symmetric client, the secret (shown once, stored hashed). */
  addClient(input: NewClient): { client: Client; secret?: string } {
    const { redirectUris, scopes } = checkNewClient(input);
    const secret = input.type === 'confidential-symmetric' ? randomBytes(32).toString('base64url') : undefined;
    const client: Client = {
      clientId: randomBytes(16).toString('hex'),
      name: input.name,
      type: input.type,
      redirectUris,
      scopes,
      secretHash: secret ? sha256(secret) : undefined,
      jwks: input.jwks,
      jwksUrl: input.jwksUrl,
      launchUri: input.launchUri,
    };
    this.statements.insertClient.run(client.clientId, client.name, client.type, JSON.stringify(redirectUris), scopes.join(' '),
      client.secretHash ?? null, client.jwks ? JSON.stringify(client.jwks) : null, client.jwksUrl ?? null, client.launchUri ?? null,
      new Date().toISOString());
    return { client, secret };
  }

  /** An active client; undefined for an unknown or disabled one. */
  getClient(clientId: string): Client | undefined {
    const client = this.findClient(clientId);
    return client && !client.disabledAt ? client : undefined;
  }

  /** A client whether active or disabled (operator tools). */
  findClient(clientId: string): Client | undefined {
    const row = this.statements.getClient.get(clientId) as Record<string, string | null> | undefined;
    return row ? clientOf(row) : undefined;
  }

  /** Every user, oldest first: login name, who they are, when added (no password hash). */
  listUsers(): { username: string; fhirUser: string; createdAt: string; disabledAt?: string }[] {
    return (this.statements.listUsers.all() as { username: string; fhir_user: string; created_at: string; disabled_at: string | null }[])
      .map((r) => ({ username: r.username, fhirUser: r.fhir_user, createdAt: r.created_at, ...(r.disabled_at ? { disabledAt: r.disabled_at } : {}) }));
  }

  /** Every registered client, disabled ones too, oldest first. */
  listClients(): Client[] {
    return (this.statements.listClients.all() as Record<string, string | null>[]).map(clientOf);
  }

  /** Whether a registered client was disabled (false for one never registered here). Read on every token check: one indexed row. */
  isDisabled(clientId: string): boolean {
    return !!this.statements.disabledAt.get(clientId);
  }

  /** Disables a client (or enables it again); answers the client as it is now. */
  setDisabled(clientId: string, disabled: boolean): Client {
    const client = this.findClient(clientId);
    if (!client) throw badRequest(`no client "${clientId}"`);
    if (!!client.disabledAt !== disabled) this.statements.setDisabled.run(disabled ? new Date().toISOString() : null, clientId);
    return this.findClient(clientId)!;
  }

  /**
   * Replaces the public keys of a Backend Services client (key rotation): assertions signed with a
   * key no longer in the set are refused from now on. A client that named a JWKS URL uses this set instead.
   */
  setJwks(clientId: string, jwks: JSONWebKeySet): Client {
    const client = this.findClient(clientId);
    if (!client) throw badRequest(`no client "${clientId}"`);
    if (client.type !== 'confidential-asymmetric') throw badRequest(`client "${clientId}" does not authenticate with keys (it is ${client.type})`);
    checkJwks(jwks);
    this.statements.setJwks.run(JSON.stringify(jwks), clientId);
    return this.findClient(clientId)!;
  }

  close(): void {
    this.db.close();
  }
}

function clientOf(row: Record<string, string | null>): Client {
  return {
    clientId: row.client_id!,
    name: row.name!,
    type: row.type as ClientType,
    redirectUris: JSON.parse(row.redirect_uris!) as string[],
    scopes: splitScopes(row.scopes!),
    secretHash: row.secret_hash ?? undefined,
    jwks: row.jwks ? (JSON.parse(row.jwks) as JSONWebKeySet) : undefined,
    jwksUrl: row.jwks_url ?? undefined,
    launchUri: row.launch_uri ?? undefined,
    ...(row.disabled_at ? { disabledAt: row.disabled_at } : {}),
  };
}

/** A JWKS a client may register: some keys, public ones only. */
function checkJwks(jwks: JSONWebKeySet): void {
  if (!jwks || !Array.isArray(jwks.keys) || jwks.keys.length === 0) throw badRequest('the JWKS has no keys');
  if (jwks.keys.some((k) => !k || typeof k !== 'object' || 'd' in k || 'k' in k)) throw badRequest('the JWKS must hold public keys only');
  if (jwks.keys.some((k) => typeof k.kty !== 'string')) throw badRequest('every key of the JWKS needs a kty');
}

/** Constant-time comparison of a presented client secret with the stored digest. */
export function secretMatches(client: Client, presented: string): boolean {
  if (!client.secretHash) return false;
  const a = Buffer.from(sha256(presented), 'hex');
  const b = Buffer.from(client.secretHash, 'hex');
  return a.length === b.length && timingSafeEqual(a, b);
}

export function sha256(value: string): string {
  return createHash('sha256').update(value).digest('hex');
}

function defaultScopes(type: ClientType): string[] {
  if (type === 'confidential-asymmetric') return ['system/*.rs'];
  return ['openid', 'fhirUser', 'launch', 'launch/patient', 'launch/encounter', 'offline_access', 'online_access',
    'patient/*.rs', 'user/*.rs'];
}

function checkRedirectUri(uri: string): void {
  let u: URL;
  try {
    u = new URL(uri);
  } catch {
    throw badRequest(`redirect URI "${uri}" is not an absolute URL`);
  }
  if (u.hash) throw badRequest('a redirect URI must not have a fragment');
  const loopback = u.hostname === 'localhost' || u.hostname === '127.0.0.1' || u.hostname === '[::1]';
  if (u.protocol !== 'https:' && !(u.protocol === 'http:' && loopback) && !/^[a-z][a-z0-9+.-]*\.[a-z0-9+.-]+:$/.test(u.protocol)) {
    throw badRequest(`redirect URI "${uri}" must use https (http only for localhost)`);
  }
}

function checkHttpUrl(raw: string, what: string): void {
  try {
    const u = new URL(raw);
    if (u.protocol !== 'https:' && u.protocol !== 'http:') throw new Error();
  } catch {
    throw badRequest(`${what} must be an http(s) URL`);
  }
}
