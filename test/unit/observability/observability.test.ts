/**
 * Request logs, request ids, Prometheus metrics, health and readiness, security headers and the
 * edge error handler, through the real composition root over HTTP (supertest).
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import request from 'supertest';
import { unavailable } from '../../../src/errors.js';
import { metrics } from '../../../src/observability/index.js';
import { chainCheck, kvCheck, Readiness } from '../../../src/observability/readiness.js';
import { createLogger } from '../../../src/log.js';
import { MemoryKeyValueStore } from '../../../src/kv/memory.js';
import { startLoggedApp, type LoggedApp } from './logged-app.js';

const FHIR_JSON = 'application/fhir+json';
let t: LoggedApp;
const http = () => request(t.app.http);

beforeAll(async () => {
  t = await startLoggedApp();
});
afterAll(async () => t?.close());

/** Sum of the samples of `name` whose labels include `labels` (Prometheus text format); undefined when none. */
function parseMetrics(text: string) {
  const samples = text.split('\n').filter((l) => l && !l.startsWith('#')).map((line) => {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line)!;
    const labels = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((l) => [l[1], l[2]]));
    return { name: m[1], labels, value: Number(m[3]) };
  });
  return (name: string, labels: Record<string, string>) => {
    const hits = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
    return hits.length ? hits.reduce((a, s) => a + s.value, 0) : undefined;
  };
}

function requestLines(): Record<string, unknown>[] {
  return t.records().filter((r) => r.msg === 'request');
}

