/**
 * Token introspection (RFC 7662). The caller is a confidential client or presents a live access
 * token. Anything not live — unknown, expired, revoked, malformed — is only `{"active": false}`.
 */
import type { Request, Response } from 'express';
import { authenticateClient } from './client-auth.js';
import type { SmartContext } from './context.js';
import { invalidClient, invalidRequest, sendOAuthError } from './oauth-error.js';
import { clientAuthDeps, formBody } from './token.js';

export function introspectHandler(ctx: SmartContext) {
  return async (req: Request, res: Response): Promise<void> => {
    try {
      const body = formBody(req);
      await authorizeCaller(ctx, req, body);
      if (typeof body.token !== 'string' || !body.token) throw invalidRequest('token is required');
      const answer = await describeAccessToken(ctx, body.token) ?? await describeRefreshToken(ctx, body.token) ?? { active: false };
      res.set({ 'Cache-Control': 'no-store', Pragma: 'no-cache' }).json(answer);
    } catch (err) {
      sendOAuthError(res, err, ctx.logger);
    }
  };
}

async function authorizeCaller(ctx: SmartContext, req: Request, body: Record<string, unknown>): Promise<void> {
  const authorization = req.headers.authorization;
  if (authorization?.startsWith('Bearer ')) {
    const claims = ctx.tokens.verifyAccessToken(authorization.slice(7).trim());
    if (claims && !(await ctx.tokens.isRevoked(claims.gid))) return;
    throw invalidClient('The bearer token is not valid');
  }
  const caller = await authenticateClient(clientAuthDeps(ctx), req.headers, body);
  if (!caller || caller.method === 'none') throw invalidClient('Introspection needs client authentication or a bearer token');
}

async function describeAccessToken(ctx: SmartContext, token: string) {
  const claims = ctx.tokens.verifyAccessToken(token);
  if (!claims || (await ctx.tokens.isRevoked(claims.gid))) return undefined;
  return {
    active: true,
    token_type: 'Bearer',
    scope: claims.scope,
    client_id: claims.client_id,
    sub: claims.sub,
    iss: claims.iss,
    aud: claims.aud,
    exp: claims.exp,
    iat: claims.iat,
    ...(claims.fhirUser ? { fhirUser: `${ctx.urls.fhirBase}/${claims.fhirUser}` } : {}),
    ...(claims.patient ? { patient: claims.patient } : {}),
    ...(claims.encounter ? { encounter: claims.encounter } : {}),
  };
}

async function describeRefreshToken(ctx: SmartContext, token: string) {
  const record = await ctx.tokens.findRefreshToken(token);
  if (!record || (await ctx.tokens.isRevoked(record.gid))) return undefined;
  return {
    active: true,
    token_type: 'refresh_token',
    scope: record.scopes.join(' '),
    client_id: record.clientId,
    sub: record.sub,
    iss: ctx.urls.issuer,
    exp: Math.floor(record.expiresAt / 1000),
    ...(record.fhirUser ? { fhirUser: `${ctx.urls.fhirBase}/${record.fhirUser}` } : {}),
    ...(record.patient ? { patient: record.patient } : {}),
  };
}
