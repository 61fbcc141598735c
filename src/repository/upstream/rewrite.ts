/**
 * Upstream servers answer with absolute URLs of their own base (Bundle.entry.fullUrl, Bundle.link,
 * absolute references, Location). Clients of the proxy must only ever see the proxy's FHIR base, both
 * so that links keep working through the proxy and so that the upstream address stays internal.
 */

/**
 * Returns a copy of `body` in which every string that is the upstream base, or starts with it followed
 * by `/`, `?` or `#`, starts with the proxy base instead. Works on any JSON value, including a bare
 * string (a Location header). Pure: `body` is not modified. Trailing slashes of both bases are ignored.
 */
export function rewriteBaseUrls<T>(body: T, upstreamBase: string, proxyBase: string): T {
  const from = upstreamBase.replace(/\/+$/, '');
  const to = proxyBase.replace(/\/+$/, '');
  if (from === to || from === '') return body;
  const rewriteString = (s: string): string => {
    if (!s.startsWith(from)) return s;
    const next = s.charAt(from.length);
    return next === '' || next === '/' || next === '?' || next === '#' ? to + s.slice(from.length) : s;
  };
  const walk = (value: unknown): unknown => {
    if (typeof value === 'string') return rewriteString(value);
    if (Array.isArray(value)) return value.map(walk);
    if (value !== null && typeof value === 'object') {
      const out: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(value)) out[k] = walk(v);
      return out;
    }
    return value;
  };
  return walk(body) as T;
}
