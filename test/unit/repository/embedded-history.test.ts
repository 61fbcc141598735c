/**
 * History with `_since` on the embedded store (http.html#history): exactly the versions updated at
 * or after the instant, in write order, paged; found by the time index whatever the writer's clock did.
 */
import { afterEach, beforeEach, describe, expect, it, jest } from '@jest/globals';
import type { Device, Observation, Patient } from '@medplum/fhirtypes';
import Database from 'better-sqlite3';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { EmbeddedRepository } from '../../../src/repository/embedded/index.js';
import { sinceMatchesSql } from '../../../src/repository/embedded/history.js';
import type { HistoryEntry, HistoryRequest } from '../../../src/repository/port.js';

let dataDir: string;
let repo: EmbeddedRepository;
const T0 = Date.parse('2026-03-01T08:00:00Z');
const at = (ms: number): string => new Date(T0 + ms).toISOString();

beforeEach(async () => {
  dataDir = mkdtempSync(path.join(tmpdir(), 'gg-history-'));
  repo = await EmbeddedRepository.open({ dataDir });
});

afterEach(async () => {
  jest.restoreAllMocks();
  await repo.close();
  rmSync(dataDir, { recursive: true, force: true });
});

/** Runs a write with the store's clock at T0 + ms. */
async function writtenAt<T>(ms: number, write: () => Promise<T>): Promise<T> {
  const clock = jest.spyOn(Date, 'now').mockReturnValue(T0 + ms);
  try {
    return await write();
  } finally {
    clock.mockRestore();
  }
}

function observation(patient: string): Observation {
  return {
    resourceType: 'Observation',
    status: 'final',
    code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] },
    subject: { reference: `Patient/${patient}` },
    effectiveDateTime: '2026-03-01T07:55:00Z',
    valueQuantity: { value: 120, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
  };
}

const label = (e: HistoryEntry): string => `${e.resourceType}/${e.id}/${e.versionId}`;

/** Every page of a history request, `count` at a time, checking `hasMore` on each. */
async function allPages(request: Omit<HistoryRequest, 'count' | 'offset'>, count: number): Promise<string[]> {
  const out: string[] = [];
  for (let offset = 0; ; offset += count) {
    const page = await repo.history({ ...request, count, offset });
    out.push(...page.entries.map(label));
    expect(page.entries.length).toBeLessThanOrEqual(count);
    if (!page.hasMore) return out;
    expect(page.entries).toHaveLength(count);
  }
}

/**
 * Writes, in this order (seq), with the store clock at T0 + the time shown; the clock steps back
 * after the deletion:
 *   1000 Patient p1 v1 · 2000 Observation o1 v1 · 3000 Patient p1 v2 · 4000 Device d1 v1 ·
 *   5000 Observation o2 v1 · 6000 Observation o1 v2 (deletion) · 2500 Patient p2 v1 · 3500 Observation o2 v2
 */
async function writeVersions(): Promise<{ p1: string; p2: string; o1: string; o2: string; d1: string }> {
  const p1 = (await writtenAt(1000, () => repo.create<Patient>({ resourceType: 'Patient', gender: 'male' }))).resource;
  const o1 = (await writtenAt(2000, () => repo.create(observation(p1.id!)))).resource;
  await writtenAt(3000, () => repo.update<Patient>({ ...p1, gender: 'female' }));
  const d1 = (await writtenAt(4000, () => repo.create<Device>({ resourceType: 'Device', status: 'active' }))).resource;
  const o2 = (await writtenAt(5000, () => repo.create(observation(p1.id!)))).resource;
  await writtenAt(6000, () => repo.delete('Observation', o1.id!));
  const p2 = (await writtenAt(2500, () => repo.create<Patient>({ resourceType: 'Patient', gender: 'other' }))).resource;
  await writtenAt(3500, () => repo.update<Observation>({ ...o2, status: 'amended' }));
  return { p1: p1.id!, p2: p2.id!, o1: o1.id!, o2: o2.id!, d1: d1.id! };
}

