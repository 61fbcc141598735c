/**
 * Search paging under concurrent writes (docs/search.md, Results): a walk of `next` links resumes
 * after the last match the page before examined (keyset), so readings created, updated or deleted
 * between two pages — before or after the walk's position — never make an unchanged reading appear
 * twice or not at all, in every order the facade offers, for open access and for a grantee whose
 * pages the consent guard re-fills past withheld readings. `previous` links and page tokens issued
 * before positions existed (query and offset) still work.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { Operator } from '@medplum/core';
import type { Bundle, Observation, Patient } from '@medplum/fhirtypes';
import { randomUUID } from 'node:crypto';
import request from 'supertest';
import { OPEN_ACCESS } from '../../src/fhir/access.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { DAY, codeLimitedAndWholeGrants } from './consent-helpers.js';

const FIVE_MINUTES = 5 * 60_000;
const iso = (t: number): string => new Date(t).toISOString();

function reading(patient: string, at: number | undefined, code = '99504-3', extra: Partial<Observation> = {}): Observation {
  return {
    resourceType: 'Observation', status: 'final',
    code: { coding: [{ system: 'http://loinc.org', code }] },
    subject: { reference: `Patient/${patient}` },
    ...(at === undefined ? {} : { effectiveDateTime: iso(at) }),
    valueQuantity: { value: 120, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
    ...extra,
  };
}

interface Walk {
  /** Match ids in the order the pages gave them. */
  ids: string[];
  /** Matches per page. */
  sizes: number[];
}

type Get = (path: string, query?: Record<string, string | string[]>) => Promise<request.Response>;

/** Follows `next` links from the first page to the end, calling `between` after each page. */
async function walk(get: Get, path: string, query: Record<string, string | string[]>, between: (seen: string[]) => Promise<void>): Promise<Walk> {
  const out: Walk = { ids: [], sizes: [] };
  let res = await get(path, query);
  for (let page = 0; page < 200; page++) {
    expect(res.status).toBe(200);
    const bundle = res.body as Bundle;
    const matches = (bundle.entry ?? []).filter((e) => e.search?.mode === 'match' || (e.search === undefined && e.resource?.resourceType === 'Observation'));
    const ids = matches.filter((e) => e.resource?.resourceType === 'Observation').map((e) => e.resource!.id!);
    out.ids.push(...ids);
    out.sizes.push(matches.length);
    const next = bundle.link?.find((l) => l.relation === 'next')?.url;
    if (!next) return out;
    await between(out.ids);
    const url = new URL(next);
    res = await get(url.pathname, Object.fromEntries(url.searchParams));
  }
  throw new Error('the walk did not end');
}

/** How often each id appears. */
function counts(ids: string[]): Map<string, number> {
  const n = new Map<string, number>();
  for (const id of ids) n.set(id, (n.get(id) ?? 0) + 1);
  return n;
}

/**
 * Writes between pages, around the walk's position: readings created before and after it, the
 * last reading seen deleted (offset paging then skips one), an unseen one deleted and another
 * moved by an update. Records what changed, so that the rest is what stayed unchanged.
 */
class Churn {
  readonly created: string[] = [];
  readonly deleted = new Set<string>();
  /** Deleted once seen: unchanged until then, so seen exactly once too. */
  readonly deletedSeen = new Set<string>();
  readonly updated = new Set<string>();
  private step = 0;

  constructor(private readonly t: TestApp, private readonly patient: string, private readonly initial: string[],
    private readonly early: number, private readonly late: number, private readonly code = '99504-3') {}

  async between(seen: string[]): Promise<void> {
    const repo = this.t.app.repository;
    this.step++;
    for (const at of [this.early + this.step * 1000, this.late + this.step * 1000]) {
      this.created.push((await repo.create(reading(this.patient, at, this.code))).resource.id!);
    }
    const lastSeen = [...seen].reverse().find((id) => this.initial.includes(id) && !this.changed(id));
    if (lastSeen) {
      this.deletedSeen.add(lastSeen);
      await this.remove(lastSeen);
    }
    const unseen = this.initial.filter((id) => !seen.includes(id) && !this.changed(id));
    if (unseen.length > 2 && this.step <= 3) {
      await this.remove(unseen[0]!);
      const moved = unseen[unseen.length - 1]!;
      const current = await repo.read<Observation>('Observation', moved);
      this.updated.add(moved);
      await repo.update({ ...current, effectiveDateTime: iso(this.early - this.step * 1000), valueQuantity: { ...current.valueQuantity!, value: 99 } });
    }
  }

  changed(id: string): boolean {
    return this.deleted.has(id) || this.updated.has(id);
  }

