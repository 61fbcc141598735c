/**
 * `glucoguard ingest` without --json: the import report says how many stored readings were linked
 * to their Device by a re-send (docs/cgm-formats.md, readings stored before their Device), and a dry
 * run's report says what the import would do.
 */
import { describe, expect, test } from '@jest/globals';
import { formatReport } from '../../../src/cgm/cli.js';
import type { IngestReport } from '../../../src/cgm/service.js';

const report = (linked: number): IngestReport => ({
  accepted: true, partial: false, dryRun: false, remove: false, patient: 'p1', created: 0, unchanged: 7, corrected: 0, linked, devicesCreated: 0,
  format: 'tidepool', detected: true, read: 8, converted: 8, skipped: 0, rejected: 0,
  skippedByReason: {}, rejectedByReason: {}, issues: [], issuesTruncated: false, warnings: [],
});

describe('import report text', () => {
  test('a re-send that attaches Devices to stored readings says how many', () => {
    expect(formatReport(report(1))).toMatch(/^ {2}linked to their Device 1 \(stored before without one; a new version, value unchanged\)$/m);
  });

  test('a dry run says so first and words its counts as what the import would do', () => {
    const text = formatReport({ ...report(2), dryRun: true, created: 3, unchanged: 5, devicesCreated: 1 });
    expect(text.split('\n')[0]).toBe('DRY RUN, nothing stored; the import would be accepted: tidepool (detected) for Patient/p1');
    expect(text).toContain('records read 8, would be created 3, unchanged 5, would be corrected 0, skipped 0, rejected 0');
    expect(text).toContain('devices would be created 1');
    expect(text).toContain('would be linked to their Device 2');
    expect(formatReport({ ...report(0), dryRun: true, accepted: false }).split('\n')[0]).toMatch(/^DRY RUN, nothing stored; the import would be REJECTED:/);
  });

  test('a removal counts what it removed, kept and did not find', () => {
    const text = formatReport({ ...report(0), remove: true, removed: 5, changedSince: 1, notStored: 2 });
    expect(text.split('\n')[0]).toBe('removed: tidepool (detected) for Patient/p1');
    expect(text).toContain('records read 8, removed 5, kept (changed since) 1, not stored 2, skipped 0, rejected 0');
    expect(formatReport({ ...report(0), remove: true, dryRun: true, removed: 5 })).toContain('would be removed 5');
  });

  test('no linked line when none was', () => {
    expect(formatReport(report(0))).not.toMatch(/linked/);
  });
});
