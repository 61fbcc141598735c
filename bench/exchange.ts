/**
 * Exchange figures, measured through createApp (embedded repository behind the ledger decorator,
 * embedded chain, consent enforced):
 * 1. bulk export of N CGM Observations (EXCHANGE_BENCH_N, default 100,000; the issue's target is
 *    1,000,000 in ≤ 60 s and ≤ 300 MB peak RSS) over EXCHANGE_BENCH_PATIENTS patients (default 50),
 *    half of whom granted a practitioner: wall time and peak RSS of
 *    a. the operator export (open access, every reading),
 *    b. the practitioner's export (consent narrowing + a decision per resource, half the readings),
 *    c. the same under a research purpose (also de-identified);
 * 2. notification latency, ingest of one reading → rest-hook delivery to a local receiver,
 *    p50/p95 over EXCHANGE_BENCH_NOTIFY readings (default 200).
 *
 * The load (N readings through the ledger decorator, anchoring drained, grants on chain) runs in
 * this process; the exports and notifications run in a freshly started server process over the
 * same data directory (the node flags of this process are passed on, e.g. --max-old-space-size),
 * so its peak RSS is what a server serving exports holds, not what the bulk load left behind.
 * `EXCHANGE_BENCH_DIR=<dir>` keeps the loaded directory and reuses it on the next run with the
 * same N and patients (the exports alone); `EXCHANGE_BENCH_INPROCESS=1` exports in this process
 * right after the load, as the first version of this benchmark did.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Operator } from '@medplum/core';
import type { Patient, Practitioner } from '@medplum/fhirtypes';
import { Wallet } from 'ethers';
import { createApp, type App } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { consentFromOptions } from '../src/consent/cli.js';
import type { ExportJob } from '../src/exchange/jobs.js';
import type { NotifyingRepository } from '../src/exchange/write-events.js';
import { TOPICS } from '../src/exchange/subscriptions.js';
import { EmbeddedRepository } from '../src/repository/embedded/index.js';
import { OPEN_ACCESS, type AccessContext } from '../src/fhir/access.js';
import { createLogger } from '../src/log.js';
import { childMain, runInChild } from './child.js';
import { loadCgmObservations } from './repository-load.js';
import { fmt, percentile, residentSplitMb, rssMb, type Log } from './stats.js';

const BACKPORT = 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/';
const CHILD_FLAG = 'exchange-export-child';

/** What the load phase leaves for the export phase (kept in the data directory). */
interface Setup {
  n: number;
  patients: number;
  masterKey: string;
  loaded: number;
  loadSeconds: number;
  anchorSeconds: number;
  practitioner: string;
  granted: number;
  grantsUntil: number;
  /** Readings sent by notification runs so far (pat-0; picks each run's own instants). */
  notified: number;
  /** pat-0's Observations when the export phase starts (load + distinct notification readings). */
  stored: number;
}

export async function run(log: Log): Promise<Record<string, number>> {
  const n = Number(process.env.EXCHANGE_BENCH_N ?? 100_000);
  const patients = Number(process.env.EXCHANGE_BENCH_PATIENTS ?? 50);
  const keep = process.env.EXCHANGE_BENCH_DIR;
  const dataDir = keep ?? mkdtempSync(path.join(tmpdir(), 'gg-bench-exchange-'));
  const setupFile = path.join(dataDir, 'bench-setup.json');
  try {
    let setup: Setup | undefined;
    if (keep && existsSync(setupFile)) {
      const saved = JSON.parse(readFileSync(setupFile, 'utf8')) as Setup;
      if (saved.n === n && saved.patients === patients && saved.grantsUntil > Date.now() + 3_600_000) setup = saved;
      else rmSync(dataDir, { recursive: true, force: true });
    }
    if (setup) {
      log(`reusing ${setup.loaded} readings over ${patients} patients loaded earlier in ${dataDir}`);
      // Jobs and subscriptions of an earlier (maybe interrupted) run would resume and compete.
      rmSync(path.join(dataDir, 'exports'), { recursive: true, force: true });
    } else {
      mkdirSync(dataDir, { recursive: true });
      setup = await loadPhase(dataDir, n, patients, log);
      writeFileSync(setupFile, JSON.stringify(setup));
    }
    // Readings of earlier notification runs (pat-0, granted) count in the expected totals.
    setup.stored = await countReadings(dataDir, setup.masterKey, 'pat-0');
    writeFileSync(setupFile, JSON.stringify(setup));
    const out: Record<string, number> = { n, patients, loadSeconds: setup.loadSeconds, anchorTailSeconds: setup.anchorSeconds };
    const results = process.env.EXCHANGE_BENCH_INPROCESS === '1'
      ? await exportPhase(dataDir, setup, log)
      : await runInChild(import.meta.url, CHILD_FLAG, [dataDir], log);
    return { ...out, ...results };
  } finally {
    if (!keep) rmSync(dataDir, { recursive: true, force: true });
  }
}

