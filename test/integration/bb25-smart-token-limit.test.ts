/**
 * The per-client token limit cannot be spent by someone else for a public client (session 25,
 * black-box round): anyone may name a public client's client_id, and 600 junk requests a minute
 * doing so from one address answered every user of the app 429 — code exchanges and refreshes
 * alike. A public client's requests now count per client and address; an authenticated client's
 * still count for the client wherever they come from.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { startHarness, type Harness } from '../support/smart-harness.js';
import { REDIRECT_URI } from '../support/smart-client.js';

let h: Harness;
let publicId: string;
let confidential: { clientId: string; secret: string };

beforeAll(async () => {
  h = await startHarness({ rateLimits: { tokenPerClient: 3, tokenPerIp: 1000 }, env: { GLUCOGUARD_TRUST_PROXY: 'loopback' } });
  publicId = h.smart.store.addClient({ name: 'Portal', type: 'public', redirectUris: [REDIRECT_URI], scopes: ['patient/*.rs'] }).client.clientId;
  const added = h.smart.store.addClient({ name: 'Server app', type: 'confidential-symmetric', redirectUris: [REDIRECT_URI], scopes: ['patient/*.rs'] });
  confidential = { clientId: added.client.clientId, secret: added.secret! };
});
afterAll(async () => h.close());

/** Statuses of `n` token requests (a refresh with a made-up token) from `from`. */
async function statuses(from: string, n: number, client: { clientId: string; secret?: string }): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const auth: Record<string, string> = client.secret ? { authorization: `Basic ${Buffer.from(`${client.clientId}:${client.secret}`).toString('base64')}` } : {};
    const res = await fetch(h.smart.urls.token, {
      method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-forwarded-for': from, ...auth },
      body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: 'made-up', ...(client.secret ? {} : { client_id: client.clientId }) } as Record<string, string>),
    });
    await res.arrayBuffer();
    out.push(res.status);
  }
  return out;
}

describe('per-client token limit', () => {
  test('a caller naming a public client spends only its own allowance, not its users\'', async () => {
    expect((await statuses('203.0.113.66', 5, { clientId: publicId })).at(-1)).toBe(429);
    expect(await statuses('203.0.113.1', 1, { clientId: publicId })).toEqual([400]); // invalid_grant, not 429
  });

  test('an authenticated client is counted as one, from whichever address', async () => {
    h.advance(120_000);
    const all = [...await statuses('203.0.113.2', 2, confidential), ...await statuses('203.0.113.3', 2, confidential)];
    expect(all).toEqual([400, 400, 400, 429]);
  });
});
