import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, test } from '@jest/globals';
import { CONFIG_VARIABLES, ConfigError, insecureSettings, loadConfig } from '../../src/config.js';
import { PACKAGE_ROOT } from '../../src/paths.js';

describe('config', () => {
  test('defaults: port 8080, ./data, localhost base URL, auth on, embedded everything', () => {
    const c = loadConfig({});
    expect(c.port).toBe(8080);
    expect(c.dataDir).toMatch(/\/data$/);
    expect(c.baseUrl).toBe('http://localhost:8080');
    expect(c.auth).toBe('on');
    expect(c.upstream).toBeUndefined();
    expect(c.chain.rpcUrl).toBeUndefined();
    expect(c.redisUrl).toBeUndefined();
  });

  test('env overrides defaults and the base URL loses its trailing slash', () => {
    const c = loadConfig({ PORT: '9000', GLUCOGUARD_BASE_URL: 'https://gg.example.org/', GLUCOGUARD_DATA_DIR: '/tmp/x' });
    expect(c.port).toBe(9000);
    expect(c.baseUrl).toBe('https://gg.example.org');
    expect(c.dataDir).toBe('/tmp/x');
  });

  test('reports every bad value at once, each with its own message', () => {
    let error: ConfigError | undefined;
    try {
      loadConfig({ PORT: 'eighty', GLUCOGUARD_BASE_URL: 'ftp://x', GLUCOGUARD_AUTH: 'maybe', REDIS_URL: 'localhost:6379', GLUCOGUARD_MASTER_KEY: 'short' });
    } catch (err) {
      error = err as ConfigError;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect(error!.code).toBe('ERR_CONFIG');
    expect(error!.problems).toHaveLength(5);
    expect(error!.problems.join('\n')).toMatch(/PORT must be an integer/);
    expect(error!.problems.join('\n')).toMatch(/GLUCOGUARD_BASE_URL must be an http\(s\) URL/);
    expect(error!.problems.join('\n')).toMatch(/GLUCOGUARD_AUTH must be one of on, off/);
  });

  test('read cache size, versions proven ahead, search scan limit and the chain node thread: defaults, overrides, bad values', () => {
    const d = loadConfig({});
    expect(d.readCacheMb).toBe(64);
    expect(d.proveAhead).toBe(1_000_000);
    expect(loadConfig({ GLUCOGUARD_PROVE_AHEAD: '0' }).proveAhead).toBe(0);
    expect(() => loadConfig({ GLUCOGUARD_PROVE_AHEAD: '1e6' })).toThrow(/GLUCOGUARD_PROVE_AHEAD must be an integer from 0 to 100000000/);
    expect(d.chain.nodeThread).toBe('worker');
    const c = loadConfig({ GLUCOGUARD_READ_CACHE_MB: '0', CHAIN_NODE_THREAD: 'main' });
    expect(c.readCacheMb).toBe(0);
    expect(c.chain.nodeThread).toBe('main');
    expect(() => loadConfig({ GLUCOGUARD_READ_CACHE_MB: '-1' })).toThrow(/GLUCOGUARD_READ_CACHE_MB must be an integer from 0/);
    expect(d.storeMmapMb).toBe(2047);
    expect(loadConfig({ GLUCOGUARD_STORE_MMAP_MB: '0' }).storeMmapMb).toBe(0);
    expect(() => loadConfig({ GLUCOGUARD_STORE_MMAP_MB: '4096' })).toThrow(/GLUCOGUARD_STORE_MMAP_MB must be an integer from 0 to 2047/);
    expect(() => loadConfig({ CHAIN_NODE_THREAD: 'fork' })).toThrow(/CHAIN_NODE_THREAD must be one of worker, main/);
    expect(d.searchScanLimit).toBe(20000);
    expect(loadConfig({ GLUCOGUARD_SEARCH_SCAN_LIMIT: '0' }).searchScanLimit).toBe(0);
    expect(() => loadConfig({ GLUCOGUARD_SEARCH_SCAN_LIMIT: 'lots' })).toThrow(/GLUCOGUARD_SEARCH_SCAN_LIMIT must be an integer from 0/);
    expect(d.autoReindex).toBe('on');
    expect(loadConfig({ GLUCOGUARD_AUTO_REINDEX: 'off' }).autoReindex).toBe('off');
    expect(() => loadConfig({ GLUCOGUARD_AUTO_REINDEX: 'later' })).toThrow(/GLUCOGUARD_AUTO_REINDEX must be one of on, off/);
    expect(d.compression).toBe('on');
    expect(loadConfig({ GLUCOGUARD_COMPRESSION: 'off' }).compression).toBe('off');
    expect(() => loadConfig({ GLUCOGUARD_COMPRESSION: 'gzip' })).toThrow(/GLUCOGUARD_COMPRESSION must be one of on, off/);
  });

  test('GLUCOGUARD_AUTH=off is warned about, and refused in production', () => {
    expect(insecureSettings(loadConfig({ GLUCOGUARD_AUTH: 'off' })).join()).toMatch(/AUTH=off/);
    expect(() => loadConfig({ GLUCOGUARD_AUTH: 'off', NODE_ENV: 'production' })).toThrow(/refused when NODE_ENV=production/);
  });

  test('upstream backend-services auth needs its client id, token URL and key file', () => {
    expect(() => loadConfig({ UPSTREAM_FHIR_URL: 'https://ehr.example.org/fhir', UPSTREAM_AUTH: 'backend-services' }))
      .toThrow(/UPSTREAM_CLIENT_ID[\s\S]*UPSTREAM_TOKEN_URL[\s\S]*UPSTREAM_PRIVATE_KEY_FILE/);
    const c = loadConfig({ UPSTREAM_FHIR_URL: 'https://ehr.example.org/fhir/' });
    expect(c.upstream).toMatchObject({ url: 'https://ehr.example.org/fhir', auth: 'none', timeoutMs: 10000 });
  });

  test('secrets come from files: master key and Redis password', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'gg-config-'));
    const key = Buffer.alloc(32, 3).toString('base64');
    writeFileSync(path.join(dir, 'master_key'), `${key}\n`);
    writeFileSync(path.join(dir, 'redis_password'), 's3cret\n');
    const c = loadConfig({ GLUCOGUARD_MASTER_KEY_FILE: path.join(dir, 'master_key'), REDIS_URL: 'redis://redis:6379', REDIS_PASSWORD_FILE: path.join(dir, 'redis_password') });
    expect(c.masterKey).toBe(key);
    expect(c.redisUrl).toBe('redis://:s3cret@redis:6379');
    expect(() => loadConfig({ GLUCOGUARD_MASTER_KEY_FILE: path.join(dir, 'missing') })).toThrow(/GLUCOGUARD_MASTER_KEY_FILE: cannot read/);
    rmSync(dir, { recursive: true, force: true });
  });

  test('exchange settings are checked with the rest: one message each, before anything is created', () => {
    const problems = problemsOf({
      GLUCOGUARD_EXPORT_RETENTION_HOURS: '-1', GLUCOGUARD_EXPORT_RETRY_AFTER: 'abc', PORT: 'abc',
      GLUCOGUARD_SUBSCRIPTION_ALLOW: '10.0.0.0/99,ok.example', GLUCOGUARD_SUBSCRIPTION_HTTP: 'yes',
      GLUCOGUARD_SUBSCRIPTION_RETRIES: '0', GLUCOGUARD_SUBSCRIPTION_RETRY_MS: 'x', GLUCOGUARD_SUBSCRIPTION_DIGEST_MS: '5',
      GLUCOGUARD_SUBSCRIPTION_HEARTBEAT_MIN: '0', GLUCOGUARD_SUBSCRIPTION_POLL_MS: '1', GLUCOGUARD_RESEARCH_DATE_SHIFT: 'on',
    });
    expect(problems).toHaveLength(11);
    for (const name of ['PORT', 'GLUCOGUARD_EXPORT_RETENTION_HOURS', 'GLUCOGUARD_EXPORT_RETRY_AFTER', 'GLUCOGUARD_SUBSCRIPTION_RETRIES',
      'GLUCOGUARD_SUBSCRIPTION_RETRY_MS', 'GLUCOGUARD_SUBSCRIPTION_DIGEST_MS', 'GLUCOGUARD_SUBSCRIPTION_HEARTBEAT_MIN', 'GLUCOGUARD_SUBSCRIPTION_POLL_MS']) {
      expect(problems.join('\n')).toMatch(new RegExp(`${name} must be an integer`));
    }
    expect(problems.join('\n')).toMatch(/GLUCOGUARD_SUBSCRIPTION_ALLOW entry "10.0.0.0\/99"/);
    expect(problems.join('\n')).toMatch(/GLUCOGUARD_SUBSCRIPTION_HTTP must be true or false \(got "yes"\)/);
    expect(problems.join('\n')).toMatch(/GLUCOGUARD_RESEARCH_DATE_SHIFT must be true or false/);
    const c = loadConfig({ GLUCOGUARD_EXPORT_RETENTION_HOURS: '24', GLUCOGUARD_SUBSCRIPTION_HTTP: 'true', GLUCOGUARD_SUBSCRIPTION_ALLOW: '127.0.0.1:9000' });
    expect(c.exchange).toMatchObject({ exportRetentionHours: 24, subscriptionAllowHttp: true, subscriptionAllow: ['127.0.0.1:9000'], retryAfterSeconds: 2 });
  });

  test('GLUCOGUARD_HOST must be an IP address or a host name', () => {
    expect(problemsOf({ GLUCOGUARD_HOST: '999.1.1.1' })).toEqual(['GLUCOGUARD_HOST must be an IP address or a host name (got "999.1.1.1")']);
    expect(problemsOf({ GLUCOGUARD_HOST: 'bad host' })).toHaveLength(1);
    for (const host of ['127.0.0.1', '::', '0.0.0.0', 'localhost', 'proxy-1.internal']) expect(loadConfig({ GLUCOGUARD_HOST: host }).host).toBe(host);
  });

  test('a base URL ending in /fhir is refused, naming the FHIR base it would give', () => {
    expect(problemsOf({ GLUCOGUARD_BASE_URL: 'http://x.example/fhir/' }).join()).toMatch(/FHIR base is <base>\/fhir.*http:\/\/x\.example\/fhir\/fhir \(set "http:\/\/x\.example"\)/);
    expect(loadConfig({ GLUCOGUARD_BASE_URL: 'https://x.example/gg/' }).baseUrl).toBe('https://x.example/gg');
  });

  test('production refuses plain-http base URLs and subscriptions, and only warns about the master key file', () => {
    const prod = { NODE_ENV: 'production', GLUCOGUARD_MASTER_KEY: Buffer.alloc(32, 1).toString('base64') };
    expect(problemsOf({ ...prod, GLUCOGUARD_BASE_URL: 'http://public.example.org', GLUCOGUARD_SUBSCRIPTION_HTTP: 'true' })).toEqual([
      expect.stringMatching(/^GLUCOGUARD_BASE_URL must use https when NODE_ENV=production/),
      expect.stringMatching(/^GLUCOGUARD_SUBSCRIPTION_HTTP=true is refused when NODE_ENV=production/),
    ]);
    expect(loadConfig({ ...prod, GLUCOGUARD_BASE_URL: 'http://localhost:8080' }).baseUrl).toBe('http://localhost:8080');
    expect(problemsOf({ ...prod, GLUCOGUARD_BASE_URL: 'http://localhost.evil.example' })).toHaveLength(1);
    const fileKey = loadConfig({ NODE_ENV: 'production', GLUCOGUARD_BASE_URL: 'https://gg.example.org' });
    expect(insecureSettings(fileKey)).toEqual([expect.stringMatching(/^master key kept as a file/)]);
    expect(insecureSettings(loadConfig({ GLUCOGUARD_SUBSCRIPTION_HTTP: 'true' })).join()).toMatch(/SUBSCRIPTION_HTTP=true/);
  });

  test('GLUCOGUARD_TRUST_PROXY: off by default; loopback, hop counts and address lists; anything else refused', () => {
    expect(loadConfig({}).trustProxy).toBe(false);
    expect(loadConfig({ GLUCOGUARD_TRUST_PROXY: 'off' }).trustProxy).toBe(false);
    expect(loadConfig({ GLUCOGUARD_TRUST_PROXY: 'loopback' }).trustProxy).toEqual(['loopback']);
    expect(loadConfig({ GLUCOGUARD_TRUST_PROXY: '2' }).trustProxy).toBe(2);
    expect(loadConfig({ GLUCOGUARD_TRUST_PROXY: 'uniquelocal, 203.0.113.7, 2001:db8::/32' }).trustProxy).toEqual(['uniquelocal', '203.0.113.7', '2001:db8::/32']);
    for (const bad of ['true', 'yes', '0', '10.0.0.0/33', 'proxy.example']) {
      expect(problemsOf({ GLUCOGUARD_TRUST_PROXY: bad })).toEqual([expect.stringMatching(/^GLUCOGUARD_TRUST_PROXY must be off, a hop count/)]);
    }
  });

  describe('GLUCOGUARD_CONFIG file', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'gg-config-file-'));
    const file = (content: object) => {
      const f = path.join(dir, `${Math.random().toString(36).slice(2)}.json`);
      writeFileSync(f, JSON.stringify(content));
      return f;
    };
    afterAll(() => rmSync(dir, { recursive: true, force: true }));

    test('takes the environment variable names, as strings, numbers or booleans; the environment wins', () => {
      const f = file({ PORT: 9100, GLUCOGUARD_AUTH: 'off', GLUCOGUARD_SUBSCRIPTION_HTTP: true, GLUCOGUARD_EXPORT_RETRY_AFTER: 5, UPSTREAM_FHIR_URL: 'https://ehr.example.org/fhir', UPSTREAM_TIMEOUT_MS: 2000 });
      const c = loadConfig({ GLUCOGUARD_CONFIG: f, PORT: '9200' });
      expect(c.port).toBe(9200);
      expect(c.auth).toBe('off');
      expect(c.exchange).toMatchObject({ subscriptionAllowHttp: true, retryAfterSeconds: 5 });
      expect(c.upstream).toMatchObject({ url: 'https://ehr.example.org/fhir', timeoutMs: 2000 });
    });

    test('takes exactly the variables of the README configuration table', () => {
      const readme = readFileSync(path.join(PACKAGE_ROOT, 'README.md'), 'utf8');
      const table = readme.slice(readme.indexOf('## Configuration'), readme.indexOf('## Architecture'));
      const names = new Set<string>();
      for (const row of table.split('\n').filter((l) => l.startsWith('| `'))) {
        for (const m of row.split(' | ')[0]!.matchAll(/`([A-Z][A-Z0-9_]+)`/g)) if (/_|^PORT$/.test(m[1]!)) names.add(m[1]!);
      }
      expect([...names].sort()).toEqual([...CONFIG_VARIABLES].sort());
    });

    test('refuses unknown keys, old camelCase names included, and non-scalar values', () => {
      const problems = problemsOf({ GLUCOGUARD_CONFIG: file({ BOGUS_KEY: 1, auth: 'off', chainRpcUrl: 'http://x', GLUCOGUARD_HOST: ['a'] }) });
      expect(problems).toEqual([
        expect.stringMatching(/unknown setting "BOGUS_KEY"/),
        expect.stringMatching(/unknown setting "auth" .*\(did you mean GLUCOGUARD_AUTH\?\)/),
        expect.stringMatching(/unknown setting "chainRpcUrl" .*\(did you mean CHAIN_RPC_URL\?\)/),
        expect.stringMatching(/GLUCOGUARD_HOST .* must be a string, number or boolean/),
      ]);
    });
  });

  test('an unknown time zone is refused', () => {
    expect(() => loadConfig({ GLUCOGUARD_DEFAULT_TZ: 'Mars/Olympus' })).toThrow(/IANA time zone/);
  });
});

function problemsOf(env: Record<string, string>): string[] {
  try {
    loadConfig(env);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}
