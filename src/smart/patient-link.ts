/**
 * Which patients a resource belongs to, for `patient/` scope confinement. A minimal local helper:
 * src/fhir/compartment.ts (the full Patient compartment definition) did not exist when this was
 * written; switch to its `patientIdsOf` once it does. Only exact `Patient/ID` references count
 * (`Patient/12` is not `Patient/123`); anything else is no link, so patient scopes fail closed.
 */
const PATIENT_LINK_FIELDS = ['subject', 'patient', 'beneficiary', 'individual', 'who', 'for', 'recorder', 'performer', 'author', 'source'];

export function patientIdsOf(resource: object): string[] {
  const r = resource as Record<string, unknown>;
  if (r.resourceType === 'Patient' && typeof r.id === 'string') return [r.id];
  const ids = new Set<string>();
  for (const field of PATIENT_LINK_FIELDS) {
    const values = Array.isArray(r[field]) ? (r[field] as unknown[]) : [r[field]];
    for (const value of values) {
      const id = patientIdOfReference(value);
      if (id) ids.add(id);
    }
  }
  return [...ids];
}

function patientIdOfReference(value: unknown): string | undefined {
  if (!value || typeof value !== 'object') return undefined;
  const ref = (value as { reference?: unknown; actor?: unknown }).reference;
  if (typeof ref !== 'string') return patientIdOfReference((value as { actor?: unknown }).actor);
  const match = /^(?:.*\/)?Patient\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/[^/]+)?$/.exec(ref);
  return match?.[1];
}
