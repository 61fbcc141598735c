// AuditEvent writes through the ledger-decorated repository, one at a time and in groups (DIR: a kept store, e.g. the 1,000,000-reading fhir-search store; default a fresh one): ms per event.
import path from 'node:path';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
const D = path.resolve(process.env.D ?? 'dist');
const { createApp } = await import(`${D}/src/app.js`);
const { loadConfig } = await import(`${D}/src/config.js`);
const { createLogger } = await import(`${D}/src/log.js`);
const dir = process.env.DIR ?? mkdtempSync(path.join(tmpdir(), 'aud-'));
const app = await createApp(loadConfig({ ...process.env, GLUCOGUARD_DATA_DIR: dir, GLUCOGUARD_AUTH: 'off', LOG_LEVEL: 'silent', CHAIN_PORT: '0', CHAIN_BLOCK_PERIOD: '0' }), { logger: createLogger('silent') });
const rec = app.consent.audit;
const req = { method: 'GET', path: 'Observation', query: { patient: '0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a00', date: ['ge2026-01-01', 'lt2026-01-02'] }, headers: {}, access: { kind: 'open', scopes: [] } };
const ev = rec.eventOf(req, { status: 200, body: { resourceType: 'Bundle' } });

const repo = app.ledger.repository;
const { extractIndexEntries } = await import(`${D}/src/repository/embedded/params.js`).catch(() => ({}));
for (const n of [1, 4, 1, 4, 10, 1, 10]) {
  const evs = Array.from({ length: 200 }, () => structuredClone(ev));
  const t = performance.now();
  if (n === 1) for (const e of evs) await repo.create(e); else for (let i = 0; i < evs.length; i += n) await repo.createMany(evs.slice(i, i + n));
  console.log('batch', n, ((performance.now() - t) / 200).toFixed(3), 'ms/event');
}
await app.close(); process.exit(0);