describe('history with _since', () => {
  it('returns exactly the versions updated at or after the instant, across types and ids, newest write first', async () => {
    const { p1, o1, o2, d1 } = await writeVersions();

    const system = await repo.history({ since: at(3000), count: 10, offset: 0 });
    expect(system.entries.map(label)).toEqual([
      `Observation/${o2}/2`, `Observation/${o1}/2`, `Observation/${o2}/1`, `Device/${d1}/1`, `Patient/${p1}/2`]);
    expect(system.hasMore).toBe(false);
    expect(system.entries.map((e) => e.method)).toEqual(['PUT', 'DELETE', 'POST', 'POST', 'PUT']);
    expect(system.entries.map((e) => e.lastUpdated)).toEqual([at(3500), at(6000), at(5000), at(4000), at(3000)]);
    expect((system.entries[0]!.resource as Observation).status).toBe('amended');

    const observations = await repo.history({ resourceType: 'Observation', since: at(3000), count: 10, offset: 0 });
    expect(observations.entries.map(label)).toEqual([`Observation/${o2}/2`, `Observation/${o1}/2`, `Observation/${o2}/1`]);
    const instance = await repo.history({ resourceType: 'Observation', id: o2, since: at(5000), count: 10, offset: 0 });
    expect(instance.entries.map(label)).toEqual([`Observation/${o2}/1`]);
    expect((await repo.history({ since: at(6001), count: 10, offset: 0 })).entries).toEqual([]);
    expect((await repo.history({ resourceType: 'Device', since: at(4001), count: 10, offset: 0 })).entries).toEqual([]);
  });

  it('pages give the same versions as one page, for every page size, offset and scope', async () => {
    const { p1, o2 } = await writeVersions();
    const scopes: Omit<HistoryRequest, 'count' | 'offset'>[] = [
      {}, { resourceType: 'Observation' }, { resourceType: 'Patient' }, { resourceType: 'Observation', id: o2 },
      { resourceType: 'Patient', id: p1 },
    ];
    for (const scope of scopes) {
      const all = (await repo.history({ ...scope, count: 100, offset: 0 })).entries;
      for (const sinceMs of [0, 1000, 2500, 3000, 3500, 5000, 6000, 7000]) {
        const since = at(sinceMs);
        const expected = all.filter((e) => Date.parse(e.lastUpdated) >= T0 + sinceMs).map(label);
        for (const count of [1, 2, 3, 4]) {
          expect({ scope, sinceMs, count, got: await allPages({ ...scope, since }, count) })
            .toEqual({ scope, sinceMs, count, got: expected });
        }
        const past = await repo.history({ ...scope, since, count: 2, offset: expected.length });
        expect(past).toEqual({ entries: [], hasMore: false, snapshot: expect.any(String) });
      }
    }
  });

  it('finds a version written after the clock stepped back, at its own time, in write order', async () => {
    const { p1, p2, o1, o2, d1 } = await writeVersions();
    // p2 was written after every other version but carries 2500: a bound on write order taken from
    // the time (everything since 2500 comes after the 2000 write) would miss or misplace it.
    expect((await repo.history({ resourceType: 'Patient', since: at(2500), count: 10, offset: 0 })).entries.map(label))
      .toEqual([`Patient/${p2}/1`, `Patient/${p1}/2`]);
    expect((await repo.history({ resourceType: 'Patient', since: at(2501), count: 10, offset: 0 })).entries.map(label))
      .toEqual([`Patient/${p1}/2`]);
    const page = await repo.history({ since: at(2500), count: 1, offset: 1 });
    expect(page.entries.map(label)).toEqual([`Patient/${p2}/1`]);
    expect(page.hasMore).toBe(true);
    expect((await repo.history({ since: at(3500), count: 10, offset: 0 })).entries.map(label))
      .toEqual([`Observation/${o2}/2`, `Observation/${o1}/2`, `Observation/${o2}/1`, `Device/${d1}/1`]);
  });

  it('leaves out versions whose data key was erased, and pages over what is left', async () => {
    const { p1, p2, o1, d1 } = await writeVersions();
    await writtenAt(7000, () => repo.eraseSubject(p1));
    // p1's versions and its Observations' bodies are unreadable; the deletion of o1 carries no body
    const left = [`Patient/${p2}/1`, `Observation/${o1}/2`, `Device/${d1}/1`];
    for (const since of [at(0), at(2500)]) {
      for (const count of [1, 2, 3, 4]) expect(await allPages({ since }, count)).toEqual(left);
      for (const offset of [0, 1, 2, 3]) {
        const page = await repo.history({ since, count: 10, offset });
        expect(page.entries.map(label)).toEqual(left.slice(offset));
        expect(page.hasMore).toBe(false);
      }
    }
    expect(await allPages({ resourceType: 'Observation', since: at(0) }, 1)).toEqual([`Observation/${o1}/2`]);
  });
});

