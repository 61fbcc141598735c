/**
 * A password change ends the patient's other sessions (session 26, black-box security round).
 * Changing the password is what a patient does when they think someone else has it; the tokens that
 * someone already holds — an access token, a 90-day offline refresh token — went on working after
 * the change. Now every token of the user's other grants dies with the old password; the session
 * that changed it goes on (docs/patient-keys.md: "the current session keeps signing").
 */
import { createHash, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { person } from './consent-helpers.js';

let t: TestApp;
let ana: string;
/** A public app of the thief's choosing that may keep a sign-in (offline_access). */
let offlineApp: { clientId: string; redirectUri: string };

beforeAll(async () => {
  t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
  ana = await person(t.app, 'Patient', 'Rivera');
  await t.app.smart.store.addUser({ username: 'ana', password: 'ana-password-1', fhirUser: `Patient/${ana}` });
  const redirectUri = 'http://localhost:3999/callback';
  offlineApp = { redirectUri, clientId: t.app.smart.store.addClient({ name: 'Any app', type: 'public', redirectUris: [redirectUri],
    scopes: ['openid', 'fhirUser', 'launch/patient', 'offline_access', 'patient/*.rs'] }).client.clientId };
}, 60_000);
afterAll(async () => t?.close());

/** authorize → login form → approval → code → token, as a browser and the app do it. */
async function signIn(password: string, app: { clientId: string; redirectUri: string }, scope: string): Promise<Record<string, string>> {
  const verifier = randomBytes(32).toString('base64url');
  const start = await request(t.app.http).get('/oauth/authorize').query({
    response_type: 'code', client_id: app.clientId, redirect_uri: app.redirectUri, scope, state: 's', aud: 'http://127.0.0.1:8080/fhir',
    code_challenge: createHash('sha256').update(verifier).digest('base64url'), code_challenge_method: 'S256',
  });
  const id = (html: string) => /name="request" value="([^"]+)"/.exec(html)![1]!;
  const login = await request(t.app.http).post('/oauth/login').type('form').send({ request: id(start.text), username: 'ana', password });
  expect(login.status).toBe(200);
  const approved = await request(t.app.http).post('/oauth/approve').type('form').send({ request: id(login.text), decision: 'allow' });
  const code = new URL(approved.headers.location!).searchParams.get('code')!;
  const token = await request(t.app.http).post('/oauth/token').type('form')
    .send({ grant_type: 'authorization_code', code, redirect_uri: app.redirectUri, client_id: app.clientId, code_verifier: verifier });
  expect(token.status).toBe(200);
  return token.body as Record<string, string>;
}

const readPatient = (token: string) => request(t.app.http).get(`/fhir/Patient/${ana}`).set('Authorization', `Bearer ${token}`);
const refresh = (refreshToken: string) => request(t.app.http).post('/oauth/token').type('form')
  .send({ grant_type: 'refresh_token', refresh_token: refreshToken, client_id: offlineApp.clientId });

describe('password change', () => {
  test('ends the tokens of every other sign-in of the user; the session that changed it goes on', async () => {
    const portal = { clientId: t.app.web.clients.portal, redirectUri: t.app.web.urls.portalIndex };
    // someone who learnt the password signs in and keeps the sign-in
    const thief = await signIn('ana-password-1', offlineApp, 'openid fhirUser launch/patient patient/*.rs offline_access');
    expect((await readPatient(thief.access_token!)).status).toBe(200);
    // the patient, in the portal, changes the password
    const mine = await signIn('ana-password-1', portal, 'openid fhirUser launch/patient patient/*.cruds');
    const change = await request(t.app.http).post('/apps/api/password').set('Authorization', `Bearer ${mine.access_token}`)
      .send({ current: 'ana-password-1', password: 'ana-password-2' });
    expect(change.status).toBe(200);

    expect((await readPatient(thief.access_token!)).status).toBe(401);
    const refreshed = await refresh(thief.refresh_token!);
    expect(refreshed.status).toBe(400);
    expect(refreshed.body.error).toBe('invalid_grant');
    expect((await readPatient(mine.access_token!)).status).toBe(200);
    expect((await request(t.app.http).get('/apps/api/key-safety').set('Authorization', `Bearer ${mine.access_token}`)).body.locked).toBe(false);
    // a sign-in with the new password is a new session like any other (a second on: an access
    // token's iat is in whole seconds, so one issued in the second of the change counts as before it)
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const later = await signIn('ana-password-2', offlineApp, 'openid fhirUser launch/patient patient/*.rs offline_access');
    expect((await readPatient(later.access_token!)).status).toBe(200);
    expect((await refresh(later.refresh_token!)).status).toBe(200);
  });
});
