import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, test } from '@jest/globals';
import type { Bundle, Observation, Resource } from '@medplum/fhirtypes';
import { envelopeShapeIssues, jsonShapeIssues, ProfileValidator } from '../../../src/fhir/validation.js';
import { PROFILES_DIR, PACKAGE_ROOT } from '../../../src/paths.js';

const fixtures = path.join(PACKAGE_ROOT, 'test/fixtures/cgm-ig');
const load = <T extends Resource>(name: string): T => JSON.parse(readFileSync(path.join(fixtures, name), 'utf8')) as T;
const validator = new ProfileValidator(PROFILES_DIR);
const CGM = 'http://hl7.org/fhir/uv/cgm/StructureDefinition/';

/** Which IG profile each IG example claims (the examples carry no meta.profile of their own). */
const exampleProfiles: Record<string, string> = {
  'Observation-cgmSensorReadingMassPerVolumeExample.json': 'cgm-sensor-reading-mass-per-volume',
  'Observation-cgmSensorReadingMolesPerVolumeExample.json': 'cgm-sensor-reading-moles-per-volume',
  'Observation-cgmSummaryExample.json': 'cgm-summary',
  'Observation-cgmSummaryTimesInRangesExample.json': 'cgm-summary-times-in-ranges',
  'Observation-cgmSummaryGMIExample.json': 'cgm-summary-gmi',
  'Observation-cgmSummaryCoefficientOfVariationExample.json': 'cgm-summary-coefficient-of-variation',
  'Observation-cgmSummaryDaysOfWearExample.json': 'cgm-summary-days-of-wear',
  'Observation-cgmSummarySensorActivePercentageExample.json': 'cgm-summary-sensor-active-percentage',
  'Observation-cgmSummaryMeanGlucoseMassPerVolumeExample.json': 'cgm-summary-mean-glucose-mass-per-volume',
  'Observation-cgmSummaryMeanGlucoseMolesPerVolumeExample.json': 'cgm-summary-mean-glucose-moles-per-volume',
  'Device-cgmDeviceExample.json': 'cgm-device',
  'DiagnosticReport-cgmSummaryPDFExample.json': 'cgm-summary-pdf',
};

