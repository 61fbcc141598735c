/**
 * The `cgm` suite of `npm run bench`: parse/convert/validate figures (bench/cgm-ingest.ts), then the
 * stored-readings rate of the ingest service on the embedded repository for a 90-day, 5-minute
 * Nightscout trace (25,920 readings), the re-import rate (all unchanged), a dry run of it and the
 * removal of the import, and peak RSS.
 *
 *   npm run build && BENCH=cgm node --expose-gc bench/run.mjs
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Patient } from '@medplum/fhirtypes';
import { run as runParse, writeNightscout } from './cgm-ingest.js';
import { createApp, type App } from '../src/app.js';
import { readCgm, toResources } from '../src/cgm/index.js';
import { loadConfig } from '../src/config.js';
import { OPEN_ACCESS } from '../src/fhir/access.js';
import { createLogger } from '../src/log.js';
import { CgmIngestService } from '../src/cgm/service.js';
import { shapeCachedCheck } from '../src/cgm/validate.js';
import { ProfileValidator } from '../src/fhir/validation.js';
import { PROFILES_DIR } from '../src/paths.js';
import { EmbeddedRepository } from '../src/repository/embedded/index.js';

type Log = (line: string) => void;

const FIVE_MIN = 5 * 60_000;


/**
 * The same ingest through the composition root (createApp: embedded repository behind the ledger's
 * decorator, so every version's commitment is recorded and queued for anchoring, embedded chain).
 */
async function throughApp(file: string, readings: number, dir: string, results: Record<string, number>, log: Log): Promise<void> {
  let app: App | undefined;
  try {
    app = await createApp(loadConfig({
      GLUCOGUARD_DATA_DIR: path.join(dir, 'app'), GLUCOGUARD_BASE_URL: 'http://127.0.0.1:8080', GLUCOGUARD_AUTH: 'off',
      LOG_LEVEL: 'silent', CHAIN_BLOCK_PERIOD: '0', CHAIN_PORT: '0',
    }), { logger: createLogger('silent') });
    const { resource: patient } = await app.repository.create<Patient>({ resourceType: 'Patient', name: [{ family: 'Bench' }] });
    const t0 = process.hrtime.bigint();
    const cpu0 = process.cpuUsage();
    const report = await app.cgm.ingest.ingest(file, { patient: patient.id! });
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    const cpu = process.cpuUsage(cpu0);
    if (report.created !== readings) throw new Error(`expected ${readings} created, got ${report.created}`);
    results.storedCommittedReadingsPerSec = Math.round(readings / (ms / 1000));
    results.storedCommittedReadingsPerCpuSec = Math.round(readings / ((cpu.user + cpu.system) / 1e6));
    log(`same ingest through createApp (ledger commitments recorded on every version, embedded chain): ${ms.toFixed(0)} ms → ${results.storedCommittedReadingsPerSec} stored + committed readings/s; ${results.storedCommittedReadingsPerCpuSec} per CPU-second`);
    // $cgm-summary end to end: readings searched through the facade (policy, guards), decrypted, computed.
    for (const [label, params] of [['default 14 days', {}], ['90 days', { start: report.first!, end: new Date(Date.parse(report.last!) + 1).toISOString() }]] as const) {
      const t1 = process.hrtime.bigint();
      const response = await app.cgm.operations.summary(OPEN_ACCESS, patient.id!, params);
      const summaryMs = Number(process.hrtime.bigint() - t1) / 1e6;
      if (response.status !== 200) throw new Error(`$cgm-summary answered ${response.status}`);
      results[label === '90 days' ? 'summaryThroughFacade90dMs' : 'summaryThroughFacade14dMs'] = Math.round(summaryMs);
      log(`$cgm-summary through the facade (search, guards, decrypt, compute), ${label}: ${summaryMs.toFixed(0)} ms`);
    }
  } catch (err) {
    log(`ingest through createApp not measured: ${(err as Error).message}`);
  } finally {
    await app?.close();
  }
}