describe('request ids and request logs', () => {
  test('every response carries an X-Request-Id; a plain client id is echoed, a hostile one replaced', async () => {
    const own = await http().get('/healthz').set('X-Request-Id', 'abc-123.x_y');
    expect(own.headers['x-request-id']).toBe('abc-123.x_y');
    const hostile = await http().get('/healthz').set('X-Request-Id', 'a b\u00e9<script>');
    expect(hostile.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
    const fhir = await http().get('/fhir/metadata');
    expect(fhir.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
    const oauth = await http().post('/oauth/token').type('form').send({ grant_type: 'password' });
    expect(oauth.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
  });

  test('one log line per request, FHIR and SMART alike, with the route template and no ids or query', async () => {
    const created = await http().post('/fhir/Patient').set('Content-Type', FHIR_JSON)
      .send({ resourceType: 'Patient', name: [{ family: 'Quillfeather' }] });
    expect(created.status).toBe(201);
    const id = created.body.id as string;
    const before = t.lines.length;
    await http().get(`/fhir/Patient/${id}`).set('X-Request-Id', 'read-1');
    await http().get('/fhir/Patient?name=Quillfeather&_count=1').set('X-Request-Id', 'search-1');
    await http().get('/.well-known/jwks.json').set('X-Request-Id', 'jwks-1');
    await http().get('/no/such/path/Quillfeather').set('X-Request-Id', 'miss-1');
    const lines = t.lines.slice(before).join('\n');
    expect(lines).not.toContain(id);
    expect(lines).not.toContain('Quillfeather');
    expect(lines).not.toContain('_count');
    const byId = new Map(requestLines().map((r) => [r.reqId, r]));
    expect(byId.get('read-1')).toMatchObject({ method: 'GET', route: '/fhir/Patient/:id', status: 200 });
    expect(byId.get('search-1')).toMatchObject({ method: 'GET', route: '/fhir/Patient', status: 200 });
    expect(byId.get('jwks-1')).toMatchObject({ method: 'GET', route: '/oauth/jwks|/.well-known/jwks.json', status: 200 });
    expect(byId.get('miss-1')).toMatchObject({ route: 'unmatched', status: 404 });
    expect(typeof byId.get('read-1')!.ms).toBe('number');
  });

  test('the redact config hides secrets a careless caller logs', () => {
    const lines: string[] = [];
    const logger = createLogger('info', { write: (l: string) => void lines.push(l) });
    logger.info({ password: 'hunter2-pw', body: { access_token: 'tok-abc', client_secret: 's3cr3t' }, headers: { authorization: 'Bearer xyz' } }, 'oops');
    expect(lines.join('')).not.toMatch(/hunter2-pw|tok-abc|s3cr3t|Bearer xyz/);
    expect(lines.join('')).toContain('[redacted]');
  });
});

describe('error serialization', () => {
  test('a JSON.parse error keeps its type and stack but loses the quoted excerpt of the input', () => {
    const lines: string[] = [];
    const logger = createLogger('info', { write: (l: string) => void lines.push(l) });
    let parseError: unknown;
    try {
      JSON.parse('Ana Rivera glucose 187');
    } catch (err) {
      parseError = err;
    }
    logger.error({ err: parseError }, 'internal error');
    const line = JSON.parse(lines[0]!) as { err: { type: string; message: string; stack: string } };
    expect(line.err.type).toBe('SyntaxError');
    expect(line.err.message).toBe("Unexpected token 'A', <input> is not valid JSON");
    expect(line.err.stack).toContain('SyntaxError');
    expect(lines[0]).not.toContain('Rivera');
    // Some callers log the message string under `err`, or a plain object; both still log.
    logger.warn({ err: 'Unexpected token \'A\', "Ana Rivera"... is not valid JSON' }, 'string err');
    logger.warn({ err: { code: 'X' } }, 'object err');
    expect(lines).toHaveLength(3);
    expect(lines.join('')).not.toContain('Rivera');
    expect(JSON.parse(lines[2]!).err).toEqual({ code: 'X' });
  });
});

describe('metrics', () => {
  test('GET /metrics: latency histogram by route template and status, consent and chain series, no ids', async () => {
    const created = await http().post('/fhir/Observation').set('Content-Type', FHIR_JSON).send({ resourceType: 'Observation', status: 'final', code: { text: 'x' } });
    await http().get('/fhir/Observation/does-not-exist-42');
    await http().get('/fhir/Zebulon/1');
    metrics.consentDecisions.inc({ outcome: 'permit' });
    metrics.queueDepth.set({ queue: 'anchor' }, 3);
    const res = await http().get('/metrics');
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = res.text;
    const series = parseMetrics(text);
    expect(series('glucoguard_http_request_duration_seconds_count', { method: 'GET', route: '/fhir/Observation/:id', status: '404' })).toBeGreaterThanOrEqual(1);
    expect(series('glucoguard_http_request_duration_seconds_bucket', { le: '+Inf', method: 'POST', route: '/fhir/Observation', status: '201' })).toBeGreaterThanOrEqual(1);
    expect(series('glucoguard_http_request_duration_seconds_count', { route: '/fhir/:type/:id', status: '404' })).toBeGreaterThanOrEqual(1);
    expect(series('glucoguard_consent_decisions_total', { outcome: 'permit' })).toBeGreaterThanOrEqual(1);
    expect(series('glucoguard_queue_depth', { queue: 'anchor' })).toBe(3);
    expect(text).toContain('# TYPE glucoguard_anchoring_lag_seconds gauge');
    expect(text).toContain('# TYPE glucoguard_chain_head_block gauge');
    expect(series('glucoguard_dependency_up', { dependency: 'repository' })).toBe(1);
    expect(series('glucoguard_dependency_up', { dependency: 'kv' })).toBe(1);
    expect(series('glucoguard_dependency_up', { dependency: 'chain' })).toBe(1);
    expect(series('glucoguard_chain_head_block', {})).toBeGreaterThanOrEqual(0);
    expect(series('glucoguard_chain_signer_info', { address: t.app.chain.authorityAddress })).toBe(1);
    expect(text).toContain('process_resident_memory_bytes');
    expect(text).not.toContain(created.body.id);
    expect(text).not.toContain('does-not-exist-42');
    expect(text).not.toContain('Zebulon');
  });
});

describe('health and readiness', () => {
  test.each([['/healthz'], ['/livez']])('GET %s answers 200 {status: ok}, never cached', async (path) => {
    const res = await http().get(path);
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ status: 'ok' });
    expect(res.headers['cache-control']).toBe('no-store');
  });

  test('GET /readyz answers 200 when the repository, KV and chain node answer', async () => {
    const res = await http().get('/readyz');
    expect(res.status).toBe(200);
    expect(res.body.status).toBe('ready');
    expect(res.body.checks).toEqual(expect.arrayContaining([
      expect.objectContaining({ name: 'repository', adapter: 'embedded', ok: true }),
      expect.objectContaining({ name: 'kv', adapter: 'embedded', ok: true }),
      expect.objectContaining({ name: 'chain', adapter: 'embedded', ok: true }),
    ]));
  });

  test('a failing or hanging check added later makes /readyz 503 and names it, and clears when it recovers', async () => {
    let queueUp = false;
    t.app.readiness.add({ name: 'export-queue', adapter: 'test', check: async () => { if (!queueUp) throw unavailable('queue down'); } });
    t.app.readiness.add({ name: 'slow', timeoutMs: 50, check: () => new Promise<void>((resolve) => setTimeout(resolve, 2000).unref()) });
    const down = await http().get('/readyz');
    expect(down.status).toBe(503);
    expect(down.body.status).toBe('unavailable');
    const byName = Object.fromEntries((down.body.checks as { name: string }[]).map((c) => [c.name, c]));
    expect(byName['export-queue']).toMatchObject({ ok: false, error: 'ERR_UNAVAILABLE' });
    expect(byName.slow).toMatchObject({ ok: false, error: 'timeout' });
    expect(byName.repository).toMatchObject({ ok: true });
    expect(JSON.stringify(down.body)).not.toContain('queue down');
    const scrape = await http().get('/metrics');
    expect(parseMetrics(scrape.text)('glucoguard_dependency_up', { dependency: 'export-queue' })).toBe(0);
    queueUp = true;
    t.app.readiness.add({ name: 'slow', check: async () => undefined });
    const up = await http().get('/readyz');
    expect(up.status).toBe(200);
  });

  test('a KV store that cannot be reached fails the kv check with ERR_UNAVAILABLE', async () => {
    const kv = new MemoryKeyValueStore();
    kv.set = async () => { throw unavailable('Redis at redis://10.0.0.1 is unreachable'); };
    const report = await new Readiness(createLogger('silent'), [kvCheck(kv)]).run();
    expect(report).toMatchObject({ status: 'unavailable', checks: [{ name: 'kv', ok: false, error: 'ERR_UNAVAILABLE' }] });
  });

  test('a chain node that cannot be reached fails the chain check', async () => {
    const report = await new Readiness(createLogger('silent'), [chainCheck({ description: { adapter: 'rpc' }, authorityAddress: '0x0',
      head: async () => { throw new Error('connect ECONNREFUSED 10.0.0.9:8545'); } })]).run();
    expect(report).toMatchObject({ status: 'unavailable', checks: [{ name: 'chain', adapter: 'rpc', ok: false, error: 'failed' }] });
    expect(JSON.stringify(report)).not.toContain('10.0.0.9');
  });

  test('an unreachable upstream FHIR server makes /readyz 503 on the repository check', async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const u = await startLoggedApp({ UPSTREAM_FHIR_URL: `http://127.0.0.1:${port}/fhir`, UPSTREAM_TIMEOUT_MS: '1000' });
    try {
      const res = await request(u.app.http).get('/readyz');
      expect(res.status).toBe(503);
      expect(res.body.checks).toEqual(expect.arrayContaining([expect.objectContaining({ name: 'repository', adapter: 'upstream', ok: false })]));
      expect(JSON.stringify(res.body)).not.toContain(String(port));
    } finally {
      await u.close();
    }
  });
});

