/**
 * The bytes a resource-version commitment covers: RFC 8785 (JSON Canonicalization Scheme) text of
 * the resource with the server-managed `meta.versionId` and `meta.lastUpdated` left out, so an
 * upstream server that rewrites them still verifies, and an emptied `meta` dropped (a server that
 * adds meta to a resource that had none changes nothing committed).
 *
 * The embedded repository stores exactly this text as the body, so a read hands the integrity
 * check ready bytes (see `canonicalTextOf` in src/repository/port.ts) and no read canonicalises.
 */
import { createHash, hash } from 'node:crypto';
import canonicalizeModule from 'canonicalize';
import type { Resource } from '@medplum/fhirtypes';

// A CommonJS module whose typings say `export default`: under NodeNext the default import is module.exports.
const canonicalize = canonicalizeModule as unknown as (input: unknown) => string | undefined;

/** RFC 8785 text of the resource without meta.versionId / meta.lastUpdated. */
export function canonicalResourceText(resource: Resource): string {
  const stripped = stripServerMeta(resource);
  const sorted = sortedCopy(stripped);
  const text = sorted === NOT_PLAIN ? canonicalize(stripped) : JSON.stringify(sorted);
  if (text === undefined) throw new TypeError('resource cannot be canonicalised');
  return text;
}

/** What sortedCopy answers for a value `canonicalize` must serialise itself. */
const NOT_PLAIN = Symbol('not plain JSON');
const ARRAY_INDEX = /^(?:0|[1-9]\d{0,9})$/;

/**
 * A copy of plain JSON data with every object's members in the order RFC 8785 writes them (sorted by
 * UTF-16 code units, as `canonicalize` sorts them), so that the native `JSON.stringify` of it is the
 * canonical text: ~3 times faster than `canonicalize`, which builds it one template string per
 * member (it was 7 % of a CGM reading's write). Anything whose native serialisation could differ
 * from `canonicalize`'s answers NOT_PLAIN, and the caller uses `canonicalize` itself: a number that
 * is not finite (it throws), a function, symbol or bigint, a `toJSON` method, a member name that is
 * an array index (an object holds those in numeric order, whatever the insertion order) or
 * `__proto__`, a hole in an array. test/unit/ledger/canonical.test.ts compares the two on random data.
 */
function sortedCopy(value: unknown): unknown {
  if (value === null) return value;
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return value;
    case 'number':
      return Number.isFinite(value) ? value : NOT_PLAIN;
    case 'object':
      break;
    default:
      return NOT_PLAIN;
  }
  if (typeof (value as { toJSON?: unknown }).toJSON === 'function') return NOT_PLAIN;
  if (Array.isArray(value)) {
    const out = new Array<unknown>(value.length);
    for (let i = 0; i < value.length; i++) {
      if (!(i in value)) return NOT_PLAIN; // a hole: canonicalize skips it (Array.reduce), JSON.stringify writes null
      const item = value[i] as unknown;
      // canonicalize writes undefined and symbols in an array as null, as JSON.stringify does
      const copy = item === undefined ? null : sortedCopy(item);
      if (copy === NOT_PLAIN) return NOT_PLAIN;
      out[i] = copy;
    }
    return out;
  }
  const keys = Object.keys(value).sort();
  const out: Record<string, unknown> = {};
  for (const key of keys) {
    if (key === '__proto__' || ARRAY_INDEX.test(key)) return NOT_PLAIN;
    const member = (value as Record<string, unknown>)[key];
    if (member === undefined) continue; // left out by both
    const copy = sortedCopy(member);
    if (copy === NOT_PLAIN) return NOT_PLAIN;
    out[key] = copy;
  }
  return out;
}

/** A shallow copy without the server-managed meta fields (the input is not changed). */
export function stripServerMeta<T extends Resource>(resource: T): T {
  if (!resource.meta) return resource;
  const { versionId: _v, lastUpdated: _l, ...meta } = resource.meta;
  const copy = { ...resource };
  if (Object.keys(meta).length) copy.meta = meta;
  else delete copy.meta;
  return copy;
}

let scratch = Buffer.alloc(64 * 1024);

/** The commitment of one version: SHA-256(salt ‖ canonical text). */
export function commitmentOf(salt: Buffer, canonicalText: string): Buffer {
  // salt and UTF-8 text written into one reusable buffer and hashed in one shot: ~25 % faster
  // than a Hash object fed twice (this runs for every resource a read returns).
  const max = 32 + canonicalText.length * 3;
  if (max > 1024 * 1024) return createHash('sha256').update(salt).update(canonicalText, 'utf8').digest();
  if (scratch.length < max) scratch = Buffer.alloc(max);
  salt.copy(scratch, 0, 0, 32);
  const n = scratch.write(canonicalText, 32, 'utf8');
  return hash('sha256', scratch.subarray(0, 32 + n), 'buffer');
}
