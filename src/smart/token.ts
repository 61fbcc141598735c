/**
 * The token endpoint (RFC 6749 §3.2, §4.1.3, §4.4, §6; SMART App Launch 2.2 §2.0.7, §2.0.10 and
 * Backend Services), made of small named steps. Errors answer RFC 6749 §5.2 JSON.
 */
import { createHash } from 'node:crypto';
import type { Request, Response } from 'express';
import { authenticateClient, type AuthenticatedClient } from './client-auth.js';
import type { SmartContext } from './context.js';
import { OAuthError, invalidClient, invalidGrant, invalidRequest, invalidScope, sendOAuthError, unauthorizedClient } from './oauth-error.js';
import { isKnownScope, scopeCovers, splitScopes } from './scopes.js';
import { TokenService, type Grant } from './tokens.js';

const GRANT_TYPES = ['authorization_code', 'refresh_token', 'client_credentials'] as const;
type GrantType = (typeof GRANT_TYPES)[number];
type Body = Record<string, unknown>;

const PKCE_VERIFIER = /^[A-Za-z0-9\-._~]{43,128}$/;

export function tokenHandler(ctx: SmartContext) {
  return async (req: Request, res: Response): Promise<void> => {
    res.set('Access-Control-Allow-Origin', '*');
    try {
      await ctx.limiter.hit('tokenPerIp', req.ip ?? 'unknown');
      const body = formBody(req);
      const grantType = supportedGrantTypeCheck(body);
      const caller = await authenticateClient(clientAuthDeps(ctx), req.headers, body);
      if (caller) await ctx.limiter.hit('tokenPerClient', perClientKey(caller, req.ip));
      let response: Record<string, unknown>;
      if (grantType === 'authorization_code') response = await authorizationCodeGrant(ctx, body, caller);
      else if (grantType === 'refresh_token') response = await refreshTokenGrant(ctx, body, caller);
      else response = await clientCredentialsGrant(ctx, body, caller);
      res.status(200).set({ 'Cache-Control': 'no-store', Pragma: 'no-cache' }).json(response);
    } catch (err) {
      sendOAuthError(res, err, ctx.logger);
    }
  };
}

/**
 * What the per-client token limit counts. A public client proves nothing by naming itself: anyone can
 * send its client_id, so a count of the client alone let one caller exhaust it for every user of the
 * app (their code exchanges and refreshes answered 429). Its requests are counted per client and
 * address; an authenticated client's, for the client.
 */
function perClientKey(caller: AuthenticatedClient, ip: string | undefined): string {
  return caller.method === 'none' ? `${caller.client.clientId}@${ip ?? 'unknown'}` : caller.client.clientId;
}

export function clientAuthDeps(ctx: SmartContext) {
  return { store: ctx.store, kv: ctx.kv, tokenUrl: ctx.urls.token, now: ctx.now };
}

/** The body must be a form (RFC 6749 §3.2); express leaves `req.body` undefined otherwise. */
export function formBody(req: Request): Body {
  if (!req.is('application/x-www-form-urlencoded')) throw invalidRequest('The body must be application/x-www-form-urlencoded');
  const body = (req.body ?? {}) as Body;
  for (const [name, value] of Object.entries(body)) {
    if (Array.isArray(value)) throw invalidRequest(`The parameter ${name} was given more than once`);
  }
  return body;
}

function supportedGrantTypeCheck(body: Body): GrantType {
  if (typeof body.grant_type !== 'string' || body.grant_type === '') throw invalidRequest('grant_type is required');
  if (!(GRANT_TYPES as readonly string[]).includes(body.grant_type)) {
    throw new OAuthError('unsupported_grant_type', `grant_type ${body.grant_type} is not supported`);
  }
  return body.grant_type as GrantType;
}

// ---- authorization_code ----------------------------------------------------------------------

async function authorizationCodeGrant(ctx: SmartContext, body: Body, caller: AuthenticatedClient | undefined) {
  if (!caller) throw invalidClient('client_id is required');
  if (typeof body.code !== 'string' || !body.code) throw invalidRequest('code is required');
  const { record, reusedGrant } = await ctx.tokens.takeCode(body.code);
  if (reusedGrant) await ctx.tokens.revokeGrant(reusedGrant);
  if (!record) throw invalidGrant('The code is invalid, expired or already used');
  if (record.clientId !== caller.client.clientId) throw invalidGrant('The code was issued to another client');
  if (body.redirect_uri !== record.redirectUri) throw invalidGrant('redirect_uri does not match the authorization request');
  verifyPkce(body.code_verifier, record.codeChallenge);
  return tokenResponse(ctx, record, true);
}

function verifyPkce(verifier: unknown, challenge: string): void {
  if (typeof verifier !== 'string' || !PKCE_VERIFIER.test(verifier)) throw invalidGrant('code_verifier is missing or malformed');
  const computed = createHash('sha256').update(verifier).digest('base64url');
  if (computed !== challenge) throw invalidGrant('code_verifier does not match the code_challenge');
}

// ---- refresh_token ---------------------------------------------------------------------------