function openApp(dataDir: string, masterKey: string): Promise<App> {
  process.env.GLUCOGUARD_SUBSCRIPTION_ALLOW = '127.0.0.1';
  return createApp(loadConfig({
    GLUCOGUARD_DATA_DIR: dataDir, GLUCOGUARD_BASE_URL: 'http://127.0.0.1:8080', GLUCOGUARD_AUTH: 'on', LOG_LEVEL: 'silent',
    CHAIN_BLOCK_PERIOD: '0', CHAIN_PORT: '0', GLUCOGUARD_MASTER_KEY: masterKey,
    // the server's memory settings as the operator would give them, so their effect can be measured
    ...Object.fromEntries(['GLUCOGUARD_STORE_MMAP_MB', 'GLUCOGUARD_READ_CACHE_MB', 'CHAIN_NODE_THREAD'].flatMap((k) => (process.env[k] ? [[k, process.env[k]]] : []))),
  }), { logger: createLogger('silent') });
}

/** Loads N readings, waits for anchoring to drain, registers the practitioner and the grants. */
async function loadPhase(dataDir: string, n: number, patients: number, log: Log): Promise<Setup> {
  const masterKey = randomBytes(32).toString('base64');
  const app = await openApp(dataDir, masterKey);
  try {
    for (let i = 0; i < patients; i++) await app.repository.update<Patient>({ resourceType: 'Patient', id: `pat-${i}`, name: [{ family: `Bench${i}` }] });
    const load = await loadCgmObservations(app.repository as NotifyingRepository, { total: n, patients, chunk: 10_000 });
    log(`loaded ${load.loaded} readings over ${patients} patients in ${fmt(load.seconds, 1)} s (through the ledger decorator)`);
    // Exports should measure reads, not reads competing with the anchoring of the load.
    const anchorStart = performance.now();
    while (app.ledger.store.backlog().count > 0 || app.ledger.store.preparedBatches().length > 0) {
      if (performance.now() - anchorStart > 900_000) throw new Error('anchoring did not catch up within 15 minutes');
      await new Promise((r) => setTimeout(r, 250));
    }
    const anchorSeconds = (performance.now() - anchorStart) / 1000;
    log(`anchoring the rest of the commitments after the load: ${fmt(anchorSeconds, 1)} s`);
    const { resource: doc } = await app.repository.create<Practitioner>({ resourceType: 'Practitioner', name: [{ family: 'Bench' }] });
    await app.consent.identity.registerGrantee(`Practitioner/${doc.id}`, Wallet.createRandom().address);
    const now = Date.now();
    const granted = Math.floor(patients / 2);
    const grantsUntil = now + 7 * 86_400_000;
    for (let i = 0; i < granted; i++) {
      await app.consent.service.grant(consentFromOptions({
        patient: `pat-${i}`, to: `Practitioner/${doc.id}`, dataFrom: '2025-12-01T00:00:00Z', dataTo: new Date(grantsUntil).toISOString(),
        until: new Date(grantsUntil).toISOString(), purpose: ['TREAT', 'HRESCH'], types: ['Observation'],
      }), OPEN_ACCESS);
    }
    return { n, patients, masterKey, loaded: load.loaded, loadSeconds: load.seconds, anchorSeconds, practitioner: `Practitioner/${doc.id}`, granted, grantsUntil, notified: 0, stored: 0 };
  } finally {
    await app.close();
  }
}

