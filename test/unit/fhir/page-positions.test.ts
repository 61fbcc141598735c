/**
 * Page tokens carrying a repository position (keyset paging, src/fhir/paging.ts): the position
 * round-trips, is covered by the MAC like the rest, and tokens made before positions existed
 * (query and offset alone) still open, without one.
 */
import { describe, expect, test } from '@jest/globals';
import { createHmac } from 'node:crypto';
import type { AccessContext } from '../../../src/fhir/access.js';
import { PageTokens } from '../../../src/fhir/paging.js';

const alice: AccessContext = { kind: 'token', subject: 'alice', clientId: 'app', scopes: [] };
const key = Buffer.alloc(32, 7);
const query: [string, string][] = [['patient', 'Patient/12'], ['_sort', '-date'], ['_count', '2']];

describe('page tokens with a position', () => {
  const pages = new PageTokens(key);

  test('round-trip the position of the last match examined beside the query and offset', () => {
    const state = { query, offset: 4, after: '["sort:-date",1767225600000,4711]' };
    expect(pages.open(alice, pages.issue(alice, state))).toEqual(state);
  });

  test('an edited position is refused (400)', () => {
    const token = pages.issue(alice, { query, offset: 4, after: '["sort:-date",1767225600000,4711]' });
    const [, mac] = token.split('.');
    const forged = `${Buffer.from(JSON.stringify({ q: query, o: 4, a: '["sort:-date",1767225600000,1]' })).toString('base64url')}.${mac}`;
    expect(() => pages.open(alice, forged)).toThrow(expect.objectContaining({ code: 'ERR_INVALID' }));
  });

  test('a token issued before positions existed (query and offset) opens without one', () => {
    // the format and MAC of earlier releases, made here by hand
    const payload = Buffer.from(JSON.stringify({ q: query, o: 6 })).toString('base64url');
    const mac = createHmac('sha256', key).update('token|alice|app|').update('\n').update(payload).digest('base64url');
    const state = pages.open(alice, `${payload}.${mac}`);
    expect(state).toEqual({ query, offset: 6 });
    expect('after' in state).toBe(false);
  });
});
