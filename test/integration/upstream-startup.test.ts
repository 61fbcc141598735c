/**
 * The upstream adapter at start-up and at its limits: a Backend Services client the token endpoint
 * refuses stops the start (ConfigError) while an unreachable one only keeps /readyz at 503; the
 * start-up line says how the upstream is reached and which integrity mode is in force; an upstream
 * body larger than UPSTREAM_MAX_BODY_BYTES is aborted as it arrives and answered 502.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import type { Patient } from '@medplum/fhirtypes';
import { exportJWK, exportPKCS8, generateKeyPair } from 'jose';
import request from 'supertest';
import { checkUpstreamAccessLog, createApp } from '../../src/app.js';
import { ConfigError, loadConfig } from '../../src/config.js';
import { failure } from '../support/adapters.js';
import { createLogger } from '../../src/log.js';
import { UpstreamRepository } from '../../src/repository/upstream/index.js';
import { startTestApp, tempDir } from '../support/app.js';
import { startUpstreamFhirServer, type UpstreamFhirServer } from '../support/upstream-server.js';

const PROXY = 'https://glucoguard.example/fhir';
const CLIENT_ID = 'glucoguard-startup';


/** A pino destination keeping every line. */
function captured(): { lines: string[]; stream: Writable } {
  const lines: string[] = [];
  const stream = new Writable({ write(chunk: Buffer, _enc, done) { lines.push(chunk.toString('utf8')); done(); } });
  return { lines, stream };
}

