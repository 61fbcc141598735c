/**
 * The authorization endpoint (RFC 6749 §4.1.1 + SMART App Launch 2.2 §2.0.5 / §2.0.6), GET and
 * form POST, and the pages it leads through: login → (patient picker) → approval → code.
 *
 * Until the redirect URI is known to be registered, errors show an error page; after that they
 * redirect with `error`, `error_description` and `state`. The pending request lives in the KV
 * port under a random id carried in the forms, so any replica can continue it.
 */
import { randomBytes } from 'node:crypto';
import type { Request, Response } from 'express';
import type { AccessContext } from '../fhir/access.js';
import type { SmartContext } from './context.js';
import { peekLaunch, takeLaunch, type LaunchContext } from './launch.js';
import { OAuthError, invalidRequest, invalidScope, toOAuthError } from './oauth-error.js';
import { approvalPage, errorPage, loginPage, patientLabel, patientPickerPage, sendPage } from './pages.js';
import { dummyHash, verifyPassword } from './passwords.js';
import { describeScope, isKnownScope, isResourceScopeShaped, scopeCovers, splitScopes } from './scopes.js';
import type { Client } from './store.js';
import { TokenService, type Grant } from './tokens.js';

const PENDING_TTL_MS = 10 * 60_000;
const PKCE_CHALLENGE = /^[A-Za-z0-9\-._~]{43,128}$/;
/**
 * Longest values of the client's own parameters kept with the pending request: it is stored before
 * anyone signs in, so what anyone may send is bounded (with the per-IP authorizePerIp limit).
 */
const MAX_LENGTH = { state: 1024, nonce: 1024, scope: 4096 } as const;

/** An authorization request between the first GET and the code. */
interface PendingRequest {
  clientId: string;
  redirectUri: string;
  state?: string;
  scopes: string[];
  codeChallenge: string;
  nonce?: string;
  launch?: LaunchContext;
  stage: 'login' | 'patient' | 'approve';
  user?: { sub: string; fhirUser: string };
  patient?: string;
  authTime?: number;
  /** Grant id of the tokens this request leads to, chosen at sign-in so a session can be prepared for it. */
  gid?: string;
}

type Params = Record<string, string | undefined>;

const EXPIRED = 'This sign-in request has expired or was already used. Start again from the application.';

/** Shown as a page because no valid redirect URI is known (RFC 6749 §4.1.2.1). */
class PageError extends Error {}

export function authorizeHandlers(ctx: SmartContext) {
  return {
    authorize: (req: Request, res: Response) => handle(ctx, res, () => authorize(ctx, req, res)),
    login: (req: Request, res: Response) => handle(ctx, res, () => login(ctx, req, res)),
    selectPatient: (req: Request, res: Response) => handle(ctx, res, () => selectPatient(ctx, req, res)),
    approve: (req: Request, res: Response) => handle(ctx, res, () => approve(ctx, req, res)),
  };
}

async function handle(ctx: SmartContext, res: Response, step: () => Promise<void>): Promise<void> {
  try {
    await step();
  } catch (err) {
    if (err instanceof PageError) return sendPage(res, 400, errorPage('Cannot continue', err.message));
    const e = toOAuthError(err, ctx.logger);
    res.set(e.headers); // Retry-After of a 429
    sendPage(res, e.status, errorPage(e.status === 429 ? 'Too many attempts' : 'Cannot continue', e.description));
  }
}

// ---- GET/POST /oauth/authorize -------------------------------------------------------------

async function authorize(ctx: SmartContext, req: Request, res: Response): Promise<void> {
  await ctx.limiter.hit('authorizePerIp', req.ip ?? 'unknown');
  const params = readParams(req.method === 'POST' ? req.body : req.query);
  const client = loadClient(ctx, params);
  const redirectUri = registeredRedirectUri(client, params);
  try {
    checkLengths(params);
    checkResponseType(params);
    checkAudience(ctx, params);
    const codeChallenge = checkPkce(params);
    const launch = await resolveLaunch(ctx, client, params);
    const scopes = grantableScopes(client, params.scope, launch !== undefined);
    const pending: PendingRequest = {
      clientId: client.clientId, redirectUri, state: params.state, scopes, codeChallenge, nonce: params.nonce,
      stage: 'login', ...(launch ? { launch } : {}),
    };
    if (launch) return await continueEhrLaunch(ctx, res, pending);
    const id = await savePending(ctx, pending);
    sendPage(res, 200, loginPage({ requestId: id, clientName: client.name }));
  } catch (err) {
    // an over-long state is not sent back either
    redirectWithError(ctx, res, redirectUri, err, (params.state?.length ?? 0) <= MAX_LENGTH.state ? params.state : undefined);
  }
}

