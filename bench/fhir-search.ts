/**
 * Foundation benchmark: a store of 1,000,000 CGM Observations (BENCH_OBSERVATIONS), loaded through
 * the embedded repository's bulk path, then the headline query — one patient-day (288 readings) —
 * timed (a) directly on the repository and (b) over HTTP through the whole facade, in the same run.
 * The HTTP client runs in a worker thread so it does not share the server's event loop.
 *
 * A third path gives the floor of any HTTP answer on this machine: (c) a bare node:http server that
 * makes the same direct repository call and writes a searchset Bundle of it, serialised and written
 * as the facade does it — no framework, token, consent, integrity check or access log.
 *
 * The queries run twice: in the process that did the bulk load, right after it, and in a freshly
 * started server process over the same data directory (what a server restarted after a bulk load
 * serves, without the heap the load left behind). `FHIR_SEARCH_BENCH_DIR=<dir>` keeps the loaded
 * directory and reuses it on the next run with the same BENCH_OBSERVATIONS, BENCH_PATIENTS and
 * BENCH_LOAD_ORDER (the fresh-process queries alone). BENCH_LOAD_ORDER=time stores the patients'
 * readings taking turns, as streamed uploads arrive, instead of patient after patient (see LoadOrder).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { parseSearchRequest } from '@medplum/core';
import type { Bundle, Resource } from '@medplum/fhirtypes';
import { createApp, type App } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { OPEN_ACCESS } from '../src/fhir/access.js';
import { byteLengthOf, jsonBody } from '../src/fhir/json-text.js';
import { createLogger } from '../src/log.js';
import { childMain, runInChild } from './child.js';
import { loadCgmObservations, patientDayQuery, type BulkRepository, type LoadOrder } from './repository-load.js';
import { HttpClient } from './http-client.js';
import { fmt, rssMb, summary, type Log } from './stats.js';

const CHILD_FLAG = 'fhir-search-query-child';

/** What the load leaves for the query phases (bench-setup.json in the data directory). */
interface Setup {
  total: number;
  patients: number;
  /** Absent in stores kept by earlier versions of this benchmark: those were loaded patient by patient. */
  order?: LoadOrder;
  loaded: number;
  loadSeconds: number;
  anchorSeconds: number;
  patientIds: string[];
  days: number;
}

function openApp(dataDir: string): Promise<App> {
  return createApp(loadConfig({ ...process.env, GLUCOGUARD_DATA_DIR: dataDir, GLUCOGUARD_AUTH: 'off', LOG_LEVEL: 'silent', GLUCOGUARD_MAX_PAGE_SIZE: '1000', CHAIN_PORT: '0', CHAIN_BLOCK_PERIOD: process.env.CHAIN_BLOCK_PERIOD ?? '0' }), { logger: createLogger('silent') });
}

export async function run(log: Log): Promise<Record<string, number>> {
  const total = Number(process.env.BENCH_OBSERVATIONS ?? 1_000_000);
  const patients = Number(process.env.BENCH_PATIENTS ?? 100);
  const order: LoadOrder = process.env.BENCH_LOAD_ORDER === 'time' ? 'time' : 'patient';
  const keep = process.env.FHIR_SEARCH_BENCH_DIR;
  const dataDir = path.resolve(keep ?? 'bench/out/fhir-search-store');
  const setupFile = path.join(dataDir, 'bench-setup.json');
  let setup: Setup | undefined;
  if (keep && existsSync(setupFile)) {
    const saved = JSON.parse(readFileSync(setupFile, 'utf8')) as Setup;
    if (saved.total === total && saved.patients === patients && (saved.order ?? 'patient') === order) setup = saved;
  }
  const out: Record<string, number> = {};
  if (setup) {
    log(`reusing ${setup.loaded.toLocaleString('en')} Observations loaded earlier in ${dataDir} (load ${fmt(setup.loadSeconds, 1)} s then)`);
  } else {
    rmSync(dataDir, { recursive: true, force: true });
    mkdirSync(dataDir, { recursive: true });
    const app = await openApp(dataDir);
    try {
      setup = await loadPhase(app, total, patients, order, log);
      writeFileSync(setupFile, JSON.stringify(setup));
      log(`queries in the process that did the load, right after it (RSS ${fmt(rssMb(), 0)} MB; ${pageCacheShare(dataDir)}):`);
      Object.assign(out, await queryPhase(app, setup, log));
    } finally {
      await app.close();
    }
  }
  log('queries in a freshly started server process over the same store:');
  const fresh = await runInChild(import.meta.url, CHILD_FLAG, [dataDir], log);
  for (const [k, v] of Object.entries(fresh)) out[`fresh${k[0]!.toUpperCase()}${k.slice(1)}`] = v;
  if (!keep) rmSync(dataDir, { recursive: true, force: true });
  return { observations: setup.loaded, loadSeconds: setup.loadSeconds, loadPerSecond: setup.loaded / setup.loadSeconds, anchorTailSeconds: setup.anchorSeconds, ...out };
}

