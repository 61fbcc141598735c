/**
 * Quantity search with unit conversion on the embedded repository (search.html#quantity; the rules
 * in src/fhir/quantities.ts): a UCUM search value matches values in any commensurable UCUM unit, and
 * glucose also between mg/dL and mmol/L (18.01559 mg/dL per mmol/L); `||unit` names the unit
 * exactly; temperatures, percentages and mmol/mol are compared in their own unit only. Each answer
 * is written out below, and is the same through the index (generation 5) and with every reading
 * matched one by one (a store recorded as generation 4), and again after the rebuild.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { Observation, Resource } from '@medplum/fhirtypes';
import type Database from 'better-sqlite3';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseSearch } from '../../../src/fhir/search.js';
import { EmbeddedRepository } from '../../../src/repository/embedded/index.js';
import { INDEX_GENERATION } from '../../../src/repository/embedded/params.js';

const LOINC = 'http://loinc.org';
const UCUM = 'http://unitsofmeasure.org';

let dataDir: string;
let repo: EmbeddedRepository;
/** name → id */
const ids = new Map<string, string>();

const reading = (code: string, value: number, unit: string): Partial<Observation> => ({
  code: { coding: [{ system: LOINC, code }] }, valueQuantity: { value, unit, system: UCUM, code: unit },
});
const FIXTURE: Record<string, Partial<Observation>> = {
  mass180: reading('99504-3', 180, 'mg/dL'),
  moles10: reading('105272-9', 10, 'mmol/L'), // 180.1559 mg/dL
  moles5_5: reading('99504-3', 5.5, 'mmol/L'), // 99.09 mg/dL
  lab1_2: reading('2345-7', 1.2, 'g/L'), // 120 mg/dL
  lab570: reading('2339-0', 570, 'mg/dL'), // 0.57 g/dL, though 0.57 × 10,000 is 5699.999999999999 in floating point
  sodium140: reading('2951-2', 140, 'mmol/L'), // not glucose: never a mass
  a1cPercent: reading('4548-4', 7, '%'),
  a1cIfcc: reading('4548-4', 53, 'mmol/mol'),
  temperature: reading('8310-5', 37, 'Cel'),
  bp120: { code: { coding: [{ system: LOINC, code: '85354-9' }] }, component: [{ code: { coding: [{ system: LOINC, code: '8480-6' }] }, valueQuantity: { value: 120, system: UCUM, code: 'mm[Hg]' } }] },
  bp110: { code: { coding: [{ system: LOINC, code: '85354-9' }] }, component: [{ code: { coding: [{ system: LOINC, code: '8480-6' }] }, valueQuantity: { value: 110, system: UCUM, code: 'mm[Hg]' } }] },
};

/** query → the readings it finds, by name. */
const EXPECTED: [Record<string, string>, string[]][] = [
  [{ 'value-quantity': `ge10|${UCUM}|mmol/L` }, ['moles10', 'lab570', 'sodium140']], // 180 mg/dL is 9.991 mmol/L
  [{ 'value-quantity': `ge9.99|${UCUM}|mmol/L` }, ['mass180', 'moles10', 'lab570', 'sodium140']],
  [{ 'value-quantity': `gt179|${UCUM}|mg/dL` }, ['mass180', 'moles10', 'lab570']], // sodium is not converted to a mass
  [{ 'value-quantity': `eq1.8|${UCUM}|g/L` }, ['mass180', 'moles10']], // 1.75–1.85 g/L
  [{ 'value-quantity': `180|${UCUM}|mg/dL` }, ['mass180', 'moles10']], // 179.5–180.5 mg/dL
  [{ 'value-quantity': `eq10|${UCUM}|mmol/L` }, ['mass180', 'moles10']], // 9.5–10.5 mmol/L
  [{ 'value-quantity': `lt100|${UCUM}|mg/dL` }, ['moles5_5']],
  [{ 'value-quantity': `ge0.12|${UCUM}|g/dL` }, ['mass180', 'moles10', 'lab1_2', 'lab570']], // 0.12 g/dL is exactly 120 mg/dL
  [{ 'value-quantity': `ge0.57|${UCUM}|g/dL` }, ['lab570']],
  [{ 'value-quantity': `gt0.57|${UCUM}|g/dL` }, []],
  [{ 'value-quantity': `eb570|${UCUM}|mg/dL` }, ['mass180', 'moles10', 'moles5_5', 'lab1_2']],
  [{ 'value-quantity': 'gt100||mg/dL' }, ['mass180', 'lab570']], // no system: the unit is named exactly
  [{ 'value-quantity': 'gt9||mmol/L' }, ['moles10', 'sodium140']],
  [{ 'value-quantity': `7|${UCUM}|%` }, ['a1cPercent']],
  [{ 'value-quantity': `gt0|${UCUM}|mmol/mol` }, ['a1cIfcc']],
  [{ 'value-quantity': `37|${UCUM}|Cel` }, ['temperature']],
  [{ 'value-quantity': `98.6|${UCUM}|[degF]` }, []],
  [{ 'value-quantity': `ne180|${UCUM}|mg/dL` }, ['moles5_5', 'lab1_2', 'lab570', 'sodium140', 'a1cPercent', 'a1cIfcc', 'temperature']],
  [{ 'code-value-quantity': `${LOINC}|105272-9$gt9|${UCUM}|mmol/L` }, ['moles10']],
  [{ 'code-value-quantity': `${LOINC}|99504-3$gt9.5|${UCUM}|mmol/L` }, ['mass180']],
  [{ 'code-value-quantity': `${LOINC}|2951-2$gt100|${UCUM}|mg/dL` }, []],
  [{ 'component-value-quantity': `gt15|${UCUM}|kPa` }, ['bp120']], // 120 mm[Hg] is 16.0 kPa, 110 is 14.7
  [{ 'component-code-value-quantity': `${LOINC}|8480-6$lt15|${UCUM}|kPa` }, ['bp110']],
];

