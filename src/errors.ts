/**
 * One error class per kind, each with a stable `code` callers switch on (never the message) and the
 * HTTP status it maps to. `issues` are OperationOutcome issues safe to show a client; anything else
 * (cause, internal detail) stays server-side. See src/fhir/outcomes.ts for the single mapping.
 */
import type { OperationOutcomeIssue } from '@medplum/fhirtypes';

export type ErrorCode =
  | 'ERR_INVALID' | 'ERR_NOT_FOUND' | 'ERR_GONE' | 'ERR_CONFLICT' | 'ERR_PRECONDITION_FAILED'
  | 'ERR_UNPROCESSABLE' | 'ERR_UNSUPPORTED_MEDIA_TYPE' | 'ERR_TOO_LARGE' | 'ERR_METHOD_NOT_ALLOWED'
  | 'ERR_NOT_ACCEPTABLE' | 'ERR_UNAUTHORIZED' | 'ERR_FORBIDDEN' | 'ERR_TOO_MANY_REQUESTS' | 'ERR_NOT_SUPPORTED'
  | 'ERR_UPSTREAM' | 'ERR_UPSTREAM_TIMEOUT' | 'ERR_UNAVAILABLE' | 'ERR_INTERNAL';

const STATUS: Record<ErrorCode, number> = {
  ERR_INVALID: 400,
  ERR_UNAUTHORIZED: 401,
  ERR_FORBIDDEN: 403,
  ERR_NOT_FOUND: 404,
  ERR_METHOD_NOT_ALLOWED: 405,
  ERR_NOT_ACCEPTABLE: 406,
  ERR_CONFLICT: 409,
  ERR_GONE: 410,
  ERR_PRECONDITION_FAILED: 412,
  ERR_TOO_LARGE: 413,
  ERR_UNSUPPORTED_MEDIA_TYPE: 415,
  ERR_UNPROCESSABLE: 422,
  ERR_TOO_MANY_REQUESTS: 429,
  ERR_INTERNAL: 500,
  ERR_NOT_SUPPORTED: 501,
  ERR_UPSTREAM: 502,
  ERR_UNAVAILABLE: 503,
  ERR_UPSTREAM_TIMEOUT: 504,
};

const ISSUE_CODE: Record<ErrorCode, OperationOutcomeIssue['code']> = {
  ERR_INVALID: 'invalid',
  ERR_UNAUTHORIZED: 'login',
  ERR_FORBIDDEN: 'forbidden',
  ERR_NOT_FOUND: 'not-found',
  ERR_METHOD_NOT_ALLOWED: 'not-supported',
  ERR_NOT_ACCEPTABLE: 'not-supported',
  ERR_CONFLICT: 'conflict',
  ERR_GONE: 'deleted',
  ERR_PRECONDITION_FAILED: 'conflict',
  ERR_TOO_LARGE: 'too-costly',
  ERR_UNSUPPORTED_MEDIA_TYPE: 'not-supported',
  ERR_UNPROCESSABLE: 'processing',
  ERR_TOO_MANY_REQUESTS: 'throttled',
  ERR_INTERNAL: 'exception',
  ERR_NOT_SUPPORTED: 'not-supported',
  ERR_UPSTREAM: 'transient',
  ERR_UNAVAILABLE: 'transient',
  ERR_UPSTREAM_TIMEOUT: 'timeout',
};

/** Base of every error GlucoGuard raises on purpose. */
export class GlucoGuardError extends Error {
  readonly status: number;
  readonly issues: OperationOutcomeIssue[];
  /** Response headers the error's answer carries (Retry-After on a 503 from a throttled upstream). */
  headers?: Record<string, string>;
  constructor(readonly code: ErrorCode, message: string, issues?: OperationOutcomeIssue[], options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'GlucoGuardError';
    this.status = STATUS[code];
    this.issues = issues ?? [{ severity: 'error', code: ISSUE_CODE[code], diagnostics: message }];
  }
}

/** An issue with the right issue code for an error kind. */
export function issue(code: ErrorCode, diagnostics: string, expression?: string): OperationOutcomeIssue {
  return { severity: 'error', code: ISSUE_CODE[code], diagnostics, ...(expression ? { expression: [expression] } : {}) };
}

export const badRequest = (details: string, expression?: string): GlucoGuardError =>
  new GlucoGuardError('ERR_INVALID', details, [issue('ERR_INVALID', details, expression)]);
