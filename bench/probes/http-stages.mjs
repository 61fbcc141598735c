// HTTP facade vs direct repository call on a kept fhir-search store (DIR, default /tmp/fs200k): MODE=http|direct, N queries, STAGES=1 times the router, its guards and the repository search inside the server, PROF=1 writes <mode>.cpuprofile.
import { D, openKeptStore } from './kept-store.mjs';
const { HttpClient } = await import(`${D}/bench/http-client.js`);
const { parseSearchRequest } = await import('@medplum/core');
const { app, queries } = await openKeptStore('/tmp/fs200k');
const N = Number(process.env.N ?? 600);
const qs = queries(N);
const server = app.http.listen(0, '127.0.0.1');
await new Promise((r) => server.once('listening', r));
const client = new HttpClient(server.address().port);
const srv = [];
server.prependListener('request', (req, res) => { const t0 = performance.now(); res.on('finish', () => srv.push(performance.now() - t0)); });
const mode = process.env.MODE ?? 'http';
const st = {};
const rec = (k, v) => (st[k] ??= []).push(v);
const wrap = (obj, name, key) => { const f = obj[name].bind(obj); obj[name] = async (...a) => { const t = performance.now(); try { return await f(...a); } finally { rec(key, performance.now() - t); } }; };
if (process.env.STAGES) {
  const router = app.fhir;
  wrap(router, 'handle', 'handle');
  wrap(router.options.repository, 'search', 'repo.search');
  for (const [i, g] of router.guards.entries()) wrap(g, 'guard', 'guard' + i + ':' + g.constructor.name);
}
const times = [];
const { Session } = await import('node:inspector/promises');
const s = new Session(); s.connect();
if (process.env.PROF) { await s.post('Profiler.enable'); await s.post('Profiler.setSamplingInterval', { interval: 100 }); }
let started = false;
for (let i = 0; i < N; i++) {
  if (i === 100 && process.env.PROF) { await s.post('Profiler.start'); started = true; }
  app.readCache?.clear();
  if (mode === 'direct') { const t0 = performance.now(); await app.repository.search(parseSearchRequest(qs[i])); times.push(performance.now() - t0); }
  else times.push(...(await client.run([`/fhir/${qs[i]}`])).times);
}
if (started) { const { profile } = await s.post('Profiler.stop'); (await import('node:fs')).writeFileSync(`${mode}.cpuprofile`, JSON.stringify(profile)); }
const t = times.slice(100).sort((a, b) => a - b);
const sv = srv.slice(100).sort((a,b)=>a-b); if (sv.length) console.log('server-side handler p50', sv[Math.floor(sv.length/2)].toFixed(2));
for (const [k, v] of Object.entries(st)) { const x = v.slice(-500).sort((a,b)=>a-b); console.log(k, 'p50', x[Math.floor(x.length/2)].toFixed(2), 'n', v.length); }
console.log(mode, 'p50', t[Math.floor(t.length / 2)].toFixed(2), 'p95', t[Math.floor(t.length * 0.95)].toFixed(2));
await client.close(); server.close(); await app.close(); process.exit(0);
