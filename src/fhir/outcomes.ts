/**
 * OperationOutcomes from constants and small factories, and the one mapping from an error to a
 * FHIR response. Internal errors answer "internal error" and are logged server-side only.
 */
import type { OperationOutcome, OperationOutcomeIssue } from '@medplum/fhirtypes';
import { GlucoGuardError, unavailable } from '../errors.js';
import type { Logger } from '../log.js';
import type { FhirResponse } from './types.js';

export function operationOutcome(issues: OperationOutcomeIssue[]): OperationOutcome {
  return { resourceType: 'OperationOutcome', issue: issues };
}

/** An informational outcome (`Prefer: return=OperationOutcome`, deletes). */
export function informational(diagnostics: string): OperationOutcome {
  return operationOutcome([{ severity: 'information', code: 'informational', diagnostics }]);
}

/** Turns any thrown value into a FhirResponse; unexpected errors become an opaque 500. */
export function errorToResponse(err: unknown, logger?: Logger): FhirResponse {
  if (err instanceof GlucoGuardError) {
    if (err.status >= 500) logger?.warn({ code: err.code, cause: describeCause(err.cause) }, 'request failed');
    return { status: err.status, body: operationOutcome(err.issues), ...(err.headers ? { headers: err.headers } : {}) };
  }
  if (isStorageFull(err)) {
    // A full data disk is an operator's problem with a known fix, not a bug: say so (503, retry later).
    logger?.error({ err }, 'storage full: the data directory has no space left');
    return errorToResponse(unavailable('The server has no storage space left; try again later'));
  }
  if (isStoreBusy(err)) {
    // Another process on the data directory held the store's write lock past the wait (a long
    // import or rotation beside a server): the write did not happen, and may well succeed again.
    logger?.warn({ code: 'SQLITE_BUSY' }, 'store busy: another process held its write lock past the wait');
    const busy = unavailable('The data store is busy with another process\'s write; try again shortly');
    busy.headers = { 'Retry-After': '1' };
    return errorToResponse(busy);
  }
  logger?.error({ err }, 'internal error');
  return {
    status: 500,
    body: operationOutcome([{ severity: 'error', code: 'exception', diagnostics: 'Internal error' }]),
  };
}

/** SQLite's SQLITE_FULL or the file system's ENOSPC, directly or as the cause. */
export function isStorageFull(err: unknown): boolean {
  for (let e = err, depth = 0; e && depth < 4; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (code === 'SQLITE_FULL' || code === 'ENOSPC') return true;
  }
  return false;
}

/** SQLite's SQLITE_BUSY (and its extended codes): the write lock was not had within the busy wait. */
export function isStoreBusy(err: unknown): boolean {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' && code.startsWith('SQLITE_BUSY');
}

function describeCause(cause: unknown): string | undefined {
  if (cause === undefined) return undefined;
  return cause instanceof Error ? `${cause.name}: ${cause.message}` : String(cause);
}