  /** Checks a walk: every unchanged reading exactly once; nothing else more often than it may appear. */
  check(walked: Walk): void {
    const seen = counts(walked.ids);
    const unchanged = this.initial.filter((id) => !this.changed(id) || this.deletedSeen.has(id));
    expect(unchanged.length).toBeGreaterThan(10);
    for (const id of unchanged) expect([id, seen.get(id) ?? 0]).toEqual([id, 1]);
    for (const id of this.created) expect(seen.get(id) ?? 0).toBeLessThanOrEqual(1);
    for (const id of this.deleted) if (!this.deletedSeen.has(id)) expect(seen.get(id) ?? 0).toBe(0);
    // an updated reading may show at its old place and again at its new one
    for (const id of this.updated) expect(seen.get(id) ?? 0).toBeLessThanOrEqual(2);
    expect(this.deleted.size).toBeGreaterThan(1);
  }

  private async remove(id: string): Promise<void> {
    this.deleted.add(id);
    await this.t.app.repository.delete('Observation', id);
  }
}

describe('a walk of next links while readings are written (open access)', () => {
  let t: TestApp;
  const T0 = Date.parse('2026-02-01T00:00:00Z');
  const get: Get = (path, query = {}) => request(t.app.http).get(path).query(query);

  beforeAll(async () => {
    t = await startTestApp();
  });
  afterAll(async () => {
    await t?.close();
  });

  /** A new patient with 30 readings every 5 minutes from T0 (and, `mixed`, one undated and one spanning three days). */
  async function patientWithReadings(mixed: boolean): Promise<string> {
    const patient = randomUUID();
    const repo = t.app.repository;
    for (let i = 0; i < 30; i++) await repo.create(reading(patient, T0 + i * FIVE_MINUTES));
    if (mixed) {
      await repo.create(reading(patient, undefined));
      await repo.create(reading(patient, undefined, '99504-3', { effectivePeriod: { start: iso(T0 + 20 * 60_000), end: iso(T0 + 3 * DAY) } }));
    }
    return patient;
  }

  const orders: [string, (patient: string, since: string) => Record<string, string | string[]>][] = [
    ['date', (p) => ({ patient: p, _sort: 'date' })],
    ['-date (a patient\'s readings newest first)', (p) => ({ patient: p, _sort: '-date' })],
    ['the default order of a patient and a date range', (p) => ({ patient: p, date: [`ge${iso(T0 - DAY)}`, `lt${iso(T0 + DAY)}`] })],
    ['the default order of a patient', (p) => ({ patient: p })],
    ['_lastUpdated', (p) => ({ patient: p, _sort: '_lastUpdated' })],
    ['-_lastUpdated', (p) => ({ patient: p, _sort: '-_lastUpdated' })],
    ['_id', (p) => ({ patient: p, _sort: '_id' })],
    ['_lastUpdated over the type', (_p, since) => ({ _lastUpdated: `ge${since}`, _sort: '_lastUpdated' })],
    ['-_lastUpdated over the type', (_p, since) => ({ _lastUpdated: `ge${since}`, _sort: '-_lastUpdated' })],
    ['the default order over the type (last updated)', (_p, since) => ({ _lastUpdated: `ge${since}` })],
  ];

  for (const mixed of [false, true]) {
    test.each(orders)(`${mixed ? 'with undated and long readings: ' : ''}every unchanged reading exactly once in %s`, async (_name, queryOf) => {
      await new Promise((resolve) => setTimeout(resolve, 5));
      const since = iso(Date.now());
      const patient = await patientWithReadings(mixed);
      const query = { ...queryOf(`Patient/${patient}`, since), _count: '5' };
      const before = await get('/fhir/Observation', { ...query, _count: '1000' });
      const initial = (before.body as Bundle).entry!.map((e) => e.resource!.id!);
      expect(initial.length).toBeGreaterThanOrEqual(30);
      const churn = new Churn(t, patient, initial, T0 - 60_000, T0 + 31 * FIVE_MINUTES);
      const walked = await walk(get, '/fhir/Observation', query, (seen) => churn.between(seen));
      churn.check(walked);
      expect(walked.sizes.slice(0, -1).every((n) => n === 5)).toBe(true);
    });
  }

  test('Patient/$everything pages the same way: every unchanged reading exactly once', async () => {
    const patient = (await t.app.repository.create<Patient>({ resourceType: 'Patient', name: [{ family: 'Walker' }] })).resource.id!;
    for (let i = 0; i < 30; i++) await t.app.repository.create(reading(patient, T0 + i * FIVE_MINUTES));
    const initial = (await t.app.repository.search({ resourceType: 'Observation', filters: [{ code: 'patient', operator: Operator.EQUALS, value: `Patient/${patient}` }], count: 1000, offset: 0 }))
      .resources.map((r) => r.id!);
    expect(initial).toHaveLength(30);
    const churn = new Churn(t, patient, initial, T0 - 60_000, T0 + 31 * FIVE_MINUTES);
    const walked = await walk(get, `/fhir/Patient/${patient}/$everything`, { _type: 'Observation', _count: '5' }, (seen) => churn.between(seen));
    churn.check(walked);
  });

  test('a previous link goes back a page by offset; a token of the query and offset alone (issued before positions) still pages', async () => {
    const patient = await patientWithReadings(false);
    const query = { patient: `Patient/${patient}`, _sort: '-date', _count: '4' };
    const whole = ((await get('/fhir/Observation', { ...query, _count: '1000' })).body as Bundle).entry!.map((e) => e.resource!.id!);
    const follow = async (bundle: Bundle, relation: string): Promise<Bundle> => {
      const url = new URL(bundle.link!.find((l) => l.relation === relation)!.url);
      const res = await get(url.pathname, Object.fromEntries(url.searchParams));
      expect(res.status).toBe(200);
      return res.body as Bundle;
    };
    const ids = (b: Bundle): string[] => (b.entry ?? []).map((e) => e.resource!.id!);
    const page1 = (await get('/fhir/Observation', query)).body as Bundle;
    const page2 = await follow(page1, 'next');
    const page3 = await follow(page2, 'next');
    expect([...ids(page1), ...ids(page2), ...ids(page3)]).toEqual(whole.slice(0, 12));
    expect(ids(await follow(page3, 'previous'))).toEqual(ids(page2));
    expect(page1.link!.some((l) => l.relation === 'previous')).toBe(false);

    const old = t.app.fhir.pageTokens.issue(OPEN_ACCESS, { query: Object.entries(query), offset: 8 });
    const resumed = await get('/fhir/Observation', { _pageToken: old });
    expect(resumed.status).toBe(200);
    expect(ids(resumed.body as Bundle)).toEqual(whole.slice(8, 12));
    const rest = await walk(get, '/fhir/Observation', { _pageToken: old }, async () => undefined);
    expect(rest.ids).toEqual(whole.slice(8));
  });
});

