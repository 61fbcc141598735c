// Shared by the probes that run on a kept fhir-search store: the compiled build (D, default dist/),
// the app opened over DIR with auth off, and the bench's patient-day queries over its patients and days.
import { readFileSync } from 'node:fs';
import path from 'node:path';

export const D = path.resolve(process.env.D ?? 'dist');

/** Opens the store in DIR (or `defaultDir`); `queries(n)` are the fhir-search bench's patient-day queries. */
export async function openKeptStore(defaultDir) {
  const { createApp } = await import(`${D}/src/app.js`);
  const { loadConfig } = await import(`${D}/src/config.js`);
  const { createLogger } = await import(`${D}/src/log.js`);
  const { patientDayQuery } = await import(`${D}/bench/repository-load.js`);
  const dir = process.env.DIR ?? defaultDir;
  const setup = JSON.parse(readFileSync(path.join(dir, 'bench-setup.json'), 'utf8'));
  const app = await createApp(loadConfig({ ...process.env, GLUCOGUARD_DATA_DIR: dir, GLUCOGUARD_AUTH: 'off', LOG_LEVEL: 'silent', GLUCOGUARD_MAX_PAGE_SIZE: '1000', CHAIN_PORT: '0', CHAIN_BLOCK_PERIOD: '0' }), { logger: createLogger('silent') });
  const queries = (n) => Array.from({ length: n }, (_, i) => patientDayQuery(setup.patientIds[(i * 37) % setup.patientIds.length],
    new Date(Date.parse('2026-01-01T00:00:00Z') + ((i * 13) % setup.days) * 86400000).toISOString().slice(0, 10)));
  return { app, setup, dir, queries };
}

/**
 * The kept store's app serving HTTP on a loopback port, after `settleMs` and the start-up's background
 * reads (roots, versions proven ahead, reindex checks), and a bench HttpClient (worker thread) pointed at it.
 */
export async function serveKeptStore(defaultDir, settleMs = 3000) {
  const kept = await openKeptStore(defaultDir);
  const { HttpClient } = await import(`${D}/bench/http-client.js`);
  await new Promise((r) => setTimeout(r, settleMs));
  await kept.app.ledger.warmed?.(); // the roots read and the versions proven ahead (GLUCOGUARD_PROVE_AHEAD)
  const server = kept.app.http.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  return { ...kept, server, client: new HttpClient(server.address().port) };
}
