/** JSON with object keys sorted at every level: equal content gives equal text (for hashing and comparing). */
export function stableJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(stableJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const keys = Object.keys(value).filter((k) => (value as Record<string, unknown>)[k] !== undefined).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${stableJson((value as Record<string, unknown>)[k])}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/**
 * Whether two versions of a resource say the same: their content without id and meta (and any
 * `ignored` elements), compared as JSON — plain first (stored JSON usually keeps the writer's key
 * order), sorted keys to settle the rest.
 */
export function sameContent(stored: object, incoming: object, ignored: readonly string[] = []): boolean {
  const a = essence(stored, ignored);
  const b = essence(incoming, ignored);
  return JSON.stringify(a) === JSON.stringify(b) || stableJson(a) === stableJson(b);
}

function essence(resource: object, ignored: readonly string[]): Record<string, unknown> {
  const { id: _id, meta: _meta, ...rest } = resource as Record<string, unknown>;
  for (const key of ignored) delete rest[key];
  return rest;
}
