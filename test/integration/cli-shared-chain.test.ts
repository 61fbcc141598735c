/**
 * Operator commands while the server runs: the embedded chain's LevelDB belongs to the server, so
 * the CLI talks to the server's node over JSON-RPC instead of failing on the lock.
 */
import { spawn, spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { PACKAGE_ROOT } from '../../src/paths.js';
import { tempDir } from '../support/app.js';

const BIN = path.join(PACKAGE_ROOT, 'bin/glucoguard.js');
const dataDir = tempDir('gg-cli-shared-');
const env = { ...process.env, GLUCOGUARD_DATA_DIR: dataDir, LOG_LEVEL: 'info', PORT: '0', CHAIN_PORT: '0', CHAIN_BLOCK_PERIOD: '0', GLUCOGUARD_HOST: '127.0.0.1' };

beforeAll(() => {
  const build = spawnSync(process.execPath, [path.join(PACKAGE_ROOT, 'scripts/build.mjs')], { cwd: PACKAGE_ROOT, encoding: 'utf8' });
  if (build.status !== 0) throw new Error(`npm run build failed:\n${build.stdout}\n${build.stderr}`);
}, 180_000);
afterAll(() => rmSync(dataDir, { recursive: true, force: true }));

describe('CLI beside a running server', () => {
  // a client's identity: one for a Practitioner needs the Practitioner stored first, one for a client the client registered
  test('identity register and list use the running server\'s chain node', async () => {
    const server = spawn(process.execPath, [BIN, 'serve'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    server.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`server did not start: ${out}`)), 30_000);
        server.stdout.on('data', () => {
          if (/listening on port \d+/.test(out)) {
            clearTimeout(timer);
            resolve();
          }
        });
      });
      // a client id no client is registered under is refused, as a wrong --ref (exit 2), and nothing is registered
      const unknown = spawnSync(process.execPath, [BIN, 'identity', 'register', '--ref', 'Client/shared-app'], { env, encoding: 'utf8', timeout: 60_000 });
      expect({ status: unknown.status, said: unknown.stderr.trim().split('\n').pop() })
        .toEqual({ status: 2, said: 'glucoguard: Client/shared-app is not a registered client (see glucoguard clients list)' });
      const added = spawnSync(process.execPath, [BIN, 'clients', 'add', '--name', 'Shared app', '--public', '--redirect-uri', 'https://app.example/cb'],
        { env, encoding: 'utf8', timeout: 60_000 });
      expect(added.status).toBe(0);
      const client = `Client/${/client_id: (\S+)/.exec(added.stdout)![1]}`;
      const reg = spawnSync(process.execPath, [BIN, 'identity', 'register', '--ref', client], { env, encoding: 'utf8', timeout: 60_000 });
      expect(reg.stderr).not.toMatch(/in use by another process/);
      expect(reg.status).toBe(0);
      const address = /0x[0-9a-fA-F]{40}/.exec(reg.stdout)?.[0];
      expect(address).toBeDefined();
      const none = spawnSync(process.execPath, [BIN, 'identity', 'list', '--ref', 'Client/shared-app'], { env, encoding: 'utf8', timeout: 60_000 });
      expect(none.stdout).toBe('');
      const list = spawnSync(process.execPath, [BIN, 'identity', 'list', '--ref', client], { env, encoding: 'utf8', timeout: 60_000 });
      expect(list.status).toBe(0);
      expect(list.stdout).toContain(address);
    } finally {
      const exited = new Promise((r) => server.on('exit', r));
      server.kill('SIGTERM');
      await exited;
    }
  }, 120_000);
});
