import { afterEach, beforeEach, describe, expect, it } from '@jest/globals';
import { parseSearchRequest } from '@medplum/core';
import type { AuditEvent, Bundle, Device, DiagnosticReport, Observation, Patient, Resource } from '@medplum/fhirtypes';
import Database from 'better-sqlite3';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { isGlucoGuardError } from '../../../src/errors.js';
import type { ErrorCode } from '../../../src/errors.js';
import { EmbeddedRepository } from '../../../src/repository/embedded/index.js';
import { KeyRing, openText, seal } from '../../../src/repository/embedded/keys.js';
import { loadServerKeys } from '../../../src/keys.js';
import { INDEX_GENERATION, systemTokenKey, tokenKey } from '../../../src/repository/embedded/params.js';

let dataDir: string;
let repo: EmbeddedRepository;

beforeEach(async () => {
  dataDir = mkdtempSync(path.join(tmpdir(), 'gg-embedded-'));
  repo = await EmbeddedRepository.open({ dataDir });
});

afterEach(async () => {
  await repo.close();
  rmSync(dataDir, { recursive: true, force: true });
});

/**
 * Seals the current row of `id` again as code before session 25 did, with type/id/version alone as
 * additional data (the store closed); answers its seq.
 */
function sealedUnbound(id: string): number {
  const db = new Database(path.join(dataDir, 'store', 'glucoguard.db'));
  try {
    const { master, root } = loadServerKeys({ dataDir });
    const ring = new KeyRing(db, Buffer.from(master, 'base64'), Buffer.from(root, 'base64'));
    const row = db.prepare('SELECT seq, type, id, version, last_updated, key_id, key_version, body FROM versions WHERE id = ? AND current = 1').get(id) as
      { seq: number; type: string; id: string; version: number; last_updated: number; key_id: string; key_version: number; body: Buffer };
    const key = ring.keyById(row.key_id, row.key_version)!;
    const text = openText(key, row.body, `${row.type}/${row.id}/${row.version}/${row.last_updated}`);
    if (text === undefined) throw new Error('the row did not open with its bound additional data');
    db.prepare('UPDATE versions SET body = ? WHERE seq = ?').run(seal(key, Buffer.from(text), `${row.type}/${row.id}/${row.version}`), row.seq);
    return row.seq;
  } finally {
    db.close();
  }
}


async function rejectsWith(promise: Promise<unknown>, code: ErrorCode): Promise<void> {
  const err = await promise.then(() => undefined, (e: unknown) => e);
  if (!isGlucoGuardError(err, code)) throw new Error(`expected ${code}, got ${err instanceof Error ? err.message : String(err)}`);
}

const search = (query: string) => repo.search(parseSearchRequest(query));
const ids = (resources: Resource[]): string[] => resources.map((r) => r.id!);

function observation(patient: string, effective: string, extra: Partial<Observation> = {}): Observation {
  return {
    resourceType: 'Observation',
    status: 'final',
    category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'laboratory' }] }],
    code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] },
    subject: { reference: `Patient/${patient}` },
    device: { reference: 'Device/cgm-1' },
    effectiveDateTime: effective,
    valueQuantity: { value: 120, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
    ...extra,
  };
}

/** Every byte the store keeps on disk (database, WAL, shared memory). */
function storeBytes(): Buffer {
  const dir = path.join(dataDir, 'store');
  return Buffer.concat(readdirSync(dir).map((f) => readFileSync(path.join(dir, f))));
}

describe('create, read, update, delete and versions', () => {
  it('assigns a uuid id, versionId 1 and lastUpdated on create, ignoring a client id', async () => {
    const { resource, outcome } = await repo.create<Patient>({ resourceType: 'Patient', id: 'client-chosen', gender: 'female' });
    expect(outcome).toBe('created');
    expect(resource.id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    expect(resource.meta?.versionId).toBe('1');
    expect(Date.parse(resource.meta!.lastUpdated!)).toBeGreaterThan(Date.now() - 60_000);
    await expect(repo.read('Patient', resource.id!)).resolves.toEqual(resource);
  });

  it('keeps every version; read answers the newest, vread any', async () => {
    const { resource } = await repo.create<Patient>({ resourceType: 'Patient', gender: 'female' });
    const v2 = await repo.update<Patient>({ ...resource, gender: 'other' });
    expect(v2.outcome).toBe('updated');
    expect(v2.resource.meta?.versionId).toBe('2');
    expect((await repo.read<Patient>('Patient', resource.id!)).gender).toBe('other');
    expect((await repo.vread<Patient>('Patient', resource.id!, '1')).gender).toBe('female');
    expect((await repo.vread<Patient>('Patient', resource.id!, '2')).gender).toBe('other');
    await rejectsWith(repo.vread('Patient', resource.id!, '3'), 'ERR_NOT_FOUND');
    await rejectsWith(repo.read('Patient', 'no-such-id'), 'ERR_NOT_FOUND');
  });

  it('delete makes a deletion version: read and vread of it answer gone; deleting again is a no-op', async () => {
    const { resource } = await repo.create<Patient>({ resourceType: 'Patient' });
    await repo.delete('Patient', resource.id!);
    await rejectsWith(repo.read('Patient', resource.id!), 'ERR_GONE');
    await rejectsWith(repo.vread('Patient', resource.id!, '2'), 'ERR_GONE');
    await expect(repo.vread('Patient', resource.id!, '1')).resolves.toMatchObject({ id: resource.id });
    await repo.delete('Patient', resource.id!);
    await repo.delete('Patient', 'never-existed');
    const history = await repo.history({ resourceType: 'Patient', id: resource.id!, count: 10, offset: 0 });
    expect(history.entries.map((e) => [e.versionId, e.method])).toEqual([['2', 'DELETE'], ['1', 'POST']]);
    expect((await search('Patient')).resources).toEqual([]);
  });

  it('update-as-create keeps the client id; an update after a delete revives the resource', async () => {
    const created = await repo.update<Patient>({ resourceType: 'Patient', id: 'mrn-42', gender: 'male' });
    expect(created.outcome).toBe('created');
    expect(created.resource.meta?.versionId).toBe('1');
    await repo.delete('Patient', 'mrn-42');
    const revived = await repo.update<Patient>({ resourceType: 'Patient', id: 'mrn-42', gender: 'male' });
    expect(revived.outcome).toBe('created');
    expect(revived.resource.meta?.versionId).toBe('3');
  });

  it('an identical update still makes a new version', async () => {
    const { resource } = await repo.create<Patient>({ resourceType: 'Patient', gender: 'male' });
    const again = await repo.update<Patient>(resource);
    expect(again.resource.meta?.versionId).toBe('2');
  });

  it('If-Match: a stale versionId is refused and changes nothing', async () => {
    const { resource } = await repo.create<Patient>({ resourceType: 'Patient', gender: 'male' });
    await repo.update<Patient>({ ...resource, gender: 'female' }, { ifMatch: '1' });
    await rejectsWith(repo.update<Patient>({ ...resource, gender: 'other' }, { ifMatch: '1' }), 'ERR_PRECONDITION_FAILED');
    await rejectsWith(repo.update<Patient>({ resourceType: 'Patient', id: 'absent' }, { ifMatch: '1' }), 'ERR_PRECONDITION_FAILED');
    expect((await repo.read<Patient>('Patient', resource.id!)).gender).toBe('female');
    await repo.update<Patient>({ ...resource, gender: 'other' }, { ifMatch: 'W/"2"' });
    expect((await repo.read<Patient>('Patient', resource.id!)).meta?.versionId).toBe('3');
  });

  it('rejects a body without resourceType or with an invalid id', async () => {
    await rejectsWith(repo.create({ gender: 'male' } as unknown as Patient), 'ERR_INVALID');
    await rejectsWith(repo.update({ resourceType: 'Patient', id: 'bad id!' } as Patient), 'ERR_INVALID');
    await rejectsWith(repo.update({ resourceType: 'Patient' } as Patient), 'ERR_INVALID');
  });

  it('conditional create: 0 matches creates, 1 answers the existing resource, more than 1 is a precondition failure', async () => {
    const body: Patient = { resourceType: 'Patient', identifier: [{ system: 'urn:mrn', value: '42' }] };
    const first = await repo.create(body, { ifNoneExist: 'identifier=urn:mrn|42' });
    expect(first.outcome).toBe('created');
    const second = await repo.create(body, { ifNoneExist: 'identifier=urn:mrn|42' });
    expect(second.outcome).toBe('existing');
    expect(second.resource.id).toBe(first.resource.id);
    await repo.create(body);
    await rejectsWith(repo.create(body, { ifNoneExist: 'identifier=urn:mrn|42' }), 'ERR_PRECONDITION_FAILED');
    await rejectsWith(repo.create(body, { ifNoneExist: 'nonsense=1' }), 'ERR_INVALID');
    expect((await search('Patient?identifier=urn:mrn|42')).resources).toHaveLength(2);
  });

  it('createMany stores every resource with its own id', async () => {
    const created = await repo.createMany([observation('p1', '2026-01-01T00:00:00Z'), observation('p1', '2026-01-01T00:05:00Z')]);
    expect(new Set(ids(created)).size).toBe(2);
    expect((await search('Observation?patient=p1')).resources).toHaveLength(2);
  });
});

describe('on disk', () => {
  it('survives close and reopen, with the master key file created 0600', async () => {
    const { resource } = await repo.create<Patient>({ resourceType: 'Patient', gender: 'female' });
    await repo.create(observation(resource.id!, '2026-01-01T10:00:00Z'));
    await repo.close();
    expect(statSync(path.join(dataDir, 'keys', 'master.key')).mode & 0o777).toBe(0o600);
    repo = await EmbeddedRepository.open({ dataDir });
    expect((await repo.read<Patient>('Patient', resource.id!)).gender).toBe('female');
    expect((await search(`Observation?patient=${resource.id}&date=2026-01-01`)).resources).toHaveLength(1);
  });

  it('reads the store file through a memory map of the size asked for, none by default; answers the same either way', async () => {
    const { resource } = await repo.create<Patient>({ resourceType: 'Patient', gender: 'male' });
    const mmapOf = (r: EmbeddedRepository): number => (r as unknown as { db: import('better-sqlite3').Database }).db.pragma('mmap_size', { simple: true }) as number;
    expect(mmapOf(repo)).toBe(0);
    await repo.close();
    repo = await EmbeddedRepository.open({ dataDir, mmapBytes: 64 * 1024 * 1024 });
    expect(mmapOf(repo)).toBe(64 * 1024 * 1024);
    expect((await repo.read<Patient>('Patient', resource.id!)).gender).toBe('male');
  });

  it('refuses to open with another master key', async () => {
    await repo.close();
    const otherKey = Buffer.alloc(32, 7).toString('base64');
    await expect(EmbeddedRepository.open({ dataDir, masterKey: otherKey })).rejects.toThrow(/master key/);
    repo = await EmbeddedRepository.open({ dataDir });
  });

  it('uses a configured master key and writes no key file', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'gg-embedded-key-'));
    const masterKey = Buffer.alloc(32, 3).toString('base64');
    const keyed = await EmbeddedRepository.open({ dataDir: dir, masterKey });
    await keyed.create<Patient>({ resourceType: 'Patient' });
    await keyed.close();
    // no key file: only the key root's check value (an HMAC under the key, src/keys.ts) beside the store
    expect(readdirSync(dir).sort()).toEqual(['keys', 'store']);
    expect(readdirSync(path.join(dir, 'keys'))).toEqual(['root.check']);
    expect(readFileSync(path.join(dir, 'keys', 'root.check'), 'utf8')).not.toContain(masterKey);
    rmSync(dir, { recursive: true, force: true });
  });
});

