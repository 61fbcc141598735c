/**
 * Users and registered clients, kept in `<dataDir>/smart/smart.sqlite` (better-sqlite3). Client
 * secrets are random 256-bit values, so a SHA-256 digest is enough to store them; user passwords
 * are low-entropy and get scrypt (passwords.ts).
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
}

export interface User {
  username: string;
  passwordHash: string;
  /** `Patient/ID` or `Practitioner/ID`. */
  fhirUser: string;
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

const FHIR_USER = /^(Patient|Practitioner|RelatedPerson|Person)\/[A-Za-z0-9\-.]{1,64}$/;

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
    this.statements = {
      getUser: this.db.prepare('SELECT username, password_hash, fhir_user FROM users WHERE username = ?'),
      insertUser: this.db.prepare('INSERT INTO users (username, password_hash, fhir_user, created_at) VALUES (?, ?, ?, ?)'),
      setPassword: this.db.prepare('UPDATE users SET password_hash = ? WHERE username = ?'),
      getClient: this.db.prepare('SELECT * FROM clients WHERE client_id = ?'),
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
    const row = this.statements.getUser.get(username) as { username: string; password_hash: string; fhir_user: string } | undefined;
    return row && { username: row.username, passwordHash: row.password_hash, fhirUser: row.fhir_user };
  }

  /** Registers a client; returns it and, for a symmetric client, the secret (shown once, stored hashed). */
  addClient(input: NewClient): { client: Client; secret?: string } {
    const redirectUris = input.redirectUris ?? [];
    for (const uri of redirectUris) checkRedirectUri(uri);
    // Confidential clients without redirect URIs can only use client_credentials (Backend Services);
    // a public client has nothing else, so it needs one.
    if (input.type === 'public' && redirectUris.length === 0) throw badRequest('a redirect URI is required');
    if (input.type === 'confidential-asymmetric' && !input.jwks === !input.jwksUrl) throw badRequest('give exactly one of a JWKS or a JWKS URL');
    if (input.jwksUrl) checkHttpUrl(input.jwksUrl, 'JWKS URL');
    if (input.launchUri) checkHttpUrl(input.launchUri, 'launch URI');
    if (input.jwks && (!Array.isArray(input.jwks.keys) || input.jwks.keys.length === 0)) throw badRequest('the JWKS has no keys');
    if (input.jwks?.keys.some((k) => 'd' in k || 'k' in k)) throw badRequest('the JWKS must hold public keys only');
    const scopes = input.scopes ?? defaultScopes(input.type);
    const unknown = scopes.filter((s) => !isKnownScope(s));
    if (unknown.length) throw badRequest(`unknown scopes: ${unknown.join(' ')}`);
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

  getClient(clientId: string): Client | undefined {
    const row = this.statements.getClient.get(clientId) as Record<string, string | null> | undefined;
    if (!row) return undefined;
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
    };
  }

  close(): void {
    this.db.close();
  }
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
