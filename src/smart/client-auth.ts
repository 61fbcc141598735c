/**
 * Client authentication at the token, introspection and revocation endpoints:
 * public (`client_id` only), `client_secret_basic`, `client_secret_post` and `private_key_jwt`
 * (SMART Backend Services, https://hl7.org/fhir/smart-app-launch/STU2.2/client-confidential-asymmetric.html):
 * RS384 or ES384, `kid` required, `jku` only when it equals the registered JWKS URL, `iss` = `sub`
 * = client_id, `aud` = token URL, `exp` at most 5 minutes ahead, `iat` (when given) not more than
 * CLOCK_SKEW_S ahead and `nbf` not ahead, `jti` never seen before. A disabled client
 * (`glucoguard clients disable`) is unknown here, so every method refuses it with invalid_client.
 *
 * Refusals say which rule the assertion broke ("client_assertion needs a jti", "… has expired"),
 * the same words whichever way the rule was broken (absent or empty). Rules about its claims are
 * only told after its signature verified, i.e. to the holder of the client's key; a signature that
 * does not verify reads the same for an unknown kid and a wrong key.
 */
import { createLocalJWKSet, createRemoteJWKSet, decodeJwt, decodeProtectedHeader, errors, jwtVerify, type JWTPayload, type JWTVerifyGetKey } from 'jose';
import type { KeyValueStore } from '../kv/port.js';
import { invalidClient, invalidRequest } from './oauth-error.js';
import { secretMatches, type Client, type SmartStore } from './store.js';

export const JWT_BEARER = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const ASSERTION_ALGS = ['RS384', 'ES384'];
const MAX_ASSERTION_LIFETIME_S = 300;
/** How far ahead of our clock a client's `iat` may be (its clock runs a little fast). */
const CLOCK_SKEW_S = 60;

export type ClientAuthMethod = 'none' | 'client_secret_basic' | 'client_secret_post' | 'private_key_jwt';

export interface AuthenticatedClient {
  client: Client;
  method: ClientAuthMethod;
}

export interface ClientAuthDeps {
  store: SmartStore;
  kv: KeyValueStore;
  tokenUrl: string;
  now: () => number;
}

type Body = Record<string, unknown>;

/**
 * Authenticates the client of a request, or returns undefined when the request names no client
 * at all (a public client refreshing without client_id). Throws invalid_client on any failure.
 */
export async function authenticateClient(deps: ClientAuthDeps, headers: Record<string, string | string[] | undefined>, body: Body,
): Promise<AuthenticatedClient | undefined> {
  const authorization = typeof headers.authorization === 'string' ? headers.authorization : undefined;
  const methods = [authorization?.startsWith('Basic ') && 'basic', body.client_assertion !== undefined && 'jwt',
    body.client_secret !== undefined && 'post'].filter(Boolean);
  if (methods.length > 1) throw invalidRequest('Use exactly one client authentication method');
  let caller: AuthenticatedClient | undefined;
  if (authorization?.startsWith('Basic ')) caller = secretBasic(deps, authorization);
  else if (body.client_assertion !== undefined) caller = await privateKeyJwt(deps, body);
  else if (body.client_secret !== undefined) caller = secretPost(deps, body);
  else if (body.client_id !== undefined) caller = publicClient(deps, body);
  if (caller && body.client_id !== undefined && body.client_id !== caller.client.clientId) throw invalidClient('client_id does not match the client credentials');
  return caller;
}

function str(value: unknown): string | undefined {
  return typeof value === 'string' && value !== '' ? value : undefined;
}

function secretBasic(deps: ClientAuthDeps, authorization: string): AuthenticatedClient {
  const decoded = Buffer.from(authorization.slice(6).trim(), 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) throw invalidClient('Malformed Basic credentials');
  let id: string;
  let secret: string;
  try {
    id = decodeURIComponent(decoded.slice(0, colon).replace(/\+/g, ' '));
    secret = decodeURIComponent(decoded.slice(colon + 1).replace(/\+/g, ' '));
  } catch {
    throw invalidClient('Malformed Basic credentials');
  }
  return checkSecret(deps, id, secret, 'client_secret_basic');
}

function secretPost(deps: ClientAuthDeps, body: Body): AuthenticatedClient {
  const id = str(body.client_id);
  const secret = str(body.client_secret);
  if (!id || !secret) throw invalidClient('client_id and client_secret are required');
  return checkSecret(deps, id, secret, 'client_secret_post');
}

function checkSecret(deps: ClientAuthDeps, id: string, secret: string, method: ClientAuthMethod): AuthenticatedClient {
  const client = deps.store.getClient(id);
  if (!client || client.type !== 'confidential-symmetric' || !secretMatches(client, secret)) throw invalidClient();
  return { client, method };
}

function publicClient(deps: ClientAuthDeps, body: Body): AuthenticatedClient {
  const client = deps.store.getClient(str(body.client_id) ?? '');
  if (!client) throw invalidClient();
  if (client.type !== 'public') throw invalidClient('This client must authenticate');
  return { client, method: 'none' };
}

async function privateKeyJwt(deps: ClientAuthDeps, body: Body): Promise<AuthenticatedClient> {
  if (body.client_assertion_type !== JWT_BEARER) throw invalidClient(`client_assertion_type must be ${JWT_BEARER}`);
  const assertion = str(body.client_assertion);
  if (!assertion) throw invalidClient('client_assertion is missing');
  const { header, claimedId } = readAssertionUnverified(assertion);
  if (body.client_id !== undefined && body.client_id !== claimedId) throw invalidClient('client_id does not match the assertion');
  const client = deps.store.getClient(claimedId);
  if (!client || client.type !== 'confidential-asymmetric') throw invalidClient();
  const keySource = keySourceFor(client, header.jku);
  const payload = await verifyAssertion(deps, assertion, claimedId, keySource);
  await rejectReplayedJti(deps, claimedId, payload.jti, payload.exp);
  return { client, method: 'private_key_jwt' };
}