describe('encryption at rest', () => {
  it('stores no resource text, code or identifier in clear', async () => {
    const { resource } = await repo.create<Patient>({
      resourceType: 'Patient', name: [{ family: 'Quixotically-Zebedee' }], identifier: [{ system: 'urn:mrn', value: 'MRN-77331' }],
    });
    await repo.create(observation(resource.id!, '2026-01-01T10:00:00Z', {
      code: { coding: [{ system: 'http://loinc.org', code: 'ZZ-98765-4' }] }, note: [{ text: 'Hypoglycaemia-Unusual-Marker' }],
    }));
    const bytes = storeBytes();
    for (const secret of ['Quixotically-Zebedee', 'MRN-77331', 'ZZ-98765-4', 'zz-98765-4', 'Hypoglycaemia-Unusual-Marker', resource.id!]
      .filter((s) => s !== resource.id)) {
      expect(bytes.includes(Buffer.from(secret))).toBe(false);
    }
    // The data is still there and searchable through the keyed indexes.
    expect((await search('Observation?code=http://loinc.org|ZZ-98765-4')).resources).toHaveLength(1);
    expect((await search('Patient?identifier=MRN-77331')).resources).toHaveLength(1);
  });

  it('never uses a GCM nonce twice, across pool refills and for identical bodies', async () => {
    // 1,000 bodies (three refills of the 341-nonce pool), every one the same plaintext but for its id
    await repo.createMany(Array.from({ length: 1_000 }, () => ({ resourceType: 'Patient', gender: 'other' }) as Patient));
    await repo.close();
    const db = new Database(path.join(dataDir, 'store', 'glucoguard.db'), { readonly: true });
    const bodies = db.prepare('SELECT body FROM versions WHERE body IS NOT NULL').all() as { body: Buffer }[];
    db.close();
    expect(bodies.length).toBe(1_000);
    const nonces = new Set(bodies.map((b) => b.body.subarray(0, 12).toString('hex')));
    expect(nonces.size).toBe(bodies.length);
    repo = await EmbeddedRepository.open({ dataDir });
    expect((await search('Patient?gender=other&_count=1000')).resources).toHaveLength(1_000);
  });

  it('a ciphertext moved onto another resource does not decrypt (bound to type/id/version)', async () => {
    const a = await repo.create<Patient>({ resourceType: 'Patient', gender: 'female' });
    const b = await repo.create<Patient>({ resourceType: 'Patient', gender: 'male' });
    await repo.close();
    const db = new Database(path.join(dataDir, 'store', 'glucoguard.db'));
    const bodyOfA = db.prepare('SELECT body, key_id, key_version FROM versions WHERE id = ?').get(a.resource.id) as Record<string, unknown>;
    db.prepare('UPDATE versions SET body = ?, key_id = ?, key_version = ? WHERE id = ?')
      .run(bodyOfA.body, bodyOfA.key_id, bodyOfA.key_version, b.resource.id);
    db.close();
    repo = await EmbeddedRepository.open({ dataDir });
    await rejectsWith(repo.read('Patient', b.resource.id!), 'ERR_GONE');
    expect((await repo.read<Patient>('Patient', a.resource.id!)).gender).toBe('female');
  });

  it('rows written before the time was bound (below time-bound-from) read as before; rows after it are bound', async () => {
    const old = await repo.create<Patient>({ resourceType: 'Patient', gender: 'female' });
    await repo.close();
    // the row as code before session 25 wrote it, and the store's bound seq after it (what opening an older store records)
    const seq = sealedUnbound(old.resource.id!);
    const db = new Database(path.join(dataDir, 'store', 'glucoguard.db'));
    db.prepare("UPDATE meta SET v = ? WHERE k = 'time-bound-from'").run(String(seq + 1));
    db.close();
    repo = await EmbeddedRepository.open({ dataDir });
    expect((await repo.read<Patient>('Patient', old.resource.id!)).gender).toBe('female');
    const fresh = await repo.create<Patient>({ resourceType: 'Patient', gender: 'male' });
    await repo.close();
    const moved = new Database(path.join(dataDir, 'store', 'glucoguard.db'));
    moved.prepare('UPDATE versions SET last_updated = last_updated - 1000').run();
    moved.close();
    repo = await EmbeddedRepository.open({ dataDir });
    // the older row's time was never bound (documented); the newer one's is
    expect((await repo.read<Patient>('Patient', old.resource.id!)).gender).toBe('female');
    await rejectsWith(repo.read('Patient', fresh.resource.id!), 'ERR_GONE');
  });

  it('a store an earlier release made goes on writing rows that release can read until bind-row-times; a process opened before it reads the bound rows', async () => {
    await repo.close();
    // what a store made before session 25 looks like: no time-bound-from
    const db = new Database(path.join(dataDir, 'store', 'glucoguard.db'));
    db.prepare("DELETE FROM meta WHERE k = 'time-bound-from'").run();
    db.close();
    repo = await EmbeddedRepository.open({ dataDir });
    const other = await EmbeddedRepository.open({ dataDir }); // a second process, opened before the binding
    try {
      expect(repo.bindsRowTimes).toBe(false);
      const unbound = (await repo.create<Patient>({ resourceType: 'Patient', gender: 'female' })).resource;
      const { master, root } = loadServerKeys({ dataDir });
      const check = new Database(path.join(dataDir, 'store', 'glucoguard.db'), { readonly: true });
      const opensUnbound = (id: string): boolean => {
        const ring = new KeyRing(check, Buffer.from(master, 'base64'), Buffer.from(root, 'base64'));
        const row = check.prepare('SELECT type, id, version, key_id, key_version, body FROM versions WHERE id = ?').get(id) as
          { type: string; id: string; version: number; key_id: string; key_version: number; body: Buffer };
        return openText(ring.keyById(row.key_id, row.key_version)!, row.body, `${row.type}/${row.id}/${row.version}`) !== undefined;
      };
      expect(opensUnbound(unbound.id!)).toBe(true); // what the earlier release opens
      const from = await repo.bindRowTimes();
      expect(repo.bindsRowTimes).toBe(true);
      const bound = (await repo.create<Patient>({ resourceType: 'Patient', gender: 'male' })).resource;
      expect(opensUnbound(bound.id!)).toBe(false);
      check.close();
      expect(await repo.bindRowTimes()).toBe(from); // once
      expect((await other.read<Patient>('Patient', bound.id!)).gender).toBe('male');
      expect((await other.read<Patient>('Patient', unbound.id!)).gender).toBe('female');
    } finally {
      await other.close();
    }
  });

  it('a row an earlier release wrote after time-bound-from (a replica not yet upgraded, rolling upgrade) still reads', async () => {
    const later = await repo.create<Patient>({ resourceType: 'Patient', gender: 'other' });
    await repo.close();
    const seq = sealedUnbound(later.resource.id!); // as the earlier release seals it
    const db = new Database(path.join(dataDir, 'store', 'glucoguard.db'), { readonly: true });
    expect(seq).toBeGreaterThanOrEqual(Number((db.prepare("SELECT v FROM meta WHERE k = 'time-bound-from'").get() as { v: string }).v));
    db.close();
    repo = await EmbeddedRepository.open({ dataDir });
    expect((await repo.read<Patient>('Patient', later.resource.id!)).gender).toBe('other');
  });

  it("a row moved in time does not decrypt (its body binds last_updated, the served meta.lastUpdated)", async () => {
    const moved = await repo.create<Patient>({ resourceType: 'Patient', gender: 'female' });
    const kept = await repo.create<Patient>({ resourceType: 'Patient', gender: 'male' });
    await repo.close();
    const db = new Database(path.join(dataDir, 'store', 'glucoguard.db'));
    db.prepare('UPDATE versions SET last_updated = last_updated - 86400000 WHERE id = ?').run(moved.resource.id);
    db.close();
    repo = await EmbeddedRepository.open({ dataDir });
    await rejectsWith(repo.read('Patient', moved.resource.id!), 'ERR_GONE');
    expect((await search('Patient?gender=female')).resources).toHaveLength(0);
    expect((await repo.read<Patient>('Patient', kept.resource.id!)).meta?.lastUpdated).toBe(kept.resource.meta?.lastUpdated);
  });
});

