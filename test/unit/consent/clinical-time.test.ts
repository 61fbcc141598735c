/** The clinically relevant time a grant's data period is held against (src/consent/clinical-time.ts). */
import { describe, expect, test } from '@jest/globals';
import type { Resource } from '@medplum/fhirtypes';
import { clinicalTime, spanOf } from '../../../src/consent/clinical-time.js';

const at = (s: string): number => Date.parse(s);
const obs = (time: Record<string, unknown>): Resource => ({ resourceType: 'Observation', status: 'final', code: { text: 'x' }, ...time }) as Resource;

describe('spanOf: a value covers the whole span its precision implies (as the search index reads it)', () => {
  test.each([
    ['2026-12-02', '2026-12-02T00:00:00.000Z', '2026-12-02T23:59:59.999Z'],
    ['2026-12', '2026-12-01T00:00:00.000Z', '2026-12-31T23:59:59.999Z'],
    ['2026', '2026-01-01T00:00:00.000Z', '2026-12-31T23:59:59.999Z'],
    ['2026-12-02T10:00:00Z', '2026-12-02T10:00:00.000Z', '2026-12-02T10:00:00.999Z'],
    ['2026-12-02T10:00:00.5+01:00', '2026-12-02T09:00:00.500Z', '2026-12-02T09:00:00.599Z'],
    ['2026-12-02T10:00:00.123Z', '2026-12-02T10:00:00.123Z', '2026-12-02T10:00:00.123Z'],
  ])('%s', (value, from, to) => {
    expect(spanOf(value)).toEqual({ from: at(from), to: at(to) });
  });
  test.each(['2026-13', '2026-00', '2026-02-30', '2026-02-00', '2026-12-02T10:00:00', '2026-12-02T10:00Z', 'yesterday', ''])('%s does not parse', (value) => {
    expect(spanOf(value)).toBeUndefined();
  });
});

describe('clinicalTime', () => {
  test('Observation: effective[x] only; a Period needs both ends; Timing cannot be placed', () => {
    expect(clinicalTime(obs({ effectiveDateTime: '2026-12-02T10:00:00.000Z' }))).toEqual({ from: at('2026-12-02T10:00:00Z'), to: at('2026-12-02T10:00:00Z') });
    expect(clinicalTime(obs({ effectiveInstant: '2026-12-02T10:00:00.000Z' }))).toEqual({ from: at('2026-12-02T10:00:00Z'), to: at('2026-12-02T10:00:00Z') });
    expect(clinicalTime(obs({ effectivePeriod: { start: '2026-12-02T23:00:00.000Z', end: '2026-12-05' } }))).toEqual({ from: at('2026-12-02T23:00:00Z'), to: at('2026-12-05T23:59:59.999Z') });
    expect(clinicalTime(obs({ effectivePeriod: { end: '2026-11-26' } }))).toBe('unknown');
    expect(clinicalTime(obs({ effectivePeriod: { start: '2026-11-26' } }))).toBe('unknown');
    expect(clinicalTime(obs({ effectivePeriod: { start: '2026-11-27', end: '2026-11-26' } }))).toBe('unknown');
    expect(clinicalTime(obs({ effectiveTiming: { event: ['2026-11-26'] } }))).toBe('unknown');
    // issued is when a version was released, not when it happened: it places nothing
    expect(clinicalTime(obs({ issued: '2026-11-26T00:00:00Z' }))).toBe('unknown');
    expect(clinicalTime(obs({ effectiveDateTime: '2026-11-26T00:00:00.000Z', issued: '2027-01-01T00:00:00Z' }))).toEqual({ from: at('2026-11-26T00:00:00Z'), to: at('2026-11-26T00:00:00Z') });
    expect(clinicalTime(obs({}))).toBe('unknown');
  });

  test('DiagnosticReport and MedicationAdministration: effective[x]; ServiceRequest: occurrence[x] and authoredOn together', () => {
    expect(clinicalTime({ resourceType: 'DiagnosticReport', status: 'final', code: { text: 'x' }, issued: '2026-11-26T00:00:00Z' } as Resource)).toBe('unknown');
    expect(clinicalTime({ resourceType: 'MedicationAdministration', effectivePeriod: { start: '2026-11-26T00:00:00.000Z', end: '2026-11-27T00:00:00.000Z' } } as unknown as Resource))
      .toEqual({ from: at('2026-11-26T00:00:00Z'), to: at('2026-11-27T00:00:00Z') });
    const sr = (time: Record<string, unknown>): Resource => ({ resourceType: 'ServiceRequest', status: 'active', intent: 'order', subject: { reference: 'Patient/a' }, ...time }) as Resource;
    expect(clinicalTime(sr({ authoredOn: '2026-11-20T00:00:00.000Z', occurrenceDateTime: '2026-12-01T00:00:00.000Z' })))
      .toEqual({ from: at('2026-11-20T00:00:00Z'), to: at('2026-12-01T00:00:00Z') });
    expect(clinicalTime(sr({ authoredOn: '2026-11-20T00:00:00.000Z' }))).toEqual({ from: at('2026-11-20T00:00:00Z'), to: at('2026-11-20T00:00:00Z') });
    expect(clinicalTime(sr({ occurrencePeriod: { start: '2026-11-20' } }))).toBe('unknown');
    expect(clinicalTime(sr({}))).toBe('unknown');
  });

  test('timeless types have none; other types are judged on the common time elements they carry', () => {
    expect(clinicalTime({ resourceType: 'Patient' })).toBe('none');
    expect(clinicalTime({ resourceType: 'Device' } as Resource)).toBe('none');
    expect(clinicalTime({ resourceType: 'Procedure', performedDateTime: '2026-11-20T00:00:00.000Z' } as unknown as Resource))
      .toEqual({ from: at('2026-11-20T00:00:00Z'), to: at('2026-11-20T00:00:00Z') });
    expect(clinicalTime({ resourceType: 'Procedure', performedString: 'last winter' } as unknown as Resource)).toBe('unknown');
    expect(clinicalTime({ resourceType: 'Procedure' } as unknown as Resource)).toBe('none');
  });
});
