// send cost: jsonBody + end of a warm 288-entry searchset vs JSON.stringify + end, over loopback
import { mkdtempSync } from 'node:fs'; import { tmpdir } from 'node:os'; import path from 'node:path'; import { createServer } from 'node:http';
const D = path.resolve(process.env.D ?? 'dist');
const { EmbeddedRepository } = await import(`${D}/src/repository/embedded/index.js`);
const { jsonBody, byteLengthOf } = await import(`${D}/src/fhir/json-text.js`);
const { HttpClient } = await import(`${D}/bench/http-client.js`);
const { parseSearchRequest } = await import('@medplum/core');
const dir = mkdtempSync(path.join(tmpdir(), 'send-'));
const repo = await EmbeddedRepository.open({ dataDir: dir, masterKey: Buffer.alloc(32, 7).toString('base64') });
const t0 = Date.parse('2026-01-01T00:00:00Z');
await repo.createMany(Array.from({ length: 288 }, (_, i) => ({ resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] }, subject: { reference: 'Patient/p1' }, effectiveDateTime: new Date(t0 + i * 300000).toISOString(), valueQuantity: { value: 100 + (i % 97), unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' } })));
const q = parseSearchRequest('Observation?patient=Patient/p1&_count=288');
for (let i = 0; i < 3; i++) await repo.search(q);
const r = await repo.search(q);
const bundle = () => ({ resourceType: 'Bundle', type: 'searchset', link: [{ relation: 'self', url: 'http://x/fhir/Observation?patient=p1' }], entry: r.resources.map((res) => ({ fullUrl: `http://x/fhir/Observation/${res.id}`, resource: res, search: { mode: 'match' } })) });
const times = { chunks: [], stringify: [], jsonChunksOnly: [], search: [] };
const mode = { v: 'chunks' };
const server = createServer((req, res) => {
  const t = performance.now();
  const b = bundle();
  if (mode.v === 'chunks') { const c = jsonBody(b); res.writeHead(200, { 'Content-Length': byteLengthOf(c) }); res.end(c); }
  else { const text = JSON.stringify(b); res.writeHead(200, { 'Content-Length': Buffer.byteLength(text) }); res.end(text); }
  times[mode.v].push(performance.now() - t);
}).listen(0, '127.0.0.1');
await new Promise((ok) => server.once('listening', ok));
const client = new HttpClient(server.address().port);
for (let round = 0; round < 6; round++) for (const m of ['chunks', 'stringify']) { mode.v = m; await client.run(Array(300).fill('/x'), 4); }
for (let i = 0; i < 500; i++) { let t = performance.now(); jsonBody(bundle()); times.jsonChunksOnly.push(performance.now() - t); t = performance.now(); await repo.search(q); times.search.push(performance.now() - t); }
const p50 = (a) => { const s = a.slice(200).sort((x, y) => x - y); return s[Math.floor(s.length / 2)].toFixed(3); };
for (const [k, v] of Object.entries(times)) console.log(k, 'p50', p50(v), 'ms');
await client.close(); server.close(); await repo.close(); process.exit(0);
