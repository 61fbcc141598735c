/**
 * Keyset paging on the embedded repository (SearchOptions.after, SearchResult.positionOf): a page
 * resumes strictly after the position of a match of the page before, in the search's order; a
 * resource with several index rows under the driving key stands where its first one does and is
 * met once; a position of another order is computed over the matches when the order can be, and
 * the offset pages the search when not.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { Observation } from '@medplum/fhirtypes';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseSearch } from '../../../src/fhir/search.js';
import { EmbeddedRepository } from '../../../src/repository/embedded/index.js';

const UCUM = 'http://unitsofmeasure.org';
const T0 = Date.parse('2026-03-01T00:00:00Z');

let dataDir: string;
let repo: EmbeddedRepository;

const requestOf = (query: Record<string, string | string[]>, count: number) =>
  parseSearch('Observation', { ...query, _count: String(count) }, { lenient: false, supported: repo.supportedSearchParams(), defaultCount: count, maxCount: 1000 });

/** Every match by following positions, `count` at a time. */
async function walk(query: Record<string, string | string[]>, count: number): Promise<string[]> {
  const request = requestOf(query, count);
  const ids: string[] = [];
  let after: string | undefined;
  for (let page = 0; page < 500; page++) {
    const result = await repo.search(request, after === undefined ? {} : { after });
    ids.push(...result.resources.map((r) => r.id!));
    if (!result.hasMore) return ids;
    after = result.positionOf!(result.resources.length - 1);
  }
  throw new Error('walk did not end');
}

const reading = (minutes: number, extra: Partial<Observation> = {}): Observation => ({
  resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] },
  subject: { reference: 'Patient/k1' }, effectiveDateTime: new Date(T0 + minutes * 60_000).toISOString(),
  valueQuantity: { value: 100 + minutes, unit: 'mg/dL', system: UCUM, code: 'mg/dL' }, ...extra,
});

beforeAll(async () => {
  dataDir = mkdtempSync(path.join(tmpdir(), 'gg-keyset-'));
  repo = await EmbeddedRepository.open({ dataDir });
  for (let i = 0; i < 12; i++) await repo.create(reading(i * 5));
  // blood pressure readings: two values each under component-value-quantity, the index key of that search
  for (const [sys, dia] of [[130, 85], [115, 95], [125, 90]] as const) {
    await repo.create(reading(100 + sys, { code: { coding: [{ system: 'http://loinc.org', code: '85354-9' }] }, valueQuantity: undefined, component: [
      { code: { coding: [{ system: 'http://loinc.org', code: '8480-6' }] }, valueQuantity: { value: sys, unit: 'mm[Hg]', system: UCUM, code: 'mm[Hg]' } },
      { code: { coding: [{ system: 'http://loinc.org', code: '8462-4' }] }, valueQuantity: { value: dia, unit: 'mm[Hg]', system: UCUM, code: 'mm[Hg]' } },
    ] }));
  }
});

afterAll(async () => {
  await repo.close();
  rmSync(dataDir, { recursive: true, force: true });
});

describe('keyset paging on the embedded repository', () => {
  const orders: [string, Record<string, string | string[]>][] = [
    ['date', { patient: 'Patient/k1', _sort: 'date' }],
    ['-date', { patient: 'Patient/k1', _sort: '-date' }],
    ['the default order of a patient (the reference index: as stored)', { patient: 'Patient/k1' }],
    ['the default order of a patient and a date range (by date)', { patient: 'Patient/k1', date: ['ge2026-03-01', 'lt2026-03-02'] }],
    ['_lastUpdated, read by the type', { _sort: '_lastUpdated' }],
    ['-_lastUpdated, read by the type', { _sort: '-_lastUpdated' }],
    ['-_lastUpdated, sorted here', { patient: 'Patient/k1', _sort: '-_lastUpdated' }],
    ['_id, sorted here', { patient: 'Patient/k1', _sort: '_id' }],
    ['the default order of a quantity range', { 'value-quantity': 'gt0' }],
  ];

  it.each(orders)('a walk by positions, one match a page, is the one-page answer in %s', async (_name, query) => {
    const whole = (await repo.search(requestOf(query, 1000))).resources.map((r) => r.id!);
    expect(whole.length).toBeGreaterThan(2);
    expect(await walk(query, 1)).toEqual(whole);
    expect(await walk(query, 4)).toEqual(whole);
  });

  it('a resource with two values under the driving key (two components) is met once, where its first value stands', async () => {
    const query = { 'component-value-quantity': 'gt80' };
    const whole = (await repo.search(requestOf(query, 1000))).resources.map((r) => r.id!);
    expect(whole).toHaveLength(3);
    expect(new Set(whole).size).toBe(3);
    expect(await walk(query, 1)).toEqual(whole);
    // diastolic 85 < 90 < 95: each by its lower value
    const values = (await repo.search(requestOf(query, 1000))).resources.map((r) => (r as Observation).component![1]!.valueQuantity!.value);
    expect(values).toEqual([85, 90, 95]);
  });

  it('a position of another default order is followed in that order (the search is now read through another index)', async () => {
    const asStored = (await repo.search(requestOf({ patient: 'Patient/k1' }, 1000))).resources.map((r) => r.id!);
    const first = await repo.search(requestOf({ patient: 'Patient/k1' }, 3));
    const after = first.positionOf!(2);
    // the same patient with a date range covering every reading: the patient+date index drives it, by date
    const byDate = await repo.search(requestOf({ patient: 'Patient/k1', date: 'ge2026-01-01' }, 3), { after });
    expect(byDate.resources.map((r) => r.id)).toEqual(asStored.slice(3, 6));
    expect(byDate.hasMore).toBe(true);
    expect(JSON.parse(byDate.positionOf!(0))[0]).toBe('seq');
  });

  it('a position it cannot follow pages by offset', async () => {
    const whole = (await repo.search(requestOf({ patient: 'Patient/k1' }, 1000))).resources.map((r) => r.id!);
    const request = { ...requestOf({ patient: 'Patient/k1' }, 2), offset: 4 };
    for (const after of ['["quantity:value-quantity:1",5,3]', 'not a position', '["seq","x"]']) {
      expect((await repo.search(request, { after })).resources.map((r) => r.id)).toEqual(whole.slice(4, 6));
    }
  });
});