function readParams(source: unknown): Params {
  const params: Params = {};
  for (const [name, value] of Object.entries((source ?? {}) as Record<string, unknown>)) {
    if (Array.isArray(value)) throw new PageError(`The parameter "${name}" was given more than once.`);
    if (typeof value === 'string') params[name] = value;
  }
  return params;
}

function loadClient(ctx: SmartContext, params: Params): Client {
  if (!params.client_id) throw new PageError('The request names no client (client_id is missing).');
  const client = ctx.store.getClient(params.client_id);
  if (!client) throw new PageError('The application is not registered with this server.');
  return client;
}

/** The redirect URI must be exactly one the client registered; never redirect anywhere else. */
function registeredRedirectUri(client: Client, params: Params): string {
  if (!params.redirect_uri) throw new PageError('The request has no redirect_uri.');
  if (!client.redirectUris.includes(params.redirect_uri)) throw new PageError('The redirect_uri is not registered for this application.');
  return params.redirect_uri;
}

function checkLengths(params: Params): void {
  for (const [name, max] of Object.entries(MAX_LENGTH)) {
    if ((params[name]?.length ?? 0) > max) throw invalidRequest(`${name} must be at most ${max} characters`);
  }
}

function checkResponseType(params: Params): void {
  if (params.response_type !== 'code') throw new OAuthError('unsupported_response_type', 'response_type must be code');
}

function checkAudience(ctx: SmartContext, params: Params): void {
  const strip = (u: string) => u.replace(/\/+$/, '');
  if (!params.aud || strip(params.aud) !== strip(ctx.urls.fhirBase)) {
    throw invalidRequest(`aud must be this server's FHIR base URL (${ctx.urls.fhirBase})`);
  }
}

function checkPkce(params: Params): string {
  if (!params.code_challenge) throw invalidRequest('PKCE is required: code_challenge is missing');
  if (params.code_challenge_method !== 'S256') throw invalidRequest('code_challenge_method must be S256');
  if (!PKCE_CHALLENGE.test(params.code_challenge)) throw invalidRequest('code_challenge is malformed');
  return params.code_challenge;
}

/**
 * The EHR launch context, consumed for this client. A launch bound to another client is refused
 * before it is consumed: an app that saw the launch URL cannot use it up for the app it was made for.
 */
async function resolveLaunch(ctx: SmartContext, client: Client, params: Params): Promise<LaunchContext | undefined> {
  if (params.launch === undefined) return undefined;
  const bound = await peekLaunch(ctx.kv, params.launch);
  if (!bound) throw invalidRequest('The launch value is unknown, used or expired');
  // (a launch bound to no app — made before client_id was required — is no one's: launch.ts)
  if (bound.clientId !== client.clientId) throw invalidRequest('The launch belongs to another application');
  // still single-use: of two uses by the right client only one takes it
  const launch = await takeLaunch(ctx.kv, params.launch);
  if (!launch) throw invalidRequest('The launch value is unknown, used or expired');
  return launch;
}

/**
 * Requested scopes the client may have. A resource scope (`patient/`, `user/`, `system/`) this
 * server cannot read is an error: it names data, and a typo in it must not quietly grant less. Any
 * other scope it does not know (OpenID Connect's `email`, another server's own) is left out, as
 * OpenID Connect Core §3.1.2.1 asks and RFC 6749 §3.3 allows: the token's `scope` says what was
 * granted. Scopes the client is not registered for are dropped.
 */
function grantableScopes(client: Client, scope: string | undefined, ehrLaunch: boolean): string[] {
  const requested = splitScopes(scope).filter((s) => isKnownScope(s) || isResourceScopeShaped(s));
  const unknown = requested.filter((s) => !isKnownScope(s));
  if (unknown.length) throw invalidScope(`Unknown scope: ${unknown.join(' ')}`);
  const granted = requested.filter((s) => scopeCovers(client.scopes, s) && (s !== 'launch' || ehrLaunch) && !s.startsWith('system/'));
  if (granted.length === 0) throw invalidScope('None of the requested scopes can be granted to this application');
  return granted;
}

