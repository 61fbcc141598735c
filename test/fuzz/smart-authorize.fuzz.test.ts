/**
 * Property-based fuzzing of the authorization endpoint and its forms (src/smart/authorize.ts) and of
 * introspection and revocation, over HTTP on the real app: arbitrary parameters, repeated and
 * missing ones, hostile redirect URIs and states. Never a 5xx; never a redirect anywhere but the
 * client's registered redirect URI (no open redirect); a page is HTML with the pages' strict CSP;
 * introspection and revocation errors are JSON.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import fc from 'fast-check';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';

const REDIRECT_URI = 'http://localhost:3999/callback';
let t: TestApp;
let server: Server;
let fhirBase: string;
let clientId: string;
const outcomes = new Map<string, number>();

beforeAll(async () => {
  // Port first, so the FHIR base (the required `aud`) matches the listening address.
  server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  fhirBase = `${base}/fhir`;
  // each request from an address of its own (X-Forwarded-For, believed from loopback): the per-address
  // limits (300 authorizations, 30 sign-ins a minute) would otherwise answer most runs 429 unread
  t = await startTestApp({ GLUCOGUARD_AUTH: 'on', GLUCOGUARD_BASE_URL: base, GLUCOGUARD_TRUST_PROXY: 'loopback' });
  server.on('request', t.app.http);
  clientId = t.app.smart.store.addClient({ name: 'Viewer', type: 'public', redirectUris: [REDIRECT_URI],
    scopes: ['openid', 'fhirUser', 'launch/patient', 'offline_access', 'patient/*.rs'] }).client.clientId;
  await t.app.smart.store.addUser({ username: 'ana', password: 'correct horse battery', fhirUser: 'Patient/p1' });
});
afterAll(async () => {
  server?.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await t?.close();
});

const challenge = createHash('sha256').update(randomBytes(32).toString('base64url')).digest('base64url');
const valid = (): Record<string, string> => ({ response_type: 'code', client_id: clientId, redirect_uri: REDIRECT_URI, scope: 'launch/patient patient/*.rs',
  state: 'st', aud: fhirBase, code_challenge: challenge, code_challenge_method: 'S256' });

const hostile = fc.oneof(
  fc.constantFrom('', 'code', 'token', 'code id_token', 'http://evil.example/cb', 'http://localhost:3999/callback/../evil', 'http://localhost:3999/callback?x=1',
    'http://localhost:3999/callback#frag', 'HTTP://LOCALHOST:3999/callback', 'javascript:alert(1)', '//evil.example', 'http://localhost:3999@evil.example/callback',
    'plain', 'S256', 'launch/patient patient/*.rs', 'patient/*.*', 'system/*.cruds', 'user/*.rs openid', '"><script>alert(1)</script>', '%00', 'a'.repeat(2000),
    'https://evil.example/fhir', 'unknown-client'),
  fc.string({ maxLength: 40 }),
);
const KEYS = ['response_type', 'client_id', 'redirect_uri', 'scope', 'state', 'aud', 'code_challenge', 'code_challenge_method', 'launch', 'nonce', 'prompt'];

let sent = 0;
/** A client address not used before (documentation range 198.18.0.0/15 has room for 131,072). */
const nextAddress = (): string => { sent++; return `198.${18 + (sent >> 16)}.${(sent >> 8) & 255}.${sent & 255}`; };

function record(res: request.Response): void {
  const key = `${res.status}${res.status === 302 ? ` ${new URL(res.headers.location!, 'http://x').searchParams.get('error') ?? 'no error'}` : ''}`;
  outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
}

function checkAuthorizeAnswer(res: request.Response, sent: unknown): void {
  record(res);
  const fail = (why: string) => new Error(`${why}: ${res.status} ${res.headers.location ?? res.text.slice(0, 200)} for ${JSON.stringify(sent).slice(0, 400)}`);
  if (res.status >= 500) throw fail('server error');
  if (res.status === 302 || res.status === 303) {
    const location = res.headers.location ?? '';
    if (!location.startsWith(`${REDIRECT_URI}?`)) throw fail('redirect to an unregistered URI');
    return;
  }
  if (![200, 400, 401, 429].includes(res.status)) throw fail('unexpected status');
  if (!/^text\/html/.test(res.headers['content-type'] ?? '')) throw fail('page is not HTML');
  if (res.headers['content-security-policy'] !== "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'") throw fail('page without its CSP');
  if (/<script/i.test(res.text)) throw fail('script in a page');
}

