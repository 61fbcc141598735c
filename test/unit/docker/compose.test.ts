/**
 * The Docker files agree with each other without Docker: every file compose.yaml mounts from
 * besu/network/ is one docker/besu/generate.mjs writes, at the container path its config.toml names;
 * the bootnode host is a compose service; the proxies' CHAIN_ID is the generator's default; nginx
 * passes bodies up to the ingest limit and the client address the replicas are told to trust.
 */
import { describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { loadConfig } from '../../../src/config.js';
import { PACKAGE_ROOT } from '../../../src/paths.js';
import { MAX_HEADER_BYTES } from '../../../src/server.js';
import { tempDir } from '../../support/app.js';

const DOCKER = path.join(PACKAGE_ROOT, 'docker');
const read = (file: string) => readFileSync(path.join(DOCKER, file), 'utf8');

/** `- ./network/x:/container/path[:ro]` bind mounts of a compose file, relative to its directory. */
function bindMounts(compose: string): Array<{ host: string; container: string }> {
  return [...compose.matchAll(/^\s*-\s*"?(\.\/[^:"\s]+):([^:"\s]+)/gm)].map((m) => ({ host: m[1]!, container: m[2]! }));
}

describe.each([
  { file: 'compose.yaml', network: './besu/network/' },
  { file: 'besu/compose.yaml', network: './network/' },
])('$file and docker/besu/generate.mjs', ({ file, network }) => {
  test('mounts only generated files, where the generated config.toml looks for them; the bootnode host is a service', () => {
    const out = tempDir('gg-compose-');
    try {
      const r = spawnSync(process.execPath, [path.join(DOCKER, 'besu/generate.mjs'), '--out', out], { encoding: 'utf8' });
      expect(r.status).toBe(0);
      const compose = read(file);
      const mounts = bindMounts(compose).filter((m) => m.host.startsWith(network));
      expect(mounts.length).toBe(12); // genesis, config and key of 4 validators
      for (const m of mounts) expect(existsSync(path.join(out, m.host.slice(network.length)))).toBe(true);
      for (let i = 1; i <= 4; i++) {
        const toml = readFileSync(path.join(out, `validator-${i}`, 'config.toml'), 'utf8');
        const own = mounts.filter((m) => m.host.includes(`/validator-${i}/`) || m.host.endsWith('genesis.json'));
        const mountedAt = (name: string) => own.find((m) => m.host.endsWith(name))?.container;
        expect(toml).toContain(`genesis-file="${mountedAt('genesis.json')}"`);
        expect(toml).toContain(`node-private-key-file="${mountedAt('/key')}"`);
        expect(compose).toContain(`:${/data-path="([^"]+)"/.exec(toml)![1]}`); // the data volume
        const bootHost = /@([\w-]+):30303/.exec(toml)?.[1];
        if (bootHost) expect(compose).toMatch(new RegExp(`^  ${bootHost}:`, 'm'));
      }
      expect(compose).toContain('--config-file=/opt/besu/config/config.toml');
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });
});

describe('docker/compose.yaml proxies and nginx', () => {
  const compose = read('compose.yaml');
  const nginx = read('nginx.conf');

  test('the proxies use the chain id the generator writes by default', () => {
    const out = tempDir('gg-compose-');
    try {
      spawnSync(process.execPath, [path.join(DOCKER, 'besu/generate.mjs'), '--out', out], { encoding: 'utf8' });
      const { chainId } = JSON.parse(readFileSync(path.join(out, 'network.json'), 'utf8')) as { chainId: number };
      expect(/CHAIN_ID: "(\d+)"/.exec(compose)![1]).toBe(String(chainId));
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });

  test('nginx takes bodies up to the default ingest limit and sends the client address the replicas trust', () => {
    const [, size, unit] = /client_max_body_size (\d+)([kmg]?);/.exec(nginx)!;
    const bytes = Number(size) * ({ '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 } as Record<string, number>)[unit!]!;
    expect(bytes).toBeGreaterThanOrEqual(loadConfig({}).maxIngestBytes);
    expect(nginx).toMatch(/proxy_set_header X-Forwarded-For \$remote_addr;/);
    expect(nginx).toMatch(/proxy_set_header X-Forwarded-Proto \$scheme;/);
    const trust = /GLUCOGUARD_TRUST_PROXY: (\S+)/.exec(compose)![1]!;
    expect(loadConfig({ GLUCOGUARD_TRUST_PROXY: trust }).trustProxy).not.toBe(false);
  });

  test('the replicas share one data volume and one authority key (the commitment store\'s salts verify what either wrote)', () => {
    const proxies = ['proxy-1', 'proxy-2'].map((name) => new RegExp(`^  ${name}:\\n((?:    .*\\n)+)`, 'm').exec(compose)![1]!);
    const volumes = proxies.map((block) => /volumes: \[([\w-]+):\/data\]/.exec(block)![1]);
    expect(volumes[0]).toBe(volumes[1]);
    for (const block of proxies) expect(block).not.toMatch(/CHAIN_AUTHORITY_KEY_FILE/); // the anchor's shared one
    expect(compose.match(/CHAIN_AUTHORITY_KEY_FILE: (\S+)/g)).toHaveLength(1);
  });

  test('the replicas\' environment is a configuration the proxy starts with in production (secrets stood in for by files)', () => {
    const block = /^  environment: &proxy-env\n((?:    .*\n)+)/m.exec(compose)![1]!;
    const secrets = tempDir('gg-compose-secrets-');
    try {
      const stand: Record<string, string> = {
        master_key: randomBytes(32).toString('base64'), redis_password: 'compose-test', chain_authority_key: randomBytes(32).toString('hex'),
        'deployment.json': '{}',
      };
      const env: Record<string, string> = {};
      for (const line of block.split('\n')) {
        const m = /^    ([A-Z][A-Z0-9_]*): "?([^"#]*?)"?\s*(?:#.*)?$/.exec(line);
        if (!m) continue;
        let value = m[2]!;
        const secret = /^\/run\/secrets\/(.+)$/.exec(value)?.[1];
        if (secret) {
          value = path.join(secrets, secret);
          writeFileSync(value, stand[secret] ?? 'x', { mode: 0o600 });
        }
        env[m[1]!] = value;
      }
      expect(env).toMatchObject({ NODE_ENV: 'production', UPSTREAM_FHIR_URL: expect.any(String), CHAIN_RPC_URL: expect.any(String) });
      const config = loadConfig({ ...env, GLUCOGUARD_DATA_DIR: path.join(secrets, 'data') });
      expect(config.upstream?.url).toBe(env.UPSTREAM_FHIR_URL);
    } finally {
      rmSync(secrets, { recursive: true, force: true });
    }
  });

  test('nginx passes request lines and headers as long as the replicas take (a long search\'s page links)', () => {
    const [, , size, unit] = /large_client_header_buffers (\d+) (\d+)([km]?);/.exec(nginx)!;
    expect(Number(size) * ({ '': 1, k: 1024, m: 1024 ** 2 } as Record<string, number>)[unit!]!).toBeGreaterThanOrEqual(MAX_HEADER_BYTES);
  });
});
