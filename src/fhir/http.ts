/**
 * The thin express adapter for the FHIR facade: raw body → FhirRequest, FhirResponse → HTTP.
 * Content negotiation (`_format`, `Accept`), body limits (413), malformed JSON (400) and
 * `_pretty` live here; everything FHIR lives in the router.
 */
import zlib from 'node:zlib';
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import { badRequest, isGlucoGuardError, notAcceptable, tooLarge, unsupportedMediaType } from '../errors.js';
import type { Logger } from '../log.js';
import type { AccessContext } from './access.js';
import { errorToResponse } from './outcomes.js';
import { queryOfText } from './paging.js';
import type { FhirRouter } from './router.js';
import type { FhirRequest, FhirResponse, HttpMethod } from './types.js';
import { byteLengthOf, jsonBody } from './json-text.js';

export type Authenticate = (headers: Record<string, string | undefined>, requestUrl: string) => Promise<AccessContext>;

export interface FhirHttpOptions {
  router: FhirRouter;
  authenticate: Authenticate;
  maxBodyBytes: number;
  logger: Logger;
  /** Paths below /fhir that need no token (metadata, discovery). */
  publicPaths?: RegExp[];
  /** Code answers of COMPRESS_MIN_BYTES and more as the client's Accept-Encoding asks (default true). */
  compress?: boolean;
  /** Told of each request refused for want of a valid token (401), for the access log. */
  onUnauthenticated?: (request: Pick<FhirRequest, 'method' | 'path' | 'query' | 'headers'>, status: number) => void;
}

const JSON_FORMATS = new Set(['json', 'application/json', 'application/fhir+json', 'application/json+fhir']);
const DEFAULT_PUBLIC = [/^\/metadata$/];

/** Express router to mount at `/fhir`. */
export function fhirHttpRouter(options: FhirHttpOptions): Router {
  const r = express.Router();
  const compress = options.compress !== false;
  r.use(cors);
  r.use(express.raw({ type: () => true, limit: options.maxBodyBytes }));
  r.use((err: unknown, _req: Request, res: Response, next: NextFunction) => {
    if (!err) return next();
    const e = err as { type?: string; status?: number };
    const gg = e.type === 'entity.too.large' ? tooLarge(`Request body larger than ${options.maxBodyBytes} bytes`) : badRequest('Unreadable request body');
    send(res, errorToResponse(gg), false, { compress });
  });
  r.all(/.*/, async (req: Request, res: Response) => {
    let response: FhirResponse;
    const pretty = req.query._pretty === 'true';
    const isPublic = (options.publicPaths ?? DEFAULT_PUBLIC).some((p) => p.test(req.path));
    // Health data (and every answer about it: a 404, a refusal) is never kept by a browser or a
    // proxy, on a shared workstation's disk least of all: ETag and Last-Modified still let a client
    // revalidate what it holds itself (304). The capability statement stays cacheable.
    if (!isPublic) res.setHeader('Cache-Control', 'no-store');
    try {
      negotiate(req);
      const headers = lowerHeaders(req);
      let access: AccessContext;
      try {
        access = isPublic ? { kind: 'open' as const, scopes: [] } : await options.authenticate(headers, req.originalUrl);
      } catch (err) {
        // refused before anyone was identified: in the access log all the same (throttled there);
        // recording it never changes the answer (a path that does not decode is logged as sent)
        if (isGlucoGuardError(err, 'ERR_UNAUTHORIZED') && options.onUnauthenticated) {
          let path = req.path;
          try {
            path = decodePath(req.path);
          } catch {
            // as sent
          }
          try {
            options.onUnauthenticated({ method: req.method.toUpperCase() as HttpMethod, path, query: req.query as Record<string, string | string[]>, headers }, 401);
          } catch (recordErr) {
            options.logger.error({ err: (recordErr as Error).message }, 'audit: could not record a request refused for want of a token');
          }
        }
        throw err;
      }
      assertDecodable(req.originalUrl.slice(req.originalUrl.indexOf('?') + 1 || req.originalUrl.length), 'query string');
      const fhirReq: FhirRequest = {
        method: req.method.toUpperCase() as HttpMethod,
        path: decodePath(req.path),
        query: req.query as Record<string, string | string[]>,
        headers,
        body: parseBody(req),
        access,
      };
      response = await options.router.handle(fhirReq);
    } catch (err) {
      response = errorToResponse(err, options.logger);
      const challenge = (err as { wwwAuthenticate?: string }).wwwAuthenticate;
      if (challenge) response.headers = { ...response.headers, 'WWW-Authenticate': challenge };
    }
    // The request line (method, route template, status, ms, reqId) is logged by src/observability/request.ts.
    send(res, response, pretty, { head: req.method === 'HEAD', compress });
  });
  return r;
}

