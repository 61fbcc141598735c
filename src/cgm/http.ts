/**
 * `POST /cgm/ingest?patient=ID[&format=F&tz=ZONE&dateOrder=DMY|MDY&partial=true&remove=true&dryRun=true]`: a raw device/platform export as the
 * body (any media type but a multipart/form-data upload, uncompressed), streamed into the ingest service (large uploads
 * via an encrypted spool, spool.ts); the import report as JSON. Errors are
 * OperationOutcomes (400 bad input or options, 401/403, 404 unknown patient, 413 too large (with
 * `partial=true`, saying how many readings were stored before the limit), 422 a
 * file with rejected records — nothing stored; 415 a form upload or a Content-Encoding). With `partial=true` the good records are stored as
 * they come and the report lists the rejected ones, including a file cut short or malformed part way
 * (reason `unreadable-input`: what came before it is kept, the rest was not read; 200, never a 400
 * over stored data). With `remove=true` the file's readings that are stored with its content are
 * deleted instead (an import undone: IngestOptions.remove). With `dryRun=true` nothing is written:
 * the report (`dryRun: true`) says what the import or removal would do — or the 422 that it would be
 * rejected. Authentication as on /fhir: a token with write access to the patient's Observations
 * (create and update; delete for a removal), or the patient themself.
 *
 * Once the server is stopping (`CgmIngestService.stop`, called by the shutdown in src/server.ts), an
 * import in progress ends at the next chunk boundary, and a new one, or one whose upload is still
 * arriving, at once: 503 with Retry-After and `Connection: close`, saying how many readings of the
 * file were stored and that sending it again stores the rest.
 */
import express, { type Request, type Response, type Router } from 'express';
import type { Resource } from '@medplum/fhirtypes';
import { badRequest, forbidden, tooLarge, unsupportedMediaType } from '../errors.js';
import type { AccessContext } from '../fhir/access.js';
import { errorToResponse } from '../fhir/outcomes.js';
import type { FhirResponse } from '../fhir/types.js';
import type { Logger } from '../log.js';
import { rejectionError } from './parse.js';
import type { CgmIngestService, IngestReport } from './service.js';
import { spool } from './spool.js';
import { CGM_FORMATS, type CgmFormat } from './types.js';

/** Default largest export accepted (bytes). */
export const DEFAULT_MAX_INGEST_BYTES = 512 * 1024 * 1024;

export interface CgmHttpOptions {
  service: CgmIngestService;
  authenticate: (headers: Record<string, string | undefined>, requestUrl: string) => Promise<AccessContext>;
  /**
   * Whether the requester may write this patient's Observations — create and correct them, or with
   * `remove` delete them: the decision the FHIR API makes for such writes (src/fhir/policy.ts
   * AccessPolicy: SMART scopes, then consent).
   */
  mayWriteObservations: (access: AccessContext, patient: string, remove: boolean) => Promise<boolean>;
  /**
   * Records the import in the patient's access log: a create of their readings by the requester, a
   * delete for a removal, a search of them for a dry run (it says which are stored); refused or
   * done; not for a request that could not be authenticated or named no valid patient.
   */
  record?: (access: AccessContext, patient: string, status: number, as: 'create' | 'delete' | 'search') => void;
  maxBytes?: number;
  logger: Logger;
}

const FHIR_ID = /^[A-Za-z0-9\-.]{1,64}$/;