/**
 * The EHR vouches for its practitioner, and the operator pre-approved the client's registered
 * scopes (only those survive grantableScopes), so an EHR launch gets its code without pages.
 */
async function continueEhrLaunch(ctx: SmartContext, res: Response, pending: PendingRequest): Promise<void> {
  const launch = pending.launch!;
  // a practitioner whose account an operator disabled (users disable) gets nothing through the EHR either
  if (ctx.store.userTokensBefore(`Practitioner/${launch.practitioner}`) === Infinity) {
    return redirectWithError(ctx, res, pending.redirectUri, new OAuthError('access_denied', 'This practitioner\'s account is disabled'), pending.state);
  }
  pending.user = { sub: `Practitioner/${launch.practitioner}`, fhirUser: `Practitioner/${launch.practitioner}` };
  pending.patient = launch.patient;
  pending.authTime = Math.floor(ctx.now() / 1000);
  await issueCode(ctx, res, pending);
}

// ---- POST /oauth/login -----------------------------------------------------------------------

/** The 429 a rate limit refused `check` with, described as `description`; undefined when it passed. */
async function tooMany(check: () => Promise<void>, description: string): Promise<OAuthError | undefined> {
  try {
    await check();
    return undefined;
  } catch (err) {
    if (!(err instanceof OAuthError) || err.status !== 429) throw err;
    return new OAuthError(err.error, description, 429, err.headers);
  }
}

async function login(ctx: SmartContext, req: Request, res: Response): Promise<void> {
  const { id, pending, client } = await loadPending(ctx, req, 'login');
  const username = typeof req.body?.username === 'string' ? req.body.username : '';
  const password = typeof req.body?.password === 'string' ? req.body.password : '';
  const account = username.slice(0, 64);
  // Past a limit the sign-in page comes again (429, Retry-After) saying how long to wait: an error
  // page was a dead end, and the browser's Back a re-POST. Past the account's limit even the right
  // password is refused: a guesser learns nothing from it.
  const throttled = await tooMany(() => ctx.limiter.hit('loginPerIp', req.ip ?? 'unknown'), 'Too many sign-in attempts from this network')
    ?? await tooMany(() => ctx.limiter.checkFailures('loginFailuresPerUser', account), 'Too many wrong passwords for this account');
  if (throttled) {
    res.set(throttled.headers);
    const wait = throttled.headers['Retry-After'];
    return sendPage(res, 429, loginPage({ requestId: id, clientName: client.name, username, error: `${throttled.description}. Wait ${wait} seconds, then try again.` }));
  }
  const user = await checkCredentials(ctx, username, password);
  if (!user) {
    await ctx.limiter.failed('loginFailuresPerUser', account);
    return sendPage(res, 401, loginPage({ requestId: id, clientName: client.name, username, error: 'Wrong username or password.' }));
  }
  // The signed-in request continues under a new id, shown only in the answer to this browser. The
  // old one was in a page anyone could have had rendered (a cross-site POST of a wrong password shows
  // the real sign-in page with an id of the poster's choosing): left usable, its poster could approve
  // the victim's sign-in and redeem the code with its own PKCE verifier.
  if (!(await ctx.kv.take(`smart:authz:${id}`))) throw new PageError(EXPIRED);
  const signedIn = randomBytes(24).toString('base64url');
  pending.user = { sub: user.username, fhirUser: user.fhirUser };
  pending.authTime = Math.floor(ctx.now() / 1000);
  pending.gid = TokenService.newGrantId();
  if (user.fhirUser.startsWith('Patient/')) {
    pending.patient = user.fhirUser.slice('Patient/'.length);
    await runLoginHooks(ctx, pending, password);
  }
  await nextStage(ctx, res, signedIn, client, pending);
}

/** The session's key unlock is made here, while the verified password is in hand (context.ts PatientLoginHook). */
async function runLoginHooks(ctx: SmartContext, pending: PendingRequest, password: string): Promise<void> {
  const lasting = pending.scopes.includes('offline_access') || pending.scopes.includes('online_access');
  const ttlMs = (lasting ? ctx.tokens.lifetimes.onlineRefreshSeconds : ctx.tokens.lifetimes.accessSeconds) * 1000;
  for (const hook of ctx.loginHooks) {
    try {
      await hook({ patientId: pending.patient!, password, gid: pending.gid!, ttlMs });
    } catch (err) {
      // The sign-in still works; signing with the custodial key will then ask to sign in again.
      ctx.logger.error({ err: err instanceof Error ? err.name : 'error' }, 'patient sign-in hook failed');
    }
  }
}

