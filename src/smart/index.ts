/**
 * GlucoGuard's SMART App Launch 2.2 authorization server and the resource-server checks the FHIR
 * facade calls. src/app.ts builds it once with `createSmart` and mounts `router` at `/`.
 *
 * Paths: /fhir/.well-known/smart-configuration, /fhir/.well-known/openid-configuration,
 * /.well-known/openid-configuration, /.well-known/jwks.json, /oauth/{authorize,login,
 * select-patient,approve,token,introspect,revoke,jwks}, /smart/launch, /smart/style.json.
 */
import express, { type NextFunction, type Request, type RequestHandler, type Response, type Router } from 'express';
import type { CapabilityStatementRestSecurity } from '@medplum/fhirtypes';
import type { Config } from '../config.js';
import { OPEN_ACCESS, type AccessContext } from '../fhir/access.js';
import { loadServerKeys } from '../keys.js';
import type { KeyValueStore } from '../kv/port.js';
import type { Logger } from '../log.js';
import { onlyMethods } from '../observability/fallback.js';
import { authorizeHandlers } from './authorize.js';
import { smartUrls, type GrantRevokedHook, type PatientDirectory, type PatientLoginHook, type SmartContext, type SmartUrls } from './context.js';
import { discoveryHandlers } from './discovery.js';
import { introspectHandler } from './introspect.js';
import { SigningKeys } from './keys.js';
import { launchHandler } from './launch-endpoint.js';
import { DEFAULT_RATE_LIMITS, RateLimiter, type RateLimits } from './rate-limit.js';
import { authenticateBearer, capabilitySecurity, type SmartAccessContext } from './resource.js';
import { revokeHandler } from './revoke.js';
import { scopeAllows, type Interaction } from './scopes.js';
import { SmartStore } from './store.js';
import { tokenHandler } from './token.js';
import { DEFAULT_LIFETIMES, TokenService, type TokenLifetimes } from './tokens.js';

export { BearerTokenError, type SmartAccessContext } from './resource.js';
export { scopeAllows, scopeFilters, type Interaction } from './scopes.js';
export type { GrantRevokedHook, PatientChoice, PatientDirectory, PatientLoginHook, SmartUrls } from './context.js';

export interface SmartDeps {
  config: Config;
  kv: KeyValueStore;
  logger: Logger;
  /** Clock in ms (tests freeze it). */
  now?: () => number;
  /** FHIR base URL, e.g. `${config.baseUrl}/fhir`: the token `aud` and the issuer. */
  fhirBase: string;
  /** The key root (src/keys.ts) the signing keys are sealed under; absent: loaded from the data directory. */
  rootKey?: string;
  /** The patients the picker offers a signed-in user (those they may see); without it the picker asks for a patient ID. */
  patients?: PatientDirectory;
  /**
   * Whether the server holds `type/id` (src/repository/exists.ts over the app's repository): an EHR
   * launch naming a patient or practitioner that is not there is refused. Without it launches are
   * checked for form only, which start-up announces.
   */
  resourceExists?: (type: string, id: string) => Promise<boolean>;
  rateLimits?: Partial<RateLimits>;
  lifetimes?: Partial<TokenLifetimes>;
}

export interface Smart {
  /** Mount at `/`. */
  router: Router;
  urls: SmartUrls;
  /**
   * Works out who is asking from the request headers (once per request). Throws BearerTokenError
   * (ERR_UNAUTHORIZED, 401; send `err.headers` = WWW-Authenticate) for a missing, invalid, expired,
   * revoked or wrong-audience token, ERR_UNAVAILABLE (503) when revocation cannot be checked.
   * With GLUCOGUARD_AUTH=off it returns OPEN_ACCESS.
   */
  authenticate(headers: Record<string, string | undefined>, requestUrl?: string): Promise<AccessContext & Partial<SmartAccessContext>>;
  /** `rest[0].security` for the CapabilityStatement, matching discovery. */
  capabilitySecurity(): CapabilityStatementRestSecurity;
  /** See scopes.ts: final when `resource` is given, a pre-check otherwise. */
  scopeAllows(access: AccessContext, interaction: Interaction, resourceType: string, resource?: object): boolean;
  /** Users and clients (tests and operator tools). */
  store: SmartStore;
  keys: SigningKeys;
  tokens: TokenService;
  /** Adds a hook run at each patient sign-in (custodial key unlock); see PatientLoginHook. */
  onPatientLogin(hook: PatientLoginHook): void;
  /** Adds a hook run when a grant is revoked at /oauth/revoke (ends the key unlock); see GrantRevokedHook. */
  onGrantRevoked(hook: GrantRevokedHook): void;
  close(): Promise<void>;
}

