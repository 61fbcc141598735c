// One CGM ingest (90 days of Nightscout readings) into a fresh embedded store, timed; PROF=1 also writes ingest.cpuprofile. D=<dist dir> runs another build.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
const D = path.resolve(process.env.D ?? 'dist');
const { writeNightscout } = await import(`${D}/bench/cgm-ingest.js`);
const { EmbeddedRepository } = await import(`${D}/src/repository/embedded/index.js`);
const { CgmIngestService } = await import(`${D}/src/cgm/service.js`);
const { shapeCachedCheck } = await import(`${D}/src/cgm/validate.js`);
const { ProfileValidator } = await import(`${D}/src/fhir/validation.js`);
const { PROFILES_DIR } = await import(`${D}/src/paths.js`);
const dir = mkdtempSync(path.join(tmpdir(), 'ingest-once-'));
const readings = 90 * 288;
const file = path.join(dir, 'ns.json');
await writeNightscout(file, readings, Date.now() - (readings + 12) * 300000, { seed: 11, ids: false });
const repository = await EmbeddedRepository.open({ dataDir: dir, masterKey: Buffer.alloc(32, 7).toString('base64') });
const validator = new ProfileValidator(PROFILES_DIR);
const service = new CgmIngestService({ repository, check: shapeCachedCheck((r) => validator.check(r)), defaultTimeZone: 'UTC', bulkCreate: (r) => repository.createMany(r) });
const { resource: patient } = await repository.create({ resourceType: 'Patient', name: [{ family: 'Bench' }] });
global.gc?.();
const { Session } = await import('node:inspector/promises');
const s = new Session(); s.connect();
if (process.env.PROF) { await s.post('Profiler.enable'); await s.post('Profiler.setSamplingInterval', { interval: 200 }); await s.post('Profiler.start'); }
const t0 = performance.now();
const r = await service.ingest(file, { patient: patient.id });
const ms = performance.now() - t0;
if (process.env.PROF) { const { profile } = await s.post('Profiler.stop'); (await import('node:fs')).writeFileSync('ingest.cpuprofile', JSON.stringify(profile)); }
console.log(`${r.created} created in ${ms.toFixed(0)} ms → ${Math.round(readings / (ms / 1000))}/s`);
await repository.close();
rmSync(dir, { recursive: true, force: true });
