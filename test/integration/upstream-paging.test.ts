/**
 * Paging through an upstream by its own `next` links (http.html#paging): R4 has no `_offset`, and
 * Epic and Oracle Health page with opaque links. Runs against the test FHIR server in
 * `opaquePaging` mode (ignores `_offset`, links carry an opaque `_page` token), through the adapter
 * and through the whole proxy (page tokens, consent refill), and checks that every resource is
 * served exactly once, that a proxied page costs one upstream search, that a link off the upstream's
 * base is never followed, and that a link leading back to a page already read is a 502, not a loop.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { parseSearchRequest } from '@medplum/core';
import type { Bundle, Observation, Patient } from '@medplum/fhirtypes';
import request from 'supertest';
import { failure } from '../support/adapters.js';
import { UpstreamRepository } from '../../src/repository/upstream/index.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { startUpstreamFhirServer, type UpstreamFhirServer } from '../support/upstream-server.js';

const PROXY = 'https://glucoguard.example/fhir';
const FHIR_JSON = 'application/fhir+json';

function observation(patientId: string, minute: number): Observation {
  return {
    resourceType: 'Observation',
    status: 'final',
    code: { coding: [{ system: 'http://loinc.org', code: '2339-0' }] },
    subject: { reference: `Patient/${patientId}` },
    effectiveDateTime: new Date(Date.UTC(2026, 0, 1, 8, minute)).toISOString(),
    valueQuantity: { value: 100 + minute, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
  };
}


const searches = (upstream: UpstreamFhirServer, from: number) =>
  upstream.requests.slice(from).filter((r) => r.method === 'GET' && /^\/fhir\/Observation\?/.test(r.url));

describe('upstream adapter: paging by the upstream\'s own links', () => {
  let upstream: UpstreamFhirServer;
  let repo: UpstreamRepository;
  let patient: string;
  const ids: string[] = [];

  beforeAll(async () => {
    upstream = await startUpstreamFhirServer({ opaquePaging: true });
    repo = new UpstreamRepository({ config: { url: upstream.url, auth: 'none', timeoutMs: 5000 }, proxyFhirBase: PROXY });
    patient = (await repo.create<Patient>({ resourceType: 'Patient' })).resource.id!;
    for (let i = 0; i < 7; i++) ids.push((await repo.create(observation(patient, i))).resource.id!);
  });
  afterAll(async () => {
    await repo.close();
    await upstream.close();
  });

  const query = () => parseSearchRequest(`Observation?patient=Patient/${patient}&_sort=date&_count=2`);

  it('serves every match once, in order, by offsets the upstream itself knows nothing of', async () => {
    const before = upstream.requests.length;
    const seen: string[] = [];
    let offset = 0;
    for (let guard = 0; guard < 10; guard++) {
      const page = await repo.search({ ...query(), offset });
      seen.push(...page.resources.map((r) => r.id!));
      offset += page.resources.length;
      if (!page.hasMore) break;
    }
    expect(seen).toEqual(ids);
    // never `_offset`: the first page asks for `_count`, later ones are the upstream's links
    const sent = searches(upstream, before);
    expect(sent.every((r) => !new URL(r.url, upstream.origin).searchParams.has('_offset'))).toBe(true);
    expect(sent).toHaveLength(4);
  });

  it('resumes at an offset inside an upstream page, and at one it has no link for (another replica), from the first page', async () => {
    await repo.search({ ...query(), offset: 0 });
    const mid = await repo.search({ ...query(), offset: 3 });
    expect(mid.resources.map((r) => r.id)).toEqual(ids.slice(3, 5));
    expect(mid.hasMore).toBe(true);

    const fresh = new UpstreamRepository({ config: { url: upstream.url, auth: 'none', timeoutMs: 5000 }, proxyFhirBase: PROXY });
    const late = await fresh.search({ ...query(), offset: 5 });
    expect(late.resources.map((r) => r.id)).toEqual(ids.slice(5, 7));
    expect(late.hasMore).toBe(false);
  });

  it('fills a page larger than the upstream\'s by following its links, and history pages the same way', async () => {
    await repo.search({ ...query(), offset: 0 });
    // the upstream's pages hold 2; the router asks for 4 from offset 2 (a page refilled after consent withheld some)
    const filled = await repo.search({ ...query(), offset: 2, count: 4 });
    expect(filled.resources.map((r) => r.id)).toEqual(ids.slice(2, 6));
    expect(filled.hasMore).toBe(true);

    const { resource } = await repo.create<Patient>({ resourceType: 'Patient', name: [{ family: 'V1' }] });
    let current = resource;
    for (let v = 2; v <= 5; v++) current = (await repo.update<Patient>({ ...current, name: [{ family: `V${v}` }] })).resource;
    const versions: string[] = [];
    for (let offset = 0; ;) {
      const page = await repo.history({ resourceType: 'Patient', id: resource.id!, count: 2, offset });
      versions.push(...page.entries.map((e) => (e.resource as Patient).name![0]!.family!));
      offset += page.entries.length;
      if (!page.hasMore) break;
    }
    expect(versions).toEqual(['V5', 'V4', 'V3', 'V2', 'V1']);
  });

  it('a link that expired upstream: reads from the first page again, once', async () => {
    const stale = new UpstreamRepository({ config: { url: upstream.url, auth: 'none', timeoutMs: 5000 }, proxyFhirBase: PROXY });
    await stale.search({ ...query(), offset: 0 });
    let expired = false;
    upstream.intercept((req) => {
      if (!expired && req.url.includes('_page=')) {
        expired = true;
        return { status: 410, body: { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'not-found', diagnostics: 'expired' }] } };
      }
      return undefined;
    });
    try {
      const page = await stale.search({ ...query(), offset: 2 });
      expect(page.resources.map((r) => r.id)).toEqual(ids.slice(2, 4));
    } finally {
      upstream.intercept(undefined);
    }
  });

  it('never follows a next link off the upstream base (another host, another path, userinfo): 502', async () => {
    for (const evil of ['http://evil.example/fhir/Observation?x=1', `${upstream.origin}/admin/dump`, `${upstream.url.replace('http://', 'http://user:pw@')}/Observation`]) {
      const probe = new UpstreamRepository({ config: { url: upstream.url, auth: 'none', timeoutMs: 5000 }, proxyFhirBase: PROXY });
      upstream.transform((_req, _status, body) => (body.resourceType === 'Bundle'
        ? { ...body, link: [{ relation: 'next', url: evil }] } as Bundle : body));
      try {
        const before = upstream.requests.length;
        const err = await failure(probe.search({ ...query(), offset: 0 }));
        expect([err.code, err.status]).toEqual(['ERR_UPSTREAM', 502]);
        expect(JSON.stringify(err.issues)).not.toContain('evil');
        expect(upstream.requests.length - before).toBe(1);
      } finally {
        upstream.transform(undefined);
      }
    }
  });

  it('a next link that leads back to a page already read → 502 with a clear outcome, not endless paging', async () => {
    const looping = new UpstreamRepository({ config: { url: upstream.url, auth: 'none', timeoutMs: 5000 }, proxyFhirBase: PROXY });
    // the server's `next` always points at its first page
    upstream.transform((req, _status, body) => (body.resourceType === 'Bundle'
      ? { ...body, link: [{ relation: 'next', url: `${upstream.origin}${req.url.replace(/&?_page=[^&]*/, '')}` }] } as Bundle : body));
    try {
      const first = await looping.search({ ...query(), offset: 0 });
      expect(first.hasMore).toBe(true);
      const err = await failure(looping.search({ ...query(), offset: 2 }));
      expect([err.code, err.status]).toEqual(['ERR_UPSTREAM', 502]);
      expect(err.issues?.[0]?.diagnostics).toMatch(/same page of results again/);
    } finally {
      upstream.transform(undefined);
    }
  });
});

describe('the proxy over an upstream that pages only by its own links', () => {
  let upstream: UpstreamFhirServer;
  let t: TestApp;
  let patient: string;
  const ids: string[] = [];

  beforeAll(async () => {
    upstream = await startUpstreamFhirServer({ opaquePaging: true });
    t = await startTestApp({ UPSTREAM_FHIR_URL: upstream.url });
    const http = request(t.app.http);
    patient = (await http.post('/fhir/Patient').set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient' })).body.id;
    for (let i = 0; i < 5; i++) {
      const res = await request(t.app.http).post('/fhir/Observation').set('Content-Type', FHIR_JSON).send(observation(patient, i));
      expect(res.status).toBe(201);
      ids.push(res.body.id);
    }
  });
  afterAll(async () => {
    await t?.close();
    await upstream?.close();
  });

  it('following next serves every reading exactly once, each proxied page costing one upstream search', async () => {
    const before = upstream.requests.length;
    let url: string | undefined = `/fhir/Observation?patient=Patient/${patient}&_sort=date&_count=2`;
    const served: string[] = [];
    let pages = 0;
    while (url && pages < 20) {
      const res = await request(t.app.http).get(url.replace(/^https?:\/\/[^/]+/, ''));
      expect(res.status).toBe(200);
      pages++;
      served.push(...(res.body as Bundle).entry!.filter((e) => e.search?.mode === 'match').map((e) => e.resource!.id!));
      url = (res.body as Bundle).link?.find((l) => l.relation === 'next')?.url;
      expect(JSON.stringify(res.body)).not.toContain(upstream.origin);
    }
    expect(served).toEqual(ids);
    expect(pages).toBe(3);
    expect(searches(upstream, before)).toHaveLength(pages);
  });
});