/** Loads the readings through the ledger decorator's bulk path and waits for anchoring to drain. */
async function loadPhase(app: App, total: number, patients: number, order: LoadOrder, log: Log): Promise<Setup> {
  // The bulk path through the ledger decorator: loaded readings are committed like ingested ones.
  const repo = app.ledger.repository as unknown as BulkRepository;
  if (typeof repo.createMany !== 'function') throw new Error('the fhir-search benchmark needs the embedded repository');
  log(`loading ${total.toLocaleString('en')} CGM Observations for ${patients} patients (embedded repository, encrypted), ${order === 'time' ? 'the patients taking turns reading by reading (streamed uploads)' : 'patient after patient'}…`);
  let lastReport = 0;
  const load = await loadCgmObservations(repo, {
    total,
    patients,
    order,
    onProgress: (loaded, seconds) => {
      if (loaded - lastReport >= 200_000 || loaded === total) {
        lastReport = loaded;
        log(`  ${loaded.toLocaleString('en')} loaded, ${fmt(seconds, 1)} s`);
      }
    },
  });
  log(`load: ${load.loaded.toLocaleString('en')} Observations in ${fmt(load.seconds, 1)} s = ${Math.round(load.loaded / load.seconds).toLocaleString('en')}/s (target < 300 s); RSS ${fmt(rssMb(), 0)} MB`);
  // Every loaded version was committed through the ledger; let the anchorer finish so the query
  // phase measures reads, not reads competing with 1,000 anchoring transactions.
  const anchorStart = performance.now();
  while (app.ledger.store.backlog().count > 0 || app.ledger.store.preparedBatches().length > 0) {
    if (performance.now() - anchorStart > 600_000) throw new Error('anchoring did not catch up within 10 minutes');
    await new Promise((r) => setTimeout(r, 250));
  }
  const anchorSeconds = (performance.now() - anchorStart) / 1000;
  log(`anchoring the rest of the ${load.loaded.toLocaleString('en')} commitments after the load: ${fmt(anchorSeconds, 1)} s`);
  return { total, patients, order, loaded: load.loaded, loadSeconds: load.seconds, anchorSeconds, patientIds: load.patientIds, days: load.days };
}

/**
 * The patient-day query (a) on the repository directly, (b) over HTTP through the whole facade and
 * (c) over a bare node:http server around the direct call, interleaved in rounds of 50 so all see
 * the same machine load, GC state and page cache; then the HTTP throughput with 4 concurrent clients.
 */