describe('erasure (crypto-shredding)', () => {
  it('after eraseSubject the patient and their resources are gone, unsearchable, and stay so after restart', async () => {
    const erased = (await repo.create<Patient>({ resourceType: 'Patient', name: [{ family: 'Erase' }] })).resource.id!;
    const kept = (await repo.create<Patient>({ resourceType: 'Patient', name: [{ family: 'Keep' }] })).resource.id!;
    const obs = (await repo.create(observation(erased, '2026-01-01T10:00:00Z'))).resource.id!;
    await repo.create(observation(kept, '2026-01-01T10:00:00Z'));
    const rowsBefore = countRows();

    await expect(repo.eraseSubject(erased)).resolves.toEqual({ resources: 2 });

    await rejectsWith(repo.read('Patient', erased), 'ERR_GONE');
    await rejectsWith(repo.read('Observation', obs), 'ERR_GONE');
    await rejectsWith(repo.vread('Observation', obs, '1'), 'ERR_GONE');
    expect((await search(`Observation?patient=${erased}`)).resources).toEqual([]);
    expect(ids((await search('Observation')).resources)).toHaveLength(1);
    expect(ids((await search('Patient')).resources)).toEqual([kept]);
    expect((await repo.history({ count: 50, offset: 0 })).entries.map((e) => e.id)).not.toContain(erased);
    // The ciphertext rows stay (history, anchors) but their key is destroyed.
    expect(countRows()).toBe(rowsBefore);
    await repo.close();
    const db = new Database(path.join(dataDir, 'store', 'glucoguard.db'), { readonly: true });
    const keyRow = db.prepare('SELECT k.wrapped FROM versions v JOIN data_keys k ON k.key_id = v.key_id WHERE v.id = ?').get(obs) as { wrapped: Buffer | null };
    db.close();
    expect(keyRow.wrapped).toBeNull();
    repo = await EmbeddedRepository.open({ dataDir });
    await rejectsWith(repo.read('Observation', obs), 'ERR_GONE');
    // New data for the same patient gets a new key; the old rows stay unreadable.
    await repo.update<Patient>({ resourceType: 'Patient', id: erased });
    await rejectsWith(repo.read('Observation', obs), 'ERR_GONE');
    // the re-created patient can be erased again; an id never stored cannot
    await expect(repo.eraseSubject(erased)).resolves.toEqual({ resources: 1 });
    await rejectsWith(repo.eraseSubject('nobody'), 'ERR_NOT_FOUND');
  });

  it('a repeated erasure changes nothing; the erasure\'s AuditEvent survives a later erasure of the same id', async () => {
    const p = (await repo.create<Patient>({ resourceType: 'Patient', name: [{ family: 'Twice' }] })).resource.id!;
    await repo.eraseSubject(p);
    const record = (await repo.create<AuditEvent>({ resourceType: 'AuditEvent', type: { code: '110110' }, recorded: '2026-01-05T10:00:00Z',
      source: { observer: { display: 'proxy' } }, outcome: '0', agent: [{ who: { display: 'op' }, requestor: true }],
      entity: [{ what: { reference: `Patient/${p}` } }] })).resource.id!;
    // nothing stored for the patient since: a repeat is refused as already done
    await rejectsWith(repo.eraseSubject(p), 'ERR_GONE');
    // the patient comes back and is erased again: the first erasure's record stays readable and in their log
    await repo.update<Patient>({ resourceType: 'Patient', id: p });
    await expect(repo.eraseSubject(p)).resolves.toEqual({ resources: 1 });
    await expect(repo.read('AuditEvent', record)).resolves.toMatchObject({ id: record });
    expect(ids((await search(`AuditEvent?patient=Patient/${p}`)).resources)).toEqual([record]);
  });

  function countRows(): number {
    const db = new Database(path.join(dataDir, 'store', 'glucoguard.db'), { readonly: true });
    const n = (db.prepare('SELECT count(*) AS n FROM versions').get() as { n: number }).n;
    db.close();
    return n;
  }
});

