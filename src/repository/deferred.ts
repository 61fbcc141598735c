/**
 * Deferred resources: a version read from the embedded store whose text is parsed only as far as
 * someone reads it. A search answer that passes through the guards and out to the client would
 * otherwise be parsed from its stored text into objects and serialised back into nearly the same
 * text: on a patient-day of readings that round trip was ~3 ms of a ~13 ms answer
 * (`SearchOptions.deferred`).
 *
 * A deferred resource is a Proxy standing for exactly the object `parseStored` would build: the
 * stored canonical text (RFC 8785: members sorted, without meta.versionId and meta.lastUpdated, see
 * src/ledger/canonical.ts) with resourceType, id and meta first and meta completed from the row.
 * - Reading a top-level member parses that member's text alone, once: every read answers the
 *   same object.
 * - Anything else — a write, a delete, listing the keys (spread, `Object.keys`, `JSON.stringify` of
 *   the Proxy) — first builds the whole object, from the members read so far and the rest parsed
 *   now; from then on the Proxy forwards everything to it. It cannot be frozen.
 * - Its JSON text (`deferredJsonText`) is cut from the stored text as long as the whole object was
 *   never built: the text `JSON.stringify` writes of the object (the tests compare them). Like the
 *   canonical text the integrity check hashes (`attachCanonicalText`), it assumes that nobody
 *   changes a resource it read in place: callers copy first.
 * A stored text whose members would not read back the same one by one — top-level names an object
 * orders or treats differently (array-index-like, `__proto__`), holds twice or writes with escapes, meta stored with its
 * versionId (bodies written before canonical storage) or not an object, no resourceType or id, not
 * compact JSON — is built whole by `parse` at its first read; a text with array-index-like or
 * `__proto__` names anywhere is serialised from the built object.
 */
import type { Resource } from '@medplum/fhirtypes';

/** The row's side of a stored version: what the canonical text leaves out. */
export interface StoredVersionMeta {
  versionId: string;
  lastUpdated: string;
}

/**
 * Top-level members of a compact JSON object text, three numbers each: where the member begins (its
 * quoted name), where its value begins and where it ends.
 */
type Members = number[];

/**
 * Set by valueEndAt when a value it walked holds a member name that JSON.parse → object →
 * JSON.stringify would reorder or treat specially (array-index-like, `__proto__`); topLevelMembers
 * clears it first, and the handler keeps what the scan found (`special`). Found on the scan's own
 * walk: a regular expression over each text for it was ~0.3 ms of a 288-reading page.
 */
let sawSpecialName = false;
const OLD_FORMAT = '"versionId":';
const COMPLETED = '"lastUpdated":';
const OBJECT_PROTOTYPE = Object.prototype;

/**
 * Each deferred resource's handler, by the Proxy: a WeakMap look-up costs a fraction of a Proxy
 * trap, and every reader of a search answer (integrity check, serialisation) asks it per resource.
 */
const handlers = new WeakMap<object, DeferredHandler>();

function handlerOf(resource: object): DeferredHandler | undefined {
  return handlers.get(resource);
}

/**
 * A deferred resource for a stored canonical `text` and its row's `meta`; `parse` builds the whole
 * object the usual way (used when the text is not one to read member by member).
 */
export function deferredResource(text: string, meta: StoredVersionMeta, parse: () => Resource): Resource {
  const handler = new DeferredHandler(text, meta, parse);
  const resource = new Proxy({}, handler) as Resource;
  handlers.set(resource, handler);
  return resource;
}

/** True for a deferred resource (built or not). */
export function isDeferred(resource: object): boolean {
  return handlerOf(resource) !== undefined;
}

/**
 * The JSON text of a deferred resource whose whole object was never built, cut from its stored
 * text; undefined for anything else (serialise it as usual).
 */
export function deferredJsonText(resource: object): string | undefined {
  return handlerOf(resource)?.jsonText();
}

/**
 * The stored canonical text behind a deferred resource read member by member (what the integrity
 * check hashes); undefined for any other (see the built object's).
 */
