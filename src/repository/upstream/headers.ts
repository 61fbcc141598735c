/**
 * What of a caller's request may travel to the upstream FHIR server. The upstream adapter talks to
 * upstream with its own credentials and its own content negotiation, so the caller's credentials,
 * cookies, hop-by-hop headers (RFC 9110 §7.6.1) and anything the adapter sets itself are dropped
 * (smart-launcher-v2 `backend/routes/fhir/proxy.ts` does the same).
 */

/** Headers that only make sense on one connection (RFC 9110 §7.6.1, RFC 7230 §6.1). */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'te', 'trailer', 'transfer-encoding', 'upgrade']);

/**
 * Headers never forwarded: credentials and cookies of the caller, the caller's view of the network,
 * and headers the adapter sets itself (content negotiation, body framing, conditional requests,
 * `Prefer`), which a caller must not be able to change behind the adapter's back.
 */
const NEVER = new Set([
  'authorization', 'host', 'cookie', 'set-cookie',
  'forwarded', 'origin', 'referer',
  'accept', 'accept-encoding', 'content-type', 'content-length', 'content-encoding', 'expect',
  'if-match', 'if-none-match', 'if-none-exist', 'if-modified-since', 'if-unmodified-since', 'if-range', 'range',
  'prefer',
]);

export type HeaderInput = Record<string, string | readonly string[] | number | undefined>;

/**
 * The caller's headers that may be forwarded upstream, with lower-case names and multiple values
 * joined by ", ". Pure. Drops `authorization`, `host`, cookies, hop-by-hop headers (including any
 * named in the caller's `Connection` header), `proxy-*`, `x-forwarded-*` and the headers the adapter
 * controls itself.
 */
export function forwardableHeaders(headers: HeaderInput): Record<string, string> {
  const lower = new Map<string, string>();
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    const text = Array.isArray(value) ? value.join(', ') : String(value);
    const key = name.toLowerCase();
    lower.set(key, lower.has(key) ? `${lower.get(key)}, ${text}` : text);
  }
  const namedByConnection = new Set(
    (lower.get('connection') ?? '').split(',').map((t) => t.trim().toLowerCase()).filter(Boolean),
  );
  const out: Record<string, string> = {};
  for (const [key, value] of lower) {
    if (HOP_BY_HOP.has(key) || NEVER.has(key) || namedByConnection.has(key)) continue;
    if (key.startsWith('proxy-') || key.startsWith('x-forwarded-') || key.startsWith(':')) continue;
    out[key] = value;
  }
  return out;
}
