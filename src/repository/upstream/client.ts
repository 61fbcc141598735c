/**
 * FHIR-level exchange with the upstream server: adds the adapter's own headers and credentials,
 * retries once with fresh credentials on a 401, maps upstream statuses to GlucoGuard error kinds,
 * and rewrites upstream base URLs in every body it hands back.
 *
 * Status mapping (https://hl7.org/fhir/R4/http.html): 404 → ERR_NOT_FOUND, 410 → ERR_GONE,
 * 409 → ERR_CONFLICT, 412 → ERR_PRECONDITION_FAILED, 400 → ERR_INVALID and 422 → ERR_UNPROCESSABLE
 * (both keeping only severity/code/diagnostics/expression of the upstream issues), 429 →
 * ERR_UNAVAILABLE, and so is a 503 with Retry-After (each passing the upstream's Retry-After on, in
 * seconds); 401/403 (the proxy's own credentials), other 5xx and anything unexpected → ERR_UPSTREAM. A GET the
 * upstream throttles is sent once more when the wait it asks for is short (retryAfterMaxSeconds).
 */
import type { OperationOutcomeIssue } from '@medplum/fhirtypes';
import {
  GlucoGuardError, conflict, gone, notFound, preconditionFailed, unavailable, unprocessable, upstreamError,
} from '../../errors.js';
import type { UpstreamCredentials } from './auth.js';
import { rewriteBaseUrls } from './rewrite.js';
import type { UpstreamTransport } from './transport.js';

export const FHIR_JSON = 'application/fhir+json';

export interface FhirExchange {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  /** Path and query relative to the upstream base, e.g. `Patient/1` or `Observation?patient=…`; '' for the base. */
  path: string;
  /** Safe log label, e.g. 'read Patient'. */
  what: string;
  body?: unknown;
  /** Headers the adapter itself sets for this interaction (If-Match, If-None-Exist…). */
  headers?: Record<string, string>;
  /** Already-filtered caller headers (see forwardableHeaders). */
  caller?: Record<string, string>;
  /** Statuses (besides 2xx) that are not errors for this interaction, e.g. 404/410 for delete. */
  alsoOk?: number[];
}

export interface FhirReply {
  status: number;
  /** Parsed JSON body with upstream URLs rewritten to the proxy's FHIR base; undefined when empty. */
  body: unknown;
  /** Location header, rewritten to the proxy's FHIR base. */
  location?: string;
}

export class FhirUpstreamClient {
  constructor(
    readonly base: string,
    readonly proxyBase: string,
    private readonly transport: UpstreamTransport,
    private readonly credentials: UpstreamCredentials,
    /** A throttled read is sent once more when the upstream asks to wait at most this long (UpstreamConfig.retryAfterMaxSeconds). */
    private readonly retryAfterMaxSeconds = 2,
    private readonly sleep: (ms: number) => Promise<void> = (ms) => new Promise((r) => setTimeout(r, ms)),
  ) {}

  async exchange(x: FhirExchange): Promise<FhirReply> {
    const body = x.body === undefined ? undefined : JSON.stringify(x.body);
    const send = async (authorization: string | undefined) => this.transport.send({
      url: x.path === '' ? this.base : `${this.base}/${x.path}`,
      method: x.method,
      headers: {
        ...x.caller,
        accept: FHIR_JSON,
        ...(body !== undefined ? { 'content-type': `${FHIR_JSON}; charset=utf-8` } : {}),
        ...x.headers,
        ...(authorization ? { authorization } : {}),
      },
      body,
      what: x.what,
    });
    let authorization = await this.credentials.authorization();
    let response = await send(authorization);
    if (response.status === 401 && this.credentials.rejected(authorization)) {
      authorization = await this.credentials.authorization();
      response = await send(authorization);
    }
    // Throttled (429, or 503 with Retry-After): a read is sent once more after a short wait; a
    // write never is, as the upstream may have applied it
    const wait = retryAfterSeconds(response.headers.get('retry-after'));
    if (x.method === 'GET' && (response.status === 429 || (response.status === 503 && wait !== undefined)) && (wait ?? 1) <= this.retryAfterMaxSeconds) {
      this.transport.logger?.warn({ what: x.what, status: response.status, waitSeconds: wait ?? 1 }, 'upstream throttled the request; sending it once more');
      await this.sleep((wait ?? 1) * 1000);
      response = await send(authorization);
    }
    const parsed = parseJson(response.text);
    const ok = (response.status >= 200 && response.status < 300) || (x.alsoOk ?? []).includes(response.status);
    if (!ok) {
      const after = retryAfterSeconds(response.headers.get('retry-after'));
      // a 503 that says when to come back is the upstream's maintenance or throttling, not a fault
      const err = response.status === 503 && after !== undefined
        ? unavailable('Upstream FHIR server is unavailable; retry later')
        : this.errorFor(response.status, parsed, x.what, x.method);
      // the client may retry when the upstream says it may: its Retry-After, in seconds
      if ((response.status === 429 || response.status === 503) && after !== undefined) err.headers = { 'Retry-After': String(after) };
      throw err;
    }
    if (parsed === INVALID_JSON) {
      this.transport.logger?.warn({ what: x.what, status: response.status }, 'upstream answered a body that is not JSON');
      throw upstreamError('Upstream FHIR server sent an invalid response');
    }
    const location = response.headers.get('location') ?? response.headers.get('content-location') ?? undefined;
    return {
      status: response.status,
      body: parsed === undefined ? undefined : rewriteBaseUrls(parsed, this.base, this.proxyBase),
      location: location === undefined ? undefined : rewriteBaseUrls(location, this.base, this.proxyBase),
    };
  }