export function deferredCanonicalText(resource: object): string | undefined {
  const handler = handlerOf(resource);
  return handler?.scanned() ? handler.text : undefined;
}

/** The object behind a deferred resource (built now if it was not); any other object itself. */
export function builtObjectOf(resource: object): object {
  return handlerOf(resource)?.whole() ?? resource;
}

/** meta.versionId, read without parsing anything of a deferred resource. */
export function versionIdOf(resource: Resource): string | undefined {
  const handler = handlerOf(resource);
  if (handler?.scanned()) return handler.meta.versionId;
  return resource.meta?.versionId;
}

class DeferredHandler implements ProxyHandler<object> {
  /** The whole object, once built: every trap forwards to it from then on. */
  built: Record<string | symbol, unknown> | undefined;
  /** The stored text's top-level members (topLevelMembers), once scanned. */
  private members: Members | undefined;
  /** The scan met a member name further in that an object would reorder or treat specially (sawSpecialName). */
  private special = false;
  /** Where in `members` resourceType, id and meta are (meta: -1 when absent), found with them. */
  private leading: { resourceType: number; id: number; meta: number } | undefined;
  /** Member values parsed so far, by name (the objects handed out; the whole object reuses them). */
  private values: Map<string, unknown> | undefined;

  constructor(readonly text: string, readonly meta: StoredVersionMeta, private readonly parse: () => Resource) {}

  get(_target: object, key: string | symbol, receiver: unknown): unknown {
    if (this.built) return Reflect.get(this.built, key);
    if (typeof key === 'string') {
      const members = this.scanned();
      if (!members) return Reflect.get(this.built!, key);
      const values = this.values ??= new Map();
      const known = values.get(key);
      if (known !== undefined || values.has(key)) return known;
      if (key === 'meta') return remember(values, key, this.metaValue(members));
      const at = memberIndex(this.text, members, key);
      if (at >= 0) return remember(values, key, JSON.parse(this.text.slice(members[at + 1]!, members[at + 2]!)));
    }
    return Reflect.get(OBJECT_PROTOTYPE, key, receiver);
  }

  has(_target: object, key: string | symbol): boolean {
    if (!this.built && typeof key === 'string') {
      const members = this.scanned();
      if (members && (key === 'meta' || memberIndex(this.text, members, key) >= 0)) return true;
    }
    return key in (this.built ?? OBJECT_PROTOTYPE);
  }

  set(_target: object, key: string | symbol, value: unknown): boolean {
    return Reflect.set(this.whole(), key, value);
  }

  deleteProperty(_target: object, key: string | symbol): boolean {
    return Reflect.deleteProperty(this.whole(), key);
  }

  defineProperty(_target: object, key: string | symbol, descriptor: PropertyDescriptor): boolean {
    return Reflect.defineProperty(this.whole(), key, descriptor);
  }

  ownKeys(): (string | symbol)[] {
    return Reflect.ownKeys(this.whole());
  }

  getOwnPropertyDescriptor(_target: object, key: string | symbol): PropertyDescriptor | undefined {
    return Reflect.getOwnPropertyDescriptor(this.whole(), key);
  }

  getPrototypeOf(): object | null {
    return this.built ? Reflect.getPrototypeOf(this.built) : OBJECT_PROTOTYPE;
  }

  setPrototypeOf(): boolean {
    return false;
  }

  isExtensible(): boolean {
    return true;
  }

  /** A deferred resource cannot be frozen or sealed (copy it first). */
  preventExtensions(): boolean {
    return false;
  }

  jsonText(): string | undefined {
    if (this.built) return undefined;
    const members = this.scanned();
    const text = this.text;
    if (!members || this.special) return undefined;
    const { resourceType, id, meta } = this.leading!;
    let out = `{"resourceType":${text.slice(members[resourceType + 1]!, members[resourceType + 2]!)},"id":${text.slice(members[id + 1]!, members[id + 2]!)},"meta":`;
    const tail = `"versionId":${JSON.stringify(this.meta.versionId)},"lastUpdated":${JSON.stringify(this.meta.lastUpdated)}}`;
    out += meta < 0 || members[meta + 2]! - members[meta + 1]! === 2 ? `{${tail}` : `${text.slice(members[meta + 1]!, members[meta + 2]! - 1)},${tail}`;
    for (let m = 0; m < members.length; m += 3) {
      if (m !== resourceType && m !== id && m !== meta) out += `,${text.slice(members[m]!, members[m + 2]!)}`;
    }
    return `${out}}`;
  }

