/**
 * Token modifiers answered on the embedded store besides `:not` and `:missing`: `:text` (the text of
 * a code: CodeableConcept.text, displays) and `identifier:of-type` (an identifier of a given type,
 * such as a medical record number), which the identifier index narrows; and `:identifier` on
 * references (the identifier of a logical reference, `Observation?subject:identifier=urn:mrn|A-1`,
 * never the resource referred to), indexed since generation 6.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { Observation, Patient, Resource } from '@medplum/fhirtypes';
import type Database from 'better-sqlite3';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { isGlucoGuardError } from '../../../src/errors.js';
import { parseSearch } from '../../../src/fhir/search.js';
import { EmbeddedRepository } from '../../../src/repository/embedded/index.js';
import { INDEX_GENERATION } from '../../../src/repository/embedded/params.js';

const V2 = 'http://terminology.hl7.org/CodeSystem/v2-0203';
let dataDir: string;
let repo: EmbeddedRepository;
const ids: Record<string, string> = {};

function search(type: string, query: Record<string, string>, scanLimit = 0): Promise<Resource[]> {
  return Promise.resolve().then(() => repo.search(parseSearch(type, query, { lenient: false, supported: repo.supportedSearchParams(), defaultCount: 100, maxCount: 100 }), { scanLimit }))
    .then((r) => r.resources);
}
const named = (resources: Resource[]): string[] => resources.map((r) => Object.entries(ids).find(([, id]) => id === r.id)?.[0] ?? r.id!).sort();

beforeAll(async () => {
  dataDir = mkdtempSync(path.join(tmpdir(), 'gg-token-mod-'));
  repo = await EmbeddedRepository.open({ dataDir });
  const obs = (name: string, code: Observation['code']): Promise<void> =>
    repo.create<Observation>({ resourceType: 'Observation', status: 'final', code, subject: { reference: 'Patient/p' } }).then((r) => { ids[name] = r.resource.id!; });
  await obs('cgm', { coding: [{ system: 'http://loinc.org', code: '99504-3', display: 'Glucose [Mass/volume] in Interstitial fluid' }] });
  await obs('blood', { text: 'Blood glucose (fingerstick)' });
  await obs('heart', { coding: [{ system: 'http://loinc.org', code: '8867-4', display: 'Heart rate' }], text: 'Pulse' });
  await obs('accented', { text: 'Glucémie capillaire' });
  const patient = (name: string, identifier: Patient['identifier']): Promise<void> =>
    repo.create<Patient>({ resourceType: 'Patient', identifier }).then((r) => { ids[name] = r.resource.id!; });
  await patient('mrn', [{ system: 'urn:mrn', value: '12345', type: { coding: [{ system: V2, code: 'MR' }] } }]);
  await patient('ssn', [{ system: 'urn:ssn', value: '12345', type: { coding: [{ system: V2, code: 'SS' }] } }]);
  await patient('mrn2', [{ system: 'urn:mrn', value: '999', type: { coding: [{ system: V2, code: 'MR' }] } }, { system: 'urn:other', value: '12345' }]);
  for (let i = 0; i < 30; i++) await patient(`other${i}`, [{ system: 'urn:mrn', value: `x${i}`, type: { coding: [{ system: V2, code: 'MR' }] } }]);
  const logical = (name: string, fields: Partial<Observation>): Promise<void> =>
    repo.create<Observation>({ resourceType: 'Observation', status: 'final', code: { text: 'logical' }, ...fields }).then((r) => { ids[name] = r.resource.id!; });
  // a reading from another system that knows the patient by MRN only, and its meter by serial number
  await logical('byMrn', { subject: { identifier: { system: 'urn:mrn', value: 'A-1' } }, device: { identifier: { system: 'urn:serial', value: 'SN9' } } });
  // a reference with both: :identifier reads the identifier, plain subject= the reference
  await logical('both', { subject: { reference: 'Patient/p', identifier: { value: 'A-1' } } });
  await logical('otherMrn', { subject: { identifier: { system: 'urn:mrn', value: 'B-2' } } });
  await logical('otherSystem', { subject: { identifier: { system: 'urn:ssn', value: 'A-1' } } });
  await logical('noValue', { subject: { identifier: { system: 'urn:mrn' }, display: 'someone' } });
  for (let i = 0; i < 30; i++) await logical(`filler${i}`, { subject: { identifier: { system: 'urn:mrn', value: `F-${i}` } } });
});

afterAll(async () => {
  await repo.close();
  rmSync(dataDir, { recursive: true, force: true });
});

describe(':text on tokens', () => {
  it('matches the start of any word of the text or a display, ignoring case and accents', async () => {
    expect(named(await search('Observation', { 'code:text': 'glucose' }))).toEqual(['blood', 'cgm']);
    expect(named(await search('Observation', { 'code:text': 'Interstitial FL' }))).toEqual(['cgm']);
    expect(named(await search('Observation', { 'code:text': 'mass/volume' }))).toEqual(['cgm']);
    expect(named(await search('Observation', { 'code:text': 'glucemie' }))).toEqual(['accented']);
    expect(named(await search('Observation', { 'code:text': 'pulse,heart' }))).toEqual(['heart']);
    // not from inside a word, and punctuation alone matches nothing
    expect(await search('Observation', { 'code:text': 'ucose' })).toEqual([]);
    expect(await search('Observation', { 'code:text': '!!!' })).toEqual([]);
  });
});

describe('identifier:of-type', () => {
  it('finds an identifier by its type and value, whatever its system, through the identifier index', async () => {
    // a scan limit of 5 among 33 Patients: only an index lookup answers it
    expect(named(await search('Patient', { 'identifier:of-type': `${V2}|MR|12345` }, 5))).toEqual(['mrn']);
    expect(named(await search('Patient', { 'identifier:of-type': `|MR|12345` }, 5))).toEqual(['mrn']);
    expect(named(await search('Patient', { 'identifier:of-type': `${V2}|SS|12345` }, 5))).toEqual(['ssn']);
    expect(named(await search('Patient', { 'identifier:of-type': `${V2}|MR|999,${V2}|SS|12345` }, 5))).toEqual(['mrn2', 'ssn']);
    // the value must belong to the identifier of that type: mrn2 has 12345 only under another, untyped, identifier
    expect(named(await search('Patient', { 'identifier:of-type': `${V2}|MR|12345` }, 5))).not.toContain('mrn2');
    expect(await search('Patient', { 'identifier:of-type': `urn:other-system|MR|12345` }, 5)).toEqual([]);
  });

  it('refuses a malformed value, and the modifier on a parameter that is not an identifier', async () => {
    for (const [type, query] of [['Patient', { 'identifier:of-type': 'MR|12345' }], ['Patient', { 'identifier:of-type': `${V2}||12345` }],
      ['Observation', { 'code:of-type': `${V2}|MR|1` }], ['Observation', { 'code:text': ' ' }]] as const) {
      const err = await search(type, query).then(() => undefined, (e: unknown) => e);
      expect([query, isGlucoGuardError(err, 'ERR_INVALID')]).toEqual([query, true]);
    }
  });
});

describe(':identifier on references', () => {
  const IDENTIFIER_CASES: [Record<string, string>, string[]][] = [
    [{ 'subject:identifier': 'urn:mrn|A-1' }, ['byMrn']],
    [{ 'subject:identifier': 'A-1' }, ['both', 'byMrn', 'otherSystem']],
    [{ 'subject:identifier': '|A-1' }, ['both']],
    [{ 'subject:identifier': 'urn:mrn|a-1' }, ['byMrn']],
    [{ 'subject:identifier': 'urn:mrn|A-1,urn:mrn|B-2' }, ['byMrn', 'otherMrn']],
    [{ 'device:identifier': 'urn:serial|SN9' }, ['byMrn']],
    [{ 'subject:identifier': 'urn:mrn|A-1', 'device:identifier': 'SN9' }, ['byMrn']],
    // `patient` is `subject.where(resolve() is Patient)`: an identifier-only reference names no type
    [{ 'patient:identifier': 'A-1' }, ['both']],
    [{ 'subject:identifier': 'urn:mrn|Z-404' }, []],
  ];
  const answers = async (scanLimit: number): Promise<[Record<string, string>, string[]][]> => {
    const out: [Record<string, string>, string[]][] = [];
    for (const [query] of IDENTIFIER_CASES) out.push([query, named(await search('Observation', query, scanLimit))]);
    return out;
  };

  it('finds logical references by identifier ([system|]value) through the index, never by the reference itself', async () => {
    // a scan limit of 5 among 40 Observations: only index lookups answer these
    expect(await answers(5)).toEqual(IDENTIFIER_CASES);
    // the plain parameter still reads the reference, not the identifier
    expect(named(await search('Observation', { subject: 'Patient/p', 'code:text': 'logical' }))).toEqual(['both']);
    // any identifier of a system has no row to narrow by, and is matched on the candidates
    expect(named(await search('Observation', { 'subject:identifier': 'urn:mrn|', 'code:text': 'logical', _count: '100' })))
      .toEqual(['byMrn', ...Array.from({ length: 30 }, (_, i) => `filler${i}`), 'otherMrn'].sort());
  });

  it('refuses an identifier value that is not [system|]value', async () => {
    for (const value of ['|', 'a|b|c', '||']) {
      const err = await search('Observation', { 'subject:identifier': value }).then(() => undefined, (e: unknown) => e);
      expect([value, isGlucoGuardError(err, 'ERR_INVALID')]).toEqual([value, true]);
    }
  });

  it('answers the same in a store of generation 5, matching the candidates, and through the index again after the rebuild', async () => {
    (repo as unknown as { db: Database.Database }).db.prepare("UPDATE meta SET v = '5' WHERE k = 'index-generation'").run();
    await repo.close();
    repo = await EmbeddedRepository.open({ dataDir });
    expect(repo.indexGeneration).toBe(5);
    // the identifier rows are not trusted yet: the same question now examines every Observation
    await expect(search('Observation', { 'subject:identifier': 'urn:mrn|A-1' }, 5)).rejects.toThrow(/would examine more than 5 Observation resources/);
    expect(await answers(0)).toEqual(IDENTIFIER_CASES);
    await repo.reindex();
    expect(repo.indexGeneration).toBe(INDEX_GENERATION);
    expect(await answers(5)).toEqual(IDENTIFIER_CASES);
  });
});
