/**
 * Ledger benchmark (`BENCH=chain npm run bench`):
 *  1. commitments + Merkle batching on one core: canonicalise (RFC 8785) → salt → SHA-256 → tree of
 *     1,000 → proofs; leaves/s, also from ready canonical bytes (what the embedded store holds);
 *  2. proof verifications/s;
 *  3. embedded Clique node: sequential anchor transactions with receipts through ethers, eth_call p50;
 *  4. anchoring lag (stored → anchored) p50/p95 under a steady 1,000 writes/s, block period 1 s;
 *  5. integrity checking on a 288-entry search: the same search with and without the check,
 *     interleaved in the same run, ratio of p50s.
 */
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseSearchRequest } from '@medplum/core';
import type { Observation, Resource } from '@medplum/fhirtypes';
import { createApp } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { OPEN_ACCESS } from '../src/fhir/access.js';
import { createLogger } from '../src/log.js';
import { canonicalResourceText, commitmentOf } from '../src/ledger/canonical.js';
import { buildMerkleTree, verifyMerkleProof } from '../src/ledger/merkle.js';
import { waitForReceipt } from '../src/ledger/rpc.js';
import { generateCgmObservations, patientDayQuery } from './repository-load.js';
import { fmt, percentile, rssMb, summary, type Log } from './stats.js';

function sample(n: number): Observation[] {
  const out: Observation[] = [];
  for (const o of generateCgmObservations({ patientIds: Array.from({ length: Math.ceil(n / 288) }, (_, i) => `p${i}`), readingsPerPatient: 288 })) {
    if (out.length === n) break;
    out.push({ ...o, id: `o${out.length}`, meta: { ...o.meta, versionId: '1', lastUpdated: '2026-01-01T00:00:00Z' } });
  }
  return out;
}

function commitAndBatch(texts: string[]): { leaves: Buffer[]; proofs: Buffer[]; roots: Buffer[] } {
  const salts = randomBytes(32 * texts.length);
  const leaves = texts.map((t, i) => commitmentOf(salts.subarray(32 * i, 32 * i + 32), t));
  const proofs: Buffer[] = [];
  const roots: Buffer[] = [];
  for (let i = 0; i < leaves.length; i += 1000) {
    const batch = leaves.slice(i, i + 1000);
    const tree = buildMerkleTree(batch);
    roots.push(tree.root);
    for (let j = 0; j < batch.length; j++) proofs.push(tree.proof(j));
  }
  return { leaves, proofs, roots };
}

async function appIn(dir: string, env: Record<string, string>) {
  return createApp(loadConfig({
    GLUCOGUARD_DATA_DIR: dir, GLUCOGUARD_BASE_URL: 'http://127.0.0.1:8080', GLUCOGUARD_AUTH: 'off', LOG_LEVEL: 'silent', CHAIN_PORT: '0', ...env,
  }), { logger: createLogger('silent') });
}

async function commitBench(log: Log): Promise<Record<string, number>> {
  const results: Record<string, number> = {};
  const N = Number(process.env.BENCH_LEAVES ?? 50_000);

  // 1. commitments + batching
  const resources = sample(N);
  let t0 = performance.now();
  const texts = resources.map((r) => canonicalResourceText(r));
  const { leaves, proofs, roots } = commitAndBatch(texts);
  let seconds = (performance.now() - t0) / 1000;
  results.commitLeavesPerSecond = N / seconds;
  log(`commitments + Merkle batches (canonicalise, salt, SHA-256, tree of 1,000, proofs): ${N} leaves in ${fmt(seconds)} s = ${fmt(N / seconds, 0)} leaves/s`);
  t0 = performance.now();
  commitAndBatch(texts);
  seconds = (performance.now() - t0) / 1000;
  results.commitReadyLeavesPerSecond = N / seconds;
  log(`  from ready canonical bytes (embedded store): ${fmt(N / seconds, 0)} leaves/s`);

  // 2. proof verification
  t0 = performance.now();
  let ok = 0;
  for (let i = 0; i < N; i++) if (verifyMerkleProof(leaves[i]!, proofs[i]!, roots[Math.floor(i / 1000)]!)) ok++;
  seconds = (performance.now() - t0) / 1000;
  if (ok !== N) throw new Error('a proof failed');
  results.proofVerificationsPerSecond = N / seconds;
  log(`Merkle proof verifications (10 levels): ${fmt(N / seconds, 0)}/s`);
  return results;
}

