/**
 * The resource-server side: turns the `Authorization: Bearer` header of a FHIR request into an
 * AccessContext (once per request), and describes the security of the FHIR endpoint for the
 * CapabilityStatement (SMART App Launch 2.2 §2.2 "Conformance").
 */
import type { CapabilityStatementRestSecurity } from '@medplum/fhirtypes';
import { GlucoGuardError, issue } from '../errors.js';
import type { AccessContext } from '../fhir/access.js';
import type { SmartUrls } from './context.js';
import { splitScopes } from './scopes.js';
import type { AccessClaims, TokenService } from './tokens.js';

/** AccessContext plus what the token says about itself. */
export interface SmartAccessContext extends AccessContext {
  encounter?: string;
  /** Expiry of the token, ms since epoch. */
  expiresAt?: number;
  /** Grant id: the same for every token of one authorization. */
  grantId?: string;
}

/**
 * 401 with the RFC 6750 §3 challenge that the HTTP edge must send as `WWW-Authenticate`; 400 for
 * `invalid_request` (§3.1: a malformed request).
 */
export class BearerTokenError extends GlucoGuardError {
  readonly wwwAuthenticate: string;
  override readonly headers: Record<string, string>;
  constructor(details: string, error?: 'invalid_token' | 'invalid_request') {
    const code = error === 'invalid_request' ? 'ERR_INVALID' : 'ERR_UNAUTHORIZED';
    super(code, details, [issue(code, details)]);
    this.name = 'BearerTokenError';
    this.wwwAuthenticate = error ? `Bearer realm="glucoguard", error="${error}", error_description="${details}"` : 'Bearer realm="glucoguard"';
    this.headers = { 'WWW-Authenticate': this.wwwAuthenticate };
  }
}

/** Verifies the bearer token of a FHIR request; throws BearerTokenError (401) for anything not live. */
export async function authenticateBearer(tokens: TokenService, headers: Record<string, string | undefined>): Promise<SmartAccessContext> {
  const authorization = headers.authorization ?? headers.Authorization;
  if (!authorization) throw new BearerTokenError('Authentication required');
  // another scheme (Basic…) is no bearer authentication at all: 401 without an error code (RFC 6750 §3.1)
  if (!/^Bearer(?: |$)/i.test(authorization.trim())) throw new BearerTokenError('Authentication required (Bearer)');
  const match = /^Bearer +([A-Za-z0-9\-._~+/]+=*)$/i.exec(authorization.trim());
  if (!match) throw new BearerTokenError('Malformed Authorization header', 'invalid_request');
  const claims = tokens.verifyAccessToken(match[1]!);
  if (!claims) throw new BearerTokenError('The access token is invalid or expired', 'invalid_token');
  // A KV outage throws ERR_UNAVAILABLE here: we cannot tell whether the token was revoked, so deny.
  if (await tokens.isRevoked(claims.gid)) throw new BearerTokenError('The access token was revoked', 'invalid_token');
  return accessContextOf(claims);
}

export function accessContextOf(claims: AccessClaims): SmartAccessContext {
  return {
    kind: 'token',
    subject: claims.sub,
    clientId: claims.client_id,
    scopes: splitScopes(claims.scope),
    expiresAt: claims.exp * 1000,
    grantId: claims.gid,
    ...(claims.fhirUser ? { fhirUser: claims.fhirUser } : {}),
    ...(claims.patient ? { patient: claims.patient } : {}),
    ...(claims.encounter ? { encounter: claims.encounter } : {}),
  };
}

/** `rest.security` for the CapabilityStatement: SMART-on-FHIR service and the oauth-uris extension. */
export function capabilitySecurity(urls: SmartUrls): CapabilityStatementRestSecurity {
  return {
    cors: true,
    service: [{
      coding: [{ system: 'http://terminology.hl7.org/CodeSystem/restful-security-service', code: 'SMART-on-FHIR', display: 'SMART-on-FHIR' }],
      text: 'OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)',
    }],
    extension: [{
      url: 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris',
      extension: [
        { url: 'authorize', valueUri: urls.authorize },
        { url: 'token', valueUri: urls.token },
        { url: 'introspect', valueUri: urls.introspect },
        { url: 'revoke', valueUri: urls.revoke },
      ],
    }],
  };
}
