/**
 * Authorization endpoint and code redemption rules (RFC 6749, RFC 7636, SMART App Launch 2.2):
 * every negative case is checked for what the app sees (redirect with error and state, or an
 * error page without redirect) and for what is not issued. The clock is frozen for code expiry.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { startHarness, type Harness } from '../support/smart-harness.js';
import { browse, loginAndApprove, REDIRECT_URI } from '../support/smart-client.js';

let h: Harness;
let clientId: string;
let otherClientId: string;
const USER = { username: 'ana', password: 'correct horse battery' };

beforeAll(async () => {
  h = await startHarness();
  await h.smart.store.addUser({ username: USER.username, password: USER.password, fhirUser: 'Patient/p1' });
  clientId = h.smart.store.addClient({ name: 'App', type: 'public', redirectUris: [REDIRECT_URI],
    scopes: ['openid', 'fhirUser', 'launch/patient', 'offline_access', 'patient/*.rs', 'patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory'] }).client.clientId;
  otherClientId = h.smart.store.addClient({ name: 'Other', type: 'public', redirectUris: [REDIRECT_URI], scopes: ['patient/*.rs'] }).client.clientId;
});
afterAll(async () => h.close());

function pkce() {
  const verifier = randomBytes(32).toString('base64url');
  return { verifier, challenge: createHash('sha256').update(verifier).digest('base64url') };
}

function authorizeUrl(overrides: Record<string, string | undefined> = {}, challenge = pkce().challenge): string {
  const params: Record<string, string | undefined> = {
    response_type: 'code', client_id: clientId, redirect_uri: REDIRECT_URI, scope: 'launch/patient patient/*.rs offline_access',
    state: 'st@te/with?odd&chars', aud: h.fhirBase, code_challenge: challenge, code_challenge_method: 'S256', ...overrides,
  };
  const url = new URL(h.smart.urls.authorize);
  for (const [k, v] of Object.entries(params)) if (v !== undefined) url.searchParams.set(k, v);
  return url.href;
}

/** Runs login + approval and returns the code. */
async function getCode(options: { scope?: string; challenge?: string } = {}): Promise<string> {
  const login = await browse(authorizeUrl(options.scope ? { scope: options.scope } : {}, options.challenge));
  const done = await loginAndApprove(h.baseUrl, login.html, USER);
  const target = new URL(done.location!);
  expect(target.searchParams.get('state')).toBe('st@te/with?odd&chars');
  return target.searchParams.get('code')!;
}

async function redeem(body: Record<string, string>) {
  const res = await fetch(h.smart.urls.token, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'authorization_code', redirect_uri: REDIRECT_URI, client_id: clientId, ...body }) });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

function errorOf(location: string | undefined) {
  const target = new URL(location!);
  return { error: target.searchParams.get('error'), state: target.searchParams.get('state'), code: target.searchParams.get('code'),
    description: target.searchParams.get('error_description') };
}

describe('authorize request checks', () => {
  test('wrong aud: redirect with invalid_request and the state, no code', async () => {
    const res = await browse(authorizeUrl({ aud: 'https://evil.example/fhir' }));
    expect(res.status).toBe(302);
    expect(errorOf(res.location)).toMatchObject({ error: 'invalid_request', state: 'st@te/with?odd&chars', code: null });
    expect(errorOf(res.location).description).toMatch(/aud/);
  });

  test('PKCE missing: invalid_request', async () => {
    const res = await browse(authorizeUrl({ code_challenge: undefined, code_challenge_method: undefined }));
    expect(errorOf(res.location)).toMatchObject({ error: 'invalid_request', code: null });
  });

  test('PKCE plain: invalid_request', async () => {
    const { verifier } = pkce();
    const res = await browse(authorizeUrl({ code_challenge: verifier, code_challenge_method: 'plain' }));
    expect(errorOf(res.location)).toMatchObject({ error: 'invalid_request', code: null });
  });

  test('unsupported response_type: redirect with unsupported_response_type', async () => {
    const res = await browse(authorizeUrl({ response_type: 'token' }));
    expect(errorOf(res.location).error).toBe('unsupported_response_type');
  });

  test('unknown scope: invalid_scope', async () => {
    const res = await browse(authorizeUrl({ scope: 'patient/Observation.xyz' }));
    expect(errorOf(res.location).error).toBe('invalid_scope');
  });

  test('a scope that is not a resource scope and unknown here (OpenID Connect email, a vendor scope) is left out, not refused: the token says what was granted', async () => {
    const { verifier, challenge } = pkce();
    const code = await getCode({ scope: 'openid fhirUser email launch/patient patient/*.rs epic.scope', challenge });
    const { status, body } = await redeem({ code, code_verifier: verifier });
    expect(status).toBe(200);
    expect(String(body.scope).split(' ').sort()).toEqual(['fhirUser', 'launch/patient', 'openid', 'patient/*.rs']);
    // a malformed resource scope among them is still refused: it names data
    const res = await browse(authorizeUrl({ scope: 'email patient/Observation.xyz patient/*.rs' }));
    expect(errorOf(res.location)).toMatchObject({ error: 'invalid_scope', code: null });
    expect(errorOf(res.location).description).toBe('Unknown scope: patient/Observation.xyz');
    // so is a resource scope with a misspelt context: it names data too
    for (const typo of ['Patient/*.rs', 'usr/*.read']) {
      const refused = await browse(authorizeUrl({ scope: `openid ${typo}` }));
      expect(errorOf(refused.location)).toMatchObject({ error: 'invalid_scope', code: null });
    }
  });

  test('unregistered redirect_uri: an error page, never a redirect', async () => {
    const res = await browse(authorizeUrl({ redirect_uri: 'https://evil.example/cb' }));
    expect(res.status).toBe(400);
    expect(res.location).toBeUndefined();
    expect(res.html).toContain('not registered');
  });

  test('unknown client: an error page, never a redirect', async () => {
    const res = await browse(authorizeUrl({ client_id: 'nobody' }));
    expect(res.status).toBe(400);
    expect(res.location).toBeUndefined();
  });

  test('authorize by form POST works like GET (authorize-post)', async () => {
    const params = Object.fromEntries(new URL(authorizeUrl()).searchParams);
    const res = await browse(h.smart.urls.authorize, params);
    expect(res.status).toBe(200);
    expect(res.html).toContain('name="password"');
  });

  test('pages are plain HTML without external assets and cannot be framed', async () => {
    const res = await fetch(authorizeUrl());
    const html = await res.text();
    expect(res.headers.get('x-frame-options')).toBe('DENY');
    expect(html).toMatch(/<html lang="en">/);
    expect(html).toMatch(/<label for="username">/);
    expect(html).not.toMatch(/<(script|link|img)\b/);
  });
});