describe('search', () => {
  let p1: string;
  let p2: string;
  const obsIds: Record<string, string> = {};

  beforeEach(async () => {
    p1 = (await repo.update<Patient>({ resourceType: 'Patient', id: '12', name: [{ family: 'Smith', given: ['Jane'] }],
      identifier: [{ system: 'urn:mrn', value: 'A1' }], birthDate: '1980-05-17', gender: 'female' })).resource.id!;
    p2 = (await repo.update<Patient>({ resourceType: 'Patient', id: '123', name: [{ family: 'Müller', given: ['Jörg'] }],
      identifier: [{ system: 'urn:mrn', value: 'B2' }], birthDate: '1975-01-02', gender: 'male' })).resource.id!;
    const put = async (key: string, o: Observation): Promise<void> => { obsIds[key] = (await repo.create(o)).resource.id!; };
    await put('d1-00', observation(p1, '2026-01-01T00:00:00Z'));
    await put('d1-06', observation(p1, '2026-01-01T06:00:00Z'));
    await put('d1-12', observation(p1, '2026-01-01T12:00:00Z', {
      category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'vital-signs' }] }],
      code: { coding: [{ system: 'http://loinc.org', code: '2339-0' }] }, device: { reference: 'Device/meter-2' },
    }));
    await put('d2-00', observation(p1, '2026-01-02T00:00:00Z'));
    await put('long', observation(p1, '', { effectiveDateTime: undefined,
      effectivePeriod: { start: '2025-12-30T00:00:00Z', end: '2025-12-31T12:00:00Z' } }));
    await put('other', observation(p2, '2026-01-01T06:00:00Z'));
  });

  const obs = async (query: string): Promise<string[]> => {
    const result = await search(`Observation?${query}`);
    return result.resources.map((r) => Object.entries(obsIds).find(([, id]) => id === r.id)?.[0] ?? r.id!);
  };

  it('patient and subject match exactly: Patient/12 is not Patient/123', async () => {
    expect((await obs('patient=12')).sort()).toEqual(['d1-00', 'd1-06', 'd1-12', 'd2-00', 'long']);
    expect(await obs('patient=123')).toEqual(['other']);
    expect(await obs('patient=Patient/123')).toEqual(['other']);
    expect(await obs('subject=Patient/123')).toEqual(['other']);
    expect((await obs('subject=12')).length).toBe(5);
    expect(await obs('patient=1')).toEqual([]);
    expect((await obs('subject=Patient/12,Patient/123&date=2026-01-01')).sort()).toEqual(['d1-00', 'd1-06', 'd1-12', 'other']);
    expect((await obs('subject=Group/1,Patient/123&date=2026-01-01')).sort()).toEqual(['other']);
    expect((await obs('patient=123&date=2026-01-01&_sort=-date')).sort()).toEqual(['other']);
  });

  it('code, category, device and status tokens (code, system|code, |code, system|)', async () => {
    expect((await obs('code=99504-3')).length).toBe(5);
    expect((await obs('code=http://loinc.org|99504-3')).length).toBe(5);
    expect(await obs('code=http://loinc.org|2339-0')).toEqual(['d1-12']);
    expect(await obs('code=|2339-0')).toEqual([]);
    expect((await obs('code=http://loinc.org|')).length).toBe(6);
    expect(await obs('code=http://snomed.info/sct|2339-0')).toEqual([]);
    expect((await obs('code=2339-0,99504-3&patient=12')).length).toBe(5);
    expect(await obs('category=vital-signs')).toEqual(['d1-12']);
    expect((await obs('category=laboratory&patient=12')).sort()).toEqual(['d1-00', 'd1-06', 'd2-00', 'long']);
    expect(await obs('device=Device/meter-2')).toEqual(['d1-12']);
    expect((await obs('status=final')).length).toBe(6);
    expect((await obs('code:not=99504-3')).sort()).toEqual(['d1-12']);
  });

  it('date with every prefix (eq ne gt ge lt le sa eb ap), including a long period', async () => {
    const q = async (date: string): Promise<string[]> => (await obs(`patient=12&date=${date}`)).sort();
    expect(await q('2026-01-01')).toEqual(['d1-00', 'd1-06', 'd1-12']);
    expect(await q('eq2026-01-01')).toEqual(['d1-00', 'd1-06', 'd1-12']);
    expect(await q('ap2026-01-01')).toEqual(['d1-00', 'd1-06', 'd1-12']);
    expect(await q('ne2026-01-01')).toEqual(['d2-00', 'long']);
    expect(await q('gt2026-01-01')).toEqual(['d2-00']);
    expect(await q('ge2026-01-01T06:00:00Z')).toEqual(['d1-06', 'd1-12', 'd2-00']);
    expect(await q('lt2026-01-01T06:00:00Z')).toEqual(['d1-00', 'long']);
    expect(await q('le2026-01-01T06:00:00Z')).toEqual(['d1-00', 'd1-06', 'long']);
    expect(await q('sa2026-01-01')).toEqual(['d2-00']);
    expect(await q('eb2026-01-01T12:00:00Z')).toEqual(['d1-00', 'd1-06', 'long']);
    expect(await q('2025-12-31')).toEqual(['long']);
    expect(await q('2025-12')).toEqual(['long']);
    // the patient-day query: a half-open day
    expect((await obs('patient=12&date=ge2026-01-01T00:00:00Z&date=lt2026-01-02T00:00:00Z')).sort()).toEqual(['d1-00', 'd1-06', 'd1-12']);
    // without a patient the date index answers alone
    expect((await obs('date=ge2026-01-01T06:00:00Z&date=le2026-01-01T06:00:00Z')).sort()).toEqual(['d1-06', 'other']);
  });

  it('_id and _lastUpdated', async () => {
    expect(await obs(`_id=${obsIds['d1-06']}`)).toEqual(['d1-06']);
    expect((await obs(`_id=${obsIds['d1-06']},${obsIds['other']}`)).sort()).toEqual(['d1-06', 'other']);
    expect((await obs('_lastUpdated=gt2000-01-01')).length).toBe(6);
    expect(await obs('_lastUpdated=lt2000-01-01')).toEqual([]);
    const patients = await search(`Patient?_id=${p2}`);
    expect(ids(patients.resources)).toEqual(['123']);
  });

  it('Patient: identifier, name (starts-with, accent-insensitive, :exact, :contains), family, given, birthdate, gender', async () => {
    const patients = async (query: string): Promise<string[]> => ids((await search(`Patient?${query}`)).resources).sort();
    expect(await patients('identifier=urn:mrn|A1')).toEqual(['12']);
    expect(await patients('identifier=B2')).toEqual(['123']);
    expect(await patients('identifier=urn:other|A1')).toEqual([]);
    expect(await patients('name=smi')).toEqual(['12']);
    expect(await patients('name=mith')).toEqual([]);
    expect(await patients('name:contains=mith')).toEqual(['12']);
    expect(await patients('name=muller')).toEqual(['123']);
    expect(await patients('name:exact=Müller')).toEqual(['123']);
    expect(await patients('name:exact=muller')).toEqual([]);
    expect(await patients('name=jane')).toEqual(['12']);
    expect(await patients('family=Smith')).toEqual(['12']);
    expect(await patients('given=jörg')).toEqual(['123']);
    expect(await patients('birthdate=1980-05-17')).toEqual(['12']);
    expect(await patients('birthdate=lt1979')).toEqual(['123']);
    expect(await patients('gender=male')).toEqual(['123']);
  });

  it('Patient: address, telecom, phone, email, deceased and language, matched on the decrypted patients', async () => {
    await repo.update<Patient>({ resourceType: 'Patient', id: 'p-contact', name: [{ family: 'Okafor' }],
      address: [{ line: ['1 Rue Haute'], city: 'Liège', postalCode: '4000', country: 'BE' }],
      telecom: [{ system: 'phone', value: '+32 4 123 45 67' }, { system: 'email', value: 'n.okafor@example.org' }],
      communication: [{ language: { coding: [{ system: 'urn:ietf:bcp:47', code: 'fr-BE' }] } }] });
    await repo.update<Patient>({ resourceType: 'Patient', id: 'p-deceased', name: [{ family: 'Old' }], deceasedDateTime: '2020-01-01' });
    const patients = async (query: string): Promise<string[]> => ids((await search(`Patient?${query}`)).resources).sort();
    expect(await patients('address-city=liege')).toEqual(['p-contact']);
    expect(await patients('address=liege')).toEqual(['p-contact']);
    expect(await patients('address:contains=rue')).toEqual(['p-contact']);
    expect(await patients('address=rue')).toEqual([]); // starts-with, on each part
    expect(await patients('address-postalcode=4000')).toEqual(['p-contact']);
    expect(await patients('address-country=BE')).toEqual(['p-contact']);
    expect(await patients('phone=%2B32 4 123 45 67')).toEqual(['p-contact']);
    expect(await patients('email=n.okafor@example.org')).toEqual(['p-contact']);
    expect(await patients('telecom=email|n.okafor@example.org')).toEqual(['p-contact']);
    expect(await patients('email=someone@example.org')).toEqual([]);
    expect(await patients('language=fr-BE')).toEqual(['p-contact']);
    expect(await patients('deceased=true')).toEqual(['p-deceased']);
    expect(await patients('deceased=false')).toEqual(['12', '123', 'p-contact']);
  });

  it('sorts by date, -date, _lastUpdated and _id', async () => {
    expect(await obs('patient=12&_sort=date')).toEqual(['long', 'd1-00', 'd1-06', 'd1-12', 'd2-00']);
    expect(await obs('patient=12&_sort=-date')).toEqual(['d2-00', 'd1-12', 'd1-06', 'd1-00', 'long']);
    expect(await obs('patient=12&date=ge2026-01-01&_sort=-date')).toEqual(['d2-00', 'd1-12', 'd1-06', 'd1-00']);
    expect(await obs('_sort=-_lastUpdated&_count=1')).toEqual(['other']);
    const undated = (await repo.create(observation('123', '', { effectiveDateTime: undefined }))).resource.id!;
    expect(ids((await search('Observation?patient=123&_sort=date')).resources)).toEqual([obsIds['other'], undated]);
    expect(ids((await search('Observation?patient=123&_sort=-date')).resources)).toEqual([undated, obsIds['other']]);
    expect(ids((await search('Observation?patient=123&date=le2030-01-01')).resources)).toEqual([obsIds['other']]);
    const byId = ids((await search('Observation?_sort=_id')).resources);
    expect(byId).toEqual([...byId].sort());
    await rejectsWith(search('Observation?_sort=code'), 'ERR_INVALID');
  });

  it('pages with _count and offset; hasMore tells whether more follow', async () => {
    const pages: string[][] = [];
    for (let offset = 0; ; offset += 2) {
      const page = await repo.search({ ...parseSearchRequest('Observation?patient=12&_sort=date&_count=2'), offset });
      pages.push(ids(page.resources));
      if (!page.hasMore) break;
    }
    expect(pages.map((p) => p.length)).toEqual([2, 2, 1]);
    expect(new Set(pages.flat()).size).toBe(5);
    const all = await search('Observation?patient=12&_count=5');
    expect(all.hasMore).toBe(false);
    const none = await search('Observation?patient=12&_count=0');
    expect(none.resources).toEqual([]);
    expect(none.hasMore).toBe(true);
  });

  it('_include, _revinclude and :iterate return included resources', async () => {
    await repo.update({ resourceType: 'Device', id: 'cgm-1', patient: { reference: `Patient/${p1}` }, status: 'active' });
    const report = (await repo.create<DiagnosticReport>({ resourceType: 'DiagnosticReport', status: 'final', code: { text: 'CGM' },
      subject: { reference: `Patient/${p1}` }, result: [{ reference: `Observation/${obsIds['d1-00']}` }] })).resource;

    const withDevice = await search(`Observation?_id=${obsIds['d1-00']}&_include=Observation:device&_include=Observation:patient`);
    expect(withDevice.included.map((r) => `${r.resourceType}/${r.id}`).sort()).toEqual(['Device/cgm-1', `Patient/${p1}`]);

    const withReports = await search(`Observation?_id=${obsIds['d1-00']}&_revinclude=DiagnosticReport:result`);
    expect(withReports.included.map((r) => r.id)).toEqual([report.id]);

    const iterated = await search(`Patient?_id=${p1}&_revinclude=Device:patient&_revinclude:iterate=Observation:device`);
    const included = iterated.included.map((r) => r.resourceType);
    expect(included.filter((t) => t === 'Device')).toHaveLength(1);
    expect(included.filter((t) => t === 'Observation')).toHaveLength(5); // every reading of device cgm-1 (d1-12 uses meter-2)

    await rejectsWith(search('Observation?_include=Observation:code'), 'ERR_INVALID');
  });

  it('refuses unknown parameters, chains, _has and unsupported modifiers', async () => {
    await rejectsWith(search('Observation?foo=bar'), 'ERR_INVALID');
    await rejectsWith(search('Observation?subject.name=Smith'), 'ERR_INVALID');
    await rejectsWith(search('Patient?_has:Observation:patient:code=1'), 'ERR_INVALID');
    await rejectsWith(search('Observation?code:above=1'), 'ERR_INVALID');
    await rejectsWith(search('Observation?value-string=5'), 'ERR_INVALID');
    await rejectsWith(search('Observation?value-quantity=high'), 'ERR_INVALID');
    await rejectsWith(search('Observation?value-quantity=5|http://unitsofmeasure.org|'), 'ERR_INVALID');
    await rejectsWith(search('Observation?value-quantity=5|mg'), 'ERR_INVALID');
    await rejectsWith(search('Observation?value-quantity=1e309'), 'ERR_INVALID');
    await rejectsWith(search('Observation?_profile:below=http://x'), 'ERR_INVALID');
    await rejectsWith(search('Observation?code:missing=maybe'), 'ERR_INVALID');
  });

  it('value-quantity: implied precision, every prefix, units by system|code or ||code-or-unit, comparators', async () => {
    const mg = (value: number, extra: Partial<Observation['valueQuantity']> = {}) =>
      ({ valueQuantity: { value, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL', ...extra } });
    const put = async (key: string, o: Observation): Promise<void> => { obsIds[key] = (await repo.create(o)).resource.id!; };
    await put('q54', observation('q', '2026-03-01T00:00:00Z', mg(54)));
    await put('q70', observation('q', '2026-03-01T00:05:00Z', mg(70)));
    await put('q180', observation('q', '2026-03-01T00:10:00Z', mg(180)));
    await put('q250.4', observation('q', '2026-03-01T00:15:00Z', mg(250.4)));
    await put('qmmol', observation('q', '2026-03-01T00:20:00Z', { valueQuantity: { value: 5.4, unit: 'mmol/L', system: 'http://unitsofmeasure.org', code: 'mmol/L' } }));
    await put('qunit', observation('q', '2026-03-01T00:25:00Z', { valueQuantity: { value: 5.4, unit: 'mmol/L' } }));
    await put('qlow', observation('q', '2026-03-01T00:30:00Z', mg(40, { comparator: '<' })));
    await put('qnone', observation('q', '2026-03-01T00:35:00Z', { valueQuantity: undefined, dataAbsentReason: { text: 'sensor error' } }));
    const q = async (value: string): Promise<string[]> => (await obs(`patient=q&value-quantity=${encodeURIComponent(value)}`)).sort();
    expect(await q('70')).toEqual(['q70']);
    expect(await q('70.0')).toEqual(['q70']);
    expect(await q('250')).toEqual(['q250.4']); // [249.5, 250.5)
    expect(await q('250.0')).toEqual([]); // [249.95, 250.05)
    expect(await q('7e1')).toEqual(['q70']); // [65, 75)
    expect(await q('ne70')).toEqual(['q180', 'q250.4', 'q54', 'qlow', 'qmmol', 'qunit']);
    expect(await q('gt180|http://unitsofmeasure.org|mg/dL')).toEqual(['q250.4']);
    expect(await q('ge180|http://unitsofmeasure.org|mg/dL')).toEqual(['q180', 'q250.4']);
    expect(await q('lt70|http://unitsofmeasure.org|mg/dL')).toEqual(['q54', 'qlow']);
    expect(await q('le70||mg/dL')).toEqual(['q54', 'q70', 'qlow']);
    expect(await q('lt40')).toEqual(['qlow', 'qmmol', 'qunit']);
    expect(await q('le40')).toEqual(['qlow', 'qmmol', 'qunit']);
    expect(await q('sa54')).toEqual(['q180', 'q250.4', 'q70']);
    expect(await q('eb54')).toEqual(['qlow', 'qmmol', 'qunit']);
    expect(await q('eb40')).toEqual(['qlow', 'qmmol', 'qunit']); // all of `<40` lies below 40
    expect(await q('eb39')).toEqual(['qmmol', 'qunit']);
    expect(await q('ap60')).toEqual(['q54']); // within 10 %: [54, 66]
    expect(await q('5.4|http://unitsofmeasure.org|mmol/L')).toEqual(['qmmol']);
    expect(await q('5.4||mmol/L')).toEqual(['qmmol', 'qunit']); // the code, or the unit when there is no code
    expect(await q('5.4')).toEqual(['qmmol', 'qunit']);
    expect(await q('5.4|http://example.org|mmol/L')).toEqual([]);
    expect(await q('54,180')).toEqual(['q180', 'q54']);
    expect((await obs('patient=q&value-quantity:missing=true')).sort()).toEqual(['qnone']);
    // no index narrows a quantity: a search without patient or date looks at every Observation
    expect((await obs('value-quantity=gt200')).sort()).toEqual(['q250.4']);
    expect(await obs('value-quantity=lt100&_sort=-date&_count=2')).toEqual(['qlow', 'qunit']);
  });

  it('_tag, _security and _profile match meta; component-code and component-value-quantity match components', async () => {
    const put = async (key: string, o: Observation): Promise<void> => { obsIds[key] = (await repo.create(o)).resource.id!; };
    const profile = 'http://hl7.org/fhir/uv/cgm/StructureDefinition/cgm-sensor-reading-mass-per-volume';
    await put('tagged', observation('m', '2026-04-01T00:00:00Z', { meta: { tag: [{ system: 'urn:source', code: 'dexcom' }], profile: [profile],
      security: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-Confidentiality', code: 'R' }] } }));
    await put('plain', observation('m', '2026-04-01T00:05:00Z'));
    await put('bp', observation('m', '2026-04-01T00:10:00Z', { valueQuantity: undefined, component: [
      { code: { coding: [{ system: 'http://loinc.org', code: '8480-6' }] }, valueQuantity: { value: 120, system: 'http://unitsofmeasure.org', code: 'mm[Hg]' } },
      { code: { coding: [{ system: 'http://loinc.org', code: '8462-4' }] }, valueQuantity: { value: 80, system: 'http://unitsofmeasure.org', code: 'mm[Hg]' } },
    ] }));
    expect(await obs('_tag=urn:source|dexcom')).toEqual(['tagged']);
    expect(await obs('_tag=dexcom')).toEqual(['tagged']);
    expect((await obs('patient=m&_tag:not=urn:source|dexcom')).sort()).toEqual(['bp', 'plain']);
    expect(await obs('_security=http://terminology.hl7.org/CodeSystem/v3-Confidentiality|R')).toEqual(['tagged']);
    expect(await obs(`_profile=${profile}`)).toEqual(['tagged']);
    expect(await obs(`_profile=${profile.toUpperCase()}`)).toEqual([]); // a uri matches exactly
    expect((await obs('patient=m&_profile:missing=true')).sort()).toEqual(['bp', 'plain']);
    expect(await obs('patient=m&component-code=http://loinc.org|8462-4')).toEqual(['bp']);
    expect(await obs('patient=m&component-value-quantity=gt100||mm[Hg]')).toEqual(['bp']);
    expect(await obs('patient=m&component-value-quantity=gt130')).toEqual([]);
    const patients = await search('Patient?_tag=urn:source|dexcom');
    expect(patients.resources).toEqual([]);
  });

  it('finds a match that lies past the first batch of index candidates', async () => {
    const many = Array.from({ length: 150 }, (_, i) => observation('busy', new Date(Date.UTC(2026, 1, 1, 0, i)).toISOString()));
    many.push(observation('busy', '2026-02-01T03:00:00Z', { code: { coding: [{ system: 'http://snomed.info/sct', code: '434912009' }] } }));
    await repo.createMany(many);
    const found = await search('Observation?patient=busy&date=ge2026-02-01&code=http://snomed.info/sct|&_count=1');
    expect(found.resources.map((r) => (r as Observation).effectiveDateTime)).toEqual(['2026-02-01T03:00:00Z']);
    expect(found.hasMore).toBe(false);
    const day = await search('Observation?patient=busy&date=ge2026-02-01&date=lt2026-02-02&_count=100');
    expect(day.resources).toHaveLength(100);
    expect(day.hasMore).toBe(true);
  });

  it('a scan limit refuses a search that examines too many candidates the page does not need, not one that just returns many', async () => {
    const limited = (query: string, scanLimit: number) => repo.search(parseSearchRequest(query), { scanLimit });
    const tooCostly = async (query: string, scanLimit: number): Promise<void> => {
      const err = await limited(query, scanLimit).then(() => undefined, (e: unknown) => e);
      if (!isGlucoGuardError(err, 'ERR_INVALID') || err.issues[0]!.code !== 'too-costly') throw new Error(`expected too-costly for ${query}`);
      expect(err.message).toMatch(/more than \d+ Observation resources/);
    };
    // six Observations in all, five of patient 12, all at 120 mg/dL
    await tooCostly('Observation?value-quantity=ne120', 5); // `ne` has no index lookup
    expect((await limited('Observation?value-quantity=ne120', 6)).resources).toEqual([]);
    await tooCostly('Observation?code:not=99504-3', 3); // :not has no index lookup
    // every candidate matches: the page needs them all, nothing is wasted
    expect((await limited('Observation?patient=12&_count=100', 1)).resources).toHaveLength(5);
    expect((await limited('Observation?patient=12&_count=2', 1)).resources).toHaveLength(2);
    // a sort the index does not yield reads and sorts every match: those past the page count
    await tooCostly('Observation?patient=12&_sort=_lastUpdated&_count=1', 2);
    expect((await limited('Observation?patient=12&_sort=_lastUpdated&_count=1', 3)).resources).toHaveLength(1);
    // the patient+date index narrows first: what it yields is what may be examined
    expect((await limited('Observation?patient=12&date=2026-01-01&value-quantity=gt1000', 3)).resources).toEqual([]);
    await tooCostly('Observation?patient=12&date=2026-01-01&value-quantity=gt1000', 2);
    // no limit given (internal callers): no refusal
    expect((await repo.search(parseSearchRequest('Observation?value-quantity=ne120'))).resources).toEqual([]);
  });

  it('only the current version is searchable', async () => {
    const current = await repo.read<Observation>('Observation', obsIds['d1-00']!);
    await repo.update({ ...current, code: { coding: [{ system: 'http://loinc.org', code: '2339-0' }] } });
    expect(await obs('code=http://loinc.org|2339-0')).toEqual(expect.arrayContaining(['d1-00', 'd1-12']));
    expect(await obs('patient=12&code=99504-3&date=2026-01-01')).toEqual(['d1-06']);
    await repo.delete('Observation', obsIds['d1-06']!);
    expect(await obs('patient=12&code=99504-3&date=2026-01-01')).toEqual([]);
  });
});

describe('index generations and reindex', () => {
  const tagged = async (scanLimit?: number) => (await repo.search(parseSearchRequest('Observation?_tag=urn:t|x'), scanLimit ? { scanLimit } : undefined)).resources;

  it('a new store starts at the current generation and looks _tag up in its index', async () => {
    expect(repo.indexGeneration).toBe(INDEX_GENERATION);
    for (let i = 0; i < 30; i++) await repo.create(observation('g', `2026-05-01T00:${String(i).padStart(2, '0')}:00Z`));
    await repo.create(observation('g', '2026-05-01T01:00:00Z', { meta: { tag: [{ system: 'urn:t', code: 'x' }] } }));
    expect(await tagged(5)).toHaveLength(1); // 30 others never examined
  });

  it('a store of an older generation matches newer parameters without their index, correctly, until reindex rebuilds it', async () => {
    for (let i = 0; i < 30; i++) await repo.create(observation('g', `2026-05-01T00:${String(i).padStart(2, '0')}:00Z`));
    const t = await repo.create(observation('g', '2026-05-01T01:00:00Z', { meta: { tag: [{ system: 'urn:t', code: 'x' }] } }));
    // make it what a store written before generation 2 is: no _tag rows, generation 1 recorded
    const internals = repo as unknown as { keys: { hash(v: string): number }; db: Database.Database };
    const hashes = [tokenKey('Observation', '_tag', 'x'), systemTokenKey('Observation', '_tag', 'urn:t', 'x')].map((k) => internals.keys.hash(k));
    internals.db.prepare(`DELETE FROM ix_ref WHERE h IN (${hashes.map(() => '?').join(',')})`).run(...hashes);
    internals.db.prepare("UPDATE meta SET v = '1' WHERE k = 'index-generation'").run();
    await repo.close();
    repo = await EmbeddedRepository.open({ dataDir });
    expect(repo.indexGeneration).toBe(1);
    // trusting the index would answer nothing; the planner does not, so the answer is right…
    expect((await tagged()).map((r) => r.id)).toEqual([t.resource.id]);
    // …and found by reading every Observation
    await expect(tagged(5)).rejects.toMatchObject({ issues: [expect.objectContaining({ code: 'too-costly' })] });
    const progress: [number, number][] = [];
    const result = await repo.reindex((done, total) => progress.push([done, total]));
    expect(result).toEqual({ versions: 31, unreadable: 0, generation: INDEX_GENERATION });
    expect(progress[progress.length - 1]).toEqual([31, 31]);
    expect(repo.indexGeneration).toBe(INDEX_GENERATION);
    expect((await tagged(5)).map((r) => r.id)).toEqual([t.resource.id]);
    // the other rows were rebuilt too, and the generation stays recorded
    await repo.close();
    repo = await EmbeddedRepository.open({ dataDir });
    expect(repo.indexGeneration).toBe(INDEX_GENERATION);
    expect((await repo.search(parseSearchRequest('Observation?patient=g&date=2026-05-01&_count=100'), { scanLimit: 1 })).resources).toHaveLength(31);
    expect((await tagged(5)).map((r) => r.id)).toEqual([t.resource.id]);
  });

  it('the quantity index answers exactly what matching every reading answers, for every prefix, unit form and comparator', async () => {
    const values: [number, Partial<Observation['valueQuantity']>][] = [
      [40, { comparator: '<' }], [40, { comparator: '<=' }], [400, { comparator: '>' }], [400, { comparator: '>=' }],
      [54, {}], [54.4, {}], [70, {}], [99.5, {}], [100, {}], [180, {}], [250.4, {}], [-3, {}], [0, {}],
      [5.4, { unit: 'mmol/L', code: 'mmol/L' }], [5.4, { unit: 'mmol/L', code: undefined, system: undefined }], [120, { system: 'http://example.org/units', code: 'mg/dL' }],
      // converted by UCUM search values (1.8 g/L is 180 mg/dL; 10 mmol/L of glucose 180.1559 mg/dL)
      [1.8, { unit: 'g/L', code: 'g/L' }], [10, { unit: 'mmol/L', code: 'mmol/L' }], [0.25, { unit: 'g/dL', code: 'g/dL' }], [37, { unit: '°C', code: 'Cel' }],
    ];
    for (const [i, [value, extra]] of values.entries()) {
      await repo.create(observation(`qi${i % 3}`, `2026-06-01T00:${String(i).padStart(2, '0')}:00Z`,
        { valueQuantity: { value, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL', ...extra } }));
    }
    await repo.create(observation('qi0', '2026-06-01T01:00:00Z', { valueQuantity: undefined, component: [
      { code: { text: 'a' }, valueQuantity: { value: 80, system: 'http://unitsofmeasure.org', code: 'mm[Hg]' } },
      { code: { text: 'b' }, valueQuantity: { value: 120, system: 'http://unitsofmeasure.org', code: 'mm[Hg]' } }] }));
    const queries: string[] = [];
    for (const prefix of ['', 'eq', 'ne', 'gt', 'ge', 'lt', 'le', 'sa', 'eb', 'ap']) {
      for (const n of ['40', '54', '54.4', '1e2', '100.0', '5.4', '0', '-3', '400', '250', '1.8', '180', '10', '180.1559', '37']) {
        for (const unit of ['', '|http://unitsofmeasure.org|mg/dL', '||mg/dL', '||mmol/L', '|http://example.org/units|mg/dL',
          '|http://unitsofmeasure.org|g/L', '|http://unitsofmeasure.org|mmol/L', '|http://unitsofmeasure.org|Cel', '|http://unitsofmeasure.org|[degF]']) {
          queries.push(`value-quantity=${prefix}${n}${unit}`);
        }
      }
    }
    queries.push('component-value-quantity=gt100||mm[Hg]', 'component-value-quantity=lt100', 'component-value-quantity=ap80',
      'component-value-quantity=gt13|http://unitsofmeasure.org|kPa', 'component-value-quantity=lt0.12|http://unitsofmeasure.org|m[Hg]');
    const answer = async (q: string): Promise<string> => ids((await repo.search(parseSearchRequest(`Observation?${q}&_count=100`))).resources).sort().join(',');
    const indexed = new Map<string, string>();
    for (const q of queries) indexed.set(q, await answer(q));
    // the same store with its quantity rows untrusted (generation 2): every Observation matched one by one
    const db = (repo as unknown as { db: Database.Database }).db;
    db.prepare("UPDATE meta SET v = '2' WHERE k = 'index-generation'").run();
    await repo.close();
    repo = await EmbeddedRepository.open({ dataDir });
    expect(repo.indexGeneration).toBe(2);
    let nonEmpty = 0;
    for (const q of queries) {
      const scanned = await answer(q);
      if (scanned !== indexed.get(q)) throw new Error(`${q}: index answered [${indexed.get(q)}], matching every reading [${scanned}]`);
      if (scanned) nonEmpty++;
    }
    expect(nonEmpty).toBeGreaterThan(queries.length / 3);
  });

  it('reindex skips versions whose data key was erased, and counts them', async () => {
    await repo.create(observation('kept', '2026-05-02T00:00:00Z'));
    await repo.create(observation('gone', '2026-05-02T00:00:00Z'));
    await repo.eraseSubject('gone');
    // a store at the current generation rebuilds nothing unless asked for every type
    expect(await repo.reindex()).toEqual({ versions: 0, unreadable: 0, generation: INDEX_GENERATION });
    const result = await repo.reindex(undefined, { all: true });
    expect(result.versions).toBe(1);
    expect(result.unreadable).toBe(1);
  });
});

describe('other resource types', () => {
  it('Device, Consent, AuditEvent, MedicationAdministration, DiagnosticReport, ServiceRequest, Practitioner, Organization', async () => {
    const one = async (query: string): Promise<number> => (await search(query)).resources.length;
    await repo.create({ resourceType: 'Device', patient: { reference: 'Patient/p9' }, status: 'active',
      identifier: [{ system: 'urn:serial', value: 'SN1' }], type: { coding: [{ system: 'http://snomed.info/sct', code: '462242008' }] } });
    await repo.create({ resourceType: 'Consent', status: 'active', scope: { coding: [{ code: 'patient-privacy' }] },
      category: [{ coding: [{ system: 'http://loinc.org', code: '59284-0' }] }], patient: { reference: 'Patient/p9' },
      dateTime: '2026-01-05T10:00:00Z', provision: { period: { start: '2026-01-01', end: '2026-12-31' },
        actor: [{ role: {}, reference: { reference: 'Practitioner/dr1' } }] } });
    await repo.create({ resourceType: 'AuditEvent', type: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110112' },
      recorded: '2026-01-05T10:00:00Z', source: { observer: { display: 'proxy' } }, outcome: '0',
      agent: [{ who: { reference: 'Practitioner/dr1' }, requestor: true }], entity: [{ what: { reference: 'Patient/p9' } }] });
    await repo.create({ resourceType: 'MedicationAdministration', status: 'completed', subject: { reference: 'Patient/p9' },
      medicationCodeableConcept: { coding: [{ system: 'http://www.nlm.nih.gov/research/umls/rxnorm', code: '253182' }] },
      effectiveDateTime: '2026-01-05T08:00:00Z' });
    await repo.create({ resourceType: 'DiagnosticReport', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '97506-0' }] },
      subject: { reference: 'Patient/p9' }, effectiveDateTime: '2026-01-05' });
    await repo.create({ resourceType: 'ServiceRequest', status: 'active', intent: 'order', subject: { reference: 'Patient/p9' },
      code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] }, authoredOn: '2026-01-04T09:00:00Z' });
    await repo.create({ resourceType: 'Practitioner', identifier: [{ system: 'http://hl7.org/fhir/sid/us-npi', value: '1234567893' }],
      name: [{ family: 'House' }] });
    await repo.create({ resourceType: 'Organization', name: 'Diabetes Clinic', identifier: [{ system: 'urn:org', value: 'O1' }] });

    expect(await one('Device?patient=p9&identifier=SN1&type=462242008&status=active')).toBe(1);
    expect(await one('Consent?patient=p9&status=active&category=59284-0&date=2026-01-05&period=2026-06-01&actor=Practitioner/dr1')).toBe(1);
    expect(await one('Consent?period=2027-06-01')).toBe(0);
    expect(await one('AuditEvent?patient=p9&agent=Practitioner/dr1&date=ge2026-01-05&type=110112&outcome=0')).toBe(1);
    expect(await one('MedicationAdministration?patient=p9&code=253182&effective-time=2026-01-05&status=completed')).toBe(1);
    expect(await one('DiagnosticReport?patient=p9&code=97506-0&date=2026-01-05&status=final')).toBe(1);
    expect(await one('ServiceRequest?patient=p9&code=99504-3&authored=2026-01-04&intent=order')).toBe(1);
    expect(await one('Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|1234567893&name=hou')).toBe(1);
    expect(await one('Organization?name=diab&identifier=O1')).toBe(1);
    expect(await one('Device?patient=p99')).toBe(0);
    expect(repo.supportedSearchParams().Observation).toEqual(expect.arrayContaining(['patient', 'subject', 'code', 'date', 'category', 'device', '_id', '_lastUpdated']));
    for (const [type, params] of Object.entries(repo.supportedSearchParams())) {
      for (const param of params) await expect(search(`${type}?${param}:missing=true`)).resolves.toBeDefined();
    }
  });
});

describe('history', () => {
  it('instance, type and system history, newest first, with _since and paging', async () => {
    const a = (await repo.create<Patient>({ resourceType: 'Patient', gender: 'male' })).resource;
    await new Promise((r) => setTimeout(r, 5));
    const since = new Date().toISOString();
    await new Promise((r) => setTimeout(r, 5));
    await repo.update<Patient>({ ...a, gender: 'female' });
    const o = (await repo.create(observation(a.id!, '2026-01-01T00:00:00Z'))).resource;
    await repo.delete('Patient', a.id!);

    const instance = await repo.history({ resourceType: 'Patient', id: a.id!, count: 10, offset: 0 });
    expect(instance.entries.map((e) => [e.versionId, e.method, e.resource ? 'body' : 'none'])).toEqual([
      ['3', 'DELETE', 'none'], ['2', 'PUT', 'body'], ['1', 'POST', 'body']]);
    expect((instance.entries[1]!.resource as Patient).gender).toBe('female');

    const type = await repo.history({ resourceType: 'Observation', count: 10, offset: 0 });
    expect(type.entries.map((e) => e.id)).toEqual([o.id]);

    const system = await repo.history({ count: 10, offset: 0 });
    expect(system.entries.map((e) => `${e.resourceType}/${e.versionId}`)).toEqual(['Patient/3', 'Observation/1', 'Patient/2', 'Patient/1']);

    const recent = await repo.history({ since, count: 10, offset: 0 });
    expect(recent.entries).toHaveLength(3);

    const page1 = await repo.history({ count: 2, offset: 0 });
    const page2 = await repo.history({ count: 2, offset: 2 });
    expect(page1.hasMore).toBe(true);
    expect(page2.hasMore).toBe(false);
    expect([...page1.entries, ...page2.entries].map((e) => `${e.id}/${e.versionId}`)).toEqual(system.entries.map((e) => `${e.id}/${e.versionId}`));

    await rejectsWith(repo.history({ resourceType: 'Patient', id: 'absent', count: 10, offset: 0 }), 'ERR_NOT_FOUND');
    await rejectsWith(repo.history({ since: 'yesterday', count: 10, offset: 0 }), 'ERR_INVALID');
  });
});

describe('transaction', () => {
  const bundle = (entry: Bundle['entry']): Bundle => ({ resourceType: 'Bundle', type: 'transaction', entry });

  it('creates, updates, deletes and reads; urn:uuid references become the assigned ids', async () => {
    await repo.update({ resourceType: 'Patient', id: 'old', gender: 'male' });
    await repo.update({ resourceType: 'Device', id: 'dev', status: 'active' });
    const response = await repo.transaction(bundle([
      { fullUrl: 'urn:uuid:0c3e6f3a-0000-4000-8000-000000000001', resource: { resourceType: 'Patient', gender: 'female' },
        request: { method: 'POST', url: 'Patient' } },
      { fullUrl: 'urn:uuid:0c3e6f3a-0000-4000-8000-000000000002',
        resource: observation('x', '2026-01-01T00:00:00Z', { subject: { reference: 'urn:uuid:0c3e6f3a-0000-4000-8000-000000000001' } }),
        request: { method: 'POST', url: 'Observation' } },
      { resource: { resourceType: 'Device', id: 'dev', status: 'inactive', patient: { reference: 'urn:uuid:0c3e6f3a-0000-4000-8000-000000000001' } },
        request: { method: 'PUT', url: 'Device/dev' } },
      { request: { method: 'DELETE', url: 'Patient/old' } },
      { request: { method: 'GET', url: 'Device/dev' } },
    ]));
    expect(response.type).toBe('transaction-response');
    const [patient, obs, device, deleted, read] = response.entry!;
    expect(patient!.response).toMatchObject({ status: '201 Created', etag: 'W/"1"' });
    expect(patient!.response!.location).toMatch(/^Patient\/[0-9a-f-]{36}\/_history\/1$/);
    expect(patient!.response!.lastModified).toBeDefined();
    const patientId = patient!.resource!.id!;
    expect((obs!.resource as Observation).subject?.reference).toBe(`Patient/${patientId}`);
    expect(device!.response).toMatchObject({ status: '200 OK', etag: 'W/"2"', location: 'Device/dev/_history/2' });
    expect(deleted!.response!.status).toBe('204 No Content');
    expect(read!.response!.status).toBe('200 OK');
    await rejectsWith(repo.read('Patient', 'old'), 'ERR_GONE');
    expect((await search(`Observation?patient=${patientId}`)).resources).toHaveLength(1);
    expect((await search(`Device?patient=${patientId}`)).resources).toHaveLength(1);
  });

  it('is all-or-nothing: a failing entry leaves nothing behind', async () => {
    await repo.update({ resourceType: 'Patient', id: 'p1', gender: 'male' });
    const historyBefore = await repo.history({ count: 100, offset: 0 });
    await rejectsWith(repo.transaction(bundle([
      { resource: { resourceType: 'Patient', gender: 'female', identifier: [{ system: 'urn:new', value: 'n1' }] },
        request: { method: 'POST', url: 'Patient' } },
      { resource: { resourceType: 'Patient', id: 'p1', gender: 'female' }, request: { method: 'PUT', url: 'Patient/p1' } },
      { resource: observation('brand-new-patient', '2026-01-01T00:00:00Z'), request: { method: 'POST', url: 'Observation' } },
      { resource: { resourceType: 'Patient', id: 'p1', gender: 'other' }, request: { method: 'PUT', url: 'Patient/p1', ifMatch: 'W/"9"' } },
    ])), 'ERR_INVALID'); // the same resource twice
    await rejectsWith(repo.transaction(bundle([
      { resource: { resourceType: 'Patient', gender: 'female', identifier: [{ system: 'urn:new', value: 'n1' }] },
        request: { method: 'POST', url: 'Patient' } },
      { resource: observation('brand-new-patient', '2026-01-01T00:00:00Z'), request: { method: 'POST', url: 'Observation' } },
      { resource: { resourceType: 'Patient', id: 'p1', gender: 'other' }, request: { method: 'PUT', url: 'Patient/p1', ifMatch: '9' } },
    ])), 'ERR_PRECONDITION_FAILED');
    await rejectsWith(repo.transaction(bundle([
      { resource: { resourceType: 'Patient', gender: 'female' }, request: { method: 'POST', url: 'Patient' } },
      { request: { method: 'GET', url: 'Patient/does-not-exist' } },
    ])), 'ERR_NOT_FOUND');
    expect((await repo.read<Patient>('Patient', 'p1')).gender).toBe('male');
    expect((await search('Patient?identifier=urn:new|n1')).resources).toEqual([]);
    expect((await search('Observation')).resources).toEqual([]);
    expect((await repo.history({ count: 100, offset: 0 })).entries).toEqual(historyBefore.entries);
    // The repository still works after a rolled-back transaction that had created a patient key.
    const created = await repo.create(observation('brand-new-patient', '2026-01-01T00:00:00Z'));
    await expect(repo.read('Observation', created.resource.id!)).resolves.toMatchObject({ id: created.resource.id });
  });

  it('a conditional create takes a comma list of dates (OR), as a search does', async () => {
    const first = (await repo.create(observation('p7', '2026-01-03T10:00:00Z'))).resource;
    const again = await repo.create(observation('p7', '2026-01-03T10:00:00Z'), { ifNoneExist: 'subject=Patient/p7&date=2026-01-01,2026-01-03' });
    expect(again).toMatchObject({ outcome: 'existing', resource: { id: first.id } });
    const other = await repo.create(observation('p7', '2026-01-05T10:00:00Z'), { ifNoneExist: 'subject=Patient/p7&date=2026-01-02,2026-01-05' });
    expect(other.outcome).toBe('created');
    await rejectsWith(repo.create(observation('p7', '2026-01-06T10:00:00Z'), { ifNoneExist: 'subject=Patient/p7&date=lt2026-01-02,gt2026-01-04' }), 'ERR_INVALID');
  });

  it('honours conditional creates (request.ifNoneExist) and rejects mismatched ids', async () => {
    const existing = (await repo.create<Device>({ resourceType: 'Device', identifier: [{ system: 'urn:serial', value: 'SN9' }] })).resource;
    const response = await repo.transaction(bundle([
      { fullUrl: 'urn:uuid:0c3e6f3a-0000-4000-8000-00000000000d', resource: { resourceType: 'Device', identifier: [{ system: 'urn:serial', value: 'SN9' }] },
        request: { method: 'POST', url: 'Device', ifNoneExist: 'identifier=urn:serial|SN9' } },
      { resource: observation('p1', '2026-01-01T00:00:00Z', { device: { reference: 'urn:uuid:0c3e6f3a-0000-4000-8000-00000000000d' } }),
        request: { method: 'POST', url: 'Observation' } },
    ]));
    expect(response.entry![0]!.response!.status).toBe('200 OK');
    expect(response.entry![0]!.resource!.id).toBe(existing.id);
    expect((response.entry![1]!.resource as Observation).device?.reference).toBe(`Device/${existing.id}`);
    expect((await search('Device')).resources).toHaveLength(1);

    await rejectsWith(repo.transaction(bundle([
      { resource: { resourceType: 'Patient', id: 'a' }, request: { method: 'PUT', url: 'Patient/b' } },
    ])), 'ERR_INVALID');
    await rejectsWith(repo.transaction(bundle([
      { resource: { gender: 'male' } as unknown as Patient, request: { method: 'POST', url: 'Patient' } },
    ])), 'ERR_INVALID');
    await rejectsWith(repo.transaction({ resourceType: 'Bundle', type: 'batch', entry: [] }), 'ERR_INVALID');
  });
});