/** 400 with issue code `too-costly`: the request is well formed, but answering it would cost too much. */
export const tooCostly = (details: string, expression?: string): GlucoGuardError =>
  new GlucoGuardError('ERR_INVALID', details, [{ severity: 'error', code: 'too-costly', diagnostics: details, ...(expression ? { expression: [expression] } : {}) }]);
/**
 * too-costly for a search past its scan limit (SearchOptions.scanLimit): the same words whether the
 * resources examined in vain did not match or were withheld from the requester, so the refusal does
 * not tell the two apart.
 */
export const scanLimitExceeded = (scanLimit: number, type: string, sortedHere?: string): GlucoGuardError =>
  tooCostly(`This search would examine more than ${scanLimit} ${type} resources that do not make up the page: `
    + (sortedHere
      ? `_sort=${sortedHere} has every match read and sorted before a page can be given; sort by date (the index order) or leave _sort out, or narrow it with a shorter date range`
      : 'narrow it with an indexed parameter (patient, date, code, identifier…) or a shorter date range'));
export const notFound = (what = 'Not found'): GlucoGuardError => new GlucoGuardError('ERR_NOT_FOUND', what);
export const gone = (what = 'Deleted'): GlucoGuardError => new GlucoGuardError('ERR_GONE', what);
export const conflict = (details: string): GlucoGuardError => new GlucoGuardError('ERR_CONFLICT', details);
export const preconditionFailed = (details: string): GlucoGuardError => new GlucoGuardError('ERR_PRECONDITION_FAILED', details);
export const unprocessable = (issues: OperationOutcomeIssue[]): GlucoGuardError =>
  new GlucoGuardError('ERR_UNPROCESSABLE', issues.map((i) => i.diagnostics).join('; '), issues);
export const unsupportedMediaType = (details: string): GlucoGuardError => new GlucoGuardError('ERR_UNSUPPORTED_MEDIA_TYPE', details);
export const tooLarge = (details: string): GlucoGuardError => new GlucoGuardError('ERR_TOO_LARGE', details);
/** 405 with the `Allow` header RFC 9110 §15.5.6 requires: the methods the target does support. */
export function methodNotAllowed(details: string, allowed: readonly string[]): GlucoGuardError {
  const err = new GlucoGuardError('ERR_METHOD_NOT_ALLOWED', details);
  err.headers = { Allow: allowed.join(', ') };
  return err;
}
export const notAcceptable = (details: string): GlucoGuardError => new GlucoGuardError('ERR_NOT_ACCEPTABLE', details);
export const notSupported = (details: string): GlucoGuardError => new GlucoGuardError('ERR_NOT_SUPPORTED', details);
export const unauthorized = (details = 'Authentication required'): GlucoGuardError => new GlucoGuardError('ERR_UNAUTHORIZED', details);
export const forbidden = (details = 'Forbidden'): GlucoGuardError => new GlucoGuardError('ERR_FORBIDDEN', details);
export const tooManyRequests = (details = 'Too many requests'): GlucoGuardError => new GlucoGuardError('ERR_TOO_MANY_REQUESTS', details);
export const upstreamError = (details = 'Upstream FHIR server error', cause?: unknown): GlucoGuardError =>
  new GlucoGuardError('ERR_UPSTREAM', details, undefined, { cause });
export const upstreamTimeout = (details = 'Upstream FHIR server timed out', cause?: unknown): GlucoGuardError =>
  new GlucoGuardError('ERR_UPSTREAM_TIMEOUT', details, undefined, { cause });
export const unavailable = (details = 'Service unavailable', cause?: unknown): GlucoGuardError =>
  new GlucoGuardError('ERR_UNAVAILABLE', details, undefined, { cause });

export function isGlucoGuardError(err: unknown, code?: ErrorCode): err is GlucoGuardError {
  return err instanceof GlucoGuardError && (code === undefined || err.code === code);
}

/**
 * An outage that may pass: the upstream failed (502), timed out (504) or was unavailable, or a
 * dependency (KV, chain, consent) could not answer (503). The data may be there; it could not be had now.
 */
export function isPassingOutage(err: unknown): err is GlucoGuardError {
  return isGlucoGuardError(err, 'ERR_UPSTREAM') || isGlucoGuardError(err, 'ERR_UPSTREAM_TIMEOUT') || isGlucoGuardError(err, 'ERR_UNAVAILABLE');
}