async function queryPhase(app: App, setup: Setup, log: Log): Promise<Record<string, number>> {
  const iterations = Number(process.env.BENCH_QUERIES ?? 500);
  const codingQueries = 200;
  const thresholdQueries = 200;
  const all = Array.from({ length: iterations + codingQueries + thresholdQueries }, (_, i) => {
    const patient = setup.patientIds[(i * 37) % setup.patientIds.length]!;
    const day = new Date(Date.parse('2026-01-01T00:00:00Z') + ((i * 13) % setup.days) * 86_400_000).toISOString().slice(0, 10);
    return patientDayQuery(patient, day);
  });
  const queries = all.slice(0, iterations);
  const server = app.http.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  const client = new HttpClient((server.address() as AddressInfo).port);
  const gzipClient = new HttpClient((server.address() as AddressInfo).port, { headers: { 'Accept-Encoding': 'gzip' } });
  const bare = await bareServer(app);
  const bareClient = new HttpClient((bare.address() as AddressInfo).port);
  try {
    const direct: number[] = [];
    const overHttp: number[] = [];
    const overBare: number[] = [];
    const directRound = async (batch: string[], record: boolean): Promise<void> => {
      for (const q of batch) {
        const t0 = process.hrtime.bigint();
        const r = await app.repository.search(parseSearchRequest(q));
        if (record) direct.push(Number(process.hrtime.bigint() - t0) / 1e6);
        if (r.resources.length !== 288) throw new Error(`direct query answered ${r.resources.length}, expected 288`);
      }
    };
    (globalThis as { gc?: () => void }).gc?.();
    await directRound(queries.slice(0, 50), false);
    await client.run(queries.slice(0, 50).map((q) => `/fhir/${q}`));
    await bareClient.run(queries.slice(0, 50).map((q) => `/fhir/${q}`));
    // The decoded-version cache is emptied between the paths: each answers a query it has not
    // seen, as every query of a real 1,000,000-reading workload nearly is (each would otherwise be
    // measured on versions another one had just read). The path that runs a round first reads its
    // rows' pages into the file caches for the others, so they take turns going first.
    for (let i = 0; i < queries.length; i += 50) {
      const batch = queries.slice(i, i + 50);
      const paths = batch.map((q) => `/fhir/${q}`);
      const rounds = [
        () => directRound(batch, true),
        async () => { overHttp.push(...(await client.run(paths)).times); },
        async () => { overBare.push(...(await bareClient.run(paths)).times); },
      ];
      const first = (i / 50) % rounds.length;
      for (let k = 0; k < rounds.length; k++) {
        app.readCache?.clear();
        await rounds[(first + k) % rounds.length]!();
      }
    }
    app.readCache?.clear();
    const d = summary(direct.sort((a, b) => a - b));
    const h = summary(overHttp.sort((a, b) => a - b));
    const b = summary(overBare.sort((x, y) => x - y));
    const conc = await client.run(queries.map((q) => `/fhir/${q}`), 4, Number(process.env.BENCH_SECONDS ?? 10));
    const rps = conc.times.length / conc.elapsed;
    const coding = await codingCompared(app, client, gzipClient, all.slice(iterations, iterations + codingQueries));
    const threshold = await thresholdCompared(app, (server.address() as AddressInfo).port, all.slice(iterations + codingQueries));
    const parts = await breakdown(app, queries.slice(0, 200));
    log(`  patient-day query (288 of ${setup.loaded.toLocaleString('en')}), ${iterations} queries over varied patients/days:`);
    log(`    direct repository: p50 ${fmt(d.p50)} ms, p95 ${fmt(d.p95)} ms`);
    log(`    HTTP facade:       p50 ${fmt(h.p50)} ms, p95 ${fmt(h.p95)} ms (target p50 < 20 ms); ${fmt(1000 / h.mean, 0)} req/s sequential`);
    log(`    HTTP throughput, 4 concurrent keep-alive clients, ${fmt(conc.elapsed, 1)} s: ${fmt(rps, 0)} req/s`);
    log(`    ratio HTTP/direct p50: ${fmt(h.p50 / d.p50)}x (target <= 1.5x); RSS ${fmt(rssMb(), 0)} MB`);
    log(`    floor of any HTTP answer here, a bare node:http server around the direct call writing the Bundle as the facade does: p50 ${fmt(b.p50)} ms, p95 ${fmt(b.p95)} ms,`
      + ` ${fmt(b.p50 / d.p50)}x direct; the facade is ${fmt(h.p50 / b.p50)}x that floor`);
    log(`    Accept-Encoding: gzip vs none, ${codingQueries} further unseen queries taking turns: p50 ${fmt(coding.gzipP50)} vs ${fmt(coding.identityP50)} ms over loopback;`
      + ` ${fmt(coding.gzipBytes / 1024, 1)} vs ${fmt(coding.identityBytes / 1024, 1)} kB per answer`);
    log(`    the same day with a glucose threshold (value-quantity=gt180|…|mg/dL, matched on the decrypted day; ${fmt(threshold.matches, 0)} of 288 readings match on average),`
      + ` ${thresholdQueries} further unseen queries, direct and HTTP taking turns: direct p50 ${fmt(threshold.directP50)} ms, HTTP p50 ${fmt(threshold.httpP50)} ms`);
    log(`    a threshold alone (Observation?value-quantity=gt400|…|mg/dL), store index generation ${app.indexGeneration?.() ?? '—'}:`
      + ` ${threshold.unnarrowedOutcome} in ${fmt(threshold.unnarrowedP50, 1)} ms (p50 of 3)`);
    log(`    the same as a composite alone (code-value-quantity=http://loinc.org|99504-3$gt400|…|mg/dL): ${threshold.compositeOutcome} in ${fmt(threshold.compositeP50, 1)} ms (p50 of 3)`);
    log(`    the same in the other unit (value-quantity=gt22.3|…|mmol/L, 401.7 mg/dL): ${threshold.convertedOutcome} in ${fmt(threshold.convertedP50, 1)} ms (p50 of 3)`);
    log(`    where the HTTP time goes (p50 per stage, in-process, ${parts.n} of the queries again, as the facade runs them: integrity checked as on a first read of each version):`);
    log(`      repository search (deferred resources) ${fmt(parts.search)} ms + integrity check ${fmt(parts.integrity)} ms + serialising the Bundle ${fmt(parts.serialize)} ms`
      + ` = ${fmt(parts.search + parts.integrity + parts.serialize)} ms; the rest of the HTTP p50 (${fmt(Math.max(0, h.p50 - parts.search - parts.integrity - parts.serialize))} ms):`
      + ' HTTP and framework, guards, the access-log write, garbage collection');
    return {
      directP50: d.p50, directP95: d.p95, httpP50: h.p50, httpP95: h.p95, httpRps: rps, ratioP50: h.p50 / d.p50, rssMb: rssMb(),
      bareHttpP50: b.p50, bareHttpP95: b.p95, bareRatioP50: b.p50 / d.p50, facadeOverBareP50: h.p50 / b.p50,
      thresholdDirectP50: threshold.directP50, thresholdHttpP50: threshold.httpP50, thresholdMatches: threshold.matches, unnarrowedThresholdMs: threshold.unnarrowedP50, compositeThresholdMs: threshold.compositeP50, convertedThresholdMs: threshold.convertedP50,
      gzipP50: coding.gzipP50, identityP50: coding.identityP50, gzipKiB: coding.gzipBytes / 1024, identityKiB: coding.identityBytes / 1024,
      stageSearchP50: parts.search, stageIntegrityColdP50: parts.integrity, stageSerializeP50: parts.serialize,
    };
  } finally {
    await client.close();
    await gzipClient.close();
    await bareClient.close();
    await new Promise((r) => server.close(r));
    await new Promise((r) => bare.close(r));
  }
}

