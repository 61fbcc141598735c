/**
 * What a grant carries: an id_token whenever `openid` is granted (OpenID Connect Core §3.1.3.3),
 * `patient/` scopes only with a patient in context (SMART App Launch, scopes-and-launch-context),
 * and EHR launches only for a registered app and for a patient and practitioner the server holds.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { createRemoteJWKSet, jwtVerify } from 'jose';
import { startHarness, type Harness } from '../support/smart-harness.js';
import { APP_ORIGIN, REDIRECT_URI, browse, loginAndApprove } from '../support/smart-client.js';

let h: Harness;
let appId: string;
let ehrToken: string;
const ANA = { username: 'ana', password: 'correct horse battery' };
const BEN = { username: 'dr.ben', password: 'stethoscope-42' };

beforeAll(async () => {
  h = await startHarness();
  await h.smart.store.addUser({ ...ANA, fhirUser: 'Patient/p1' });
  await h.smart.store.addUser({ ...BEN, fhirUser: 'Practitioner/d1' });
  appId = h.smart.store.addClient({
    name: 'CGM Viewer', type: 'public', redirectUris: [REDIRECT_URI], launchUri: `${APP_ORIGIN}/launch`,
    scopes: ['openid', 'fhirUser', 'launch', 'launch/patient', 'offline_access', 'patient/*.rs', 'user/*.rs'],
  }).client.clientId;
  const ehr = h.smart.store.addClient({ name: 'EHR', type: 'confidential-symmetric', scopes: ['system/launch'] }).client;
  ehrToken = h.smart.tokens.signAccessToken({ gid: randomUUID(), clientId: ehr.clientId, sub: ehr.clientId, scopes: ['system/launch'] }, 300).token;
});
afterAll(async () => h.close());

async function post(url: string, body: Record<string, string>) {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(body) });
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

/** A standalone launch by `user` asking for `scope`: the redirect the app gets, and the token response when it got a code. */
async function signIn(user: { username: string; password: string }, scope: string, extra: Record<string, string> = {}) {
  const verifier = randomBytes(32).toString('base64url');
  const url = new URL(h.smart.urls.authorize);
  const params = { response_type: 'code', client_id: appId, redirect_uri: REDIRECT_URI, scope, state: 'st', aud: h.fhirBase,
    code_challenge: createHash('sha256').update(verifier).digest('base64url'), code_challenge_method: 'S256', ...extra };
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
  const done = await loginAndApprove(h.baseUrl, (await browse(url.href)).html, user, { patient: 'p2' });
  const redirect = new URL(done.location!);
  const code = redirect.searchParams.get('code');
  const tokens = code
    ? await post(h.smart.urls.token, { grant_type: 'authorization_code', code, code_verifier: verifier, redirect_uri: REDIRECT_URI, client_id: appId })
    : undefined;
  return { redirect, pages: done.pages, tokens };
}

async function idTokenClaims(idToken: string) {
  const { payload } = await jwtVerify(idToken, createRemoteJWKSet(new URL(h.smart.urls.jwks)), { issuer: h.fhirBase, audience: appId, currentDate: new Date(h.now()) });
  return payload;
}

describe('OpenID Connect: an id_token whenever openid is granted', () => {
  test('openid without fhirUser or profile still gets an id_token naming the user by sub (and the nonce), without a fhirUser claim', async () => {
    const { tokens } = await signIn(ANA, 'openid launch/patient patient/*.rs offline_access', { nonce: 'n-123' });
    expect(tokens!.status).toBe(200);
    expect(tokens!.body.scope).toBe('openid launch/patient patient/*.rs offline_access');
    expect(tokens!.body.id_token).toEqual(expect.any(String));
    const claims = await idTokenClaims(tokens!.body.id_token);
    expect(claims).toMatchObject({ iss: h.fhirBase, sub: 'ana', aud: appId, nonce: 'n-123' });
    expect(typeof claims.exp).toBe('number');
    expect(typeof claims.iat).toBe('number');
    expect(typeof claims.auth_time).toBe('number');
    expect(claims.fhirUser).toBeUndefined();
    // a refresh keeping openid gets one again, without the nonce (OIDC Core §12.2)
    const refreshed = await post(h.smart.urls.token, { grant_type: 'refresh_token', refresh_token: tokens!.body.refresh_token });
    expect(refreshed.status).toBe(200);
    const again = await idTokenClaims(refreshed.body.id_token);
    expect(again).toMatchObject({ sub: 'ana' });
    expect(again.nonce).toBeUndefined();
  });

  test('openid fhirUser: the id_token carries the fhirUser claim as an absolute URL', async () => {
    const { tokens } = await signIn(ANA, 'openid fhirUser launch/patient patient/*.rs');
    expect(await idTokenClaims(tokens!.body.id_token)).toMatchObject({ sub: 'ana', fhirUser: `${h.fhirBase}/Patient/p1` });
  });

  test('no openid, no id_token', async () => {
    const { tokens } = await signIn(ANA, 'fhirUser launch/patient patient/*.rs');
    expect(tokens!.status).toBe(200);
    expect(tokens!.body.id_token).toBeUndefined();
  });
});

