/**
 * Groups in the embedded store's index (index generation 8): `member` — the Group's link to the
 * Patient compartment, which consent narrows a grantee's Group search by — and Group's other
 * parameters are key lookups. A store written before (generation 7) has no rows for any Group: it
 * answers the same, matching every Group, until the rebuild, which visits Groups only.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { Group, Resource } from '@medplum/fhirtypes';
import Database from 'better-sqlite3';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseSearch } from '../../../src/fhir/search.js';
import { EmbeddedRepository } from '../../../src/repository/embedded/index.js';
import { INDEX_GENERATION, paramsIndexedSince, typesIndexedSince } from '../../../src/repository/embedded/params.js';

let dataDir: string;
let repo: EmbeddedRepository;
const named = new Map<string, string>();

async function search(query: Record<string, string>, scanLimit = 0): Promise<string[]> {
  const request = parseSearch('Group', { ...query, _count: '100' }, { lenient: false, supported: repo.supportedSearchParams(), defaultCount: 100, maxCount: 100 });
  return (await repo.search(request, { scanLimit })).resources.map((r: Resource) => named.get(r.id!) ?? r.id!).sort();
}

const group = (name: string, members: string[], extra: Partial<Group> = {}): Group => ({
  resourceType: 'Group', type: 'person', actual: true, identifier: [{ system: 'urn:test:group', value: name }],
  member: members.map((reference) => ({ entity: { reference } })), ...extra,
});

beforeAll(async () => {
  dataDir = mkdtempSync(path.join(tmpdir(), 'gg-group-index-'));
  repo = await EmbeddedRepository.open({ dataDir });
  const put = async (name: string, g: Group): Promise<void> => {
    named.set((await repo.create(g)).resource.id!, name);
  };
  await put('a', group('a', ['Patient/a']));
  await put('ab', group('ab', ['Patient/a', 'Patient/b'], { meta: { tag: [{ system: 'urn:t', code: 'x' }] } }));
  await put('aDoc', group('aDoc', ['Patient/a', 'Practitioner/doc'], { managingEntity: { reference: 'Organization/clinic' } }));
  for (let i = 0; i < 30; i++) await put(`other${i}`, group(`other${i}`, [`Patient/o${i}`]));
  // other types, which a rebuild from generation 7 has no reason to visit
  for (let i = 0; i < 5; i++) await repo.create({ resourceType: 'Patient', name: [{ family: `P${i}` }] });
});

afterAll(async () => {
  await repo.close();
  rmSync(dataDir, { recursive: true, force: true });
});

describe('Group parameters', () => {
  it('are key lookups: member, identifier, managing-entity, _tag among 33 Groups under a scan limit of 5', async () => {
    expect(repo.indexGeneration).toBe(INDEX_GENERATION);
    expect(await search({ member: 'Patient/a' }, 5)).toEqual(['a', 'aDoc', 'ab']);
    expect(await search({ member: 'Patient/b,Practitioner/doc' }, 5)).toEqual(['aDoc', 'ab']);
    expect(await search({ member: 'Patient/a', 'member:not': 'Patient/b' }, 5)).toEqual(['a', 'aDoc']);
    expect(await search({ identifier: 'urn:test:group|other7' }, 5)).toEqual(['other7']);
    expect(await search({ 'managing-entity': 'Organization/clinic' }, 5)).toEqual(['aDoc']);
    expect(await search({ _tag: 'urn:t|x' }, 5)).toEqual(['ab']);
    expect(await search({ member: 'Patient/nobody' }, 5)).toEqual([]);
  });

  it('generation 8 is Group\'s: a store of 7 lacks rows for Groups alone', () => {
    expect(INDEX_GENERATION).toBe(8);
    expect(typesIndexedSince(7)).toEqual(['Group']);
    expect(paramsIndexedSince(7)).toEqual(expect.arrayContaining(['member', 'member:identifier', 'identifier', '_tag']));
    expect(paramsIndexedSince(7)).not.toContain('_id');
    expect(paramsIndexedSince(7, 'Observation')).toEqual([]);
  });
});

describe('a store of generation 7', () => {
  it('answers Group searches the same without the index, and through it after the rebuild of Groups only', async () => {
    const before = await search({ member: 'Patient/a' });
    // what a store written before generation 8 is: no index rows for any Group, generation 7 recorded
    const db = (repo as unknown as { db: Database.Database }).db;
    const groups = "SELECT seq FROM versions WHERE type = 'Group'";
    db.prepare(`DELETE FROM ix_ref WHERE seq IN (${groups})`).run();
    db.prepare(`DELETE FROM ix_date WHERE seq IN (${groups})`).run();
    db.prepare("UPDATE versions SET ix = NULL WHERE type = 'Group'").run();
    db.prepare("UPDATE meta SET v = '7' WHERE k = 'index-generation'").run();
    await repo.close();
    repo = await EmbeddedRepository.open({ dataDir });
    expect(repo.indexGeneration).toBe(7);
    // trusting the (missing) rows would answer nothing; the planner does not, and matches every Group
    expect(await search({ member: 'Patient/a' })).toEqual(before);
    expect(await search({ member: 'Practitioner/doc' })).toEqual(['aDoc']);
    expect(await search({ _tag: 'urn:t|x' })).toEqual(['ab']);
    await expect(search({ member: 'Patient/a' }, 5)).rejects.toThrow(/would examine more than 5 Group resources/);
    // the rebuild visits the 33 Groups, not the Patients
    expect(await repo.reindex()).toEqual({ versions: 33, unreadable: 0, generation: INDEX_GENERATION });
    expect(repo.indexGeneration).toBe(8);
    expect(await search({ member: 'Patient/a' }, 5)).toEqual(before);
    await repo.close();
    repo = await EmbeddedRepository.open({ dataDir });
    expect(repo.indexGeneration).toBe(8);
    expect(await search({ member: 'Patient/a' }, 5)).toEqual(before);
    expect(await search({ _tag: 'urn:t|x' }, 5)).toEqual(['ab']);
  });
});
