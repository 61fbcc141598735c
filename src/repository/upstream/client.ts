/**
 * FHIR-level exchange with the upstream server: adds the adapter's own headers and credentials,
 * retries once with fresh credentials on a 401, maps upstream statuses to GlucoGuard error kinds,
 * and rewrites upstream base URLs in every body it hands back.
 *
 * Status mapping (https://hl7.org/fhir/R4/http.html): 404 → ERR_NOT_FOUND, 410 → ERR_GONE,
 * 409 → ERR_CONFLICT, 412 → ERR_PRECONDITION_FAILED, 400 → ERR_INVALID and 422 → ERR_UNPROCESSABLE
 * (both keeping only what helps a client fix its request, see safeIssues; a 400 or 422 to a read or
 * vread, whose request the adapter built and checked itself, is the upstream's failure: ERR_UPSTREAM), 429 →
 * ERR_UNAVAILABLE, and so is a 503 with Retry-After (each passing the upstream's Retry-After on, in
 * seconds); 401/403 (the proxy's own credentials), other 5xx and anything unexpected → ERR_UPSTREAM. A GET the
 * upstream throttles is sent once more when the wait it asks for is short (retryAfterMaxSeconds).
 */
import type { OperationOutcomeIssue } from '@medplum/fhirtypes';
import {
  GlucoGuardError, badRequest, conflict, gone, notFound, preconditionFailed, tooLarge, unavailable, unprocessable, upstreamError,
} from '../../errors.js';
import type { UpstreamCredentials } from './auth.js';
import { rewriteBaseUrlsInPlace } from './rewrite.js';
import type { UpstreamTransport } from './transport.js';

export const FHIR_JSON = 'application/fhir+json';

export interface FhirExchange {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  /** Path and query relative to the upstream base, e.g. `Patient/1` or `Observation?patient=…`; '' for the base. */
  path: string;
  /** Instead of `path`: an absolute URL the upstream gave as a paging link (FhirReply.next, checked by pagingLink). */
  url?: string;
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
  /**
   * The upstream's own `next` link of a Bundle (http.html#paging), as the upstream sent it (not
   * rewritten), once checked to lie under the upstream base (pagingLink); for the adapter only.
   */
  next?: string;
}

export class FhirUpstreamClient {
  /** URLs under the proxy's own base, in free text. */
  private readonly proxyUrls: RegExp;

  constructor(
    readonly base: string,
    readonly proxyBase: string,
    private readonly transport: UpstreamTransport,
    private readonly credentials: UpstreamCredentials,
    /** A throttled read is sent once more when the upstream asks to wait at most this long (UpstreamConfig.retryAfterMaxSeconds). */
    private readonly retryAfterMaxSeconds = 2,
    private readonly sleep: (ms: number) => Promise<void> = (ms) => new Promise((r) => setTimeout(r, ms)),
  ) {
    this.proxyUrls = new RegExp(`${proxyBase.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}[^\\s"'<>)\\]]*`, 'g');
  }

