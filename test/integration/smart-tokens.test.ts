/**
 * Refresh tokens (rotation, narrowing, public clients), revocation (RFC 7009), introspection
 * (RFC 7662), access-token expiry with a frozen clock, audience binding, discovery, and rate limits.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { startHarness, type Harness } from '../support/smart-harness.js';
import { browse, loginAndApprove, REDIRECT_URI } from '../support/smart-client.js';
import { loadServerKeys } from '../../src/keys.js';
import { SigningKeys } from '../../src/smart/keys.js';
import { TokenService } from '../../src/smart/tokens.js';
import { MemoryKeyValueStore } from '../../src/kv/memory.js';

let h: Harness;
let publicId: string;
let confidential: { clientId: string; secret: string };
const USER = { username: 'ana', password: 'correct horse battery' };

beforeAll(async () => {
  h = await startHarness({ rateLimits: { tokenPerClient: 40, loginPerIp: 12 } });
  await h.smart.store.addUser({ ...USER, fhirUser: 'Patient/p1' });
  const scopes = ['openid', 'fhirUser', 'launch/patient', 'offline_access', 'online_access', 'patient/*.rs'];
  publicId = h.smart.store.addClient({ name: 'Public app', type: 'public', redirectUris: [REDIRECT_URI], scopes }).client.clientId;
  const added = h.smart.store.addClient({ name: 'Confidential app', type: 'confidential-symmetric', redirectUris: [REDIRECT_URI], scopes });
  confidential = { clientId: added.client.clientId, secret: added.secret! };
});
afterAll(async () => h.close());

const form = (body: Record<string, string>, headers: Record<string, string> = {}) => ({
  method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers }, body: new URLSearchParams(body),
});

async function post(url: string, body: Record<string, string>, headers: Record<string, string> = {}) {
  const res = await fetch(url, form(body, headers));
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: (text ? JSON.parse(text) : undefined) as Record<string, any> };
}

/** Logs in, approves and redeems a code for `clientId`. */
async function tokensFor(clientId: string, scope: string, auth: Record<string, string> = {}) {
  const verifier = randomBytes(32).toString('base64url');
  const url = new URL(h.smart.urls.authorize);
  const params = { response_type: 'code', client_id: clientId, redirect_uri: REDIRECT_URI, scope, state: 's', aud: h.fhirBase,
    code_challenge: createHash('sha256').update(verifier).digest('base64url'), code_challenge_method: 'S256' };
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
  const done = await loginAndApprove(h.baseUrl, (await browse(url.href)).html, USER);
  const code = new URL(done.location!).searchParams.get('code')!;
  const res = await post(h.smart.urls.token, { grant_type: 'authorization_code', code, code_verifier: verifier, redirect_uri: REDIRECT_URI,
    ...(auth.authorization ? {} : { client_id: clientId }) }, auth);
  expect(res.status).toBe(200);
  return res.body;
}

const basic = () => ({ authorization: `Basic ${Buffer.from(`${confidential.clientId}:${confidential.secret}`).toString('base64')}` });
const readPatient = (token: string) => fetch(`${h.fhirBase}/Patient/p1`, { headers: { authorization: `Bearer ${token}` } });

