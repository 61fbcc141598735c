/**
 * A CSV upload (Dexcom Clarity, LibreView) whose body fails on GlucoGuard's side — past the size
 * limit, or cut short by a shutdown — answers as such, with what a partial import stored. The CSV
 * parsers used to report any failure of their source as "malformed CSV": with `partial=true` that
 * was a 200 that stored the start of the file as if the file ended there.
 */
import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { Operator } from '@medplum/core';
import type { Patient } from '@medplum/fhirtypes';
import express from 'express';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { cgmHttpRouter } from '../../src/cgm/http.js';
import { CgmIngestService } from '../../src/cgm/service.js';
import { shapeCachedCheck } from '../../src/cgm/validate.js';
import { OPEN_ACCESS } from '../../src/fhir/access.js';
import { createLogger } from '../../src/log.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { eventually } from '../support/process.js';

let t: TestApp;
beforeAll(async () => {
  t = await startTestApp();
});
afterAll(async () => {
  await t?.close();
});

const HEADER = 'Index,Timestamp (YYYY-MM-DDThh:mm:ss),Event Type,Event Subtype,Patient Info,Device Info,Source Device ID,Glucose Value (mg/dL),Insulin Value (u),Carb Value (grams),Duration (hh:mm:ss),Glucose Rate of Change (mg/dL/min),Transmitter Time (Long Integer),Transmitter ID';

/** A Dexcom Clarity export of `n` EGV rows, 5 minutes apart. */
function clarity(n: number): string {
  const rows = [HEADER];
  for (let i = 0; i < n; i++) {
    const at = new Date(Date.UTC(2024, 2, 1) + i * 300_000).toISOString().slice(0, 19);
    rows.push(`${i + 1},${at},EGV,,,,Android G6,${90 + (i % 60)},,,,,${5_000_000 + i * 300},8AB12C`);
  }
  return `${rows.join('\n')}\n`;
}

/** The CGM router alone on a loopback port, on `service`, with `maxBytes`. */
async function ingestServer(service: CgmIngestService, maxBytes?: number): Promise<{ server: Server; base: string }> {
  const app = express();
  app.use('/cgm', cgmHttpRouter({ service, authenticate: async () => OPEN_ACCESS, mayWriteObservations: async () => true, logger: createLogger('silent'), ...(maxBytes ? { maxBytes } : {}) }));
  const server = app.listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  return { server, base: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

async function storedCount(patient: string): Promise<number> {
  const page = await t.app.repository.search({ resourceType: 'Observation', filters: [{ code: 'patient', operator: Operator.EQUALS, value: `Patient/${patient}` }], count: 1000, offset: 0 });
  return page.resources.length;
}

/** Sends `first`, then waits for `more()` before sending the rest (chunked: no Content-Length). */
function streamed(first: string, more: Promise<string>): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  return new ReadableStream<Uint8Array>({
    async start(c) {
      c.enqueue(encoder.encode(first));
      const rest = await more;
      if (rest) c.enqueue(encoder.encode(rest));
      c.close();
    },
  });
}

/**
 * A partial-import upload of `csv` whose header and first 300 rows (~25 kB: more than the 8 kB the
 * format check reads before the parser starts) are sent at once and the rest only on `release(true)`
 * (`release(false)` ends the body without it): an upload still arriving.
 */
function heldUpload(base: string, patient: string, csv: string): { upload: Promise<Response>; release: (rest: boolean) => void } {
  const cut = csv.split('\n').slice(0, 301).join('\n').length + 1;
  let send = (_rest: string): void => undefined;
  const rest = new Promise<string>((resolve) => { send = resolve; });
  const upload = fetch(`${base}/cgm/ingest?patient=${patient}&format=dexcom-clarity&tz=UTC&partial=true`, {
    method: 'POST', body: streamed(csv.slice(0, cut), rest), duplex: 'half',
  } as RequestInit);
  return { upload, release: (withRest) => send(withRest ? csv.slice(cut) : '') };
}

test('a CSV upload of unknown length past the size limit answers 413 and stores nothing', async () => {
  const patient = (await t.app.repository.create<Patient>({ resourceType: 'Patient' })).resource.id!;
  const { server, base } = await ingestServer(t.app.cgm.ingest, 12_000);
  try {
    const res = await fetch(`${base}/cgm/ingest?patient=${patient}&format=dexcom-clarity&tz=UTC`, {
      method: 'POST', body: streamed(clarity(400), Promise.resolve('')), duplex: 'half', // ~30 kB
    } as RequestInit);
    expect(res.status).toBe(413);
    expect(((await res.json()) as { issue: { diagnostics: string }[] }).issue[0]!.diagnostics).toBe('Export larger than 12000 bytes');
    expect(await storedCount(patient)).toBe(0);
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
});

test('a partial CSV import past the size limit answers 413 saying how many readings it stored, not a 200 for a file cut short', async () => {
  const service = new CgmIngestService({ repository: t.app.repository, check: shapeCachedCheck(() => []), defaultTimeZone: 'UTC', chunkSize: 10 });
  const patient = (await t.app.repository.create<Patient>({ resourceType: 'Patient' })).resource.id!;
  const { server, base } = await ingestServer(service, 40_000);
  try {
    const { upload, release } = heldUpload(base, patient, clarity(800)); // ~60 kB
    // the rest goes once the first part is being stored
    await eventually(async () => ((await storedCount(patient)) >= 30 ? true : undefined), 20_000, '30 readings stored', 10);
    release(true);
    const res = await upload;
    expect(res.status).toBe(413);
    const diagnostics = ((await res.json()) as { issue: { diagnostics: string }[] }).issue[0]!.diagnostics;
    const stored = Number(/^Export larger than 40000 bytes: (\d+) readings of this file were stored before the limit and are kept; send the rest as another file$/.exec(diagnostics)?.[1]);
    expect(stored).toBeGreaterThanOrEqual(30);
    expect(stored).toBe(await storedCount(patient));
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
});

test('a partial CSV import whose upload is still arriving at a shutdown answers 503 with what it stored, not a 200 for a file cut short', async () => {
  const service = new CgmIngestService({ repository: t.app.repository, check: shapeCachedCheck(() => []), defaultTimeZone: 'UTC', chunkSize: 10 });
  const patient = (await t.app.repository.create<Patient>({ resourceType: 'Patient' })).resource.id!;
  const { server, base } = await ingestServer(service);
  try {
    const { upload, release } = heldUpload(base, patient, clarity(400));
    // the first chunks are stored while the rest of the upload has not come
    await eventually(async () => ((await storedCount(patient)) >= 30 ? true : undefined), 20_000, '30 readings stored', 10);
    const interrupted = await service.stop('The server is stopping');
    const res = await upload;
    release(false);
    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toBe('10');
    const diagnostics = ((await res.json()) as { issue: { diagnostics: string }[] }).issue[0]!.diagnostics;
    const stored = Number(/^The server is stopping: (\d+) readings of this file were stored before the import stopped and are kept; send the file again to store the rest/.exec(diagnostics)?.[1]);
    expect(stored % 10).toBe(0);
    expect(stored).toBe(await storedCount(patient));
    expect(interrupted).toEqual([stored]);
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
});