/**
 * CORS for browser SMART apps: bearer tokens, never cookies, so any origin may call; preflights
 * answer at once. A grantee states its purpose of use on every request (X-Purpose-Of-Use), so a
 * browser app on another origin must be allowed to send it. Also mounted on `/exports` and `/cgm`.
 */
export function cors(req: Request, res: Response, next: NextFunction): void {
  res.setHeader('Access-Control-Allow-Origin', '*');
  res.setHeader('Access-Control-Expose-Headers', 'ETag, Location, Last-Modified, Content-Location, X-Request-Id, X-Progress, Retry-After, WWW-Authenticate');
  if (req.method === 'OPTIONS') {
    res.setHeader('Access-Control-Allow-Methods', 'GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS');
    res.setHeader('Access-Control-Allow-Headers', 'Authorization, Content-Type, Accept, Prefer, If-Match, If-None-Exist, If-None-Match, If-Modified-Since, X-Request-Id, X-Purpose-Of-Use');
    res.setHeader('Access-Control-Max-Age', '600');
    res.status(204).end();
    return;
  }
  next();
}

function negotiate(req: Request): void {
  const format = req.query._format;
  if (typeof format === 'string' && !JSON_FORMATS.has(format.split(';')[0]!.trim().toLowerCase())) {
    throw notAcceptable(`_format ${format.slice(0, 40)} is not supported; this server speaks application/fhir+json`);
  }
  const accept = req.headers.accept;
  if (accept && !/(\*\/\*|application\/\*|json)/i.test(accept)) {
    throw notAcceptable('This server speaks application/fhir+json only');
  }
  // `fhirVersion` (http.html#version-parameter): some media range must take R4, 4.0 or 4.0.x
  if (accept && /fhirVersion/i.test(accept) && !accept.split(',').some((range) => {
    const version = /;\s*fhirVersion\s*=\s*"?([^";,\s]*)/i.exec(range)?.[1];
    return version === undefined || version === '4.0' || version.startsWith('4.0.');
  })) {
    throw notAcceptable('This server speaks FHIR R4 only (fhirVersion=4.0)');
  }
}

function parseBody(req: Request): unknown {
  const raw = req.body as Buffer | undefined;
  if (!Buffer.isBuffer(raw) || raw.length === 0) return undefined;
  const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
  if (type === 'application/x-www-form-urlencoded') {
    const text = raw.toString('utf8');
    assertDecodable(text, 'form body');
    return queryOfText(text);
  }
  if (type.endsWith('json')) {
    // a body declared in another FHIR version (http.html#version-parameter) would be read as R4
    const version = /;\s*fhirVersion\s*=\s*"?([^";\s]*)/i.exec(req.headers['content-type'] ?? '')?.[1];
    if (version !== undefined && version !== '4.0' && !version.startsWith('4.0.')) {
      throw unsupportedMediaType(`fhirVersion ${version.slice(0, 20)} is not supported; this server speaks FHIR R4 (fhirVersion=4.0)`);
    }
    let value: unknown;
    const text = utf8Text(req, raw);
    try {
      value = JSON.parse(text);
    } catch {
      throw badRequest('Malformed JSON body');
    }
    // Recursive steps downstream (cloning, validation, canonical JSON) would overflow the stack.
    if (exceedsDepth(value, MAX_JSON_DEPTH)) throw badRequest(`JSON body nested deeper than ${MAX_JSON_DEPTH} levels`);
    return value;
  }
  // Other media types reach the router as "not JSON"; it answers 415 where a body is expected.
  return undefined;
}