/** The three exports and the notification latency, in one server process (the current one). */
async function exportPhase(dataDir: string, setup: Setup, log: Log): Promise<Record<string, number>> {
  const notifications = Number(process.env.EXCHANGE_BENCH_NOTIFY ?? 200);
  const out: Record<string, number> = {};
  global.gc?.();
  const t0 = performance.now();
  const app = await openApp(dataDir, setup.masterKey);
  log(`server process started in ${fmt((performance.now() - t0) / 1000, 1)} s, RSS ${fmt(rssMb(), 0)} MB`);
  out.serverStartRssMb = rssMb();
  try {
    const perPatient = Math.ceil(setup.n / setup.patients);
    const notified = setup.stored - Math.min(perPatient, setup.loaded);
    const expectedAll = setup.loaded + notified;
    const expectedGranted = Math.min(setup.loaded, setup.granted * perPatient) + notified;
    const practitioner = (purpose: string): AccessContext & { purposeOfUse: string } => ({
      kind: 'token', clientId: 'bench-ehr', subject: setup.practitioner, fhirUser: setup.practitioner,
      scopes: ['user/*.rs', 'user/Subscription.cud'], purposeOfUse: purpose,
    });
    const only = process.env.EXCHANGE_BENCH_ONLY; // e.g. `practitioner`: one export alone (profiling)
    for (const [label, access, expected] of ([
      ['operator (open access)', OPEN_ACCESS, expectedAll],
      ['practitioner, consent-filtered', practitioner('TREAT'), expectedGranted],
      ['research, consent-filtered + de-identified', practitioner('HRESCH'), expectedGranted],
    ] as const).filter(([label]) => !only || label.startsWith(only))) {
      global.gc?.();
      const before = rssMb();
      let peak = before;
      let atPeak = process.memoryUsage();
      let fileBackedAtPeak: number | undefined;
      const sampler = setInterval(() => {
        const now = process.memoryUsage();
        if (now.rss / 1048576 <= peak) return;
        [peak, atPeak, fileBackedAtPeak] = [now.rss / 1048576, now, residentSplitMb()?.fileBacked];
      }, 20);
      const started = performance.now();
      const cpu0 = process.cpuUsage();
      const job = app.exchange.exports.submit(access, { level: 'system', types: ['Observation'], explicitTypes: true, typeFilters: {} }, 'bench');
      const done = (await app.exchange.exports.whenDone(job.id, 20)) as ExportJob;
      const seconds = (performance.now() - started) / 1000;
      const cpu = process.cpuUsage(cpu0);
      const cpuSeconds = (cpu.user + cpu.system) / 1e6; // this process only: tells a busy machine from a slow export
      clearInterval(sampler);
      peak = Math.max(peak, rssMb());
      const maxRss = process.resourceUsage().maxRSS / 1024;
      const count = done.outputs.reduce((s, f) => s + f.count, 0);
      if (done.status !== 'completed' || count !== expected) throw new Error(`${label}: export ${done.status}, ${count} resources, expected ${expected}`);
      log(`export ${label}: ${count} of ${expectedAll} Observations in ${fmt(seconds, 1)} s (${fmt(count / seconds / 1000, 1)} k/s; ` +
        `CPU ${fmt(cpuSeconds, 1)} s), ` +
        `RSS ${fmt(before, 0)} → peak ${fmt(peak, 0)} MB (process max RSS so far ${fmt(maxRss, 0)} MB; at the peak: ` +
        `JS heap ${fmt(atPeak.heapUsed / 1048576, 0)} of ${fmt(atPeak.heapTotal / 1048576, 0)} MB, array buffers ${fmt(atPeak.arrayBuffers / 1048576, 0)} MB, ` +
        `other external ${fmt((atPeak.external - atPeak.arrayBuffers) / 1048576, 0)} MB` +
        `${fileBackedAtPeak === undefined ? '' : `, file-backed pages ${fmt(fileBackedAtPeak, 0)} MB`})`);
      const key = label.split(' ')[0]!.replace(',', '');
      out[`export_${key}_s`] = seconds;
      out[`export_${key}_cpuS`] = cpuSeconds;
      out[`export_${key}_peakRssMb`] = peak;
      out[`export_${key}_maxRssMb`] = maxRss;
      out[`export_${key}_count`] = count;
      rmSync(path.join(dataDir, 'exports', job.id), { recursive: true, force: true });
    }
    if (!only) {
      // readings are identified by patient, device and instant: each run over a kept directory uses its own milliseconds
      const offsetMs = Math.round(setup.notified / Math.max(1, notifications)) % 9_999 + 1;
      Object.assign(out, await notificationLatency(app, practitioner('TREAT'), notifications, log, offsetMs));
      setup.notified += notifications;
    }
    writeFileSync(path.join(dataDir, 'bench-setup.json'), JSON.stringify(setup));
  } finally {
    await app.close();
  }
  return out;
}