async function nodeBench(log: Log): Promise<Record<string, number>> {
  const results: Record<string, number> = {};
  let t0: number;
  let seconds: number;

  // 3. embedded node: sequential transactions with receipts, eth_call
  const nodeDir = mkdtempSync(path.join(tmpdir(), 'gg-bench-chain-'));
  try {
    const app = await appIn(nodeDir, { CHAIN_BLOCK_PERIOD: '0' });
    await app.ledger.anchorer.stop();
    const anchor = app.chain.contract('ResourceAnchor');
    let seq = Number(await anchor.nextSeq(app.chain.authorityAddress));
    const TXS = Number(process.env.BENCH_TXS ?? 200);
    const times: number[] = [];
    t0 = performance.now();
    for (let i = 0; i < TXS; i++) {
      const s = performance.now();
      const tx = await anchor.anchor('0x' + randomBytes(32).toString('hex'), 1, seq, seq);
      seq++;
      await waitForReceipt(app.chain.provider, tx.hash, { pollMs: 2 });
      times.push(performance.now() - s);
    }
    seconds = (performance.now() - t0) / 1000;
    results.sequentialTxPerSecond = TXS / seconds;
    const txs = summary(times.sort((a, b) => a - b));
    log(`embedded node: ${TXS} sequential anchor transactions with receipts through ethers: ${fmt(TXS / seconds, 1)} tx/s (p50 ${fmt(txs.p50)} ms, p95 ${fmt(txs.p95)} ms)`);
    const calls: number[] = [];
    for (let i = 0; i < 500; i++) {
      const s = performance.now();
      await anchor.batchCount();
      calls.push(performance.now() - s);
    }
    calls.sort((a, b) => a - b);
    results.ethCallP50Ms = percentile(calls, 50);
    log(`eth_call (batchCount) p50 ${fmt(percentile(calls, 50))} ms, p95 ${fmt(percentile(calls, 95))} ms`);
    await app.close();
  } finally {
    rmSync(nodeDir, { recursive: true, force: true });
  }

  return results;
}

