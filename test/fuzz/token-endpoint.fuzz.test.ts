/**
 * Property-based fuzzing of the OAuth token endpoint (src/smart/token.ts) over HTTP on the real
 * app: arbitrary form bodies, repeated parameters, other media types, hostile Basic credentials
 * and client assertions, registered and unknown clients. Every answer is RFC 6749 §5.2 JSON with
 * a known `error` code and status 400, 401 or 429 (never 500, never HTML, never cached) — or, only
 * for a correctly authenticated client_credentials request, a Bearer token.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createServer, type Server } from 'node:http';
import fc from 'fast-check';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';

const OAUTH_ERRORS = new Set(['invalid_request', 'invalid_client', 'invalid_grant', 'unauthorized_client', 'unsupported_grant_type', 'invalid_scope',
  'temporarily_unavailable']);

interface Served { t: TestApp; server: Server; close(): Promise<void> }

/** Each property gets its own app, so the per-IP rate limit (1200/min) is not shared between them. */
async function serve(): Promise<Served> {
  const t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
  const server = createServer(t.app.http);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { t, server, close: async () => { server.closeAllConnections(); await new Promise<void>((r) => server.close(() => r())); await t.close(); } };
}

const counts = new Map<string, number>();

function checkAnswer(res: request.Response, sent: unknown): void {
  const key = `${res.status} ${res.body?.error ?? (res.body?.access_token ? 'token' : '?')}`;
  counts.set(key, (counts.get(key) ?? 0) + 1);
  const fail = (why: string) => new Error(`${why}: status ${res.status} ${res.text.slice(0, 300)} for ${JSON.stringify(sent).slice(0, 500)}`);
  if (!/^application\/json/.test(res.headers['content-type'] ?? '')) throw fail('not JSON');
  if (res.status === 200) {
    if (res.body.token_type !== 'Bearer' || typeof res.body.access_token !== 'string') throw fail('200 without a Bearer token');
    return;
  }
  if (![400, 401, 429].includes(res.status)) throw fail('unexpected status');
  if (!OAUTH_ERRORS.has(res.body.error) || typeof res.body.error_description !== 'string') throw fail('not an OAuth error body');
  if (res.status === 401 && res.body.error !== 'invalid_client') throw fail('401 that is not invalid_client');
  if (res.headers['cache-control'] !== 'no-store') throw fail('cacheable error');
  if (/\bat \S+ \(|node_modules|\/work\//.test(res.text)) throw fail('stack trace or path in the answer');
}

function encode(pairs: [string, string][]): string {
  return pairs.map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join('&');
}

const paramName = fc.oneof({ weight: 5, arbitrary: fc.constantFrom('grant_type', 'client_id', 'client_secret', 'code', 'code_verifier', 'redirect_uri', 'refresh_token',
  'scope', 'client_assertion_type', 'client_assertion', 'username', 'password', 'assertion', 'aud', 'resource') },
{ weight: 1, arbitrary: fc.string({ maxLength: 10 }) },
{ weight: 1, arbitrary: fc.constantFrom('__proto__', 'constructor', 'grant_type[]', 'client_id[x]', 'toString') });
const paramValue = fc.oneof(
  fc.constantFrom('authorization_code', 'refresh_token', 'client_credentials', 'password', 'implicit', 'urn:ietf:params:oauth:grant-type:jwt-bearer',
    'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', 'system/*.rs', 'system/Observation.read', 'patient/*.rs openid fhirUser', 'offline_access',
    'http://localhost:3999/callback', 'eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.', 'a.b.c', '..', ''),
  fc.string({ maxLength: 40 }),
  fc.string({ unit: 'grapheme', maxLength: 10 }),
  fc.base64String({ maxLength: 120 }),
);

describe('token endpoint: arbitrary input answers OAuth JSON errors, never 500', () => {
  let s: Served;
  beforeAll(async () => { s = await serve(); });
  afterAll(async () => s?.close());

  test('arbitrary form bodies with repeated and unknown parameters', async () => {
    await fc.assert(fc.asyncProperty(fc.array(fc.tuple(paramName, paramValue), { maxLength: 8 }), async (pairs) => {
      const res = await request(s.server).post('/oauth/token').type('form').send(encode(pairs));
      checkAnswer(res, pairs);
    }), { numRuns: 700 });
  });

  test('raw bodies under any media type, including invalid percent-encoding', async () => {
    const contentType = fc.constantFrom('application/x-www-form-urlencoded', 'application/x-www-form-urlencoded; charset=iso-8859-1', 'application/json',
      'text/plain', 'multipart/form-data; boundary=x', 'application/x-www-form-urlencoded; charset=utf-16');
    const raw = fc.oneof(fc.string({ maxLength: 200 }), fc.constantFrom('%', '%E0%A4%A', 'grant_type=%ZZ', '=&=&=', '&&&&', 'a[b][c]=1', '{"grant_type":"client_credentials"}',
      'grant_type=client_credentials&grant_type=client_credentials', `scope=${'x'.repeat(60_000)}`));
    await fc.assert(fc.asyncProperty(contentType, raw, async (type, body) => {
      const res = await request(s.server).post('/oauth/token').set('Content-Type', type).send(body);
      checkAnswer(res, { type, body });
    }), { numRuns: 250 });
  });
});

describe('regressions found by fuzzing', () => {
  let s: Served;
  beforeAll(async () => { s = await serve(); });
  afterAll(async () => s?.close());

  test('a form in an unsupported charset answers 400 invalid_request JSON (was an express HTML page with a stack trace)', async () => {
    const res = await request(s.server).post('/oauth/token').set('Content-Type', 'application/x-www-form-urlencoded; charset=utf-16').send('grant_type=x');
    expect(res.status).toBe(400);
    expect(res.body).toEqual({ error: 'invalid_request', error_description: 'Unsupported charset or content encoding' });
    expect(res.headers['cache-control']).toBe('no-store');
  });

  test('an oversized token request answers 413 with OAuth JSON (was an express HTML page with a stack trace)', async () => {
    const res = await request(s.server).post('/oauth/token').type('form').send(`grant_type=client_credentials&scope=${'x'.repeat(70 * 1024)}`);
    expect(res.status).toBe(413);
    expect(res.body.error).toBe('invalid_request');
    expect(res.text).not.toMatch(/<html|at \S+ \(/i);
  });
});

describe('bearer tokens at the FHIR endpoint', () => {
  let s: Served;
  beforeAll(async () => { s = await serve(); });
  afterAll(async () => s?.close());

  // RFC 6750 §3.1: a credential that is not a token at all (outside the b64token syntax) is a
  // malformed request, 400 invalid_request; anything with the syntax of a token but not a live one
  // is 401 invalid_token. (Until session 20 both were 401.)
  test('arbitrary, unsigned (alg none), oversized and malformed bearer tokens answer 401 (400 when not token syntax) with a challenge, never 500', async () => {
    const none = `${Buffer.from('{"alg":"none","typ":"JWT"}').toString('base64url')}.${Buffer.from('{"sub":"x","scope":"system/*.rs"}').toString('base64url')}.`;
    const token = fc.oneof(fc.string({ minLength: 1, maxLength: 60 }).filter((x) => !/[\r\n\0]/.test(x) && /[^\s]/.test(x) && /^[\x20-\x7e]+$/.test(x)),
      fc.constantFrom(none, 'a.b.c', '..', 'x'.repeat(12 * 1024), `${none}${'A'.repeat(8000)}`, 'eyJ', `eyJhbGciOiJIUzI1NiJ9.${'e30'}.AAAA`));
    await fc.assert(fc.asyncProperty(token, fc.constantFrom('/fhir/Patient', '/fhir/Observation?patient=1', '/fhir/Patient/1'), async (tok, path) => {
      const res = await request(s.server).get(path).set('Authorization', `Bearer ${tok}`);
      const syntax = /^ *[A-Za-z0-9\-._~+/]+=* *$/.test(tok);
      if (res.status !== (syntax ? 401 : 400)) throw new Error(`status ${res.status} for token ${JSON.stringify(tok.slice(0, 80))}: ${res.text.slice(0, 200)}`);
      expect(res.headers['www-authenticate']).toMatch(syntax ? /^Bearer .*error="invalid_token"/ : /^Bearer .*error="invalid_request"/);
      expect(res.body.resourceType).toBe('OperationOutcome');
      expect(res.text).not.toContain(tok.length > 8 ? tok : '\u0000');
    }), { numRuns: 300 });
  });
});

describe('token endpoint: registered clients with hostile credentials', () => {
  let s: Served;
  let confidential: { id: string; secret: string };
  let publicId: string;
  beforeAll(async () => {
    s = await serve();
    const c = s.t.app.smart.store.addClient({ name: 'Backend', type: 'confidential-symmetric', scopes: ['system/*.rs'], redirectUris: ['http://localhost:3999/callback'] });
    confidential = { id: c.client.clientId, secret: c.secret! };
    publicId = s.t.app.smart.store.addClient({ name: 'App', type: 'public', scopes: ['patient/*.rs', 'offline_access'], redirectUris: ['http://localhost:3999/callback'] }).client.clientId;
  });
  afterAll(async () => s?.close());

  test('client credentials, secrets, Basic headers, assertions and grants in every combination', async () => {
    const clientId = fc.constantFrom('__conf__', '__public__', 'unknown-client', '', '__conf__ ', '__CONF__');
    const secret = fc.constantFrom('__secret__', 'wrong', '', '__secret__x', ' __secret__');
    const basic = fc.oneof(
      fc.tuple(clientId, secret).map(([id, sec]) => `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(sec)}`).toString('base64')}`),
      fc.constantFrom('Basic ', 'Basic !!!', `Basic ${Buffer.from('no-colon').toString('base64')}`, `Basic ${Buffer.from('%E0%A4%A:%').toString('base64')}`, 'Bearer abc', 'basic x'),
    );
    const form = fc.record({
      grant_type: fc.constantFrom('client_credentials', 'authorization_code', 'refresh_token', 'password', ''),
      client_id: clientId,
      client_secret: secret,
      scope: fc.oneof(fc.constantFrom('system/*.rs', 'system/Observation.rs', 'system/*.cruds', 'patient/*.rs', 'system/*.rs openid', 'system/Patient.read system/Observation.read', ''), fc.string({ maxLength: 20 })),
      code: fc.string({ maxLength: 20 }),
      code_verifier: fc.constantFrom('a'.repeat(43), 'short', ''),
      redirect_uri: fc.constantFrom('http://localhost:3999/callback', 'http://evil.example/cb'),
      refresh_token: fc.string({ maxLength: 30 }),
      client_assertion_type: fc.constantFrom('urn:ietf:params:oauth:client-assertion-type:jwt-bearer', 'x'),
      client_assertion: fc.constantFrom('a.b.c', 'eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4In0.', `${Buffer.from('{"alg":"HS256","kid":"k"}').toString('base64url')}.e30.sig`, ''),
    }, { requiredKeys: ['grant_type'] });
    // A valid client_credentials request with at most one field changed or removed, so the happy path and its neighbours are reached.
    const nearValid = fc.tuple(fc.constantFrom('none', 'grant_type', 'client_id', 'client_secret', 'scope'), fc.boolean(), fc.oneof(secret, clientId, paramValue))
      .map(([key, drop, value]) => {
        const f: Record<string, string> = { grant_type: 'client_credentials', client_id: '__conf__', client_secret: '__secret__', scope: 'system/Observation.rs' };
        if (key !== 'none') {
          if (drop) delete f[key];
          else f[key] = value;
        }
        return f;
      });
    await fc.assert(fc.asyncProperty(fc.oneof(form, nearValid), fc.option(basic, { freq: 3 }), async (f, auth) => {
      const fill = (v: string) => v.replaceAll('__conf__', confidential.id).replaceAll('__CONF__', confidential.id.toUpperCase())
        .replaceAll('__public__', publicId).replaceAll('__secret__', confidential.secret);
      const pairs = Object.entries(f).map(([k, v]) => [k, fill(v)] as [string, string]);
      let req = request(s.server).post('/oauth/token').type('form');
      if (auth) req = req.set('Authorization', fill(auth));
      checkAnswer(await req.send(encode(pairs)), { pairs: Object.fromEntries(pairs.map(([k, v]) => [k, k === 'client_secret' ? '…' : v])), auth: !!auth });
    }), { numRuns: 800 });
    process.stdout.write(`token fuzz outcomes: ${JSON.stringify(Object.fromEntries([...counts].sort()))}\n`);
    // Not vacuous: the happy path and several distinct errors were reached.
    expect(counts.get('200 token') ?? 0).toBeGreaterThan(5);
    expect([...counts.keys()].filter((k) => k.startsWith('400') || k.startsWith('401')).length).toBeGreaterThanOrEqual(4);
  });
});
