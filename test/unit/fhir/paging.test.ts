import { describe, expect, test } from '@jest/globals';
import type { AccessContext } from '../../../src/fhir/access.js';
import { PageTokens } from '../../../src/fhir/paging.js';

const alice: AccessContext = { kind: 'token', subject: 'alice', clientId: 'app', scopes: [] };
const bob: AccessContext = { kind: 'token', subject: 'bob', clientId: 'app', scopes: [] };

describe('page tokens', () => {
  const pages = new PageTokens(Buffer.alloc(32, 7));
  const state = { query: [['patient', '12'], ['_count', '2']] as [string, string][], offset: 4 };

  test('round-trips the query and offset for the requester it was issued to', () => {
    expect(pages.open(alice, pages.issue(alice, state))).toEqual(state);
  });

  test('binds the token to the requester: another requester gets 400', () => {
    expect(() => pages.open(bob, pages.issue(alice, state))).toThrow(expect.objectContaining({ code: 'ERR_INVALID' }));
  });

  test('an edited offset is refused', () => {
    const token = pages.issue(alice, state);
    const [, mac] = token.split('.');
    const forged = `${Buffer.from(JSON.stringify({ q: state.query, o: 0 })).toString('base64url')}.${mac}`;
    expect(() => pages.open(alice, forged)).toThrow(expect.objectContaining({ code: 'ERR_INVALID' }));
  });

  test('a token made with another key is refused', () => {
    const other = new PageTokens(Buffer.alloc(32, 8));
    expect(() => pages.open(alice, other.issue(alice, state))).toThrow(expect.objectContaining({ code: 'ERR_INVALID' }));
  });
});