describe('start-up against a SMART Backend Services upstream', () => {
  let upstream: UpstreamFhirServer;
  let dir: string;
  let goodKey: string;
  let wrongKey: string;
  let tokenRelay: Server;
  let relayUrl: string;
  let relayDown = true;

  beforeAll(async () => {
    const good = await generateKeyPair('RS384', { extractable: true });
    const wrong = await generateKeyPair('RS384', { extractable: true });
    upstream = await startUpstreamFhirServer({
      bearerTokens: ['issued-by-the-relay'],
      backendServices: { clientId: CLIENT_ID, publicJwks: [{ ...(await exportJWK(good.publicKey)), kid: 'k1', alg: 'RS384' }] },
    });
    dir = mkdtempSync(path.join(tmpdir(), 'gg-upstream-startup-'));
    goodKey = path.join(dir, 'good.pem');
    wrongKey = path.join(dir, 'wrong.pem');
    writeFileSync(goodKey, await exportPKCS8(good.privateKey), { mode: 0o600 });
    writeFileSync(wrongKey, await exportPKCS8(wrong.privateKey), { mode: 0o600 });
    // a token endpoint that is down (503) until told otherwise, then issues a token the upstream accepts
    tokenRelay = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        if (relayDown) res.writeHead(503).end();
        else res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ access_token: 'issued-by-the-relay', token_type: 'bearer', expires_in: 300 }));
      });
    });
    await new Promise<void>((resolve) => tokenRelay.listen(0, '127.0.0.1', resolve));
    relayUrl = `http://127.0.0.1:${(tokenRelay.address() as AddressInfo).port}/token`;
  });
  afterAll(async () => {
    tokenRelay.closeAllConnections();
    await new Promise<void>((resolve) => tokenRelay.close(() => resolve()));
    await upstream.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const env = (keyFile: string, tokenUrl = upstream.tokenUrl): Record<string, string> => ({
    UPSTREAM_FHIR_URL: upstream.url, UPSTREAM_AUTH: 'backend-services', UPSTREAM_CLIENT_ID: CLIENT_ID,
    UPSTREAM_TOKEN_URL: tokenUrl, UPSTREAM_PRIVATE_KEY_FILE: keyFile, UPSTREAM_KID: 'k1',
  });

  it('a well-formed key the token endpoint refuses stops the start with one clear message, before anything listens or is written', async () => {
    const parent = tempDir();
    const dataDir = path.join(parent, 'first-start');
    const log = captured();
    try {
      const started = createApp(loadConfig({
        GLUCOGUARD_DATA_DIR: dataDir, GLUCOGUARD_AUTH: 'off', CHAIN_PORT: '0', CHAIN_BLOCK_PERIOD: '0', ...env(wrongKey),
      }), { logger: createLogger('info', log.stream) });
      await expect(started).rejects.toBeInstanceOf(ConfigError);
      const err = await started.then(() => undefined, (e: unknown) => e as ConfigError);
      if (!err) throw new Error('expected ConfigError');
      expect(err.problems).toHaveLength(1);
      expect(err.problems[0]).toMatch(/token endpoint refused client "glucoguard-startup" \(HTTP 401 invalid_client\).*UPSTREAM_PRIVATE_KEY_FILE/);
      expect(`${err.message}${log.lines.join('')}`).not.toMatch(/PRIVATE KEY|access_token|client_assertion=/);
      // nothing of a start that never ran: no data directory, so no master key file left behind
      expect(existsSync(dataDir)).toBe(false);
    } finally {
      rmSync(parent, { recursive: true, force: true });
    }
  });

  it('a token endpoint that cannot be reached only warns: the proxy starts, /readyz is 503 until a token is issued', async () => {
    const log = captured();
    const dataDir = tempDir();
    relayDown = true;
    const app = await createApp(loadConfig({
      GLUCOGUARD_DATA_DIR: dataDir, GLUCOGUARD_AUTH: 'off', CHAIN_PORT: '0', CHAIN_BLOCK_PERIOD: '0', ...env(goodKey, relayUrl),
    }), { logger: createLogger('info', log.stream) });
    try {
      expect(log.lines.join('')).toMatch(/upstream token endpoint did not issue a token at start-up; starting anyway, \/readyz answers 503/);
      const down = await request(app.http).get('/readyz');
      expect(down.status).toBe(503);
      expect(JSON.stringify(down.body)).toMatch(/repository/);
      relayDown = false;
      expect((await request(app.http).get('/readyz')).status).toBe(200);
    } finally {
      await app.close();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('the start-up line names the auth mode, client, token URL, algorithm and kid, and the integrity mode — no secrets', async () => {
    const t = await startTestApp({ ...env(goodKey), GLUCOGUARD_INTEGRITY: 'strict' });
    try {
      const repository = t.app.adapters.find((a) => a.port === 'repository')!;
      expect(repository.adapter).toBe('upstream');
      expect(repository.location).toBe(`${upstream.url}; auth backend-services (client ${CLIENT_ID}, token URL ${upstream.tokenUrl}, RS384, kid k1, scope system/*.rs); integrity strict`);
    } finally {
      await t.close();
    }
  });
});

describe('UPSTREAM_MAX_BODY_BYTES', () => {
  let upstream: UpstreamFhirServer;
  beforeAll(async () => { upstream = await startUpstreamFhirServer(); });
  afterAll(async () => { await upstream.close(); });

  const huge = (id: string, bytes: number): Patient => ({
    resourceType: 'Patient', id, text: { status: 'generated', div: `<div xmlns="http://www.w3.org/1999/xhtml">${'x'.repeat(bytes)}</div>` },
  });

  it('is validated with the other settings, 64 MiB by default', () => {
    expect(loadConfig({ UPSTREAM_FHIR_URL: 'https://ehr.example.org/fhir' }).upstream?.maxBodyBytes).toBe(64 * 1024 * 1024);
    expect(loadConfig({ UPSTREAM_FHIR_URL: 'https://ehr.example.org/fhir', UPSTREAM_MAX_BODY_BYTES: '65536' }).upstream?.maxBodyBytes).toBe(65536);
    expect(() => loadConfig({ UPSTREAM_FHIR_URL: 'https://ehr.example.org/fhir', UPSTREAM_MAX_BODY_BYTES: 'lots' }))
      .toThrow(/UPSTREAM_MAX_BODY_BYTES must be an integer/);
  });

  it('a body over the cap → 502 "too large" without upstream details; one under it is read', async () => {
    const repo = new UpstreamRepository({ config: { url: upstream.url, auth: 'none', timeoutMs: 5000, maxBodyBytes: 64 * 1024 }, proxyFhirBase: PROXY });
    upstream.intercept((req) => (req.url.endsWith('/Patient/big') ? { status: 200, body: huge('big', 200 * 1024) }
      : req.url.endsWith('/Patient/small') ? { status: 200, body: huge('small', 1024) } : undefined));
    try {
      const err = await failure(repo.read('Patient', 'big'));
      expect([err.code, err.status]).toEqual(['ERR_UPSTREAM', 502]);
      expect(err.issues?.[0]?.diagnostics).toBe('Upstream FHIR server sent a response that is too large');
      expect((await repo.read<Patient>('Patient', 'small')).id).toBe('small');
    } finally {
      upstream.intercept(undefined);
    }
  });

  it('a body without Content-Length is cut off as it arrives, not read to the end', async () => {
    let written = 0;
    let aborted = false;
    const endless = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/fhir+json' });
      res.write('{"resourceType":"Patient","id":"p","text":{"div":"');
      const chunk = 'y'.repeat(64 * 1024);
      const pump = (): void => {
        while (!aborted && written < 64 * 1024 * 1024) {
          written += chunk.length;
          if (!res.write(chunk)) return void res.once('drain', pump);
        }
        res.end('"}}');
      };
      res.on('close', () => { aborted = true; });
      pump();
    });
    await new Promise<void>((resolve) => endless.listen(0, '127.0.0.1', resolve));
    try {
      const url = `http://127.0.0.1:${(endless.address() as AddressInfo).port}/fhir`;
      const repo = new UpstreamRepository({ config: { url, auth: 'none', timeoutMs: 10_000, maxBodyBytes: 256 * 1024 }, proxyFhirBase: PROXY });
      const err = await failure(repo.read('Patient', 'p'));
      expect(err.issues?.[0]?.diagnostics).toBe('Upstream FHIR server sent a response that is too large');
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(aborted).toBe(true);
      expect(written).toBeLessThan(16 * 1024 * 1024);
    } finally {
      endless.closeAllConnections();
      await new Promise<void>((resolve) => endless.close(() => resolve()));
    }
  });

  it('through the proxy: 502 OperationOutcome, not 404, naming nothing of the upstream', async () => {
    const t = await startTestApp({ UPSTREAM_FHIR_URL: upstream.url, UPSTREAM_MAX_BODY_BYTES: String(64 * 1024) });
    upstream.intercept((req) => (req.method === 'GET' && /\/Patient\/big$/.test(req.url) ? { status: 200, body: huge('big', 200 * 1024) } : undefined));
    try {
      const res = await request(t.app.http).get('/fhir/Patient/big');
      expect(res.status).toBe(502);
      expect(res.body.resourceType).toBe('OperationOutcome');
      expect(JSON.stringify(res.body)).not.toMatch(new RegExp(`${upstream.origin}|127\\.0\\.0\\.1|xxxx`));
    } finally {
      upstream.intercept(undefined);
      await t.close();
    }
  });
});

describe('an upstream that would keep no access log', () => {
  let upstream: UpstreamFhirServer;
  beforeAll(async () => { upstream = await startUpstreamFhirServer(); });
  afterAll(async () => { await upstream.close(); });

  const statement = (resources: object[]) => ({
    resourceType: 'CapabilityStatement', status: 'active', date: '2026-12-06', kind: 'instance', fhirVersion: '4.0.1', format: ['json'],
    rest: [{ mode: 'server', resource: resources }],
  });

  it('is named at serve when its CapabilityStatement lists no AuditEvent create or search; nothing is said when it does, or when it lists no resources', async () => {
    const repo = new UpstreamRepository({ config: { url: upstream.url, auth: 'none', timeoutMs: 5000 }, proxyFhirBase: PROXY });
    const log = captured();
    const logger = createLogger('info', log.stream);
    try {
      upstream.intercept((req) => (req.url.endsWith('/metadata') ? { status: 200, body: statement([{ type: 'Patient', interaction: [{ code: 'read' }] }]) } : undefined));
      expect(await checkUpstreamAccessLog(repo, logger)).toEqual(['create', 'search-type']);
      expect(log.lines.join('')).toMatch(/does not list AuditEvent create and search-type: the access log is written there/);
      log.lines.length = 0;
      upstream.intercept((req) => (req.url.endsWith('/metadata') ? { status: 200, body: statement([{ type: 'AuditEvent', interaction: [{ code: 'create' }, { code: 'search-type' }] }]) } : undefined));
      expect(await checkUpstreamAccessLog(repo, logger)).toEqual([]);
      upstream.intercept(undefined); // the test server's statement lists no resources: nothing can be told from it
      expect(await checkUpstreamAccessLog(repo, logger)).toEqual([]);
      upstream.intercept((req) => (req.url.endsWith('/metadata') ? { status: 500, body: { resourceType: 'OperationOutcome', issue: [] } } : undefined));
      expect(await checkUpstreamAccessLog(repo, logger)).toEqual([]);
      expect(log.lines.join('')).not.toMatch(/does not list AuditEvent/);
    } finally {
      upstream.intercept(undefined);
    }
  });
});
