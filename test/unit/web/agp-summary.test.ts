/**
 * The apps' reading of a $cgm-summary Bundle (smart-on-fhir/shared/agp.js): only the panel's
 * data-sufficiency notes are warnings; its other notes (how LOW/HIGH readings count) are notes.
 */
import { describe, expect, test } from '@jest/globals';
// @ts-expect-error: the apps are plain browser JavaScript, without types
import { parseSummary } from '../../../smart-on-fhir/shared/agp.js';

describe('parseSummary', () => {
  test('separates data-sufficiency warnings from the sensor-range notes', () => {
    const panel = {
      resourceType: 'Observation', code: { coding: [{ system: 'http://loinc.org', code: '107931-8' }] },
      effectivePeriod: { start: '2026-11-01', end: '2026-11-14' },
      note: [
        { text: 'Data sufficiency: only 10 days in the reporting period; 14 are recommended' },
        { text: 'Sensor range: 3 of 2000 readings below the sensor\'s measurement range (LOW) are counted as very low (< 54 mg/dL), and as 40 mg/dL in mean, GMI and CV' },
      ],
    };
    const summary = parseSummary({ resourceType: 'Bundle', entry: [{ resource: panel }] }) as { warnings: string[]; notes: string[] };
    expect(summary.warnings).toEqual(['only 10 days in the reporting period; 14 are recommended']);
    expect(summary.notes).toEqual([expect.stringMatching(/^Sensor range: 3 of 2000 readings below/)]);
  });
});