describe('profile validation', () => {
  test('loads every CGM IG profile from profiles/', () => {
    expect(validator.profileUrls()).toEqual(expect.arrayContaining(Object.values(exampleProfiles).map((p) => CGM + p)));
  });

  test.each(Object.entries(exampleProfiles))('the IG example %s validates against %s', (file, profile) => {
    const resource = load(file);
    const errors = validator.check(resource, [CGM + profile]).filter((i) => i.severity === 'error');
    expect(errors).toEqual([]);
  });

  test('every IG example file validates against base R4', () => {
    for (const file of readdirSync(fixtures)) {
      const errors = validator.check(load(file)).filter((i) => i.severity === 'error');
      expect({ file, errors }).toEqual({ file, errors: [] });
    }
  });

  test('rejects a sensor reading with the wrong LOINC code, naming the path', () => {
    const obs = load<Observation>('Observation-cgmSensorReadingMassPerVolumeExample.json');
    obs.code = { coding: [{ system: 'http://loinc.org', code: '2339-0' }] };
    const errors = validator.check(obs, [CGM + 'cgm-sensor-reading-mass-per-volume']).filter((i) => i.severity === 'error');
    expect(errors.length).toBeGreaterThan(0);
    expect(errors.some((i) => i.expression?.some((e) => e.includes('code')))).toBe(true);
  });

  test('rejects a sensor reading with neither value nor dataAbsentReason', () => {
    const obs = load<Observation>('Observation-cgmSensorReadingMassPerVolumeExample.json');
    delete obs.valueQuantity;
    expect(() => validator.assertValid({ ...obs, meta: { profile: [CGM + 'cgm-sensor-reading-mass-per-volume'] } }))
      .toThrow(expect.objectContaining({ code: 'ERR_UNPROCESSABLE' }));
  });

  test('a failed invariant is told by its key and human description, with its FHIRPath and the profile', () => {
    const obs = load<Observation>('Observation-cgmSensorReadingMassPerVolumeExample.json');
    delete obs.valueQuantity;
    const [issue, ...more] = validator.check(obs, [CGM + 'cgm-sensor-reading-mass-per-volume']).filter((i) => i.severity === 'error');
    expect(more).toEqual([]);
    expect(issue).toEqual({
      severity: 'error', code: 'invariant', expression: ['Observation'],
      diagnostics: 'Constraint cgm-sensor-value-or-dar not met: A sensor reading must have a valueQuantity or a dataAbsentReason. '
        + '(FHIRPath: value.exists() or dataAbsentReason.exists()) (profile CGMSensorReadingMassPerVolume)',
    });
    // a base R4 invariant (obs-6) the same way, without a profile
    const both = validator.check({ ...load<Observation>('Observation-cgmSensorReadingMassPerVolumeExample.json'), dataAbsentReason: { text: 'sensor error' } });
    expect(both.filter((i) => i.severity === 'error').map((i) => i.diagnostics))
      .toEqual(['Constraint obs-6 not met: dataAbsentReason SHALL only be present if Observation.value[x] is not present (FHIRPath: dataAbsentReason.empty() or value.empty())']);
    // the other kinds keep medplum's text as it was
    expect(validator.check({ resourceType: 'Patient', name: [{ family: '  ' }], bogus: 1 } as unknown as Resource).map((i) => i.diagnostics))
      .toEqual(expect.arrayContaining(['String must contain non-whitespace content', 'Invalid additional property "bogus"']));
  });

  test('rejects a reading in the wrong unit for the mass-per-volume profile', () => {
    const obs = load<Observation>('Observation-cgmSensorReadingMassPerVolumeExample.json');
    obs.valueQuantity = { value: 6.7, unit: 'mmol/L', system: 'http://unitsofmeasure.org', code: 'mmol/L' };
    const errors = validator.check(obs, [CGM + 'cgm-sensor-reading-mass-per-volume']).filter((i) => i.severity === 'error');
    expect(errors.length).toBeGreaterThan(0);
  });

  test('rejects base-R4 violations: unknown element, wrong type, missing required status', () => {
    const bad = { resourceType: 'Observation', code: { text: 'x' }, bogus: 1 } as unknown as Resource;
    const errors = validator.check(bad).filter((i) => i.severity === 'error');
    expect(errors.map((e) => e.expression?.[0])).toEqual(expect.arrayContaining(['Observation.status']));
    expect(errors.some((e) => (e.expression ?? []).some((x) => x.includes('bogus')))).toBe(true);
  });

  test('an unknown profile is a warning, not an error', () => {
    const obs = load<Observation>('Observation-cgmSensorReadingMassPerVolumeExample.json');
    const issues = validator.check({ ...obs, meta: { profile: ['http://example.org/StructureDefinition/unknown'] } });
    expect(issues.filter((i) => i.severity === 'error')).toEqual([]);
    expect(issues.some((i) => i.severity === 'warning')).toBe(true);
  });
});

