/**
 * `glucoguard summary` without --json: the human-readable metrics. HIGH/LOW readings enter the mean
 * at the sensor limits (docs/cgm-metrics.md), so the text says how many there were.
 */
import { describe, expect, test } from '@jest/globals';
import { formatSummary } from '../../../src/cgm/cli.js';
import { computeMetrics, type MetricReading } from '../../../src/cgm/index.js';

const MIN = 60_000;
const START = Date.parse('2024-05-01T00:00:00Z');
const readings = (mgdl: number[]): MetricReading[] => mgdl.map((v, i) => ({ epochMs: START + i * 5 * MIN, mgdl: v }));

describe('summary text', () => {
  test('says how many readings were beyond the sensor range, LOW and HIGH, and how they were taken', () => {
    const m = computeMetrics(readings([100, -Infinity, 120, -Infinity, Infinity, 140, 160, 180]))!;
    const text = formatSummary('p1', m);
    expect(text).toContain('Patient/p1:');
    expect(text).toMatch(/^ {2}beyond sensor {4}3 of 8 readings: 2 LOW \(taken as 40 mg\/dL\), 1 HIGH \(taken as 400 mg\/dL\)$/m);
  });

  test('names only the side that occurred', () => {
    const text = formatSummary('p1', computeMetrics(readings([100, 120, Infinity, 140]))!);
    expect(text).toMatch(/beyond sensor {4}1 of 4 readings: 1 HIGH \(taken as 400 mg\/dL\)$/m);
    expect(text).not.toMatch(/LOW/);
  });

  test('no such line when every reading has a value', () => {
    const text = formatSummary('p1', computeMetrics(readings([100, 120, 140, 160]))!);
    expect(text).not.toMatch(/beyond sensor|HIGH|LOW/);
    expect(text).toMatch(/mean glucose {5}130 mg\/dL/);
  });
});
