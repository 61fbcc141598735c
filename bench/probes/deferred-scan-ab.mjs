// A/B in one process of two builds' deferred resources (A=<dist dir>, default /tmp/prev/dist; B=<dist dir>, default dist/): the 288
// stored texts of one patient-day from a kept fhir-search store (DIR, default /tmp/fs1m), made deferred and read as the integrity check
// reads them (deferredResource + deferredCanonicalText + versionIdOf: the text's top-level scan; JSON=1: then their JSON text as the
// facade serialises them, deferredJsonText), ROUNDS=2000 rounds taking turns; p50 and p10 ms per 288.
import path from 'node:path';
import { openKeptStore } from './kept-store.mjs';
const { parseSearchRequest } = await import('@medplum/core');
const dirs = { A: path.resolve(process.env.A ?? '/tmp/prev/dist'), B: path.resolve(process.env.B ?? 'dist') };
const builds = { A: await import(`${dirs.A}/src/repository/deferred.js`), B: await import(`${dirs.B}/src/repository/deferred.js`) };
const { app, queries } = await openKeptStore('/tmp/fs1m');
const r = await app.repository.search(parseSearchRequest(queries(1)[0]), { deferred: true });
const { deferredCanonicalText } = await import(`${process.env.D ? path.resolve(process.env.D) : path.resolve('dist')}/src/repository/deferred.js`);
const texts = r.resources.map((x) => deferredCanonicalText(x));
await app.close();
if (texts.some((t) => typeof t !== 'string')) throw new Error('the store answered resources that are not deferred');
const meta = { versionId: '1', lastUpdated: '2026-01-01T00:00:00.000Z' };
const rounds = Number(process.env.ROUNDS ?? 2000);
const times = { A: [], B: [] };
for (let round = 0; round < rounds; round++) {
  for (const k of ['A', 'B']) {
    const M = builds[k];
    const t = performance.now();
    for (const text of texts) {
      const d = M.deferredResource(text, meta, () => JSON.parse(text));
      if (M.deferredCanonicalText(d) !== text || M.versionIdOf(d) !== '1') throw new Error(`${k}: the text did not read back`);
      if (process.env.JSON && typeof M.deferredJsonText(d) !== 'string') throw new Error(`${k}: no JSON text cut`);
    }
    times[k].push(performance.now() - t);
  }
}
for (const k of ['A', 'B']) {
  const t = times[k].slice(Math.floor(rounds / 10)).sort((a, b) => a - b);
  console.log(`${k} (${dirs[k]}): p50 ${t[t.length >> 1].toFixed(3)} ms, p10 ${t[Math.floor(t.length / 10)].toFixed(3)} ms per ${texts.length}`);
}
process.exit(0);
