/**
 * Consent figures, measured in one run:
 * 1. cached decision latency: `decide()` against a requester's cached permissions (target p50 ≤ 5 µs),
 *    and `decideResource()` which also extracts the resource's patient links, codes and time;
 * 2. an enforced 288-entry search (practitioner with a grant: narrowing + a decision per entry)
 *    against the same search unenforced (open access), interleaved, in-process (target ≤ 1.15×);
 * 3. revocation-to-denial across two replicas sharing Redis and the chain (target ≤ 1 s);
 *    skipped without Redis (REDIS_TEST_URL or 127.0.0.1:6379);
 * 4. memory per 100,000 active grants held in the decision cache;
 * 5. the whole read path over HTTP (token, scopes, consent, integrity, audit, repository) for one
 *    patient-day Bundle against a bare node:http server that only serialises the same Bundle, both
 *    loaded by the same client in the same run (target ≥ 0.5× the bare requests/s).
 * `CONSENT_BENCH_PARTS=decision,memory,search,readpath,revocation` runs only those (default: all).
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Observation, Patient, Practitioner } from '@medplum/fhirtypes';
import { Wallet } from 'ethers';
import { createApp, type App } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { decide, decideResource, internSet, type ActiveGrant, type Permissions } from '../src/consent/decision.js';
import { consentFromOptions } from '../src/consent/cli.js';
import type { ConsentAccessContext } from '../src/consent/requester.js';
import { OPEN_ACCESS } from '../src/fhir/access.js';
import { createLogger } from '../src/log.js';
import { HttpClient } from './http-client.js';
import { fmt, percentile, summary, type Log } from './stats.js';

const DAY = 86_400_000;

export async function run(log: Log): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  const parts = new Set((process.env.CONSENT_BENCH_PARTS ?? 'decision,memory,search,readpath,revocation').split(','));
  if (parts.has('decision')) Object.assign(out, decisionLatency(log));
  if (parts.has('memory')) Object.assign(out, memoryPerGrants(log));
  const redisUrl = process.env.REDIS_TEST_URL ?? ((await answers('127.0.0.1', 6379)) ? 'redis://127.0.0.1:6379' : undefined);
  const dataDir = mkdtempSync(path.join(tmpdir(), 'gg-bench-consent-'));
  const masterKey = randomBytes(32).toString('base64');
  const env = {
    GLUCOGUARD_DATA_DIR: dataDir, GLUCOGUARD_BASE_URL: 'http://127.0.0.1:8080', GLUCOGUARD_AUTH: 'on', LOG_LEVEL: 'silent',
    CHAIN_BLOCK_PERIOD: '1', CHAIN_PORT: '0', GLUCOGUARD_MASTER_KEY: masterKey, ...(redisUrl ? { REDIS_URL: redisUrl } : {}),
  };
  // Search overhead first on a single replica with the in-memory KV store…
  if (parts.has('search')) Object.assign(out, await soloSearchOverhead(env, log));
  const a = await createApp(loadConfig(env), { logger: createLogger('silent') });
  let b: App | undefined;
  try {
    const setup = await scenario(a);
    // …then with Redis, where each request reads the consent epoch (one GET) before deciding.
    if (redisUrl && parts.has('search')) {
      const r = await searchOverhead(a, setup, log, 'Redis KV');
      out.searchEnforcedRatioRedis = r.searchEnforcedRatio!;
      const gets: number[] = [];
      for (let i = 0; i < 500; i++) {
        const t0 = process.hrtime.bigint();
        await a.kv.get('consent:epoch');
        gets.push(Number(process.hrtime.bigint() - t0) / 1e6);
      }
      gets.sort((x, y) => x - y);
      out.redisGetP50Ms = percentile(gets, 50);
      log(`  (one Redis GET of the consent epoch: p50 ${fmt(percentile(gets, 50), 3)} ms on this machine)`);
    }
    // after the in-process figures: the HTTP load leaves audit events to anchor behind it
    if (parts.has('readpath')) Object.assign(out, await readPathVsBare(a, setup, log, `${a.kv.description.adapter} KV`));
    if (redisUrl && parts.has('revocation')) {
      b = await createApp(loadConfig({
        ...env, CHAIN_RPC_URL: a.chain.description.location,
        CHAIN_AUTHORITY_KEY_FILE: path.join(dataDir, 'chain', 'signer.key'), CHAIN_DEPLOYMENT_FILE: path.join(dataDir, 'chain', 'deployment.json'),
      }), { logger: createLogger('silent') });
      Object.assign(out, await revocationToDenial(a, b, setup, log));
    } else if (parts.has('revocation')) {
      log('revocation-to-denial: SKIPPED (no Redis; set REDIS_TEST_URL)');
    }
  } finally {
    await b?.close();
    await a.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
  return out;
}

function reading(patient: string, at: number): Observation {
  return {
    resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] },
    subject: { reference: `Patient/${patient}` }, effectiveDateTime: new Date(at).toISOString(),
    valueQuantity: { value: 100 + (at % 97), unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
  };
}

function grantOf(i: number, patientId: string): ActiveGrant {
  const now = Date.now();
  return {
    grantId: `0x${i.toString(16).padStart(64, '0')}`, consentId: `c${i}`, patientId,
    notBefore: now - DAY, notAfter: now + 3 * DAY, dataFrom: now - 14 * DAY, dataTo: now,
    purposes: internSet(['TREAT']), classes: internSet(['Observation']), codes: internSet(['http://loinc.org|99504-3']),
  };
}

function decisionLatency(log: Log): Record<string, number> {
  const byPatient = new Map<string, ActiveGrant[]>();
  for (let i = 0; i < 1000; i++) byPatient.set(`p${i}`, [grantOf(i, `p${i}`)]);
  const perms: Permissions = { requester: { kind: 'grantee', refs: ['Practitioner/d'], purpose: 'TREAT', key: 'g' }, addresses: ['0x1'], byPatient };
  const now = Date.now();
  const req = { patientId: 'p500', resourceType: 'Observation', codes: ['http://loinc.org|99504-3'], effective: now - 2 * DAY };
  const obs = { ...reading('p500', now - 2 * DAY), id: 'o1' };
  const time = (fn: () => unknown, n: number): number[] => {
    for (let i = 0; i < 20_000; i++) fn();
    const times: number[] = [];
    // batches of 100 calls: the clock read costs about as much as one decision
    for (let i = 0; i < n; i++) {
      const t0 = process.hrtime.bigint();
      for (let k = 0; k < 100; k++) fn();
      times.push(Number(process.hrtime.bigint() - t0) / 100 / 1000);
    }
    return times.sort((x, y) => x - y);
  };
  const d = time(() => decide(perms, req, now), 2000);
  const r = time(() => decideResource(perms, obs, now), 300);
  log(`cached decision decide(): p50 ${fmt(percentile(d, 50), 3)} µs, p99 ${fmt(percentile(d, 99), 3)} µs (target p50 ≤ 5 µs)`);
  log(`decideResource() incl. patient links/codes/time of the resource: p50 ${fmt(percentile(r, 50), 2)} µs`);
  return { decisionP50Us: percentile(d, 50), decisionP99Us: percentile(d, 99), decideResourceP50Us: percentile(r, 50) };
}

function memoryPerGrants(log: Log): Record<string, number> {
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  const before = process.memoryUsage().heapUsed;
  const byPatient = new Map<string, ActiveGrant[]>();
  for (let i = 0; i < 100_000; i++) byPatient.set(`patient-${i}`, [grantOf(i, `patient-${i}`)]);
  gc?.();
  const mb = (process.memoryUsage().heapUsed - before) / 1024 / 1024;
  log(`memory per 100,000 active grants (cached): ${fmt(mb, 1)} MB (${fmt((mb * 1024 * 1024) / 100_000, 0)} bytes/grant${gc ? '' : ', no --expose-gc: approximate'})`);
  if (byPatient.size !== 100_000) throw new Error('unreachable');
  return { memoryMbPer100kGrants: mb };
}

interface Setup {
  patient: string;
  doc: string;
  consentId: string;
  docAccess: ConsentAccessContext;
}

/** The search overhead on a replica of its own with the in-memory KV store (no Redis, no block period). */
async function soloSearchOverhead(env: Record<string, string>, log: Log): Promise<Record<string, number>> {
  const soloDir = mkdtempSync(path.join(tmpdir(), 'gg-bench-consent-solo-'));
  const solo = await createApp(loadConfig({ ...env, GLUCOGUARD_DATA_DIR: soloDir, REDIS_URL: undefined, CHAIN_BLOCK_PERIOD: '0' }), { logger: createLogger('silent') });
  try {
    return await searchOverhead(solo, await scenario(solo), log, 'memory KV');
  } finally {
    await solo.close();
    rmSync(soloDir, { recursive: true, force: true });
  }
}

