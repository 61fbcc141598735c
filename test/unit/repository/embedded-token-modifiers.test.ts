/**
 * Token modifiers answered on the embedded store besides `:not` and `:missing`: `:text` (the text of
 * a code: CodeableConcept.text, displays) and `identifier:of-type` (an identifier of a given type,
 * such as a medical record number), which the identifier index narrows.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { Observation, Patient, Resource } from '@medplum/fhirtypes';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { isGlucoGuardError } from '../../../src/errors.js';
import { parseSearch } from '../../../src/fhir/search.js';
import { EmbeddedRepository } from '../../../src/repository/embedded/index.js';

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