/**
 * 400 for a query string or form body with a %-escape that is malformed (`%A`) or not UTF-8
 * (`%E0%A4`): decoded leniently, each would become U+FFFD (or stay as written) and the search
 * would answer for a value the client never sent.
 */
function assertDecodable(text: string, what: string): void {
  if (!text.includes('%')) return;
  for (const part of text.split(/[&=]/)) {
    try {
      decodeURIComponent(part);
    } catch {
      throw badRequest(`Malformed ${what}: a %-escape that does not decode as UTF-8`);
    }
  }
}

const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: false });

/**
 * The body as text. FHIR JSON is UTF-8 only (json.html), so a body declared in another charset is
 * 415, and bytes that are not UTF-8 are 400: decoding them leniently would store U+FFFD in place of
 * each letter (an ISO-8859-1 "Müller" as "M\uFFFDller") and answer 201. A leading byte order mark,
 * which some Windows interface engines write, is dropped (RFC 8259 §8.1 lets a parser ignore it).
 */
function utf8Text(req: Request, raw: Buffer): string {
  const charset = /;\s*charset\s*=\s*"?([^";\s]+)/i.exec(req.headers['content-type'] ?? '')?.[1]?.toLowerCase();
  // US-ASCII text is UTF-8 as it is; the decoder refuses any byte above 127 in it
  if (charset !== undefined && charset !== 'utf-8' && charset !== 'utf8' && charset !== 'us-ascii') {
    throw unsupportedMediaType(`charset ${charset.slice(0, 40)} is not supported; FHIR JSON is UTF-8`);
  }
  try {
    return UTF8.decode(raw);
  } catch {
    throw badRequest('Request body is not valid UTF-8');
  }
}

/** Far deeper than any FHIR resource or Bundle (contained resources, nested extensions) needs. */
const MAX_JSON_DEPTH = 100;

/** Iterative, so a hostile body cannot overflow the stack while being checked. */
function exceedsDepth(value: unknown, max: number): boolean {
  const stack: [unknown, number][] = [[value, 1]];
  while (stack.length) {
    const [v, depth] = stack.pop()!;
    if (typeof v !== 'object' || v === null) continue;
    if (depth > max) return true;
    for (const child of Array.isArray(v) ? v : Object.values(v)) stack.push([child, depth + 1]);
  }
  return false;
}

function lowerHeaders(req: Request): Record<string, string | undefined> {
  const out: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(req.headers)) out[k.toLowerCase()] = Array.isArray(v) ? v.join(', ') : v;
  return out;
}

function decodePath(p: string): string {
  try {
    return decodeURIComponent(p).replace(/^\/+/, '');
  } catch {
    throw badRequest('Malformed URL path');
  }
}

/**
 * FHIR JSON has no empty arrays ("arrays are never empty", R4 json.html): a Bundle without entries
 * (a search that finds nothing, an MRN nobody has; an empty history) leaves `entry` out, as do the
 * Bundles a batch or transaction answers in its entries. Firely's parser refuses `"entry": []`.
 */
