/**
 * Fault: Redis (the KV port: token revocation, consent epoch and pub/sub) stops under a running
 * `glucoguard serve` with GLUCOGUARD_AUTH=on. Every token-authenticated FHIR read, search and CGM
 * ingest fails closed — 503 OperationOutcome, never data — because neither the token's revocation
 * nor the consent epoch can be checked; /readyz says the KV is down. When Redis is back on the same
 * address the same token works again without restarting the proxy.
 *
 * Our own redis-server runs as a child on a free port (no persistence); skipped without the binary.
 * Tokens are signed in the test with the data directory's signing keys, as the server would sign them.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import type { Bundle, Observation } from '@medplum/fhirtypes';
import { loadServerKeys } from '../../src/keys.js';
import { SigningKeys } from '../../src/smart/keys.js';
import { buildOnce, eventually, freePort, HAS_REDIS_SERVER, runCli, startRedis, startServer, type Proc, type ServerProc } from '../support/process.js';
import { BASE_URL, expectCleanOutcome, getJson, ingest, nightscout, observationsOf, responseOf, tempDir } from './helpers.js';

if (!HAS_REDIS_SERVER) console.warn('SKIPPED redis-down fault test: no redis-server binary on PATH (apt-get install redis-server).');

const dataDir = tempDir('gg-fault-redis-');
const env: Record<string, string> = { GLUCOGUARD_DATA_DIR: dataDir, GLUCOGUARD_AUTH: 'on', GLUCOGUARD_BASE_URL: BASE_URL };
let redis: Proc | undefined;
let server: ServerProc | undefined;
let redisPort = 0;

(HAS_REDIS_SERVER ? describe : describe.skip)('Redis stopped', () => {
  beforeAll(async () => {
    buildOnce();
    redisPort = await freePort();
    env.REDIS_URL = `redis://127.0.0.1:${redisPort}`;
  }, 180_000);
  afterAll(async () => {
    await server?.kill9();
    await redis?.kill9();
    rmSync(dataDir, { recursive: true, force: true });
  });

  test('consent and token checks fail closed with 503 while Redis is down; recovery without restart', async () => {
    redis = await startRedis(redisPort);
    const created = runCli(['patients', 'create', '--given', 'Rhea', '--family', 'Dispatch'], env);
    expect(created.status).toBe(0);
    const patient = created.stdout.trim();
    // The same key file the server loads: a patient-app token as /smart/token would issue it.
    const fhirBase = `${BASE_URL}/fhir`;
    const now = Math.floor(Date.now() / 1000);
    const token = SigningKeys.open(dataDir, loadServerKeys({ dataDir }).root).signAccessToken({
      jti: randomBytes(12).toString('base64url'), gid: randomBytes(12).toString('hex'), iss: fhirBase, aud: fhirBase,
      sub: `Patient/${patient}`, client_id: 'fault-test-app', scope: 'openid fhirUser launch/patient patient/*.cruds',
      iat: now, exp: now + 3600, fhirUser: `Patient/${patient}`, patient,
    });
    const auth = { authorization: `Bearer ${token}` };

    server = await startServer(env);
    expect(server.output()).toMatch(/kv: redis/);
    const file = nightscout(12, Date.UTC(2026, 7, 1));
    expect((await ingest(server.origin, patient, file.body, auth)).status).toBe(200);
    const stored = await observationsOf(server.origin, patient, auth);
    expect(stored).toHaveLength(12);
    const one = stored[0]!.id!;
    expect((await getJson(`${server.origin}/fhir/Observation/${one}`, auth)).status).toBe(200);

    await redis.kill9();
    redis = undefined;
    const attempts = [
      await getJson(`${server.origin}/fhir/Observation/${one}`, auth),
      await getJson(`${server.origin}/fhir/Observation?patient=${patient}`, auth),
      await getJson(`${server.origin}/fhir/Patient/${patient}`, auth),
      await responseOf(await ingest(server.origin, patient, nightscout(12, Date.UTC(2026, 7, 2)).body, auth)),
    ];
    for (const res of attempts) {
      expect(res.status).toBe(503);
      expectCleanOutcome(res.body);
      const text = JSON.stringify(res.body);
      expect(text).not.toMatch(/Dispatch|Rhea|valueQuantity|99504-3/); // no data
      expect(text).not.toMatch(/redis:\/\//i);
    }
    const ready = await getJson(`${server.origin}/readyz`);
    expect(ready.status).toBe(503);
    expect((ready.body as { checks: { name: string; ok: boolean }[] }).checks.find((c) => c.name === 'kv')?.ok).toBe(false);
    expect(server.child.exitCode).toBeNull(); // still running

    redis = await startRedis(redisPort);
    const back = await eventually(async () => {
      const res = await getJson(`${server!.origin}/fhir/Observation?patient=${patient}&_count=100`, auth);
      return res.status === 200 ? res : undefined;
    }, 30_000, 'reads after Redis returned');
    expect((back.body as Bundle<Observation>).entry).toHaveLength(12); // the refused ingest stored nothing
    expect((await getJson(`${server.origin}/readyz`)).status).toBe(200);
    console.info(`redis down: ${attempts.length} token-authenticated requests (read, search, patient read, ingest) all 503 OperationOutcome, no data; ` +
      'recovered without restart, 12 of 12 readings served, the refused ingest stored nothing');
  }, 180_000);
});