/**
 * The least any HTTP server answering this query must do, listening on loopback: the direct
 * repository call (as timed above) and the JSON of a searchset Bundle of its answer, serialised and
 * written as the facade does it (src/fhir/json-text.ts). No framework, parameter checks, token,
 * consent, integrity check or access log.
 */
async function bareServer(app: App): Promise<Server> {
  const server = createServer((req, res) => {
    app.repository.search(parseSearchRequest(req.url!.slice('/fhir/'.length))).then((r) => {
      const body = jsonBody(searchset('http://127.0.0.1/fhir', r.resources));
      res.writeHead(200, { 'Content-Type': 'application/fhir+json', 'Content-Length': byteLengthOf(body) });
      res.end(body);
    }, (err: unknown) => {
      res.writeHead(500).end(String(err));
    });
  });
  server.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  return server;
}

function searchset(base: string, resources: Resource[]): Bundle {
  return {
    resourceType: 'Bundle', type: 'searchset',
    entry: resources.map((resource) => ({ fullUrl: `${base}/${resource.resourceType}/${resource.id}`, resource, search: { mode: 'match' } })),
  };
}

/**
 * The same search answered uncompressed and gzip-coded (what most HTTP clients ask for), on queries
 * neither path has seen, the two taking turns query by query: over loopback this shows the CPU cost
 * of coding; the bytes are what a real network carries.
 */