describe('refresh tokens', () => {
  test('a public client refreshes without client_id; the old refresh token is rotated out', async () => {
    const first = await tokensFor(publicId, 'launch/patient patient/*.rs offline_access');
    const refreshed = await post(h.smart.urls.token, { grant_type: 'refresh_token', refresh_token: first.refresh_token });
    expect(refreshed.status).toBe(200);
    expect(refreshed.body).toMatchObject({ scope: 'launch/patient patient/*.rs offline_access', patient: 'p1' });
    expect(refreshed.body.refresh_token).not.toBe(first.refresh_token);
    expect((await readPatient(refreshed.body.access_token)).status).toBe(200);
    const reuse = await post(h.smart.urls.token, { grant_type: 'refresh_token', refresh_token: first.refresh_token });
    expect(reuse.body.error).toBe('invalid_grant');
  });

  test('a rotated-out refresh token used again revokes every token of its grant (RFC 9700 §4.14.2 reuse detection)', async () => {
    const first = await tokensFor(publicId, 'launch/patient patient/*.rs offline_access');
    const refreshed = await post(h.smart.urls.token, { grant_type: 'refresh_token', refresh_token: first.refresh_token });
    expect(refreshed.status).toBe(200);
    expect((await readPatient(refreshed.body.access_token)).status).toBe(200);
    // someone replays the first refresh token: the live access and refresh tokens of the grant die with it
    const replay = await post(h.smart.urls.token, { grant_type: 'refresh_token', refresh_token: first.refresh_token });
    expect(replay.status).toBe(400);
    expect(replay.body).toMatchObject({ error: 'invalid_grant' });
    expect(JSON.stringify(replay.body)).not.toContain(first.refresh_token);
    expect((await readPatient(refreshed.body.access_token)).status).toBe(401);
    const next = await post(h.smart.urls.token, { grant_type: 'refresh_token', refresh_token: refreshed.body.refresh_token });
    expect(next.body.error).toBe('invalid_grant');
    // a token never issued revokes nothing: another grant of the same app goes on
    const other = await tokensFor(publicId, 'launch/patient patient/*.rs offline_access');
    expect((await post(h.smart.urls.token, { grant_type: 'refresh_token', refresh_token: 'made-up-token' })).body.error).toBe('invalid_grant');
    expect((await readPatient(other.access_token)).status).toBe(200);
    h.advance(61_000); // a fresh minute of the per-IP login limit for the tests after this one's two sign-ins
  });

  test('a confidential client\'s rotated-out refresh token revokes its grant only with that client\'s credentials', async () => {
    const first = await tokensFor(confidential.clientId, 'launch/patient patient/*.rs offline_access', basic());
    const refreshed = await post(h.smart.urls.token, { grant_type: 'refresh_token', refresh_token: first.refresh_token }, basic());
    expect(refreshed.status).toBe(200);
    // someone holding the old token but not the client's secret: refused, and the grant goes on
    const stranger = await post(h.smart.urls.token, { grant_type: 'refresh_token', refresh_token: first.refresh_token });
    expect(stranger.body.error).toBe('invalid_client');
    expect((await readPatient(refreshed.body.access_token)).status).toBe(200);
    // the client itself presenting it again is a reuse: every token of the grant is revoked
    const replay = await post(h.smart.urls.token, { grant_type: 'refresh_token', refresh_token: first.refresh_token }, basic());
    expect(replay.body.error).toBe('invalid_grant');
    expect((await readPatient(refreshed.body.access_token)).status).toBe(401);
    h.advance(61_000); // a fresh minute of the per-IP login limit for the tests after this one's sign-in
  });

  test('no refresh token without offline_access or online_access', async () => {
    const body = await tokensFor(publicId, 'launch/patient patient/*.rs');
    expect(body.refresh_token).toBeUndefined();
  });

  test('scope may narrow on refresh but never widen', async () => {
    const first = await tokensFor(publicId, 'launch/patient patient/Observation.rs online_access');
    const wider = await post(h.smart.urls.token, { grant_type: 'refresh_token', refresh_token: first.refresh_token, scope: 'patient/*.rs online_access' });
    expect(wider).toMatchObject({ status: 400, body: { error: 'invalid_scope' } });
    const narrower = await post(h.smart.urls.token, { grant_type: 'refresh_token', refresh_token: first.refresh_token, scope: 'patient/Observation.r online_access' });
    expect(narrower.status).toBe(200);
    expect(narrower.body.scope).toBe('patient/Observation.r online_access');
  });

  test('a narrowed refresh narrows the access token only: the new refresh token keeps the scope of the one presented (RFC 6749 §6)', async () => {
    const first = await tokensFor(publicId, 'launch/patient patient/*.rs offline_access');
    const narrowed = await post(h.smart.urls.token, { grant_type: 'refresh_token', refresh_token: first.refresh_token, scope: 'patient/Observation.rs offline_access' });
    expect(narrowed.status).toBe(200);
    expect(narrowed.body.scope).toBe('patient/Observation.rs offline_access');
    expect((await readPatient(narrowed.body.access_token)).status).toBe(404);
    // the original scope may be asked for again with the rotated refresh token
    const again = await post(h.smart.urls.token, { grant_type: 'refresh_token', refresh_token: narrowed.body.refresh_token, scope: 'launch/patient patient/*.rs offline_access' });
    expect(again.status).toBe(200);
    expect(again.body.scope).toBe('launch/patient patient/*.rs offline_access');
    expect((await readPatient(again.body.access_token)).status).toBe(200);
  });

  test('a narrowed refresh that leaves out offline_access still rotates the refresh token: offline access is not lost', async () => {
    const first = await tokensFor(publicId, 'launch/patient patient/*.rs offline_access');
    const narrowed = await post(h.smart.urls.token, { grant_type: 'refresh_token', refresh_token: first.refresh_token, scope: 'patient/Observation.rs' });
    expect(narrowed.status).toBe(200);
    expect(narrowed.body.scope).toBe('patient/Observation.rs');
    expect(narrowed.body.refresh_token).toEqual(expect.any(String));
    const next = await post(h.smart.urls.token, { grant_type: 'refresh_token', refresh_token: narrowed.body.refresh_token });
    expect(next.status).toBe(200);
    expect(next.body.scope).toBe('launch/patient patient/*.rs offline_access');
    expect(next.body.refresh_token).toEqual(expect.any(String));
  });

  test('a refresh token is bound to its client', async () => {
    const first = await tokensFor(confidential.clientId, 'launch/patient patient/*.rs offline_access', basic());
    const stolen = await post(h.smart.urls.token, { grant_type: 'refresh_token', refresh_token: first.refresh_token, client_id: publicId });
    expect(stolen.body.error).toBe('invalid_grant');
    const unauthenticated = await post(h.smart.urls.token, { grant_type: 'refresh_token', refresh_token: first.refresh_token });
    expect(unauthenticated).toMatchObject({ status: 401, body: { error: 'invalid_client' } });
    const owner = await post(h.smart.urls.token, { grant_type: 'refresh_token', refresh_token: first.refresh_token }, basic());
    expect(owner.status).toBe(200);
  });
});

