/**
 * Token revocation (RFC 7009). Revoking an access or refresh token revokes its whole grant: the
 * access tokens are refused on the next FHIR request and the refresh token can no longer be used.
 * Unknown tokens and tokens of other clients are answered 200 like any other (§2.2) and change nothing.
 * What the sign-in keeps server-side for the grant (the patient's key unlock) ends with it (revokeHooks).
 */
import type { Request, Response } from 'express';
import { authenticateClient } from './client-auth.js';
import type { SmartContext } from './context.js';
import { invalidClient, invalidRequest, sendOAuthError } from './oauth-error.js';
import { clientAuthDeps, formBody } from './token.js';

export function revokeHandler(ctx: SmartContext) {
  return async (req: Request, res: Response): Promise<void> => {
    res.set('Access-Control-Allow-Origin', '*');
    try {
      const body = formBody(req);
      const caller = await authenticateClient(clientAuthDeps(ctx), req.headers, body);
      if (!caller) throw invalidClient('client_id is required');
      if (typeof body.token !== 'string' || !body.token) throw invalidRequest('token is required');
      const grant = await grantOf(ctx, body.token);
      if (grant && grant.clientId === caller.client.clientId) {
        await ctx.tokens.revokeGrant(grant.gid);
        if (grant.refresh) await ctx.tokens.takeRefreshToken(body.token);
        await runRevokeHooks(ctx, grant.gid);
      }
      res.status(200).set({ 'Cache-Control': 'no-store', Pragma: 'no-cache' }).end();
    } catch (err) {
      sendOAuthError(res, err, ctx.logger);
    }
  };
}

async function runRevokeHooks(ctx: SmartContext, gid: string): Promise<void> {
  for (const hook of ctx.revokeHooks) {
    try {
      await hook(gid);
    } catch (err) {
      // The tokens are revoked already (nothing can reach the unlock with them); it expires with its TTL.
      ctx.logger.error({ err: err instanceof Error ? err.name : 'error' }, 'grant revocation hook failed');
    }
  }
}

async function grantOf(ctx: SmartContext, token: string): Promise<{ gid: string; clientId: string; refresh: boolean } | undefined> {
  const claims = ctx.tokens.verifyAccessToken(token);
  if (claims) return { gid: claims.gid, clientId: claims.client_id, refresh: false };
  const record = await ctx.tokens.findRefreshToken(token);
  return record ? { gid: record.gid, clientId: record.clientId, refresh: true } : undefined;
}