async function scenario(app: App): Promise<Setup> {
  const patient = (await app.repository.create<Patient>({ resourceType: 'Patient', name: [{ family: 'Bench' }] })).resource.id!;
  const doc = (await app.repository.create<Practitioner>({ resourceType: 'Practitioner', name: [{ family: 'Doc' }] })).resource.id!;
  await app.consent.identity.registerGrantee(`Practitioner/${doc}`, Wallet.createRandom().address);
  // one patient-day: 288 readings, yesterday
  const dayStart = Math.floor((Date.now() - DAY) / DAY) * DAY;
  const readings = Array.from({ length: 288 }, (_, i) => reading(patient, dayStart + i * 300_000));
  const bulk = (app.repository as unknown as { createMany?: (r: Observation[]) => Promise<unknown> }).createMany;
  if (bulk) await bulk.call(app.repository, readings);
  else for (const r of readings) await app.repository.create(r);
  const consentId = await grant(app, patient, doc);
  // Reads are measured on anchored data, as a read sees it a second or two after the write (before
  // that each one would take the "pending" path of the integrity check, which proves nothing yet).
  for (const started = Date.now(); app.ledger.store.backlog().count > 0 || app.ledger.store.preparedBatches().length > 0;) {
    if (Date.now() - started > 30_000) throw new Error('the readings were not anchored within 30 s');
    await new Promise((r) => setTimeout(r, 100));
  }
  const docAccess: ConsentAccessContext = {
    kind: 'token', subject: `Practitioner/${doc}`, clientId: 'ehr', fhirUser: `Practitioner/${doc}`, scopes: ['user/*.rs'], purposeOfUse: 'TREAT',
  };
  return { patient, doc, consentId, docAccess };
}

