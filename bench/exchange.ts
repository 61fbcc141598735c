/**
 * Exchange figures, measured in one run through createApp (embedded repository behind the ledger
 * decorator, embedded chain, consent enforced):
 * 1. bulk export of N CGM Observations (EXCHANGE_BENCH_N, default 100,000; the target is
 *    1,000,000 in ≤ 60 s and ≤ 300 MB peak RSS) over EXCHANGE_BENCH_PATIENTS patients (default 50),
 *    half of whom granted a practitioner: wall time and peak RSS of
 *    a. the operator export (open access, every reading),
 *    b. the practitioner's export (consent narrowing + a decision per resource, half the readings),
 *    c. the same under a research purpose (also de-identified);
 * 2. notification latency, ingest of one reading → rest-hook delivery to a local receiver,
 *    p50/p95 over EXCHANGE_BENCH_NOTIFY readings (default 200).
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Patient, Practitioner } from '@medplum/fhirtypes';
import { Wallet } from 'ethers';
import { createApp, type App } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { consentFromOptions } from '../src/consent/cli.js';
import type { ExportJob } from '../src/exchange/jobs.js';
import type { NotifyingRepository } from '../src/exchange/write-events.js';
import { TOPICS } from '../src/exchange/subscriptions.js';
import { OPEN_ACCESS, type AccessContext } from '../src/fhir/access.js';
import { createLogger } from '../src/log.js';
import { loadCgmObservations } from './repository-load.js';
import { fmt, percentile, rssMb, type Log } from './stats.js';

const BACKPORT = 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/';

export async function run(log: Log): Promise<Record<string, number>> {
  const n = Number(process.env.EXCHANGE_BENCH_N ?? 100_000);
  const patients = Number(process.env.EXCHANGE_BENCH_PATIENTS ?? 50);
  const notifications = Number(process.env.EXCHANGE_BENCH_NOTIFY ?? 200);
  const out: Record<string, number> = { n, patients };
  const dataDir = mkdtempSync(path.join(tmpdir(), 'gg-bench-exchange-'));
  process.env.GLUCOGUARD_SUBSCRIPTION_ALLOW = '127.0.0.1';
  const app = await createApp(loadConfig({
    GLUCOGUARD_DATA_DIR: dataDir, GLUCOGUARD_BASE_URL: 'http://127.0.0.1:8080', GLUCOGUARD_AUTH: 'on', LOG_LEVEL: 'silent',
    CHAIN_BLOCK_PERIOD: '0', CHAIN_PORT: '0', GLUCOGUARD_MASTER_KEY: randomBytes(32).toString('base64'),
  }), { logger: createLogger('silent') });
  try {
    for (let i = 0; i < patients; i++) await app.repository.update<Patient>({ resourceType: 'Patient', id: `pat-${i}`, name: [{ family: `Bench${i}` }] });
    const load = await loadCgmObservations(app.repository as NotifyingRepository, { total: n, patients, chunk: 10_000 });
    log(`loaded ${load.loaded} readings over ${patients} patients in ${fmt(load.seconds, 1)} s (through the ledger decorator)`);
    const { resource: doc } = await app.repository.create<Practitioner>({ resourceType: 'Practitioner', name: [{ family: 'Bench' }] });
    await app.consent.identity.registerGrantee(`Practitioner/${doc.id}`, Wallet.createRandom().address);
    const now = Date.now();
    const granted = Math.floor(patients / 2);
    for (let i = 0; i < granted; i++) {
      await app.consent.service.grant(consentFromOptions({
        patient: `pat-${i}`, to: `Practitioner/${doc.id}`, dataFrom: '2025-12-01T00:00:00Z', dataTo: new Date(now + 86_400_000).toISOString(),
        until: new Date(now + 86_400_000).toISOString(), purpose: ['TREAT', 'HRESCH'], types: ['Observation'],
      }), OPEN_ACCESS);
    }
    const expectedGranted = Math.min(load.loaded, granted * Math.ceil(n / patients));
    const practitioner = (purpose: string): AccessContext & { purposeOfUse: string } => ({
      kind: 'token', clientId: 'bench-ehr', subject: `Practitioner/${doc.id}`, fhirUser: `Practitioner/${doc.id}`,
      scopes: ['user/*.rs', 'user/Subscription.cud'], purposeOfUse: purpose,
    });

    for (const [label, access, expected] of [
      ['operator (open access)', OPEN_ACCESS, load.loaded],
      ['practitioner, consent-filtered', practitioner('TREAT'), expectedGranted],
      ['research, consent-filtered + de-identified', practitioner('HRESCH'), expectedGranted],
    ] as const) {
      global.gc?.();
      const before = rssMb();
      let peak = before;
      const sampler = setInterval(() => { peak = Math.max(peak, rssMb()); }, 20);
      const t0 = performance.now();
      const job = app.exchange.exports.submit(access, { level: 'system', types: ['Observation'], explicitTypes: true, typeFilters: {} }, 'bench');
      const done = (await app.exchange.exports.whenDone(job.id, 20)) as ExportJob;
      const seconds = (performance.now() - t0) / 1000;
      clearInterval(sampler);
      peak = Math.max(peak, rssMb());
      const count = done.outputs.reduce((s, f) => s + f.count, 0);
      if (done.status !== 'completed' || count !== expected) throw new Error(`${label}: export ${done.status}, ${count} resources, expected ${expected}`);
      log(`export ${label}: ${count} of ${load.loaded} Observations in ${fmt(seconds, 1)} s (${fmt(count / seconds / 1000, 1)} k/s), RSS ${fmt(before, 0)} → peak ${fmt(peak, 0)} MB`);
      const key = label.split(' ')[0]!.replace(',', '');
      out[`export_${key}_s`] = seconds;
      out[`export_${key}_peakRssMb`] = peak;
      out[`export_${key}_count`] = count;
      rmSync(path.join(dataDir, 'exports', job.id), { recursive: true, force: true });
    }
    Object.assign(out, await notificationLatency(app, practitioner('TREAT'), notifications, log));
  } finally {
    await app.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
  return out;
}

/** Ingest of one Nightscout reading for a granted patient → event notification received. */
async function notificationLatency(app: App, access: AccessContext, count: number, log: Log): Promise<Record<string, number>> {
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
    for (let i = 0; i < count; i++) {
      const epochMs = Math.floor(start / 60_000) * 60_000 + i * 10_000;
      const text = `[{"_id":"${i.toString(16).padStart(24, '0')}","type":"sgv","sgv":${100 + (i % 50)},"date":${epochMs},"dateString":"${new Date(epochMs).toISOString()}","device":"bench"}]`;
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
