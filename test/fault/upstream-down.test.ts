/**
 * Fault: the upstream FHIR server goes away (connections refused) or hangs (no answer within
 * UPSTREAM_TIMEOUT_MS). The proxy answers 502 / 504 with an OperationOutcome that names no
 * upstream address or error, /readyz says not ready, and everything works again — with the data
 * stored before the outage — once the upstream is back, without restarting the proxy.
 *
 * The proxy runs in-process (test/support/app.ts); the upstream is a real FHIR server on loopback
 * behind a TCP relay on a fixed port, so "stopping" it refuses connections exactly as a stopped
 * server does and "starting" it again brings it back on the same address with its data.
 */
import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { createServer, connect, type Server, type Socket } from 'node:net';
import type { Patient } from '@medplum/fhirtypes';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { freePort } from '../support/process.js';
import { startUpstreamFhirServer, type UpstreamFhirServer } from '../support/upstream-server.js';
import { expectCleanOutcome } from './helpers.js';

const FHIR_JSON = 'application/fhir+json';

/** A TCP relay 127.0.0.1:port → target that can be stopped (refusing connections) and started again. */
class Relay {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  constructor(readonly port: number, private readonly targetPort: number) {}

  async start(): Promise<void> {
    this.server = createServer((client) => {
      const upstream = connect({ host: '127.0.0.1', port: this.targetPort });
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => { client.destroy(); upstream.destroy(); });
      }
      client.pipe(upstream).pipe(client);
    });
    await new Promise<void>((resolve) => this.server!.listen(this.port, '127.0.0.1', resolve));
  }

  async stop(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server?.close(() => resolve()) ?? resolve());
    for (const s of this.sockets) s.destroy();
    await closed;
    this.server = undefined;
  }
}

let upstream: UpstreamFhirServer;
let relay: Relay;
let t: TestApp;

beforeAll(async () => {
  upstream = await startUpstreamFhirServer();
  relay = new Relay(await freePort(), Number(new URL(upstream.origin).port));
  await relay.start();
  t = await startTestApp({ UPSTREAM_FHIR_URL: `http://127.0.0.1:${relay.port}/fhir`, UPSTREAM_TIMEOUT_MS: '1500' });
}, 60_000);
afterAll(async () => {
  await t?.close();
  await relay?.stop();
  await upstream?.close();
});

test('upstream stopped → 502 OperationOutcome without internals; back → the same data, no restart', async () => {
  const http = () => request(t.app.http);
  const created = await http().post('/fhir/Patient').set('content-type', FHIR_JSON)
    .send({ resourceType: 'Patient', name: [{ family: 'Quillonby', given: ['Zephyrine'] }] });
  expect(created.status).toBe(201);
  const id = (created.body as Patient).id!;

  await relay.stop();
  const answers = [
    await http().get(`/fhir/Patient/${id}`),
    await http().get('/fhir/Patient?family=Quillonby'),
    await http().post('/fhir/Patient').set('content-type', FHIR_JSON).send({ resourceType: 'Patient', name: [{ family: 'During' }] }),
  ];
  for (const res of answers) {
    expect(res.status).toBe(502);
    const outcome = expectCleanOutcome(res.body);
    expect(outcome.issue?.[0]?.severity).toBe('error');
    expect(JSON.stringify(res.body)).not.toMatch(/Quillonby|Zephyrine/); // no data
  }
  const ready = await http().get('/readyz');
  expect(ready.status).toBe(503);
  expect(JSON.stringify(ready.body)).not.toMatch(/ECONNREFUSED/);

  await relay.start();
  const read = await http().get(`/fhir/Patient/${id}`);
  expect(read.status).toBe(200);
  expect((read.body as Patient).name?.[0]?.given).toEqual(['Zephyrine']);
  // The write refused during the outage was not half-done: only one Patient exists.
  const search = await http().get('/fhir/Patient');
  expect(search.status).toBe(200);
  expect((search.body as { entry?: unknown[] }).entry ?? []).toHaveLength(1);
  expect((await http().get('/readyz')).status).toBe(200);
}, 60_000);

test('upstream hanging → 504 OperationOutcome after UPSTREAM_TIMEOUT_MS; answers again when it recovers', async () => {
  const http = () => request(t.app.http);
  upstream.setDelay(10_000);
  try {
    const res = await http().get('/fhir/Patient');
    expect(res.status).toBe(504);
    expectCleanOutcome(res.body);
  } finally {
    upstream.setDelay(0);
  }
  const res = await http().get('/fhir/Patient');
  expect(res.status).toBe(200);
}, 60_000);
