/**
 * Upstream servers answer with absolute URLs of their own base (Bundle.entry.fullUrl, Bundle.link,
 * absolute references, Location), and their text may mention it too (narrative, diagnostics).
 * Clients of the proxy must only ever see the proxy's FHIR base, both so that links keep working
 * through the proxy and so that the upstream address stays internal.
 *
 * A `reference` to the upstream's own base is made relative (`Patient/1`): R4 says a reference to a
 * resource on the same server means the same whether absolute or relative (references.html#literal),
 * and the proxy's consent and compartment rules read relative references only
 * (src/fhir/compartment.ts). Every other occurrence of the upstream base, anywhere in a string, gets
 * the proxy's base.
 */

/**
 * Returns a copy of `body` in which references to the upstream base are relative and every other
 * occurrence of the upstream base (not followed by more of a path segment, so `…/fhir2` is left
 * alone) is the proxy base. Works on any JSON value, including a bare string (a Location header).
 * Pure: `body` is not modified. Trailing slashes of both bases are ignored.
 */
export function rewriteBaseUrls<T>(body: T, upstreamBase: string, proxyBase: string): T {
  return new BaseRewriter(upstreamBase, proxyBase).copy(body);
}

/**
 * As rewriteBaseUrls, but changes `body` in place (and returns it, or the new string for a bare
 * string): for freshly parsed upstream JSON, which nothing else holds, so a large body is not
 * copied once more.
 */
export function rewriteBaseUrlsInPlace<T>(body: T, upstreamBase: string, proxyBase: string): T {
  return new BaseRewriter(upstreamBase, proxyBase).inPlace(body);
}

/** A relative literal reference: `Type/id`, optionally `/_history/vid`, after the base. */
const RELATIVE_AFTER_BASE = /^\/[A-Z][A-Za-z]{1,63}\/[A-Za-z0-9\-.]{1,64}(?:\/_history\/[A-Za-z0-9\-.]{1,64})?$/;

class BaseRewriter {
  private readonly from: string;
  private readonly to: string;
  /** An occurrence of the base that is not the start of a longer path segment (`/fhir2`, `/fhir.x`). */
  private readonly occurrence: RegExp;

  constructor(upstreamBase: string, proxyBase: string) {
    this.from = upstreamBase.replace(/\/+$/, '');
    this.to = proxyBase.replace(/\/+$/, '');
    this.occurrence = new RegExp(`${this.from.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(?![A-Za-z0-9\\-._~%])`, 'g');
  }

  private get idle(): boolean {
    return this.from === this.to || this.from === '';
  }

  copy<T>(body: T): T {
    if (this.idle) return body;
    const walk = (value: unknown, key: string | undefined): unknown => {
      if (typeof value === 'string') return this.string(value, key);
      if (Array.isArray(value)) return value.map((v) => walk(v, undefined));
      if (value !== null && typeof value === 'object') {
        const out: Record<string, unknown> = {};
        for (const [k, v] of Object.entries(value)) out[k] = walk(v, k);
        return out;
      }
      return value;
    };
    return walk(body, undefined) as T;
  }

  inPlace<T>(body: T): T {
    if (this.idle) return body;
    if (typeof body === 'string') return this.string(body, undefined) as T;
    const walk = (value: unknown): void => {
      if (Array.isArray(value)) {
        for (let i = 0; i < value.length; i++) {
          const v: unknown = value[i];
          if (typeof v === 'string') value[i] = this.string(v, undefined);
          else if (v !== null && typeof v === 'object') walk(v);
        }
      } else if (value !== null && typeof value === 'object') {
        const record = value as Record<string, unknown>;
        for (const k of Object.keys(record)) {
          const v = record[k];
          if (typeof v === 'string') record[k] = this.string(v, k);
          else if (v !== null && typeof v === 'object') walk(v);
        }
      }
    };
    walk(body);
    return body;
  }

  private string(s: string, key: string | undefined): string {
    // Most strings are short codes, ids and numbers: one native scan rules them out.
    if (s.length < this.from.length || !s.includes(this.from)) return s;
    if (key === 'reference' && s.startsWith(this.from) && RELATIVE_AFTER_BASE.test(s.slice(this.from.length))) {
      return s.slice(this.from.length + 1);
    }
    this.occurrence.lastIndex = 0;
    return s.replace(this.occurrence, () => this.to);
  }
}
