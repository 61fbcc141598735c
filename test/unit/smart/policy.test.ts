/**
 * The SMART scope policy's type-level check, by SMART App Launch 2.2 "Scopes for requesting
 * clinical data": `r` is instance read, vread and instance history; `s` is type and system search
 * and type and system history; a v1 `.read` is `.rs`.
 */
import { describe, expect, test } from '@jest/globals';
import type { AccessContext } from '../../../src/fhir/access.js';
import { isGlucoGuardError } from '../../../src/errors.js';
import { SmartScopePolicy } from '../../../src/smart/policy.js';
import type { Interaction } from '../../../src/fhir/policy.js';

const policy = new SmartScopePolicy();
const token = (scopes: string[]): AccessContext => ({ kind: 'token', scopes, patient: 'p1' });

function allowed(scopes: string[], interaction: Interaction, type = 'Observation'): boolean {
  try {
    policy.authorize(token(scopes), interaction, type);
    return true;
  } catch (err) {
    if (isGlucoGuardError(err, 'ERR_FORBIDDEN')) return false;
    throw err;
  }
}

describe('history by SMART v2 permission', () => {
  test('r allows instance history but not type or system history (an enumeration of the type)', () => {
    expect(allowed(['patient/Observation.r'], 'history')).toBe(true);
    expect(allowed(['patient/Observation.r'], 'vread')).toBe(true);
    expect(allowed(['patient/Observation.r'], 'history-type')).toBe(false);
    expect(allowed(['patient/*.r'], 'history-type', '*')).toBe(false);
  });

  test('s allows type and system history, as it allows type search', () => {
    expect(allowed(['patient/Observation.s'], 'history-type')).toBe(true);
    expect(allowed(['patient/Observation.s'], 'search')).toBe(true);
    expect(allowed(['patient/*.s'], 'history-type', '*')).toBe(true);
    expect(allowed(['patient/Observation.s'], 'history')).toBe(false);
  });

  test('v1 .read (= .rs) allows instance, type and system history', () => {
    expect(allowed(['patient/Observation.read'], 'history')).toBe(true);
    expect(allowed(['patient/Observation.read'], 'history-type')).toBe(true);
    expect(allowed(['patient/*.read'], 'history-type', '*')).toBe(true);
  });

  test('a scope for another type allows neither', () => {
    expect(allowed(['patient/Patient.rs'], 'history')).toBe(false);
    expect(allowed(['patient/Patient.rs'], 'history-type')).toBe(false);
  });
});