describe('a grantee\'s walk, re-filled past withheld readings, while readings are written', () => {
  let t: TestApp;
  let ana: string;
  let token: string;
  const now = Date.now();
  const get: Get = (path, query = {}) => request(t.app.http).get(path).query(query)
    .set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT');

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
    // ana granted only her glucose readings (beside ben's unlimited grant, so the search is not cut to the code)
    ({ ana, token } = await codeLimitedAndWholeGrants(t.app, now));
  }, 60_000);
  afterAll(async () => {
    await t?.close();
  });

  const queries: [string, () => Record<string, string | string[]>][] = [
    ['one patient, -date', () => ({ patient: `Patient/${ana}`, _sort: '-date' })],
    ['one patient, the default order', () => ({ patient: `Patient/${ana}` })],
    ['both patients, -date', () => ({ _sort: '-date' })],
  ];

  test.each(queries)('%s: every unchanged visible reading exactly once, no withheld one, full pages', async (_name, queryOf) => {
    const repo = t.app.repository;
    const start = now - 2 * DAY - Math.floor(Math.random() * DAY);
    // 24 readings of ana's, two of three of a code she did not grant, interleaved in time
    for (let i = 0; i < 24; i++) await repo.create(reading(ana, start + i * FIVE_MINUTES, i % 3 === 0 ? '99504-3' : '2339-0'));
    for (let i = 0; i < 12; i++) await repo.create(reading(ana, start + i * 7 * 60_000, '99504-3'));
    const query = { ...queryOf(), _count: '3' };
    const initial = ((await get('/fhir/Observation', { ...query, _count: '1000' })).body as Bundle).entry!
      .filter((e) => e.search?.mode === 'match').map((e) => e.resource!.id!);
    expect(initial.length).toBeGreaterThanOrEqual(20);
    const churn = new Churn(t, ana, initial, start - 60_000, start + 30 * FIVE_MINUTES);
    // and ungranted readings written on both sides of the position too
    let step = 0;
    const walked = await walk(get, '/fhir/Observation', query, async (seen) => {
      step++;
      await repo.create(reading(ana, start - 30_000 + step * 1000, '2339-0'));
      await repo.create(reading(ana, start + 40 * FIVE_MINUTES + step * 1000, '2339-0'));
      await churn.between(seen);
    });
    churn.check(walked);
    for (const id of walked.ids) {
      const o = await repo.read<Observation>('Observation', id).catch(() => undefined);
      if (o) expect(o.code!.coding![0]!.code).toBe('99504-3');
    }
    expect(walked.sizes.slice(0, -1).every((n) => n === 3)).toBe(true);
  });
});
