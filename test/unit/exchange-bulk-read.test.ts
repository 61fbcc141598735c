/**
 * The embedded repository's bulk read behind $export (`searchChunks`): one patient's resources in
 * chunks by keyset on the patient+date index give exactly the matches of the same search — none
 * lost or repeated at chunk boundaries (ties at one instant included), long periods and undated
 * resources where the search has them, other patients and a date range's outside never.
 */
import { afterEach, beforeEach, describe, expect, it } from '@jest/globals';
import { parseSearchRequest } from '@medplum/core';
import type { Observation, Resource } from '@medplum/fhirtypes';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { bulkSearchOf } from '../../src/exchange/reader.js';
import { EmbeddedRepository } from '../../src/repository/embedded/index.js';

let dataDir: string;
let repo: EmbeddedRepository;

beforeEach(async () => {
  dataDir = mkdtempSync(path.join(tmpdir(), 'gg-bulk-read-'));
  repo = await EmbeddedRepository.open({ dataDir });
});

afterEach(async () => {
  await repo.close();
  rmSync(dataDir, { recursive: true, force: true });
});

function reading(patient: string, effective: Partial<Observation>, value: number): Observation {
  return {
    resourceType: 'Observation', status: 'final',
    code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] },
    subject: { reference: `Patient/${patient}` },
    ...effective,
    valueQuantity: { value, unit: 'mg/dL' },
  };
}

async function chunks(query: string, size: number): Promise<Resource[][]> {
  const out: Resource[][] = [];
  for await (const c of repo.searchChunks(parseSearchRequest(query), size)) out.push(c);
  return out;
}

async function allMatches(query: string): Promise<string[]> {
  const result = await repo.search({ ...parseSearchRequest(query), count: 10_000, offset: 0 });
  return result.resources.map((r) => r.id!).sort();
}

describe('searchChunks (bulk read for exports)', () => {
  beforeEach(async () => {
    const base = Date.parse('2026-01-01T00:00:00Z');
    const rows: Observation[] = [];
    for (let i = 0; i < 23; i++) rows.push(reading('ana', { effectiveDateTime: new Date(base + i * 300_000).toISOString() }, 100 + i));
    // six readings at one instant: a tie longer than a chunk
    for (let i = 0; i < 6; i++) rows.push(reading('ana', { effectiveDateTime: new Date(base + 3_600_000).toISOString() }, 200 + i));
    rows.push(reading('ana', { effectivePeriod: { start: '2025-12-20T00:00:00Z', end: '2026-01-03T00:00:00Z' } }, 300)); // long span
    rows.push(reading('ana', {}, 301)); // undated
    for (let i = 0; i < 5; i++) rows.push(reading('ben', { effectiveDateTime: new Date(base + i * 300_000).toISOString() }, 400 + i));
    await repo.createMany(rows);
  });

  it('yields every match of a patient once, in chunks no larger than asked, whatever the chunk size', async () => {
    const query = 'Observation?patient=Patient/ana';
    const expected = await allMatches(query);
    expect(expected).toHaveLength(31);
    for (const size of [1, 4, 5, 7, 31, 1000]) {
      const got = await chunks(query, size);
      for (const c of got) expect(c.length).toBeLessThanOrEqual(size);
      const ids = got.flat().map((r) => r.id!);
      expect(new Set(ids).size).toBe(ids.length);
      expect(ids.sort()).toEqual(expected);
    }
  });

  it('keeps to a date range like the search does (the long period overlapping it, nothing undated)', async () => {
    const query = 'Observation?patient=Patient/ana&date=ge2026-01-01T00:30:00Z&date=le2026-01-01T01:00:00Z';
    const expected = await allMatches(query);
    const got = (await chunks(query, 3)).flat();
    expect(got.map((r) => r.id!).sort()).toEqual(expected);
    const values = got.map((r) => (r as Observation).valueQuantity!.value!);
    expect(values).toContain(300);
    expect(values).not.toContain(301);
    expect(values.filter((v) => v >= 200 && v < 300)).toHaveLength(6);
    expect(values.filter((v) => v >= 100 && v < 200)).toEqual([106, 107, 108, 109, 110, 111, 112]);
  });

  it('never yields another patient\'s resources, and answers other plans (no patient) too', async () => {
    const ben = (await chunks('Observation?patient=Patient/ben', 2)).flat();
    expect(ben.map((r) => (r as Observation).subject?.reference)).toEqual(Array(5).fill('Patient/ben'));
    const everyone = (await chunks('Observation?code=http://loinc.org|99504-3', 4)).flat().map((r) => r.id!);
    expect(everyone.sort()).toEqual(await allMatches('Observation?code=http://loinc.org|99504-3'));
    expect(everyone).toHaveLength(36);
  });

  it('answers an `_id` narrowing (what consent leaves of a patient who granted nothing) by the id index', async () => {
    expect((await chunks('Observation?patient=Patient/ana&_id=gg-consent-no-match', 10)).flat()).toEqual([]);
    const one = (await repo.search(parseSearchRequest('Observation?patient=Patient/ben&_count=1'))).resources[0]!;
    expect((await chunks(`Observation?patient=Patient/ben&_id=${one.id}`, 10)).flat().map((r) => r.id)).toEqual([one.id]);
    expect((await chunks(`Observation?patient=Patient/ana&_id=${one.id}`, 10)).flat()).toEqual([]);
  });

  it('is found through repository decorators by the export reader', () => {
    const decorated = { adapter: { adapter: repo } };
    expect(bulkSearchOf(decorated as never)).toBe(repo);
    expect(bulkSearchOf({ adapter: {} } as never)).toBeUndefined();
  });
});
