/**
 * Composite search parameters on the embedded repository (search.html#composite): the parts of one
 * value hold on one element (the Observation for `code-value-quantity`, one component for
 * `component-code-value-quantity`, either for `combo-…`), alternatives after a comma, refusals; and
 * a grid of queries compared with a plain filter written out in the test, so the plain filters the
 * store adds for its indexes (impliedFilters) are checked against an answer that does not use them.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { Observation, Resource } from '@medplum/fhirtypes';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { isGlucoGuardError } from '../../../src/errors.js';
import { parseSearch } from '../../../src/fhir/search.js';
import { EmbeddedRepository } from '../../../src/repository/embedded/index.js';

const LOINC = 'http://loinc.org';
const UCUM = 'http://unitsofmeasure.org';
const GLUCOSE = '99504-3';
const SYSTOLIC = '8480-6';
const DIASTOLIC = '8462-4';

let dataDir: string;
let repo: EmbeddedRepository;
const stored: Observation[] = [];

async function search(query: Record<string, string | string[]>): Promise<Resource[]> {
  const request = parseSearch('Observation', { ...query, _count: '1000' }, { lenient: false, supported: repo.supportedSearchParams(), defaultCount: 1000, maxCount: 1000 });
  return repo.search(request).then((r) => r.resources);
}
const idsOf = (resources: Resource[]): string[] => resources.map((r) => r.id!).sort();

async function put(o: Observation): Promise<void> {
  stored.push((await repo.create(o)).resource);
}

const quantity = (value: number, unit = 'mg/dL') => ({ value, unit, system: UCUM, code: unit });
const concept = (code: string) => ({ coding: [{ system: LOINC, code }] });

beforeAll(async () => {
  dataDir = mkdtempSync(path.join(tmpdir(), 'gg-composite-'));
  repo = await EmbeddedRepository.open({ dataDir });
  const base = { resourceType: 'Observation', status: 'final', subject: { reference: 'Patient/p1' }, effectiveDateTime: '2026-01-01T00:00:00Z' } as const;
  for (const [code, value, unit] of [[GLUCOSE, 80, 'mg/dL'], [GLUCOSE, 120, 'mg/dL'], [GLUCOSE, 180, 'mg/dL'], [GLUCOSE, 250, 'mg/dL'], [GLUCOSE, 7, 'mmol/L'],
    ['2339-0', 250, 'mg/dL'], ['2339-0', 120, 'mg/dL']] as const) {
    await put({ ...base, code: concept(code), valueQuantity: quantity(value, unit) });
  }
  // blood pressure: systolic 130 / diastolic 85, and 115 / 95 (diastolic high, systolic not)
  for (const [sys, dia] of [[130, 85], [115, 95]] as const) {
    await put({ ...base, code: concept('85354-9'), component: [
      { code: concept(SYSTOLIC), valueQuantity: quantity(sys, 'mm[Hg]') },
      { code: concept(DIASTOLIC), valueQuantity: quantity(dia, 'mm[Hg]') },
    ] });
  }
  await put({ ...base, code: concept('32016-8'), valueCodeableConcept: concept('LA9634-2') });
});

afterAll(async () => {
  await repo.close();
  rmSync(dataDir, { recursive: true, force: true });
});

describe('composite parameters', () => {
  it('code-value-quantity: the code and the value of the same Observation', async () => {
    const high = await search({ 'code-value-quantity': `${LOINC}|${GLUCOSE}$gt180` });
    expect(high.map((r) => (r as Observation).valueQuantity!.value)).toEqual([250]);
    expect(idsOf(await search({ 'code-value-quantity': `${GLUCOSE}$ge180|${UCUM}|mg/dL` }))).toHaveLength(2);
    expect(idsOf(await search({ 'code-value-quantity': `${GLUCOSE}$gt5||mmol/L` }))).toHaveLength(1);
    // 2339-0 at 250 is above 180 but not the code asked for
    expect((await search({ 'code-value-quantity': `${LOINC}|2339-0$gt180` })).map((r) => (r as Observation).valueQuantity!.value)).toEqual([250]);
  });

  it('component-code-value-quantity pairs the code and the value inside one component', async () => {
    const bp = stored.filter((o) => o.component);
    expect(idsOf(await search({ 'component-code-value-quantity': `${LOINC}|${SYSTOLIC}$gt120` }))).toEqual([bp[0]!.id]);
    expect(idsOf(await search({ 'component-code-value-quantity': `${DIASTOLIC}$gt90` }))).toEqual([bp[1]!.id]);
    // the 130/85 reading has a component above 120 and a diastolic component, but no diastolic above 120
    expect(await search({ 'component-code-value-quantity': `${DIASTOLIC}$gt120` })).toEqual([]);
    // a comma gives alternatives; a repeated parameter is AND
    expect(idsOf(await search({ 'component-code-value-quantity': `${SYSTOLIC}$gt120,${DIASTOLIC}$gt90` }))).toEqual(idsOf(bp));
    expect(await search({ 'component-code-value-quantity': [`${SYSTOLIC}$gt120`, `${DIASTOLIC}$gt90`] })).toEqual([]);
  });

  it('combo-code-value-quantity looks at the Observation and at its components', async () => {
    expect(await search({ 'combo-code-value-quantity': `${SYSTOLIC}$gt120` })).toHaveLength(1);
    expect((await search({ 'combo-code-value-quantity': `${GLUCOSE}$lt100` })).map((r) => (r as Observation).valueQuantity!.value).sort()).toEqual([7, 80]);
  });

  it('code-value-concept: the code and a coded value', async () => {
    expect(await search({ 'code-value-concept': `${LOINC}|32016-8$${LOINC}|LA9634-2` })).toHaveLength(1);
    expect(await search({ 'code-value-concept': `${LOINC}|32016-8$LA0000-0` })).toEqual([]);
    // a Quantity's unit is not a coded value
    expect(await search({ 'code-value-concept': `${LOINC}|${GLUCOSE}$${UCUM}|mg/dL` })).toEqual([]);
  });

  it(':missing: whether some element has a value for every part', async () => {
    const coded = stored.filter((o) => o.valueCodeableConcept);
    expect(idsOf(await search({ 'code-value-quantity:missing': 'true' }))).toEqual(idsOf([...coded, ...stored.filter((o) => o.component)]));
    expect(await search({ 'code-value-quantity:missing': 'false' })).toHaveLength(7);
    expect(idsOf(await search({ 'code-value-concept:missing': 'false' }))).toEqual(idsOf(coded));
    expect(await search({ 'component-code-value-quantity:missing': 'false' })).toHaveLength(2);
  });

  it('malformed values and modifiers are 400, and say what is wrong', async () => {
    const refused: Record<string, string>[] = [{ 'code-value-quantity': GLUCOSE }, { 'code-value-quantity': `${GLUCOSE}$gtx` }, { 'code-value-quantity': `${GLUCOSE}$1$2` },
      { 'code-value-quantity': `$gt5` }, { 'code-value-quantity:missing': 'maybe' }, { 'code-value-quantity:not': `${GLUCOSE}$5` }];
    for (const query of refused) {
      const err = await search(query).then(() => undefined, (e: unknown) => e);
      expect([query, isGlucoGuardError(err, 'ERR_INVALID')]).toEqual([query, true]);
    }
  });

  it('a grid of code-value-quantity queries answers as code and value filters checked one by one on every reading', async () => {
    const matchesValue = (v: number, prefix: string, n: number): boolean => ({
      eq: v >= n - 0.5 && v < n + 0.5, gt: v > n, lt: v < n, ge: v >= n, le: v <= n, sa: v > n, eb: v < n,
    } as Record<string, boolean>)[prefix]!;
    let compared = 0;
    for (const code of [GLUCOSE, '2339-0', SYSTOLIC]) {
      for (const prefix of ['eq', 'ne', 'gt', 'lt', 'ge', 'le', 'sa', 'eb']) {
        for (const n of [7, 80, 120, 180, 250]) {
          for (const unit of ['', `|${UCUM}|mg/dL`, '||mmol/L']) {
            // the reading's value in the unit asked for: `|UCUM|mg/dL` converts, a glucose reading in
            // mmol/L counting 18.01559 mg/dL per mmol/L; `||mmol/L` names the unit exactly
            const inUnit = ({ valueQuantity: q }: Observation): number | undefined => unit === '' || q!.code === unit.split('|').at(-1) ? q!.value
              : unit.includes(UCUM) && q!.code === 'mmol/L' && [GLUCOSE, '2339-0'].includes(code) ? q!.value! * 18.01559 : undefined;
            // as value-quantity does: `ne` with a unit is any value that is not that value in that unit
            const expected = stored.filter((o) => o.code.coding?.[0]?.code === code && o.valueQuantity?.value !== undefined
              && (prefix === 'ne' ? !(inUnit(o) !== undefined && matchesValue(inUnit(o)!, 'eq', n)) : inUnit(o) !== undefined && matchesValue(inUnit(o)!, prefix, n)))
              .map((o) => o.id!).sort();
            const got = idsOf(await search({ 'code-value-quantity': `${LOINC}|${code}$${prefix}${n}${unit}` }));
            expect([code, prefix, n, unit, got]).toEqual([code, prefix, n, unit, expected]);
            compared++;
          }
        }
      }
    }
    expect(compared).toBe(360);
  });
});

describe('the planner weighs a date or quantity range against a plain token', () => {
  let dir: string;
  let store: EmbeddedRepository;
  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'gg-composite-plan-'));
    store = await EmbeddedRepository.open({ dataDir: dir });
    const readings: Observation[] = Array.from({ length: 302 }, (_, i) => ({
      resourceType: 'Observation', status: 'final', code: concept(GLUCOSE), subject: { reference: 'Patient/p1' },
      effectiveDateTime: new Date(Date.UTC(2026, 0, 1) + i * 300_000).toISOString(), valueQuantity: quantity(i < 300 ? 100 + (i % 150) : 401 + i),
    }));
    await store.createMany(readings);
  });
  afterAll(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a glucose threshold reads the few readings above it, not every glucose reading (a scan limit of 50 would refuse the latter)', async () => {
    const run = (query: Record<string, string>) => store.search(parseSearch('Observation', query, { lenient: false, supported: store.supportedSearchParams(), defaultCount: 100, maxCount: 100 }), { scanLimit: 50 });
    expect((await run({ 'code-value-quantity': `${LOINC}|${GLUCOSE}$gt400|${UCUM}|mg/dL` })).resources).toHaveLength(2);
    expect((await run({ code: `${LOINC}|${GLUCOSE}`, 'value-quantity': 'gt400' })).resources).toHaveLength(2);
    // a rare code with a wide range: no match, and nothing refused
    expect((await run({ 'code-value-quantity': `${LOINC}|2339-0$gt50` })).resources).toEqual([]);
  });

  it('the last hour of glucose readings is read through the date index, not through every reading of the code', async () => {
    const run = (query: Record<string, string | string[]>) => store.search(parseSearch('Observation', query, { lenient: false, supported: store.supportedSearchParams(), defaultCount: 100, maxCount: 100 }), { scanLimit: 50 });
    const from = new Date(Date.UTC(2026, 0, 1) + 290 * 300_000).toISOString();
    const hour = await run({ code: `${LOINC}|${GLUCOSE}`, date: `ge${from}` });
    expect(hour.resources).toHaveLength(12);
    // and the order the date index yields serves a date sort without sorting everything
    expect((await run({ code: `${LOINC}|${GLUCOSE}`, date: `ge${from}`, _sort: '-date', _count: '3' })).resources.map((r) => (r as Observation).effectiveDateTime))
      .toEqual([301, 300, 299].map((i) => new Date(Date.UTC(2026, 0, 1) + i * 300_000).toISOString()));
  });
});
