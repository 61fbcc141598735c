/**
 * A deferred resource (src/repository/deferred.ts) must behave exactly as the object the embedded
 * store builds from the same stored text (`parseStored`): the same members read one by one, the
 * same keys, the same JSON text (cut from the stored text), the same answers to writes, on the
 * IG's examples, on random resources and on texts it must not read member by member.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from '@jest/globals';
import type { Resource } from '@medplum/fhirtypes';
import fc from 'fast-check';
import { canonicalResourceText } from '../../../src/ledger/canonical.js';
import { builtObjectOf, deferredJsonText, deferredResource, isDeferred, versionIdOf } from '../../../src/repository/deferred.js';
import { parseStored } from '../../../src/repository/embedded/index.js';
import { canonicalTextOf, jsonTextOf } from '../../../src/repository/port.js';

const ROW = { version: 7, last_updated: Date.parse('2026-03-04T05:06:07.089Z') };
const META = { versionId: '7', lastUpdated: '2026-03-04T05:06:07.089Z' };

/** The stored text of a resource (what the embedded store writes) and both readings of it. */
function both(text: string): { deferred: Resource; parsed: Resource } {
  let parses = 0;
  const deferred = deferredResource(text, META, () => {
    parses++;
    return parseStored(text, ROW);
  });
  expect(parses).toBe(0);
  return { deferred, parsed: parseStored(text, ROW) };
}

/** Everything observable of the deferred one matches the parsed one; `cut`: its JSON comes from the stored text. */
function expectSame(text: string, cut: boolean): void {
  const { deferred, parsed } = both(text);
  expect(isDeferred(deferred)).toBe(true);
  expect(isDeferred(parsed)).toBe(false);
  expect(versionIdOf(deferred)).toBe(parsed.meta?.versionId);
  expect(canonicalTextOf(deferred)).toBe(canonicalTextOf(parsed));
  // the text cut from the stored one is JSON.stringify's text of the object
  if (cut) expect(deferredJsonText(deferred)).toBe(JSON.stringify(parsed));
  expect(jsonTextOf(deferred)).toBe(JSON.stringify(parsed));
  // member by member, then as a whole
  for (const key of Object.keys(parsed)) {
    expect(key in deferred).toBe(true);
    expect((deferred as unknown as Record<string, unknown>)[key]).toEqual((parsed as unknown as Record<string, unknown>)[key]);
  }
  expect('noSuchMember' in deferred).toBe(false);
  expect((deferred as unknown as Record<string, unknown>).noSuchMember).toBeUndefined();
  expect(Object.keys(deferred)).toEqual(Object.keys(parsed));
  expect(JSON.stringify(deferred)).toBe(JSON.stringify(parsed));
  expect({ ...deferred }).toEqual(parsed);
}

const IG_DIR = path.join(import.meta.dirname, '../../fixtures/cgm-ig');