describe('security headers', () => {
  test.each([['/fhir/metadata'], ['/healthz'], ['/.well-known/jwks.json'], ['/no/such/path']])('%s carries the helmet headers', async (path) => {
    const res = await http().get(path);
    expect(res.headers['x-content-type-options']).toBe('nosniff');
    expect(res.headers['referrer-policy']).toBe('no-referrer');
    expect(res.headers['x-frame-options']).toBe('DENY');
    expect(res.headers['strict-transport-security']).toMatch(/max-age=\d+/);
    expect(res.headers['content-security-policy']).toMatch(/frame-ancestors 'none'/);
    expect(res.headers['cross-origin-resource-policy']).toBe('cross-origin');
    expect(res.headers['cross-origin-opener-policy']).toBeUndefined();
    expect(res.headers['x-powered-by']).toBeUndefined();
  });

  test('the authorization pages keep their own stricter CSP that allows their inline styles', async () => {
    const res = await http().get('/oauth/authorize?response_type=code&client_id=unknown&redirect_uri=http://x/cb');
    expect(res.headers['content-type']).toMatch(/text\/html/);
    expect(res.headers['content-security-policy']).toBe("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'");
    expect(res.headers['x-content-type-options']).toBe('nosniff');
  });

  test('CORS on /fhir still works with the headers in place', async () => {
    const res = await http().options('/fhir/Patient').set('Origin', 'https://app.example').set('Access-Control-Request-Method', 'GET');
    expect(res.status).toBe(204);
    expect(res.headers['access-control-allow-origin']).toBe('*');
  });
});