describe('patient/ scopes need a patient in context', () => {
  test('a practitioner without launch/patient is not granted the patient/ scopes: the approval page and the token say what is granted', async () => {
    const { pages, tokens } = await signIn(BEN, 'openid fhirUser patient/*.rs user/Patient.rs');
    expect(pages.join('\n')).not.toContain('Choose a patient');
    expect(tokens!.status).toBe(200);
    expect(tokens!.body.scope).toBe('openid fhirUser user/Patient.rs');
    expect(tokens!.body.patient).toBeUndefined();
    // the token works for what it grants
    const read = await fetch(`${h.fhirBase}/Patient/p1`, { headers: { authorization: `Bearer ${tokens!.body.access_token}` } });
    expect(read.status).toBe(200);
  });

  test('a practitioner asking for patient/ scopes alone gets invalid_scope at the redirect URI, with the state, and no code', async () => {
    const { redirect, tokens } = await signIn(BEN, 'patient/*.rs offline_access');
    expect(`${redirect.origin}${redirect.pathname}`).toBe(REDIRECT_URI);
    expect(redirect.searchParams.get('error')).toBe('invalid_scope');
    expect(redirect.searchParams.get('error_description')).toMatch(/patient in context.*launch\/patient/);
    expect(redirect.searchParams.get('state')).toBe('st');
    expect(tokens).toBeUndefined();
  });

  test('with launch/patient the practitioner picks a patient and keeps the patient/ scopes', async () => {
    const { pages, tokens } = await signIn(BEN, 'launch/patient patient/*.rs');
    expect(pages.join('\n')).toContain('Choose a patient');
    expect(tokens!.body).toMatchObject({ scope: 'launch/patient patient/*.rs', patient: 'p2' });
  });

  test('a patient user is their own context: patient/ scopes are granted without launch/patient', async () => {
    const { tokens } = await signIn(ANA, 'patient/*.rs');
    expect(tokens!.body).toMatchObject({ scope: 'patient/*.rs', patient: 'p1' });
  });
});

describe('POST /smart/launch', () => {
  const launch = (body: Record<string, unknown>) => fetch(h.smart.urls.launch, { method: 'POST',
    headers: { authorization: `Bearer ${ehrToken}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });

  test('refuses a patient or practitioner the server does not hold (400 invalid_request naming it), and stores no launch', async () => {
    for (const [body, message] of [
      [{ patient: 'nobody', practitioner: 'd1', client_id: appId }, 'patient: Patient/nobody does not exist'],
      [{ patient: 'p1', practitioner: 'ghost', client_id: appId }, 'practitioner: Practitioner/ghost does not exist'],
    ] as const) {
      const res = await launch(body);
      expect(res.status).toBe(400);
      const answer = (await res.json()) as Record<string, unknown>;
      expect(answer).toEqual({ error: 'invalid_request', error_description: message });
    }
  });

  test('refuses a launch bound to no app, or to an app that is not registered', async () => {
    const none = await launch({ patient: 'p1', practitioner: 'd1' });
    expect(none.status).toBe(400);
    expect(await none.json()).toMatchObject({ error: 'invalid_request', error_description: expect.stringMatching(/client_id is required/) });
    const unknown = await launch({ patient: 'p1', practitioner: 'd1', client_id: 'no-such-app' });
    expect(unknown.status).toBe(400);
    expect(await unknown.json()).toMatchObject({ error: 'invalid_request', error_description: expect.stringMatching(/not a registered application/) });
  });

  test('a launch for a registered app, an existing patient and practitioner is created (201) and works for that app', async () => {
    const res = await launch({ patient: 'p1', practitioner: 'd1', client_id: appId });
    expect(res.status).toBe(201);
    const { launch: value, launch_url: launchUrl } = (await res.json()) as { launch: string; launch_url: string };
    expect(launchUrl).toContain(`launch=${value}`);
    const verifier = randomBytes(32).toString('base64url');
    const url = new URL(h.smart.urls.authorize);
    for (const [k, v] of Object.entries({ response_type: 'code', client_id: appId, redirect_uri: REDIRECT_URI, scope: 'launch patient/*.rs', state: 's',
      aud: h.fhirBase, launch: value, code_challenge: createHash('sha256').update(verifier).digest('base64url'), code_challenge_method: 'S256' })) url.searchParams.set(k, v);
    const redirect = new URL((await browse(url.href)).location!);
    const tokens = await post(h.smart.urls.token, { grant_type: 'authorization_code', code: redirect.searchParams.get('code')!, code_verifier: verifier,
      redirect_uri: REDIRECT_URI, client_id: appId });
    expect(tokens.body).toMatchObject({ patient: 'p1', scope: 'launch patient/*.rs' });
  });
});
