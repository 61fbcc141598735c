// A/B in one process of two builds' Bundle writers (A=<dist dir>, default /tmp/prev/dist; B=<dist dir>, default dist/): one patient-day's
// 288 readings from a kept fhir-search store (DIR, default /tmp/fs1m), read deferred as the router reads them, then their searchset written
// to bytes as the facade sends it — jsonChunks + byteLengthOf + each piece encoded (builds before 7086a79) or jsonBody + byteLengthOf (since);
// ROUNDS=400 rounds over 40 pages taking turns; p50 ms per page.
import path from 'node:path';
import { D, openKeptStore } from './kept-store.mjs';
const { parseSearchRequest } = await import('@medplum/core');
const dirs = { A: path.resolve(process.env.A ?? '/tmp/prev/dist'), B: path.resolve(process.env.B ?? 'dist') };
const builds = { A: await import(`${dirs.A}/src/fhir/json-text.js`), B: await import(`${dirs.B}/src/fhir/json-text.js`) };
const deferredOf = { A: await import(`${dirs.A}/src/repository/deferred.js`), B: await import(`${dirs.B}/src/repository/deferred.js`) };
const { app, queries } = await openKeptStore('/tmp/fs1m');
const { deferredCanonicalText } = await import(`${D}/src/repository/deferred.js`);
// each page's stored texts and row meta, made deferred by each build's own module (a build knows only its own)
const stored = [];
for (const q of queries(40)) {
  app.readCache?.clear();
  const rs = (await app.repository.search(parseSearchRequest(q), { deferred: true })).resources;
  stored.push(rs.map((r) => ({ text: deferredCanonicalText(r), meta: { versionId: r.meta.versionId, lastUpdated: r.meta.lastUpdated } })));
}
await app.close();
if (stored.some((p) => p.some((x) => typeof x.text !== 'string'))) throw new Error('the store answered resources that are not deferred');
const pagesOf = Object.fromEntries(['A', 'B'].map((k) => [k, stored.map((p) => p.map(({ text, meta }) => deferredOf[k].deferredResource(text, meta, () => JSON.parse(text))))]));
const bundle = (rs) => ({ resourceType: 'Bundle', type: 'searchset', link: [{ relation: 'self', url: 'http://x/fhir/Observation?patient=p' }], entry: rs.map((r) => ({ fullUrl: `http://x/fhir/Observation/${r.id}`, resource: r, search: { mode: 'match' } })) });
/** The bytes a build sends for `body`, as its http.ts does. */
const bytes = (M, body) => {
  if (M.jsonBody) { const b = M.jsonBody(body); return M.byteLengthOf(b) + (typeof b === 'string' ? Buffer.from(b).length : b.length); }
  const chunks = M.jsonChunks(body);
  let n = M.byteLengthOf(chunks);
  for (const c of chunks) n += Buffer.from(c, 'utf8').length; // what each write encodes
  return n;
};
const rounds = Number(process.env.ROUNDS ?? 400);
const times = { A: [], B: [] };
const sizes = { A: 0, B: 0 };
for (let round = 0; round < rounds; round++) {
  for (const k of ['A', 'B']) {
    const body = bundle(pagesOf[k][round % stored.length]);
    const t = performance.now();
    sizes[k] = bytes(builds[k], body);
    times[k].push(performance.now() - t);
  }
  if (sizes.A !== sizes.B) throw new Error(`the builds wrote ${sizes.A / 2} and ${sizes.B / 2} bytes`);
}
for (const k of ['A', 'B']) {
  const t = times[k].slice(Math.floor(rounds / 10)).sort((a, b) => a - b);
  console.log(`${k} (${dirs[k]}): p50 ${t[t.length >> 1].toFixed(3)} ms per page of ${stored[0].length}`);
}
process.exit(0);
