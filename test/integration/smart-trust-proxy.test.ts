/**
 * GLUCOGUARD_TRUST_PROXY decides which address the per-IP rate limits count: behind a trusted
 * proxy the X-Forwarded-For client, otherwise the socket's peer (so a client cannot pick its own
 * address, and without the setting every client behind one proxy shares one limit).
 */
import { afterEach, describe, expect, test } from '@jest/globals';
import { startHarness, type Harness } from '../support/smart-harness.js';
import { startTestApp } from '../support/app.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

/** Token requests (refused for the bad grant, but counted first) from `forwardedFor`; their statuses. */
async function tokenStatuses(forwardedFor: string, n: number): Promise<number[]> {
  const statuses: number[] = [];
  for (let i = 0; i < n; i++) {
    const res = await fetch(h!.smart.urls.token, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-forwarded-for': forwardedFor },
      body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: 'x', client_id: 'nobody' }),
    });
    await res.arrayBuffer();
    statuses.push(res.status);
  }
  return statuses;
}

describe('per-IP token limit behind a proxy', () => {
  test('with GLUCOGUARD_TRUST_PROXY=loopback the limit keys on the forwarded client address', async () => {
    h = await startHarness({ rateLimits: { tokenPerIp: 3 }, env: { GLUCOGUARD_TRUST_PROXY: 'loopback' } });
    expect((await tokenStatuses('203.0.113.1', 4)).at(-1)).toBe(429);
    // another client behind the same proxy still has its own allowance
    expect(await tokenStatuses('203.0.113.2', 1)).not.toContain(429);
  });

  test('without it the limit keys on the socket address, whatever X-Forwarded-For says', async () => {
    h = await startHarness({ rateLimits: { tokenPerIp: 3 } });
    expect((await tokenStatuses('203.0.113.1', 4)).at(-1)).toBe(429);
    expect(await tokenStatuses('203.0.113.2', 1)).toEqual([429]);
  });
});

describe('the composed app', () => {
  test('applies GLUCOGUARD_TRUST_PROXY as express trust proxy (off by default)', async () => {
    for (const [env, trustsLoopbackPeer] of [[{}, false], [{ GLUCOGUARD_TRUST_PROXY: 'loopback' }, true]] as const) {
      const t = await startTestApp(env);
      try {
        const trusts = t.app.http.get('trust proxy fn') as (addr: string, hop: number) => boolean;
        expect(trusts('127.0.0.1', 0)).toBe(trustsLoopbackPeer);
      } finally {
        await t.close();
      }
    }
  });
});
