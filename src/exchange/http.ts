/**
 * `GET /exports/<job>/<file>`: the NDJSON files of a completed bulk export
 * (https://hl7.org/fhir/uv/bulkdata/export.html#file-request). The manifest says
 * `requiresAccessToken: true`: the same bearer token check as /fhir, and the file is served only
 * to the requester who started the job — anyone else gets the same 404 as for a missing file —
 * while the token's scopes cover it (403) and consent behind its data is in force (410 once it is
 * not: ExportService.download decides, and records the download in the access log).
 */
import express, { type Request, type Response, type Router } from 'express';
import { isGlucoGuardError, notFound } from '../errors.js';
import type { AccessContext } from '../fhir/access.js';
import { errorToResponse } from '../fhir/outcomes.js';
import type { Logger } from '../log.js';
import type { ExportService } from './export.js';

const JOB = /^[0-9a-f-]{36}$/;
const FILE = /^[A-Za-z]{1,64}\.ndjson$/;

export interface ExportHttpOptions {
  exports: ExportService;
  authenticate: (headers: Record<string, string | undefined>, requestUrl: string) => Promise<AccessContext>;
  logger: Logger;
}

/** Express router to mount at `/exports`. */
export function exportFilesRouter(options: ExportHttpOptions): Router {
  const r = express.Router();
  r.get('/:job/:file', async (req: Request, res: Response) => {
    try {
      const headers: Record<string, string | undefined> = {};
      for (const [k, v] of Object.entries(req.headers)) headers[k.toLowerCase()] = Array.isArray(v) ? v.join(', ') : v;
      const access = await options.authenticate(headers, req.originalUrl);
      const job = String(req.params.job);
      const file = String(req.params.file);
      if (!JOB.test(job) || !FILE.test(file)) throw notFound('No such export file');
      const requestId = typeof res.locals.reqId === 'string' ? res.locals.reqId : undefined;
      await options.exports.download(access, job, file, requestId);
      res.status(200).setHeader('Content-Type', 'application/fhir+ndjson');
      res.setHeader('Cache-Control', 'no-store');
      // decrypted as it goes out: a file found altered or cut short, or whose consent ends while it
      // goes out, ends the answer unfinished (no closing chunk), which the client sees as a failed download
      const stream = options.exports.serveFile(job, file);
      stream.on('error', (err) => {
        if (isGlucoGuardError(err) && err.status === 410) options.logger.info({ job }, 'export: a download was cut off, consent behind its data has ended');
        else options.logger.error({ err: err.message, job }, 'export: could not serve a file');
        res.destroy();
      });
      stream.pipe(res);
    } catch (err) {
      const response = errorToResponse(err, options.logger);
      const challenge = (err as { wwwAuthenticate?: string }).wwwAuthenticate;
      if (challenge) res.setHeader('WWW-Authenticate', challenge);
      res.status(response.status).type('application/fhir+json').send(JSON.stringify(response.body));
    }
  });
  return r;
}
