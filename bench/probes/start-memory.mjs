// What a server process holds once started over a kept store, and where: RSS split into anonymous
// and file-backed pages (/proc/self/smaps_rollup), the JS heap by space, and native buffers.
// DIR=<data dir kept by the exchange or fhir-search bench> node --expose-gc bench/probes/start-memory.mjs
// (reads the master key from the bench's bench-setup.json; CHAIN_NODE_THREAD, GLUCOGUARD_READ_CACHE_MB
// and GLUCOGUARD_STORE_MMAP_MB are passed on; D=<dist dir> runs another build)
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import v8 from 'node:v8';

const dist = path.resolve(process.env.D ?? 'dist');
const load = (file) => import(pathToFileURL(path.join(dist, file)).href);
const [{ createApp }, { loadConfig }, { createLogger }] = await Promise.all([load('src/app.js'), load('src/config.js'), load('src/log.js')]);
// from this build's dist, whichever build D names (an earlier build may not have it)
const { residentSplitMb } = await import(pathToFileURL(path.resolve('dist/bench/stats.js')).href);

const dir = process.env.DIR;
if (!dir) throw new Error('set DIR to a data directory kept by the exchange or fhir-search bench');
// the exchange bench records its master key; the fhir-search bench's store keeps its own key file
const setupFile = path.join(dir, 'bench-setup.json');
const masterKey = existsSync(setupFile) ? JSON.parse(readFileSync(setupFile, 'utf8')).masterKey : undefined;
const mb = (n) => (n / 1048576).toFixed(0);
function report(stage) {
  global.gc?.();
  const split = residentSplitMb();
  const m = process.memoryUsage();
  const spaces = v8.getHeapSpaceStatistics().filter((s) => s.space_size > 1048576).map((s) => `${s.space_name} ${mb(s.space_size)}`).join(', ');
  const pages = split ? ` (anonymous ${split.anonymous.toFixed(0)}, file-backed ${split.fileBacked.toFixed(0)})` : '';
  console.log(`${stage}: RSS ${mb(m.rss)} MB${pages}; ` +
    `JS heap ${mb(m.heapUsed)} used of ${mb(m.heapTotal)} (${spaces}); array buffers ${mb(m.arrayBuffers)}, other external ${mb(m.external - m.arrayBuffers)}`);
}
report('before');
const env = Object.fromEntries(['GLUCOGUARD_STORE_MMAP_MB', 'GLUCOGUARD_READ_CACHE_MB', 'CHAIN_NODE_THREAD'].flatMap((k) => (process.env[k] ? [[k, process.env[k]]] : [])));
const app = await createApp(loadConfig({
  GLUCOGUARD_DATA_DIR: dir, GLUCOGUARD_BASE_URL: 'http://127.0.0.1:8080', GLUCOGUARD_AUTH: 'on', LOG_LEVEL: 'silent',
  CHAIN_BLOCK_PERIOD: '0', CHAIN_PORT: '0', ...(masterKey ? { GLUCOGUARD_MASTER_KEY: masterKey } : {}), ...env,
}), { logger: createLogger('silent') });
report('started');
await new Promise((r) => setTimeout(r, 3000));
report('3 s later');
await new Promise((r) => setTimeout(r, 5000));
report('8 s later');
await app.close();
