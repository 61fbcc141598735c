// The repository search and the integrity check of its answer as on a first read (AHEAD=1: of versions proven ahead at start-up), in-process on a kept fhir-search store (DIR, default /tmp/fs1m-s16), N=400 queries: p50 of each and of the commitment lookup (treeGroups). DEFER=1 asks the search for deferred resources, as the router does; PROF=1 writes integ.cpuprofile.
import { openKeptStore } from './kept-store.mjs';
const { parseSearchRequest } = await import('@medplum/core');
const { app, queries } = await openKeptStore('/tmp/fs1m-s16');
if (process.env.AHEAD) await app.ledger.warmed(); // AHEAD=1: first reads of versions proven ahead (the cache of verified versions emptied, not the proven index)
if (process.env.WAIT) await new Promise((r) => setTimeout(r, Number(process.env.WAIT)));
const N = Number(process.env.N ?? 400);
const qs = queries(N);
const st = {}; const rec = (k, v) => (st[k] ??= []).push(v);
const store = app.ledger.store, checker = app.ledger.checker;
const tg = store.treeGroups.bind(store); store.treeGroups = (...a) => { const t = performance.now(); try { return tg(...a); } finally { rec('treeGroups', performance.now() - t); } };
const { Session } = await import("node:inspector/promises"); const s = new Session(); s.connect(); if (process.env.PROF) { await s.post("Profiler.enable"); await s.post("Profiler.setSamplingInterval", { interval: 50 }); await s.post("Profiler.start"); }
for (let i = 0; i < N; i++) {
  app.readCache?.clear(); if (process.env.AHEAD) checker.verified.clear(); else checker.clearCache();
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
