/**
 * Fault: the chain node stops while the proxy keeps taking writes. The chain runs as its own
 * process (`glucoguard chain node`), the proxy reaches it with CHAIN_RPC_URL and the key and
 * deployment files the node wrote. What the code does (and this test pins): writes keep answering
 * 200 — each version's commitment is queued durably in `<dataDir>/ledger/commitments.db` — reads
 * serve the new versions tagged `pending`, /readyz reports the chain down, and when the node is back
 * on the same address the queue drains: every version anchored, `glucoguard verify` finds no failure.
 */
import { afterAll, beforeAll, expect, test } from '@jest/globals';
import path from 'node:path';
import { rmSync } from 'node:fs';
import { buildOnce, eventually, freePort, runCli, startChainNode, startServer, type ChainNodeProc, type ServerProc } from '../support/process.js';
import { BASE_URL, FIVE_MIN, getJson, ingest, integrityTag, metric, nightscout, observationsOf, readingOf, tempDir, type SentReading } from './helpers.js';

const chainDir = tempDir('gg-fault-chain-node-');
const dataDir = tempDir('gg-fault-chain-proxy-');
const env: Record<string, string> = {
  GLUCOGUARD_DATA_DIR: dataDir, GLUCOGUARD_AUTH: 'off', GLUCOGUARD_BASE_URL: BASE_URL,
  CHAIN_AUTHORITY_KEY_FILE: path.join(chainDir, 'chain', 'signer.key'),
  CHAIN_DEPLOYMENT_FILE: path.join(chainDir, 'chain', 'deployment.json'),
};
let node: ChainNodeProc | undefined;
let server: ServerProc | undefined;
let chainPort = 0;

beforeAll(async () => {
  buildOnce();
  chainPort = await freePort();
}, 180_000);
afterAll(async () => {
  await server?.kill9();
  await node?.stop();
  rmSync(chainDir, { recursive: true, force: true });
  rmSync(dataDir, { recursive: true, force: true });
});

function pendingCount(): number {
  const status = runCli(['chain', 'status', '--json'], env);
  if (status.status !== 0) throw new Error(status.stderr);
  return (JSON.parse(status.stdout) as { anchoring: { pending: number } }).anchoring.pending;
}

test('chain node stopped during writes: writes queue durably (200), anchors catch up when it returns', async () => {
  node = await startChainNode(chainDir, chainPort);
  env.CHAIN_RPC_URL = node.rpcUrl;
  const created = runCli(['patients', 'create', '--given', 'Cora', '--family', 'Chain'], env);
  expect(created.status).toBe(0);
  const patient = created.stdout.trim();
  server = await startServer(env);
  expect(server.output()).toMatch(/chain: JSON-RPC/);

  const start = Date.UTC(2026, 8, 1);
  const before = nightscout(12, start);
  expect((await ingest(server.origin, patient, before.body)).status).toBe(200);
  await eventually(async () => ((await observationsOf(server!.origin, patient)).every((o) => integrityTag(o) === undefined) ? true : undefined),
    30_000, 'anchoring before the outage');

  expect(await node.stop()).toBe(0);
  node = undefined;

  // Writes while the node is down: acknowledged, queued.
  const during: SentReading[] = [];
  for (let batch = 1; batch <= 3; batch++) {
    const file = nightscout(12, start + batch * 12 * FIVE_MIN);
    const res = await ingest(server.origin, patient, file.body);
    expect(res.status).toBe(200);
    expect(((await res.json()) as { created: number }).created).toBe(12);
    during.push(...file.readings);
  }
  const ready = await getJson(`${server.origin}/readyz`);
  expect(ready.status).toBe(503);
  expect((ready.body as { checks: { name: string; ok: boolean }[] }).checks.find((c) => c.name === 'chain')?.ok).toBe(false);
  // What an operator watches: the anchoring lag grows while the node is away.
  const lagDown = await eventually(async () => {
    const lag = await metric(server!.origin, 'glucoguard_anchoring_lag_seconds');
    return lag !== undefined && lag > 0 ? lag : undefined;
  }, 30_000, 'anchoring lag above 0 while the node is down');
  const served = await observationsOf(server.origin, patient);
  expect(served).toHaveLength(before.readings.length + during.length);
  const tagOf = new Map(served.map((o) => [readingOf(o)!.at, integrityTag(o)]));
  for (const r of during) expect(tagOf.get(r.at)).toBe('pending');
  const tagsBefore = new Set(before.readings.map((r) => tagOf.get(r.at) ?? 'verified'));
  console.info(`chain node down: ${during.length} readings written (3 × 200), served as pending; ` +
    `readings anchored before the outage served as ${[...tagsBefore].join(', ')}; /readyz ${ready.status}; anchoring lag ${lagDown.toFixed(1)} s`);

  // The queue is on disk: stop the proxy too, and bring it back while the node is still down.
  expect(await server.stop()).toBe(0);
  server = await startServer(env);
  // The queue read back from disk: the 36 readings (and the AuditEvents of the reads above).
  const queued = Number(/(\d+) waiting to be anchored/.exec(server.output())?.[1]);
  expect(queued).toBeGreaterThanOrEqual(during.length);
  const afterRestart = await observationsOf(server.origin, patient);
  expect(afterRestart).toHaveLength(before.readings.length + during.length);
  for (const o of afterRestart) if (during.some((r) => r.at === o.effectiveDateTime)) expect(integrityTag(o)).toBe('pending');

  // The node comes back on the same address: the queue drains without restarting the proxy.
  node = await startChainNode(chainDir, chainPort);
  await eventually(async () => ((await observationsOf(server!.origin, patient)).every((o) => integrityTag(o) === undefined) ? true : undefined),
    60_000, 'anchoring after the node returned');
  await eventually(async () => (pendingCount() === 0 ? true : undefined), 60_000, 'chain status: 0 pending', 1000);
  expect((await getJson(`${server.origin}/readyz`)).status).toBe(200);
  await eventually(async () => ((await metric(server!.origin, 'glucoguard_anchoring_lag_seconds')) === 0 ? true : undefined), 30_000, 'anchoring lag back to 0');
  const verify = runCli(['verify', '--patient', patient], env);
  if (!/, 0 failed/.test(verify.stdout)) console.error("VERIFY", verify.status, verify.stderr.slice(0, 3000));
  expect(verify.stdout).toMatch(/, 0 failed/);
  expect(verify.status).toBe(0);
  expect(Number(/(\d+) verified/.exec(verify.stdout)?.[1])).toBeGreaterThanOrEqual(before.readings.length + during.length);
  console.info(`proxy restarted while the node was down: started, ${queued} commitments read back from the queue`);
  console.info(`chain node back: all ${before.readings.length + during.length} readings anchored; verify: ${verify.stdout.trim()}`);
}, 240_000);