describe('history with _since reads the time index', () => {
  function plan(sql: string, args: unknown[]): string[] {
    const db = new Database(path.join(dataDir, 'store', 'glucoguard.db'), { readonly: true });
    try {
      return (db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all(...args) as { detail: string }[]).map((r) => r.detail);
    } finally {
      db.close();
    }
  }

  it('type and system history with _since search the (type, last_updated) range instead of scanning versions', async () => {
    await writeVersions();
    for (const [sql, args] of [[sinceMatchesSql(true), ['Observation', T0, 10]], [sinceMatchesSql(false), [T0, 10]]] as const) {
      const details = plan(sql, [...args]);
      expect(details).toContain('SEARCH v USING INDEX versions_by_time (type=? AND last_updated>?)');
      expect(details.filter((d) => /^SCAN (v|versions)\b/.test(d) && !d.includes('COVERING INDEX versions_by_time'))).toEqual([]);
    }
  });

  it('a store made before the time index gets it at open, and answers the same', async () => {
    const { o1, o2 } = await writeVersions();
    await repo.close();
    const db = new Database(path.join(dataDir, 'store', 'glucoguard.db'));
    db.exec('DROP INDEX versions_by_time');
    db.close();
    repo = await EmbeddedRepository.open({ dataDir });
    const check = new Database(path.join(dataDir, 'store', 'glucoguard.db'), { readonly: true });
    const index = check.prepare("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'versions_by_time'").get() as { sql: string } | undefined;
    check.close();
    expect(index?.sql).toMatch(/ON versions \(type, last_updated\)/);
    expect((await repo.history({ resourceType: 'Observation', since: at(3000), count: 10, offset: 0 })).entries.map(label))
      .toEqual([`Observation/${o2}/2`, `Observation/${o1}/2`, `Observation/${o2}/1`]);
  });
});

describe('history confined to some patients', () => {
  it('type and system history with patients give exactly those patients\' versions and deletions, paged, from the key index', async () => {
    const { p1, p2, o1, o2, d1 } = await writeVersions();
    const o3 = (await writtenAt(7000, () => repo.create(observation(p2)))).resource;
    const full = await allPages({ resourceType: 'Observation' }, 100);
    // p1's observations, including the deletion of o1 (it keeps the deleted version's key), nothing of p2
    const ofP1 = [`Observation/${o2}/2`, `Observation/${o1}/2`, `Observation/${o2}/1`, `Observation/${o1}/1`];
    expect(full).toEqual([`Observation/${o3.id}/1`, ...ofP1]);
    expect(await allPages({ resourceType: 'Observation', patients: [p1] }, 100)).toEqual(ofP1);
    expect(await allPages({ resourceType: 'Observation', patients: [p2] }, 100)).toEqual([`Observation/${o3.id}/1`]);
    for (const count of [1, 2, 3]) {
      expect(await allPages({ resourceType: 'Observation', patients: [p1, p2] }, count)).toEqual(full);
    }
    // system history: the Patient resources are their own patient's; the Device has no patient
    const system = await allPages({ patients: [p1] }, 2);
    expect(system).toEqual((await allPages({}, 100)).filter((l) => !l.includes(p2) && !l.includes(o3.id!) && !l.startsWith(`Device/${d1}`)));
    // o2 v2 was written while the clock stood at 3500: not since 4500
    expect(await allPages({ patients: [p1], since: at(4500) }, 1)).toEqual([`Observation/${o1}/2`, `Observation/${o2}/1`]);
    expect(await allPages({ resourceType: 'Observation', patients: [] }, 10)).toEqual([]);
    // the page's seqs come from versions_by_key, not a scan of versions
    await repo.close();
    const db = new Database(path.join(dataDir, 'store', 'glucoguard.db'), { readonly: true });
    try {
      const keyId = 'p' + 'x'.repeat(32);
      const details = (db.prepare(`EXPLAIN QUERY PLAN SELECT v.seq FROM versions v INDEXED BY versions_by_key LEFT JOIN data_keys k ON k.key_id = v.key_id
        WHERE v.key_id = ? AND v.type = ? ORDER BY v.seq DESC LIMIT 10`).all(keyId, 'Observation') as { detail: string }[]).map((r) => r.detail);
      expect(details.some((d) => d.includes('USING') && d.includes('versions_by_key (key_id=? AND type=?)'))).toBe(true);
      expect(details.filter((d) => d.includes('USE TEMP B-TREE'))).toEqual([]);
    } finally {
      db.close();
      repo = await EmbeddedRepository.open({ dataDir });
    }
  });
});

