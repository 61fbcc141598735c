/**
 * Black-box round on the upstream repository: addresses an integration engineer may get wrong.
 * An UPSTREAM_FHIR_URL or UPSTREAM_TOKEN_URL that can never work (credentials in it, which fetch
 * refuses; a query or fragment the paths would be appended to; not a URL at all) stops the start
 * with a clear ConfigError naming the variable and never repeating the URL, instead of a proxy
 * that starts and answers every request 502 ("network error") with /readyz stuck at 503.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { exportPKCS8, generateKeyPair } from 'jose';
import { createApp } from '../../src/app.js';
import { ConfigError, insecureSettings, loadConfig } from '../../src/config.js';
import { UpstreamRepository } from '../../src/repository/upstream/index.js';
import { tempDir } from '../support/app.js';

const PROXY = 'https://glucoguard.example/fhir';

/** The ConfigError `fn` throws (fails the test when it throws nothing or something else). */
function configErrorOf(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('expected a ConfigError');
}

describe('UPSTREAM_FHIR_URL that can never work is refused at construction', () => {
  const repo = (url: string) => new UpstreamRepository({ config: { url, auth: 'none', timeoutMs: 1000 }, proxyFhirBase: PROXY });

  it.each([
    ['credentials', 'https://svc:pa55-secret@ehr.example/fhir', /must not carry credentials/],
    ['a query', 'https://ehr.example/fhir?api_key=qs-secret', /without a query/],
    ['a bare trailing ?', 'https://ehr.example/fhir?', /without a query/],
    ['a fragment', 'https://ehr.example/fhir#frag-secret', /fragment/],
    ['another scheme', 'ftp://ehr.example/fhir', /http\(s\) URL/],
  ])('with %s: ConfigError naming UPSTREAM_FHIR_URL, without the secret', (_what, url, message) => {
    const err = configErrorOf(() => repo(url));
    expect(err.problems.join('\n')).toMatch(message);
    expect(err.problems.join('\n')).toMatch(/UPSTREAM_FHIR_URL/);
    expect(err.message).not.toMatch(/secret|ehr\.example/);
  });

  it('a plain base, with or without a trailing slash, is taken as is', () => {
    expect(repo('https://ehr.example/api/FHIR/R4/').description.location).toBe('https://ehr.example/api/FHIR/R4');
    expect(repo('http://127.0.0.1:8080/fhir').description.location).toBe('http://127.0.0.1:8080/fhir');
  });
});

describe('UPSTREAM_TOKEN_URL that can never work stops the start', () => {
  let dir: string;
  let keyFile: string;

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'gg-bb-upstream-config-'));
    keyFile = path.join(dir, 'upstream.pem');
    writeFileSync(keyFile, await exportPKCS8((await generateKeyPair('RS384', { extractable: true })).privateKey), { mode: 0o600 });
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it.each([
    ['not a URL', 'token endpoint', /UPSTREAM_TOKEN_URL must be an http\(s\) URL/],
    ['credentials', 'https://gg:tok-secret@ehr.example/oauth2/token', /UPSTREAM_TOKEN_URL must not carry credentials/],
    ['a fragment', 'https://ehr.example/oauth2/token#x', /UPSTREAM_TOKEN_URL must be the endpoint itself, without a query \(\?…\) or fragment/],
  ])('with %s: the configuration is refused (ConfigError, exit 2 from the CLI) before anything is created, not a warning and a proxy stuck at 503', async (_what, tokenUrl, message) => {
    const dataDir = tempDir();
    rmSync(dataDir, { recursive: true, force: true });
    try {
      // loadConfig refuses it (a ConfigError thrown there rejects this promise as well)
      const started = (async () => createApp(loadConfig({
        GLUCOGUARD_DATA_DIR: dataDir, CHAIN_PORT: '0', CHAIN_BLOCK_PERIOD: '0',
        // nothing listens here: the URL must be refused before any request is tried
        UPSTREAM_FHIR_URL: 'http://127.0.0.1:9/fhir', UPSTREAM_AUTH: 'backend-services', UPSTREAM_CLIENT_ID: 'gg',
        UPSTREAM_TOKEN_URL: tokenUrl, UPSTREAM_PRIVATE_KEY_FILE: keyFile,
      })))();
      const err = await started.then(async (app) => { await app.close(); return undefined; }, (e: unknown) => e);
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).problems.join('\n')).toMatch(message);
      expect((err as ConfigError).message).not.toMatch(/secret|ehr\.example/);
      expect(existsSync(dataDir)).toBe(false); // nothing created
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

describe('upstream endpoints under NODE_ENV=production', () => {
  const config = (url: string, tokenUrl?: string) => () => loadConfig({
    NODE_ENV: 'production', GLUCOGUARD_BASE_URL: 'https://glucoguard.example', GLUCOGUARD_DATA_DIR: '/nonexistent/gg',
    UPSTREAM_FHIR_URL: url, ...(tokenUrl ? { UPSTREAM_AUTH: 'backend-services', UPSTREAM_CLIENT_ID: 'gg', UPSTREAM_TOKEN_URL: tokenUrl, UPSTREAM_PRIVATE_KEY_FILE: '/nonexistent/k.pem' } : {}),
  });

  it('plain http to another machine is refused: tokens and health data would cross the network in clear', () => {
    expect(configErrorOf(config('http://10.1.2.3:8080/fhir')).problems).toContain(
      'UPSTREAM_FHIR_URL must use https when NODE_ENV=production unless it is on this machine (tokens and health data would cross the network in clear); '
      + 'on a private network you control, UPSTREAM_ALLOW_HTTP=true accepts it');
    expect(configErrorOf(config('https://ehr.example/fhir', 'http://10.1.2.3/token')).problems.join('\n')).toMatch(/UPSTREAM_TOKEN_URL must use https/);
  });

  it('UPSTREAM_ALLOW_HTTP=true takes plain http on a private network (a compose network), warned about on every start', () => {
    const allowed = loadConfig({
      NODE_ENV: 'production', GLUCOGUARD_BASE_URL: 'https://glucoguard.example', GLUCOGUARD_DATA_DIR: '/nonexistent/gg',
      UPSTREAM_FHIR_URL: 'http://hapi:8080/fhir', UPSTREAM_ALLOW_HTTP: 'true',
    });
    expect(allowed.upstream?.url).toBe('http://hapi:8080/fhir');
    expect(insecureSettings(allowed).join('\n')).toMatch(/upstream FHIR server is reached over plain http/);
    expect(configErrorOf(() => loadConfig({ UPSTREAM_FHIR_URL: 'http://hapi:8080/fhir', UPSTREAM_ALLOW_HTTP: 'yes' })).problems.join('\n')).toMatch(/UPSTREAM_ALLOW_HTTP/);
    // https needs no warning
    expect(insecureSettings(loadConfig({ UPSTREAM_FHIR_URL: 'https://ehr.example/fhir' })).join('\n')).not.toMatch(/plain http/);
  });

  it('https, or http on this machine, is taken', () => {
    for (const url of ['https://ehr.example/fhir', 'http://127.0.0.1:8080/fhir', 'http://localhost:8080/fhir']) {
      const problems = (() => { try { config(url)(); return []; } catch (err) { return (err as ConfigError).problems ?? [String(err)]; } })();
      expect(problems.filter((p) => p.startsWith('UPSTREAM_FHIR_URL'))).toEqual([]);
    }
  });
});
