/**
 * The embedded repository's decoded-version cache (src/repository/embedded/decoded-cache.ts): a
 * version read again is served from it only while the row on disk holds the very ciphertext it was
 * decoded from and the patient's key exists; what it serves cannot be changed by a caller; and the
 * ids the repository assigns are time-ordered (ids.ts).
 */
import { afterEach, beforeEach, describe, expect, it } from '@jest/globals';
import { parseSearchRequest } from '@medplum/core';
import type { Observation, Patient } from '@medplum/fhirtypes';
import Database from 'better-sqlite3';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { DecodedCache } from '../../../src/repository/embedded/decoded-cache.js';
import { EmbeddedRepository } from '../../../src/repository/embedded/index.js';
import { isDeferred } from '../../../src/repository/deferred.js';
import { isImmutable, jsonTextOf } from '../../../src/repository/port.js';

let dataDir: string;
let repo: EmbeddedRepository;

beforeEach(async () => {
  dataDir = mkdtempSync(path.join(tmpdir(), 'gg-readcache-'));
  repo = await EmbeddedRepository.open({ dataDir });
});

afterEach(async () => {
  await repo.close();
  rmSync(dataDir, { recursive: true, force: true });
});

function reading(patient: string, minute: number): Observation {
  return {
    resourceType: 'Observation',
    status: 'final',
    code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] },
    subject: { reference: `Patient/${patient}` },
    effectiveDateTime: new Date(Date.parse('2026-03-01T00:00:00Z') + minute * 60_000).toISOString(),
    valueQuantity: { value: 100 + minute, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
  };
}

/** Flips one byte of the stored ciphertext of `id`, through a connection of its own (as someone editing the file would). */
function tamperStoredBody(id: string): void {
  const db = new Database(path.join(dataDir, 'store', 'glucoguard.db'));
  try {
    const row = db.prepare<[string], { seq: number; body: Buffer }>('SELECT seq, body FROM versions WHERE id = ?').get(id)!;
    const tampered = Buffer.from(row.body);
    tampered[20] = tampered[20]! ^ 0xff;
    db.prepare('UPDATE versions SET body = ? WHERE seq = ?').run(tampered, row.seq);
  } finally {
    db.close();
  }
}

