/**
 * Fault: kill -9 of `glucoguard serve` while a CGM import is in flight. After a restart on the same
 * data directory every acknowledged reading is there, each Observation reads back whole, nothing is
 * duplicated, re-sending the unacknowledged import completes it, and every version gets anchored
 * (`glucoguard verify` finds no failure, `glucoguard chain status` no pending commitment).
 */
import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { request } from 'node:http';
import { rmSync } from 'node:fs';
import type { Observation } from '@medplum/fhirtypes';
import { buildOnce, eventually, freePort, runCli, startServer, type ServerProc } from '../support/process.js';
import { BASE_URL, FIVE_MIN, getJson, ingest, integrityTag, nightscout, observationsOf, readingOf, tempDir, type SentReading } from './helpers.js';

const dataDir = tempDir('gg-fault-kill-');
const env: Record<string, string> = { GLUCOGUARD_DATA_DIR: dataDir, GLUCOGUARD_AUTH: 'off', GLUCOGUARD_BASE_URL: BASE_URL };
let server: ServerProc | undefined;

beforeAll(async () => {
  buildOnce();
  // A fixed chain port, so `glucoguard chain status` / `verify` can reach the running server's node.
  env.CHAIN_PORT = String(await freePort());
}, 180_000);
afterAll(async () => {
  await server?.kill9();
  rmSync(dataDir, { recursive: true, force: true });
});

/** POSTs the body and SIGKILLs the server `delayMs` after the body has been handed to the socket. */
function ingestThenKill(s: ServerProc, patient: string, body: string, delayMs: number): Promise<{ status?: number }> {
  return new Promise((resolve) => {
    const req = request(`${s.origin}/cgm/ingest?format=nightscout&patient=${patient}`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
    }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode }));
      res.on('error', () => resolve({}));
    });
    req.on('error', () => resolve({}));
    req.end(body, () => setTimeout(() => void s.kill9(), delayMs));
  });
}

const key = (r: SentReading) => `${r.at}|${r.mgdl}`;

const ROUNDS = [10, 60, 150]; // ms between handing the in-flight body to the socket and kill -9