describe('revocation', () => {
  test('a revoked access token is refused on the next FHIR request, and so is its refresh token', async () => {
    const body = await tokensFor(publicId, 'launch/patient patient/*.rs offline_access');
    expect((await readPatient(body.access_token)).status).toBe(200);
    const revoked = await post(h.smart.urls.revoke, { token: body.access_token, client_id: publicId });
    expect(revoked.status).toBe(200);
    const after = await readPatient(body.access_token);
    expect(after.status).toBe(401);
    expect(after.headers.get('www-authenticate')).toContain('error="invalid_token"');
    const refresh = await post(h.smart.urls.token, { grant_type: 'refresh_token', refresh_token: body.refresh_token });
    expect(refresh.body.error).toBe('invalid_grant');
  });

  test('a revoked refresh token cannot be used, and its access tokens stop working', async () => {
    const body = await tokensFor(confidential.clientId, 'launch/patient patient/*.rs offline_access', basic());
    expect((await post(h.smart.urls.revoke, { token: body.refresh_token, token_type_hint: 'refresh_token' }, basic())).status).toBe(200);
    const refused = (await post(h.smart.urls.token, { grant_type: 'refresh_token', refresh_token: body.refresh_token }, basic())).body;
    expect(refused.error).toBe('invalid_grant');
    // said as revoked, not as "already used" (a reuse, which it was not: consent round, 2026-12-06)
    expect(refused.error_description).toBe('The refresh token is invalid, expired or revoked');
    expect((await readPatient(body.access_token)).status).toBe(401);
  });

  test('another client cannot revoke a token it does not own; unknown tokens answer 200', async () => {
    const body = await tokensFor(publicId, 'launch/patient patient/*.rs');
    expect((await post(h.smart.urls.revoke, { token: body.access_token }, basic())).status).toBe(200);
    expect((await readPatient(body.access_token)).status).toBe(200);
    expect((await post(h.smart.urls.revoke, { token: 'not-a-token', client_id: publicId })).status).toBe(200);
  });
});

