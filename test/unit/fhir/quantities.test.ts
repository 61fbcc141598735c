/**
 * Unit conversion for quantity search (src/fhir/quantities.ts): UCUM units that scale linearly
 * convert; glucose converts between mass and substance; offset, logarithmic, arbitrary and
 * dimensionless units, and strings that are not UCUM, do not.
 */
import { describe, expect, it, jest } from '@jest/globals';
import { baseFactor, canonicalForms, inBaseUnits, molarMassOf, ucumScale } from '../../../src/fhir/quantities.js';

const LOINC = 'http://loinc.org';

/** The factor from one unit to another, through base units as search compares them. */
function conversionFactor(from: string, to: string, molarMass?: number): number | undefined {
  const target = ucumScale(to);
  const factor = target && baseFactor(from, target.dimension, molarMass);
  return factor === undefined ? undefined : factor / target!.factor;
}

describe('UCUM conversion factors', () => {
  it('converts commensurable units by UCUM: g/L to mg/dL, kPa to mm[Hg], /min to /s', () => {
    expect(conversionFactor('g/L', 'mg/dL')).toBeCloseTo(100, 12);
    // in base units, rounded to 12 digits: 1.8 g/L and 180 mg/dL are the same number, as are 0.57 g/dL
    // and 570 mg/dL, though 0.57 × 10,000 is 5699.999999999999 in floating point
    expect(inBaseUnits(1.8, ucumScale('g/L')!.factor)).toBe(inBaseUnits(180, ucumScale('mg/dL')!.factor));
    expect(0.57 * ucumScale('g/dL')!.factor).not.toBe(570 * ucumScale('mg/dL')!.factor);
    expect(inBaseUnits(0.57, ucumScale('g/dL')!.factor)).toBe(inBaseUnits(570, ucumScale('mg/dL')!.factor));
    // UCUM: m[Hg] is 133.3220 kPa
    expect(1 / conversionFactor('kPa', 'mm[Hg]')!).toBeCloseTo(0.133322, 9);
    expect(conversionFactor('/min', '/s')).toBeCloseTo(1 / 60, 12);
    expect(conversionFactor('mg/dL', 'mg/dL')).toBe(1);
  });

  it('does not convert between dimensions, nor mass and substance without an analyte', () => {
    expect(conversionFactor('mg/dL', 'mm[Hg]')).toBeUndefined();
    expect(conversionFactor('mmol/L', 'mg/dL')).toBeUndefined();
    expect(conversionFactor('kg', 'm')).toBeUndefined();
  });

  it('converts glucose between mg/dL and mmol/L with 18.01559 mg/dL per mmol/L, both ways', () => {
    const glucose = molarMassOf([{ system: LOINC, code: '99504-3' }]);
    expect(glucose).toBeCloseTo(180.1559, 10);
    expect(conversionFactor('mmol/L', 'mg/dL', glucose)).toBeCloseTo(18.01559, 10);
    expect(conversionFactor('mg/dL', 'mmol/L', glucose)).toBeCloseTo(1 / 18.01559, 12);
    expect(conversionFactor('umol/L', 'g/L', glucose)).toBeCloseTo(180.1559e-6, 15);
  });

  it('knows glucose by its LOINC codes only: CGM, meter, laboratory; not sodium, not another system', () => {
    for (const code of ['99504-3', '105272-9', '41653-7', '14743-9', '97507-8', '105273-7', '2339-0', '2345-7', '15074-8', '14749-6']) {
      expect([code, molarMassOf([{ system: LOINC, code }])]).toEqual([code, expect.any(Number)]);
    }
    expect(molarMassOf([{ system: LOINC, code: '2951-2' }])).toBeUndefined();
    expect(molarMassOf([{ system: 'http://snomed.info/sct', code: '99504-3' }])).toBeUndefined();
    expect(molarMassOf(undefined)).toBeUndefined();
  });

  it('leaves units UCUM cannot scale linearly to exact matching: offsets, logarithms, arbitrary, dimensionless', () => {
    for (const code of ['Cel', '[degF]', '[pH]', '[IU]', '%', 'mmol/mol', '{score}']) expect([code, ucumScale(code)]).toEqual([code, undefined]);
    // an HbA1c of 53 mmol/mol (IFCC) is 7.0 % (NGSP), not the 5.3 % UCUM's arithmetic would give
    expect(conversionFactor('mmol/mol', '%')).toBeUndefined();
    expect(conversionFactor('Cel', '[degF]')).toBeUndefined();
  });

  it('answers undefined for strings that are not UCUM, without writing them to the console', () => {
    const log = jest.spyOn(console, 'log');
    try {
      for (const code of ['ng()', 'mg/{', 'not a unit', '', 'x'.repeat(100), 'mg\u00a0/dL', '10*']) expect([code, ucumScale(code)]).toEqual([code, undefined]);
      expect(log).not.toHaveBeenCalled();
    } finally {
      log.mockRestore();
    }
  });

  it('gives the forms a value is indexed under: its own, and for glucose the other way too', () => {
    expect(canonicalForms('mg/dL')).toEqual([{ factor: 10, dimension: 'g1.m-3;mol0', exponents: { g: 1, m: -3 }, moles: 0 }]);
    expect(baseFactor('mg/dL', 'm-3;mol1')).toBeUndefined();
    const both = canonicalForms('mg/dL', 180.1559).map((f) => f.dimension);
    expect(both).toEqual(['g1.m-3;mol0', 'm-3;mol1']);
    // 180.1559 mg/dL of glucose and 10 mmol/L land on the same number in the substance form
    const mmol = canonicalForms('mmol/L', 180.1559);
    const mass = canonicalForms('mg/dL', 180.1559);
    expect(inBaseUnits(180.1559, mass[1]!.factor)).toBe(inBaseUnits(10, mmol[0]!.factor));
    expect(canonicalForms('Cel', 180.1559)).toEqual([]);
  });
});
