import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, test } from '@jest/globals';
import type { Observation, Resource } from '@medplum/fhirtypes';
import { ProfileValidator } from '../../../src/fhir/validation.js';
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
