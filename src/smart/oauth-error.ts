/**
 * OAuth 2.0 errors (RFC 6749 §4.1.2.1 and §5.2) with their stable `error` code. The token,
 * introspection and revocation endpoints answer them as JSON; the authorization endpoint redirects
 * with `error`, `error_description` and `state` once the redirect URI is known to be registered.
 */
import type { Response } from 'express';
import { isGlucoGuardError } from '../errors.js';
import type { Logger } from '../log.js';

export type OAuthErrorCode =
  | 'invalid_request' | 'invalid_client' | 'invalid_grant' | 'unauthorized_client' | 'unsupported_grant_type'
  | 'invalid_scope' | 'access_denied' | 'unsupported_response_type' | 'server_error' | 'temporarily_unavailable'
  | 'unsupported_token_type';

const STATUS: Partial<Record<OAuthErrorCode, number>> = {
  invalid_client: 401, server_error: 500, temporarily_unavailable: 503,
};

export class OAuthError extends Error {
  constructor(readonly error: OAuthErrorCode, readonly description: string, readonly status = STATUS[error] ?? 400,
    readonly headers: Record<string, string> = {}) {
    super(description);
    this.name = 'OAuthError';
  }
}

export const invalidRequest = (d: string) => new OAuthError('invalid_request', d);
export const invalidClient = (d = 'Client authentication failed') => new OAuthError('invalid_client', d);
export const invalidGrant = (d: string) => new OAuthError('invalid_grant', d);
export const invalidScope = (d: string) => new OAuthError('invalid_scope', d);
export const unauthorizedClient = (d: string) => new OAuthError('unauthorized_client', d);
export const tooManyRequests = (retryAfterSeconds: number) =>
  new OAuthError('temporarily_unavailable', 'Too many requests, slow down', 429, { 'Retry-After': String(retryAfterSeconds) });

/** Turns an error into an OAuthError; KV outages become 503, anything unexpected an opaque server_error. */
export function toOAuthError(err: unknown, logger?: Logger): OAuthError {
  if (err instanceof OAuthError) return err;
  if (isGlucoGuardError(err, 'ERR_UNAVAILABLE')) {
    logger?.warn({ code: err.code }, 'authorization server dependency unavailable');
    return new OAuthError('temporarily_unavailable', 'Service temporarily unavailable', 503);
  }
  logger?.error({ err }, 'authorization server internal error');
  return new OAuthError('server_error', 'Internal error');
}

/** Sends an OAuth error as RFC 6749 §5.2 JSON, never cached. */
export function sendOAuthError(res: Response, err: unknown, logger?: Logger): void {
  const e = toOAuthError(err, logger);
  res.status(e.status).set({ 'Cache-Control': 'no-store', Pragma: 'no-cache', ...e.headers });
  if (e.error === 'invalid_client' && e.status === 401) res.set('WWW-Authenticate', 'Basic realm="glucoguard"');
  res.json({ error: e.error, error_description: e.description });
}
