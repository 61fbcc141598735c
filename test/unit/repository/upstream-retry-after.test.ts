/**
 * Retry-After as the upstream adapter reads it (RFC 9110 §10.2.3: delay-seconds or an HTTP-date),
 * and the answer a throttled request gets: 503 with Retry-After in seconds.
 */
import { describe, expect, it } from '@jest/globals';
import { unavailable } from '../../../src/errors.js';
import { errorToResponse } from '../../../src/fhir/outcomes.js';
import { retryAfterSeconds } from '../../../src/repository/upstream/client.js';

describe('Retry-After', () => {
  const now = Date.parse('2026-12-05T10:00:00Z');
  it('reads delay-seconds and HTTP-dates, in whole seconds from now', () => {
    expect(retryAfterSeconds('120', now)).toBe(120);
    expect(retryAfterSeconds(' 0 ', now)).toBe(0);
    expect(retryAfterSeconds('Sat, 05 Dec 2026 10:01:30 GMT', now)).toBe(90);
  });
  it('gives nothing for absent or unreadable values, 0 for a past date, a day at most', () => {
    expect(retryAfterSeconds(null, now)).toBeUndefined();
    expect(retryAfterSeconds('', now)).toBeUndefined();
    expect(retryAfterSeconds('soon', now)).toBeUndefined();
    expect(retryAfterSeconds('-5', now)).toBeUndefined();
    expect(retryAfterSeconds('Thu, 01 Jan 2026 00:00:00 GMT', now)).toBe(0);
    expect(retryAfterSeconds('99999999', now)).toBe(86_400);
  });
  it('an error that carries Retry-After answers with it', () => {
    const err = unavailable('Upstream FHIR server is busy; retry later');
    err.headers = { 'Retry-After': '30' };
    const res = errorToResponse(err);
    expect([res.status, res.headers]).toEqual([503, { 'Retry-After': '30' }]);
  });
});