describe('deferred resources', () => {
  it('read, list and serialise every IG example as the parsed object does', () => {
    const files = readdirSync(IG_DIR).filter((f) => f.endsWith('.json'));
    expect(files.length).toBeGreaterThan(5);
    for (const file of files) {
      const resource = JSON.parse(readFileSync(path.join(IG_DIR, file), 'utf8')) as Resource;
      expectSame(canonicalResourceText({ ...resource, id: resource.id ?? 'x' }), true);
    }
  });

  it('hand out each member once: the same object on every read, kept when the whole object is built', () => {
    const text = canonicalResourceText({ resourceType: 'Observation', id: 'a', status: 'final', code: { text: 'glucose' }, subject: { reference: 'Patient/p' } } as Resource);
    const { deferred } = both(text);
    const r = deferred as Resource & { code: { text: string }; subject: object };
    const code = r.code;
    expect(r.code).toBe(code);
    expect(deferredJsonText(r)).toBeDefined();
    // a write builds the whole object (from the members read so far) and is seen from then on
    (r as { status: string }).status = 'amended';
    expect(r.code).toBe(code);
    expect((r as { status?: string }).status).toBe('amended');
    expect(deferredJsonText(r)).toBeUndefined();
    expect(JSON.parse(jsonTextOf(r))).toMatchObject({ status: 'amended', code: { text: 'glucose' } });
    expect(builtObjectOf(r)).not.toBe(r);
    delete (r as { subject?: object }).subject;
    expect('subject' in r).toBe(false);
    expect(Object.keys(r)).toEqual(['resourceType', 'id', 'meta', 'code', 'status']);
  });

  it('cannot be frozen or structured-cloned (callers copy first), and answers Object.prototype like a plain object', () => {
    const { deferred } = both(canonicalResourceText({ resourceType: 'Patient', id: 'p' } as Resource));
    expect(() => Object.freeze(deferred)).toThrow(TypeError);
    expect(() => structuredClone(deferred)).toThrow();
    expect(structuredClone({ ...deferred })).toEqual(parseStored(canonicalResourceText({ resourceType: 'Patient', id: 'p' } as Resource), ROW));
    expect(Object.getPrototypeOf(deferred)).toBe(Object.prototype);
    expect(Object.prototype.hasOwnProperty.call(deferred, 'id')).toBe(true);
    expect(String(deferred)).toBe('[object Object]');
    expect(deferred instanceof Object).toBe(true);
    expect('toString' in deferred).toBe(true);
  });

  it('read texts it cannot take member by member through the parsed object, and serialise those with special names from it', () => {
    const cases: [string, boolean][] = [
      // top-level names an object orders or treats differently, names with escapes, a name twice
      ['{"0":1,"id":"a","resourceType":"Basic"}', false],
      ['{"__proto__":{"x":1},"id":"a","resourceType":"Basic"}', false],
      ['{"a\\"b":1,"id":"a","resourceType":"Basic"}', false],
      ['{"id":"a","id":"b","resourceType":"Basic"}', false],
      // array-index-like or __proto__ names further in: read member by member, serialised from the object
      ['{"code":{"10":1,"9":2},"id":"a","resourceType":"Basic"}', false],
      ['{"code":{"__proto__":2},"id":"a","resourceType":"Basic"}', false],
      // stored before canonical storage (meta with its versionId), meta completed already, meta not an object
      ['{"resourceType":"Basic","id":"a","meta":{"versionId":"3","lastUpdated":"2020-01-01T00:00:00Z"}}', false],
      ['{"id":"a","meta":{"lastUpdated":"2020-01-01T00:00:00Z"},"resourceType":"Basic"}', false],
      ['{"id":"a","meta":"m","resourceType":"Basic"}', false],
      // no id, not compact
      ['{"resourceType":"Basic"}', false],
      ['{ "id": "a", "resourceType": "Basic" }', false],
      // plain ones, for contrast: empty meta, strings with escapes and brackets, numbers
      ['{"id":"a","meta":{},"resourceType":"Basic"}', true],
      ['{"code":{"text":"a \\"}],{[\\\\"},"id":"a","n":[1.5e-7,-0.25,1e+21,{"x":[[]]}],"resourceType":"Basic","z":null}', true],
    ];
    for (const [text, cut] of cases) {
      expectSame(text, cut);
      if (!cut) expect(deferredJsonText(both(text).deferred)).toBeUndefined();
    }
  });

  it('match the parsed object on random resources', () => {
    const name = fc.oneof(fc.constantFrom('code', 'status', 'meta', 'subject', 'text', 'value', 'contained', 'a"b', 'é', '10', '9', '__proto__', 'x\\y'), fc.string({ maxLength: 5 }));
    const leaf = fc.oneof(fc.constant(null), fc.boolean(), fc.double({ noNaN: true, noDefaultInfinity: true }), fc.integer(),
      fc.string({ maxLength: 6 }), fc.constantFrom('"', '\\', '}', ']', '{"a":1}', '\u2028', '\ud800', 'é'));
    const { tree } = fc.letrec<{ tree: unknown }>((tie) => ({
      tree: fc.oneof({ depthSize: 'small' }, leaf, fc.array(tie('tree'), { maxLength: 3 }), fc.dictionary(name, tie('tree'), { maxKeys: 4 })),
    }));
    const resource = fc.record({
      body: fc.dictionary(name, tree, { maxKeys: 6 }),
      meta: fc.option(fc.dictionary(fc.constantFrom('profile', 'security', 'tag', 'source', 'x'), tree, { maxKeys: 3 })),
      id: fc.stringMatching(/^[A-Za-z0-9\-.]{1,12}$/),
    }).map(({ body, meta, id }) => ({ ...(body as object), resourceType: 'Observation', id, ...(meta ? { meta } : {}) }) as Resource);
    let cut = 0;
    fc.assert(fc.property(resource, (r) => {
      const text = canonicalResourceText(r);
      const top = JSON.parse(text) as { meta?: unknown };
      const meta = top.meta;
      // top-level names written with escapes, or starting with a digit (taken as possibly array-index-like), are read whole
      const escapedName = Object.keys(top).some((k) => JSON.stringify(k) !== `"${k}"` || /^\d/.test(k));
      const plain = !/"(?:\d+|__proto__)":/.test(text) && !text.includes('"versionId":') && !text.includes('"lastUpdated":')
        && (meta === undefined || (typeof meta === 'object' && meta !== null && !Array.isArray(meta)));
      const { deferred, parsed } = both(text);
      const direct = deferredJsonText(deferred);
      if (direct !== undefined) cut++;
      // every plain text is cut from the stored one, and then always as JSON.stringify writes the object
      if (plain && !escapedName) expect(direct).toBeDefined();
      if (direct !== undefined) expect(direct).toBe(JSON.stringify(parsed));
      expectSame(text, direct !== undefined);
    }), { numRuns: 1500, seed: 20261205 });
    expect(cut).toBeGreaterThan(300);
  });
});
