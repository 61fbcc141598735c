/**
 * The last handlers of the app: a JSON 404 for paths no router claimed, and the one error handler
 * for errors that escaped a router (body-parser's 413 on an oversized form, a malformed JSON body,
 * anything unexpected). Without it express answers an HTML page with the stack trace outside
 * production. FHIR paths answer an OperationOutcome, OAuth paths RFC 6749 §5.2 JSON, the rest a
 * small JSON error. A 5xx says "internal error"; the detail is logged server-side only.
 */
import type { NextFunction, Request, Response } from 'express';
import { GlucoGuardError, issue, type ErrorCode } from '../errors.js';
import type { Logger } from '../log.js';

const CLIENT_ERRORS: Record<number, ErrorCode> = {
  400: 'ERR_INVALID', 404: 'ERR_NOT_FOUND', 405: 'ERR_METHOD_NOT_ALLOWED', 413: 'ERR_TOO_LARGE', 415: 'ERR_UNSUPPORTED_MEDIA_TYPE',
};

/** Express 404 handler: mount after every router. */
export function notFoundHandler() {
  return (req: Request, res: Response): void => {
    send(req, res, 404, 'Not found');
  };
}

/**
 * For a path whose routes are mounted before it: any other method answers 405 with the `Allow`
 * header RFC 9110 §15.5.6 requires, in the path's error dialect. HEAD is allowed wherever GET is.
 */
export function onlyMethods(methods: readonly string[]) {
  const allow = methods.flatMap((m) => (m === 'GET' ? ['GET', 'HEAD'] : [m]));
  return (req: Request, res: Response): void => {
    res.set('Allow', allow.join(', '));
    send(req, res, 405, `${req.method} is not allowed here (allowed: ${allow.join(', ')})`);
  };
}

/** Express error handler: mount last. */
export function finalErrorHandler(logger: Logger) {
  // Express recognises error handlers by their four parameters.
  return (err: unknown, req: Request, res: Response, _next: NextFunction): void => {
    const e = err as { status?: unknown; statusCode?: unknown; type?: unknown; expose?: unknown };
    const raw = typeof e.status === 'number' ? e.status : typeof e.statusCode === 'number' ? e.statusCode : 500;
    const status = err instanceof GlucoGuardError ? err.status : raw >= 400 && raw < 500 ? raw : 500;
    if (status >= 500) logger.error({ err, reqId: res.locals.reqId }, 'unhandled error');
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const message = status >= 500 ? 'Internal error'
      : err instanceof GlucoGuardError ? err.message
      : status === 413 ? 'Request body too large'
      : status === 404 ? 'Not found'
      : status === 400 && e.type === 'entity.parse.failed' ? 'Malformed request body'
      : status === 415 ? 'Unsupported charset or content encoding'
      : 'Bad request';
    send(req, res, status, message);
  };
}

function send(req: Request, res: Response, status: number, message: string): void {
  res.status(status).set('Cache-Control', 'no-store');
  if (req.path === '/fhir' || req.path.startsWith('/fhir/')) {
    const code = CLIENT_ERRORS[status] ?? (status >= 500 ? 'ERR_INTERNAL' : 'ERR_INVALID');
    res.type('application/fhir+json').send(JSON.stringify({ resourceType: 'OperationOutcome', issue: [issue(code, message)] }));
    return;
  }
  if (req.path.startsWith('/oauth/')) {
    // RFC 6749 §5.2: an endpoint's errors are 400 unless specified otherwise; a body too large keeps
    // its 413, a path that is no endpoint its 404 and a method it does not take its 405 (a client
    // must not read those as a refused request).
    if (status < 500 && status !== 413 && status !== 404 && status !== 405) res.status(400);
    res.json({ error: status >= 500 ? 'server_error' : 'invalid_request', error_description: message });
    return;
  }
  res.json({ error: message });
}