describe('JSON kinds medplum\'s validator lets through (jsonShapeIssues)', () => {
  const reading = (extra: Record<string, unknown>): Resource => ({ resourceType: 'Observation', status: 'final', code: { text: 'glucose' }, ...extra } as Resource);
  test.each([
    ['an object for a uri', { resourceType: 'Patient', identifier: [{ system: {}, value: '2' }] }, 'Patient.identifier[0].system'],
    ['a list for a single uri', { resourceType: 'Patient', identifier: [{ system: ['urn:a'], value: '2' }] }, 'Patient.identifier[0].system'],
    ['an object for a list', { resourceType: 'Patient', meta: { profile: {} } }, 'Patient.meta.profile'],
    ['a string for a list', { resourceType: 'Patient', meta: { profile: 'http://example.org/p' } }, 'Patient.meta.profile'],
    ['an object for a date', { resourceType: 'Patient', birthDate: {} }, 'Patient.birthDate'],
    ['a number for a string', { resourceType: 'Patient', name: [{ family: 12 }] }, 'Patient.name[0].family'],
    ['a string for a boolean', { resourceType: 'Patient', active: 'true' }, 'Patient.active'],
    ['null in a list of objects', { resourceType: 'Patient', name: [null] }, 'Patient.name'],
    ['null for a single value', reading({ subject: null }), 'Observation.subject'],
    ['an object for a reference string', reading({ subject: { reference: {} } }), 'Observation.subject.reference'],
    ['an object for a decimal', reading({ valueQuantity: { value: {} } }), 'Observation.valueQuantity.value'],
    ['an object for a choice element\'s string', reading({ valueString: {} }), 'Observation.valueString'],
    ['a list for a single CodeableConcept', { resourceType: 'Observation', status: 'final', code: [{ text: 'g' }] }, 'Observation.code'],
    ['a string for a CodeableConcept', { resourceType: 'Observation', status: 'final', code: 'g' }, 'Observation.code'],
    ['an object inside a backbone element', reading({ component: [{ code: { text: {} }, valueString: 'v' }] }), 'Observation.component[0].code.text'],
    ['an object inside a contained resource', reading({ contained: [{ resourceType: 'Patient', birthDate: {} }] }), 'Observation.contained[0].birthDate'],
    ['an object for an extension\'s url', { resourceType: 'Patient', extension: [{ url: {}, valueString: 'x' }] }, 'Patient.extension[0].url'],
  ])('%s is an issue at its path', (_what, resource, at) => {
    const issues = jsonShapeIssues(resource as Resource);
    expect(issues.map((i) => i.expression?.[0])).toContain(at);
    expect(issues.every((i) => i.severity === 'error' && i.code === 'structure')).toBe(true);
    // and the validator refuses it: the issue comes first, before medplum's checks
    expect(validator.check(resource as Resource).some((i) => i.severity === 'error')).toBe(true);
  });

  test('well-formed JSON raises nothing: primitive extensions with null in a list, choice elements, contained resources, the IG examples', () => {
    expect(jsonShapeIssues({ resourceType: 'Patient', name: [{ given: ['A', null] as unknown as string[], _given: [null, { extension: [{ url: 'http://example.org/x', valueString: 'y' }] }] } as never],
      _birthDate: { extension: [{ url: 'http://example.org/x', valueBoolean: true }] }, active: true, multipleBirthInteger: 2 } as unknown as Resource)).toEqual([]);
    expect(jsonShapeIssues(reading({ valueQuantity: { value: 104, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' }, effectiveDateTime: '2026-01-01T00:00:00Z',
      contained: [{ resourceType: 'Device', id: 'd', deviceName: [{ name: 'CGM', type: 'user-friendly-name' }] }], device: { reference: '#d' } }))).toEqual([]);
    for (const file of readdirSync(fixtures).filter((f) => f.endsWith('.json'))) expect([file, jsonShapeIssues(load(file))]).toEqual([file, []]);
  });

  test('a layout found well-formed is not walked again, and nothing else shares its verdict', () => {
    const patient = (birthDate: unknown, contained?: unknown): Resource => ({ resourceType: 'Patient', birthDate, ...(contained ? { contained } : {}) } as Resource);
    expect(jsonShapeIssues(patient('1970-01-01'))).toEqual([]);
    expect(jsonShapeIssues(patient('1980-02-02'))).toEqual([]); // same layout
    expect(jsonShapeIssues(patient({})).map((i) => i.expression?.[0])).toEqual(['Patient.birthDate']);
    expect(jsonShapeIssues(patient(19700101)).map((i) => i.expression?.[0])).toEqual(['Patient.birthDate']);
    // the same member names and kinds under another resource type are another layout
    // (`name` is a string in an Organization, a list of HumanNames in a Patient)
    expect(jsonShapeIssues(patient('1970-01-01', [{ resourceType: 'Organization', name: 'Clinic' }]))).toEqual([]);
    expect(jsonShapeIssues(patient('1970-01-01', [{ resourceType: 'Patient', name: 'Clinic' }])).map((i) => i.expression?.[0])).toEqual(['Patient.contained[0].name']);
  });

  test('a code outside the required value set it is bound to is an issue at its path, also in a layout seen before', () => {
    const codes = (r: object): string[] => jsonShapeIssues(r as Resource).filter((i) => i.code === 'code-invalid').map((i) => i.expression![0]!);
    expect(codes(reading({}))).toEqual([]);
    expect(codes({ resourceType: 'Observation', status: 'bogus', code: { text: 'glucose' } })).toEqual(['Observation.status']); // same layout as the one above
    expect(codes(reading({ valueQuantity: { value: 1, comparator: 'about' } }))).toEqual(['Observation.valueQuantity.comparator']);
    expect(codes({ resourceType: 'Patient', name: [{ use: 'official' }, { use: 'nick' }] })).toEqual(['Patient.name[1].use']);
    expect(codes(reading({ contained: [{ resourceType: 'Patient', gender: 'x' }] }))).toEqual(['Observation.contained[0].gender']);
    // the issue does not repeat the code
    expect(JSON.stringify(jsonShapeIssues({ resourceType: 'Patient', gender: 'secret-value' } as unknown as Resource))).not.toContain('secret-value');
    // not checked: bindings that are not required (language: preferred), value sets that cannot be listed here (MIME types)
    expect(codes({ resourceType: 'Patient', language: 'xx-nope', photo: [{ contentType: 'not/a-mime-type' }] })).toEqual([]);
    // and the validator refuses what medplum's accepted
    expect(validator.check({ resourceType: 'Observation', status: 'bogus', code: { text: 'g' } } as unknown as Resource).some((i) => i.severity === 'error')).toBe(true);
  });

  test.each([
    ['an empty string', { resourceType: 'Patient', name: [{ family: '' }] }, ['Patient.name[0].family'], 'family is an empty string'],
    ['an empty string in a list', { resourceType: 'Patient', name: [{ given: ['Ana', ''] }] }, ['Patient.name[0].given[1]'], 'given[1] is an empty string'],
    ['an empty list', { resourceType: 'Patient', telecom: [] }, ['Patient.telecom'], 'telecom is an empty list'],
    ['an empty object', { resourceType: 'Patient', name: [{}] }, ['Patient.name[0]'], 'name[0] is an empty object'],
    ['an object of members left undefined (a resource built in code)', { resourceType: 'Patient', name: [{ family: undefined }] }, ['Patient.name[0]'], 'name[0] is an empty object'],
    ['each one of several', { resourceType: 'Patient', name: [{ family: '', given: [] }], telecom: [] },
      ['Patient.name[0].family', 'Patient.name[0].given', 'Patient.telecom'], 'family is an empty string'],
    ['an empty code in a Coding', reading({ code: { coding: [{ system: 'http://loinc.org', code: '' }] } }), ['Observation.code.coding[0].code'], 'code is an empty string'],
    ['an empty code bound to a required value set', { resourceType: 'Patient', gender: '' }, ['Patient.gender'], 'gender is an empty string'],
    ['an empty narrative', { resourceType: 'Patient', text: { status: 'generated', div: '' } }, ['Patient.text.div'], 'div is an empty string'],
    ['an empty string inside a contained resource', reading({ contained: [{ resourceType: 'Patient', id: 'p', name: [{ text: '' }] }] }), ['Observation.contained[0].name[0].text'], 'text is an empty string'],
    ['an empty extension value', { resourceType: 'Patient', extension: [{ url: 'http://example.org/x', valueString: '' }] }, ['Patient.extension[0].valueString'], 'valueString is an empty string'],
    ['an empty extension part of a primitive', { resourceType: 'Patient', birthDate: '1970-01-01', _birthDate: {} }, ['Patient.birthDate'], '_birthDate is an empty object'],
    ['an empty list of extension parts', { resourceType: 'Patient', name: [{ given: ['Ana'], _given: [] }] }, ['Patient.name[0].given'], '_given is an empty list'],
    ['an empty extension part in the list', { resourceType: 'Patient', name: [{ given: ['Ana'], _given: [{}] }] }, ['Patient.name[0].given[0]'], '_given[0] is an empty object'],
    ['an empty value in a primitive\'s extension', { resourceType: 'Patient', name: [{ given: [null, 'B'], _given: [{ extension: [{ url: 'http://example.org/x', valueString: '' }] }, null] }] },
      ['Patient.name[0].given[0].extension[0].valueString'], 'valueString is an empty string'],
  ])('%s is an issue at its path (json.html: no empty strings, lists or objects)', (_what, resource, at, text) => {
    const issues = jsonShapeIssues(resource as unknown as Resource);
    expect(issues.map((i) => i.expression?.[0])).toEqual(at);
    expect(issues.every((i) => i.severity === 'error' && i.code === 'structure')).toBe(true);
    expect(issues[0]!.diagnostics).toBe(`Invalid empty value: ${text} (leave the element out instead)`);
    expect(validator.check(resource as unknown as Resource).filter((i) => i.severity === 'error')).toEqual(issues);
  });

  test('null is not an empty value: it aligns a list of primitives with its extension parts', () => {
    const ext = { extension: [{ url: 'http://example.org/x', valueString: 'y' }] };
    const patient = { resourceType: 'Patient', name: [{ given: [null, 'B', 'C'], _given: [ext, null, ext] }] } as unknown as Resource;
    expect(jsonShapeIssues(patient)).toEqual([]);
    expect(validator.check(patient).filter((i) => i.severity === 'error')).toEqual([]);
    // and a member left undefined is left out, as in the JSON written
    expect(jsonShapeIssues({ resourceType: 'Patient', name: [{ family: 'Rivera', given: undefined }] } as Resource)).toEqual([]);
  });

  test('an empty value in a layout found well-formed is still an issue (the layout tells an empty string apart)', () => {
    const patient = (family: string, given: string[]): Resource => ({ resourceType: 'Patient', active: false, name: [{ family, given }] } as Resource);
    expect(jsonShapeIssues(patient('Rivera', ['Ana']))).toEqual([]);
    expect(jsonShapeIssues(patient('Ruiz', ['Bea']))).toEqual([]); // the same layout, from the cache
    expect(jsonShapeIssues(patient('', ['Ana'])).map((i) => i.expression?.[0])).toEqual(['Patient.name[0].family']);
    expect(jsonShapeIssues(patient('Rivera', [''])).map((i) => i.expression?.[0])).toEqual(['Patient.name[0].given[0]']);
    expect(jsonShapeIssues(patient('Rivera', [])).map((i) => i.expression?.[0])).toEqual(['Patient.name[0].given']);
    // refused again the second time: a layout with an empty value is never taken for well-formed
    expect(jsonShapeIssues(patient('', ['Ana'])).map((i) => i.expression?.[0])).toEqual(['Patient.name[0].family']);
  });

  test('a batch Bundle\'s envelope: entries and requests are checked, an entry\'s resource only for being an object', () => {
    const bundle = (entry: unknown): Bundle => ({ resourceType: 'Bundle', type: 'batch', entry } as Bundle);
    const good = { request: { method: 'POST', url: 'Patient' }, resource: { resourceType: 'Patient' } };
    expect(envelopeShapeIssues(bundle([good, { request: { method: 'GET', url: 'Patient?name=x' } }]))).toEqual([]);
    // a resource of a type this server does not know is that entry's problem, answered in the batch
    expect(envelopeShapeIssues(bundle([{ ...good, resource: { resourceType: 'NoSuchType', birthDate: {} } }]))).toEqual([]);
    const at = (entry: unknown): (string | undefined)[] => envelopeShapeIssues(bundle(entry)).map((i) => i.expression?.[0]);
    expect(at({})).toEqual(['Bundle.entry']);
    expect(at([null])).toEqual(['Bundle.entry[0]']);
    expect(at([{ ...good, request: { method: 'POST', url: 12 } }])).toEqual(['Bundle.entry[0].request.url']);
    expect(at([good, { ...good, resource: 'Patient' }])).toEqual(['Bundle.entry[1].resource']);
    expect(at([{ ...good, request: null }])).toEqual(['Bundle.entry[0].request']);
    expect(at([{ ...good, request: { method: 'FETCH', url: 'Patient' } }])).toEqual(['Bundle.entry[0].request.method']);
    // empty values of the envelope; an entry that holds only its resource is not empty
    expect(at([{ ...good, fullUrl: '', request: { method: 'POST', url: '' } }])).toEqual(['Bundle.entry[0].request.url', 'Bundle.entry[0].fullUrl']);
    expect(at([{ resource: { resourceType: 'Patient' } }])).toEqual([]);
    expect(envelopeShapeIssues({ resourceType: 'Bundle', type: 'batchy' } as unknown as Bundle).map((i) => i.expression?.[0])).toEqual(['Bundle.type']);
  });
});