test(`kill -9 during ingest (${ROUNDS.length} kills): every acknowledged reading survives whole and gets anchored`, async () => {
  const created = runCli(['patients', 'create', '--given', 'Kay', '--family', 'Nine'], env);
  expect(created.status).toBe(0);
  const patient = created.stdout.trim();

  const start = Date.UTC(2026, 9, 1);
  let slot = 0; // 5-minute slots used so far: every file covers new times
  const acknowledged: SentReading[] = [];
  const unanswered: { body: string; readings: SentReading[] }[] = [];
  server = await startServer(env);
  for (const delayMs of ROUNDS) {
    for (let batch = 0; batch < 3; batch++) {
      const file = nightscout(12, start + slot * FIVE_MIN);
      slot += 12;
      const res = await ingest(server.origin, patient, file.body);
      expect(res.status).toBe(200);
      expect(((await res.json()) as { created: number }).created).toBe(12);
      acknowledged.push(...file.readings);
    }
    // The in-flight import: 300 readings, so the kill can land while it is parsed, checked or stored.
    const inFlight = nightscout(300, start + slot * FIVE_MIN);
    slot += 300;
    const outcome = await ingestThenKill(server, patient, inFlight.body, delayMs);
    expect(await server.exited).toBe('SIGKILL');
    // Should the answer have beaten the kill, those readings were acknowledged too.
    if (outcome.status === 200) acknowledged.push(...inFlight.readings);
    else unanswered.push(inFlight);

    server = await startServer(env);
    const afterCrash = await observationsOf(server.origin, patient);
    const sent = new Map([...acknowledged, ...unanswered.flatMap((f) => f.readings)].map((r) => [r.at, r.mgdl]));
    const found = new Map<string, Observation>();
    for (const o of afterCrash) {
      const reading = readingOf(o);
      expect(reading).toBeDefined(); // whole: code, subject, time, value and unit all present
      expect(sent.get(reading!.at)).toBe(reading!.mgdl); // nothing garbled or invented
      expect(found.has(reading!.at)).toBe(false); // nothing stored twice
      found.set(reading!.at, o);
    }
    for (const r of acknowledged) expect(found.has(r.at)).toBe(true);
    const survivors = inFlight.readings.filter((r) => found.has(r.at)).length;
    // 300 readings are one transaction (chunks of 2000): all of them or none, never a torn import.
    expect([0, inFlight.readings.length]).toContain(survivors);
    console.info(`kill -9 ${delayMs} ms into an ingest: ${acknowledged.length} acknowledged readings all present; ` +
      `${survivors}/${inFlight.readings.length} of the unanswered import stored (answer before kill: ${outcome.status ?? 'none'})`);
  }

  // Each acknowledged Observation also reads back whole by id.
  const byTime = new Map((await observationsOf(server.origin, patient)).map((o) => [o.effectiveDateTime, o.id]));
  for (const r of acknowledged.slice(0, 36)) {
    const read = await getJson(`${server.origin}/fhir/Observation/${byTime.get(r.at)}`);
    expect(read.status).toBe(200);
    expect(readingOf(read.body as Observation)).toEqual(r);
  }

  // The client retries each import it got no answer for: idempotent, completes it.
  for (const file of unanswered) {
    const retry = await ingest(server.origin, patient, file.body);
    expect(retry.status).toBe(200);
    const report = (await retry.json()) as { created: number; unchanged: number; corrected: number };
    expect(report.created + report.unchanged).toBe(file.readings.length);
    expect(report.corrected).toBe(0);
  }
  const all = await observationsOf(server.origin, patient);
  const everything = [...acknowledged, ...unanswered.flatMap((f) => f.readings)];
  expect(all.map((o) => key(readingOf(o)!)).sort()).toEqual([...new Set(everything.map(key))].sort());

  // Anchoring catches up: no reading is served as pending, then (reads write AuditEvents, which are
  // versions too) the lag gauge settles at 0 before the clean stop.
  let tags = '';
  await eventually(async () => {
    const served = await observationsOf(server!.origin, patient);
    const counts: Record<string, number> = {};
    for (const o of served) counts[integrityTag(o) ?? 'verified'] = (counts[integrityTag(o) ?? 'verified'] ?? 0) + 1;
    tags = JSON.stringify(counts);
    return served.every((o) => integrityTag(o) === undefined) ? true : undefined;
  }, 60_000, 'anchoring of every reading').catch((err: Error) => {
    throw new Error(`${err.message}; integrity tags served: ${tags}\n${server!.output().slice(-3000)}`);
  });
  // `chain status` reaches the running server's node over JSON-RPC (CHAIN_PORT) and writes no
  // AuditEvent of its own, so it can watch the queue drain to 0.
  let anchoring = { commitments: 0, anchored: 0, pending: -1 };
  await eventually(async () => {
    const status = runCli(['chain', 'status', '--json'], env);
    if (status.status !== 0) throw new Error(status.stderr);
    anchoring = (JSON.parse(status.stdout) as { anchoring: typeof anchoring }).anchoring;
    return anchoring.pending === 0 ? true : undefined;
  }, 60_000, 'chain status: 0 pending', 1000);
  expect(anchoring.anchored).toBe(anchoring.commitments);
  expect(anchoring.commitments).toBeGreaterThanOrEqual(everything.length);
  const verify = runCli(['verify', '--patient', patient], env);
  expect(verify.stdout).toMatch(/, 0 failed/);
  expect(verify.stdout).not.toMatch(/FAILED/);
  expect(verify.status).toBe(0);
  const verified = Number(/(\d+) verified/.exec(verify.stdout)?.[1]);
  expect(verified).toBeGreaterThanOrEqual(everything.length);
  console.info(`readings stored ${all.length} (sent ${everything.length}); verify: ${verify.stdout.trim()}; ` +
    `chain status: ${anchoring.commitments} commitments, ${anchoring.anchored} anchored, ${anchoring.pending} pending`);
  expect(await server.stop()).toBe(0);
  server = undefined;
}, 300_000);
