/**
 * A shutdown during a large CGM import (SIGTERM with a 10 s grace period): the import stops at the
 * next chunk boundary and answers 503 with Retry-After, saying how many readings were stored; that
 * many are in the store, each committed; sending the file again stores the rest without duplicates;
 * an import whose upload is still arriving, or that comes once the shutdown began, is refused at once
 * with nothing stored; and the shutdown completes (exit code 0). Driven through `shutDown`, the
 * function `serve` runs on SIGTERM, on the server `serve` builds (src/server.ts). Checked by order and
 * condition, not by time.
 */
import { afterEach, expect, test } from '@jest/globals';
import { Operator } from '@medplum/core';
import type { Observation, Patient } from '@medplum/fhirtypes';
import { rmSync } from 'node:fs';
import { connect } from 'node:net';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import request from 'supertest';
import type { App } from '../../src/app.js';
import { createHttpServer, shutDown } from '../../src/server.js';
import { makeTrace, nightscoutJson } from '../fixtures/cgm-ingest/trace.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { eventually } from '../support/process.js';

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step();
});

/**
 * An app served as `serve` serves it; `stop` is the shutdown under test. Should a test fail before
 * it, the server and app are closed afterwards all the same.
 */
async function serving(): Promise<{ t: TestApp; server: Server; base: string; stop: () => Promise<0 | 1> }> {
  const t = await startTestApp();
  const server = createHttpServer(t.app.http);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  let stopped: Promise<0 | 1> | undefined;
  cleanup.push(async () => {
    if (stopped) {
      await stopped; // the app is closed; its data directory goes (a restart on it was closed before)
      rmSync(t.dataDir, { recursive: true, force: true });
      return;
    }
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    await t.close();
  });
  return { t, server, base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, stop: () => (stopped ??= shutDown(server, t.app)) };
}

/** A new app on the data directory of `t` (a restart), closed after the test. */
async function restarted(t: TestApp): Promise<TestApp> {
  const again = await startTestApp({}, t.dataDir);
  cleanup.push(() => again.close());
  return again;
}

/**
 * Every stored reading of the patient: its identifier and version, paged through the repository as
 * the facade pages (from the last match's position; by offset were the position not resumable).
 * Paging by offset alone would read every earlier page again for each page: 13 pages of 5,000 read
 * ~455,000 versions for 60,000 readings (the size this test once used), half a minute.
 */
async function storedReadings(app: App, patient: string): Promise<{ identifier: string; id: string; version: string }[]> {
  const out: { identifier: string; id: string; version: string }[] = [];
  let after: string | undefined;
  for (let offset = 0; ; offset += 5000) {
    const page = await app.repository.search({
      resourceType: 'Observation', filters: [{ code: 'patient', operator: Operator.EQUALS, value: `Patient/${patient}` }], count: 5000, offset,
    }, after === undefined ? undefined : { after });
    for (const o of page.resources as Observation[]) out.push({ identifier: `${o.identifier![0]!.system}|${o.identifier![0]!.value}`, id: o.id!, version: o.meta!.versionId! });
    if (!page.hasMore) return out;
    after = page.positionOf?.(page.resources.length - 1);
  }
}

/** Resolves when the server has begun handling a request whose URL contains `marker`. */
function requestArrives(server: Server, marker: string): Promise<void> {
  return new Promise((resolve) => {
    const listener = (req: { url?: string }) => {
      if (!req.url?.includes(marker)) return;
      server.off('request', listener);
      resolve();
    };
    server.on('request', listener);
  });
}

/** An upload that has sent its headers and the start of its body, then waits: the raw answer once there is one. */
function stalledUpload(base: string, path: string, start: string, declared: number): Promise<string> {
  const { port } = new URL(base);
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port: Number(port) }, () => {
      socket.write(`POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${declared}\r\n\r\n${start}`);
    });
    let answer = '';
    socket.on('data', (d: Buffer) => { answer += d.toString(); });
    socket.on('close', () => resolve(answer));
    socket.on('error', reject);
  });
}

type Outcome = { issue: { diagnostics: string }[] };
const STOPPED = /^The server is stopping: (\d+) readings of this file were stored before the import stopped and are kept; send the file again to store the rest \(what is already stored counts as unchanged\)$/;
const REFUSED = /^The server is stopping: nothing of this file was stored; send the file again \(what is already stored counts as unchanged\)$/;