describe('introspection', () => {
  // (This test used to have the confidential client describe the public client's tokens: RFC 7662
  // §2.1/§4 want the caller authorized, and a client is now told only of its own tokens.)
  test('a live token is described to the client it was issued to; a revoked or garbage one is only {"active": false}', async () => {
    const body = await tokensFor(confidential.clientId, 'openid fhirUser launch/patient patient/*.rs offline_access', basic());
    const live = await post(h.smart.urls.introspect, { token: body.access_token }, basic());
    expect(live.body).toMatchObject({ active: true, scope: 'openid fhirUser launch/patient patient/*.rs offline_access', client_id: confidential.clientId,
      sub: 'ana', iss: h.fhirBase, patient: 'p1', fhirUser: `${h.fhirBase}/Patient/p1` });
    expect(typeof live.body.exp).toBe('number');
    // the launch context the token response gave is there too (SMART token introspection: SHALL)
    expect(live.body).toMatchObject({ need_patient_banner: body.need_patient_banner, smart_style_url: body.smart_style_url });
    const refresh = await post(h.smart.urls.introspect, { token: body.refresh_token }, basic());
    expect(refresh.body).toMatchObject({ active: true, client_id: confidential.clientId });
    expect((await post(h.smart.urls.introspect, { token: 'garbage' }, basic())).body).toEqual({ active: false });
    await post(h.smart.urls.revoke, { token: body.access_token }, basic());
    expect((await post(h.smart.urls.introspect, { token: body.access_token }, basic())).body).toEqual({ active: false });
  });

  test('fhirUser is named only when the token\'s scopes asked for it', async () => {
    // signed here, not through a sign-in: this file's sign-ins stay under the per-address login limit
    const grant = { gid: randomUUID(), clientId: confidential.clientId, sub: 'ana', fhirUser: 'Patient/p1', patient: 'p1' };
    const without = h.smart.tokens.signAccessToken({ ...grant, scopes: ['launch/patient', 'patient/*.rs'] }).token;
    const live = await post(h.smart.urls.introspect, { token: without }, basic());
    expect(live.body).toMatchObject({ active: true, patient: 'p1' });
    expect(live.body.fhirUser).toBeUndefined();
    const withScope = h.smart.tokens.signAccessToken({ ...grant, gid: randomUUID(), scopes: ['openid', 'fhirUser', 'launch/patient', 'patient/*.rs'] }).token;
    expect((await post(h.smart.urls.introspect, { token: withScope }, basic())).body.fhirUser).toBe(`${h.fhirBase}/Patient/p1`);
  });

  test('a client may introspect only its own tokens: another client\'s access and refresh tokens are {"active": false}, with nothing about them', async () => {
    const theirs = await tokensFor(publicId, 'openid fhirUser launch/patient patient/*.rs offline_access');
    const mine = await tokensFor(confidential.clientId, 'launch/patient patient/*.rs', basic());
    // a confidential client authenticated with its secret (RFC 7662 §2.1: the caller is authorized)…
    for (const token of [theirs.access_token, theirs.refresh_token]) {
      const res = await post(h.smart.urls.introspect, { token }, basic());
      expect(res.status).toBe(200);
      expect(res.body).toEqual({ active: false });
    }
    // …or any live bearer token (QA's finding: it described every other token, patient and fhirUser included)
    for (const token of [theirs.access_token, theirs.refresh_token]) {
      expect((await post(h.smart.urls.introspect, { token }, { authorization: `Bearer ${mine.access_token}` })).body).toEqual({ active: false });
    }
    // a public client, which has no credentials, introspects its own tokens with its bearer token
    const own = await post(h.smart.urls.introspect, { token: theirs.refresh_token }, { authorization: `Bearer ${theirs.access_token}` });
    expect(own.body).toMatchObject({ active: true, token_type: 'refresh_token', client_id: publicId, patient: 'p1' });
    expect((await post(h.smart.urls.introspect, { token: mine.access_token }, { authorization: `Bearer ${theirs.access_token}` })).body).toEqual({ active: false });
  });

  test('introspection needs an authenticated caller', async () => {
    expect((await post(h.smart.urls.introspect, { token: 'x', client_id: publicId })).status).toBe(401);
  });
});

