/** Resource types the facade serves. Others get 404 (unknown type), as the CapabilityStatement says. */
export const SUPPORTED_RESOURCE_TYPES = [
  'Patient',
  'Observation',
  'Device',
  'Consent',
  'AuditEvent',
  'MedicationAdministration',
  'DiagnosticReport',
  'ServiceRequest',
  'Practitioner',
  'Organization',
  // A patient's relatives (parent, partner, carer): in the Patient compartment by `patient`, and
  // grantees of consent like clinicians (src/consent/terms.ts ACTOR_TYPES).
  'RelatedPerson',
  // Bulk export by Group (src/exchange/export.ts) and R4 backport Subscriptions (src/exchange/subscriptions.ts).
  'Group',
  'Subscription',
] as const;

export type SupportedResourceType = (typeof SUPPORTED_RESOURCE_TYPES)[number];

export function isSupportedType(type: string): type is SupportedResourceType {
  return (SUPPORTED_RESOURCE_TYPES as readonly string[]).includes(type);
}