describe('deletions written before they kept a data key id', () => {
  it('get the deleted version\'s key at open, so history confined to the patient lists them', async () => {
    const { p1, o1, o2 } = await writeVersions();
    await repo.close();
    // as a store written before deletions kept the key
    const db = new Database(path.join(dataDir, 'store', 'glucoguard.db'));
    db.prepare('UPDATE versions SET key_id = NULL WHERE method = 2').run();
    db.close();
    repo = await EmbeddedRepository.open({ dataDir });
    expect(await allPages({ resourceType: 'Observation', patients: [p1] }, 10))
      .toEqual([`Observation/${o2}/2`, `Observation/${o1}/2`, `Observation/${o2}/1`, `Observation/${o1}/1`]);
  });
});

describe('versionKeysSince (reconciliation listing)', () => {
  const key = (k: { resourceType: string; id: string; versionId: string }): string => `${k.resourceType}/${k.id}/${k.versionId}`;

  it('lists every readable version updated at or after the instant, whatever the chunk size; no deletions', async () => {
    await writeVersions();
    const all = (await repo.history({ count: 100, offset: 0 })).entries;
    for (const sinceMs of [0, 1000, 2500, 3000, 3500, 5000, 6000, 7000]) {
      const expected = all.filter((e) => e.method !== 'DELETE' && Date.parse(e.lastUpdated) >= T0 + sinceMs).map(label).sort();
      for (const chunk of [1, 2, 3, 5000]) {
        const got = [...repo.versionKeysSince(T0 + sinceMs, chunk)].map(key);
        expect({ sinceMs, chunk, got: got.sort() }).toEqual({ sinceMs, chunk, got: expected });
      }
    }
  });

  it('walks past many versions of the same instant, whatever the chunk size', async () => {
    const same = await writtenAt(1000, async () => {
      const ids: string[] = [];
      for (let i = 0; i < 7; i++) ids.push((await repo.create<Patient>({ resourceType: 'Patient', gender: 'male' })).resource.id!);
      return ids;
    });
    const expected = same.map((id) => `Patient/${id}/1`).sort();
    for (const chunk of [1, 2, 3, 7, 8]) {
      expect([...repo.versionKeysSince(T0 + 1000, chunk)].map(key).sort()).toEqual(expected);
      expect([...repo.versionKeysSince(T0 + 1001, chunk)]).toEqual([]);
    }
  });

  it('leaves out the versions of an erased patient, and lets the caller read between two keys', async () => {
    const { p1, p2, d1 } = await writeVersions();
    await repo.eraseSubject(p1);
    const keys: string[] = [];
    for (const k of repo.versionKeysSince(T0, 1)) {
      keys.push(key(k));
      await repo.vread(k.resourceType, k.id, k.versionId); // another statement mid-listing
    }
    expect(keys.sort()).toEqual([`Device/${d1}/1`, `Patient/${p2}/1`].sort());
  });
});

describe('history snapshot (HistoryRequest.snapshot)', () => {
  it('a later page with the first page\'s snapshot leaves out what was written since, in every scope', async () => {
    const patient = await repo.create<Patient>({ resourceType: 'Patient' });
    for (let i = 0; i < 4; i++) await repo.create<Device>({ resourceType: 'Device', patient: { reference: `Patient/${patient.resource.id}` } });
    for (const scope of [{}, { resourceType: 'Device' }, { resourceType: 'Device', patients: [patient.resource.id!] }] as Partial<HistoryRequest>[]) {
      const first = await repo.history({ ...scope, count: 2, offset: 0 });
      expect(first.snapshot).toMatch(/^\d+$/);
      const whole = await repo.history({ ...scope, count: 100, offset: 0 });
      await repo.create<Device>({ resourceType: 'Device', patient: { reference: `Patient/${patient.resource.id}` } });
      const rest = await repo.history({ ...scope, count: 100, offset: 2, snapshot: first.snapshot });
      const key = (e: HistoryEntry): string => `${e.resourceType}/${e.id}/${e.versionId}`;
      expect([...first.entries, ...rest.entries].map(key)).toEqual(whole.entries.map(key));
      // without it, the new version pushes the walk: the second page repeats the first page's last entry
      const unmarked = await repo.history({ ...scope, count: 100, offset: 2 });
      expect(unmarked.entries.map(key)).toContain(key(first.entries[1]!));
    }
  });
});
