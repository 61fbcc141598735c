/**
 * The JSON text of a FHIR answer, written without building one large string: a large Bundle entry
 * by entry, straight into one buffer of its exact UTF-8 length.
 */
import { isDeferred } from '../repository/deferred.js';
import { isImmutable, jsonTextOf } from '../repository/port.js';

/**
 * The JSON text of a response body, as a string or (a Bundle of 16 entries or more) as UTF-8 bytes.
 * `JSON.stringify` of a 200 kB Bundle builds one string that V8 must then flatten into a fresh
 * large-object allocation before it can be measured or written: on this VM that cost more than the
 * serialising itself (0.7 ms of page faults and copying for 220 kB). A Bundle is written as its
 * head and its entries, each entry serialised on its own and written straight into one buffer of
 * the exact length: for a patient-day of 288 deferred readings 0.50–0.53 ms instead of 0.63–0.65 ms
 * when the entries were joined into ~16 kB strings and each encoded on its write (session 31,
 * bench/probes/bundle-write-ab.mjs). The text is
 * the same JSON as `JSON.stringify`, with `entry` last among the Bundle's members.
 */
export function jsonBody(body: unknown): string | Buffer {
  const bundle = body as { resourceType?: unknown; entry?: unknown } | null;
  if (!bundle || bundle.resourceType !== 'Bundle' || !Array.isArray(bundle.entry) || bundle.entry.length < 16 || typeof (bundle as { toJSON?: unknown }).toJSON === 'function') {
    return JSON.stringify(body);
  }
  const head = JSON.stringify({ ...bundle, entry: undefined });
  const opening = `${head.length > 2 ? `${head.slice(0, -1)},` : '{'}"entry":[`;
  const entries = bundle.entry as unknown[];
  const texts = new Array<string>(entries.length);
  // the opening, the entries with a comma between each two, and "]}"
  let length = Buffer.byteLength(opening, 'utf8') + Math.max(0, entries.length - 1) + 2;
  for (let i = 0; i < entries.length; i++) {
    const text = entryText(entries[i]);
    texts[i] = text;
    length += Buffer.byteLength(text, 'utf8');
  }
  const out = Buffer.allocUnsafe(length);
  let at = out.write(opening, 0, 'utf8');
  for (let i = 0; i < texts.length; i++) {
    if (i > 0) out[at++] = 0x2c; // ,
    at += out.write(texts[i]!, at, 'utf8');
  }
  out[at++] = 0x5d; // ]
  out[at++] = 0x7d; // }
  if (at !== length) throw new Error(`Bundle text of ${at} bytes, ${length} expected`); // never: the lengths above are the writes'
  return out;
}

/**
 * `JSON.stringify(entry)`, member by member so that an immutable entry resource (a version served
 * from the embedded repository's decoded cache) reuses the text worked out at its first
 * serialisation, and a deferred one is written from its stored text (`jsonTextOf`).
 */
function entryText(entry: unknown): string {
  const resource = (entry as { resource?: unknown } | null)?.resource;
  if (!resource || typeof resource !== 'object' || !(isImmutable(resource) || isDeferred(resource)) || Array.isArray(entry) || typeof (entry as { toJSON?: unknown }).toJSON === 'function') {
    return JSON.stringify(entry) ?? 'null';
  }
  const searchText = searchsetEntryShape(entry as Record<string, unknown>);
  if (searchText !== undefined) {
    return `{"fullUrl":${JSON.stringify((entry as { fullUrl: string }).fullUrl)},"resource":${jsonTextOf(resource)},"search":${searchText}}`;
  }
  let text = '{';
  for (const [key, value] of Object.entries(entry as object)) {
    const member = value === resource ? jsonTextOf(resource) : JSON.stringify(value);
    if (member === undefined) continue; // undefined, functions and symbols are left out, as JSON.stringify does
    text += `${text.length > 1 ? ',' : ''}${JSON.stringify(key)}:${member}`;
  }
  return `${text}}`;
}

/** The members of the router's searchset entries, in their order. */
const ENTRY_MEMBERS = ['fullUrl', 'resource', 'search'];

/** `{"mode":…}` texts of the entry search modes, written once each. */
const SEARCH_TEXTS = new Map(['match', 'include', 'outcome'].map((mode) => [mode, JSON.stringify({ mode })]));

/**
 * The text of `search` when the entry is exactly what the router builds for a searchset:
 * `{ fullUrl: string, resource, search: { mode } }`, members in that order and nothing else (the
 * text is then written from a template); undefined for any other shape.
 */
function searchsetEntryShape(entry: Record<string, unknown>): string | undefined {
  let n = 0;
  for (const key in entry) if (key !== ENTRY_MEMBERS[n++]) return undefined;
  if (n !== ENTRY_MEMBERS.length || typeof entry.fullUrl !== 'string') return undefined;
  const search = entry.search as Record<string, unknown> | null;
  if (!search || typeof search !== 'object' || Object.getPrototypeOf(search) !== Object.prototype) return undefined;
  let members = 0;
  for (const _ in search) members++;
  // one member, and it is a string `mode`
  return members === 1 && typeof search.mode === 'string' ? SEARCH_TEXTS.get(search.mode) : undefined;
}

/** UTF-8 bytes of a body jsonBody wrote (its Content-Length). */
export function byteLengthOf(body: string | Buffer): number {
  return typeof body === 'string' ? Buffer.byteLength(body, 'utf8') : body.length;
}