test('a shutdown stops a 24,000-reading import at a chunk boundary: 503 with the stored count, that many stored and committed, a re-send stores the rest', async () => {
  const { t: first, server, base, stop } = await serving();
  const patient = (await first.app.repository.create<Patient>({ resourceType: 'Patient' })).resource.id!;
  const other = (await first.app.repository.create<Patient>({ resourceType: 'Patient' })).resource.id!;
  // 24,168 readings, stored in 13 chunks of at most 2,000: the shutdown comes after the first (the
  // behaviour needs several chunks, not a given size; 60,168 took this test 43 s of a CI run's 15 minutes)
  const file = nightscoutJson(makeTrace(84));
  let answered = false;
  const upload = fetch(`${base}/cgm/ingest?patient=${patient}&format=nightscout`, { method: 'POST', body: file, headers: { 'Content-Type': 'application/json' } })
    .then(async (res) => {
      answered = true;
      return { status: res.status, retryAfter: res.headers.get('retry-after'), connection: res.headers.get('connection'), body: (await res.json()) as Outcome };
    });
  // an upload still arriving when the shutdown comes (its server side waits for the rest of the body)
  const arrived = requestArrives(server, `patient=${other}`);
  const stalled = stalledUpload(base, `/cgm/ingest?patient=${other}&format=nightscout`, file.slice(0, 300), Buffer.byteLength(file));
  await arrived;
  // storing has begun: the first chunks are in the store
  await eventually(async () => ((await first.app.repository.search({ resourceType: 'Observation', count: 1, offset: 0 })).resources.length || answered ? true : undefined),
    60_000, 'the first chunk stored', 5);
  expect(answered).toBe(false);

  const stopping = stop();
  // an import that comes once the shutdown has begun is refused before its upload is read
  const late = await request(first.app.http).post(`/cgm/ingest?patient=${other}&format=nightscout`).set('Content-Type', 'application/json').send(file.slice(0, 2000));
  expect(late.status).toBe(503);
  expect(late.headers['retry-after']).toBe('10');
  expect((late.body as Outcome).issue[0]!.diagnostics).toMatch(REFUSED);

  const res = await upload;
  expect(res.status).toBe(503);
  expect(res.retryAfter).toBe('10');
  expect(res.connection).toBe('close');
  const diagnostics = res.body.issue[0]!.diagnostics;
  expect(diagnostics).toMatch(STOPPED);
  const stored = Number(STOPPED.exec(diagnostics)![1]);
  expect(stored).toBeGreaterThan(0);
  expect(stored).toBeLessThan(24_000);
  expect(stored % 2000).toBe(0); // whole chunks only

  const raw = await stalled;
  expect(raw).toMatch(/^HTTP\/1\.1 503 /);
  expect(raw).toMatch(/\r\nRetry-After: 10\r\n/i);
  expect(JSON.parse(raw.slice(raw.indexOf('\r\n\r\n') + 4)).issue[0].diagnostics).toMatch(REFUSED);

  expect(await stopping).toBe(0); // everything ended and the app closed within the grace period
  expect(server.listening).toBe(false);

  // after a restart: exactly what the answer said, each reading once and committed for anchoring
  const second = await restarted(first);
  const kept = await storedReadings(second.app, patient);
  expect(kept).toHaveLength(stored);
  expect(new Set(kept.map((r) => r.identifier)).size).toBe(stored);
  expect(kept.every((r) => second.app.ledger.store.has('Observation', r.id, r.version))).toBe(true);
  expect((await storedReadings(second.app, other))).toHaveLength(0);
  await eventually(async () => (second.app.ledger.store.counts().pending === 0 ? true : undefined), 60_000, 'every commitment anchored');

  // sending the file again stores the rest: what was stored is unchanged, nothing twice
  const again = await request(second.app.http).post(`/cgm/ingest?patient=${patient}&format=nightscout`).set('Content-Type', 'application/json').send(file);
  expect(again.status).toBe(200);
  const report = again.body as { created: number; unchanged: number; corrected: number };
  expect(report.unchanged).toBe(stored);
  expect(report.corrected).toBe(0);
  const all = await storedReadings(second.app, patient);
  expect(all).toHaveLength(report.created + report.unchanged);
  expect(all.length).toBeGreaterThan(24_000);
  expect(new Set(all.map((r) => r.identifier)).size).toBe(all.length);
}, 420_000);

test.each([
  ['an upload of unknown length (parked on disk, checked, then stored)', { chunked: true, partial: false }],
  ['a partial import (stored as it streams in)', { chunked: false, partial: true }],
])('%s stops at a chunk boundary on shutdown and says what it stored', async (_name, mode) => {
  const { t: first, base, stop } = await serving();
  const patient = (await first.app.repository.create<Patient>({ resourceType: 'Patient' })).resource.id!;
  const file = nightscoutJson(makeTrace(63, { seed: 7 })); // 18,120 readings: 10 chunks
  const bytes = new TextEncoder().encode(file);
  // a stream body goes out chunked (no Content-Length), which the server parks on disk
  const body = mode.chunked ? new ReadableStream<Uint8Array>({ start(c) { c.enqueue(bytes); c.close(); } }) : file;
  let answered = false;
  const upload = fetch(`${base}/cgm/ingest?patient=${patient}&format=nightscout${mode.partial ? '&partial=true' : ''}`, {
    method: 'POST', body, headers: { 'Content-Type': 'application/json' }, ...(mode.chunked ? { duplex: 'half' } : {}),
  } as RequestInit).then(async (res) => {
    answered = true;
    return { status: res.status, body: (await res.json()) as Outcome };
  });
  await eventually(async () => ((await first.app.repository.search({ resourceType: 'Observation', count: 1, offset: 0 })).resources.length || answered ? true : undefined),
    60_000, 'the first chunk stored', 5);
  expect(answered).toBe(false);
  const stopping = stop();
  const res = await upload;
  expect(res.status).toBe(503);
  const stored = Number(STOPPED.exec(res.body.issue[0]!.diagnostics)?.[1]);
  expect(stored).toBeGreaterThan(0);
  expect(stored % 2000).toBe(0);
  expect(await stopping).toBe(0);

  const second = await restarted(first);
  expect(await storedReadings(second.app, patient)).toHaveLength(stored);
  const again = await request(second.app.http).post(`/cgm/ingest?patient=${patient}&format=nightscout${mode.partial ? '&partial=true' : ''}`)
    .set('Content-Type', 'application/json').send(file);
  expect(again.status).toBe(200);
  expect((again.body as { unchanged: number }).unchanged).toBe(stored);
  expect(new Set((await storedReadings(second.app, patient)).map((r) => r.identifier)).size)
    .toBe((again.body as { created: number }).created + stored);
}, 420_000);