async function grant(app: App, patient: string, doc: string): Promise<string> {
  const now = Date.now();
  const outcome = await app.consent.service.grant(consentFromOptions({
    patient, to: `Practitioner/${doc}`, dataFrom: new Date(now - 14 * DAY).toISOString(), dataTo: new Date(now).toISOString(),
    until: new Date(now + 3 * DAY).toISOString(), purpose: ['TREAT'], types: ['Observation'],
  }), OPEN_ACCESS);
  return outcome.consent.id!;
}

async function searchOverhead(app: App, s: Setup, log: Log, label: string): Promise<Record<string, number>> {
  const dayStart = new Date(Math.floor((Date.now() - DAY) / DAY) * DAY);
  const query = { patient: `Patient/${s.patient}`, date: [`ge${dayStart.toISOString()}`, `lt${new Date(dayStart.getTime() + DAY).toISOString()}`], _count: '288' };
  const search = async (access: ConsentAccessContext): Promise<number> => {
    const t0 = process.hrtime.bigint();
    const res = await app.fhir.handle({ method: 'GET', path: 'Observation', query, headers: {}, access: { ...access } });
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    const n = ((res.body as { entry?: unknown[] }).entry ?? []).length;
    if (res.status !== 200 || n !== 288) throw new Error(`search answered ${res.status} with ${n} entries`);
    return ms;
  };
  for (let i = 0; i < 10; i++) {
    await search(OPEN_ACCESS);
    await search(s.docAccess);
  }
  const open: number[] = [];
  const enforced: number[] = [];
  for (let i = 0; i < Number(process.env.CONSENT_BENCH_SEARCHES ?? 300); i++) {
    open.push(await search(OPEN_ACCESS));
    enforced.push(await search(s.docAccess));
  }
  await app.consent.audit.flush();
  const o = summary(open.sort((x, y) => x - y));
  const e = summary(enforced.sort((x, y) => x - y));
  const ratio = e.p50 / o.p50;
  log(`288-entry search in-process (${label}): unenforced p50 ${fmt(o.p50)} ms, enforced (scopes + consent) p50 ${fmt(e.p50)} ms → ${fmt(ratio, 3)}× (target ≤ 1.15×)`);
  return { searchUnenforcedP50Ms: o.p50, searchEnforcedP50Ms: e.p50, searchEnforcedRatio: ratio };
}

/**
 * Requests/s of the whole read path (a practitioner's token, consent, integrity, audit, repository)
 * for one patient-day Bundle, against a bare node:http server answering JSON.stringify of the same
 * Bundle — same client (a worker thread, 4 keep-alive connections), same duration, alternating.
 */
