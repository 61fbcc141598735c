import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, test } from '@jest/globals';
import { ConfigError, insecureSettings, loadConfig } from '../../src/config.js';

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

  test('read cache size, search scan limit and the chain node thread: defaults, overrides, bad values', () => {
    const d = loadConfig({});
    expect(d.readCacheMb).toBe(64);
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

  test('an unknown time zone is refused', () => {
    expect(() => loadConfig({ GLUCOGUARD_DEFAULT_TZ: 'Mars/Olympus' })).toThrow(/IANA time zone/);
  });
});