async function refreshTokenGrant(ctx: SmartContext, body: Body, caller: AuthenticatedClient | undefined) {
  if (typeof body.refresh_token !== 'string' || !body.refresh_token) throw invalidRequest('refresh_token is required');
  const record = await ctx.tokens.findRefreshToken(body.refresh_token);
  if (!record) {
    // A rotated-out token presented again: it was stolen or copied, and one of its two holders has the
    // live one. Every token of the grant is revoked (RFC 9700 §4.14.2, refresh token reuse detection).
    const reused = await ctx.tokens.reusedRefreshGrant(body.refresh_token);
    // A confidential client's token revokes its grant only when presented with that client's
    // credentials: anyone holding an old token of it could otherwise cut the client's users off.
    if (reused?.clientId) checkRefreshClient(ctx, reused.clientId, caller);
    // a grant revoked already (the app's or the patient's revocation) is said as such, not as a reuse
    if (reused && !(await ctx.tokens.isRevoked(reused.gid))) {
      await ctx.tokens.revokeGrant(reused.gid);
      throw invalidGrant('The refresh token was already used; every token of its grant is now revoked');
    }
  }
  if (!record || (await ctx.tokens.isRevoked(record.gid))) throw invalidGrant('The refresh token is invalid, expired or revoked');
  checkRefreshClient(ctx, record.clientId, caller);
  const scopes = narrowedScopes(record.scopes, body.scope);
  // Rotation: the presented token is consumed; a concurrent second use finds nothing.
  if (!(await ctx.tokens.takeRefreshToken(body.refresh_token))) {
    await ctx.tokens.revokeGrant(record.gid); // used twice at once: reuse, as above
    throw invalidGrant('The refresh token was already used; every token of its grant is now revoked');
  }
  // RFC 6749 §6: only the access token narrows; the new refresh token keeps the presented one's scope.
  return tokenResponse(ctx, { ...record, scopes }, false, record.scopes);
}

/** Bound to its client; a public client may refresh without naming itself (SMART 2.2 §2.0.10). */
function checkRefreshClient(ctx: SmartContext, clientId: string, caller: AuthenticatedClient | undefined): void {
  if (caller) {
    if (caller.client.clientId !== clientId) throw invalidGrant('The refresh token was issued to another client');
    return;
  }
  const client = ctx.store.getClient(clientId);
  if (!client || client.type !== 'public') throw invalidClient('Client authentication is required');
}

/** The scope of the new access token may narrow the grant, never widen it. */
function narrowedScopes(granted: string[], requested: unknown): string[] {
  if (requested === undefined || requested === '') return granted;
  const scopes = splitScopes(String(requested));
  const wider = scopes.filter((s) => !scopeCovers(granted, s));
  if (wider.length) throw invalidScope(`Scopes beyond the original grant: ${wider.join(' ')}`);
  return scopes;
}

// ---- client_credentials (Backend Services) ---------------------------------------------------

async function clientCredentialsGrant(ctx: SmartContext, body: Body, caller: AuthenticatedClient | undefined) {
  if (!caller) throw invalidClient('Client authentication is required');
  if (caller.client.type === 'public') throw unauthorizedClient('Public clients cannot use client_credentials');
  const requested = splitScopes(typeof body.scope === 'string' ? body.scope : undefined);
  if (requested.length === 0) throw invalidScope('scope is required');
  const unknown = requested.filter((s) => !isKnownScope(s) || !s.startsWith('system/'));
  if (unknown.length) throw invalidScope(`Only system scopes can be requested: ${unknown.join(' ')}`);
  const scopes = requested.filter((s) => scopeCovers(caller.client.scopes, s));
  if (scopes.length === 0) throw invalidScope('None of the requested scopes are registered for this client');
  const grant: Grant = { gid: TokenService.newGrantId(), clientId: caller.client.clientId, scopes, sub: caller.client.clientId };
  return tokenResponse(ctx, grant, false, grant.scopes, ctx.tokens.lifetimes.backendAccessSeconds);
}

// ---- response --------------------------------------------------------------------------------

/**
 * Access token, optional refresh and id tokens, and the SMART launch context. `refreshScopes`: the
 * scope of the refresh token, when it differs from the access token's (a narrowed refresh);
 * `accessSeconds`: the access token's lifetime (Backend Services: shorter).
 */
async function tokenResponse(ctx: SmartContext, grant: Grant, firstIssue: boolean, refreshScopes = grant.scopes,
  accessSeconds = ctx.tokens.lifetimes.accessSeconds): Promise<Record<string, unknown>> {
  const access = ctx.tokens.signAccessToken(grant, accessSeconds);
  const response: Record<string, unknown> = {
    access_token: access.token,
    token_type: 'Bearer',
    expires_in: access.expiresIn,
    scope: grant.scopes.join(' '),
  };
  if (refreshScopes.includes('offline_access') || refreshScopes.includes('online_access')) {
    response.refresh_token = await ctx.tokens.issueRefreshToken({ ...grant, scopes: refreshScopes });
  }
  if (grant.scopes.includes('openid')) response.id_token = idToken(ctx, grant, firstIssue);
  if (grant.patient) response.patient = grant.patient;
  if (grant.encounter) response.encounter = grant.encounter;
  if (grant.fhirContext) response.fhirContext = grant.fhirContext;
  if (grant.intent) response.intent = grant.intent;
  if (grant.fhirUser) {
    response.need_patient_banner = grant.needPatientBanner ?? true;
    response.smart_style_url = ctx.urls.style;
  }
  return response;
}

/**
 * OpenID Connect Core §3.1.3.3: a token response to an authentication request (`openid` granted)
 * holds an id_token — iss, sub, aud, exp, iat, auth_time, and the nonce on first issue (§12.2: not
 * on a refresh). The `fhirUser` claim is the SMART one the `fhirUser` scope asks for (`profile`, its
 * SMART 1 name, too); `openid` alone identifies the user by `sub` only.
 */
function idToken(ctx: SmartContext, grant: Grant, firstIssue: boolean): string {
  const withFhirUser = grant.scopes.includes('fhirUser') || grant.scopes.includes('profile');
  return ctx.tokens.signIdToken({ ...grant, fhirUser: withFhirUser ? grant.fhirUser : undefined, nonce: firstIssue ? grant.nonce : undefined });
}
