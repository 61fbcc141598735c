/**
 * The default shape (`npm start`: no REDIS_URL) keeps the KV port in the data directory, so what
 * OAuth relies on outlives a restart: a revoked token stays revoked (RFC 7009), a refresh token keeps
 * working for its lifetime (offline_access: 90 days) with rotation and reuse detection intact, and an
 * authorization code used before a restart is still known as used (RFC 6749 §4.1.2).
 */
import { createHash, randomBytes } from 'node:crypto';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { person } from './consent-helpers.js';

const REDIRECT_URI = 'https://diary.example/callback';
const USER = { username: 'ana', password: 'correct horse battery' };
let t: TestApp;
let patient: string;
let clientId: string;

beforeAll(async () => {
  t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
  patient = await person(t.app, 'Patient', 'Rivera');
  await t.app.smart.store.addUser({ ...USER, fhirUser: `Patient/${patient}` });
  clientId = t.app.smart.store.addClient({
    name: 'Diary', type: 'public', redirectUris: [REDIRECT_URI], scopes: ['openid', 'fhirUser', 'launch/patient', 'offline_access', 'patient/*.rs'],
  }).client.clientId;
}, 60_000);
afterAll(async () => t?.close());

/** authorize → login → approve: the code and its PKCE verifier. */
async function authorize(scope: string): Promise<{ code: string; verifier: string }> {
  const verifier = randomBytes(32).toString('base64url');
  const start = await request(t.app.http).get('/oauth/authorize').query({
    response_type: 'code', client_id: clientId, redirect_uri: REDIRECT_URI, scope, state: 's', aud: 'http://127.0.0.1:8080/fhir',
    code_challenge: createHash('sha256').update(verifier).digest('base64url'), code_challenge_method: 'S256',
  });
  const id = (html: string) => /name="request" value="([^"]+)"/.exec(html)![1]!;
  const login = await request(t.app.http).post('/oauth/login').type('form').send({ request: id(start.text), ...USER });
  expect(login.status).toBe(200);
  const approved = await request(t.app.http).post('/oauth/approve').type('form').send({ request: id(login.text), decision: 'allow' });
  return { code: new URL(approved.headers.location!).searchParams.get('code')!, verifier };
}

const redeem = (code: string, verifier: string) => request(t.app.http).post('/oauth/token').type('form')
  .send({ grant_type: 'authorization_code', code, redirect_uri: REDIRECT_URI, client_id: clientId, code_verifier: verifier });

async function signIn(scope = 'openid fhirUser launch/patient patient/*.rs'): Promise<{ access_token: string; refresh_token?: string }> {
  const { code, verifier } = await authorize(scope);
  const res = await redeem(code, verifier);
  expect(res.status).toBe(200);
  return res.body as { access_token: string; refresh_token?: string };
}

const refresh = (token: string) => request(t.app.http).post('/oauth/token').type('form').send({ grant_type: 'refresh_token', refresh_token: token });
const readPatient = async (token: string) => (await request(t.app.http).get(`/fhir/Patient/${patient}`).set('Authorization', `Bearer ${token}`)).status;

describe('KV state across a restart (default embedded KV)', () => {
  test('the KV port is served by the SQLite file in the data directory, and says so', () => {
    expect(t.app.kv.description).toEqual({ adapter: 'embedded', location: path.join(t.dataDir, 'kv', 'kv.sqlite') });
    expect(t.app.adapters).toContainEqual({ port: 'kv', adapter: 'embedded', location: path.join(t.dataDir, 'kv', 'kv.sqlite') });
  });

  test('a revoked access token is still refused after a restart; one not revoked still works', async () => {
    const revoked = await signIn();
    const kept = await signIn();
    expect(await readPatient(revoked.access_token)).toBe(200);
    const res = await request(t.app.http).post('/oauth/revoke').type('form').send({ token: revoked.access_token, client_id: clientId });
    expect(res.status).toBe(200);
    expect(await readPatient(revoked.access_token)).toBe(401);
    await t.restart();
    expect(await readPatient(revoked.access_token)).toBe(401);
    expect(await readPatient(kept.access_token)).toBe(200);
  }, 60_000);

  test('an offline_access refresh token works after a restart; the one it replaced, used again, still revokes the grant', async () => {
    const first = await signIn('openid fhirUser launch/patient patient/*.rs offline_access');
    const rotated = await refresh(first.refresh_token!);
    expect(rotated.status).toBe(200);
    await t.restart();
    const next = await refresh(rotated.body.refresh_token as string);
    expect(next.status).toBe(200);
    expect(next.body).toMatchObject({ token_type: 'Bearer', patient, scope: expect.stringContaining('offline_access') });
    expect(await readPatient(next.body.access_token as string)).toBe(200);
    await t.restart();
    const replay = await refresh(first.refresh_token!);
    expect(replay.body.error).toBe('invalid_grant');
    expect(await readPatient(next.body.access_token as string)).toBe(401);
    expect((await refresh(next.body.refresh_token as string)).body.error).toBe('invalid_grant');
  }, 90_000);

  test('a code redeemed before a restart is refused after it, and the tokens it gave are revoked', async () => {
    const { code, verifier } = await authorize('openid fhirUser launch/patient patient/*.rs');
    const first = await redeem(code, verifier);
    expect(first.status).toBe(200);
    await t.restart();
    const again = await redeem(code, verifier);
    expect(again.status).toBe(400);
    expect(again.body.error).toBe('invalid_grant');
    expect(await readPatient(first.body.access_token as string)).toBe(401);
  }, 60_000);
});
