/**
 * Soak: mixed reads, patient-day searches and CGM ingest from several concurrent clients against
 * one proxy on loopback for a bounded time (BENCH_SOAK_SECONDS, default 60). Prints errors (must be
 * zero), p50/p99 per kind, throughput, and memory before and after (heap after GC must stay flat).
 * Run: `npm run build && BENCH=soak node --expose-gc bench/run.mjs`.
 */
import { rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { createApp } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { createLogger } from '../src/log.js';
import { fmt, percentile, type Log } from './stats.js';

const CLIENT = `
const { parentPort, workerData } = require('node:worker_threads');
const http = require('node:http');
const { port, patients, seconds, concurrency, startMs } = workerData;
const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
function call(method, path, body, type) {
  return new Promise((resolve) => {
    const t0 = process.hrtime.bigint();
    const req = http.request({ host: '127.0.0.1', port, path, method, agent, headers: body ? { 'content-type': type, 'content-length': Buffer.byteLength(body) } : {} }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ ms: Number(process.hrtime.bigint() - t0) / 1e6, status: res.statusCode, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', (e) => resolve({ ms: 0, status: 0, body: String(e) }));
    req.end(body);
  });
}
let seq = 0;
const ids = patients.map(() => []);
const times = { search: [], read: [], ingest: [] };
const errors = { search: 0, read: 0, ingest: 0 };
const samples = [];
async function one(worker) {
  const p = (worker + seq) % patients.length;
  const roll = (seq++ * 7919) % 10;
  if (roll < 2) {
    // ingest 12 new readings (one hour) for this patient
    const base = startMs + 3 * 86400000 + (seq * 3600000);
    const entries = Array.from({ length: 12 }, (_, i) => ({ type: 'sgv', sgv: 80 + ((seq + i) * 13) % 160, date: base + i * 300000, dateString: new Date(base + i * 300000).toISOString(), direction: 'Flat', device: 'soak-cgm' }));
    const r = await call('POST', '/cgm/ingest?format=nightscout&patient=' + patients[p], JSON.stringify(entries), 'application/json');
    times.ingest.push(r.ms); if (r.status !== 200 && r.status !== 201) { errors.ingest++; if (samples.length < 5) samples.push(r.status + ' ' + r.body.slice(0, 200)); }
  } else if (roll < 5 && ids[p].length) {
    const id = ids[p][seq % ids[p].length];
    const r = await call('GET', '/fhir/Observation/' + id);
    times.read.push(r.ms); if (r.status !== 200) { errors.read++; if (samples.length < 5) samples.push(r.status + ' ' + r.body.slice(0, 200)); }
  } else {
    const day = new Date(startMs + (seq % 2) * 86400000).toISOString().slice(0, 10);
    const next = new Date(startMs + (seq % 2 + 1) * 86400000).toISOString().slice(0, 10);
    const r = await call('GET', '/fhir/Observation?patient=' + patients[p] + '&date=ge' + day + '&date=lt' + next + '&_count=300');
    times.search.push(r.ms);
    if (r.status !== 200) { errors.search++; if (samples.length < 5) samples.push(r.status + ' ' + r.body.slice(0, 200)); }
    else if (ids[p].length < 50) { const b = JSON.parse(r.body); for (const e of b.entry || []) if (e.resource && e.resource.resourceType === 'Observation') ids[p].push(e.resource.id); }
  }
}
(async () => {
  const deadline = Date.now() + seconds * 1000;
  const started = Date.now();
  await Promise.all(Array.from({ length: concurrency }, async (_, w) => { while (Date.now() < deadline) await one(w); }));
  parentPort.postMessage({ times, errors, samples, elapsed: (Date.now() - started) / 1000 });
  agent.destroy();
})();
`;

export async function run(log: Log): Promise<Record<string, number>> {
  const seconds = Number(process.env.BENCH_SOAK_SECONDS ?? 60);
  const concurrency = Number(process.env.BENCH_SOAK_CLIENTS ?? 6);
  const dataDir = path.resolve('bench/out/soak-store');
  rmSync(dataDir, { recursive: true, force: true });
  const app = await createApp(loadConfig({ ...process.env, GLUCOGUARD_DATA_DIR: dataDir, GLUCOGUARD_AUTH: 'off', LOG_LEVEL: 'silent', CHAIN_PORT: '0', CHAIN_BLOCK_PERIOD: '1' }), { logger: createLogger('silent') });
  const server = app.http.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  const port = (server.address() as AddressInfo).port;
  try {
    // Far enough in the past that every ingested hour (one per ingest request) stays before now.
    const startMs = Date.parse('2024-01-01T00:00:00Z');
    const patients: string[] = [];
    for (let p = 0; p < 5; p++) {
      const created = await fetch(`http://127.0.0.1:${port}/fhir/Patient`, { method: 'POST', headers: { 'content-type': 'application/fhir+json' }, body: JSON.stringify({ resourceType: 'Patient', name: [{ family: `Soak${p}` }] }) });
      const id = ((await created.json()) as { id: string }).id;
      patients.push(id);
      const entries = Array.from({ length: 576 }, (_, i) => ({ type: 'sgv', sgv: 70 + ((i * 37) % 180), date: startMs + i * 300_000, dateString: new Date(startMs + i * 300_000).toISOString(), direction: 'Flat', device: 'soak-cgm' }));
      const r = await fetch(`http://127.0.0.1:${port}/cgm/ingest?format=nightscout&patient=${id}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(entries) });
      if (!r.ok) throw new Error(`seeding failed: ${r.status} ${await r.text()}`);
    }
    const gc = (globalThis as { gc?: () => void }).gc;
    gc?.();
    const before = process.memoryUsage();
    log(`soak: ${concurrency} clients, ${seconds} s, 5 patients seeded with 2 days of readings; mix 50% patient-day search, 30% read, 20% ingest of 12 readings`);
    const result = await new Promise<{ times: Record<string, number[]>; errors: Record<string, number>; samples: string[]; elapsed: number }>((resolve, reject) => {
      const w = new Worker(CLIENT, { eval: true, workerData: { port, patients, seconds, concurrency, startMs } });
      w.once('message', resolve);
      w.once('error', reject);
    });
    gc?.();
    const after = process.memoryUsage();
    const out: Record<string, number> = {};
    let total = 0;
    let errors = 0;
    for (const kind of ['search', 'read', 'ingest']) {
      const t = result.times[kind]!.sort((a, b) => a - b);
      total += t.length;
      errors += result.errors[kind]!;
      out[`${kind}P50`] = percentile(t, 50);
      out[`${kind}P99`] = percentile(t, 99);
      log(`  ${kind}: ${t.length} requests, p50 ${fmt(percentile(t, 50))} ms, p99 ${fmt(percentile(t, 99))} ms, errors ${result.errors[kind]}`);
    }
    for (const s of result.samples) log(`  error sample: ${s}`);
    log(`  total ${total} requests in ${fmt(result.elapsed, 1)} s = ${fmt(total / result.elapsed, 0)} req/s; errors ${errors} (target 0)`);
    log(`  memory: RSS ${fmt(before.rss / 2 ** 20, 0)} → ${fmt(after.rss / 2 ** 20, 0)} MB, heap used after GC ${fmt(before.heapUsed / 2 ** 20, 0)} → ${fmt(after.heapUsed / 2 ** 20, 0)} MB`);
    return { ...out, requests: total, errors, rps: total / result.elapsed, rssBeforeMb: before.rss / 2 ** 20, rssAfterMb: after.rss / 2 ** 20, heapBeforeMb: before.heapUsed / 2 ** 20, heapAfterMb: after.heapUsed / 2 ** 20 };
  } finally {
    await new Promise((r) => server.close(r));
    await app.close();
  }
}