async function readPathVsBare(app: App, s: Setup, log: Log, label: string): Promise<Record<string, number>> {
  const dayStart = new Date(Math.floor((Date.now() - DAY) / DAY) * DAY);
  const query = `patient=Patient/${s.patient}&date=ge${dayStart.toISOString()}&date=lt${new Date(dayStart.getTime() + DAY).toISOString()}&_count=288`;
  const token = app.smart.tokens.signAccessToken({
    gid: randomUUID(), clientId: 'ehr', sub: `Practitioner/${s.doc}`, fhirUser: `Practitioner/${s.doc}`, scopes: ['openid', 'fhirUser', 'launch', 'user/*.rs'],
  }).token;
  const proxy = app.http.listen(0, '127.0.0.1');
  await new Promise((r) => proxy.once('listening', r));
  const headers = { authorization: `Bearer ${token}`, 'x-purpose-of-use': 'TREAT' };
  const proxyClient = new HttpClient((proxy.address() as AddressInfo).port, { headers });
  // the Bundle the proxy answers, fetched once through it: the bare server serialises exactly that
  const first = await fetch(`http://127.0.0.1:${(proxy.address() as AddressInfo).port}/fhir/Observation?${query}`, { headers });
  const bundle = await first.json() as { entry?: unknown[] };
  if (first.status !== 200 || bundle.entry?.length !== 288) throw new Error(`the proxy answered ${first.status} with ${bundle.entry?.length} entries`);
  const bare = createServer((_req, res) => {
    const text = JSON.stringify(bundle);
    res.writeHead(200, { 'content-type': 'application/fhir+json; charset=utf-8' });
    res.end(text);
  }).listen(0, '127.0.0.1');
  await new Promise((r) => bare.once('listening', r));
  const bareClient = new HttpClient((bare.address() as AddressInfo).port);
  const seconds = Number(process.env.BENCH_READ_SECONDS ?? 5);
  const paths = [`/fhir/Observation?${query}`];
  try {
    await proxyClient.run(paths, 4, 1);
    await bareClient.run(paths, 4, 1);
    let proxyN = 0; let proxyS = 0; let bareN = 0; let bareS = 0;
    for (let round = 0; round < 3; round++) {
      const p = await proxyClient.run(paths, 4, seconds);
      proxyN += p.times.length; proxyS += p.elapsed;
      const b = await bareClient.run(paths, 4, seconds);
      bareN += b.times.length; bareS += b.elapsed;
    }
    await app.consent.audit.flush();
    const proxyRps = proxyN / proxyS;
    const bareRps = bareN / bareS;
    log(`whole read path over HTTP (${label}; token, consent, integrity, audit, repository), one patient-day Bundle of 288: `
      + `${fmt(proxyRps, 0)} req/s vs bare node:http serialising the same Bundle ${fmt(bareRps, 0)} req/s → ${fmt(proxyRps / bareRps, 3)}× (target ≥ 0.5×)`);
    return { readPathRps: proxyRps, bareRps, readPathVsBare: proxyRps / bareRps };
  } finally {
    await proxyClient.close();
    await bareClient.close();
    await new Promise((r) => proxy.close(r));
    await new Promise((r) => bare.close(r));
  }
}

async function revocationToDenial(a: App, b: App, s: Setup, log: Log): Promise<Record<string, number>> {
  const read = async (): Promise<number> => {
    const res = await b.fhir.handle({ method: 'GET', path: 'Observation', query: { patient: `Patient/${s.patient}`, _count: '1' }, headers: {}, access: { ...s.docAccess } });
    return ((res.body as { entry?: unknown[] }).entry ?? []).length;
  };
  const denials: number[] = [];
  const confirms: number[] = [];
  let consentId = s.consentId;
  for (let round = 0; round < 3; round++) {
    if (round > 0) consentId = await grant(a, s.patient, s.doc);
    for (let i = 0; i < 50 && (await read()) === 0; i++) await new Promise((r) => setTimeout(r, 50));
    if ((await read()) === 0) throw new Error('replica B never saw the grant');
    // B is asked again and again while A's revoke call runs: the figure is the first denial on B,
    // from the moment the revoke call began; the call itself returns once the chain has confirmed
    const t0 = performance.now();
    let confirmedAt: number | undefined;
    const revoking = a.consent.service.revoke(consentId, OPEN_ACCESS).then(() => { confirmedAt = performance.now(); });
    while ((await read()) !== 0) {
      if (performance.now() - t0 > 10_000) throw new Error('replica B still permits 10 s after revocation');
      // both replicas share this process: let the event loop run A's call and B's pub/sub in between
      await new Promise((r) => setTimeout(r, 2));
    }
    denials.push(performance.now() - t0);
    await revoking;
    confirms.push(confirmedAt! - t0);
    if ((await read()) !== 0) throw new Error('replica B permits again after the revocation was confirmed');
  }
  const worst = Math.max(...denials);
  log(`revocation-to-denial on replica B (embedded chain, block period 1 s), from the revoke call on A: ${denials.map((x) => fmt(x, 0)).join(', ')} ms `
    + `(target ≤ 1 s); the revoke call returned, chain confirmation included, after ${confirms.map((x) => fmt(x, 0)).join(', ')} ms`);
  return { revocationToDenialMaxMs: worst, revocationConfirmedMaxMs: Math.max(...confirms) };
}

async function answers(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port, timeout: 500 });
    socket.once('connect', () => { socket.destroy(); resolve(true); });
    socket.once('error', () => resolve(false));
    socket.once('timeout', () => { socket.destroy(); resolve(false); });
  });
}

