/**
 * The seam where authorization plugs into the facade. The router asks the policy before it touches
 * the repository and passes every outbound resource through the guards. The default policy (auth
 * off, in-process tools) allows everything; SMART scopes, consent and integrity supply their own.
 */
import type { SearchRequest } from '@medplum/core';
import type { OperationOutcomeIssue, Resource } from '@medplum/fhirtypes';
import { isServerWritten, refuseClientWrite, serverWrittenRefusal } from '../audit/server-written.js';
import type { AccessContext } from './access.js';

/**
 * What a request does, as the policy is asked about it. `history` is the history of one instance;
 * `history-type` the history of a whole type or of the system (`Type/_history`, `_history`), which
 * lists resources like a search does (SMART App Launch 2.2 puts it under the `s` permission).
 */
export type Interaction = 'read' | 'vread' | 'search' | 'history' | 'history-type' | 'create' | 'update' | 'delete' | 'operation';

export interface AccessPolicy {
  /**
   * Type-level check before anything is read or written: throws `forbidden()` (403) when the
   * requester may never perform this interaction on this type.
   */
  authorize(access: AccessContext, interaction: Interaction, resourceType: string): void | Promise<void>;
  /** Narrows a search before it reaches the repository (e.g. to the launch patient or a granted data period). */
  narrowSearch(access: AccessContext, request: SearchRequest): SearchRequest | Promise<SearchRequest>;
  /**
   * May this resource be created, updated or deleted by the requester? false → 403, nothing written.
   * `resource` is what is written (the new version; for a delete, the current one); `replaced`, for
   * an update, the current version it replaces (undefined when there is none, or for open access).
   */
  mayWrite(access: AccessContext, resource: Resource, interaction: 'create' | 'update' | 'delete', replaced?: Resource): boolean | Promise<boolean>;
  /**
   * The patients whose data the requester could see at all, when limited to some (their own, those
   * who granted them access): type and system history is confined to them before the repository.
   * undefined: not limited by this policy.
   */
  visiblePatients?(access: AccessContext): Promise<string[] | undefined> | string[] | undefined;
  /**
   * What the requester should be told about how it asked, whatever the data (a grantee that stated
   * no purpose of use sees no patient data: an empty answer should not look like "nothing there").
   * Added to searchsets and history as an outcome entry and to a 404's OperationOutcome.
   */
  notices?(access: AccessContext): OperationOutcomeIssue[];
}

/** Decides, per outbound resource, whether it may leave; may add issues for the client (integrity failures). */
export interface OutboundGuard {
  guard(access: AccessContext, resources: Resource[], options?: GuardOptions): Promise<GuardResult>;
}

export interface GuardOptions {
  /**
   * The resources are read once, in bulk (a Bulk export): decide and check them as always, but keep
   * nothing about them in per-version caches (verified commitments, consent facts), which would
   * otherwise fill with a whole export and hold it in memory for nothing.
   */
  oneOff?: boolean;
}

export interface GuardResult {
  allowed: Resource[];
  issues: OperationOutcomeIssue[];
}

/**
 * Allows everything a requester may do at all: used with GLUCOGUARD_AUTH=off and by in-process
 * tools. Not writes of the access log (AuditEvent), which no requester makes through the facade
 * (src/audit/server-written.ts); the server's own events go through the repository.
 */
export const OPEN_POLICY: AccessPolicy = {
  authorize: (_access, interaction, resourceType) => refuseClientWrite(interaction, resourceType),
  narrowSearch: (_access, request) => request,
  mayWrite: (_access, resource, interaction) => {
    if (isServerWritten(resource.resourceType)) throw serverWrittenRefusal(resource.resourceType, interaction);
    return true;
  },
};