describe('edge errors', () => {
  test('an oversized token request answers 413 OAuth JSON, no stack trace', async () => {
    const res = await http().post('/oauth/token').type('form').send(`grant_type=client_credentials&x=${'a'.repeat(100 * 1024)}`);
    expect(res.status).toBe(413);
    expect(res.headers['content-type']).toMatch(/application\/json/);
    expect(res.body).toEqual({ error: 'invalid_request', error_description: 'Request body too large' });
    expect(res.text).not.toMatch(/at |node_modules/);
  });

  test('a malformed JSON launch request answers 400 JSON, no stack trace', async () => {
    const res = await http().post('/smart/launch').set('Content-Type', 'application/json').send('{"patient":');
    expect(res.status).toBe(400);
    // OAuth error JSON since session 25, as the endpoint's other refusals (it was the server's generic `{"error": text}`)
    expect(res.body).toEqual({ error: 'invalid_request', error_description: 'The body is not valid JSON' });
  });

  test('an oversized FHIR body answers 413 OperationOutcome and stores nothing', async () => {
    const before = (await t.app.repository.history({ resourceType: 'Patient', count: 1000, offset: 0 })).entries.length;
    const res = await http().post('/fhir/Patient').set('Content-Type', FHIR_JSON)
      .send(JSON.stringify({ resourceType: 'Patient', name: [{ family: 'x'.repeat(t.app.config.maxBodyBytes) }] }));
    expect(res.status).toBe(413);
    expect(res.body.resourceType).toBe('OperationOutcome');
    expect((await t.app.repository.history({ resourceType: 'Patient', count: 1000, offset: 0 })).entries.length).toBe(before);
  });

  test('an unknown OAuth path answers 404 with OAuth error JSON, not a 400 that reads like a refused request', async () => {
    for (const res of [await http().post('/oauth/registerr').type('form').send('a=1'), await http().get('/oauth/nothing')]) {
      expect(res.status).toBe(404);
      expect(res.body).toEqual({ error: 'invalid_request', error_description: 'Not found' });
    }
  });

  test('a SMART endpoint asked with a method it does not take answers 405 with Allow, in its own error dialect', async () => {
    const token = await http().get('/oauth/token');
    expect(token.status).toBe(405);
    expect(token.headers.allow).toBe('POST');
    expect(token.body).toEqual({ error: 'invalid_request', error_description: 'GET is not allowed here (allowed: POST)' });
    const jwks = await http().post('/oauth/jwks');
    expect(jwks.status).toBe(405);
    expect(jwks.headers.allow).toBe('GET, HEAD');
    const authorize = await http().delete('/oauth/authorize');
    expect(authorize.headers.allow).toBe('GET, HEAD, POST');
    const discovery = await http().put('/fhir/.well-known/smart-configuration');
    expect(discovery.status).toBe(405);
    expect(discovery.body.resourceType).toBe('OperationOutcome');
    expect((await http().get('/oauth/jwks')).status).toBe(200); // the allowed method is untouched
  });

  test('an unknown path answers a JSON 404', async () => {
    const res = await http().get('/wp-admin/../../etc/passwd');
    expect(res.status).toBe(404);
    expect(res.body).toEqual({ error: 'Not found' });
  });
});
