/**
 * `glucoguard users disable|enable` (SmartStore.setUserDisabled): a disabled user cannot sign in, and
 * every token they hold — access, refresh, an unused code — stops working at once; enabled again they
 * may sign in, but the tokens issued before the disabling stay dead. Other users and Backend Services
 * clients are untouched.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { startHarness, type Harness } from '../support/smart-harness.js';
import { browse, loginAndApprove, REDIRECT_URI } from '../support/smart-client.js';

let h: Harness;
let appId: string;
const LEAVER = { username: 'dr.leaver', password: 'a long enough password' };
const STAYER = { username: 'dr.stayer', password: 'another long password' };

beforeAll(async () => {
  h = await startHarness();
  await h.smart.store.addUser({ ...LEAVER, fhirUser: 'Practitioner/pr1' });
  await h.smart.store.addUser({ ...STAYER, fhirUser: 'Practitioner/pr1' });
  appId = h.smart.store.addClient({ name: 'Viewer', type: 'public', redirectUris: [REDIRECT_URI],
    scopes: ['openid', 'fhirUser', 'offline_access', 'user/*.rs'] }).client.clientId;
});
afterAll(async () => h.close());

async function post(url: string, body: Record<string, string>) {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(body) });
  const text = await res.text();
  return { status: res.status, body: (text ? JSON.parse(text) : undefined) as Record<string, any> };
}

/** Signs `user` in and approves; answers the code and its verifier (or the page that refused). */
async function signIn(user: { username: string; password: string }) {
  const verifier = randomBytes(32).toString('base64url');
  const url = new URL(h.smart.urls.authorize);
  const params = { response_type: 'code', client_id: appId, redirect_uri: REDIRECT_URI, scope: 'openid fhirUser offline_access user/*.rs', state: 's',
    aud: h.fhirBase, code_challenge: createHash('sha256').update(verifier).digest('base64url'), code_challenge_method: 'S256' };
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
  const done = await loginAndApprove(h.baseUrl, (await browse(url.href)).html, user);
  const code = done.location ? new URL(done.location).searchParams.get('code') ?? undefined : undefined;
  return { code, verifier, done };
}
const redeem = (code: string, verifier: string) =>
  post(h.smart.urls.token, { grant_type: 'authorization_code', code, code_verifier: verifier, redirect_uri: REDIRECT_URI, client_id: appId });
const read = (token: string) => fetch(`${h.fhirBase}/Patient/p1`, { headers: { authorization: `Bearer ${token}` } });
const refresh = (token: string) => post(h.smart.urls.token, { grant_type: 'refresh_token', refresh_token: token });

describe('a disabled user', () => {
  test('loses every token at once and cannot sign in; enabled again, signs in, and the old tokens stay dead', async () => {
    const mine = await signIn(LEAVER);
    const tokens = (await redeem(mine.code!, mine.verifier)).body;
    const pending = await signIn(LEAVER); // a code not yet redeemed
    const stayer = await signIn(STAYER);
    const other = (await redeem(stayer.code!, stayer.verifier)).body;
    expect((await read(tokens.access_token)).status).toBe(200);

    h.smart.store.setUserDisabled(LEAVER.username, true, h.now());
    expect((await read(tokens.access_token)).status).toBe(401);
    expect(await refresh(tokens.refresh_token)).toMatchObject({ status: 400, body: { error: 'invalid_grant' } });
    expect(await redeem(pending.code!, pending.verifier)).toMatchObject({ status: 400, body: { error: 'invalid_grant' } });
    // the app asks with another (live) user's token: its own tokens are described, this one is inactive
    for (const token of [tokens.access_token, tokens.refresh_token]) {
      const res = await fetch(h.smart.urls.introspect, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: `Bearer ${other.access_token}` },
        body: new URLSearchParams({ token }) });
      expect(await res.json()).toEqual({ active: false });
    }
    // sign-in refused as a wrong password is (the page does not say the account exists)
    const refused = await signIn(LEAVER);
    expect(refused.code).toBeUndefined();
    const wrong = await signIn({ ...STAYER, password: 'not the password' });
    const page = (html: string) => html.replace(/name="request" value="[^"]*"/g, '').replace(/dr\.(leaver|stayer)/g, 'USER');
    expect(page(refused.done.html)).toBe(page(wrong.done.html));
    expect(refused.done.html).toMatch(/incorrect|not right|wrong/i);
    // the other user's tokens are untouched
    expect((await read(other.access_token)).status).toBe(200);
    expect(h.smart.store.listUsers().find((u) => u.username === LEAVER.username)?.disabledAt).toBe(new Date(h.now()).toISOString());

    h.advance(1000);
    h.smart.store.setUserDisabled(LEAVER.username, false, h.now());
    h.advance(1000);
    expect((await read(tokens.access_token)).status).toBe(401);
    expect((await refresh(tokens.refresh_token)).body.error).toBe('invalid_grant');
    const again = await signIn(LEAVER);
    const fresh = (await redeem(again.code!, again.verifier)).body;
    expect((await read(fresh.access_token)).status).toBe(200);
    expect((await refresh(fresh.refresh_token)).status).toBe(200);
  });

  test('disabling a user no one registered is refused', () => {
    expect(() => h.smart.store.setUserDisabled('nobody', true)).toThrow(/no user "nobody"/);
  });
});
