// Would checking integrity on a second thread, overlapped with the search, pay? On a kept fhir-search store (DIR, default /tmp/fs1m),
// N=400 unseen patient-day queries taking turns three ways: the deferred search alone; the search then IntegrityChecker.checkMany on
// this thread (as served); the search posting each decrypted version's key and text to a worker (integrity-worker-thread.mjs,
// chunks of CH=48) that looks up its commitments and hashes while the search goes on, then waiting for its roots. NOP=1: the worker
// only receives (the cost of handing the texts over). Probe only: the product has no such worker (session 29: it did not pay).
import { Worker } from 'node:worker_threads';
import path from 'node:path';
import { openKeptStore, D } from './kept-store.mjs';
const { parseSearchRequest } = await import('@medplum/core');
const { EmbeddedRepository } = await import(`${D}/src/repository/embedded/index.js`);
const { deferredCanonicalText } = await import(`${D}/src/repository/deferred.js`);
const { app, queries } = await openKeptStore('/tmp/fs1m');
const w = new Worker(new URL('./integrity-worker-thread.mjs', import.meta.url), { workerData: { D, file: app.ledger.store.file, nop: !!process.env.NOP } });
await new Promise((r) => setTimeout(r, 3000));
const CH = Number(process.env.CH ?? 48);
let sink = null;
const orig = EmbeddedRepository.prototype.decode;
EmbeddedRepository.prototype.decode = function (row, c, deferred) {
  const r = orig.call(this, row, c, deferred);
  if (sink && r && deferred) { sink.keys.push({ type: row.type, id: row.id, version: String(row.version) }); sink.texts.push(deferredCanonicalText(r) ); if (sink.keys.length === CH) flush(); }
  return r;
};
let base = 0;
function flush() { if (!sink.keys.length) return; w.postMessage({ keys: sink.keys, texts: sink.texts, base }); base += sink.keys.length; sink.keys = []; sink.texts = []; }
const N = 400; const qs = queries(N);
const st = {}; const rec = (k, v) => (st[k] ??= []).push(v);
const checker = app.ledger.checker;
for (let i = 0; i < N; i++) {
  const mode = i % 3;
  app.readCache?.clear(); checker.clearCache();
  const t = performance.now();
  if (mode === 0) {
    const r = await app.repository.search(parseSearchRequest(qs[i]), { deferred: true });
    rec('search', performance.now() - t);
  } else if (mode === 1) {
    const r = await app.repository.search(parseSearchRequest(qs[i]), { deferred: true });
    const res = await checker.checkMany(r.resources);
    rec('search+checkMany', performance.now() - t);
  } else {
    sink = { keys: [], texts: [] }; base = 0;
    const r = await app.repository.search(parseSearchRequest(qs[i]), { deferred: true });
    flush(); sink = null;
    const t1 = performance.now();
    w.postMessage({ end: true });
    const ans = await new Promise((res) => w.once('message', res));
    rec('search+worker', performance.now() - t);
    rec('wait after search', performance.now() - t1);
    if (ans.rest) rec('rest', ans.rest);
  }
}
for (const [k, v] of Object.entries(st)) { const x = v.slice(20).sort((a,b)=>a-b); console.log(k.padEnd(20), 'p50', x[Math.floor(x.length/2)]?.toFixed(2), 'n', v.length); }
await w.terminate(); await app.close(); process.exit(0);
