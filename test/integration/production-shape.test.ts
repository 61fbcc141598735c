/**
 * docker/compose.yaml's shape, rehearsed without Docker: two `glucoguard serve` replicas under
 * NODE_ENV=production on one data directory, the master key and the Redis password from secret
 * files, Redis with `requirepass`, the chain as a node of its own reached by CHAIN_RPC_URL with the
 * authority key and deployment files, and an upstream FHIR server reached over plain http
 * (UPSTREAM_ALLOW_HTTP, as HAPI on the compose network). A Backend Services client registered with
 * the CLI gets a token from one replica and writes through both; every version written is anchored
 * on the external chain and `glucoguard verify` proves it; a token revoked at one replica is refused
 * at the other (the shared Redis). Skipped without redis-server.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { tempDir } from '../support/app.js';
import {
  BIN, buildOnce, childEnv, eventually, freePort, HAS_REDIS_SERVER, startChainNode, startRedis, startServer,
  type ChainNodeProc, type Proc, type ServerProc,
} from '../support/process.js';
import { startUpstreamFhirServer, type UpstreamFhirServer } from '../support/upstream-server.js';

if (!HAS_REDIS_SERVER) console.warn('SKIPPED production-shape test: no redis-server binary on PATH (apt-get install redis-server).');

const PUBLIC_BASE = 'https://glucoguard.example.org';

/** `glucoguard <args>` without blocking this process: the upstream server answers from it. */
function runCli(args: string[], env: Record<string, string>): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], { env: childEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.once('close', (status) => resolve({ status, stdout, stderr }));
  });
}
const JWT_BEARER = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