  async exchange(x: FhirExchange): Promise<FhirReply> {
    const body = x.body === undefined ? undefined : JSON.stringify(x.body);
    const send = async (authorization: string | undefined) => this.transport.send({
      url: x.url ?? (x.path === '' ? this.base : `${this.base}/${x.path}`),
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
        : this.errorFor(response.status, parsed, x.what, x.method, x.path);
      // the client may retry when the upstream says it may: its Retry-After, in seconds
      if ((response.status === 429 || response.status === 503) && after !== undefined) err.headers = { 'Retry-After': String(after) };
      throw err;
    }
    if (parsed === INVALID_JSON) {
      this.transport.logger?.warn({ what: x.what, status: response.status }, 'upstream answered a body that is not JSON');
      throw upstreamError('Upstream FHIR server sent an invalid response');
    }
    const location = response.headers.get('location') ?? response.headers.get('content-location') ?? undefined;
    // read before the rewrite turns it into a proxy URL
    const next = nextLinkOf(parsed);
    return {
      status: response.status,
      // freshly parsed and held by nothing else: rewritten where it lies, not copied once more
      body: parsed === undefined ? undefined : rewriteBaseUrlsInPlace(parsed, this.base, this.proxyBase),
      location: location === undefined ? undefined : rewriteBaseUrlsInPlace(location, this.base, this.proxyBase),
      ...(next !== undefined ? { next: this.pagingLink(next, x.what) } : {}),
    };
  }

  /**
   * A paging link the upstream sent, as an absolute URL the adapter may follow: only under the
   * upstream's own base (same scheme, host and port, path below the base path, no userinfo), so a
   * link cannot send the proxy, with its upstream credentials, anywhere else (SSRF). Relative links
   * are resolved against the base. Anything else → ERR_UPSTREAM.
   */
  pagingLink(link: string, what: string): string {
    const base = new URL(this.base);
    const basePath = base.pathname.replace(/\/+$/, '');
    let url: URL | undefined;
    try {
      url = new URL(link, `${this.base}/`);
    } catch {
      url = undefined;
    }
    const under = url !== undefined && url.origin === base.origin && url.username === '' && url.password === ''
      && (basePath === '' || url.pathname === basePath || url.pathname.startsWith(`${basePath}/`));
    if (!under) {
      this.transport.logger?.warn({ what, sameOrigin: url?.origin === base.origin }, 'upstream paging link is not under the upstream base; not followed');
      throw upstreamError('Upstream FHIR server sent an invalid paging link');
    }
    return url!.href;
  }

  private errorFor(status: number, body: unknown, what: string, method: string, path: string): GlucoGuardError {
    switch (status) {
      case 404: return notFound();
      case 410: return gone();
      case 409: return conflict('The resource was changed concurrently; read it again and retry');
      case 412: {
        if (method !== 'POST' || path !== '') {
          return preconditionFailed(method === 'POST'
            ? 'The conditional create matched more than one resource'
            : 'The resource version does not match If-Match');
        }
        // a transaction (POST to the base): some entry's ifMatch, ifNoneExist or conditional
        // reference failed, which only the upstream's own outcome can tell
        const issues = this.safeIssues(body, 'conflict', 'A precondition of an entry of the transaction failed (HTTP 412)');
        return new GlucoGuardError('ERR_PRECONDITION_FAILED', issues.map((i) => i.diagnostics).join('; '), issues);
      }
      case 400:
      case 422: {
        // the adapter built and checked a read's URL itself and sent no body: nothing of the
        // client's was wrong, and a 422 ("could not process the resource") fits no read at all
        if (method === 'GET' && /^[A-Z][A-Za-z]+\/[^/?]+(?:\/_history\/[^/?]+)?$/.test(path)) {
          this.transport.logger?.warn({ what, method, status }, 'upstream refused a read as invalid');
          return upstreamError();
        }
        if (status === 422) return unprocessable(this.safeIssues(body, 'processing', 'Upstream FHIR server could not process the resource (HTTP 422)'));
        const issues = this.safeIssues(body, 'invalid', 'Upstream FHIR server rejected the request (HTTP 400)');
        return new GlucoGuardError('ERR_INVALID', issues.map((i) => i.diagnostics).join('; '), issues);
      }
      // the client's request was too big for the upstream: its to narrow, not to retry (a 502 reads as transient)
      case 413: return tooLarge('Upstream FHIR server refused the request as too large (HTTP 413)');
      case 414: return badRequest('Upstream FHIR server refused the request URL as too long (HTTP 414): narrow the search (fewer values)');
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
   * What of the upstream OperationOutcome's issues reaches the client (docs/operations.md, "Upstream
   * errors"): severity, code, expression and location, and details.coding (system and code; display
   * as for text) — what helps a client fix its request. Free text (diagnostics, details.text) only
   * when it shows nothing of the upstream's insides (isPlainText: no URLs, host names, addresses,
   * paths, stack traces or exception, SQL and database markers), else `fallback`, which names the
   * upstream status. A single generic issue when there are none.
   */
  private safeIssues(body: unknown, fallbackCode: OperationOutcomeIssue['code'], fallback: string): OperationOutcomeIssue[] {
    const raw = (body as { resourceType?: unknown; issue?: unknown } | undefined);
    const issues: OperationOutcomeIssue[] = [];
    if (raw?.resourceType === 'OperationOutcome' && Array.isArray(raw.issue)) {
      for (const i of raw.issue.slice(0, 20) as Record<string, unknown>[]) {
        if (i === null || typeof i !== 'object') continue;
        const severity = SEVERITIES.has(i.severity as string) ? i.severity as OperationOutcomeIssue['severity'] : 'error';
        const code = typeof i.code === 'string' && /^[a-z-]{1,40}$/.test(i.code) ? i.code as OperationOutcomeIssue['code'] : fallbackCode;
        const details = (i.details ?? undefined) as { text?: unknown; coding?: unknown } | undefined;
        const text = typeof i.diagnostics === 'string' ? i.diagnostics
          : typeof details?.text === 'string' ? details.text : undefined;
        const paths = (list: unknown): string[] => (Array.isArray(list)
          ? list.filter((e): e is string => typeof e === 'string' && e.length <= 200 && isPlainText(e)).slice(0, 10)
          : []);
        const expression = paths(i.expression);
        const location = paths(i.location);
        const coding = (Array.isArray(details?.coding) ? details.coding as Record<string, unknown>[] : []).slice(0, 5).flatMap((c) => {
          if (c === null || typeof c !== 'object' || typeof c.code !== 'string' || !/^[\w.:/-]{1,100}$/.test(c.code)) return [];
          const system = typeof c.system === 'string' && c.system.length <= 200 ? c.system : undefined;
          const display = typeof c.display === 'string' && c.display.length <= 200 && isPlainText(c.display) ? c.display : undefined;
          // a code system URL on the upstream's own host would name it
          if (system !== undefined && system.includes(new URL(this.base).host)) return [];
          return [{ ...(system ? { system } : {}), code: c.code, ...(display ? { display } : {}) }];
        });
        issues.push({
          severity,
          code,
          diagnostics: this.plainText(text) ?? fallback,
          ...(coding.length ? { details: { coding } } : {}),
          ...(expression.length ? { expression } : {}),
          ...(location.length ? { location } : {}),
        });
      }
    }
    return issues.length ? issues : [{ severity: 'error', code: fallbackCode, diagnostics: fallback }];
  }

  /**
   * Upstream free text a client may read: the upstream base rewritten to the proxy's, then kept only
   * when, apart from the proxy's own URLs and those of FHIR and its terminologies (profile and code
   * system canonicals a validation message names), it shows nothing of the upstream (isPlainText).
   */
  private plainText(text: string | undefined): string | undefined {
    if (text === undefined || text.length > 500) return undefined;
    const scrubbed = rewriteBaseUrlsInPlace(text, this.base, this.proxyBase);
    const rest = scrubbed.replace(this.proxyUrls, ' ').replace(PUBLIC_CANONICAL, ' ');
    return isPlainText(rest) ? scrubbed : undefined;
  }
}

/** URLs of FHIR and its terminologies: canonicals of profiles and code systems, safe to show. */
const PUBLIC_CANONICAL = /https?:\/\/(?:(?:terminology\.|build\.)?hl7\.org|fhir\.org|loinc\.org|snomed\.info|unitsofmeasure\.org|www\.nlm\.nih\.gov|www\.ama-assn\.org)(?:\/[^\s"'<>)\]]*)?/g;

/**
 * Marks of an upstream's insides in free text: URLs, IP addresses, host names (with a domain, a
 * port, or after words like "server" and "host"), file paths, stack frames, exception class names,
 * SQL and database error markers. FHIRPath (`Observation.value.ofType(Quantity)`) and plain
 * validation messages pass.
 */
const INTERNALS = [
  /[a-z][a-z0-9+.-]*:\/\//i, // URL
  /\b\d{1,3}(?:\.\d{1,3}){3}\b/, // IPv4
  /\b[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){3,7}\b/i, // IPv6 (≥ 4 groups: not a time of day)
  /\b(?=[\w.-]*[a-z])[\w.-]+:\d{2,5}\b/, // host:port (lower case: not the `T10:01` of a dateTime)
  /\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:local|localdomain|internal|intranet|intra|lan|corp|home|private|cluster|svc|com|org|net|io|cloud|health|gov|edu|nhs|uk|de|fr|nl|ch|be|se|dk|fi|us|ca|au|nz|ie)\b/, // host.domain (not FHIRPath: `Patient.id`)
  /\b(?:server|host|hostname|node|database|db|cluster|pod|instance|shard|replica)\b\s*[:=]?\s*[a-z0-9][\w.-]*\d/i, // "on server epic-prod-3"
  /(?:^|[\s'"(=])(?:\/[\w.-]+){2,}/, // /var/lib/… (a reference `Patient/1` has no leading slash)
  /\b[a-z]:\\/i, // C:\…
  /\bat [\w$.<>/]+\s*\(/, // stack frame: "at org.foo.Bar(Bar.java:12)", "at fn (file.js:1:2)"
  /\.(?:java|kt|scala|cs|py|js|mjs|ts|go|rb|php):\d+/i, // source file and line
  /\b\w+Exception\b|\b[A-Z]\w*Error:|Traceback|stack ?trace|\bcaused by\b/, // exceptions
  /\bSQL|\bsql\b|SQLSTATE|\bORA-\d|\bhfj_|\bjdbc\b|\bselect\s.+\sfrom\s|\btable\s+\w+_\w+/i, // SQL, databases
];

/** True when upstream free text may reach a client (see INTERNALS). */
export function isPlainText(text: string): boolean {
  return !INTERNALS.some((re) => re.test(text));
}

/** The `next` link of a Bundle (Bundle.link with relation `next`), if any. */
function nextLinkOf(body: unknown): string | undefined {
  const links = (body as { resourceType?: unknown; link?: unknown } | undefined)?.resourceType === 'Bundle'
    ? (body as { link?: unknown }).link : undefined;
  if (!Array.isArray(links)) return undefined;
  const next = links.find((l: unknown) => (l as { relation?: unknown } | null)?.relation === 'next') as { url?: unknown } | undefined;
  return typeof next?.url === 'string' && next.url !== '' ? next.url : undefined;
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