describe('code redemption', () => {
  test('a valid code with the right verifier gets tokens; reusing the code fails and revokes what the first use got', async () => {
    const { verifier, challenge } = pkce();
    const code = await getCode({ challenge });
    const first = await redeem({ code, code_verifier: verifier });
    expect(first.status).toBe(200);
    expect(first.body).toMatchObject({ token_type: 'Bearer', patient: 'p1', scope: 'launch/patient patient/*.rs offline_access' });
    const read = () => fetch(`${h.fhirBase}/Patient/p1`, { headers: { authorization: `Bearer ${first.body.access_token}` } });
    expect((await read()).status).toBe(200);
    const second = await redeem({ code, code_verifier: verifier });
    expect(second).toMatchObject({ status: 400, body: { error: 'invalid_grant' } });
    expect((await read()).status).toBe(401);
  });

  test('wrong code_verifier: invalid_grant', async () => {
    const { challenge } = pkce();
    const code = await getCode({ challenge });
    expect(await redeem({ code, code_verifier: pkce().verifier })).toMatchObject({ status: 400, body: { error: 'invalid_grant' } });
  });

  test('missing code_verifier: invalid_grant', async () => {
    const code = await getCode();
    expect((await redeem({ code })).body.error).toBe('invalid_grant');
  });

  test('a code redeemed by another client: invalid_grant', async () => {
    const { verifier, challenge } = pkce();
    const code = await getCode({ challenge });
    expect((await redeem({ code, code_verifier: verifier, client_id: otherClientId })).body.error).toBe('invalid_grant');
  });

  test('a code redeemed with another redirect_uri: invalid_grant', async () => {
    const { verifier, challenge } = pkce();
    const code = await getCode({ challenge });
    expect((await redeem({ code, code_verifier: verifier, redirect_uri: 'http://localhost:3999/other' })).body.error).toBe('invalid_grant');
  });

  test('a code older than 60 s has expired (frozen clock)', async () => {
    const { verifier, challenge } = pkce();
    const code = await getCode({ challenge });
    h.advance(61_000);
    expect(await redeem({ code, code_verifier: verifier })).toMatchObject({ status: 400, body: { error: 'invalid_grant' } });
  });

  test('a code just under 60 s old still works (frozen clock)', async () => {
    const { verifier, challenge } = pkce();
    const code = await getCode({ challenge });
    h.advance(59_000);
    expect((await redeem({ code, code_verifier: verifier })).status).toBe(200);
  });

  test('unsupported grant type and a JSON body are refused per RFC 6749 §5.2', async () => {
    const res = await fetch(h.smart.urls.token, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: 'grant_type=password&username=a&password=b' });
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ error: 'unsupported_grant_type' });
    const json = await fetch(h.smart.urls.token, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"grant_type":"authorization_code"}' });
    expect(await json.json()).toMatchObject({ error: 'invalid_request' });
  });
});

describe('granular scopes', () => {
  test('patient/Observation.rs?category=laboratory: search returns only lab results and reading a vital sign is refused', async () => {
    const scope = 'launch/patient patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory';
    const { verifier, challenge } = pkce();
    const code = await getCode({ scope, challenge });
    const { body } = await redeem({ code, code_verifier: verifier });
    expect(body.scope).toBe(scope);
    const auth = { authorization: `Bearer ${body.access_token}` };
    const search = (await (await fetch(`${h.fhirBase}/Observation`, { headers: auth })).json()) as { entry: Array<{ resource: { id: string } }> };
    expect(search.entry.map((e) => e.resource.id)).toEqual(['o1']);
    expect((await fetch(`${h.fhirBase}/Observation/o1`, { headers: auth })).status).toBe(200);
    expect((await fetch(`${h.fhirBase}/Observation/o2`, { headers: auth })).status).toBe(404);
    expect((await fetch(`${h.fhirBase}/Patient/p1`, { headers: auth })).status).toBe(404);
  });
});
