/**
 * Oversized and pathological input at the HTTP edge, on a real listening server (the way
 * `glucoguard serve` runs it): headers and URLs beyond Node's 16 KiB limit answer 431, bodies over
 * the limits answer 413 (also when chunked, without Content-Length), absurdly nested JSON answers
 * 400 — and the server keeps serving afterwards, having stored nothing.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { connect } from 'node:net';
import { startTestApp, type TestApp } from '../support/app.js';

let t: TestApp;
let server: Server;
let base: string;

beforeAll(async () => {
  t = await startTestApp({ GLUCOGUARD_MAX_BODY_BYTES: String(256 * 1024) });
  server = t.app.http.listen(0, '127.0.0.1');
  await new Promise<void>((resolve) => server.once('listening', () => resolve()));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server?.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await t?.close();
});

/** Sends raw bytes and returns the status line the server answered (or '' when it closed without one). */
function raw(text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const { port } = server.address() as AddressInfo;
    const socket = connect(port, '127.0.0.1');
    let data = '';
    socket.on('data', (d) => {
      data += d.toString('latin1');
      if (data.includes('\r\n\r\n')) socket.destroy();
    });
    socket.on('error', () => resolve(data.split('\r\n')[0] ?? ''));
    socket.on('close', () => resolve(data.split('\r\n')[0] ?? ''));
    socket.setTimeout(5000, () => {
      socket.destroy();
      reject(new Error('no answer within 5 s'));
    });
    // Written, not ended: a half-closed socket would make Node answer 400 before the app could.
    socket.write(text);
  });
}

/** The newest Patient and Bundle-written versions (AuditEvents are left out: one is recorded for every access by design). */
async function storedVersions(): Promise<string> {
  const newest = await Promise.all(['Patient', 'Observation'].map(async (resourceType) => {
    const e = (await t.app.repository.history({ resourceType, count: 1, offset: 0 })).entries[0];
    return e ? `${e.resourceType}/${e.id}/${e.versionId}` : `${resourceType}:none`;
  }));
  return newest.join(' ');
}

async function stillServing(): Promise<void> {
  const res = await fetch(`${base}/healthz`);
  expect(res.status).toBe(200);
}

describe('oversized requests', () => {
  test('a 20 KiB header answers 431 Request Header Fields Too Large', async () => {
    expect(await raw(`GET /fhir/metadata HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20 * 1024)}\r\nConnection: close\r\n\r\n`)).toBe('HTTP/1.1 431 Request Header Fields Too Large');
    await stillServing();
  });

  test('a 20 KiB URL (query string) answers 431', async () => {
    expect(await raw(`GET /fhir/Patient?name=${'a'.repeat(20 * 1024)} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`)).toBe('HTTP/1.1 431 Request Header Fields Too Large');
    await stillServing();
  });

  test('a FHIR body over the limit, sent chunked without Content-Length, answers 413 and stores nothing', async () => {
    const before = await storedVersions();
    const chunk = 'x'.repeat(64 * 1024);
    const chunks = Array.from({ length: 6 }, () => `${chunk.length.toString(16)}\r\n${chunk}\r\n`).join('');
    const head = '{"resourceType":"Patient","x":"';
    const status = await raw(`POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n`
      + `${head.length.toString(16)}\r\n${head}\r\n${chunks}0\r\n\r\n`);
    expect(status).toBe('HTTP/1.1 413 Payload Too Large');
    expect(await storedVersions()).toBe(before);
    await stillServing();
  });

  test('a body with a Content-Length over the limit answers 413 (the body is drained, then refused) and stores nothing', async () => {
    const before = await storedVersions();
    const body = `{"resourceType":"Patient","x":"${'y'.repeat(300 * 1024)}"}`;
    const status = await raw(`POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
    expect(status).toBe('HTTP/1.1 413 Payload Too Large');
    expect(await storedVersions()).toBe(before);
    await stillServing();
  });

  // Updated in session 25: the endpoint now answers in its own dialect, OAuth error JSON, as its other
  // refusals do (it had the server's generic `{"error": text}`), so the expected body changed with it.
  test('an oversized SMART launch body answers 413 OAuth error JSON', async () => {
    const res = await fetch(`${base}/smart/launch`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ x: 'a'.repeat(100 * 1024) }) });
    expect(res.status).toBe(413);
    expect(await res.json()).toEqual({ error: 'invalid_request', error_description: 'Request body too large' });
  });
});

describe('pathological bodies', () => {
  test.each([
    ['deeply nested arrays', `{"resourceType":"Patient","extension":${'['.repeat(50_000)}${']'.repeat(50_000)}}`],
    ['deeply nested objects', `{"resourceType":"Patient","name":${'{"a":'.repeat(20_000)}1${'}'.repeat(20_000)}}`],
    ['a Bundle of deeply nested entries', `{"resourceType":"Bundle","type":"transaction","entry":[{"resource":${'{"a":'.repeat(20_000)}1${'}'.repeat(20_000)}}]}`],
  ])('%s answer 4xx, store nothing and the server keeps serving', async (_name, body) => {
    const before = await storedVersions();
    const path = body.includes('"Bundle"') ? '/fhir' : '/fhir/Patient';
    const res = await fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/fhir+json' }, body });
    expect(res.status).toBeGreaterThanOrEqual(400);
    expect(res.status).toBeLessThan(500);
    expect((await res.json()).resourceType).toBe('OperationOutcome');
    expect(await storedVersions()).toBe(before);
    await stillServing();
  });
});

describe('regressions found by fuzzing', () => {
  test('a 100 KiB body of nested arrays answered 500 (stack overflow cloning it); now 400 naming the depth limit', async () => {
    const res = await fetch(`${base}/fhir/Patient`, { method: 'POST', headers: { 'content-type': 'application/fhir+json' },
      body: `{"resourceType":"Patient","extension":${'['.repeat(50_000)}${']'.repeat(50_000)}}` });
    expect(res.status).toBe(400);
    const outcome = await res.json() as { issue: { diagnostics: string }[] };
    expect(outcome.issue[0]!.diagnostics).toBe('JSON body nested deeper than 100 levels');
  });

  test('realistic nesting (contained resources with nested extensions) is still accepted', async () => {
    let ext: Record<string, unknown> = { url: 'urn:x:leaf', valueString: 'x' };
    for (let i = 0; i < 20; i++) ext = { url: `urn:x:${i}`, extension: [ext] };
    const res = await fetch(`${base}/fhir/Patient`, { method: 'POST', headers: { 'content-type': 'application/fhir+json' },
      body: JSON.stringify({ resourceType: 'Patient', extension: [ext] }) });
    expect(res.status).toBe(201);
  });
});