async function lagBench(log: Log): Promise<Record<string, number>> {
  const results: Record<string, number> = {};
  // 4. anchoring lag at a steady 1,000 writes/s with 1 s blocks
  const lagDir = mkdtempSync(path.join(tmpdir(), 'gg-bench-lag-'));
  try {
    const app = await appIn(lagDir, { CHAIN_BLOCK_PERIOD: '1' });
    const SECONDS = Number(process.env.BENCH_LAG_SECONDS ?? 15);
    const RATE = 1000;
    const writes = sample(RATE * SECONDS).map(({ id: _id, meta: _meta, ...r }) => r as Observation);
    const fromSeq = app.ledger.store.lastSeq() + 1;
    const started = performance.now();
    let sent = 0;
    const pending: Promise<unknown>[] = [];
    while (sent < writes.length) {
      // every 10 ms, the writes due by now (one create per write, as the FHIR facade does)
      const due = Math.min(writes.length, Math.floor(((performance.now() - started) / 1000) * RATE));
      for (; sent < due; sent++) pending.push(app.repository.create(writes[sent]!));
      await Promise.all(pending.splice(0));
      await new Promise((r) => setTimeout(r, 10));
    }
    const writeSeconds = (performance.now() - started) / 1000;
    const deadline = Date.now() + 60_000;
    while (app.ledger.store.counts().pending > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    const lags = app.ledger.store.anchoringLags(fromSeq).sort((a, b) => a - b);
    results.anchoringLagP50Ms = percentile(lags, 50);
    results.anchoringLagP95Ms = percentile(lags, 95);
    results.anchoringWritesPerSecond = writes.length / writeSeconds;
    log(`anchoring lag at ${fmt(writes.length / writeSeconds, 0)} writes/s for ${SECONDS} s (block period 1 s, batches ≤ 1,000 / 1 s): ` +
      `p50 ${fmt(percentile(lags, 50) / 1000)} s, p95 ${fmt(percentile(lags, 95) / 1000)} s, max ${fmt(lags[lags.length - 1]! / 1000)} s over ${lags.length} versions, ` +
      `${app.ledger.store.counts().batches} batches`);
    await app.close();
  } finally {
    rmSync(lagDir, { recursive: true, force: true });
  }

  return results;
}

async function integrityBench(log: Log): Promise<Record<string, number>> {
  const results: Record<string, number> = {};
  // 5. integrity on a 288-entry search
  const searchDir = mkdtempSync(path.join(tmpdir(), 'gg-bench-integrity-'));
  try {
    const app = await appIn(searchDir, { CHAIN_BLOCK_PERIOD: '0' });
    const PATIENTS = Number(process.env.BENCH_SEARCH_PATIENTS ?? 30);
    const DAYS = 3;
    const patientIds = Array.from({ length: PATIENTS }, (_, i) => `pat-${i}`);
    const bulk = app.ledger.repository;
    let chunk: Observation[] = [];
    for (const o of generateCgmObservations({ patientIds, readingsPerPatient: 288 * DAYS })) {
      chunk.push(o);
      if (chunk.length === 5000) { await bulk.createMany(chunk); chunk = []; }
    }
    if (chunk.length) await bulk.createMany(chunk);
    await app.ledger.anchorer.flush();
    const query = (i: number) => parseSearchRequest(patientDayQuery(patientIds[(i * 7) % PATIENTS]!, `2026-01-0${1 + (i % DAYS)}`));
    const guard = app.ledger.guard;
    const plain: number[] = [];
    const checked: number[] = [];
    const cold: number[] = [];
    const ROUNDS = Number(process.env.BENCH_SEARCH_ROUNDS ?? 300);
    const timed = async (request: ReturnType<typeof query>, check: 'none' | 'warm' | 'cold'): Promise<number> => {
      if (check === 'cold') app.ledger.checker.clearCache();
      const s = performance.now();
      const found = await app.repository.search(request);
      const r = check !== 'none' ? await guard.guard(OPEN_ACCESS, found.resources) : undefined;
      // timed up to here: the answer is verified after the clock stops (walking 288 entries for
      // tags cost ~0.1 ms, which the check itself does not)
      const elapsed = performance.now() - s;
      if (r) {
        if (r.allowed.length !== 288 || r.issues.length) throw new Error('integrity bench: expected 288 verified entries');
        if (r.allowed.some((x: Resource) => x.meta?.tag?.length)) throw new Error('integrity bench: entries should be anchored and untagged');
      } else if (found.resources.length !== 288) throw new Error('integrity bench: expected 288 entries');
      return elapsed;
    };
    // warm (what repeated reads cost): the same query with and without the check, alternating which goes first
    for (let i = -30; i < ROUNDS; i++) {
      const request = query(i + 30);
      const first = i % 2 === 0 ? 'none' : 'warm';
      const t1 = await timed(request, first);
      const t2 = await timed(request, first === 'none' ? 'warm' : 'none');
      if (i >= 0) { plain.push(first === 'none' ? t1 : t2); checked.push(first === 'none' ? t2 : t1); }
    }
    // cold (first read after a restart): nothing verified in memory, each entry hashed and its proof checked
    for (let i = 0; i < Math.min(ROUNDS, 100); i++) cold.push(await timed(query(i), 'cold'));
    plain.sort((a, b) => a - b);
    checked.sort((a, b) => a - b);
    cold.sort((a, b) => a - b);
    results.searchColdCheckedP50Ms = percentile(cold, 50);
    results.integrityColdRatioP50 = percentile(cold, 50) / percentile(plain, 50);
    results.searchPlainP50Ms = percentile(plain, 50);
    results.searchCheckedP50Ms = percentile(checked, 50);
    results.integrityRatioP50 = percentile(checked, 50) / percentile(plain, 50);
    log(`288-entry search (${PATIENTS * DAYS * 288} Observations, all anchored): without check p50 ${fmt(percentile(plain, 50))} ms, ` +
      `with check p50 ${fmt(percentile(checked, 50))} ms → ratio ${fmt(results.integrityRatioP50, 3)}× ` +
      `(p95 ${fmt(percentile(plain, 95))} / ${fmt(percentile(checked, 95))} ms); ` +
      `cold (every entry re-hashed, proofs re-checked) p50 ${fmt(percentile(cold, 50))} ms → ${fmt(results.integrityColdRatioP50, 3)}×`);
    results.rssMb = rssMb();
    await app.close();
  } finally {
    rmSync(searchDir, { recursive: true, force: true });
  }
  return results;
}

/** BENCH_CHAIN_PARTS=commit,node,lag,integrity selects parts (default: all). */
export async function run(log: Log): Promise<Record<string, number>> {
  const parts = new Set((process.env.BENCH_CHAIN_PARTS ?? 'commit,node,lag,integrity').split(','));
  const results: Record<string, number> = {};
  if (parts.has('commit')) Object.assign(results, await commitBench(log));
  if (parts.has('node')) Object.assign(results, await nodeBench(log));
  if (parts.has('lag')) Object.assign(results, await lagBench(log));
  if (parts.has('integrity')) Object.assign(results, await integrityBench(log));
  return results;
}
