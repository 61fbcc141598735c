// How far the facade is from the direct call with parts of its work taken out, on a kept fhir-search store (DIR, default /tmp/fs1m-s16):
// unseen patient-day queries, 25 per way and round, the ways taking turns: direct repository call; HTTP as served; HTTP with the integrity guard answering
// "all proven" without checking; HTTP with that and no AuditEvents. Probe only: the stand-ins exist in this script, not in the product.
import { serveKeptStore } from './kept-store.mjs';
const { parseSearchRequest } = await import('@medplum/core');
const { app, queries, server, client } = await serveKeptStore('/tmp/fs1m-s16');
const N = Number(process.env.N ?? 600);
const qs = queries(N);
const guards = app.fhir.guards;
const integrity = guards.findIndex((g) => g.constructor.name === 'IntegrityGuard');
if (integrity < 0) throw new Error('no integrity guard');
const real = guards[integrity];
const passThrough = { guard: async (_a, resources) => ({ allowed: resources.slice(), issues: [] }) };
const rec = app.consent.audit; const record = rec.record.bind(rec);
const modes = {
  direct: async (batch) => { const out = []; for (const q of batch) { const t = process.hrtime.bigint(); const r = await app.repository.search(parseSearchRequest(q)); out.push(Number(process.hrtime.bigint() - t) / 1e6); if (r.resources.length !== 288) throw new Error('not 288'); } return out; },
  http: async (batch) => (await client.run(batch.map((q) => `/fhir/${q}`))).times,
  'http, integrity stood in for': async (batch) => { guards[integrity] = passThrough; try { return (await client.run(batch.map((q) => `/fhir/${q}`))).times; } finally { guards[integrity] = real; } },
  'http, integrity stood in for, no access log': async (batch) => { guards[integrity] = passThrough; rec.record = () => {}; try { return (await client.run(batch.map((q) => `/fhir/${q}`))).times; } finally { guards[integrity] = real; rec.record = record; } },
};
const names = Object.keys(modes);
const times = Object.fromEntries(names.map((n) => [n, []]));
const per = 25;
for (let i = 0, round = 0; i + per * names.length <= N; i += per * names.length, round++) {
  for (let k = 0; k < names.length; k++) {
    const name = names[(k + round) % names.length];
    const slot = names.indexOf(name);
    app.readCache?.clear();
    const ts = await modes[name](qs.slice(i + slot * per, i + (slot + 1) * per));
    if (round > 0) times[name].push(...ts);
  }
}
const p50 = (a) => a.slice().sort((x, y) => x - y)[a.length >> 1];
const d = p50(times.direct);
for (const n of names) console.log(n.padEnd(46), 'p50', p50(times[n]).toFixed(2), 'ms', (p50(times[n]) / d).toFixed(2) + 'x direct', 'n', times[n].length);
await client.close(); server.close(); await app.close(); process.exit(0);