describe('access tokens on /fhir', () => {
  test('missing, expired and wrong-audience tokens get 401 with a Bearer challenge; a malformed one 400', async () => {
    const body = await tokensFor(publicId, 'launch/patient patient/*.rs');
    expect((await fetch(`${h.fhirBase}/Patient/p1`)).headers.get('www-authenticate')).toBe('Bearer realm="glucoguard"');
    // another scheme is no bearer authentication: 401, challenge without an error code (RFC 6750 §3.1)
    const basic = await fetch(`${h.fhirBase}/Patient/p1`, { headers: { authorization: 'Basic abc' } });
    expect(basic.status).toBe(401);
    expect(basic.headers.get('www-authenticate')).toBe('Bearer realm="glucoguard"');
    // a Bearer credential that is not a token at all is a malformed request: 400 invalid_request (§3.1)
    const malformed = await fetch(`${h.fhirBase}/Patient/p1`, { headers: { authorization: 'Bearer not a token!' } });
    expect(malformed.status).toBe(400);
    expect(malformed.headers.get('www-authenticate')).toMatch(/error="invalid_request"/);
    expect(((await malformed.json()) as { resourceType: string }).resourceType).toBe('OperationOutcome');
    const parts = String(body.access_token).split('.');
    const claims = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString());
    const tampered = `${parts[0]}.${Buffer.from(JSON.stringify({ ...claims, patient: 'p2' })).toString('base64url')}.${parts[2]}`;
    expect((await readPatient(tampered)).status).toBe(401);

    // Same signing keys, another audience: refused.
    const otherAud = new TokenService(new MemoryKeyValueStore(), SigningKeys.open(h.config.dataDir, loadServerKeys(h.config).root), 'https://other.example/fhir', h.now);
    const foreign = otherAud.signAccessToken({ gid: 'g', clientId: publicId, scopes: ['patient/*.rs'], sub: 'ana', patient: 'p1' }).token;
    expect((await readPatient(foreign)).status).toBe(401);

    expect((await readPatient(body.access_token)).status).toBe(200);
    h.advance(3600 * 1000 + 1);
    expect((await readPatient(body.access_token)).status).toBe(401);
  });

  test('key rotation keeps tokens signed with the previous key valid and both keys in the JWKS', async () => {
    const body = await tokensFor(publicId, 'launch/patient patient/*.rs');
    const before = (await (await fetch(h.smart.urls.jwks)).json()) as { keys: Array<{ kid: string }> };
    h.smart.keys.rotate();
    const after = (await (await fetch(h.smart.urls.jwks)).json()) as { keys: Array<{ kid: string; alg: string }> };
    expect(after.keys).toHaveLength(4);
    for (const k of before.keys) expect(after.keys.map((x) => x.kid)).toContain(k.kid);
    expect((await readPatient(body.access_token)).status).toBe(200);
  });
});