  private errorFor(status: number, body: unknown, what: string, method: string): GlucoGuardError {
    switch (status) {
      case 404: return notFound();
      case 410: return gone();
      case 409: return conflict('The resource was changed concurrently; read it again and retry');
      case 412: return preconditionFailed(method === 'POST'
        ? 'The conditional create matched more than one resource'
        : 'The resource version does not match If-Match');
      case 400: {
        const issues = this.safeIssues(body, 'invalid', 'Upstream FHIR server rejected the request');
        return new GlucoGuardError('ERR_INVALID', issues.map((i) => i.diagnostics).join('; '), issues);
      }
      case 422:
        return unprocessable(this.safeIssues(body, 'processing', 'Upstream FHIR server could not process the resource'));
      case 429:
        this.transport.logger?.warn({ what, status }, 'upstream throttled the request');
        return unavailable('Upstream FHIR server is busy; retry later');
      default:
        // 401/403 mean the proxy's own upstream credentials are wrong: not the caller's business.
        this.transport.logger?.warn({ what, method, status }, 'upstream request failed');
        return upstreamError();
    }
  }

  /**
   * The upstream OperationOutcome's issues, reduced to severity, code, diagnostics (or details.text)
   * and expression, with upstream URLs rewritten; a single generic issue when there are none.
   */
  private safeIssues(body: unknown, fallbackCode: OperationOutcomeIssue['code'], fallback: string): OperationOutcomeIssue[] {
    const raw = (body as { resourceType?: unknown; issue?: unknown } | undefined);
    const issues: OperationOutcomeIssue[] = [];
    if (raw?.resourceType === 'OperationOutcome' && Array.isArray(raw.issue)) {
      for (const i of raw.issue.slice(0, 20) as Record<string, unknown>[]) {
        if (i === null || typeof i !== 'object') continue;
        const severity = SEVERITIES.has(i.severity as string) ? i.severity as OperationOutcomeIssue['severity'] : 'error';
        const code = typeof i.code === 'string' && /^[a-z-]{1,40}$/.test(i.code) ? i.code as OperationOutcomeIssue['code'] : fallbackCode;
        const text = typeof i.diagnostics === 'string' ? i.diagnostics
          : typeof (i.details as { text?: unknown } | undefined)?.text === 'string' ? (i.details as { text: string }).text : undefined;
        const expression = Array.isArray(i.expression)
          ? (i.expression as unknown[]).filter((e): e is string => typeof e === 'string').map((e) => e.slice(0, 200)).slice(0, 10)
          : [];
        issues.push({
          severity,
          code,
          ...(text ? { diagnostics: this.scrub(text.slice(0, 1000)) } : {}),
          ...(expression.length ? { expression } : {}),
        });
      }
    }
    return issues.length ? issues : [{ severity: 'error', code: fallbackCode, diagnostics: fallback }];
  }

  /** Free text from upstream with the upstream base (and bare origin) replaced by the proxy's. */
  private scrub(text: string): string {
    const proxyOrigin = new URL(this.proxyBase).origin;
    return text.split(this.base).join(this.proxyBase).split(new URL(this.base).origin).join(proxyOrigin);
  }
}

const SEVERITIES = new Set(['fatal', 'error', 'warning', 'information']);
const INVALID_JSON = Symbol('invalid JSON');

function parseJson(text: string): unknown {
  if (text.trim() === '') return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return INVALID_JSON;
  }
}

/**
 * Retry-After (RFC 9110 §10.2.3) in whole seconds from now: delay-seconds, or an HTTP-date; undefined
 * when absent or unreadable. At most a day, so a bad date cannot ask for years.
 */
export function retryAfterSeconds(value: string | null, now = Date.now()): number | undefined {
  if (value === null || value.trim() === '') return undefined;
  const text = value.trim();
  // delay-seconds, or an IMF-fixdate such as `Sat, 05 Dec 2026 10:01:30 GMT` (Date.parse alone reads `-5` as a year)
  const seconds = /^\d+$/.test(text) ? Number(text) : /^[A-Za-z]{3}, /.test(text) ? Math.ceil((Date.parse(text) - now) / 1000) : NaN;
  return Number.isFinite(seconds) ? Math.min(Math.max(0, seconds), 86_400) : undefined;
}
