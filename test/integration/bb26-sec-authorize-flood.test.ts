/**
 * Starting an authorization cannot be used to fill the shared KV store (session 26, black-box
 * security round). Every GET or POST /oauth/authorize that passes its checks stores the pending
 * request for ten minutes, before anyone signs in, and nothing limited either how many one address
 * could start or how much each held: a 60 kB `state` posted in a loop put gigabytes into the store
 * (Redis memory, which also holds revocations and codes) within its ten minutes. Now `state` and
 * `nonce` are at most 1024 characters, `scope` at most 4096, and one address starts at most 300
 * authorizations a minute.
 */
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { MemoryKeyValueStore } from '../../src/kv/memory.js';
import { startHarness, type Harness } from '../support/smart-harness.js';
import { browse, REDIRECT_URI } from '../support/smart-client.js';

/** The memory KV, counting the pending authorization requests written to it. */
class CountingKv extends MemoryKeyValueStore {
  pending = 0;
  override async set(key: string, value: string, ttlMs?: number): Promise<void> {
    if (key.startsWith('smart:authz:')) this.pending++;
    return super.set(key, value, ttlMs);
  }
}

let h: Harness;
let kv: CountingKv;
let clientId: string;

beforeEach(async () => {
  let clock = () => Date.now();
  kv = new CountingKv(() => clock());
  h = await startHarness({ kv });
  clock = h.now;
  clientId = h.smart.store.addClient({ name: 'Viewer', type: 'public', redirectUris: [REDIRECT_URI],
    scopes: ['openid', 'fhirUser', 'launch/patient', 'patient/*.rs'] }).client.clientId;
});
afterEach(async () => h.close());

function authorizeUrl(params: Record<string, string> = {}): string {
  const url = new URL(h.smart.urls.authorize);
  for (const [k, v] of Object.entries({ response_type: 'code', client_id: clientId, redirect_uri: REDIRECT_URI, scope: 'openid patient/*.rs',
    state: 's', aud: h.fhirBase, code_challenge: createHash('sha256').update(randomBytes(32).toString('base64url')).digest('base64url'),
    code_challenge_method: 'S256', ...params })) url.searchParams.set(k, v);
  return url.href;
}

function errorOf(location: string | undefined): string | null {
  return location ? new URL(location).searchParams.get('error') : null;
}

describe('authorization requests', () => {
  test('a state, nonce or scope beyond its bound is invalid_request, and nothing is stored', async () => {
    const tooLong: Record<string, string>[] = [{ state: 'x'.repeat(1025) }, { nonce: 'n'.repeat(1025) }, { scope: `openid ${'patient/*.rs '.repeat(400)}` }];
    for (const params of tooLong) {
      const res = await browse(authorizeUrl(params));
      expect(res.status).toBe(302);
      expect(errorOf(res.location)).toBe('invalid_request');
      // an over-long state is not sent back
      expect(new URL(res.location!).searchParams.get('state')).toBe(params.state ? null : 's');
    }
    expect(kv.pending).toBe(0);
    // at the bound, the sign-in page
    const ok = await browse(authorizeUrl({ state: 'x'.repeat(1024), nonce: 'n'.repeat(1024) }));
    expect(ok.status).toBe(200);
    expect(ok.html).toContain('name="password"');
    expect(kv.pending).toBe(1);
  });

  test('one address starts at most 300 a minute', async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 301; i++) statuses.push((await browse(authorizeUrl())).status);
    expect(statuses.slice(0, 300).every((s) => s === 200)).toBe(true);
    expect(statuses[300]).toBe(429);
    expect(Number((await fetch(authorizeUrl())).headers.get('retry-after'))).toBeGreaterThan(0);
    expect(kv.pending).toBe(300);
    h.advance(60_000);
    expect((await browse(authorizeUrl())).status).toBe(200);
  }, 60_000);
});
