/**
 * The JSON text of a FHIR answer, written without building one large string: a large Bundle entry
 * by entry, in pieces of ~16 kB, corked into one write with the headers.
 */
import type { ServerResponse } from 'node:http';
import { isDeferred } from '../repository/deferred.js';
import { isImmutable, jsonTextOf } from '../repository/port.js';

/** Text of a Bundle's entries is gathered into pieces of about this many characters. */
const CHUNK_CHARS = 16 * 1024;

/**
 * The JSON text of a response body as a few pieces, none of them large. `JSON.stringify` of a
 * 200 kB Bundle builds one string that V8 must then flatten into a fresh large-object allocation
 * before it can be measured or written: on this VM that cost more than the serialising itself
 * (0.7 ms of page faults and copying for 220 kB). A Bundle is written as its head and its entries,
 * each entry serialised on its own and gathered into pieces of ~16 kB; anything else in one piece.
 * The text is the same JSON as `JSON.stringify`, with `entry` last among the Bundle's members.
 */
export function jsonChunks(body: unknown): string[] {
  const bundle = body as { resourceType?: unknown; entry?: unknown } | null;
  if (!bundle || bundle.resourceType !== 'Bundle' || !Array.isArray(bundle.entry) || bundle.entry.length < 16 || typeof (bundle as { toJSON?: unknown }).toJSON === 'function') {
    return [JSON.stringify(body)];
  }
  const head = JSON.stringify({ ...bundle, entry: undefined });
  const chunks = [`${head.length > 2 ? `${head.slice(0, -1)},` : '{'}"entry":[`];
  let piece: string[] = [];
  let size = 0;
  const entries = bundle.entry as unknown[];
  for (let i = 0; i < entries.length; i++) {
    const text = entryText(entries[i]);
    piece.push(text);
    size += text.length;
    if (size >= CHUNK_CHARS && i < entries.length - 1) {
      chunks.push(`${piece.join(',')},`);
      piece = [];
      size = 0;
    }
  }
  chunks.push(`${piece.join(',')}]}`);
  return chunks;
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

/** UTF-8 bytes of the pieces together (their Content-Length). */
export function byteLengthOf(chunks: readonly string[]): number {
  let length = 0;
  for (const chunk of chunks) length += Buffer.byteLength(chunk, 'utf8');
  return length;
}

/** Ends `res` with the pieces of `chunks` (Content-Length is the caller's), corked: they leave in one write with the headers. */
export function endWithChunks(res: ServerResponse, chunks: string[]): void {
  if (chunks.length === 1) {
    res.end(chunks[0], 'utf8');
    return;
  }
  res.cork();
  for (let i = 0; i < chunks.length - 1; i++) res.write(chunks[i]!, 'utf8');
  res.end(chunks[chunks.length - 1], 'utf8');
  res.uncork();
}
