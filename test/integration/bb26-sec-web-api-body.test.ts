/**
 * The apps' JSON API (/apps/api/*) answers a body its JSON parser refuses — not JSON, or larger than
 * its 16 kB — as an OperationOutcome, as it answers every other refusal (session 26, black-box
 * security round). It answered the server's generic `{"error": "Malformed request body"}`.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';

let t: TestApp;

beforeAll(async () => {
  t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
}, 60_000);
afterAll(async () => t?.close());

describe('/apps/api request bodies', () => {
  test('malformed JSON is 400 OperationOutcome', async () => {
    const res = await request(t.app.http).post('/apps/api/password').set('Content-Type', 'application/json').send('{"current": ');
    expect(res.status).toBe(400);
    expect(res.headers['cache-control']).toBe('no-store');
    expect(res.body).toMatchObject({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'invalid' }] });
  });

  test('a body over 16 kB is 413 OperationOutcome', async () => {
    const res = await request(t.app.http).post('/apps/api/key/recover-with-code').set('Content-Type', 'application/json')
      .send(JSON.stringify({ code: 'x'.repeat(20_000) }));
    expect(res.status).toBe(413);
    expect(res.body).toMatchObject({ resourceType: 'OperationOutcome', issue: [{ severity: 'error' }] });
  });
});
