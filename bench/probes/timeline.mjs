// The patient-day query over HTTP on a kept fhir-search store (DIR, default /tmp/fs1m-s16), 500 queries in rounds of 50: client p50, GC ms per request, and in the server the router, its guards, the repository search and the access log's writes (p50 and mean). NOAUDIT=1 records no AuditEvents.
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';
import { serveKeptStore } from './kept-store.mjs';
const { app, queries, server, client } = await serveKeptStore('/tmp/fs1m-s16');
const N = Number(process.env.N ?? 500);
const qs = queries(N);
const acc = {}; const add = (k, v) => { (acc[k] ??= []).push(v); };
let cur = null;
server.prependListener('request', (req, res) => { cur = { t0: performance.now() }; const c = cur; res.on('finish', () => { c.fin = performance.now(); add('req→finish', c.fin - c.t0); if (c.hs) add('req→handle', c.hs - c.t0); if (c.he) add('handle→finish', c.fin - c.he); }); });
const wrap = (obj, name, key, mark) => { const f = obj[name].bind(obj); obj[name] = (...a) => { const t = performance.now(); if (mark && cur) cur[mark + 's'] = t; const r = f(...a); const end = () => { add(key, performance.now() - t); if (mark && cur) cur[mark + 'e'] = performance.now(); }; if (r && typeof r.then === 'function') return r.finally(end); end(); return r; }; };
wrap(app.fhir, 'handle', 'handle', 'h');
wrap(app.fhir.options.repository, 'search', 'repo.search');
for (const [i, g] of app.fhir.guards.entries()) wrap(g, 'guard', 'guard' + i);
const rec = app.consent.audit; if (process.env.NOAUDIT) rec.record = () => {}; wrap(rec, 'drain', 'audit.drain(sync)');
const repo = app.ledger.repository; if (repo.createMany) wrap(repo, 'createMany', 'audit.createMany');
wrap(repo, 'create', 'audit.create');
let gcMs = 0; new PerformanceObserver((l) => { for (const e of l.getEntries()) gcMs += e.duration; }).observe({ entryTypes: ['gc'] });
const h = monitorEventLoopDelay({ resolution: 1 }); 
const times = [];
for (let i = 0; i < N; i += 50) { app.readCache?.clear(); times.push(...(await client.run(qs.slice(i, i + 50).map((q) => `/fhir/${q}`))).times); }
const p = (a) => { const t = a.slice(50).sort((x, y) => x - y); return t[Math.floor(t.length / 2)]?.toFixed(2); };
const mean = (a) => (a.slice(50).reduce((x, y) => x + y, 0) / (a.length - 50)).toFixed(2);
console.log('client p50', p(times), 'mean', mean(times), 'gc ms/req', (gcMs / N).toFixed(2));
for (const [k, v] of Object.entries(acc)) console.log(k.padEnd(22), 'p50', p(v), 'mean', mean(v), 'n', v.length);
await client.close(); server.close(); await app.close(); process.exit(0);