/** Express router to mount at `/cgm`. */
export function cgmHttpRouter(options: CgmHttpOptions): Router {
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_INGEST_BYTES;
  const r = express.Router();
  r.post('/ingest', async (req: Request, res: Response) => {
    const started = process.hrtime.bigint();
    let response: FhirResponse;
    let recordFor: { access: AccessContext; patient: string; as: 'create' | 'delete' | 'search' } | undefined;
    try {
      options.service.throwIfStopped(); // before reading anything of the upload
      const headers: Record<string, string | undefined> = {};
      for (const [k, v] of Object.entries(req.headers)) headers[k.toLowerCase()] = Array.isArray(v) ? v.join(', ') : v;
      const access = await options.authenticate(headers, req.originalUrl);
      const query = req.query as Record<string, string | string[] | undefined>;
      // a parameter this endpoint does not take would be ignored without a word: a misspelt tz
      // stores every reading at the default zone's instants
      const unknown = Object.keys(query).find((k) => !INGEST_PARAMS.includes(k));
      if (unknown !== undefined) throw badRequest(`${unknown.slice(0, 64)} is not a parameter of /cgm/ingest (it takes ${INGEST_PARAMS.join(', ')}; tz is the IANA time zone of local timestamps)`, unknown.slice(0, 64));
      const patient = one(query, 'patient');
      if (!patient || !FHIR_ID.test(patient)) throw badRequest('patient must be the id of a Patient', 'patient');
      const remove = flag(query, 'remove');
      const dryRun = flag(query, 'dryRun');
      recordFor = { access, patient, as: dryRun ? 'search' : remove ? 'delete' : 'create' };
      if (!(await options.mayWriteObservations(access, patient, remove))) {
        throw forbidden(`The access token does not allow ${remove ? 'deleting' : 'writing'} this patient's Observations`);
      }
      const format = one(query, 'format');
      if (format !== undefined && !CGM_FORMATS.includes(format as CgmFormat)) throw badRequest(`format must be one of ${CGM_FORMATS.join(', ')}`, 'format');
      const partial = flag(query, 'partial');
      const dateOrder = one(query, 'dateOrder');
      if (dateOrder !== undefined && dateOrder !== 'DMY' && dateOrder !== 'MDY') throw badRequest('dateOrder must be DMY or MDY (the day/month order of LibreView timestamps)', 'dateOrder');
      // The body is read as the export itself: a form upload or a compressed body would be read as one.
      if (/^multipart\/form-data\b/i.test(req.headers['content-type'] ?? '')) {
        throw unsupportedMediaType('a multipart/form-data upload is not read: send the export itself as the request body (e.g. curl --data-binary @export.csv)');
      }
      const encoding = (req.headers['content-encoding'] ?? 'identity').trim().toLowerCase();
      if (encoding !== 'identity') throw unsupportedMediaType(`Content-Encoding ${encoding.slice(0, 20)} is not read: send the export uncompressed`);
      const declared = Number(req.headers['content-length'] ?? NaN);
      if (declared > maxBytes) throw tooLarge(`Export larger than ${maxBytes} bytes`);
      const ingestOptions = {
        patient,
        partial, remove, dryRun,
        ...(format ? { format: format as CgmFormat } : {}),
        ...(one(query, 'tz') ? { timeZone: one(query, 'tz') } : {}),
        ...(dateOrder ? { dateOrder: dateOrder as 'DMY' | 'MDY' } : {}),
      };
      // All-or-nothing needs the whole file checked before storing: a large (or unsized) upload is
      // parked encrypted on disk and read twice; a small one, or a partial import, streams through.
      let report: IngestReport;
      if (!ingestOptions.partial && !(declared <= options.service.holdBytes)) {
        const parked = await spool(limited(req, maxBytes, options.service));
        try {
          report = await options.service.ingest(parked, ingestOptions);
        } finally {
          await parked.release();
        }
      } else {
        report = await options.service.ingest(limited(req, maxBytes, options.service), ingestOptions);
      }
      response = report.accepted ? { status: 200, body: report as unknown as Record<string, unknown> } : errorToResponse(rejectionError(report));
    } catch (err) {
      response = errorToResponse(err, options.logger);
      const challenge = (err as { wwwAuthenticate?: string }).wwwAuthenticate;
      if (challenge) response.headers = { ...response.headers, 'WWW-Authenticate': challenge };
    }
    if (recordFor) options.record?.(recordFor.access, recordFor.patient, response.status, recordFor.as);
    // Drain what the client is still sending so the response is not cut off by a reset (a reader
    // that stopped part-way, `limited`, left its listener, which would keep the stream paused).
    if (!req.readableEnded) req.removeAllListeners('readable').resume();
    res.status(response.status);
    if (options.service.stopSignal.aborted) res.setHeader('Connection', 'close'); // the server is going away
    for (const [k, v] of Object.entries(response.headers ?? {})) res.setHeader(k, v);
    res.setHeader('Content-Type', `${(response.body as Resource | undefined)?.resourceType === 'OperationOutcome' ? 'application/fhir+json' : 'application/json'}; charset=utf-8`);
    res.end(JSON.stringify(response.body));
    options.logger.info({ reqId: res.getHeader('X-Request-Id'), method: 'POST', route: '/cgm/ingest', status: response.status,
      ms: Number(process.hrtime.bigint() - started) / 1e6 }, 'cgm ingest');
  });
  return r;
}

/**
 * The request body as a byte stream that fails with 413 past `maxBytes`, and with the service's
 * ImportInterrupted as soon as it is stopped, even while waiting for bytes that are slow to come.
 */
async function* limited(req: Request, maxBytes: number, service: CgmIngestService): AsyncGenerator<Uint8Array> {
  const chunks = (req as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  let total = 0;
  for (;;) {
    const next = await untilStopped(chunks.next(), service);
    if (next.done) return;
    total += next.value.length;
    if (total > maxBytes) throw tooLarge(`Export larger than ${maxBytes} bytes`);
    yield next.value;
  }
}

/** `pending`, or ImportInterrupted once the service is stopped, whichever comes first. */
function untilStopped<T>(pending: Promise<T>, service: CgmIngestService): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onStop = (): void => {
      try {
        service.throwIfStopped();
      } catch (err) {
        reject(err);
      }
    };
    service.stopSignal.addEventListener('abort', onStop, { once: true });
    onStop(); // stopped already
    // settles once either way (a late rejection of `pending` is handled here, not left unhandled)
    pending.then(resolve, reject).finally(() => service.stopSignal.removeEventListener('abort', onStop));
  });
}

/** The query parameters of POST /cgm/ingest. */
const INGEST_PARAMS = ['patient', 'format', 'tz', 'dateOrder', 'partial', 'remove', 'dryRun'];

function one(query: Record<string, string | string[] | undefined>, name: string): string | undefined {
  const v = query[name];
  if (Array.isArray(v)) throw badRequest(`${name} given more than once`, name);
  return v === '' ? undefined : v;
}

/** A true/false parameter, false when absent. */
function flag(query: Record<string, string | string[] | undefined>, name: string): boolean {
  const v = one(query, name);
  if (v !== undefined && v !== 'true' && v !== 'false') throw badRequest(`${name} must be true or false`, name);
  return v === 'true';
}
