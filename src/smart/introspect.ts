/**
 * Token introspection (RFC 7662). The caller must be authorized (§2.1: "to prevent token scanning
 * attacks, the endpoint MUST also require some form of authorization"): a confidential client
 * authenticating with its credentials (SMART App Launch 2.2, token-introspection.html: any client
 * allowed to introspect "SHALL be able to authenticate ... using its client credentials"), or a
 * live access token of ours.
 *
 * What a caller may learn is confined to its own tokens (§2.2 and §4: the server may limit what it
 * tells a caller about a token, and a token the caller "is not allowed to know about" is answered
 * `{"active": false}`): a token issued to another client — its patient, fhirUser, subject and
 * scopes — is none of the caller's business, whoever the caller is. No client here is a separate
 * resource server that would need other clients' tokens described: GlucoGuard's own FHIR endpoint
 * checks its tokens itself. Anything not live — unknown, expired, revoked, malformed — is likewise
 * only `{"active": false}`, so the answer never tells another client's live token from garbage.
 */
import type { Request, Response } from 'express';
import { authenticateClient } from './client-auth.js';
import type { SmartContext } from './context.js';
import { invalidClient, invalidRequest, sendOAuthError } from './oauth-error.js';
import { clientAuthDeps, formBody } from './token.js';

const INACTIVE = Object.freeze({ active: false });

export function introspectHandler(ctx: SmartContext) {
  return async (req: Request, res: Response): Promise<void> => {
    try {
      const body = formBody(req);
      const caller = await authorizeCaller(ctx, req, body);
      if (typeof body.token !== 'string' || !body.token) throw invalidRequest('token is required');
      const answer = await describeAccessToken(ctx, body.token) ?? await describeRefreshToken(ctx, body.token);
      res.set({ 'Cache-Control': 'no-store', Pragma: 'no-cache' }).json(answer && answer.client_id === caller ? answer : INACTIVE);
    } catch (err) {
      sendOAuthError(res, err, ctx.logger);
    }
  };
}

/** The client id of the authorized caller: a confidential client's credentials, or the client of a live bearer token. */
async function authorizeCaller(ctx: SmartContext, req: Request, body: Record<string, unknown>): Promise<string> {
  const authorization = req.headers.authorization;
  if (authorization?.startsWith('Bearer ')) {
    const claims = ctx.tokens.verifyAccessToken(authorization.slice(7).trim());
    if (claims && !(await ctx.tokens.isRevoked(claims.gid))) return claims.client_id;
    throw invalidClient('The bearer token is not valid');
  }
  const caller = await authenticateClient(clientAuthDeps(ctx), req.headers, body);
  if (!caller || caller.method === 'none') throw invalidClient('Introspection needs client authentication or a bearer token');
  return caller.client.clientId;
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
    ...(claims.fhirUser && grantsFhirUser(claims.scope) ? { fhirUser: `${ctx.urls.fhirBase}/${claims.fhirUser}` } : {}),
    ...(claims.patient ? { patient: claims.patient } : {}),
    ...(claims.encounter ? { encounter: claims.encounter } : {}),
    // the rest of the launch context the token response gave (SMART token introspection: SHALL)
    ...(claims.fhirContext ? { fhirContext: claims.fhirContext } : {}),
    ...(claims.need_patient_banner !== undefined ? { need_patient_banner: claims.need_patient_banner, smart_style_url: ctx.urls.style } : {}),
  };
}

/**
 * SMART token introspection names the user (`fhirUser`) when the token's scopes asked for it; the
 * claim stays in the token itself, where the FHIR endpoint decides consent by it.
 */
function grantsFhirUser(scope: string): boolean {
  return scope.split(' ').includes('fhirUser');
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
    ...(record.fhirUser && record.scopes.includes('fhirUser') ? { fhirUser: `${ctx.urls.fhirBase}/${record.fhirUser}` } : {}),
    ...(record.patient ? { patient: record.patient } : {}),
  };
}