(HAS_REDIS_SERVER ? describe : describe.skip)('compose.yaml rehearsed: two production replicas, Redis, external chain, http upstream', () => {
  const secrets = tempDir('gg-prod-secrets-');
  const chainDir = tempDir('gg-prod-chain-');
  const dataDir = tempDir('gg-prod-data-');
  let chain: ChainNodeProc | undefined;
  let redis: Proc | undefined;
  let upstream: UpstreamFhirServer | undefined;
  const replicas: ServerProc[] = [];
  let env: Record<string, string>;
  let clientId: string;
  let privateKey: CryptoKey;

  beforeAll(async () => {
    buildOnce();
    chain = await startChainNode(chainDir, await freePort());
    const redisPassword = `${randomBytes(12).toString('base64')}%/+=`; // a `%` not followed by hex digits stopped the start before session 25
    const redisPort = await freePort();
    redis = await startRedis(redisPort, 10_000, ['--requirepass', redisPassword]);
    upstream = await startUpstreamFhirServer();
    writeFileSync(path.join(secrets, 'master_key'), `${randomBytes(32).toString('base64')}\n`, { mode: 0o600 });
    writeFileSync(path.join(secrets, 'redis_password'), `${redisPassword}\n`, { mode: 0o600 });
    env = {
      NODE_ENV: 'production', GLUCOGUARD_BASE_URL: PUBLIC_BASE, GLUCOGUARD_DATA_DIR: dataDir,
      UPSTREAM_FHIR_URL: upstream.url, UPSTREAM_ALLOW_HTTP: 'true',
      REDIS_URL: `redis://127.0.0.1:${redisPort}`, REDIS_PASSWORD_FILE: path.join(secrets, 'redis_password'),
      CHAIN_RPC_URL: chain.rpcUrl, CHAIN_ID: String(chain.chainId),
      CHAIN_AUTHORITY_KEY_FILE: path.join(chainDir, 'chain', 'signer.key'), CHAIN_DEPLOYMENT_FILE: path.join(chainDir, 'chain', 'deployment.json'),
      GLUCOGUARD_MASTER_KEY_FILE: path.join(secrets, 'master_key'), GLUCOGUARD_TRUST_PROXY: 'uniquelocal',
    };
    const pair = await generateKeyPair('ES384', { extractable: true });
    privateKey = pair.privateKey;
    const jwksFile = path.join(secrets, 'jwks.json');
    writeFileSync(jwksFile, JSON.stringify({ keys: [{ ...(await exportJWK(pair.publicKey)), kid: 'k1', alg: 'ES384' }] }));
    const added = await runCli(['clients', 'add', '--name', 'EHR interface', '--jwks-file', jwksFile, '--scopes', 'system/Patient.cruds system/Observation.cruds'], env);
    expect(added.stderr).not.toMatch(/error/i);
    clientId = /client_id: (\S+)/.exec(added.stdout)![1]!;
    for (let i = 0; i < 2; i++) replicas.push(await startServer(env, 90_000));
  }, 240_000);

  afterAll(async () => {
    for (const r of replicas) await r.stop();
    await chain?.stop();
    await redis?.kill9();
    await upstream?.close();
    for (const dir of [secrets, chainDir, dataDir]) rmSync(dir, { recursive: true, force: true });
  });

  /** The token endpoint's path (discovery names it under the public base), asked of `replica`. */
  async function token(replica: ServerProc): Promise<string> {
    const discovery = (await (await fetch(`${replica.origin}/fhir/.well-known/smart-configuration`)).json()) as { token_endpoint: string };
    expect(discovery.token_endpoint.startsWith(PUBLIC_BASE)).toBe(true);
    const now = Math.floor(Date.now() / 1000);
    const assertion = await new SignJWT({}).setProtectedHeader({ alg: 'ES384', kid: 'k1', typ: 'JWT' }).setIssuer(clientId).setSubject(clientId)
      .setAudience(discovery.token_endpoint).setJti(randomUUID()).setIssuedAt(now).setExpirationTime(now + 240).sign(privateKey);
    const res = await fetch(`${replica.origin}${new URL(discovery.token_endpoint).pathname}`, {
      method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grant_type: 'client_credentials', scope: 'system/Patient.cruds', client_assertion_type: JWT_BEARER, client_assertion: assertion }),
    });
    const body = (await res.json()) as { access_token?: string };
    expect(res.status).toBe(200);
    return body.access_token!;
  }

  const create = (replica: ServerProc, bearer: string, family: string) => fetch(`${replica.origin}/fhir/Patient`, {
    method: 'POST', headers: { authorization: `Bearer ${bearer}`, 'content-type': 'application/fhir+json' },
    body: JSON.stringify({ resourceType: 'Patient', name: [{ family }], birthDate: '1970-01-01' }),
  });

  test('both replicas are ready on every port: upstream repository, Redis, the external chain', async () => {
    for (const replica of replicas) {
      const ready = await fetch(`${replica.origin}/readyz`);
      const body = (await ready.json()) as { checks: { name: string; ok: boolean }[] };
      expect(body.checks.filter((c) => !c.ok)).toEqual([]);
      expect(ready.status).toBe(200);
      expect(replica.output()).not.toContain(env.REDIS_URL.replace('redis://', 'redis://:')); // no password in any log line
    }
  });

  test('a token from one replica writes through both; the writes land upstream, anchored on the external chain, and verify', async () => {
    const bearer = await token(replicas[0]!);
    const written: string[] = [];
    for (const [i, replica] of replicas.entries()) {
      const res = await create(replica, bearer, `Replica${i}`);
      expect(res.status).toBe(201);
      written.push(((await res.json()) as { id: string }).id);
    }
    for (const id of written) expect(await upstream!.repo.readResource('Patient', id)).toMatchObject({ id });
    await eventually(async () => {
      const status = await runCli(['chain', 'status', '--json'], env);
      const pending = status.status === 0 ? (JSON.parse(status.stdout) as { anchoring: { pending: number } }).anchoring.pending : -1;
      return pending === 0 ? true : undefined;
    }, 60_000, 'every commitment anchored on the external chain');
    const verify = await runCli(['verify'], env);
    if (verify.status !== 0) console.error('VERIFY', verify.status, verify.stderr.slice(0, 3000), replicas.map((r) => r.output().slice(-3000)).join('\n----\n'));
    expect(verify.stdout).toMatch(/, 0 failed/);
    expect(verify.status).toBe(0);
  });

  test('a token revoked at one replica is refused at the other at once (Redis)', async () => {
    const bearer = await token(replicas[1]!);
    expect((await create(replicas[0]!, bearer, 'BeforeRevoke')).status).toBe(201);
    const now = Math.floor(Date.now() / 1000);
    const discovery = (await (await fetch(`${replicas[1]!.origin}/fhir/.well-known/smart-configuration`)).json()) as { revocation_endpoint: string; token_endpoint: string };
    const assertion = await new SignJWT({}).setProtectedHeader({ alg: 'ES384', kid: 'k1', typ: 'JWT' }).setIssuer(clientId).setSubject(clientId)
      .setAudience(discovery.token_endpoint).setJti(randomUUID()).setIssuedAt(now).setExpirationTime(now + 240).sign(privateKey);
    const revoked = await fetch(`${replicas[1]!.origin}${new URL(discovery.revocation_endpoint).pathname}`, {
      method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token: bearer, client_id: clientId, client_assertion_type: JWT_BEARER, client_assertion: assertion }),
    });
    expect(revoked.status).toBe(200);
    expect((await create(replicas[0]!, bearer, 'AfterRevoke')).status).toBe(401);
  });
});
