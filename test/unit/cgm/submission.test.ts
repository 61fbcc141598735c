/**
 * submissionTransaction (src/cgm/submission.ts), as `$cgm-summary?store=true` uses it: a POST that
 * matches a stored resource of the same patient stays a conditional create when the content is the
 * same (apart from ignored elements such as `issued`), and becomes an update If-Match the version
 * read when it differs.
 */
import { describe, expect, test } from '@jest/globals';
import type { Bundle, Observation, Resource } from '@medplum/fhirtypes';
import { buildCgmSummary, computeMetrics, toTransactionBundle, type MetricReading } from '../../../src/cgm/index.js';
import { submissionTransaction, type SubmissionLookup } from '../../../src/cgm/submission.js';

const MIN = 60_000;
const START = Date.parse('2024-05-01T00:00:00Z');
const readings = (mgdl: number[]): MetricReading[] => mgdl.map((v, i) => ({ epochMs: START + i * 5 * MIN, mgdl: v }));

/** The summary as `$cgm-summary?store=true` hands it over: POSTs matched on identifier and patient. */
function summaryBundle(values: number[], issued: string): Bundle {
  const built = buildCgmSummary(computeMetrics(readings(values))!, { patient: 'Patient/p1', issued });
  const bundle = toTransactionBundle(built.entries);
  for (const e of bundle.entry!) delete e.request!.ifNoneExist;
  return bundle;
}

/** What a store holds after the first run: each entry with an id and a version, members referenced by id. */
function storedFrom(bundle: Bundle, version: string): Resource[] {
  const ids = new Map(bundle.entry!.map((e, i) => [e.fullUrl!, `Observation/s${i}`]));
  return bundle.entry!.map((e, i) => {
    const r = structuredClone(e.resource as Observation);
    r.hasMember = r.hasMember?.map((m) => ({ reference: ids.get(m.reference!)! }));
    if (!r.hasMember) delete r.hasMember;
    return { ...r, id: `s${i}`, meta: { ...r.meta, versionId: version } };
  });
}

const lookupOf = (stored: Resource[]): SubmissionLookup => async (_type, identifiers) => {
  const wanted = new Set(identifiers);
  return stored.filter((r) => (r as Observation).identifier!.some((x) => wanted.has(`${x.system}|${x.value}`)));
};

describe('summary storage through submissionTransaction', () => {
  const values = [100, 120, 140, 160, 180, 200];
  const stored = storedFrom(summaryBundle(values, '2024-05-02T00:00:00Z'), '3');

  test('the same figures computed later (another issued) leave every stored resource alone', async () => {
    const tx = await submissionTransaction(summaryBundle(values, '2024-06-01T00:00:00Z'), lookupOf(stored), ['issued']);
    expect(tx.entry!.map((e) => e.request!.method)).toEqual(Array(8).fill('POST'));
    expect(tx.entry!.every((e) => /identifier=.*&patient=Patient%2Fp1/.test(e.request!.ifNoneExist!))).toBe(true);
  });

  test('without ignoring issued, every one would be rewritten', async () => {
    const tx = await submissionTransaction(summaryBundle(values, '2024-06-01T00:00:00Z'), lookupOf(stored));
    expect(tx.entry!.map((e) => e.request!.method)).toEqual(Array(8).fill('PUT'));
  });

  test('other figures: the changed resources become updates If-Match the version read, the unchanged stay', async () => {
    const tx = await submissionTransaction(summaryBundle([100, 120, 140, 160, 180, 260], '2024-06-01T00:00:00Z'), lookupOf(stored), ['issued']);
    const byCode = new Map(tx.entry!.map((e) => [(e.resource as Observation).code!.coding![0]!.code, e.request!]));
    expect(byCode.get('97507-8')).toEqual({ method: 'PUT', url: 'Observation/s2', ifMatch: 'W/"3"' }); // mean
    expect(byCode.get('106793-3')).toMatchObject({ method: 'PUT', ifMatch: 'W/"3"' }); // times in ranges
    expect(byCode.get('104636-6')!.method).toBe('POST'); // days of wear: the same
    expect(byCode.get('107931-8')!.method).toBe('POST'); // the panel: same members (by id), same notes
  });
});
