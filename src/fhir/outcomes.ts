/**
 * OperationOutcomes from constants and small factories, and the one mapping from an error to a
 * FHIR response. Internal errors answer "internal error" and are logged server-side only.
 */
import type { OperationOutcome, OperationOutcomeIssue } from '@medplum/fhirtypes';
import { GlucoGuardError } from '../errors.js';
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
    return { status: err.status, body: operationOutcome(err.issues) };
  }
  logger?.error({ err }, 'internal error');
  return {
    status: 500,
    body: operationOutcome([{ severity: 'error', code: 'exception', diagnostics: 'Internal error' }]),
  };
}

function describeCause(cause: unknown): string | undefined {
  if (cause === undefined) return undefined;
  return cause instanceof Error ? `${cause.name}: ${cause.message}` : String(cause);
}
