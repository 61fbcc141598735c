// Proving ahead at start-up (GLUCOGUARD_PROVE_AHEAD) on a kept fhir-search store (DIR, default /tmp/fs1m): the app opened, then its background
// reads (roots, versions proven ahead) awaited: seconds, versions kept, the event loop's stalls over 8 ms meanwhile, and RSS / heap / buffers
// before and after (after a gc). GLUCOGUARD_PROVE_AHEAD=0 for the comparison.
import { openKeptStore } from './kept-store.mjs';
const t0 = performance.now();
const { app } = await openKeptStore('/tmp/fs1m');
const t1 = performance.now();
global.gc?.();
const before = process.memoryUsage();
let worst = 0;
let last = performance.now();
const stalls = [];
const tick = setInterval(() => {
  const now = performance.now();
  const d = now - last - 1;
  if (d > 8) stalls.push(d);
  worst = Math.max(worst, d);
  last = now;
}, 1);
await app.ledger.warmed();
clearInterval(tick);
const t2 = performance.now();
global.gc?.();
const after = process.memoryUsage();
const mb = (n) => (n / 2 ** 20).toFixed(0);
console.log(`open ${((t1 - t0) / 1000).toFixed(1)} s; background reads ${((t2 - t1) / 1000).toFixed(1)} s; versions proven ahead ${app.ledger.checker.provenAhead()}`);
console.log(`event-loop stalls over 8 ms: ${stalls.length}, worst ${worst.toFixed(1)} ms`);
console.log(`RSS ${mb(before.rss)} → ${mb(after.rss)} MB; heap ${mb(before.heapUsed)} → ${mb(after.heapUsed)} MB; buffers ${mb(before.external)} → ${mb(after.external)} MB`);
await app.close();
process.exit(0);