async function answers(): Promise<[Record<string, string>, string[]][]> {
  const names = new Map([...ids].map(([name, id]) => [id, name]));
  const out: [Record<string, string>, string[]][] = [];
  for (const [query] of EXPECTED) {
    const request = parseSearch('Observation', { ...query, _count: '100' }, { lenient: false, supported: repo.supportedSearchParams(), defaultCount: 100, maxCount: 100 });
    // `ne` has no index rows to read: it examines every reading whatever the generation
    const found: Resource[] = (await repo.search(request, Object.values(query)[0]!.startsWith('ne') ? {} : { scanLimit: 50 })).resources;
    out.push([query, found.map((r) => names.get(r.id!)!).sort()]);
  }
  return out;
}
const expected = (): [Record<string, string>, string[]][] => EXPECTED.map(([q, names]) => [q, [...names].sort()]);

beforeAll(async () => {
  dataDir = mkdtempSync(path.join(tmpdir(), 'gg-units-'));
  repo = await EmbeddedRepository.open({ dataDir });
  for (const [name, extra] of Object.entries(FIXTURE)) {
    const o = { resourceType: 'Observation', status: 'final', subject: { reference: 'Patient/p1' }, effectiveDateTime: '2026-03-01T08:00:00Z', ...extra } as Observation;
    ids.set(name, (await repo.create(o)).resource.id!);
  }
  // Observations without a quantity, which no query above finds, so that a search the index cannot
  // narrow exceeds the scan limit of 50
  for (let i = 0; i < 120; i++) {
    await repo.create({ resourceType: 'Observation', status: 'final', subject: { reference: 'Patient/p2' }, code: { coding: [{ system: LOINC, code: '99504-3' }] }, valueString: 'sensor warm-up' });
  }
});

afterAll(async () => {
  await repo.close();
  rmSync(dataDir, { recursive: true, force: true });
});

describe('quantity search converts units', () => {
  it('finds each value in any commensurable UCUM unit, glucose between mass and substance, through the index', async () => {
    expect(repo.indexGeneration).toBe(INDEX_GENERATION);
    expect(await answers()).toEqual(expected());
  });

  it('answers the same in a store of generation 4, matching every candidate, and again after the rebuild', async () => {
    (repo as unknown as { db: Database.Database }).db.prepare("UPDATE meta SET v = '4' WHERE k = 'index-generation'").run();
    await repo.close();
    repo = await EmbeddedRepository.open({ dataDir });
    expect(repo.indexGeneration).toBe(4);
    // the quantity rows are not trusted: a search only they could narrow now examines every reading
    const request = parseSearch('Observation', { 'value-quantity': `ge9.99|${UCUM}|mmol/L` }, { lenient: false, supported: repo.supportedSearchParams(), defaultCount: 100, maxCount: 100 });
    await expect(repo.search(request, { scanLimit: 50 })).rejects.toThrow(/would examine more than 50 Observation resources/);
    const scanned = [];
    for (const [query] of EXPECTED) {
      const r = parseSearch('Observation', { ...query, _count: '100' }, { lenient: false, supported: repo.supportedSearchParams(), defaultCount: 100, maxCount: 100 });
      const names = new Map([...ids].map(([name, id]) => [id, name]));
      scanned.push([query, (await repo.search(r)).resources.map((x) => names.get(x.id!)!).sort()]);
    }
    expect(scanned).toEqual(expected());
    const rebuilt = await repo.reindex();
    expect(rebuilt).toMatchObject({ versions: ids.size + 120, generation: INDEX_GENERATION });
    expect(await answers()).toEqual(expected());
  });
});
