/**
 * Per-request observability for every route: a request id (a client's `X-Request-Id` when it is a
 * plain token, else a new UUID, echoed in the response), one structured log line when the response
 * ends, and the latency histogram. The log line carries method, route template, status, duration
 * and request id only: never the URL, its query string, headers or bodies, which may hold tokens or
 * health data.
 */
import { randomUUID } from 'node:crypto';
import type { NextFunction, Request, Response } from 'express';
import type { Logger } from '../log.js';
import { metrics } from './metrics.js';
import { routeLabel } from './routes.js';

const REQUEST_ID = /^[A-Za-z0-9._-]{1,64}$/;
const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);
/** nginx's "client closed request": the client went away before the response was sent. */
const CLIENT_CLOSED = 499;

export interface RequestObservabilityOptions {
  logger: Logger;
  /** Names of registered FHIR operations (without `$`), so `$cgm-summary` shows in route labels. */
  isFhirOperation?: (name: string) => boolean;
}

/** Express middleware; mount first so every route, including errors and 404s, is counted. */
export function requestObservability(options: RequestObservabilityOptions) {
  return (req: Request, res: Response, next: NextFunction): void => {
    const started = process.hrtime.bigint();
    const incoming = req.headers['x-request-id'];
    const reqId = typeof incoming === 'string' && REQUEST_ID.test(incoming) ? incoming : randomUUID();
    res.locals.reqId = reqId;
    res.setHeader('X-Request-Id', reqId);
    // The path is read now: routers rewrite req.url while they run.
    const path = req.path;
    res.once('close', () => {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      const status = res.writableFinished ? res.statusCode : CLIENT_CLOSED;
      const method = METHODS.has(req.method) ? req.method : 'OTHER';
      const route = routeLabel({ path, baseUrl: req.baseUrl, routePath: req.route?.path }, options.isFhirOperation);
      metrics.httpRequestDuration.observe({ method, route, status: String(status) }, seconds);
      const line = { reqId, method, route, status, ms: Math.round(seconds * 1e6) / 1e3 };
      if (status >= 500) options.logger.warn(line, 'request');
      else options.logger.info(line, 'request');
    });
    next();
  };
}
