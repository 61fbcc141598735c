/**
 * POST /smart/launch answers a body its parsers refuse in its own dialect, OAuth error JSON, as it
 * answers every other refusal (session 25, black-box round: a body that was not JSON got the
 * server's generic `{"error": "Malformed request body"}`, whose `error` is no OAuth error code).
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { startHarness, type Harness } from '../support/smart-harness.js';

let h: Harness;
beforeAll(async () => { h = await startHarness(); });
afterAll(async () => h.close());

const launch = (body: string) => fetch(`${h.baseUrl}/smart/launch`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });

describe('POST /smart/launch with a body it cannot read', () => {
  test('not JSON: 400 invalid_request', async () => {
    const res = await launch('{"patient": ');
    expect(res.status).toBe(400);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(await res.json()).toEqual({ error: 'invalid_request', error_description: 'The body is not valid JSON' });
  });

  test('too large: 413 invalid_request', async () => {
    const res = await launch(JSON.stringify({ patient: 'x'.repeat(70_000) }));
    expect(res.status).toBe(413);
    expect(await res.json()).toEqual({ error: 'invalid_request', error_description: 'Request body too large' });
  });

  test('a readable body still reaches the endpoint (401 without a token)', async () => {
    const res = await launch('{}');
    expect(res.status).toBe(401);
    expect(await res.json()).toMatchObject({ error: 'invalid_token' });
  });
});
