/** src/fhir/subsetting.ts without HTTP: what a subset keeps, and that it never changes its input. */
import { beforeAll, describe, expect, test } from '@jest/globals';
import type { Observation, Patient } from '@medplum/fhirtypes';
import { loadFhirDefinitions } from '../../../src/fhir/definitions.js';
import { parseSubsetting, subsetResource, SUBSETTED } from '../../../src/fhir/subsetting.js';

beforeAll(() => loadFhirDefinitions());

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object') {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}

const patient: Patient = deepFreeze({
  resourceType: 'Patient',
  id: 'p1',
  meta: { versionId: '3', tag: [{ system: 'urn:glucoguard:integrity', code: 'pending' }] },
  implicitRules: 'http://example.org/rules',
  modifierExtension: [{ url: 'http://example.org/modifier', valueBoolean: true }],
  text: { status: 'generated', div: '<div xmlns="http://www.w3.org/1999/xhtml">P</div>' },
  name: [{ family: 'Lee' }],
  birthDate: '1990-01-01',
  _birthDate: { extension: [{ url: 'http://example.org/accuracy', valueString: 'estimated' }] },
  gender: 'female',
  contact: [{ name: { family: 'Lee' } }],
} as Patient);

describe('subsetResource', () => {
  test('keeps id, meta and the modifier elements in every subset, and an element\'s _ sibling with it', () => {
    const out = subsetResource(patient, { kind: 'elements', names: ['birthDate'] });
    expect(Object.keys(out).sort()).toEqual(['_birthDate', 'birthDate', 'id', 'implicitRules', 'meta', 'modifierExtension', 'resourceType']);
  });

  test('adds SUBSETTED once, after the tags already there, and never changes a frozen input', () => {
    const once = subsetResource(patient, { kind: 'summary', mode: 'true' });
    expect(once.meta!.tag).toEqual([{ system: 'urn:glucoguard:integrity', code: 'pending' }, { ...SUBSETTED }]);
    expect(once.meta!.versionId).toBe('3');
    const twice = subsetResource(once, { kind: 'summary', mode: 'true' });
    expect(twice.meta!.tag!.filter((t) => t.code === 'SUBSETTED')).toHaveLength(1);
    expect(patient.meta!.tag).toHaveLength(1);
    expect(patient.contact).toHaveLength(1);
  });

  test('answers the input itself when nothing is left out', () => {
    const plain: Observation = { resourceType: 'Observation', id: 'o', status: 'final', code: { text: 'glucose' } };
    expect(subsetResource(plain, { kind: 'summary', mode: 'data' })).toBe(plain);
    expect(subsetResource(patient, { kind: 'elements', names: ['name'] }, true)).toBe(patient);
  });
});

describe('parseSubsetting', () => {
  const strict = { lenient: false, including: false };

  test('reads _summary modes and _elements lists (comma-separated, repeated, type-qualified)', () => {
    expect(parseSubsetting('Patient', { _summary: 'text' }, strict)).toEqual({ kind: 'summary', mode: 'text' });
    expect(parseSubsetting('Patient', { _summary: 'false' }, strict)).toBeUndefined();
    expect(parseSubsetting('Patient', {}, strict)).toBeUndefined();
    expect(parseSubsetting('Observation', { _elements: ['status,Observation.valueQuantity', 'effective'] }, strict))
      .toEqual({ kind: 'elements', names: ['status', 'valueQuantity', 'effective'] });
  });

  test('refuses what it cannot honour, or leaves it out under lenient handling', () => {
    expect(() => parseSubsetting('Patient', { _summary: ['true', 'data'] }, strict)).toThrow(/once/);
    expect(() => parseSubsetting('Patient', { _elements: 'valueQuantity' }, strict)).toThrow(/not a top-level element of Patient/);
    for (const name of ['__proto__', 'constructor', 'toString', 'hasOwnProperty']) {
      expect(() => parseSubsetting('Patient', { _elements: name }, strict)).toThrow(/not a top-level element/);
    }
    expect(parseSubsetting('Patient', { _elements: 'bogus,name' }, { lenient: true, including: false })).toEqual({ kind: 'elements', names: ['name'] });
    expect(parseSubsetting('Patient', { _summary: 'count' }, { lenient: true, including: false })).toBeUndefined();
    expect(parseSubsetting('Patient', { _summary: 'true', _elements: 'name' }, { lenient: true, including: false })).toEqual({ kind: 'summary', mode: 'true' });
  });
});