async function checkCredentials(ctx: SmartContext, username: string, password: string) {
  const user = username ? ctx.store.getUser(username) : undefined;
  const ok = await verifyPassword(password, user?.passwordHash ?? (await dummyHash()));
  // a disabled user is refused as a wrong password is: the page does not say the account exists
  return user && ok && !user.disabledAt ? user : undefined;
}

/**
 * A user who is not a patient, asking for `launch/patient`, picks a patient among those they may
 * see (PatientDirectory); everyone then sees the approval page.
 *
 * `patient/` scopes are granted only with a patient in context: "when granting patient-level scopes
 * like patient/*.rs, the server SHALL provide a `patient` launch context parameter" (SMART App
 * Launch, scopes-and-launch-context). A user who is not a patient gets one through `launch/patient`
 * (the picker) or an EHR launch; without either, the `patient/` scopes are left out of the grant
 * (the approval page and the token response's `scope` say what is granted) rather than issued to be
 * refused (403) on every request; when nothing useful is left the app gets `invalid_scope`.
 */
async function nextStage(ctx: SmartContext, res: Response, id: string, client: Client, pending: PendingRequest): Promise<void> {
  if (!pending.patient && pending.scopes.includes('launch/patient')) {
    pending.stage = 'patient';
    const patients = await ctx.patients?.search(pickingUser(pending), '');
    await ctx.kv.set(`smart:authz:${id}`, JSON.stringify(pending), PENDING_TTL_MS);
    return sendPage(res, 200, patientPickerPage({ requestId: id, clientName: client.name, patients, query: '' }));
  }
  if (!pending.patient) {
    const usable = pending.scopes.filter((s) => !s.startsWith('patient/'));
    if (!usable.some(grantsSomething)) {
      await ctx.kv.delete(`smart:authz:${id}`);
      return redirectWithError(ctx, res, pending.redirectUri, invalidScope('patient/ scopes need a patient in context: '
        + 'request launch/patient to choose one, or user/ scopes for the signed-in user\'s own access'), pending.state);
    }
    pending.scopes = usable;
  }
  pending.stage = 'approve';
  await ctx.kv.set(`smart:authz:${id}`, JSON.stringify(pending), PENDING_TTL_MS);
  await sendApproval(ctx, res, id, client, pending);
}

/**
 * Whether a scope left once the `patient/` ones are dropped still lets the app do something: data
 * (`user/`) or identity (`openid`). Context and token-lifetime scopes alone (`launch`, `offline_access`)
 * would make a token good for nothing.
 */
function grantsSomething(scope: string): boolean {
  return scope.startsWith('user/') || scope === 'openid';
}

/**
 * The approval page, naming the patient in context as the picker lists them (name and birth date
 * where the user may be shown them, PatientDirectory.describe) with their id; a patient signed in
 * for themselves is told it is their own record (nothing looked up, nothing logged).
 */
async function sendApproval(ctx: SmartContext, res: Response, id: string, client: Client, pending: PendingRequest): Promise<void> {
  const own = pending.patient !== undefined && pending.user!.fhirUser === `Patient/${pending.patient}`;
  const chosen = pending.patient && !own && ctx.patients ? await ctx.patients.describe(pickingUser(pending), pending.patient) : undefined;
  const patient = !pending.patient || own ? undefined : chosen ? patientLabel(chosen) : `Patient/${pending.patient}`;
  sendPage(res, 200, approvalPage({
    requestId: id, clientName: client.name, user: { username: pending.user!.sub, fhirUser: pending.user!.fhirUser }, patient, ownRecords: own,
    scopes: pending.scopes.map(describeScope),
  }));
}

// ---- POST /oauth/select-patient --------------------------------------------------------------