describe('discovery', () => {
  test('smart-configuration has absolute endpoints, S256 only and the SMART capabilities, with CORS', async () => {
    const res = await fetch(`${h.fhirBase}/.well-known/smart-configuration`);
    expect(res.headers.get('access-control-allow-origin')).toBe('*');
    const config = (await res.json()) as Record<string, any>;
    expect(config).toMatchObject({
      issuer: h.fhirBase, authorization_endpoint: `${h.baseUrl}/oauth/authorize`, token_endpoint: `${h.baseUrl}/oauth/token`,
      code_challenge_methods_supported: ['S256'], grant_types_supported: ['authorization_code', 'client_credentials', 'refresh_token'],
      token_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post', 'private_key_jwt'],
    });
    for (const c of ['launch-ehr', 'launch-standalone', 'client-public', 'client-confidential-symmetric', 'client-confidential-asymmetric',
      'sso-openid-connect', 'context-banner', 'context-style', 'context-ehr-patient', 'context-ehr-encounter', 'context-standalone-patient',
      'permission-offline', 'permission-patient', 'permission-user', 'permission-v1', 'permission-v2', 'authorize-post']) {
      expect(config.capabilities).toContain(c);
    }
    // every identity scope the server grants is advertised (profile was granted but not listed)
    expect(config.scopes_supported).toEqual(expect.arrayContaining(['openid', 'fhirUser', 'profile', 'launch/patient', 'offline_access']));
    const jwks = (await (await fetch(config.jwks_uri)).json()) as { keys: Array<Record<string, string>> };
    expect(jwks.keys.every((k) => !('d' in k))).toBe(true);
    const oidc = (await (await fetch(`${h.baseUrl}/.well-known/openid-configuration`)).json()) as Record<string, unknown>;
    expect(oidc).toMatchObject({ issuer: h.fhirBase, jwks_uri: config.jwks_uri, id_token_signing_alg_values_supported: ['RS256'] });
  });

  test('the CapabilityStatement security matches discovery', async () => {
    const cs = (await (await fetch(`${h.fhirBase}/metadata`)).json()) as any;
    const security = cs.rest[0].security;
    expect(security.service[0].coding[0]).toMatchObject({ code: 'SMART-on-FHIR' });
    const uris = Object.fromEntries(security.extension[0].extension.map((e: any) => [e.url, e.valueUri]));
    expect(uris).toMatchObject({ authorize: h.smart.urls.authorize, token: h.smart.urls.token });
  });
});

describe('CORS and auth off', () => {
  test('the token endpoint answers a CORS preflight for browser apps', async () => {
    const res = await fetch(h.smart.urls.token, { method: 'OPTIONS', headers: { origin: 'https://app.example', 'access-control-request-method': 'POST' } });
    expect(res.status).toBe(204);
    expect(res.headers.get('access-control-allow-origin')).toBe('*');
  });

  test('GLUCOGUARD_AUTH=off warns at start and gives open access', async () => {
    const warnings: string[] = [];
    const logger = { warn: (m: string) => warnings.push(m), info: () => {}, error: () => {} } as never;
    const { createSmart } = await import('../../src/smart/index.js');
    const config = { ...h.config, auth: 'off' as const };
    const open = await createSmart({ config, kv: new MemoryKeyValueStore(), logger, fhirBase: h.fhirBase });
    try {
      expect(warnings.join('\n')).toMatch(/GLUCOGUARD_AUTH=off/);
      expect(await open.authenticate({})).toMatchObject({ kind: 'open' });
    } finally {
      await open.close();
    }
  });
});

describe('rate limits', () => {
  test('the token endpoint answers 429 with Retry-After past the per-client limit', async () => {
    let last;
    for (let i = 0; i < 45; i++) last = await post(h.smart.urls.token, { grant_type: 'refresh_token', refresh_token: 'x' }, basic());
    expect(last!.status).toBe(429);
    expect(Number(last!.headers.get('retry-after'))).toBeGreaterThan(0);
  });

  test('login answers 429 past the per-IP limit', async () => {
    h.advance(120_000);
    const url = new URL(h.smart.urls.authorize);
    const params = { response_type: 'code', client_id: publicId, redirect_uri: REDIRECT_URI, scope: 'patient/*.rs', aud: h.fhirBase,
      code_challenge: 'a'.repeat(43), code_challenge_method: 'S256' };
    for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
    const request = /name="request" value="([^"]+)"/.exec((await browse(url.href)).html)![1]!;
    const answers: { status: number; html: string }[] = [];
    for (let i = 0; i < 14; i++) answers.push(await browse(`${h.baseUrl}/oauth/login`, { request, username: 'ana', password: 'wrong-guess' }));
    expect(answers.slice(0, 12).every((a) => a.status === 401)).toBe(true);
    expect(answers.at(-1)!.status).toBe(429);
    // the sign-in page again, saying how long to wait (an error page was a dead end)
    expect(answers.at(-1)!.html).toMatch(/Too many sign-in attempts from this network\. Wait \d+ seconds, then try again\./);
    expect(answers.at(-1)!.html).toMatch(/name="password"/);
  });
});
