/**
 * FHIRPath Patch (https://hl7.org/fhir/R4/fhirpatch.html) applied to resources in memory: every
 * operation type, choice and backbone values, what cannot be applied (422 issues) and what is
 * malformed (400).
 */
import { describe, expect, test } from '@jest/globals';
import type { Observation, Parameters, ParametersParameter, Patient } from '@medplum/fhirtypes';
import { isGlucoGuardError } from '../../../src/errors.js';
import { applyFhirPathPatch, parseFhirPathPatch } from '../../../src/fhir/fhirpath-patch.js';

type Part = ParametersParameter;
const op = (type: string, path: string, ...parts: Part[]): Part => ({
  name: 'operation', part: [{ name: 'type', valueCode: type }, { name: 'path', valueString: path }, ...parts],
});
const doc = (...operations: Part[]): Parameters => ({ resourceType: 'Parameters', parameter: operations });
const patched = <T>(resource: T, ...operations: Part[]): { resource: T; issues: string[] } => {
  const copy = structuredClone(resource);
  const issues = applyFhirPathPatch(copy as never, parseFhirPathPatch(doc(...operations))).map((i) => i.diagnostics!);
  return { resource: copy, issues };
};

const patient: Patient = {
  resourceType: 'Patient', id: 'p1', birthDate: '1970-01-01', active: true,
  name: [{ family: 'Ito', given: ['Aya', 'B'] }, { use: 'nickname', given: ['Ay'] }],
  identifier: [{ system: 'urn:a', value: '1' }, { system: 'urn:b', value: '2' }],
};
const reading: Observation = {
  resourceType: 'Observation', id: 'o1', status: 'preliminary', code: { text: 'glucose' },
  valueQuantity: { value: 104, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
};

describe('FHIRPath Patch', () => {
  test('add: a single element where there was none, a value appended to a list, a list started', () => {
    const r = patched(patient,
      op('add', 'Patient', { name: 'name', valueString: 'gender' }, { name: 'value', valueCode: 'female' }),
      op('add', 'Patient', { name: 'name', valueString: 'identifier' }, { name: 'value', valueIdentifier: { system: 'urn:c', value: '3' } }),
      op('add', 'Patient.name[1]', { name: 'name', valueString: 'given' }, { name: 'value', valueString: 'Ayako' }),
      op('add', 'Patient', { name: 'name', valueString: 'telecom' }, { name: 'value', valueContactPoint: { system: 'email', value: 'a@example.org' } }));
    expect(r.issues).toEqual([]);
    expect(r.resource.gender).toBe('female');
    expect(r.resource.identifier!.map((i) => i.value)).toEqual(['1', '2', '3']);
    expect(r.resource.name![1]!.given).toEqual(['Ay', 'Ayako']);
    expect(r.resource.telecom).toEqual([{ system: 'email', value: 'a@example.org' }]);
  });

  test('add: a choice element by its name takes the type of the value; a backbone element is given by parts', () => {
    const r = patched({ ...reading, valueQuantity: undefined } as Observation,
      op('add', 'Observation', { name: 'name', valueString: 'value' }, { name: 'value', valueString: 'HIGH' }),
      op('add', 'Observation', { name: 'name', valueString: 'component' }, { name: 'value', part: [
        { name: 'code', valueCodeableConcept: { text: 'trend' } }, { name: 'valueString', valueString: 'rising' }] }));
    expect(r.issues).toEqual([]);
    expect(r.resource.valueString).toBe('HIGH');
    expect(r.resource.component).toEqual([{ code: { text: 'trend' }, valueString: 'rising' }]);
  });

  test('insert and move within a list; an index past the end is refused', () => {
    const r = patched(patient,
      op('insert', 'Patient.identifier', { name: 'index', valueInteger: 0 }, { name: 'value', valueIdentifier: { system: 'urn:z', value: '0' } }),
      op('move', 'Patient.identifier', { name: 'source', valueInteger: 0 }, { name: 'destination', valueInteger: 2 }),
      op('insert', 'Patient.name[0].given', { name: 'index', valueInteger: 2 }, { name: 'value', valueString: 'C' }));
    expect(r.issues).toEqual([]);
    expect(r.resource.identifier!.map((i) => i.value)).toEqual(['1', '2', '0']);
    expect(r.resource.name![0]!.given).toEqual(['Aya', 'B', 'C']);
    expect(patched(patient, op('insert', 'Patient.identifier', { name: 'index', valueInteger: 3 }, { name: 'value', valueIdentifier: {} })).issues[0])
      .toMatch(/index 3 is past the end/);
    expect(patched(patient, op('insert', 'Patient.birthDate', { name: 'index', valueInteger: 0 }, { name: 'value', valueDate: '2000-01-01' })).issues[0])
      .toMatch(/not a list/);
  });

  test('delete: one element, one list item (an emptied list goes), nothing when nothing matches', () => {
    const r = patched(patient,
      op('delete', 'Patient.birthDate'),
      op('delete', "Patient.identifier.where(system = 'urn:a')"),
      op('delete', 'Patient.name[1].given[0]'),
      op('delete', 'Patient.deceased'));
    expect(r.issues).toEqual([]);
    expect(r.resource.birthDate).toBeUndefined();
    expect(r.resource.identifier).toEqual([{ system: 'urn:b', value: '2' }]);
    expect(r.resource.name![1]).toEqual({ use: 'nickname' });
    expect(r.resource.active).toBe(true);
  });

  test('replace: a primitive, a list item, a nested value, a choice element with another type', () => {
    const p = patched(patient,
      op('replace', 'Patient.birthDate', { name: 'value', valueDate: '1971-02-03' }),
      op('replace', 'Patient.name[0].given[1]', { name: 'value', valueString: 'Beth' }),
      op('replace', "Patient.identifier.where(system = 'urn:b').value", { name: 'value', valueString: '22' }));
    expect(p.issues).toEqual([]);
    expect(p.resource).toMatchObject({ birthDate: '1971-02-03', name: [{ given: ['Aya', 'Beth'] }, {}], identifier: [{ value: '1' }, { value: '22' }] });
    const o = patched(reading, op('replace', 'Observation.value.value', { name: 'value', valueDecimal: 105 }));
    expect(o.resource.valueQuantity!.value).toBe(105);
    const s = patched(reading, op('replace', 'Observation.value', { name: 'value', valueString: 'HIGH' }));
    expect(s.issues).toEqual([]);
    expect(s.resource.valueQuantity).toBeUndefined();
    expect(s.resource.valueString).toBe('HIGH');
  });

  test('what cannot be applied is an issue naming the operation; nothing quotes resource content', () => {
    const cases: [Part, RegExp][] = [
      [op('replace', 'Patient.gender', { name: 'value', valueCode: 'male' }), /names no element/],
      [op('replace', 'Patient.identifier', { name: 'value', valueIdentifier: {} }), /more than one element/],
      [op('delete', 'Patient.name.given'), /more than one element/],
      [op('add', 'Patient', { name: 'name', valueString: 'birthDate' }, { name: 'value', valueDate: '2000-01-01' }), /already has a birthDate/],
      [op('add', 'Patient.birthDate', { name: 'name', valueString: 'x' }, { name: 'value', valueString: 'y' }), /names a value/],
      [op('replace', "Patient.name.where(family = 'Ito' and given.first().startsWith('A')).family", { name: 'value', valueString: 'Ono' }), /^$/],
      [op('replace', 'Patient.active.ofType(boolean)', { name: 'value', valueBoolean: true }), /^$/],
    ];
    for (const [operation, message] of cases) {
      const r = patched(patient, op('replace', 'Patient.active', { name: 'value', valueBoolean: false }), operation);
      const issue = r.issues[0] ?? '';
      expect(issue).toMatch(message);
      if (issue) expect(issue).toMatch(/^Patch operation 1 /);
      expect(issue).not.toMatch(/Aya|1970/);
    }
  });

  test.each([
    ['no operations', doc()],
    ['a parameter that is not an operation', doc({ name: 'op', part: [] })],
    ['an unknown type', doc(op('merge', 'Patient'))],
    ['a missing value', doc(op('replace', 'Patient.active'))],
    ['a part the type does not take', doc(op('delete', 'Patient.active', { name: 'value', valueBoolean: true }))],
    ['a prototype name', doc(op('add', 'Patient', { name: 'name', valueString: '__proto__' }, { name: 'value', valueString: 'x' }))],
    ['a prototype part name', doc(op('add', 'Patient', { name: 'name', valueString: 'contact' }, { name: 'value', part: [{ name: 'constructor', valueString: 'x' }] }))],
    ['a negative index', doc(op('insert', 'Patient.identifier', { name: 'index', valueInteger: -1 }, { name: 'value', valueIdentifier: {} }))],
    ['two values', doc(op('replace', 'Patient.active', { name: 'value', valueBoolean: true, valueString: 'x' } as Part))],
    ['a repeated part', doc(op('replace', 'Patient.active', { name: 'value', valueBoolean: true }, { name: 'value', valueBoolean: false }))],
    ['a path that is not FHIRPath', doc(op('delete', 'Patient.name.('))],
    ['a path that repeats without end', doc(op('delete', '(1).repeat($this + 1)'))],
    ['a path that multiplies collections', doc(op('delete', 'Patient.name.select(given | family).select(given)'))],
    ['a path with a regular expression', doc(op('delete', "Patient.name.where(family.matches('(a+)+$'))"))],
    ['a path that traces', doc(op('delete', "Patient.name.trace('x')"))],
    ['a path that descends', doc(op('delete', 'Patient.descendants()'))],
    // JSON null where the document has an object, and a parameter list that is not a list (a fuzz
    // counterexample answered 500 for the first: `{"resourceType":"Parameters","parameter":[null]}`)
    ['a null parameter', { resourceType: 'Parameters', parameter: [null] }],
    ['a parameter list that is an object', { resourceType: 'Parameters', parameter: { name: 'operation' } }],
    ['a parameter list that is a string', { resourceType: 'Parameters', parameter: 'operation' }],
    ['a null part', doc({ name: 'operation', part: [{ name: 'type', valueCode: 'delete' }, null as unknown as Part] })],
    ['a null part of a value', doc(op('add', 'Patient', { name: 'name', valueString: 'contact' }, { name: 'value', part: [null as unknown as Part] }))],
  ])('refuses %s as malformed (400)', (_what, body) => {
    let err: unknown;
    try {
      parseFhirPathPatch(body as Parameters);
    } catch (e) {
      err = e;
    }
    expect(isGlucoGuardError(err, 'ERR_INVALID')).toBe(true);
    expect(({} as Record<string, unknown>).x).toBeUndefined();
  });
});