  /** The whole object, as parseStored builds it, reusing the member values handed out so far. */
  whole(): Record<string | symbol, unknown> {
    if (this.built) return this.built;
    const members = this.scanned();
    if (!members) return this.built!;
    const text = this.text;
    const values = this.values ?? new Map<string, unknown>();
    const value = (m: number): unknown => {
      const name = memberName(text, members, m);
      return values.has(name) ? values.get(name) : JSON.parse(text.slice(members[m + 1]!, members[m + 2]!));
    };
    const { resourceType, id, meta } = this.leading!;
    const out: Record<string, unknown> = {
      resourceType: value(resourceType),
      id: value(id),
      meta: values.has('meta') ? values.get('meta') : this.metaValue(members),
    };
    for (let m = 0; m < members.length; m += 3) {
      if (m !== resourceType && m !== id && m !== meta) out[memberName(text, members, m)] = value(m);
    }
    this.built = out;
    this.values = undefined;
    return out;
  }

  /**
   * The stored text's top-level members while the whole object is not built; undefined once it is,
   * or when the text is not one to read member by member (see the module comment): the whole object
   * is then built by `parse`.
   */
  scanned(): Members | undefined {
    if (this.built) return undefined;
    if (this.members === undefined) {
      const text = this.text;
      const members = topLevelMembers(text);
      const leading = members && { resourceType: memberIndex(text, members, 'resourceType'), id: memberIndex(text, members, 'id'), meta: memberIndex(text, members, 'meta') };
      const metaText = leading && leading.meta >= 0 ? text.slice(members![leading.meta + 1]!, members![leading.meta + 2]!) : '{}';
      if (!members || !leading || leading.resourceType < 0 || leading.id < 0 ||
        metaText.charCodeAt(0) !== 0x7b || metaText.includes(OLD_FORMAT) || metaText.includes(COMPLETED)) {
        this.built = this.parse() as unknown as Record<string, unknown>;
        return undefined;
      }
      this.members = members;
      this.special = sawSpecialName;
      this.leading = leading;
    }
    return this.members;
  }

  private metaValue(members: Members): unknown {
    const meta = this.leading!.meta;
    const stored = meta >= 0 ? JSON.parse(this.text.slice(members[meta + 1]!, members[meta + 2]!)) as object : undefined;
    return { ...stored, versionId: this.meta.versionId, lastUpdated: this.meta.lastUpdated };
  }
}

function remember(values: Map<string, unknown>, key: string, value: unknown): unknown {
  values.set(key, value);
  return value;
}

/** Where in `members` the member named `name` is (a multiple of 3), or -1. */
function memberIndex(text: string, members: Members, name: string): number {
  for (let m = 0; m < members.length; m += 3) {
    const start = members[m]!;
    // `"name":` and nothing else between the quotes (a name written with escapes never matches)
    if (members[m + 1]! - start === name.length + 3 && text.startsWith(name, start + 1)) return m;
  }
  return -1;
}

function memberName(text: string, members: Members, m: number): string {
  return text.slice(members[m]! + 1, members[m + 1]! - 2);
}

/**
 * The top-level members of a compact JSON object text (no whitespace, as JSON.stringify and RFC
 * 8785 write it), or undefined when the text is not one, or has a top-level name an object would
 * order or treat differently (array-index-like, `__proto__`), written with escapes, or twice.
 */