export async function run(log: Log): Promise<Record<string, number>> {
  // CGM_BENCH_STORE_ONLY=1 skips the parse/convert figures (quicker when working on storage).
  const results: Record<string, number> = process.env.CGM_BENCH_STORE_ONLY ? {} : { ...await runParse(log) };
  const dir = mkdtempSync(path.join(tmpdir(), 'cgm-store-bench-'));
  try {
    const readings = 90 * 288;
    const file = path.join(dir, 'ns-90d.json');
    await writeNightscout(file, readings, Date.now() - (readings + 12) * FIVE_MIN, { seed: 11, ids: false });
    const repository = await EmbeddedRepository.open({ dataDir: dir, masterKey: Buffer.alloc(32, 7).toString('base64') });
    try {
      const validator = new ProfileValidator(PROFILES_DIR);
      const service = new CgmIngestService({
        repository, check: shapeCachedCheck((r) => validator.check(r)), defaultTimeZone: 'UTC', bulkCreate: (r) => repository.createMany(r),
      });
      const { resource: patient } = await repository.create<Patient>({ resourceType: 'Patient', name: [{ family: 'Bench' }] });
      const rssBefore = process.memoryUsage().rss / 1024 / 1024;
      const t0 = process.hrtime.bigint();
      const cpu0 = process.cpuUsage();
      const first = await service.ingest(file, { patient: patient.id! });
      const firstMs = Number(process.hrtime.bigint() - t0) / 1e6;
      const cpu = process.cpuUsage(cpu0);
      if (first.created !== readings) throw new Error(`expected ${readings} created, got ${first.created}`);
      results.peakRssMbIngest = Math.round(process.resourceUsage().maxRSS / 1024);
      results.storedReadingsPerSec = Math.round(readings / (firstMs / 1000));
      results.storedReadingsPerCpuSec = Math.round(readings / ((cpu.user + cpu.system) / 1e6));
      log(`ingest 90 days (${readings} readings) into the embedded repository (parse, convert, shape-cached validation, bulk identifier lookup, transactions of 2,000): ${firstMs.toFixed(0)} ms → ${results.storedReadingsPerSec} stored readings/s (target ≥ 5,000/s); ${results.storedReadingsPerCpuSec} readings per CPU-second (what an unloaded core would give)`);
      const t1 = process.hrtime.bigint();
      const again = await service.ingest(file, { patient: patient.id! });
      const againMs = Number(process.hrtime.bigint() - t1) / 1e6;
      if (again.unchanged !== readings || again.created !== 0) throw new Error('re-import was not idempotent');
      results.reimportReadingsPerSec = Math.round(readings / (againMs / 1000));
      log(`re-import of the same file (all ${again.unchanged} unchanged, 0 created): ${againMs.toFixed(0)} ms → ${results.reimportReadingsPerSec} readings/s`);
      // The preview and the undo of the same 90 days: a dry run for a patient who has none of it
      // (parse, convert, validate, look up; nothing written), then the removal of the first import.
      const { resource: other } = await repository.create<Patient>({ resourceType: 'Patient', name: [{ family: 'Bench' }] });
      const t3 = process.hrtime.bigint();
      const preview = await service.ingest(file, { patient: other.id!, dryRun: true });
      const previewMs = Number(process.hrtime.bigint() - t3) / 1e6;
      if (preview.created !== readings) throw new Error(`dry run: expected ${readings} to be created, got ${preview.created}`);
      results.dryRunReadingsPerSec = Math.round(readings / (previewMs / 1000));
      log(`dry run of the same file for another patient (all ${readings} would be created, nothing written): ${previewMs.toFixed(0)} ms → ${results.dryRunReadingsPerSec} readings/s, ${(previewMs / firstMs).toFixed(2)} × the import's time`);
      const t4 = process.hrtime.bigint();
      const removal = await service.ingest(file, { patient: patient.id!, remove: true });
      const removalMs = Number(process.hrtime.bigint() - t4) / 1e6;
      if (removal.removed !== readings) throw new Error(`removal: expected ${readings} removed, got ${removal.removed}`);
      results.removedReadingsPerSec = Math.round(readings / (removalMs / 1000));
      log(`removal of the first import (all ${readings} deleted, each a deleted version): ${removalMs.toFixed(0)} ms → ${results.removedReadingsPerSec} readings/s, ${(removalMs / firstMs).toFixed(2)} × the import's time`);
      // Baseline in the same run: the embedded repository's raw bulk insert (createMany, no lookup, no
      // validation) of the same resources into a fresh store; the ratio shows what ingest adds.
      const baseDir = mkdtempSync(path.join(tmpdir(), 'cgm-store-base-'));
      try {
        const base = await EmbeddedRepository.open({ dataDir: baseDir, masterKey: Buffer.alloc(32, 7).toString('base64') });
        const { records } = await readCgm(file);
        const resources = toResources(records, { patient: 'Patient/bench' }).map((e) => e.resource);
        const t2 = process.hrtime.bigint();
        const baseCpu0 = process.cpuUsage();
        await base.createMany(resources);
        const baseMs = Number(process.hrtime.bigint() - t2) / 1e6;
        const baseCpu = process.cpuUsage(baseCpu0);
        results.baselineCreateManyPerCpuSec = Math.round(resources.length / ((baseCpu.user + baseCpu.system) / 1e6));
        results.ingestVsCreateManyCpu = Number((results.storedReadingsPerCpuSec! / results.baselineCreateManyPerCpuSec).toFixed(2));
        await base.close();
        results.baselineCreateManyPerSec = Math.round(resources.length / (baseMs / 1000));
        results.ingestVsCreateMany = Number((results.storedReadingsPerSec / results.baselineCreateManyPerSec).toFixed(2));
        log(`baseline, same run: repository createMany of the same ${resources.length} resources: ${baseMs.toFixed(0)} ms → ${results.baselineCreateManyPerSec}/s; ingest runs at ${results.ingestVsCreateMany} × the raw bulk insert (wall clock), ${results.ingestVsCreateManyCpu} × per CPU-second (${results.baselineCreateManyPerCpuSec} resources per CPU-second for createMany)`);
      } finally {
        rmSync(baseDir, { recursive: true, force: true });
      }
      results.loadAverage1m = Number(loadavg()[0]!.toFixed(2));
      log(`machine load average (1 min) at the end: ${results.loadAverage1m} on ${cpus().length} cores (figures scale with it)`);
      log(`peak RSS of the process right after the first ingest: ${results.peakRssMbIngest} MB (RSS before ingest ${rssBefore.toFixed(0)} MB)`);
    } finally {
      await repository.close();
    }
    await throughApp(file, readings, dir, results, log);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return results;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  await run((line) => console.log(line));
}
