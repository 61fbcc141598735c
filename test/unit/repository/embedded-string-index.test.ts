/**
 * String parameters (names, addresses) through the index (index generation 4): each part's folded
 * prefixes are keyed hashes in `ix_ref`, so `Patient?name=riv` is a key lookup, not a read of every
 * Patient; since generation 7 each three-letter piece too, so `name:contains=ver` is one as well. Answers are compared with the matching rule written out in the test, over a grid of
 * values, cases, accents, `:exact`, `:contains` and alternatives; and with a store whose rows predate
 * the generation (matched without the index).
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { Patient, Resource } from '@medplum/fhirtypes';
import Database from 'better-sqlite3';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseSearch } from '../../../src/fhir/search.js';
import { EmbeddedRepository } from '../../../src/repository/embedded/index.js';
import { INDEX_GENERATION, stringGramKey, STRING_PREFIX_MAX, stringPrefixKey } from '../../../src/repository/embedded/params.js';

const FAMILIES = ['Rivera', 'Rivière', 'Okafor', 'Ó Briain', 'Nguyen', 'Ng', 'van der Berg', 'Abdul-Rahman', 'Kowalczykowska-Wiśniewska'];
const GIVEN = ['Ana', 'Anaïs', 'Ben', 'Chloé', 'Dmitri'];

let dataDir: string;
let repo: EmbeddedRepository;
const stored: Patient[] = [];

const fold = (s: string): string => s.normalize('NFD').replace(/\p{M}/gu, '').toLowerCase();
/** The rule: some part of some name starts with the value (ignoring case and accents); :exact is equality; :contains a substring. */
function expected(value: string, modifier: '' | 'exact' | 'contains', param: 'name' | 'family'): string[] {
  const parts = (p: Patient): string[] => (p.name ?? []).flatMap((n) => (param === 'family' ? [n.family ?? ''] : [n.family ?? '', ...(n.given ?? [])]));
  return stored.filter((p) => parts(p).some((part) => value.split(',').some((v) =>
    modifier === 'exact' ? part === v : modifier === 'contains' ? fold(part).includes(fold(v)) : fold(part).startsWith(fold(v))))).map((p) => p.id!).sort();
}

async function search(query: Record<string, string>, scanLimit = 0): Promise<Resource[]> {
  const request = parseSearch('Patient', { ...query, _count: '1000' }, { lenient: false, supported: repo.supportedSearchParams(), defaultCount: 1000, maxCount: 1000 });
  return (await repo.search(request, { scanLimit })).resources;
}

beforeAll(async () => {
  dataDir = mkdtempSync(path.join(tmpdir(), 'gg-string-index-'));
  repo = await EmbeddedRepository.open({ dataDir });
  for (const [i, family] of FAMILIES.entries()) {
    for (const [j, given] of GIVEN.entries()) {
      if ((i + j) % 2) continue;
      stored.push((await repo.create<Patient>({ resourceType: 'Patient', name: [{ family, given: [given] }], birthDate: `19${50 + i}-0${1 + j}-01` })).resource);
    }
  }
  for (let i = 0; i < 60; i++) stored.push((await repo.create<Patient>({ resourceType: 'Patient', name: [{ family: `Filler${i}`, given: ['X'] }] })).resource);
});

afterAll(async () => {
  await repo.close();
  rmSync(dataDir, { recursive: true, force: true });
});

const VALUES = ['r', 'riv', 'RIVI', 'rivière', 'riviere', 'Rivera', 'o', 'ó b', 'o b', 'ng', 'nguyen', 'van', 'van der', 'abdul-', 'ana', 'anaï', 'chloe',
  'kowalczykowska', 'kowalczykowska-wis', 'kowalczykowska-wisniewska-x', 'zzz', 'filler1', 'ana,ben', 'x'];

