import { describe, expect, test } from '@jest/globals';
import type { AccessContext } from '../../../src/fhir/access.js';
import { describeScope, parseResourceScope, scopeAllows, scopeCovers } from '../../../src/smart/scopes.js';

const CAT = 'http://terminology.hl7.org/CodeSystem/observation-category';
const lab = { resourceType: 'Observation', id: 'o1', subject: { reference: 'Patient/12' }, category: [{ coding: [{ system: CAT, code: 'laboratory' }] }],
  code: { coding: [{ system: 'http://loinc.org', code: '4548-4' }] } };
const vital = { ...lab, id: 'o2', category: [{ coding: [{ system: CAT, code: 'vital-signs' }] }] };
const otherPatient = { ...lab, id: 'o3', subject: { reference: 'Patient/123' } };
const token = (scopes: string[], patient?: string): AccessContext => ({ kind: 'token', scopes, ...(patient ? { patient } : {}) });

describe('parsing', () => {
  test('v1 read/write/* map to v2 permissions', () => {
    expect([...parseResourceScope('patient/Observation.read')!.permissions].sort()).toEqual(['r', 's']);
    expect([...parseResourceScope('user/*.write')!.permissions].sort()).toEqual(['c', 'd', 'u']);
    expect([...parseResourceScope('system/*.*')!.permissions].sort()).toEqual(['c', 'd', 'r', 's', 'u']);
  });

  test('v2 permissions must be in cruds order and not empty', () => {
    expect(parseResourceScope('patient/Observation.rs')).toBeDefined();
    expect(parseResourceScope('patient/Observation.sr')).toBeUndefined();
    expect(parseResourceScope('patient/Observation.')).toBeUndefined();
    expect(parseResourceScope('patient/Observation.rx')).toBeUndefined();
  });

  test('granular filters are parsed; v1 scopes cannot carry them', () => {
    expect(parseResourceScope(`patient/Observation.rs?category=${CAT}|laboratory`)!.filter).toEqual([['category', `${CAT}|laboratory`]]);
    expect(parseResourceScope(`patient/Observation.read?category=${CAT}|laboratory`)).toBeUndefined();
  });
});

describe('scopeAllows', () => {
  test('v1 and v2 scopes allow reads of the launch patient only', () => {
    for (const s of ['patient/Observation.read', 'patient/Observation.rs', 'patient/*.rs']) {
      expect(scopeAllows(token([s], '12'), 'read', 'Observation', lab)).toBe(true);
      expect(scopeAllows(token([s], '12'), 'read', 'Observation', otherPatient)).toBe(false);
    }
  });

  test('Patient/12 is not Patient/123 (exact references)', () => {
    expect(scopeAllows(token(['patient/*.rs'], '12'), 'read', 'Observation', otherPatient)).toBe(false);
    expect(scopeAllows(token(['patient/*.rs'], '123'), 'read', 'Observation', lab)).toBe(false);
    expect(scopeAllows(token(['patient/*.rs'], '12'), 'read', 'Patient', { resourceType: 'Patient', id: '123' })).toBe(false);
  });

  test('a patient scope without a patient in context allows nothing', () => {
    expect(scopeAllows(token(['patient/*.rs']), 'search', 'Observation')).toBe(false);
  });

  test('a resource with no patient link is denied to patient scopes (fail closed)', () => {
    expect(scopeAllows(token(['patient/*.rs'], '12'), 'read', 'Medication', { resourceType: 'Medication', id: 'm' })).toBe(false);
  });

  test('permissions are checked per interaction', () => {
    expect(scopeAllows(token(['user/Observation.r']), 'read', 'Observation', lab)).toBe(true);
    expect(scopeAllows(token(['user/Observation.r']), 'search', 'Observation')).toBe(false);
    expect(scopeAllows(token(['user/Observation.rs']), 'create', 'Observation', lab)).toBe(false);
    expect(scopeAllows(token(['user/*.cruds']), 'delete', 'Observation', lab)).toBe(true);
    expect(scopeAllows(token(['system/Patient.rs']), 'read', 'Observation', lab)).toBe(false);
  });

  test('granular category filter: matching resources only; OR over comma values', () => {
    const access = token([`patient/Observation.rs?category=${CAT}|laboratory`], '12');
    expect(scopeAllows(access, 'search', 'Observation')).toBe(true);
    expect(scopeAllows(access, 'read', 'Observation', lab)).toBe(true);
    expect(scopeAllows(access, 'read', 'Observation', vital)).toBe(false);
    const either = token([`user/Observation.rs?category=${CAT}|laboratory,${CAT}|vital-signs`]);
    expect(scopeAllows(either, 'read', 'Observation', vital)).toBe(true);
  });

  test('granular code filter', () => {
    const access = token(['user/Observation.rs?code=http://loinc.org|8867-4']);
    expect(scopeAllows(access, 'read', 'Observation', lab)).toBe(false);
    expect(scopeAllows(access, 'read', 'Observation', { ...lab, code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] } })).toBe(true);
  });

  test('a filtered scope plus an unfiltered one: the unfiltered one allows', () => {
    const access = token([`patient/Observation.rs?category=${CAT}|laboratory`, 'patient/Observation.r'], '12');
    expect(scopeAllows(access, 'read', 'Observation', vital)).toBe(true);
  });

  test('open access (auth off) allows everything', () => {
    expect(scopeAllows({ kind: 'open', scopes: [] }, 'delete', 'Patient')).toBe(true);
  });
});

describe('scopeCovers (narrowing, client registration)', () => {
  test('wildcards and permission subsets are covered; wider ones are not', () => {
    expect(scopeCovers(['patient/*.rs'], 'patient/Observation.r')).toBe(true);
    expect(scopeCovers(['patient/*.rs'], 'patient/Observation.read')).toBe(true);
    expect(scopeCovers(['patient/Observation.rs'], 'patient/*.rs')).toBe(false);
    expect(scopeCovers(['patient/*.rs'], 'user/Observation.rs')).toBe(false);
    expect(scopeCovers(['patient/*.rs'], 'patient/Observation.cruds')).toBe(false);
    expect(scopeCovers([`patient/Observation.rs?category=${CAT}|laboratory`], 'patient/Observation.rs')).toBe(false);
    expect(scopeCovers(['patient/Observation.rs'], `patient/Observation.rs?category=${CAT}|laboratory`)).toBe(true);
    expect(scopeCovers(['openid'], 'openid')).toBe(true);
    expect(scopeCovers(['openid'], 'fhirUser')).toBe(false);
  });
});

test('describeScope speaks plainly', () => {
  expect(describeScope('patient/Observation.rs')).toBe('Read Observation records of the selected patient');
  expect(describeScope('offline_access')).toMatch(/after you close the app/);
  expect(describeScope(`patient/Observation.rs?category=${CAT}|laboratory`)).toMatch(/only category laboratory/);
});
