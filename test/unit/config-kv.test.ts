/** GLUCOGUARD_KV: which adapter serves the KV port, its default, and the values refused. */
import { describe, expect, test } from '@jest/globals';
import { ConfigError, insecureSettings, loadConfig } from '../../src/config.js';

const problemsOf = (env: Record<string, string>): string[] => {
  try {
    loadConfig(env);
    return [];
  } catch (err) {
    return (err as ConfigError).problems;
  }
};

describe('GLUCOGUARD_KV', () => {
  test('defaults to the embedded store without REDIS_URL, and to redis with it', () => {
    expect(loadConfig({}).kv).toBe('embedded');
    expect(loadConfig({ REDIS_URL: 'redis://127.0.0.1:6379' }).kv).toBe('redis');
  });

  test('memory is taken for tests and throw-away runs, and announced as insecure', () => {
    const config = loadConfig({ GLUCOGUARD_KV: 'memory' });
    expect(config.kv).toBe('memory');
    expect(insecureSettings(config).join('\n')).toMatch(/GLUCOGUARD_KV=memory: token revocations, refresh tokens and used codes are forgotten/);
    expect(insecureSettings(loadConfig({})).join('\n')).not.toMatch(/GLUCOGUARD_KV/);
  });

  test('memory is refused in production; an unknown value, redis without REDIS_URL and a contradiction are refused, each said', () => {
    expect(problemsOf({ GLUCOGUARD_KV: 'memory', NODE_ENV: 'production', GLUCOGUARD_BASE_URL: 'https://gg.example.org', GLUCOGUARD_MASTER_KEY: Buffer.alloc(32, 1).toString('base64') }))
      .toEqual([expect.stringMatching(/^GLUCOGUARD_KV=memory is refused when NODE_ENV=production/)]);
    expect(problemsOf({ GLUCOGUARD_KV: 'sqlite' })).toEqual(['GLUCOGUARD_KV must be one of embedded, redis, memory (got "sqlite")']);
    expect(problemsOf({ GLUCOGUARD_KV: 'redis' })).toEqual(['GLUCOGUARD_KV=redis needs REDIS_URL']);
    expect(problemsOf({ GLUCOGUARD_KV: 'embedded', REDIS_URL: 'redis://127.0.0.1:6379' }))
      .toEqual(['GLUCOGUARD_KV=embedded and REDIS_URL contradict each other: unset one']);
  });
});