function topLevelMembers(text: string): Members | undefined {
  sawSpecialName = false;
  const length = text.length;
  if (text.charCodeAt(0) !== 0x7b || text.charCodeAt(length - 1) !== 0x7d) return undefined;
  const out: Members = [];
  if (length === 2) return out;
  let i = 1;
  for (;;) {
    if (text.charCodeAt(i) !== 0x22) return undefined;
    const nameEnd = plainNameEnd(text, i);
    if (nameEnd < 0 || text.charCodeAt(nameEnd) !== 0x3a) return undefined;
    const first = text.charCodeAt(i + 1);
    if ((first >= 0x30 && first <= 0x39) || text.startsWith('"__proto__"', i)) return undefined;
    const valueStart = nameEnd + 1;
    const end = valueEndAt(text, valueStart);
    if (end < 0) return undefined;
    out.push(i, valueStart, end);
    const next = text.charCodeAt(end);
    if (next === 0x2c) {
      i = end + 1;
      continue;
    }
    if (next !== 0x7d || end !== length - 1) return undefined;
    for (let a = 0; a < out.length; a += 3) {
      for (let b = a + 3; b < out.length; b += 3) if (sameText(text, out[a]!, out[a + 1]!, out[b]!, out[b + 1]!)) return undefined;
    }
    return out;
  }
}

function sameText(text: string, a: number, aEnd: number, b: number, bEnd: number): boolean {
  if (aEnd - a !== bEnd - b) return false;
  for (let i = 0; i < aEnd - a; i++) if (text.charCodeAt(a + i) !== text.charCodeAt(b + i)) return false;
  return true;
}

/** Index just past the name starting at `quote` (its opening quote), or -1 (also for a name written with escapes). */
function plainNameEnd(text: string, quote: number): number {
  const length = text.length;
  for (let i = quote + 1; i < length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22) return i + 1;
    if (c === 0x5c) return -1;
  }
  return -1;
}

/**
 * Index just past the string starting at `quote` (its opening quote), or -1. Strings are most of a
 * resource's text: the next quote is found by `indexOf` (not character by character, ~2× slower
 * over a reading), and is the closing one unless an odd number of backslashes escapes it.
 */
function stringEnd(text: string, quote: number): number {
  let from = quote + 1;
  for (;;) {
    const at = text.indexOf('"', from);
    if (at < 0) return -1;
    let before = at - 1;
    while (text.charCodeAt(before) === 0x5c) before--; // stops at the opening quote at the latest
    if ((at - 1 - before) % 2 === 0) return at + 1;
    from = at + 1;
  }
}

/**
 * True when the name between `from` and `to` (inside its quotes, as written) is one an object holds
 * apart: array-index-like (digits only; a canonical text writes digits unescaped) or `__proto__`.
 */
function isSpecialName(text: string, from: number, to: number): boolean {
  const first = text.charCodeAt(from);
  if (first === 0x5f) return to - from === 9 && text.startsWith('__proto__', from);
  if (first < 0x30 || first > 0x39) return false;
  for (let i = from + 1; i < to; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x30 || c > 0x39) return false;
  }
  return true;
}

/** Index just past the value starting at `start`, or -1. */
function valueEndAt(text: string, start: number): number {
  const c = text.charCodeAt(start);
  if (c === 0x22) return stringEnd(text, start);
  const length = text.length;
  if (c === 0x7b || c === 0x5b) {
    let depth = 0;
    for (let i = start; i < length; i++) {
      const ch = text.charCodeAt(i);
      if (ch === 0x22) {
        const end = stringEnd(text, i);
        if (end < 0) return -1;
        if (text.charCodeAt(end) === 0x3a && !sawSpecialName && isSpecialName(text, i + 1, end - 1)) sawSpecialName = true;
        i = end - 1;
      } else if (ch === 0x7b || ch === 0x5b) {
        depth++;
      } else if ((ch === 0x7d || ch === 0x5d) && --depth === 0) {
        return i + 1;
      }
    }
    return -1;
  }
  let i = start;
  while (i < length) {
    const ch = text.charCodeAt(i);
    if (ch === 0x2c || ch === 0x7d || ch === 0x5d) break;
    i++;
  }
  return i > start ? i : -1;
}
