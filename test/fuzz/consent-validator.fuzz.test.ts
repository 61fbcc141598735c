/**
 * Property-based fuzzing of the Consent validator (src/consent/terms.ts `consentTerms`): any JSON
 * shaped roughly like a Consent either yields well-formed terms or throws the 422 error kind with
 * issues — never another exception, never terms that break their own invariants. Mutations of a
 * valid Consent exercise each provision rule.
 */
import { describe, expect, test } from '@jest/globals';
import type { Consent } from '@medplum/fhirtypes';
import fc from 'fast-check';
import { consentTerms, PURPOSES } from '../../src/consent/terms.js';
import { loadFhirDefinitions } from '../../src/fhir/definitions.js';
import { GlucoGuardError } from '../../src/errors.js';
import { consentOf } from '../integration/consent-helpers.js';

loadFhirDefinitions();
const now = Date.parse('2026-11-25T00:00:00Z');
const valid = (): Consent => consentOf({ patient: 'p1', actor: 'Practitioner/d1', accessFrom: now - 1000, accessTo: now + 3 * 86_400_000, dataFrom: now - 14 * 86_400_000, dataTo: now });

function check(candidate: unknown): 'terms' | 'rejected' {
  try {
    const t = consentTerms(candidate as Consent);
    expect(t.notBefore).toBeLessThan(t.notAfter);
    expect(t.dataFrom).toBeLessThanOrEqual(t.dataTo);
    expect(t.purposes.length).toBeGreaterThan(0);
    for (const p of t.purposes) expect(PURPOSES.has(p)).toBe(true);
    expect(t.actor).toMatch(/^[A-Za-z]+\/[A-Za-z0-9\-._~]{1,64}$/);
    return 'terms';
  } catch (err) {
    if (!(err instanceof GlucoGuardError) || err.code !== 'ERR_UNPROCESSABLE') throw err;
    expect(err.issues.length).toBeGreaterThan(0);
    for (const i of err.issues) expect(i.expression?.[0]).toMatch(/^Consent/);
    return 'rejected';
  }
}

const jsonish = fc.letrec((tie) => ({
  value: fc.oneof({ depthSize: 'small' }, fc.constant(null), fc.boolean(), fc.integer(), fc.string({ maxLength: 12 }),
    fc.array(tie('value'), { maxLength: 3 }), fc.dictionary(fc.string({ maxLength: 8 }), tie('value'), { maxKeys: 4 })),
})).value;

const PATHS: string[][] = [
  ['scope'], ['patient'], ['patient', 'reference'], ['performer'], ['organization'], ['provision'], ['provision', 'type'],
  ['provision', 'period'], ['provision', 'period', 'start'], ['provision', 'period', 'end'], ['provision', 'dataPeriod'],
  ['provision', 'dataPeriod', 'start'], ['provision', 'actor'], ['provision', 'actor', '0', 'reference'], ['provision', 'action'],
  ['provision', 'purpose'], ['provision', 'purpose', '0', 'code'], ['provision', 'class'], ['provision', 'code'],
  ['provision', 'provision'], ['provision', 'data'], ['provision', 'securityLabel'], ['modifierExtension'], ['provision', 'modifierExtension'],
];

function setPath(target: Record<string, unknown>, path: string[], value: unknown): void {
  let node: Record<string, unknown> = target;
  for (const key of path.slice(0, -1)) {
    if (typeof node[key] !== 'object' || node[key] === null) node[key] = {};
    node = node[key] as Record<string, unknown>;
  }
  node[path[path.length - 1]!] = value;
}

describe('Consent validator fuzzing', () => {
  test('a valid Consent gives terms', () => {
    expect(check(valid())).toBe('terms');
  });

  test('arbitrary JSON never crashes the validator (2,000 cases)', () => {
    const outcomes = { terms: 0, rejected: 0 };
    fc.assert(fc.property(jsonish, (v) => {
      outcomes[check({ resourceType: 'Consent', ...(typeof v === 'object' && v && !Array.isArray(v) ? v : { value: v }) })]++;
    }), { numRuns: 2000 });
    expect(outcomes.rejected).toBeGreaterThan(0);
  });

  test('mutating any provision of a valid Consent gives terms or a 422 naming the element (3,000 cases)', () => {
    const outcomes = { terms: 0, rejected: 0 };
    fc.assert(fc.property(fc.constantFrom(...PATHS), jsonish, (path, value) => {
      const c = valid() as unknown as Record<string, unknown>;
      setPath(c, path, value);
      outcomes[check(c)]++;
    }), { numRuns: 3000 });
    expect(outcomes.rejected).toBeGreaterThan(0);
    expect(outcomes.terms).toBeGreaterThan(0);
  });
});
