/**
 * Who may act for a patient besides the patient: a relative (RelatedPerson) of that patient, not
 * marked inactive, whose relationship is a legal authority — v3 RoleCode guardian or a power of
 * attorney. Such a relative grants and revokes consent for the patient (service.ts) and brings the
 * patient's data in — CGM imports, creates and corrections of readings in the patient's record —
 * as the parent of a child with a sensor does (policy.ts mayWrite). Any other relative (a partner,
 * a parent of an adult, a carer) is only ever a grantee.
 */
import type { RelatedPerson } from '@medplum/fhirtypes';
import type { Repository } from '../repository/port.js';

/** v3 RoleCode relationships that give a legal authority to act for the patient (guardian, powers of attorney). */
const LEGAL_AUTHORITY = new Set(['GUARD', 'POWATT', 'DPOWATT', 'HPOWATT', 'SPOWATT']);
const ROLE_CODE = 'http://terminology.hl7.org/CodeSystem/v3-RoleCode';

export function hasLegalAuthority(person: RelatedPerson): boolean {
  return (person.relationship ?? []).some((r) => (r.coding ?? []).some((c) => c.system === ROLE_CODE && c.code !== undefined && LEGAL_AUTHORITY.has(c.code)));
}

/**
 * Whether the signed-in user `fhirUser` (`RelatedPerson/<id>`) acts for `patientId`: that relative
 * of that patient, active, with a legal authority. Anything else, an unreadable RelatedPerson
 * included, is no.
 */
export async function actsForPatient(repository: Repository, fhirUser: string | undefined, patientId: string): Promise<boolean> {
  if (!fhirUser?.startsWith('RelatedPerson/')) return false;
  const person = await repository.read<RelatedPerson>('RelatedPerson', fhirUser.slice('RelatedPerson/'.length)).catch(() => undefined);
  return person?.patient?.reference === `Patient/${patientId}` && person.active !== false && hasLegalAuthority(person);
}