describe('string parameters through the prefix index', () => {
  it('answers a grid of name and family searches as the rule says', async () => {
    let compared = 0;
    for (const param of ['name', 'family'] as const) {
      for (const modifier of ['', 'exact', 'contains'] as const) {
        for (const value of VALUES) {
          const got = (await search({ [modifier ? `${param}:${modifier}` : param]: value })).map((r) => r.id!).sort();
          expect([param, modifier, value, got]).toEqual([param, modifier, value, expected(value, modifier, param)]);
          compared++;
        }
      }
    }
    expect(compared).toBe(144);
  });

  it('a name search is a key lookup: a scan limit of 5 among 80 Patients refuses nothing that starts with 3 or more letters', async () => {
    for (const value of ['riv', 'nguyen', 'kowalczykowska-wisniewska', 'filler12']) {
      expect((await search({ name: value }, 5)).map((r) => r.id!).sort()).toEqual(expected(value, '', 'name'));
    }
    // longer than STRING_PREFIX_MAX: looked up by its first characters, then matched whole
    expect('kowalczykowska-wisniewska'.length).toBeGreaterThan(STRING_PREFIX_MAX);
  });

  it('a :contains search of 3 or more letters is a key lookup too (the rows of three of its pieces, generation 7)', async () => {
    for (const value of ['ver', 'IVI', 'guy', 'der b', 'wisniew', 'ller1', 'ana,fora', 'rah']) {
      expect([value, (await search({ 'name:contains': value }, 5)).map((r) => r.id!).sort()]).toEqual([value, expected(value, 'contains', 'name')]);
      expect([value, (await search({ 'family:contains': value }, 5)).map((r) => r.id!).sort()]).toEqual([value, expected(value, 'contains', 'family')]);
    }
    expect(expected('ver', 'contains', 'name').length).toBeGreaterThan(0);
    // shorter values have no piece to look up: matched on every candidate, so refused under the limit
    await expect(search({ 'name:contains': 'er' }, 5)).rejects.toThrow(/would examine more than 5 Patient resources/);
    expect((await search({ 'name:contains': 'er' })).map((r) => r.id!).sort()).toEqual(expected('er', 'contains', 'name'));
  });

  it('a store of generation 6 answers :contains the same without the pieces, and through them after the rebuild', async () => {
    const before = (await search({ 'name:contains': 'guy' })).map((r) => r.id!).sort();
    expect(before).toEqual(expected('guy', 'contains', 'name'));
    // what a store written before generation 7 is: no piece rows, generation 6 recorded
    const internals = repo as unknown as { keys: { hash(v: string): number }; db: Database.Database };
    const hashes = ['guy', 'ver', 'ana'].map((v) => internals.keys.hash(stringGramKey('Patient', 'name', v)));
    internals.db.prepare(`DELETE FROM ix_ref WHERE h IN (${hashes.map(() => '?').join(',')})`).run(...hashes);
    internals.db.prepare("UPDATE meta SET v = '6' WHERE k = 'index-generation'").run();
    await repo.close();
    repo = await EmbeddedRepository.open({ dataDir });
    expect(repo.indexGeneration).toBe(6);
    // not trusted: the candidates are matched, so the answer stays and the scan limit refuses it
    expect((await search({ 'name:contains': 'guy' })).map((r) => r.id!).sort()).toEqual(before);
    await expect(search({ 'name:contains': 'guy' }, 5)).rejects.toThrow(/would examine more than 5 Patient resources/);
    // starts-with is still a lookup (its rows are from generation 4)
    expect((await search({ name: 'nguyen' }, 5)).map((r) => r.id!).sort()).toEqual(expected('nguyen', '', 'name'));
    expect((await repo.reindex()).generation).toBe(INDEX_GENERATION);
    expect((await search({ 'name:contains': 'guy' }, 5)).map((r) => r.id!).sort()).toEqual(before);
  });

  it('a store whose rows predate string indexing (generation 3) answers the same, matching without the index', async () => {
    const before = new Map<string, string[]>();
    for (const value of ['riv', 'ó b', 'ana,ben']) before.set(value, (await search({ name: value })).map((r) => r.id!).sort());
    // what a store written before generation 4 is: no prefix rows for these values, generation 3 recorded
    const internals = repo as unknown as { keys: { hash(v: string): number }; db: Database.Database };
    const hashes = ['riv', 'o b', 'ana', 'ben'].map((v) => internals.keys.hash(stringPrefixKey('Patient', 'name', v)));
    internals.db.prepare(`DELETE FROM ix_ref WHERE h IN (${hashes.map(() => '?').join(',')})`).run(...hashes);
    internals.db.prepare("UPDATE meta SET v = '3' WHERE k = 'index-generation'").run();
    await repo.close();
    repo = await EmbeddedRepository.open({ dataDir });
    expect(repo.indexGeneration).toBe(3);
    // trusting the index would find nothing; the planner does not trust it, so the answers stay
    for (const [value, ids] of before) expect([value, (await search({ name: value })).map((r) => r.id!).sort()]).toEqual([value, ids]);
    // the rebuild visits the types with parameters indexed since generation 3 (names; quantities in
    // base units since 5; identifiers of references since 6, which insulin doses have; the pieces of
    // names since 7); from generation 6 only the types with string parameters, not insulin doses
    for (let i = 0; i < 5; i++) {
      await repo.create({ resourceType: 'MedicationAdministration', status: 'completed', medicationCodeableConcept: { text: 'insulin' }, subject: { reference: 'Patient/p' }, effectiveDateTime: '2026-01-01' });
      await repo.create({ resourceType: 'Practitioner', name: [{ family: `Lee${i}` }] });
    }
    expect(await repo.reindex()).toEqual({ versions: stored.length + 10, unreadable: 0, generation: INDEX_GENERATION });
    expect(repo.indexGeneration).toBe(INDEX_GENERATION);
    (repo as unknown as { db: Database.Database }).db.prepare("UPDATE meta SET v = '6' WHERE k = 'index-generation'").run();
    await repo.close();
    repo = await EmbeddedRepository.open({ dataDir });
    expect(await repo.reindex()).toEqual({ versions: stored.length + 5, unreadable: 0, generation: INDEX_GENERATION });
    expect((await repo.reindex(undefined, { all: true })).versions).toBe(stored.length + 10);
    for (const [value, ids] of before) expect([value, (await search({ name: value }, 5)).map((r) => r.id!).sort()]).toEqual([value, ids]);
  });
});
