/**
 * What a browser app or an integration engine meets at the HTTP edge (found by exploratory
 * testing, session 21): CORS preflights that let a grantee send its purpose of use, on every route
 * a browser app calls; and the server `glucoguard serve` runs (src/server.ts), which takes search
 * URLs longer than Node's 16 KiB default and answers what it cannot take with an OperationOutcome.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import request from 'supertest';
import { createHttpServer, MAX_HEADER_BYTES } from '../../src/server.js';
import { startTestApp, type TestApp } from '../support/app.js';

describe('HTTP edge', () => {
  let t: TestApp;
  let server: Server;
  let base: string;

  beforeAll(async () => {
    t = await startTestApp();
    server = createHttpServer(t.app.http);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await new Promise((resolve) => server?.close(resolve));
    await t?.close();
  });

  test.each(['/fhir/Observation', '/exports/00000000-0000-0000-0000-000000000000/Observation.ndjson', '/cgm/ingest'])(
    'a CORS preflight on %s lets a browser app send X-Purpose-Of-Use and Authorization', async (path) => {
      const res = await request(t.app.http).options(path)
        .set('Origin', 'https://app.example').set('Access-Control-Request-Method', 'GET').set('Access-Control-Request-Headers', 'authorization, x-purpose-of-use');
      expect(res.status).toBe(204);
      expect(res.headers['access-control-allow-origin']).toBe('*');
      const allowed = res.headers['access-control-allow-headers']!.toLowerCase().split(/,\s*/);
      expect(allowed).toEqual(expect.arrayContaining(['authorization', 'x-purpose-of-use']));
    });

  test('a search URL longer than 16 KiB is served (a POST _search next link over a few thousand ids)', async () => {
    const ids = Array.from({ length: 1500 }, (_, i) => `id-${String(i).padStart(8, '0')}`).join(',');
    const url = `${base}/fhir/Observation?_id=${ids}`;
    expect(url.length).toBeGreaterThan(16 * 1024);
    const res = await fetch(url);
    expect(res.status).toBe(200);
    expect(((await res.json()) as { resourceType: string }).resourceType).toBe('Bundle');
  });

  test('beyond the limit: 431 with an OperationOutcome saying to POST the search instead', async () => {
    const res = await fetch(`${base}/fhir/Observation?_id=${'x'.repeat(MAX_HEADER_BYTES + 1024)}`);
    expect(res.status).toBe(431);
    expect(res.headers.get('content-type')).toContain('application/fhir+json');
    const body = (await res.json()) as { resourceType: string; issue: { code: string; diagnostics: string }[] };
    expect(body.resourceType).toBe('OperationOutcome');
    expect(body.issue[0]!.code).toBe('too-long');
    expect(body.issue[0]!.diagnostics).toContain('_search');
  });
});
