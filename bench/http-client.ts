/**
 * An HTTP load generator for benchmarks, in a worker thread so it does not share the server's event
 * loop: keep-alive GETs of the given paths, sequential or N concurrent, for a count or a duration.
 */
import { Worker } from 'node:worker_threads';

const CLIENT = `
const { parentPort, workerData } = require('node:worker_threads');
const http = require('node:http');
const zlib = require('node:zlib');
const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
function get(path) {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    http.get({ host: '127.0.0.1', port: workerData.port, path, agent, headers: workerData.headers }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ ms: Number(process.hrtime.bigint() - t0) / 1e6, status: res.statusCode, body: Buffer.concat(chunks), coding: res.headers['content-encoding'] }));
    }).on('error', reject);
  });
}
function check(r) {
  if (r.status !== 200) return false;
  const text = r.coding === 'gzip' ? zlib.gunzipSync(r.body) : r.coding === 'br' ? zlib.brotliDecompressSync(r.body) : r.coding === 'deflate' ? zlib.inflateSync(r.body) : r.body;
  const b = JSON.parse(text.toString());
  return workerData.entries < 0 || (b.entry || []).length === workerData.entries;
}
parentPort.on('message', async ({ paths, concurrency, seconds }) => {
  try {
    const times = [];
    let bad = 0, next = 0, bytes = 0;
    const deadline = seconds ? Date.now() + seconds * 1000 : Infinity;
    const started = process.hrtime.bigint();
    async function loop() {
      for (;;) {
        const i = next++;
        if (seconds ? Date.now() >= deadline : i >= paths.length) return;
        const r = await get(paths[i % paths.length]);
        times.push(r.ms);
        bytes += r.body.length;
        if (i % 25 === 0 ? !check(r) : r.status !== 200) bad++;
      }
    }
    await Promise.all(Array.from({ length: concurrency }, loop));
    parentPort.postMessage({ times, bad, bytes, elapsed: Number(process.hrtime.bigint() - started) / 1e9 });
  } catch (e) {
    parentPort.postMessage({ error: String(e) });
  }
});
`;

/** `bytes`: body bytes received, as they came over the wire (compressed when the server coded them). */
export interface ClientResult { times: number[]; bad: number; bytes: number; elapsed: number; error?: string }

/** An HTTP load generator in a worker thread; each call runs one batch and answers its timings. */
export class HttpClient {
  private readonly worker: Worker;
  /** `entries`: how many Bundle entries a good answer has (every 25th answer is parsed and checked; -1: any number). */
  constructor(port: number, options: { headers?: Record<string, string>; entries?: number } = {}) {
    this.worker = new Worker(CLIENT, { eval: true, workerData: { port, headers: options.headers ?? {}, entries: options.entries ?? 288 } });
  }
  run(paths: string[], concurrency = 1, seconds?: number): Promise<ClientResult> {
    return new Promise((resolve, reject) => {
      this.worker.once('message', (m: ClientResult) => (m.error ? reject(new Error(m.error)) : m.bad ? reject(new Error(`${m.bad} HTTP answers were not 200 with the expected entries`)) : resolve(m)));
      this.worker.postMessage({ paths, concurrency, seconds });
    });
  }
  close(): Promise<number> {
    return this.worker.terminate();
  }
}