async function codingCompared(app: App, identity: HttpClient, gzip: HttpClient, queries: string[]): Promise<{ identityP50: number; gzipP50: number; identityBytes: number; gzipBytes: number }> {
  const times = { identity: [] as number[], gzip: [] as number[] };
  const bytes = { identity: 0, gzip: 0 };
  for (let i = 0; i < queries.length; i++) {
    const kind = i % 2 === 0 ? 'identity' : 'gzip';
    app.readCache?.clear();
    const r = await (kind === 'identity' ? identity : gzip).run([`/fhir/${queries[i]}`]);
    times[kind].push(...r.times);
    bytes[kind] += r.bytes;
  }
  return {
    identityP50: summary(times.identity.sort((a, b) => a - b)).p50,
    gzipP50: summary(times.gzip.sort((a, b) => a - b)).p50,
    identityBytes: bytes.identity / times.identity.length,
    gzipBytes: bytes.gzip / times.gzip.length,
  };
}

/**
 * A patient-day with a glucose threshold (the patient+date index picks the day, the threshold is
 * matched on its decrypted readings), direct and over HTTP taking turns on unseen queries; then a
 * threshold with nothing else to narrow it, through the facade.
 */
async function thresholdCompared(app: App, port: number, days: string[]): Promise<{ directP50: number; httpP50: number; matches: number; unnarrowedP50: number; unnarrowedOutcome: string; compositeP50: number; compositeOutcome: string; convertedP50: number; convertedOutcome: string }> {
  const client = new HttpClient(port, { entries: -1 });
  try {
    const direct: number[] = [];
    const overHttp: number[] = [];
    let matches = 0;
    for (let i = 0; i < days.length; i++) {
      const q = `${days[i]}&value-quantity=gt180|http://unitsofmeasure.org|mg/dL`;
      app.readCache?.clear();
      if (i % 2 === 0) {
        const t0 = process.hrtime.bigint();
        const r = await app.repository.search(parseSearchRequest(q));
        direct.push(Number(process.hrtime.bigint() - t0) / 1e6);
        matches += r.resources.length;
      } else {
        overHttp.push(...(await client.run([`/fhir/${q}`])).times);
      }
    }
    // Nothing but the threshold (readings stay within 40–400 mg/dL here): with the store's quantity
    // rows (index generation 5: in base units, so also for 22.3 mmol/L) one index range finds nothing; a store of an older generation must
    // read readings one by one, and is refused once the scan limit is passed.
    // The same as a composite (code and value of one reading): the planner weighs the code's index
    // rows (every reading) against the quantity range (none) and reads the range.
    const alone = async (query: Record<string, string>): Promise<{ p50: number; outcome: string }> => {
      const times: number[] = [];
      let outcome = '';
      for (let i = 0; i < 3; i++) {
        const t0 = performance.now();
        const res = await app.fhir.handle({ method: 'GET', path: 'Observation', query, headers: {}, access: OPEN_ACCESS });
        times.push(performance.now() - t0);
        const body = res.body as { issue?: { code?: string }[]; entry?: unknown[] };
        if (res.status === 200 && !body.entry?.length) outcome = 'answered (no reading above 400) from the quantity index';
        else if (res.status === 400 && body.issue?.[0]?.code === 'too-costly') outcome = `refused as too costly (scan limit ${app.config.searchScanLimit.toLocaleString('en')})`;
        else throw new Error(`unnarrowed threshold answered ${res.status}`);
      }
      return { p50: summary(times.sort((a, b) => a - b)).p50, outcome };
    };
    const unnarrowed = await alone({ 'value-quantity': 'gt400|http://unitsofmeasure.org|mg/dL' });
    const composite = await alone({ 'code-value-quantity': 'http://loinc.org|99504-3$gt400|http://unitsofmeasure.org|mg/dL' });
    const converted = await alone({ 'value-quantity': 'gt22.3|http://unitsofmeasure.org|mmol/L' });
    return {
      directP50: summary(direct.sort((a, b) => a - b)).p50,
      httpP50: summary(overHttp.sort((a, b) => a - b)).p50,
      matches: matches / direct.length,
      unnarrowedP50: unnarrowed.p50,
      unnarrowedOutcome: unnarrowed.outcome,
      compositeP50: composite.p50,
      compositeOutcome: composite.outcome,
      convertedP50: converted.p50,
      convertedOutcome: converted.outcome,
    };
  } finally {
    await client.close();
  }
}

