/**
 * SMART Backend Services (client_credentials + private_key_jwt) with RS384 and ES384 assertions,
 * and every way a client assertion must be refused.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHmac, randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import express from 'express';
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK } from 'jose';
import { setClientDisabled, setClientJwks } from '../../src/smart/cli.js';
import { startHarness, type Harness } from '../support/smart-harness.js';

const JWT_BEARER = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
let h: Harness;
const keys: Record<'RS384' | 'ES384', { privateKey: CryptoKey; publicJwk: JWK; clientId: string }> = {} as never;
let jwksServer: Server;
let jwksUrl: string;
let urlClient: { clientId: string; privateKey: CryptoKey };

beforeAll(async () => {
  h = await startHarness();
  for (const alg of ['RS384', 'ES384'] as const) {
    const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true });
    const publicJwk = { ...(await exportJWK(publicKey)), kid: `${alg}-key`, alg };
    const { client } = h.smart.store.addClient({ name: `backend ${alg}`, type: 'confidential-asymmetric', jwks: { keys: [publicJwk] },
      scopes: ['system/*.rs'] });
    keys[alg] = { privateKey, publicJwk, clientId: client.clientId };
  }
  // A client whose keys are published at a JWKS URL (served on loopback).
  const { publicKey, privateKey } = await generateKeyPair('ES384');
  const jwk = { ...(await exportJWK(publicKey)), kid: 'url-key', alg: 'ES384' };
  const app = express().get('/jwks.json', (_req, res) => { res.json({ keys: [jwk] }); });
  jwksServer = app.listen(0, '127.0.0.1');
  await new Promise((r) => jwksServer.once('listening', r));
  jwksUrl = `http://127.0.0.1:${(jwksServer.address() as AddressInfo).port}/jwks.json`;
  urlClient = { clientId: h.smart.store.addClient({ name: 'url client', type: 'confidential-asymmetric', jwksUrl, scopes: ['system/Observation.rs'] })
    .client.clientId, privateKey };
});
afterAll(async () => {
  jwksServer.closeAllConnections();
  await new Promise((r) => jwksServer.close(r));
  await h.close();
});

interface AssertionOptions {
  alg?: string;
  kid?: string;
  jku?: string;
  aud?: string;
  exp?: number;
  jti?: string;
  iss?: string;
}

async function assertion(key: { privateKey: CryptoKey; clientId: string }, alg: 'RS384' | 'ES384', o: AssertionOptions = {}): Promise<string> {
  const now = Math.floor(h.now() / 1000);
  return new SignJWT({}).setProtectedHeader({ alg, kid: o.kid ?? `${alg}-key`, typ: 'JWT', ...(o.jku ? { jku: o.jku } : {}) })
    .setIssuer(o.iss ?? key.clientId).setSubject(o.iss ?? key.clientId).setAudience(o.aud ?? h.smart.urls.token)
    .setJti(o.jti ?? randomUUID()).setIssuedAt(now).setExpirationTime(o.exp ?? now + 240).sign(key.privateKey);
}

async function requestToken(clientAssertion: string, scope = 'system/Observation.rs') {
  const res = await fetch(h.smart.urls.token, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'client_credentials', scope, client_assertion_type: JWT_BEARER, client_assertion: clientAssertion }) });
  return { status: res.status, headers: res.headers, body: (await res.json()) as Record<string, unknown> };
}

function b64(value: object): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

describe('Backend Services token', () => {
  test.each(['RS384', 'ES384'] as const)('issues a system token for a %s client assertion, usable on /fhir', async (alg) => {
    const res = await requestToken(await assertion(keys[alg], alg), 'system/Observation.rs');
    expect(res.status).toBe(200);
    expect(res.headers.get('cache-control')).toBe('no-store');
    expect(res.headers.get('pragma')).toBe('no-cache');
    expect(res.body).toMatchObject({ token_type: 'Bearer', expires_in: 300, scope: 'system/Observation.rs' });
    expect(res.body.refresh_token).toBeUndefined();
    const read = await fetch(`${h.fhirBase}/Observation/o3`, { headers: { authorization: `Bearer ${res.body.access_token}` } });
    expect(read.status).toBe(200);
    const patient = await fetch(`${h.fhirBase}/Patient/p1`, { headers: { authorization: `Bearer ${res.body.access_token}` } });
    expect(patient.status).toBe(404);
  });

  test('a key published at the registered JWKS URL works, also with a jku equal to it', async () => {
    const res = await requestToken(await assertion(urlClient, 'ES384', { kid: 'url-key', jku: jwksUrl }));
    expect(res.status).toBe(200);
  });

  test('rejects a jku that is not the registered JWKS URL', async () => {
    const res = await requestToken(await assertion(urlClient, 'ES384', { kid: 'url-key', jku: 'http://127.0.0.1:1/evil.json' }));
    expect(res).toMatchObject({ status: 401, body: { error: 'invalid_client' } });
  });

  test('rejects a replayed jti', async () => {
    const jti = randomUUID();
    expect((await requestToken(await assertion(keys.ES384, 'ES384', { jti }))).status).toBe(200);
    const replay = await requestToken(await assertion(keys.ES384, 'ES384', { jti }));
    expect(replay).toMatchObject({ status: 401, body: { error: 'invalid_client' } });
  });

  test('rejects an expired assertion and one expiring more than 5 minutes ahead', async () => {
    const now = Math.floor(h.now() / 1000);
    expect((await requestToken(await assertion(keys.RS384, 'RS384', { exp: now - 1 }))).body.error).toBe('invalid_client');
    expect((await requestToken(await assertion(keys.RS384, 'RS384', { exp: now + 301 }))).body.error).toBe('invalid_client');
  });

  test('rejects an assertion whose aud is not the token URL', async () => {
    const res = await requestToken(await assertion(keys.RS384, 'RS384', { aud: `${h.baseUrl}/other` }));
    expect(res).toMatchObject({ status: 401, body: { error: 'invalid_client' } });
  });

  test('rejects an unknown kid', async () => {
    expect((await requestToken(await assertion(keys.ES384, 'ES384', { kid: 'nope' }))).body.error).toBe('invalid_client');
  });

  test('rejects a tampered assertion', async () => {
    const [header, , signature] = (await assertion(keys.ES384, 'ES384')).split('.');
    const now = Math.floor(h.now() / 1000);
    const id = keys.ES384.clientId;
    const forged = b64({ iss: id, sub: id, aud: h.smart.urls.token, jti: randomUUID(), exp: now + 60 });
    expect((await requestToken(`${header}.${forged}.${signature}`)).body.error).toBe('invalid_client');
  });

  test('rejects alg none', async () => {
    const now = Math.floor(h.now() / 1000);
    const id = keys.ES384.clientId;
    const unsigned = `${b64({ alg: 'none', kid: 'ES384-key', typ: 'JWT' })}.${b64({ iss: id, sub: id, aud: h.smart.urls.token, jti: randomUUID(), exp: now + 60 })}.`;
    expect((await requestToken(unsigned))).toMatchObject({ status: 401, body: { error: 'invalid_client' } });
  });

  test('rejects HS256 signed with the public key as the HMAC secret (algorithm confusion)', async () => {
    const now = Math.floor(h.now() / 1000);
    const id = keys.RS384.clientId;
    const input = `${b64({ alg: 'HS256', kid: 'RS384-key', typ: 'JWT' })}.${b64({ iss: id, sub: id, aud: h.smart.urls.token, jti: randomUUID(), exp: now + 60 })}`;
    for (const secret of [JSON.stringify(keys.RS384.publicJwk), keys.RS384.publicJwk.n!]) {
      const signed = `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`;
      expect((await requestToken(signed))).toMatchObject({ status: 401, body: { error: 'invalid_client' } });
    }
  });

  test('rejects an assertion signed by another client\'s key', async () => {
    const res = await requestToken(await assertion({ privateKey: keys.ES384.privateKey, clientId: keys.RS384.clientId }, 'ES384'));
    expect(res.body.error).toBe('invalid_client');
  });

  test('refuses scopes the client was not registered for, and non-system scopes', async () => {
    expect((await requestToken(await assertion(urlClient, 'ES384', { kid: 'url-key' }), 'system/Patient.rs')).body.error).toBe('invalid_scope');
    expect((await requestToken(await assertion(keys.ES384, 'ES384'), 'patient/*.rs')).body.error).toBe('invalid_scope');
  });

  test('a system token without system/launch cannot create launch contexts', async () => {
    const { body } = await requestToken(await assertion(keys.ES384, 'ES384'), 'system/*.rs');
    const res = await fetch(`${h.baseUrl}/smart/launch`, { method: 'POST',
      headers: { authorization: `Bearer ${body.access_token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ patient: 'p1', practitioner: 'd1' }) });
    expect(res.status).toBe(403);
    expect(await res.json()).toMatchObject({ error: 'insufficient_scope' });
  });

  test('a Backend Services access token lives 300 s (SMART Backend Services recommends at most five minutes)', async () => {
    const { body } = await requestToken(await assertion(keys.ES384, 'ES384'));
    expect(body.expires_in).toBe(300);
    const token = String(body.access_token);
    const read = () => fetch(`${h.fhirBase}/Observation/o3`, { headers: { authorization: `Bearer ${token}` } });
    h.advance(299_000);
    expect((await read()).status).toBe(200);
    h.advance(1_000);
    expect((await read()).status).toBe(401);
  });

  test('client_secret_basic and client_secret_post authenticate a symmetric client; a wrong secret does not', async () => {
    const { client, secret } = h.smart.store.addClient({ name: 'sym', type: 'confidential-symmetric', redirectUris: ['https://app.example/cb'],
      scopes: ['system/Observation.rs'] });
    const post = (headers: Record<string, string>, body: Record<string, string>) => fetch(h.smart.urls.token, { method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
      body: new URLSearchParams({ grant_type: 'client_credentials', scope: 'system/Observation.rs', ...body }) });
    const basic = Buffer.from(`${client.clientId}:${secret}`).toString('base64');
    expect((await post({ authorization: `Basic ${basic}` }, {})).status).toBe(200);
    expect((await post({}, { client_id: client.clientId, client_secret: secret! })).status).toBe(200);
    const wrong = await post({}, { client_id: client.clientId, client_secret: 'not-the-secret' });
    expect(wrong.status).toBe(401);
    expect(await wrong.json()).toEqual({ error: 'invalid_client', error_description: 'Client authentication failed' });
  });
});

describe('client assertion refusals say which rule was broken, the same words however it was broken', () => {
  /** An assertion with exactly these claims (undefined ones left out), signed with the ES384 client's key. */
  async function signed(claims: Record<string, unknown>, kid = 'ES384-key'): Promise<string> {
    const present = Object.fromEntries(Object.entries(claims).filter(([, v]) => v !== undefined));
    return new SignJWT(present).setProtectedHeader({ alg: 'ES384', kid, typ: 'JWT' }).sign(keys.ES384.privateKey);
  }
  const base = () => {
    const now = Math.floor(h.now() / 1000);
    const id = keys.ES384.clientId;
    return { iss: id, sub: id, aud: h.smart.urls.token, jti: randomUUID(), iat: now, exp: now + 240 };
  };
  const refusal = async (clientAssertion: string): Promise<string> => {
    const res = await requestToken(clientAssertion);
    expect(res.status).toBe(401);
    expect(res.body.error).toBe('invalid_client');
    return String(res.body.error_description);
  };

  test('a missing jti and an empty one read alike', async () => {
    expect(await refusal(await signed({ ...base(), jti: undefined }))).toBe('client_assertion needs a jti');
    expect(await refusal(await signed({ ...base(), jti: '' }))).toBe('client_assertion needs a jti');
  });

  test('expired, missing exp, wrong aud and iss/sub each say so', async () => {
    const now = Math.floor(h.now() / 1000);
    expect(await refusal(await signed({ ...base(), exp: now - 1 }))).toBe('client_assertion has expired');
    expect(await refusal(await signed({ ...base(), exp: undefined }))).toBe('client_assertion needs an exp');
    expect(await refusal(await signed({ ...base(), aud: `${h.baseUrl}/other` }))).toBe(`client_assertion aud must be the token URL (${h.smart.urls.token})`);
    expect(await refusal(await signed({ ...base(), sub: 'someone-else' }))).toBe('client_assertion iss and sub must both be the client_id');
    expect(await refusal(await signed({ ...base(), exp: now + 600 }))).toBe('client_assertion exp must be at most 5 minutes in the future');
  });

  test('a wrong key and an unknown kid read alike, and tell nothing about the claims', async () => {
    const wrongKey = await new SignJWT({ ...base(), exp: Math.floor(h.now() / 1000) - 1 }).setProtectedHeader({ alg: 'ES384', kid: 'ES384-key' })
      .sign((await generateKeyPair('ES384')).privateKey);
    const unknownKid = await signed(base(), 'no-such-kid');
    const said = await refusal(wrongKey);
    expect(said).toBe('client_assertion signature does not verify with a registered key of the client (kid and alg must match one)');
    expect(await refusal(unknownKid)).toBe(said);
  });

  test('refuses an iat more than a minute in the future and an nbf in the future; a few seconds of clock skew pass', async () => {
    const now = Math.floor(h.now() / 1000);
    expect(await refusal(await signed({ ...base(), iat: now + 50 * 60 }))).toBe('client_assertion iat must not be in the future');
    expect(await refusal(await signed({ ...base(), iat: now + 61 }))).toBe('client_assertion iat must not be in the future');
    expect(await refusal(await signed({ ...base(), nbf: now + 30 }))).toBe('client_assertion is not valid yet (nbf is in the future)');
    expect((await requestToken(await signed({ ...base(), iat: now + 30, nbf: now }))).status).toBe(200);
  });
});

