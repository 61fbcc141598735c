/**
 * The access log: one BALP AuditEvent per FHIR request that reached the facade, permitted or
 * denied, stored through the repository like any resource (so it is anchored and tamper-evident
 * with the rest). Recording happens after the response is built and never delays or fails it; a
 * failed write is logged server-side. `flush()` waits for pending writes (tests, shutdown).
 */
import type { AuditEvent } from '@medplum/fhirtypes';
import { patientIdOfReference } from '../fhir/compartment.js';
import type { FhirRequest, FhirResponse } from '../fhir/types.js';
import type { Logger } from '../log.js';
import type { Repository } from '../repository/port.js';
import { consentNotes } from '../consent/policy.js';
import { requesterOf, type ConsentAccessContext } from '../consent/requester.js';
import { auditEventOf, type BalpInteraction } from './balp.js';

export class AuditRecorder {
  private readonly pending = new Set<Promise<unknown>>();

  constructor(private readonly options: { repository: Repository; logger?: Logger; now?: () => number }) {}

  /** Records one request (the FhirRouter's `onResponse`). */
  record(request: FhirRequest, response: FhirResponse): void {
    const event = this.eventOf(request, response);
    if (!event) return;
    const write = this.options.repository.create(event).catch((err: unknown) => {
      this.options.logger?.error({ err: (err as Error).message }, 'audit: could not store an AuditEvent');
    });
    this.pending.add(write);
    void write.finally(() => this.pending.delete(write));
  }

  async flush(): Promise<void> {
    while (this.pending.size) await Promise.all([...this.pending]);
  }

  eventOf(request: FhirRequest, response: FhirResponse): AuditEvent | undefined {
    const parts = request.path.split('/').filter(Boolean);
    if (parts[0] === 'metadata') return undefined;
    const interaction = interactionOf(request.method, parts);
    const access = request.access as ConsentAccessContext;
    const requester = requesterOf(access);
    const notes = consentNotes(access);
    const patients = new Set(notes?.patients ?? []);
    if (parts[0] === 'Patient' && parts[1] && !parts[1].startsWith('$')) patients.add(parts[1]);
    for (const key of ['patient', 'subject']) {
      for (const v of [request.query[key] ?? []].flat()) {
        for (const one of v.split(',')) {
          const id = patientIdOfReference(one) ?? (key === 'patient' && /^[A-Za-z0-9\-.]{1,64}$/.test(one) ? one : undefined);
          if (id) patients.add(id);
        }
      }
    }
    const status = response.status;
    const desc = status >= 400
      ? `HTTP ${status}${notes?.reasons.size ? `; ${[...notes.reasons].slice(0, 5).join('; ')}` : ''}`
      : notes && notes.denied > 0 ? `${notes.denied} entr${notes.denied === 1 ? 'y' : 'ies'} withheld by consent` : undefined;
    const query = Object.entries(request.query).flatMap(([k, v]) => [v].flat().map((x) => `${k}=${x}`)).join('&');
    const target = parts.length >= 2 && !parts[1]!.startsWith('$') && !parts[1]!.startsWith('_') ? `${parts[0]}/${parts[1]}` : undefined;
    return auditEventOf({
      interaction,
      recorded: new Date((this.options.now ?? Date.now)()).toISOString(),
      outcome: status >= 500 ? '8' : status >= 400 ? '4' : '0',
      ...(desc ? { outcomeDesc: desc } : {}),
      requester: { kind: requester.kind, reference: access.fhirUser, clientId: access.clientId },
      purpose: requester.purpose,
      ...(target ? { target } : {}),
      ...(interaction === 'search-type' || interaction === 'operation' ? { query: `${request.path}?${query}` } : {}),
      patients: [...patients],
      grants: [...(notes?.grants ?? [])],
      requestId: request.headers['x-request-id'],
    });
  }
}

function interactionOf(method: string, parts: string[]): BalpInteraction {
  if (parts.length === 0) return 'batch';
  if (parts.some((p) => p.startsWith('$'))) return 'operation';
  if (parts[1] === '_search') return 'search-type';
  if (parts.includes('_history')) {
    if (parts.length === 4) return 'vread';
    return parts.length === 1 ? 'history-system' : parts.length === 2 ? 'history-type' : 'history-instance';
  }
  if (method === 'POST') return 'create';
  if (method === 'PUT') return 'update';
  if (method === 'DELETE') return 'delete';
  return parts.length === 1 ? 'search-type' : 'read';
}