/**
 * The stages of the HTTP path timed one by one in-process, on queries already answered once, as the
 * facade runs them: the repository search asked for deferred resources (SearchOptions.deferred, as
 * the router asks), the integrity check with the verified-version cache emptied before each query
 * (a first read of those versions; at 1,000,000 readings nearly every query above is one), and the
 * JSON text of a searchset Bundle of the answer, in the facade's pieces (src/fhir/json-text.ts).
 */
async function breakdown(app: App, queries: string[]): Promise<{ n: number; search: number; integrity: number; serialize: number }> {
  const search: number[] = [];
  const integrity: number[] = [];
  const serialize: number[] = [];
  for (const q of queries) {
    app.readCache?.clear();
    let t0 = performance.now();
    const r = await app.repository.search(parseSearchRequest(q), { deferred: true });
    search.push(performance.now() - t0);
    app.ledger.checker.clearCache();
    t0 = performance.now();
    const checks = await app.ledger.checker.checkMany(r.resources);
    integrity.push(performance.now() - t0);
    if (checks.some((c) => c.status !== 'verified')) throw new Error(`integrity: ${JSON.stringify(checks.find((c) => c.status !== 'verified'))}`);
    t0 = performance.now();
    jsonBody(searchset('http://localhost/fhir', r.resources));
    serialize.push(performance.now() - t0);
  }
  const p50 = (xs: number[]): number => summary(xs.sort((a, b) => a - b)).p50;
  return { n: queries.length, search: p50(search), integrity: p50(integrity), serialize: p50(serialize) };
}

/**
 * How much of the store's two database files the OS page cache holds (util-linux `fincore`), and
 * how much written data waits for writeback, as the queries start: the first read of a patient-day costs ~3 ms more in the search alone when its pages
 * come from disk, and some VMs page out file pages idle for a while (DAMON reclaim).
 */
function pageCacheShare(dataDir: string): string {
  const files = [path.join(dataDir, 'store', 'glucoguard.db'), path.join(dataDir, 'ledger', 'commitments.db')];
  const r = spawnSync('fincore', ['--bytes', '--noheadings', '--raw', '-o', 'RES,SIZE', ...files], { encoding: 'utf8' });
  if (r.status !== 0) return 'page cache residency unknown (no fincore)';
  const shares = r.stdout.trim().split('\n').map((line) => {
    const [res, size] = line.trim().split(/\s+/).map(Number);
    return size ? `${fmt((100 * res!) / size, 0)} %` : '?';
  });
  return `in the page cache: repository ${shares[0]}, commitments ${shares[1]}; ${dirtyPages()}`;
}

/** Written data the kernel has not flushed to disk yet (/proc/meminfo): reads compete with its writeback. */
function dirtyPages(): string {
  try {
    const info = readFileSync('/proc/meminfo', 'utf8');
    const kb = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(info)?.[1] ?? NaN);
    return `not yet written back: ${fmt(kb('Dirty') / 1024, 0)} MB dirty, ${fmt(kb('Writeback') / 1024, 0)} MB under writeback`;
  } catch {
    return 'dirty pages unknown (no /proc/meminfo)';
  }
}

childMain(CHILD_FLAG, async ([dataDir], log) => {
  const setup = JSON.parse(readFileSync(path.join(dataDir!, 'bench-setup.json'), 'utf8')) as Setup;
  global.gc?.();
  const t0 = performance.now();
  const app = await openApp(dataDir!);
  log(`  server process started in ${fmt((performance.now() - t0) / 1000, 1)} s, RSS ${fmt(rssMb(), 0)} MB; ${pageCacheShare(dataDir!)}`);
  const t1 = performance.now();
  await app.ledger.warmed();
  log(`  then in the background: anchored roots read and ${app.ledger.checker.provenAhead().toLocaleString('en')} versions proven ahead against them`
    + ` (GLUCOGUARD_PROVE_AHEAD) in ${fmt((performance.now() - t1) / 1000, 1)} s more; RSS ${fmt(rssMb(), 0)} MB. The queries below start after that;`
    + ' the in-process stage split at the end measures a first read without it');
  try {
    return await queryPhase(app, setup, log);
  } finally {
    await app.close();
  }
});