function withoutEmptyEntries(body: unknown): unknown {
  const bundle = body as { resourceType?: unknown; entry?: { resource?: unknown }[] } | null;
  if (!bundle || bundle.resourceType !== 'Bundle' || !Array.isArray(bundle.entry)) return body;
  if (bundle.entry.length === 0) {
    const { entry: _, ...rest } = bundle;
    return rest;
  }
  // one level down: a batch's searches (only the batch and transaction answers hold Bundles)
  const type = (bundle as { type?: unknown }).type;
  if (type !== 'batch-response' && type !== 'transaction-response') return body;
  let changed = false;
  const entry = bundle.entry.map((e) => {
    const inner = withoutEmptyEntries(e?.resource);
    if (inner === e?.resource) return e;
    changed = true;
    return { ...e, resource: inner };
  });
  return changed ? { ...bundle, entry } : body;
}

function send(res: Response, response: FhirResponse, pretty: boolean, options: { head?: boolean; compress?: boolean } = {}): void {
  res.status(response.status);
  for (const [k, v] of Object.entries(response.headers ?? {})) res.setHeader(k, v);
  if (response.body === undefined || response.status === 204 || response.status === 304) {
    res.end();
    return;
  }
  if (!res.hasHeader('Content-Type')) res.setHeader('Content-Type', 'application/fhir+json; charset=utf-8'); // an operation may name its own (Bulk Data manifest: application/json)
  const body = withoutEmptyEntries(response.body);
  const text = pretty ? JSON.stringify(body, null, 2) : jsonBody(body);
  const length = byteLengthOf(text);
  if (options.compress && length >= COMPRESS_MIN_BYTES) {
    res.vary('Accept-Encoding');
    const coding = options.head ? undefined : codingFor(res.req);
    if (coding) {
      sendCoded(res, text, coding);
      return;
    }
  }
  res.setHeader('Content-Length', length);
  if (options.head) {
    res.end();
    return;
  }
  res.end(text);
}

/** Smaller answers are sent as they are (the coding would save less than its own cost). */
const COMPRESS_MIN_BYTES = 1024;
type Coding = 'br' | 'gzip' | 'deflate';
// Fast settings: a 243 kB patient-day searchset codes in ~0.5 ms to ~5.9 kB (brotli quality 4) or
// ~0.4 ms to ~8.8 kB (gzip level 1), against ~0.7 ms to ~7.6 kB at gzip's default level.
const BROTLI: zlib.BrotliOptions = { params: { [zlib.constants.BROTLI_PARAM_QUALITY]: 4 } };
const GZIP: zlib.ZlibOptions = { level: 1 };

/** The coding the client prefers among those offered; none when it sent no Accept-Encoding. */
function codingFor(req: Request): Coding | undefined {
  if (!req.headers['accept-encoding']) return undefined;
  const best = req.acceptsEncodings('br', 'gzip', 'deflate', 'identity');
  return best === 'br' || best === 'gzip' || best === 'deflate' ? best : undefined;
}

/**
 * The whole answer coded in one go, on this thread: ~0.4 ms for a patient-day searchset, less than
 * writing it uncoded, and in proportion to the serialising just done here too. Measured slower:
 * the asynchronous zlib call on the thread pool, whose answer came 5–9 ms later (p50) under the
 * 1M-store benchmark's load (0.45 ms in an idle process; the pool is shared with the rest of the
 * process), and a streaming coder, one pool job per piece, ~5 ms. Should coding fail, the answer
 * goes out uncoded.
 */
function sendCoded(res: Response, text: string | Buffer, coding: Coding): void {
  const body = typeof text === 'string' ? Buffer.from(text, 'utf8') : text;
  let packed: Buffer;
  try {
    packed = coding === 'br' ? zlib.brotliCompressSync(body, BROTLI) : coding === 'gzip' ? zlib.gzipSync(body, GZIP) : zlib.deflateSync(body, GZIP);
  } catch {
    res.setHeader('Content-Length', body.length);
    res.end(body);
    return;
  }
  res.setHeader('Content-Encoding', coding);
  res.setHeader('Content-Length', packed.length);
  res.end(packed);
}
