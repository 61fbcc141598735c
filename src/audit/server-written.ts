/**
 * The access log is written by the server alone. FHIR R4 AuditEvent (auditevent.html, Scope and
 * Usage): servers "would not generally accept update or delete operations on the resources, as
 * this would compromise the integrity of the audit record"; and an event a client posts is not a
 * record of anything the server saw — a copy of a genuine event with another agent and a backdated
 * `recorded` would read in a patient's log exactly like a real access. So no FHIR write of an
 * AuditEvent is taken from anyone, whatever their token (or none, with GLUCOGUARD_AUTH=off): the
 * recorder (recorder.ts), the erasure record (erasure.ts), the integrity and key-rotation security
 * alerts write through the Repository port, never through the facade.
 *
 * The refusal is 405 Method Not Allowed, not 403: it is a rule of the resource type, the same for
 * every requester (no scope, consent or other credentials would change it), which is what FHIR's
 * RESTful API gives 405 for ("If the server refuses to delete resources of that type as a blanket
 * policy, then it should return the 405 Method Not Allowed status code", http.html#delete), and the
 * CapabilityStatement lists only read, vread, history and search for the type. 403 would tell the
 * client that someone else could. The answer carries `Allow: GET, HEAD` (RFC 9110 §15.5.6).
 */
import { methodNotAllowed, type GlucoGuardError } from '../errors.js';

/** Resource types only the server writes: every create, update, patch and delete through the facade is refused. */
export const SERVER_WRITTEN_TYPES: readonly string[] = ['AuditEvent'];

/** The interactions of a server-written type the facade serves (for the CapabilityStatement). */
export const SERVER_WRITTEN_INTERACTIONS = ['read', 'vread', 'history-instance', 'history-type', 'search-type'] as const;

export function isServerWritten(resourceType: string): boolean {
  return SERVER_WRITTEN_TYPES.includes(resourceType);
}

/** The 405 a FHIR write of a server-written type answers (OperationOutcome `not-supported`, `Allow: GET, HEAD`). */
export function serverWrittenRefusal(resourceType: string, interaction: 'create' | 'update' | 'delete'): GlucoGuardError {
  return methodNotAllowed(`${resourceType} resources are written by the server only (the access log); `
    + `${interaction} through the FHIR API is not supported for anyone`, ['GET', 'HEAD']);
}

/** Throws the refusal when `interaction` writes a server-written type; a no-op otherwise. */
export function refuseClientWrite(interaction: string, resourceType: string): void {
  if ((interaction === 'create' || interaction === 'update' || interaction === 'delete') && isServerWritten(resourceType)) {
    throw serverWrittenRefusal(resourceType, interaction);
  }
}
