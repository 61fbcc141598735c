/**
 * Who may act for a patient besides the patient: a relative (RelatedPerson) of that patient, not
 * marked inactive and within its `period`, whose relationship is a legal authority — v3 RoleCode
 * guardian or a power of attorney. Such a relative grants and revokes consent for the patient
 * (service.ts) and brings the patient's data in — CGM imports, creates and corrections of readings
 * in the patient's record — as the parent of a child with a sensor does (policy.ts mayWrite). Any
 * other relative (a partner, a parent of an adult, a carer) is only ever a grantee.
 */
import type { RelatedPerson } from '@medplum/fhirtypes';
import type { Repository } from '../repository/port.js';
import { spanOf } from './clinical-time.js';

/** v3 RoleCode relationships that give a legal authority to act for the patient (guardian, powers of attorney). */
const LEGAL_AUTHORITY = new Set(['GUARD', 'POWATT', 'DPOWATT', 'HPOWATT', 'SPOWATT']);
const ROLE_CODE = 'http://terminology.hl7.org/CodeSystem/v3-RoleCode';

export function hasLegalAuthority(person: RelatedPerson): boolean {
  return (person.relationship ?? []).some((r) => (r.coding ?? []).some((c) => c.system === ROLE_CODE && c.code !== undefined && LEGAL_AUTHORITY.has(c.code)));
}

/**
 * Whether the signed-in user `fhirUser` (`RelatedPerson/<id>`) acts for `patientId`: that relative
 * of that patient, active, within the relationship's `period` (a guardianship ends, when the ward
 * comes of age for one), with a legal authority. Anything else, an unreadable RelatedPerson or a
 * period that can't be read included, is no.
 */
export async function actsForPatient(repository: Repository, fhirUser: string | undefined, patientId: string, now = Date.now(),
  trusted?: (resource: RelatedPerson) => Promise<boolean>): Promise<boolean> {
  if (!fhirUser?.startsWith('RelatedPerson/')) return false;
  const person = await repository.read<RelatedPerson>('RelatedPerson', fhirUser.slice('RelatedPerson/'.length)).catch(() => undefined);
  if (!(person?.patient?.reference === `Patient/${patientId}` && person.active !== false && inPeriod(person, now) && hasLegalAuthority(person))) return false;
  // an authority is taken only from a version that passed the integrity check (not one changed on
  // disk or on the upstream behind GlucoGuard's back, nor one the chain cannot vouch for now)
  return trusted ? trusted(person).catch(() => false) : true;
}

/**
 * Whether `now` is within the relationship's period, each end covering the whole span its
 * precision implies (`2026-05-01` ends with that day: clinical-time.ts spanOf); an end that does not
 * parse is no period at all.
 */
function inPeriod(person: RelatedPerson, now: number): boolean {
  const { start, end } = person.period ?? {};
  if (start !== undefined) {
    const from = spanOf(start);
    if (!from || now < from.from) return false;
  }
  if (end !== undefined) {
    const to = spanOf(end);
    if (!to || now > to.to) return false;
  }
  return true;
}