function readAssertionUnverified(assertion: string): { header: { alg?: string; kid?: string; jku?: string }; claimedId: string } {
  let header: { alg?: string; kid?: string; jku?: string };
  let claimedId: unknown;
  try {
    header = decodeProtectedHeader(assertion) as typeof header;
    claimedId = decodeJwt(assertion).iss;
  } catch {
    throw invalidClient('client_assertion is not a JWT');
  }
  if (!header.alg || !ASSERTION_ALGS.includes(header.alg)) throw invalidClient(`client_assertion alg must be one of ${ASSERTION_ALGS.join(', ')}`);
  if (!header.kid) throw invalidClient('client_assertion header needs a kid');
  if (typeof claimedId !== 'string' || !claimedId) throw invalidClient('client_assertion needs iss');
  return { header, claimedId };
}

const remoteSets = new Map<string, JWTVerifyGetKey>();
/** Imported registered JWKS by client (importing keys costs more than verifying with them). */
const localSets = new Map<string, { source: string; set: JWTVerifyGetKey }>();

/** The registered keys; a `jku` header is followed only when it is exactly the registered JWKS URL. */
function keySourceFor(client: Client, jku: string | undefined): JWTVerifyGetKey {
  if (jku !== undefined && jku !== client.jwksUrl) throw invalidClient('jku does not match the registered JWKS URL');
  if (client.jwks) {
    const source = JSON.stringify(client.jwks);
    let cached = localSets.get(client.clientId);
    if (!cached || cached.source !== source) {
      cached = { source, set: createLocalJWKSet(client.jwks) };
      if (localSets.size > 1000) localSets.clear();
      localSets.set(client.clientId, cached);
    }
    return cached.set;
  }
  if (!client.jwksUrl) throw invalidClient('Client has no keys registered');
  let set = remoteSets.get(client.jwksUrl);
  if (!set) {
    set = createRemoteJWKSet(new URL(client.jwksUrl), { timeoutDuration: 5000, cooldownDuration: 30_000, cacheMaxAge: 300_000 });
    remoteSets.set(client.jwksUrl, set);
  }
  return set;
}

async function verifyAssertion(deps: ClientAuthDeps, assertion: string, clientId: string, keys: JWTVerifyGetKey): Promise<{ exp: number; jti: string }> {
  let payload: JWTPayload;
  try {
    ({ payload } = await jwtVerify(assertion, keys, {
      algorithms: ASSERTION_ALGS,
      issuer: clientId,
      subject: clientId,
      audience: deps.tokenUrl,
      currentDate: new Date(deps.now()),
      requiredClaims: ['exp', 'jti'],
    }));
  } catch (err) {
    throw invalidClient(assertionProblem(err, deps.tokenUrl));
  }
  const now = Math.floor(deps.now() / 1000);
  if (payload.exp! > now + MAX_ASSERTION_LIFETIME_S) throw invalidClient('client_assertion exp must be at most 5 minutes in the future');
  if (typeof payload.jti !== 'string' || payload.jti === '') throw invalidClient('client_assertion needs a jti');
  // jose checks iat only against a maximum age; one from the future is a clock (or a forgery) gone wrong
  if (payload.iat !== undefined && payload.iat > now + CLOCK_SKEW_S) throw invalidClient('client_assertion iat must not be in the future');
  return payload as { exp: number; jti: string };
}

/** Which rule a client assertion broke, in the words the checks after jose use too. */
function assertionProblem(err: unknown, tokenUrl: string): string {
  if (err instanceof errors.JWTExpired) return 'client_assertion has expired';
  if (err instanceof errors.JWTClaimValidationFailed) {
    const claim = err.claim;
    if (err.reason === 'missing') return `client_assertion needs ${claim === 'aud' || claim === 'exp' || claim === 'iss' ? 'an' : 'a'} ${claim}`;
    if (err.reason === 'invalid') return `client_assertion ${claim} must be a number (seconds since the epoch)`;
    if (claim === 'aud') return `client_assertion aud must be the token URL (${tokenUrl})`;
    if (claim === 'iss' || claim === 'sub') return 'client_assertion iss and sub must both be the client_id';
    if (claim === 'nbf') return 'client_assertion is not valid yet (nbf is in the future)';
    return `client_assertion ${claim} is not acceptable`;
  }
  if (err instanceof errors.JWKSTimeout) return 'the client\'s JWKS URL did not answer in time';
  if (err instanceof errors.JWSSignatureVerificationFailed || err instanceof errors.JWKSNoMatchingKey || err instanceof errors.JWKSMultipleMatchingKeys) {
    return 'client_assertion signature does not verify with a registered key of the client (kid and alg must match one)';
  }
  return 'client_assertion could not be verified';
}

async function rejectReplayedJti(deps: ClientAuthDeps, clientId: string, jti: string, exp: number): Promise<void> {
  const ttl = Math.max(1000, exp * 1000 - deps.now() + 60_000);
  const fresh = await deps.kv.setIfAbsent(`smart:jti:${clientId}:${jti}`, '1', ttl);
  if (!fresh) throw invalidClient('client_assertion jti was already used');
}
