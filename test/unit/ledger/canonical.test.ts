/**
 * canonicalResourceText writes the RFC 8785 text through a key-sorted copy and the native
 * JSON.stringify when the data is plain JSON, and through the `canonicalize` library otherwise: the
 * two must give the same text (commitments, stored bodies and the chain depend on it), and fail alike.
 */
import { describe, expect, it } from '@jest/globals';
import type { Resource } from '@medplum/fhirtypes';
import canonicalizeModule from 'canonicalize';
import fc from 'fast-check';
import { canonicalResourceText, stripServerMeta } from '../../../src/ledger/canonical.js';

const canonicalize = canonicalizeModule as unknown as (input: unknown) => string | undefined;

/** What the library makes of it: its text, or that it throws. */
function byLibrary(value: unknown): { text?: string; throws?: true } {
  try {
    const text = canonicalize(stripServerMeta(value as Resource));
    return text === undefined ? { throws: true } : { text };
  } catch {
    return { throws: true };
  }
}

function ours(value: unknown): { text?: string; throws?: true } {
  try {
    return { text: canonicalResourceText(value as Resource) };
  } catch {
    return { throws: true };
  }
}

describe('canonicalResourceText', () => {
  it('writes a resource as RFC 8785 does: members sorted at every level, server meta left out', () => {
    const text = canonicalResourceText({
      resourceType: 'Observation', status: 'final', id: 'a', meta: { versionId: '3', lastUpdated: '2026-01-01T00:00:00Z', profile: ['p'] },
      code: { text: 'é ☃ \u2028', coding: [{ system: 's', code: 'c' }] }, valueQuantity: { value: 1.5e-7, unit: 'mg/dL' }, component: [],
    } as Resource);
    expect(text).toBe('{"code":{"coding":[{"code":"c","system":"s"}],"text":"é ☃ \u2028"},"component":[],"id":"a","meta":{"profile":["p"]},'
      + '"resourceType":"Observation","status":"final","valueQuantity":{"unit":"mg/dL","value":1.5e-7}}');
  });

  it('gives the library\'s text on random JSON, and on what only the library can write', () => {
    const key = fc.oneof(fc.string({ maxLength: 6 }), fc.constantFrom('0', '1', '10', '9', '007', '4294967295', '__proto__', 'toJSON', 'meta', 'versionId', 'lastUpdated', 'é', '\ud800', 'a\u0000'));
    const leaf = fc.oneof(
      fc.constant(null), fc.boolean(), fc.double(), fc.integer(), fc.string({ maxLength: 8 }), fc.string({ maxLength: 4, unit: 'binary' }),
      fc.constantFrom(undefined, -0, 1e21, 5e-324, Number.NaN, Infinity, Symbol('s'), () => 1, '\ud800', new Date(0)),
    );
    const { tree } = fc.letrec<{ tree: unknown }>((tie) => ({
      tree: fc.oneof({ depthSize: 'small', withCrossShrink: true },
        leaf,
        fc.array(tie('tree'), { maxLength: 4 }),
        fc.sparseArray(tie('tree'), { maxLength: 4 }),
        fc.dictionary(key, tie('tree'), { maxKeys: 5 })),
    }));
    const resource = fc.record({ body: fc.dictionary(key, tree, { maxKeys: 6 }), meta: fc.option(fc.dictionary(key, tree, { maxKeys: 3 })) })
      .map(({ body, meta }) => ({ ...(body as object), resourceType: 'Observation', ...(meta ? { meta } : {}) }));
    let native = 0;
    fc.assert(fc.property(resource, (r) => {
      const expected = byLibrary(r);
      expect(ours(r)).toEqual(expected);
      if (expected.text !== undefined) native++;
    }), { numRuns: 3000, seed: 20261205 });
    expect(native).toBeGreaterThan(300);
  });

  it('writes an object with array-index member names as the library does (sorted as text, not as numbers)', () => {
    const r = { resourceType: 'Basic', extension: [{ url: 'x', '10': 1, '9': 2, b: 3, a: 4 }] } as unknown as Resource;
    expect(canonicalResourceText(r)).toBe('{"extension":[{"10":1,"9":2,"a":4,"b":3,"url":"x"}],"resourceType":"Basic"}');
  });
});
