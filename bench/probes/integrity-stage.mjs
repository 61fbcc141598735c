// The repository search and the integrity check of its answer as on a first read, in-process on a kept fhir-search store (DIR, default /tmp/fs1m-s16), N=400 queries: p50 of each and of the commitment lookup (treeGroups). DEFER=1 asks the search for deferred resources, as the router does; PROF=1 writes integ.cpuprofile.
import { readFileSync } from 'node:fs';
import path from 'node:path';
const D = path.resolve(process.env.D ?? 'dist');
const { createApp } = await import(`${D}/src/app.js`);
const { loadConfig } = await import(`${D}/src/config.js`);
const { createLogger } = await import(`${D}/src/log.js`);
const { patientDayQuery } = await import(`${D}/bench/repository-load.js`);
const { parseSearchRequest } = await import('@medplum/core');
const dir = process.env.DIR ?? '/tmp/fs1m-s16';
const setup = JSON.parse(readFileSync(path.join(dir, 'bench-setup.json'), 'utf8'));
const app = await createApp(loadConfig({ ...process.env, GLUCOGUARD_DATA_DIR: dir, GLUCOGUARD_AUTH: 'off', LOG_LEVEL: 'silent', GLUCOGUARD_MAX_PAGE_SIZE: '1000', CHAIN_PORT: '0', CHAIN_BLOCK_PERIOD: '0' }), { logger: createLogger('silent') });
if (process.env.WAIT) await new Promise((r) => setTimeout(r, Number(process.env.WAIT)));
const N = Number(process.env.N ?? 400);
const qs = Array.from({ length: N }, (_, i) => patientDayQuery(setup.patientIds[(i * 37) % setup.patientIds.length], new Date(Date.parse('2026-01-01T00:00:00Z') + ((i * 13) % setup.days) * 86400000).toISOString().slice(0, 10)));
const st = {}; const rec = (k, v) => (st[k] ??= []).push(v);
const store = app.ledger.store, checker = app.ledger.checker;
const tg = store.treeGroups.bind(store); store.treeGroups = (...a) => { const t = performance.now(); try { return tg(...a); } finally { rec('treeGroups', performance.now() - t); } };
const { Session } = await import("node:inspector/promises"); const s = new Session(); s.connect(); if (process.env.PROF) { await s.post("Profiler.enable"); await s.post("Profiler.setSamplingInterval", { interval: 50 }); await s.post("Profiler.start"); }
for (let i = 0; i < N; i++) {
  app.readCache?.clear(); checker.clearCache();
  let t = performance.now();
  const r = await app.repository.search(parseSearchRequest(qs[i]), { deferred: !!process.env.DEFER });
  rec('search', performance.now() - t);
  t = performance.now();
  const res = await checker.checkMany(r.resources);
  rec('checkMany', performance.now() - t);
  if (res.some((x) => x.status !== 'verified')) rec('notverified', 1);
}
if (process.env.PROF) { const { profile } = await s.post("Profiler.stop"); (await import("node:fs")).writeFileSync("integ.cpuprofile", JSON.stringify(profile)); }
for (const [k, v] of Object.entries(st)) { const x = v.slice(100).sort((a,b)=>a-b); console.log(k, 'p50', x[Math.floor(x.length/2)]?.toFixed(2), 'n', v.length); }
await app.close(); process.exit(0);
