/**
 * Discovery: SMART configuration (SMART App Launch 2.2 §2.2 "Conformance"), OpenID Connect
 * discovery, the JWKS and the style document referenced by `smart_style_url`. No authentication;
 * CORS open so browser apps can read them.
 */
import type { Request, Response } from 'express';
import type { SmartContext, SmartUrls } from './context.js';

export const SMART_CAPABILITIES = [
  'launch-ehr', 'launch-standalone', 'client-public', 'client-confidential-symmetric', 'client-confidential-asymmetric',
  'sso-openid-connect', 'context-banner', 'context-style', 'context-ehr-patient', 'context-ehr-encounter',
  'context-standalone-patient', 'permission-offline', 'permission-online', 'permission-patient', 'permission-user',
  'permission-v1', 'permission-v2', 'authorize-post',
];

export const SCOPES_SUPPORTED = [
  'openid', 'fhirUser', 'profile', 'launch', 'launch/patient', 'launch/encounter', 'offline_access', 'online_access',
  'patient/*.cruds', 'patient/*.rs', 'user/*.cruds', 'user/*.rs', 'system/*.cruds', 'system/*.rs', 'system/launch',
  'patient/*.read', 'user/*.read', 'system/*.read', 'patient/*.write', 'user/*.write', 'system/*.write',
];

/** The endpoint URLs both discovery documents publish (they must agree). */
function endpoints(urls: SmartUrls): Record<string, string> {
  return {
    issuer: urls.issuer,
    jwks_uri: urls.jwks,
    authorization_endpoint: urls.authorize,
    token_endpoint: urls.token,
    introspection_endpoint: urls.introspect,
    revocation_endpoint: urls.revoke,
  };
}

export function smartConfiguration(urls: SmartUrls): Record<string, unknown> {
  return {
    ...endpoints(urls),
    grant_types_supported: ['authorization_code', 'client_credentials', 'refresh_token'],
    token_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post', 'private_key_jwt'],
    token_endpoint_auth_signing_alg_values_supported: ['RS384', 'ES384'],
    scopes_supported: SCOPES_SUPPORTED,
    response_types_supported: ['code'],
    code_challenge_methods_supported: ['S256'],
    capabilities: SMART_CAPABILITIES,
  };
}

export function openidConfiguration(urls: SmartUrls): Record<string, unknown> {
  return {
    ...endpoints(urls),
    response_types_supported: ['code'],
    subject_types_supported: ['public'],
    id_token_signing_alg_values_supported: ['RS256'],
    scopes_supported: ['openid', 'fhirUser', 'profile'],
    claims_supported: ['iss', 'sub', 'aud', 'exp', 'iat', 'auth_time', 'nonce', 'fhirUser'],
    token_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post', 'private_key_jwt'],
    grant_types_supported: ['authorization_code', 'refresh_token', 'client_credentials'],
    code_challenge_methods_supported: ['S256'],
  };
}

/** Styling hints for embedded apps (SMART App Launch 2.2 "Styling"). */
export const SMART_STYLE = {
  color_background: '#ffffff',
  color_error: '#b00020',
  color_highlight: '#0b5fff',
  color_modal_backdrop: 'rgba(0,0,0,0.5)',
  color_success: '#1b7f3b',
  color_text: '#1a1a1a',
  dim_border_radius: '4px',
  dim_font_size_regular: '16px',
  dim_font_size_large: '20px',
  dim_spacing_size_regular: '16px',
  dim_spacing_size_small: '8px',
  font_family_body: 'system-ui, sans-serif',
  font_family_heading: 'system-ui, sans-serif',
};

function sendPublicJson(res: Response, body: unknown): void {
  res.set({ 'Access-Control-Allow-Origin': '*', 'Cache-Control': 'public, max-age=300' }).json(body);
}

export function discoveryHandlers(ctx: SmartContext) {
  return {
    smartConfiguration: (_req: Request, res: Response) => sendPublicJson(res, smartConfiguration(ctx.urls)),
    openidConfiguration: (_req: Request, res: Response) => sendPublicJson(res, openidConfiguration(ctx.urls)),
    jwks: (_req: Request, res: Response) => sendPublicJson(res, ctx.keys.jwks()),
    style: (_req: Request, res: Response) => sendPublicJson(res, SMART_STYLE),
  };
}