async function selectPatient(ctx: SmartContext, req: Request, res: Response): Promise<void> {
  const { id, pending, client } = await loadPending(ctx, req, 'patient');
  const user = pickingUser(pending);
  const query = typeof req.body?.query === 'string' ? req.body.query.slice(0, 100) : '';
  if (req.body?.action === 'search') {
    const patients = await ctx.patients?.search(user, query);
    return sendPage(res, 200, patientPickerPage({ requestId: id, clientName: client.name, patients, query }));
  }
  const patient = typeof req.body?.patient === 'string' ? req.body.patient : '';
  // Decided again here, not taken from the list shown: a form can name any id.
  const allowed = /^[A-Za-z0-9\-.]{1,64}$/.test(patient) && (!ctx.patients || (await ctx.patients.mayChoose(user, patient)));
  if (!allowed) {
    const patients = await ctx.patients?.search(user, '');
    return sendPage(res, 400, patientPickerPage({ requestId: id, clientName: client.name, patients, query, error: 'Choose a patient from the list.' }));
  }
  pending.patient = patient;
  await nextStage(ctx, res, id, client, pending);
}

/** The signed-in user as the FHIR facade will see them with this request's token, before a patient is chosen. */
function pickingUser(pending: PendingRequest): AccessContext {
  return { kind: 'token', subject: pending.user!.sub, clientId: pending.clientId, fhirUser: pending.user!.fhirUser, scopes: pending.scopes };
}

// ---- POST /oauth/approve ---------------------------------------------------------------------

async function approve(ctx: SmartContext, req: Request, res: Response): Promise<void> {
  const { id, pending } = await loadPending(ctx, req, 'approve');
  await ctx.kv.delete(`smart:authz:${id}`);
  if (req.body?.decision !== 'allow') {
    return redirectWithError(ctx, res, pending.redirectUri, new OAuthError('access_denied', 'The user denied access'), pending.state);
  }
  await issueCode(ctx, res, pending);
}

async function issueCode(ctx: SmartContext, res: Response, pending: PendingRequest): Promise<void> {
  const ehr = pending.launch !== undefined;
  const grant: Grant = {
    gid: pending.gid ?? TokenService.newGrantId(),
    clientId: pending.clientId,
    scopes: pending.scopes,
    sub: pending.user!.sub,
    fhirUser: pending.user!.fhirUser,
    ...(pending.patient ? { patient: pending.patient } : {}),
    ...(pending.launch?.encounter ? { encounter: pending.launch.encounter } : {}),
    ...(pending.launch?.fhirContext ? { fhirContext: pending.launch.fhirContext } : {}),
    // an EHR shows its own banner unless it says otherwise; a standalone app shows one
    needPatientBanner: ehr ? pending.launch!.needPatientBanner ?? false : true,
    ...(pending.launch?.intent ? { intent: pending.launch.intent } : {}),
    ...(pending.nonce ? { nonce: pending.nonce } : {}),
    authTime: pending.authTime,
  };
  const code = await ctx.tokens.issueCode(grant, pending.redirectUri, pending.codeChallenge);
  const target = new URL(pending.redirectUri);
  target.searchParams.set('code', code);
  if (pending.state !== undefined) target.searchParams.set('state', pending.state);
  res.set('Cache-Control', 'no-store').redirect(302, target.href);
}

// ---- shared steps ----------------------------------------------------------------------------

async function savePending(ctx: SmartContext, pending: PendingRequest): Promise<string> {
  const id = randomBytes(24).toString('base64url');
  await ctx.kv.set(`smart:authz:${id}`, JSON.stringify(pending), PENDING_TTL_MS);
  return id;
}

async function loadPending(ctx: SmartContext, req: Request, stage: PendingRequest['stage']) {
  const id = typeof req.body?.request === 'string' ? req.body.request : '';
  const raw = id ? await ctx.kv.get(`smart:authz:${id}`) : undefined;
  const pending = raw ? (JSON.parse(raw) as PendingRequest) : undefined;
  if (!pending || pending.stage !== stage) throw new PageError(EXPIRED);
  const client = ctx.store.getClient(pending.clientId);
  if (!client) throw new PageError('The application is no longer registered.');
  return { id, pending, client };
}

function redirectWithError(ctx: SmartContext, res: Response, redirectUri: string, err: unknown, state: string | undefined): void {
  const e = toOAuthError(err, ctx.logger);
  const target = new URL(redirectUri);
  target.searchParams.set('error', e.error);
  target.searchParams.set('error_description', e.description);
  if (state !== undefined) target.searchParams.set('state', state);
  res.set('Cache-Control', 'no-store').redirect(302, target.href);
}