/** Builds the authorization server: opens the user/client store, loads or generates signing keys. */
export async function createSmart(deps: SmartDeps): Promise<Smart> {
  const now = deps.now ?? Date.now;
  const fhirBase = deps.fhirBase.replace(/\/+$/, '');
  const urls = smartUrls(deps.config.baseUrl, fhirBase);
  const store = new SmartStore(deps.config.dataDir);
  const keys = SigningKeys.open(deps.config.dataDir, deps.rootKey ?? loadServerKeys(deps.config).root);
  const tokens = new TokenService(deps.kv, keys, fhirBase, now, { ...DEFAULT_LIFETIMES, ...deps.lifetimes }, (clientId) => store.isDisabled(clientId),
    (subject) => store.userCutoff(subject));
  const limiter = new RateLimiter(deps.kv, { ...DEFAULT_RATE_LIMITS, ...deps.rateLimits }, now);
  const ctx: SmartContext = {
    store, kv: deps.kv, keys, tokens, limiter, urls, logger: deps.logger, now, patients: deps.patients, loginHooks: [], revokeHooks: [],
    ...(deps.resourceExists ? { resourceExists: deps.resourceExists } : {}),
  };
  const authOff = deps.config.auth === 'off';
  if (authOff) deps.logger.warn('GLUCOGUARD_AUTH=off: /fhir accepts requests WITHOUT authentication. For local experiments only.');
  if (!deps.resourceExists) deps.logger.warn('POST /smart/launch cannot check that a launch\'s patient and practitioner exist (no resource lookup wired into createSmart)');
  deps.logger.info({ issuer: urls.issuer, users: `${deps.config.dataDir}/smart/smart.sqlite`, keys: `${deps.config.dataDir}/keys/` },
    'SMART authorization server ready');

  return {
    router: buildRouter(ctx),
    urls,
    authenticate: async (headers) => (authOff ? OPEN_ACCESS : authenticateBearer(tokens, headers)),
    capabilitySecurity: () => capabilitySecurity(urls),
    scopeAllows,
    store,
    keys,
    tokens,
    onPatientLogin: (hook) => { ctx.loginHooks.push(hook); },
    onGrantRevoked: (hook) => { ctx.revokeHooks.push(hook); },
    close: async () => store.close(),
  };
}

function buildRouter(ctx: SmartContext): Router {
  const router = express.Router();
  const form = express.urlencoded({ extended: false, limit: '64kb', parameterLimit: 100 });
  const json = express.json({ limit: '64kb' });
  const discovery = discoveryHandlers(ctx);
  const pages = authorizeHandlers(ctx);

  // each path's methods are noted as it is routed, so any other method on it answers 405 with Allow
  const methods = new Map<string, string[]>();
  const route = (method: 'get' | 'post', paths: string | string[], ...handlers: RequestHandler[]) => {
    router[method](paths, ...handlers);
    for (const p of [paths].flat()) methods.set(p, [...(methods.get(p) ?? []), method.toUpperCase()]);
  };

  route('get', '/fhir/.well-known/smart-configuration', discovery.smartConfiguration);
  route('get', '/fhir/.well-known/openid-configuration', discovery.openidConfiguration);
  route('get', '/.well-known/openid-configuration', discovery.openidConfiguration);
  route('get', ['/oauth/jwks', '/.well-known/jwks.json'], discovery.jwks);
  route('get', '/smart/style.json', discovery.style);

  route('get', '/oauth/authorize', pages.authorize);
  route('post', '/oauth/authorize', form, pages.authorize);
  route('post', '/oauth/login', form, pages.login);
  route('post', '/oauth/select-patient', form, pages.selectPatient);
  route('post', '/oauth/approve', form, pages.approve);

  router.options(['/oauth/token', '/oauth/revoke'], (_req, res) => {
    res.set({ 'Access-Control-Allow-Origin': '*', 'Access-Control-Allow-Methods': 'POST', 'Access-Control-Allow-Headers': 'Authorization, Content-Type',
      'Access-Control-Max-Age': '600' }).status(204).end();
  });
  route('post', '/oauth/token', form, tokenHandler(ctx));
  route('post', '/oauth/introspect', form, introspectHandler(ctx));
  route('post', '/oauth/revoke', form, revokeHandler(ctx));
  route('post', '/smart/launch', json, form, launchHandler(ctx));
  // a body the parsers refuse (not JSON, too large) is answered in the endpoint's own dialect,
  // OAuth error JSON as launchHandler's other refusals, not the server's generic `{"error": text}`
  router.use('/smart/launch', (err: unknown, _req: Request, res: Response, next: NextFunction) => {
    const e = err as { status?: unknown; type?: unknown };
    if (e?.status === 413) return void res.status(413).set('Cache-Control', 'no-store').json({ error: 'invalid_request', error_description: 'Request body too large' });
    if (e?.status === 400 && e.type === 'entity.parse.failed') {
      return void res.status(400).set('Cache-Control', 'no-store').json({ error: 'invalid_request', error_description: 'The body is not valid JSON' });
    }
    next(err);
  });
  for (const [path, allowed] of methods) router.all(path, onlyMethods(allowed));
  return router;
}
