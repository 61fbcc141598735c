/**
 * `glucoguard ingest` without --json: the import report says how many stored readings were linked
 * to their Device by a re-send (docs/cgm-formats.md, readings stored before their Device).
 */
import { describe, expect, test } from '@jest/globals';
import { formatReport } from '../../../src/cgm/cli.js';
import type { IngestReport } from '../../../src/cgm/service.js';

const report = (linked: number): IngestReport => ({
  accepted: true, partial: false, patient: 'p1', created: 0, unchanged: 7, corrected: 0, linked, devicesCreated: 0,
  format: 'tidepool', detected: true, read: 8, converted: 8, skipped: 0, rejected: 0,
  skippedByReason: {}, rejectedByReason: {}, issues: [], issuesTruncated: false, warnings: [],
});

describe('import report text', () => {
  test('a re-send that attaches Devices to stored readings says how many', () => {
    expect(formatReport(report(1))).toMatch(/^ {2}linked to their Device 1 \(stored before without one; a new version, value unchanged\)$/m);
  });

  test('no linked line when none was', () => {
    expect(formatReport(report(0))).not.toMatch(/linked/);
  });
});