describe('authorization endpoint never answers 5xx or redirects off the registered URI', () => {
  test('a valid request with up to three parameters replaced, repeated or removed (GET and form POST)', async () => {
    const mutation = fc.array(fc.tuple(fc.constantFrom(...KEYS), fc.constantFrom('set', 'drop', 'repeat'), hostile), { maxLength: 3 });
    await fc.assert(fc.asyncProperty(mutation, fc.boolean(), async (changes, post) => {
      const params: [string, string][] = Object.entries(valid());
      for (const [key, op, value] of changes) {
        const at = params.findIndex(([k]) => k === key);
        if (op === 'drop' && at >= 0) params.splice(at, 1);
        else if (op === 'set' && at >= 0) params[at] = [key, value];
        else params.push([key, value]);
      }
      const qs = new URLSearchParams(params).toString();
      const res = post ? await request(server).post('/oauth/authorize').set('X-Forwarded-For', nextAddress()).type('form').send(qs)
        : await request(server).get(`/oauth/authorize?${qs}`).set('X-Forwarded-For', nextAddress());
      checkAuthorizeAnswer(res, { changes, post });
    }), { numRuns: 600 });
    process.stdout.write(`authorize fuzz outcomes: ${JSON.stringify(Object.fromEntries([...outcomes].sort()))}\n`);
    expect(outcomes.get('200') ?? 0).toBeGreaterThan(20);
    expect([...outcomes.keys()].filter((k) => k.startsWith('302 ')).length).toBeGreaterThan(2);
    expect(outcomes.get('400') ?? 0).toBeGreaterThan(20);
    expect(outcomes.get('429')).toBeUndefined(); // every run reached the checks, none stopped at a rate limit
  });

  test('the login, patient and approval forms with arbitrary fields, against a live pending request', async () => {
    const login = await request(server).get(`/oauth/authorize?${new URLSearchParams(valid())}`).set('X-Forwarded-For', nextAddress());
    const requestId = /name="request" value="([^"]+)"/.exec(login.text)![1]!;
    const field = fc.tuple(fc.constantFrom('request', 'username', 'password', 'patient', 'decision', 'query', 'action', 'x'),
      fc.oneof(fc.constantFrom(requestId, 'ana', 'correct horse battery', 'p1', 'allow', 'deny', 'search', ''), hostile));
    await fc.assert(fc.asyncProperty(fc.constantFrom('login', 'select-patient', 'approve'), fc.array(field, { maxLength: 5 }), async (step, fields) => {
      const res = await request(server).post(`/oauth/${step}`).set('X-Forwarded-For', nextAddress()).type('form').send(new URLSearchParams(fields).toString());
      checkAuthorizeAnswer(res, { step, fields: fields.map(([k, v]) => [k, k === 'password' ? '…' : v]) });
    }), { numRuns: 300 });
  });
});

describe('introspection and revocation answer JSON, never 5xx', () => {
  test.each([['/oauth/introspect'], ['/oauth/revoke']])('%s with arbitrary forms and credentials', async (path) => {
    const pair = fc.tuple(fc.constantFrom('token', 'token_type_hint', 'client_id', 'client_secret', 'client_assertion', 'client_assertion_type', 'x'),
      fc.oneof(fc.constantFrom(clientId, 'access_token', 'refresh_token', 'a.b.c', ''), hostile));
    const auth = fc.option(fc.constantFrom('Bearer a.b.c', 'Bearer ', `Basic ${Buffer.from(`${clientId}:x`).toString('base64')}`, 'Basic !!', 'Digest x'));
    await fc.assert(fc.asyncProperty(fc.array(pair, { maxLength: 5 }), auth, async (pairs, authorization) => {
      let req = request(server).post(path).type('form');
      if (authorization) req = req.set('Authorization', authorization);
      const res = await req.send(new URLSearchParams(pairs).toString());
      if (res.status >= 500) throw new Error(`${res.status} ${res.text.slice(0, 200)} for ${JSON.stringify(pairs)}`);
      // RFC 7009 §2.2: a successful revocation is a 200 whose body clients ignore (empty here); everything else is JSON.
      if (!(path === '/oauth/revoke' && res.status === 200)) expect(res.headers['content-type'] ?? '').toMatch(/^application\/json/);
      if (res.status === 200 && path === '/oauth/introspect') expect(res.body.active).toBe(false);
      if (res.status >= 400) expect(typeof res.body.error).toBe('string');
    }), { numRuns: 250 });
  });
});