/**
 * How many Observations a patient has, paged through the repository's ordinary search (run before
 * the server process starts, so its page cache is not warmed by the count).
 */
async function countReadings(dataDir: string, masterKey: string, patientId: string): Promise<number> {
  const repo = await EmbeddedRepository.open({ dataDir, masterKey });
  try {
    let n = 0;
    for (let offset = 0; ; offset += 1000) {
      const page = await repo.search({
        resourceType: 'Observation', filters: [{ code: 'patient', operator: Operator.EQUALS, value: `Patient/${patientId}` }], count: 1000, offset,
      });
      n += page.resources.length;
      if (!page.hasMore) return n;
    }
  } finally {
    await repo.close();
  }
}

/** Ingest of one Nightscout reading for a granted patient → event notification received. */
async function notificationLatency(app: App, access: AccessContext, count: number, log: Log, offsetMs = 0): Promise<Record<string, number>> {
  const received: number[] = [];
  let waiter: (() => void) | undefined;
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => { body += c.toString(); });
    req.on('end', () => {
      res.writeHead(200).end();
      if (body.includes('"event-notification"')) {
        received.push(performance.now());
        waiter?.();
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
    const created = await app.fhir.handle({
      method: 'POST', path: 'Subscription', query: {}, headers: { 'content-type': 'application/fhir+json' }, access,
      body: {
        resourceType: 'Subscription', status: 'requested', reason: 'bench', criteria: TOPICS.readings,
        _criteria: { extension: [{ url: `${BACKPORT}backport-filter-criteria`, valueString: 'Observation?patient=Patient/pat-0' }] },
        channel: { type: 'rest-hook', endpoint, payload: 'application/fhir+json', _payload: { extension: [{ url: `${BACKPORT}backport-payload-content`, valueCode: 'full-resource' }] } },
      },
    });
    if (created.status !== 201) throw new Error(`subscription not created: ${created.status}`);
    const id = (created.body as { id: string }).id;
    for (let i = 0; i < 100 && app.exchange.subscriptions.get(id)?.status !== 'active'; i++) await new Promise((r) => setTimeout(r, 20));
    const latencies: number[] = [];
    const start = Date.now() - 3_600_000;
    const run = randomBytes(6).toString('hex');
    for (let i = 0; i < count; i++) {
      const epochMs = Math.floor(start / 60_000) * 60_000 + i * 10_000 + offsetMs;
      const text = `[{"_id":"${run}${i.toString(16).padStart(12, '0')}","type":"sgv","sgv":${100 + (i % 50)},"date":${epochMs},"dateString":"${new Date(epochMs).toISOString()}","device":"bench"}]`;
      const got = new Promise<void>((resolve) => { waiter = resolve; });
      const t0 = performance.now();
      await app.cgm.ingest.ingest({ text }, { patient: 'pat-0', format: 'nightscout' });
      await got;
      latencies.push(received[received.length - 1]! - t0);
    }
    latencies.sort((a, b) => a - b);
    const p50 = percentile(latencies, 50);
    const p95 = percentile(latencies, 95);
    log(`notification latency ingest → rest-hook delivery (consent checked at send, full-resource): p50 ${fmt(p50)} ms, p95 ${fmt(p95)} ms over ${count} readings`);
    return { notifyP50Ms: p50, notifyP95Ms: p95 };
  } finally {
    server.close();
  }
}

childMain(CHILD_FLAG, ([dataDir], log) => {
  const setup = JSON.parse(readFileSync(path.join(dataDir!, 'bench-setup.json'), 'utf8')) as Setup;
  return exportPhase(dataDir!, setup, log);
});
