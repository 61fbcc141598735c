/**
 * AuditEvents after IHE Basic Audit Log Patterns (BALP, https://profiles.ihe.net/ITI/BALP/):
 * RESTful Read / Query / Create / Update / Delete, patient variants (one entity per patient whose
 * data was touched), with who (the requester and its client), what (the resource or query), when,
 * the outcome (0 success, 4 denied or not found, 8 server failure), the purpose of use and the
 * consent grants that allowed it. No health data: the query is kept, resources are only referenced.
 */
import type { AuditEvent, AuditEventAgent, AuditEventEntity, Coding } from '@medplum/fhirtypes';
import { GRANT_ID_SYSTEM, PURPOSE_SYSTEM } from '../consent/terms.js';

export const BALP_PROFILES = {
  read: 'https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientRead',
  query: 'https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientQuery',
  create: 'https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientCreate',
  update: 'https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientUpdate',
  delete: 'https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientDelete',
} as const;

export type BalpInteraction = 'read' | 'vread' | 'search-type' | 'history-instance' | 'history-type' | 'history-system'
  | 'create' | 'update' | 'delete' | 'operation' | 'batch';

export interface AccessRecord {
  interaction: BalpInteraction;
  /** When the access happened (ISO instant). */
  recorded: string;
  /** 0 success, 4 minor failure (denied, not found, bad request), 8 serious failure. */
  outcome: '0' | '4' | '8';
  /** Why (reasons of a denial, or "permitted"); never resource content. */
  outcomeDesc?: string;
  requester: { reference?: string; clientId?: string; kind: string };
  purpose?: string;
  /** `Type/id` of the resource read/written, when one. */
  target?: string;
  /** The query string of a search or operation. */
  query?: string;
  patients: string[];
  grants: string[];
  requestId?: string;
}

const SUBTYPE_SYSTEM = 'http://hl7.org/fhir/restful-interaction';
const ACTION: Record<BalpInteraction, AuditEvent['action']> = {
  read: 'R', vread: 'R', 'search-type': 'E', 'history-instance': 'R', 'history-type': 'R', 'history-system': 'R',
  create: 'C', update: 'U', delete: 'D', operation: 'E', batch: 'E',
};

function profileOf(i: BalpInteraction): string {
  if (i === 'create') return BALP_PROFILES.create;
  if (i === 'update') return BALP_PROFILES.update;
  if (i === 'delete') return BALP_PROFILES.delete;
  if (i === 'search-type' || i === 'operation' || i === 'batch') return BALP_PROFILES.query;
  return BALP_PROFILES.read;
}

/** AuditEvent.source.type of every event GlucoGuard records: an application server. */
const APPLICATION_SERVER = { system: 'http://terminology.hl7.org/CodeSystem/security-source-type', code: '4', display: 'Application Server' };

/** AuditEvent.source of the events GlucoGuard records about its own actions (erasure, a failed integrity check, a key rotation). */
export function glucoguardSource(): AuditEvent['source'] {
  return { observer: { display: 'GlucoGuard' }, type: [{ ...APPLICATION_SERVER }] };
}

/** Builds the AuditEvent of one access. */
export function auditEventOf(rec: AccessRecord): AuditEvent {
  const purpose: Coding[] = rec.purpose ? [{ system: PURPOSE_SYSTEM, code: rec.purpose }] : [];
  const agents: AuditEventAgent[] = [{
    type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType', code: 'IRCP', display: 'information recipient' }] },
    who: rec.requester.reference ? { reference: rec.requester.reference }
      : { display: rec.requester.kind === 'open' ? 'in-process or unauthenticated access (GLUCOGUARD_AUTH=off)' : rec.requester.kind === 'unauthenticated' ? 'no valid access token' : 'unidentified requester' },
    requestor: true,
    ...(purpose.length ? { purposeOfUse: [{ coding: purpose }] } : {}),
  }];
  if (rec.requester.clientId) {
    agents.push({
      type: { coding: [{ system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110150', display: 'Application' }] },
      who: { identifier: { system: 'urn:glucoguard:client', value: rec.requester.clientId } },
      requestor: false,
    });
  }
  const entity: AuditEventEntity[] = rec.patients.map((p) => ({
    what: { reference: `Patient/${p}` },
    type: { system: 'http://terminology.hl7.org/CodeSystem/audit-entity-type', code: '1', display: 'Person' },
    role: { system: 'http://terminology.hl7.org/CodeSystem/object-role', code: '1', display: 'Patient' },
  }));
  if (rec.target) {
    entity.push({ what: { reference: rec.target }, type: { system: 'http://terminology.hl7.org/CodeSystem/audit-entity-type', code: '2', display: 'System Object' }, role: { system: 'http://terminology.hl7.org/CodeSystem/object-role', code: '4', display: 'Domain Resource' } });
  }
  if (rec.query !== undefined) {
    entity.push({
      type: { system: 'http://terminology.hl7.org/CodeSystem/audit-entity-type', code: '2', display: 'System Object' },
      role: { system: 'http://terminology.hl7.org/CodeSystem/object-role', code: '24', display: 'Query' },
      query: Buffer.from(rec.query, 'utf8').toString('base64'),
    });
  }
  for (const grant of rec.grants) {
    entity.push({
      what: { identifier: { system: GRANT_ID_SYSTEM, value: grant } },
      type: { system: 'http://terminology.hl7.org/CodeSystem/audit-entity-type', code: '2', display: 'System Object' },
      description: 'consent grant that permitted the access',
    });
  }
  return {
    resourceType: 'AuditEvent',
    meta: { profile: [profileOf(rec.interaction)] },
    type: { system: 'http://terminology.hl7.org/CodeSystem/audit-event-type', code: 'rest', display: 'Restful Operation' },
    subtype: [{ system: SUBTYPE_SYSTEM, code: rec.interaction }],
    action: ACTION[rec.interaction],
    recorded: rec.recorded,
    outcome: rec.outcome,
    ...(rec.outcomeDesc ? { outcomeDesc: rec.outcomeDesc } : {}),
    ...(purpose.length ? { purposeOfEvent: [{ coding: purpose }] } : {}),
    agent: agents,
    source: {
      observer: { display: 'GlucoGuard FHIR proxy' },
      type: [{ ...APPLICATION_SERVER }],
      ...(rec.requestId ? { site: rec.requestId } : {}),
    },
    // none for an access that named nothing (a request refused before its target was known): FHIR JSON has no empty lists
    ...(entity.length ? { entity } : {}),
  };
}