describe('decoded-version cache', () => {
  it('with deferred reads: defers a version read the first time, caches it at the second, serves it from the cache after', async () => {
    const created = [];
    for (let i = 0; i < 3; i++) created.push((await repo.create(reading('p1', i))).resource);
    const query = parseSearchRequest('Observation?patient=Patient/p1&date=ge2026-03-01&date=lt2026-03-02');
    const first = (await repo.search(query, { deferred: true })).resources;
    expect(first.map((r) => isDeferred(r))).toEqual([true, true, true]);
    expect(repo.decoded.count).toBe(0);
    const second = (await repo.search(query, { deferred: true })).resources;
    expect(second.map((r) => isDeferred(r) || !isImmutable(r))).toEqual([false, false, false]);
    expect(repo.decoded.count).toBe(3);
    const third = (await repo.search(query, { deferred: true })).resources;
    third.forEach((r, i) => expect(r).toBe(second[i]));
    expect(second.map((r) => JSON.stringify(r))).toEqual(first.map((r) => jsonTextOf(r)));
    expect(second.map((r) => r.id)).toEqual(created.map((r) => r.id));
    // a filter the index does not prove is matched on the parsed resource: nothing deferred
    repo.decoded.clear();
    const matched = (await repo.search(parseSearchRequest('Observation?patient=Patient/p1&value-quantity=gt100'), { deferred: true })).resources;
    expect(matched.length).toBe(2);
    expect(matched.some((r) => isDeferred(r))).toBe(false);
  });

  it('keeps a version from its second read on and answers later reads from the cache, equal to the first', async () => {
    const { resource } = await repo.create(reading('p1', 0));
    const first = await repo.read<Observation>('Observation', resource.id!);
    expect(repo.decoded.count).toBe(0);
    const second = await repo.read<Observation>('Observation', resource.id!);
    expect(repo.decoded.count).toBe(1);
    const hitsBefore = repo.decoded.hits;
    const third = await repo.read<Observation>('Observation', resource.id!);
    expect(repo.decoded.hits).toBe(hitsBefore + 1);
    expect(third).toBe(second);
    expect(third).toEqual(first);
    expect(third).toEqual(resource);
  });

  it('serves what searches found before from the cache, and a new version is decoded afresh', async () => {
    for (let m = 0; m < 5; m++) await repo.create(reading('p1', m));
    const query = parseSearchRequest('Observation?patient=Patient/p1&_count=10');
    const a = await repo.search(query);
    await repo.search(query);
    const hits = repo.decoded.hits;
    const b = await repo.search(query);
    expect(repo.decoded.hits).toBe(hits + 5);
    expect(b.resources).toEqual(a.resources);
    const changed = await repo.update({ ...(a.resources[0] as Observation), status: 'amended' });
    const c = await repo.search(query);
    const again = c.resources.find((r) => r.id === changed.resource.id) as Observation;
    expect(again.status).toBe('amended');
    expect(again.meta?.versionId).toBe('2');
  });

  it('hands out objects no caller can change', async () => {
    const { resource } = await repo.create(reading('p1', 0));
    await repo.read<Observation>('Observation', resource.id!);
    const read = await repo.read<Observation>('Observation', resource.id!);
    expect(repo.decoded.count).toBe(1);
    expect(() => { (read as { status: string }).status = 'cancelled'; }).toThrow(TypeError);
    expect(() => { read.valueQuantity!.value = 999; }).toThrow(TypeError);
    expect((await repo.read<Observation>('Observation', resource.id!)).valueQuantity?.value).toBe(100);
  });

  it('keeps the JSON text of a cached version with it, and only of immutable objects', async () => {
    const { resource } = await repo.create(reading('p1', 0));
    const first = await repo.read<Observation>('Observation', resource.id!);
    expect(isImmutable(first)).toBe(false);
    const text = jsonTextOf(first);
    (first as { status: string }).status = 'amended'; // a caller's own copy: its text is not kept
    expect(jsonTextOf(first)).toBe(JSON.stringify(first));
    expect(jsonTextOf(first)).not.toBe(text);
    const cached = await repo.read<Observation>('Observation', resource.id!);
    expect(isImmutable(cached)).toBe(true);
    expect(jsonTextOf(cached)).toBe(text);
    expect(jsonTextOf(await repo.read<Observation>('Observation', resource.id!))).toBe(text);
  });

  it('does not serve a row whose ciphertext changed on disk: it is decrypted again and fails', async () => {
    const { resource } = await repo.create(reading('p1', 0));
    await repo.read('Observation', resource.id!);
    await repo.read('Observation', resource.id!);
    expect(repo.decoded.count).toBe(1);
    tamperStoredBody(resource.id!);
    await expect(repo.read('Observation', resource.id!)).rejects.toMatchObject({ code: 'ERR_GONE' });
  });

  it('reads cached rows without their bodies once the cache answers most reads, and drops it all when another connection commits', async () => {
    for (let m = 0; m < 30; m++) await repo.create(reading('p1', m));
    const query = parseSearchRequest('Observation?patient=Patient/p1&_count=50');
    const first = await repo.search(query);
    for (let i = 0; i < 6; i++) await repo.search(query); // admitted, then answered from the cache
    expect(repo.decoded.recentHitRate).toBeGreaterThan(0.5);
    const light = await repo.search(query);
    expect(light.resources).toEqual(first.resources);
    // another connection rewrites one stored body: the next search must not answer from memory
    const target = first.resources[3]!;
    tamperStoredBody(target.id!);
    const after = await repo.search(query);
    expect(after.resources.map((r) => r.id)).not.toContain(target.id);
    expect(after.resources).toHaveLength(29);
  });

  it('keeps nothing a write transaction read (it may be rolled back)', async () => {
    await repo.create(reading('p1', 0));
    const bundle = {
      resourceType: 'Bundle' as const, type: 'transaction' as const,
      entry: [
        { request: { method: 'POST' as const, url: 'Observation', ifNoneExist: 'patient=Patient/p1' }, resource: reading('p1', 1) },
        { request: { method: 'POST' as const, url: 'Observation', ifNoneExist: 'patient=Patient/p1' }, resource: reading('p1', 2) },
      ],
    };
    await repo.transaction(bundle);
    expect(repo.decoded.count).toBe(0);
  });

  it('serves nothing of an erased patient, though it was cached', async () => {
    const patient = (await repo.create<Patient>({ resourceType: 'Patient', name: [{ family: 'Erased' }] })).resource;
    const { resource } = await repo.create(reading(patient.id!, 0));
    await repo.read('Observation', resource.id!);
    await repo.read('Observation', resource.id!);
    expect(repo.decoded.count).toBe(1);
    await repo.eraseSubject(patient.id!);
    expect(repo.decoded.count).toBe(0);
    await expect(repo.read('Observation', resource.id!)).rejects.toMatchObject({ code: 'ERR_GONE' });
  });

  it('stays within its byte budget, dropping the oldest entries', () => {
    const cache = new DecodedCache(128 * 1024);
    const body = Buffer.alloc(1000, 7);
    for (let seq = 1; seq <= 100; seq++) cache.set(seq, Buffer.from(body), { resourceType: 'Basic', id: String(seq) } as never);
    expect(cache.bytes).toBeLessThanOrEqual(128 * 1024);
    expect(cache.get(100, body)).toBeDefined();
    expect(cache.get(1, body)).toBeUndefined();
    expect(cache.get(100, Buffer.alloc(1000, 8))).toBeUndefined();
  });

  it('can be turned off', async () => {
    const off = await EmbeddedRepository.open({ dataDir: mkdtempSync(path.join(tmpdir(), 'gg-readcache-off-')), readCacheBytes: 0 });
    try {
      const { resource } = await off.create(reading('p1', 0));
      await off.read('Observation', resource.id!);
      const a = await off.read('Observation', resource.id!);
      const b = await off.read('Observation', resource.id!);
      expect(a).not.toBe(b);
      expect(off.decoded.count).toBe(0);
    } finally {
      await off.close();
    }
  });
});

describe('assigned ids', () => {
  it('are UUIDv7, in creation order', async () => {
    const ids: string[] = [];
    for (let m = 0; m < 50; m++) ids.push((await repo.create(reading('p1', m))).resource.id!);
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect([...ids].sort()).toEqual(ids);
  });
});
