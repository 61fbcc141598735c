/**
 * The sign-in limits cannot be turned against other users (session 26, black-box security round).
 * Besides the per-address limit, /oauth/login counted every attempt of an app (100 a minute) whoever
 * made it: a handful of addresses posting wrong passwords on one request id shut every user of that
 * app — all patients, for the portal — out of sign-in. Distributed guessing is now bounded per
 * account instead (20 wrong passwords a minute): a guessed-at account is the only one slowed down,
 * and its user's own sign-ins do not count.
 */
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { startHarness, type Harness } from '../support/smart-harness.js';
import { REDIRECT_URI, requestIdOf } from '../support/smart-client.js';

let h: Harness;
let clientId: string;
const ANA = { username: 'ana', password: 'correct horse battery' };
const DOC = { username: 'doc', password: 'doctor password 1' };

beforeEach(async () => {
  h = await startHarness({ env: { GLUCOGUARD_TRUST_PROXY: 'loopback' } });
  await h.smart.store.addUser({ ...ANA, fhirUser: 'Patient/p1' });
  await h.smart.store.addUser({ ...DOC, fhirUser: 'Practitioner/d1' });
  clientId = h.smart.store.addClient({ name: 'Portal', type: 'public', redirectUris: [REDIRECT_URI],
    scopes: ['openid', 'fhirUser', 'launch/patient', 'patient/*.rs'] }).client.clientId;
});
afterEach(async () => h.close());

/** A login page's request id, fetched from `ip` (behind the trusted proxy). */
async function loginRequest(ip: string): Promise<string> {
  const url = new URL(h.smart.urls.authorize);
  for (const [k, v] of Object.entries({ response_type: 'code', client_id: clientId, redirect_uri: REDIRECT_URI, scope: 'openid patient/*.rs',
    state: 's', aud: h.fhirBase, code_challenge: createHash('sha256').update(randomBytes(32).toString('base64url')).digest('base64url'),
    code_challenge_method: 'S256' })) url.searchParams.set(k, v);
  const res = await fetch(url, { headers: { 'x-forwarded-for': ip } });
  return requestIdOf(await res.text());
}

async function signIn(ip: string, request: string, user: { username: string; password: string }): Promise<number> {
  const res = await fetch(`${h.baseUrl}/oauth/login`, {
    method: 'POST', redirect: 'manual',
    headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-forwarded-for': ip },
    body: new URLSearchParams({ request, ...user }).toString(),
  });
  await res.arrayBuffer();
  return res.status;
}

describe('sign-in limits', () => {
  test('wrong passwords from a few addresses do not lock the app\'s other users out', async () => {
    // five addresses, each within its own per-address limit, guessing at made-up accounts: 105 attempts
    const attackers = ['203.0.113.1', '203.0.113.2', '203.0.113.3', '203.0.113.4', '203.0.113.5'];
    const statuses = (await Promise.all(attackers.map(async (ip, a) => {
      const request = await loginRequest(ip);
      const mine: number[] = [];
      for (let i = 0; i < 21; i++) mine.push(await signIn(ip, request, { username: `guess${a}-${i}`, password: 'wrong password' }));
      return mine;
    }))).flat();
    expect(statuses.filter((s) => s === 401)).toHaveLength(105);
    // a patient signing in from elsewhere in the same minute
    expect(await signIn('198.51.100.7', await loginRequest('198.51.100.7'), ANA)).toBe(200);
  }, 120_000); // a password check costs scrypt: 106 of them

  test('signing in often does not use up the account\'s allowance', async () => {
    for (let i = 0; i < 25; i++) expect(await signIn('198.51.100.7', await loginRequest('198.51.100.7'), DOC)).toBe(200);
  }, 60_000);

  test('guessing one account from many addresses is bounded for that account only', async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 25; i++) {
      const ip = `203.0.113.${10 + i}`;
      statuses.push(await signIn(ip, await loginRequest(ip), { username: ANA.username, password: `guess ${i}` }));
    }
    expect(statuses.slice(0, 20)).toEqual(Array(20).fill(401));
    expect(statuses.slice(20)).toEqual(Array(5).fill(429));
    // the right password is refused too until the window ends: the guesser learns nothing from it
    expect(await signIn('198.51.100.7', await loginRequest('198.51.100.7'), ANA)).toBe(429);
    expect(await signIn('198.51.100.7', await loginRequest('198.51.100.7'), DOC)).toBe(200);
    h.advance(60_000);
    expect(await signIn('198.51.100.7', await loginRequest('198.51.100.7'), ANA)).toBe(200);
  }, 60_000);
});
