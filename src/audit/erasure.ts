/**
 * The AuditEvent of an erasure (GDPR Art. 17, `glucoguard patients erase`): who erased which
 * Patient, when, and how much became unreadable. Counts only, no health data. Written after the
 * erasure, so it is stored under the shared key (the repository's rule for an AuditEvent about a
 * patient whose key is erased) and anchored; its commitment keeps its salt through any later
 * erasure of the same id, so it stays readable and proven (AnchoredRepository.forgetUnreadableSalts).
 */
import type { AuditEvent } from '@medplum/fhirtypes';
import { glucoguardSource } from './balp.js';

export interface ErasureRecord {
  patientId: string;
  /** Who ran it (the CLI names the operating-system user). */
  operator: string;
  /** Current resources made unreadable, and commitments whose salts were overwritten. */
  resources: number;
  commitments: number;
  /** ISO instant. */
  recorded: string;
  /** A repeat that finished an erasure stopped after its key was destroyed (its count of resources is then unknown, 0). */
  finished?: boolean;
}

export function erasureAuditEvent(rec: ErasureRecord): AuditEvent {
  return {
    resourceType: 'AuditEvent',
    type: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110110', display: 'Patient Record' },
    subtype: [{ system: 'http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle', code: 'destroy', display: 'Destroy/Delete' }],
    action: 'D',
    recorded: rec.recorded,
    outcome: '0',
    outcomeDesc: rec.finished
      ? `erasure finished: the data key had been destroyed by an erasure that stopped; salts of ${rec.commitments} commitments overwritten`
      : `erasure: data key destroyed, ${rec.resources} current resources unreadable; salts of ${rec.commitments} commitments overwritten`,
    agent: [{ who: { display: rec.operator }, requestor: true }],
    source: glucoguardSource(),
    entity: [{
      what: { reference: `Patient/${rec.patientId}` },
      type: { system: 'http://terminology.hl7.org/CodeSystem/audit-entity-type', code: '1', display: 'Person' },
      role: { system: 'http://terminology.hl7.org/CodeSystem/object-role', code: '1', display: 'Patient' },
    }],
  };
}