describe('operator controls over a client (glucoguard clients disable / set-jwks)', () => {
  test('a disabled client gets no token (invalid_client), and its access tokens stop working at once', async () => {
    const { publicKey, privateKey } = await generateKeyPair('ES384');
    const publicJwk = { ...(await exportJWK(publicKey)), kid: 'ES384-key', alg: 'ES384' };
    const { client } = h.smart.store.addClient({ name: 'to disable', type: 'confidential-asymmetric', jwks: { keys: [publicJwk] }, scopes: ['system/*.rs'] });
    const key = { privateKey, clientId: client.clientId };
    const { body } = await requestToken(await assertion(key, 'ES384'));
    const token = String(body.access_token);
    const read = () => fetch(`${h.fhirBase}/Observation/o3`, { headers: { authorization: `Bearer ${token}` } });
    expect((await read()).status).toBe(200);
    // the CLI writes the client store from another process: a connection of its own
    setClientDisabled(h.config, client.clientId, true);
    expect((await read()).status).toBe(401);
    const introspected = await fetch(h.smart.urls.introspect, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: `Bearer ${token}` },
      body: new URLSearchParams({ token }) });
    expect(introspected.status).toBe(401);
    const refused = await requestToken(await assertion(key, 'ES384'));
    expect(refused).toMatchObject({ status: 401, body: { error: 'invalid_client' } });
    // enabled again: it can authenticate again
    setClientDisabled(h.config, client.clientId, false);
    expect((await requestToken(await assertion(key, 'ES384'))).status).toBe(200);
  });

  test('the refresh token of a disabled app stops working (invalid_client), and so does introspecting it', async () => {
    const { client } = h.smart.store.addClient({ name: 'app', type: 'public', redirectUris: ['https://app.example/cb'] });
    const grant = { gid: randomUUID(), clientId: client.clientId, sub: 'ana', scopes: ['offline_access', 'patient/*.rs'] };
    const refreshToken = await h.smart.tokens.issueRefreshToken(grant);
    // (a client is told only of its own tokens, so the app asks about its refresh token with its own
    // access token; another client would be answered {"active": false} whether it was disabled or not)
    const bearer = h.smart.tokens.signAccessToken(grant).token;
    const introspect = async () => fetch(h.smart.urls.introspect, { method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: `Bearer ${bearer}` }, body: new URLSearchParams({ token: refreshToken }) });
    expect(((await (await introspect()).json()) as { active: boolean }).active).toBe(true);
    setClientDisabled(h.config, client.clientId, true);
    expect((await introspect()).status).toBe(401);
    await expect(h.smart.tokens.findRefreshToken(refreshToken)).resolves.toBeUndefined();
    const res = await fetch(h.smart.urls.token, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: refreshToken, client_id: client.clientId }) });
    expect(res.status).toBe(401);
    expect(await res.json()).toMatchObject({ error: 'invalid_client' });
  });

  test('set-jwks rotates a client\'s keys: the old key is refused from then on, the new one accepted', async () => {
    const old = await generateKeyPair('ES384');
    const { client } = h.smart.store.addClient({ name: 'rotating', type: 'confidential-asymmetric',
      jwks: { keys: [{ ...(await exportJWK(old.publicKey)), kid: 'k1', alg: 'ES384' }] }, scopes: ['system/*.rs'] });
    expect((await requestToken(await assertion({ privateKey: old.privateKey, clientId: client.clientId }, 'ES384', { kid: 'k1' }))).status).toBe(200);
    const next = await generateKeyPair('ES384');
    setClientJwks(h.config, client.clientId, { keys: [{ ...(await exportJWK(next.publicKey)), kid: 'k2', alg: 'ES384' }] });
    expect((await requestToken(await assertion({ privateKey: old.privateKey, clientId: client.clientId }, 'ES384', { kid: 'k1' }))).body.error).toBe('invalid_client');
    expect((await requestToken(await assertion({ privateKey: next.privateKey, clientId: client.clientId }, 'ES384', { kid: 'k2' }))).status).toBe(200);
  });
});
