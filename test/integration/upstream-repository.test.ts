/**
 * The upstream adapter of the Repository port against a real FHIR server (test/support/upstream-server.ts):
 * REST interactions, versions, conditional create, search paging, history, transaction, URL rewriting,
 * header stripping, upstream auth (bearer, SMART Backend Services RS384/ES384) and failure mapping.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseSearchRequest } from '@medplum/core';
import type { Bundle, Observation, Patient, Resource } from '@medplum/fhirtypes';
import { exportJWK, exportPKCS8, generateKeyPair } from 'jose';
import { ConfigError, type UpstreamConfig } from '../../src/config.js';
import { GlucoGuardError } from '../../src/errors.js';
import { failure } from '../support/adapters.js';
import { UpstreamRepository } from '../../src/repository/upstream/index.js';
import { startUpstreamFhirServer, type UpstreamFhirServer } from '../support/upstream-server.js';

const PROXY = 'https://glucoguard.example/fhir';

function upstreamConfig(server: UpstreamFhirServer, extra: Partial<UpstreamConfig> = {}): UpstreamConfig {
  return { url: server.url, auth: 'none', timeoutMs: 5000, ...extra };
}

/** A logger that keeps every line, to assert what never gets logged. */
function capturingLogger(): { lines: string[]; logger: ConstructorParameters<typeof UpstreamRepository>[0]['logger'] } {
  const lines: string[] = [];
  const log = (...args: unknown[]): void => { lines.push(JSON.stringify(args)); };
  return { lines, logger: { debug: log, info: log, warn: log, error: log } as never };
}


function observation(patientId: string, effective: string, value: number): Observation {
  return {
    resourceType: 'Observation',
    status: 'final',
    code: { coding: [{ system: 'http://loinc.org', code: '2339-0' }] },
    subject: { reference: `Patient/${patientId}` },
    effectiveDateTime: effective,
    valueQuantity: { value, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
  };
}

describe('upstream repository: REST interactions against a real FHIR server', () => {
  let upstream: UpstreamFhirServer;
  let repo: UpstreamRepository;

  beforeAll(async () => {
    upstream = await startUpstreamFhirServer();
    repo = new UpstreamRepository({ config: upstreamConfig(upstream), proxyFhirBase: PROXY });
  });
  afterAll(async () => {
    await repo.close();
    await upstream.close();
  });

  it('describes itself as the upstream adapter at the upstream base', () => {
    expect(repo.description).toEqual({ adapter: 'upstream', location: upstream.url, access: 'auth none' });
    expect(repo.supportedSearchParams()).toBeUndefined();
  });

  it('creates with a server-assigned id, reads, updates with If-Match, vreads the old version', async () => {
    const created = await repo.create<Patient>({ resourceType: 'Patient', id: 'client-chosen', name: [{ family: 'Rossi' }] });
    expect(created.outcome).toBe('created');
    expect(created.resource.id).toBeTruthy();
    expect(created.resource.id).not.toBe('client-chosen');
    const v1 = created.resource.meta!.versionId!;

    const read = await repo.read<Patient>('Patient', created.resource.id!);
    expect(read.name?.[0]?.family).toBe('Rossi');

    const updated = await repo.update<Patient>({ ...read, name: [{ family: 'Bianchi' }] }, { ifMatch: v1 });
    expect(updated.outcome).toBe('updated');
    expect(updated.resource.meta?.versionId).not.toBe(v1);
    const put = upstream.requests.at(-1)!;
    expect(put.method).toBe('PUT');
    expect(put.headers['if-match']).toBe(`W/"${v1}"`);

    const old = await repo.vread<Patient>('Patient', created.resource.id!, v1);
    expect(old.name?.[0]?.family).toBe('Rossi');
    expect((await repo.read<Patient>('Patient', created.resource.id!)).name?.[0]?.family).toBe('Bianchi');
  });

  it('refuses an update with a stale If-Match (412) and changes nothing', async () => {
    const { resource } = await repo.create<Patient>({ resourceType: 'Patient', name: [{ family: 'Stale' }] });
    const v1 = resource.meta!.versionId!;
    await repo.update<Patient>({ ...resource, name: [{ family: 'Second' }] }, { ifMatch: v1 });
    const err = await failure(repo.update<Patient>({ ...resource, name: [{ family: 'Lost update' }] }, { ifMatch: v1 }));
    expect(err.code).toBe('ERR_PRECONDITION_FAILED');
    expect(err.status).toBe(412);
    expect((await repo.read<Patient>('Patient', resource.id!)).name?.[0]?.family).toBe('Second');
  });

  it('deletes: read then answers 410 Gone, deleting again still succeeds, unknown ids are 404', async () => {
    const { resource } = await repo.create<Patient>({ resourceType: 'Patient' });
    await repo.delete('Patient', resource.id!);
    const gone = await failure(repo.read('Patient', resource.id!));
    expect([gone.code, gone.status]).toEqual(['ERR_GONE', 410]);
    await expect(repo.delete('Patient', resource.id!)).resolves.toBeUndefined();
    const missing = await failure(repo.read('Patient', 'no-such-patient'));
    expect([missing.code, missing.status]).toEqual(['ERR_NOT_FOUND', 404]);
    const missingVersion = await failure(repo.vread('Patient', resource.id!, 'no-such-version'));
    expect(missingVersion.code).toBe('ERR_NOT_FOUND');
  });

  it('update of an unknown id creates it (201 → created)', async () => {
    const result = await repo.update<Patient>({ resourceType: 'Patient', id: 'upsert-1', name: [{ family: 'Upsert' }] });
    expect(result.outcome).toBe('created');
    expect((await repo.read<Patient>('Patient', 'upsert-1')).name?.[0]?.family).toBe('Upsert');
    const again = await repo.update<Patient>({ resourceType: 'Patient', id: 'upsert-1', name: [{ family: 'Again' }] });
    expect(again.outcome).toBe('updated');
  });

  it('create on a server that answers an OperationOutcome instead of the resource: reads the Location version', async () => {
    upstream.transform((req, status, body) => (req.method === 'POST' && status === 201
      ? { resourceType: 'OperationOutcome', issue: [{ severity: 'information', code: 'informational', diagnostics: 'created' }] }
      : body));
    try {
      const { resource, outcome } = await repo.create<Patient>({ resourceType: 'Patient', name: [{ family: 'Minimal' }] });
      expect(outcome).toBe('created');
      expect(resource.name?.[0]?.family).toBe('Minimal');
      const followUp = upstream.requests.at(-1)!;
      expect(followUp.method).toBe('GET');
      expect(followUp.url).toBe(`/fhir/Patient/${resource.id}/_history/${resource.meta!.versionId}`);
    } finally {
      upstream.transform(undefined);
    }
  });

  it('refuses ids that would walk the upstream URL path', async () => {
    for (const id of ['..', '.', 'a/b', '', 'x'.repeat(65)]) {
      expect((await failure(repo.read('Patient', id))).code).toBe('ERR_INVALID');
    }
    expect((await failure(repo.read('../metadata', '1'))).code).toBe('ERR_INVALID');
  });

  it('conditional create: 201 created once, then 200 existing with the same id', async () => {
    const device = { resourceType: 'Device', identifier: [{ system: 'urn:glucoguard:test', value: 'cgm-1' }] } as Resource;
    const first = await repo.create(device, { ifNoneExist: 'identifier=urn:glucoguard:test|cgm-1' });
    const second = await repo.create(device, { ifNoneExist: 'identifier=urn:glucoguard:test|cgm-1' });
    expect(first.outcome).toBe('created');
    expect(second.outcome).toBe('existing');
    expect(second.resource.id).toBe(first.resource.id);
    expect(upstream.requests.at(-1)!.headers['if-none-exist']).toBe('identifier=urn:glucoguard:test|cgm-1');
  });

  it('conditional create matching several resources is 412 and creates nothing', async () => {
    for (let i = 0; i < 2; i++) {
      await repo.create({ resourceType: 'Device', identifier: [{ system: 'urn:glucoguard:dup', value: 'd' }] } as Resource);
    }
    const err = await failure(repo.create({ resourceType: 'Device' } as Resource, { ifNoneExist: 'identifier=urn:glucoguard:dup|d' }));
    expect(err.code).toBe('ERR_PRECONDITION_FAILED');
    const all = await repo.search(parseSearchRequest('Device?identifier=urn:glucoguard:dup|d'));
    expect(all.resources).toHaveLength(2);
  });

  describe('search', () => {
    let p1: string;
    let p2: string;
    beforeAll(async () => {
      p1 = (await repo.create<Patient>({ resourceType: 'Patient', name: [{ family: 'Search-One' }] })).resource.id!;
      p2 = (await repo.create<Patient>({ resourceType: 'Patient', name: [{ family: 'Search-Two' }] })).resource.id!;
      const days = ['2024-01-01', '2024-02-10', '2024-02-15', '2024-02-20', '2024-03-30'];
      for (const [i, day] of days.entries()) await repo.create(observation(p1, `${day}T08:00:00Z`, 100 + i));
      await repo.create(observation(p2, '2024-02-12T08:00:00Z', 300));
    });

    it('finds a patient\'s observations in a date range, page by page', async () => {
      const query = `Observation?patient=Patient/${p1}&date=ge2024-02-01&date=le2024-02-28&_sort=date&_count=2`;
      const page1 = await repo.search(parseSearchRequest(query));
      expect(page1.hasMore).toBe(true);
      expect(page1.resources.map((r) => (r as Observation).effectiveDateTime)).toEqual(['2024-02-10T08:00:00Z', '2024-02-15T08:00:00Z']);
      const page2 = await repo.search({ ...parseSearchRequest(query), offset: 2 });
      expect(page2.hasMore).toBe(false);
      expect(page2.resources.map((r) => (r as Observation).effectiveDateTime)).toEqual(['2024-02-20T08:00:00Z']);
      for (const r of [...page1.resources, ...page2.resources]) {
        expect((r as Observation).subject?.reference).toBe(`Patient/${p1}`);
      }
      const sent = new URL(upstream.requests.at(-1)!.url, upstream.origin).searchParams;
      expect(sent.getAll('date')).toEqual(['ge2024-02-01', 'le2024-02-28']);
      expect([sent.get('_count'), sent.get('_offset'), sent.get('patient')]).toEqual(['2', '2', `Patient/${p1}`]);
    });

    it('returns _include targets apart from the matches', async () => {
      const result = await repo.search(parseSearchRequest(`Observation?patient=Patient/${p2}&_include=Observation:patient`));
      expect(result.resources.map((r) => r.resourceType)).toEqual(['Observation']);
      expect(result.included.map((r) => `${r.resourceType}/${r.id}`)).toEqual([`Patient/${p2}`]);
      expect(result.hasMore).toBe(false);
    });

    it('answers an empty page for no matches', async () => {
      const result = await repo.search(parseSearchRequest('Observation?patient=Patient/nobody'));
      expect(result).toEqual({ resources: [], included: [], hasMore: false });
    });
  });

  it('history: instance versions newest first with method, paged and filtered by _since', async () => {
    const created = await repo.create<Patient>({ resourceType: 'Patient', name: [{ family: 'H1' }] });
    const id = created.resource.id!;
    await repo.update<Patient>({ ...created.resource, name: [{ family: 'H2' }] });
    await repo.delete('Patient', id);

    const all = await repo.history({ resourceType: 'Patient', id, count: 10, offset: 0 });
    expect(all.hasMore).toBe(false);
    expect(all.entries.map((e) => e.method)).toEqual(['DELETE', 'PUT', 'POST']);
    expect(all.entries[0]!.resource).toBeUndefined();
    expect((all.entries[1]!.resource as Patient).name?.[0]?.family).toBe('H2');
    expect(all.entries[2]!.versionId).toBe(created.resource.meta!.versionId);
    for (const e of all.entries) expect([e.resourceType, e.id]).toEqual(['Patient', id]);

    const page = await repo.history({ resourceType: 'Patient', id, count: 1, offset: 1 });
    expect(page.hasMore).toBe(true);
    expect(page.entries.map((e) => e.method)).toEqual(['PUT']);

    const since = await repo.history({ resourceType: 'Patient', id, count: 10, offset: 0, since: all.entries[1]!.lastUpdated });
    expect(since.entries.map((e) => e.method)).toEqual(['DELETE', 'PUT']);
    const sent = new URL(upstream.requests.at(-1)!.url, upstream.origin);
    expect(sent.pathname).toBe(`/fhir/Patient/${id}/_history`);
    expect(sent.searchParams.get('_since')).toBe(all.entries[1]!.lastUpdated);
  });

  it('history: type and system level', async () => {
    const { resource } = await repo.create({ resourceType: 'Location', name: 'Ward 7' } as Resource);
    const typeHistory = await repo.history({ resourceType: 'Location', count: 5, offset: 0 });
    expect(typeHistory.entries[0]).toMatchObject({ resourceType: 'Location', id: resource.id, method: 'POST' });
    const system = await repo.history({ count: 1, offset: 0 });
    expect(system.entries).toHaveLength(1);
    expect(system.hasMore).toBe(true);
  });

  it('transaction: resolves urn:uuid references and answers a transaction-response on the proxy base', async () => {
    const bundle: Bundle = {
      resourceType: 'Bundle', type: 'transaction',
      entry: [
        { fullUrl: 'urn:uuid:6f2b1d4e-8a43-4c7e-9b0a-1d2e3f4a5b6c', resource: { resourceType: 'Patient', name: [{ family: 'Tx' }] }, request: { method: 'POST', url: 'Patient' } },
        { resource: { ...observation('x', '2024-05-01T00:00:00Z', 111), subject: { reference: 'urn:uuid:6f2b1d4e-8a43-4c7e-9b0a-1d2e3f4a5b6c' } }, request: { method: 'POST', url: 'Observation' } },
      ],
    };
    const response = await repo.transaction(bundle);
    expect(response.type).toBe('transaction-response');
    expect(response.entry?.map((e) => e.response?.status)).toEqual(['201', '201']);
    const patient = response.entry![0]!.resource as Patient;
    const obs = response.entry![1]!.resource as Observation;
    expect(obs.subject?.reference).toBe(`Patient/${patient.id}`);
    expect(response.entry![0]!.fullUrl).toBe(`${PROXY}/Patient/${patient.id}`);
    expect(JSON.stringify(response)).not.toContain(upstream.origin);
    expect((await repo.read<Observation>('Observation', obs.id!)).subject?.reference).toBe(`Patient/${patient.id}`);
  });

  it('refuses a Bundle that is not a transaction before calling upstream', async () => {
    const before = upstream.requests.length;
    const err = await failure(repo.transaction({ resourceType: 'Bundle', type: 'batch' }));
    expect(err.code).toBe('ERR_INVALID');
    expect(upstream.requests.length).toBe(before);
  });

  it('makes references to the upstream\'s own base relative (the same resource, references.html#literal)', async () => {
    const stored = await upstream.repo.createResource<Observation>({
      ...observation('abs', '2024-06-01T00:00:00Z', 90), subject: { reference: `${upstream.url}/Patient/abs` },
      derivedFrom: [{ reference: `${upstream.url}/Observation/o1/_history/2` }, { reference: 'http://other.example/fhir/Patient/x' }],
    });
    const read = await repo.read<Observation>('Observation', stored.id);
    expect(read.subject?.reference).toBe('Patient/abs');
    expect(read.derivedFrom?.map((r) => r.reference)).toEqual(['Observation/o1/_history/2', 'http://other.example/fhir/Patient/x']);
    const found = await repo.search(parseSearchRequest(`Observation?_id=${stored.id}`));
    expect(JSON.stringify(found)).not.toContain(upstream.origin);
    expect((found.resources[0] as Observation).subject?.reference).toBe('Patient/abs');
  });

  it('rewrites the upstream base wherever it occurs in text (narrative, notes), never showing the upstream address', async () => {
    const stored = await upstream.repo.createResource<Patient>({
      resourceType: 'Patient',
      text: { status: 'generated', div: `<div xmlns="http://www.w3.org/1999/xhtml">See ${upstream.url}/Patient for more, or ${upstream.url}?x=1</div>` },
    });
    const read = await repo.read<Patient>('Patient', stored.id);
    expect(read.text?.div).toBe(`<div xmlns="http://www.w3.org/1999/xhtml">See ${PROXY}/Patient for more, or ${PROXY}?x=1</div>`);
  });

  it('sends only what upstream needs: never the caller\'s authorization, host, cookie or hop-by-hop headers', async () => {
    const { resource } = await repo.create<Patient>({ resourceType: 'Patient' });
    const caller = repo.forCaller({
      authorization: 'Bearer caller-token', host: 'glucoguard.example', cookie: 'sid=abc', connection: 'keep-alive, x-hop',
      'x-hop': 'hop only', 'keep-alive': 'timeout=5', 'proxy-authorization': 'Basic Zm9vOmJhcg==', te: 'trailers',
      upgrade: 'h2c', 'x-request-id': 'req-42', 'if-none-match': '*',
    });
    await caller.read('Patient', resource.id!);
    const received = upstream.requests.at(-1)!.headers;
    expect(received.authorization).toBeUndefined();
    expect(received.cookie).toBeUndefined();
    expect(received['proxy-authorization']).toBeUndefined();
    expect(received['x-hop']).toBeUndefined();
    expect(received.upgrade).toBeUndefined();
    expect(received['if-none-match']).toBeUndefined();
    expect(received.host).toBe(new URL(upstream.url).host);
    expect(received['x-request-id']).toBe('req-42');
    expect(received.accept).toBe('application/fhir+json');
  });
});

describe('upstream repository: failures reach the client without upstream internals', () => {
  let upstream: UpstreamFhirServer;
  beforeAll(async () => { upstream = await startUpstreamFhirServer(); });
  afterAll(async () => { await upstream.close(); });

  const leaks = (err: GlucoGuardError, ...secrets: string[]): string[] => {
    const visible = JSON.stringify({ message: err.message, issues: err.issues });
    return secrets.filter((s) => visible.includes(s));
  };

  it('a request too big for the upstream (414 URI too long, 413) is the client\'s to narrow: 400 / 413, not a 502 a client would retry', async () => {
    const repo = new UpstreamRepository({ config: { url: upstream.url, auth: 'none', timeoutMs: 5000 }, proxyFhirBase: PROXY });
    try {
      upstream.intercept((req) => (req.method === 'GET' && req.url.includes('/Patient?') ? { status: 414, body: { resourceType: 'OperationOutcome', issue: [] } } : undefined));
      const long = await failure(repo.search(parseSearchRequest(`Patient?_id=${Array.from({ length: 300 }, (_, i) => `id-${i}`).join(',')}`)));
      expect([long.code, long.status]).toEqual(['ERR_INVALID', 400]);
      expect(long.message).toMatch(/too long \(HTTP 414\)/);
      upstream.intercept((req) => (req.method === 'POST' ? { status: 413, body: { resourceType: 'OperationOutcome', issue: [] } } : undefined));
      const big = await failure(repo.create<Patient>({ resourceType: 'Patient', name: [{ family: 'Big' }] }));
      expect([big.code, big.status]).toEqual(['ERR_TOO_LARGE', 413]);
    } finally {
      upstream.intercept(undefined);
    }
  });

  it('upstream down → 502 ERR_UPSTREAM naming neither host nor port', async () => {
    const gone = await startUpstreamFhirServer();
    const url = gone.url;
    await gone.close();
    const { lines, logger } = capturingLogger();
    const repo = new UpstreamRepository({ config: { url, auth: 'none', timeoutMs: 2000 }, proxyFhirBase: PROXY, logger });
    const err = await failure(repo.read('Patient', '1'));
    expect([err.code, err.status]).toEqual(['ERR_UPSTREAM', 502]);
    expect(leaks(err, url, new URL(url).port, '127.0.0.1', 'ECONNREFUSED')).toEqual([]);
    expect(lines.join('\n')).toContain('ECONNREFUSED');
  });

  it('upstream 5xx → 502 without its body', async () => {
    upstream.intercept(() => ({
      status: 500,
      body: { resourceType: 'OperationOutcome', issue: [{ severity: 'fatal', code: 'exception', diagnostics: `java.lang.NullPointerException at ca.uhn.fhir.jpa (${upstream.url})` }] },
    }));
    try {
      const repo = new UpstreamRepository({ config: upstreamConfig(upstream), proxyFhirBase: PROXY });
      const err = await failure(repo.read('Patient', '1'));
      expect([err.code, err.status]).toEqual(['ERR_UPSTREAM', 502]);
      expect(leaks(err, 'NullPointerException', 'ca.uhn', upstream.url)).toEqual([]);
    } finally {
      upstream.intercept(undefined);
    }
  });

  it('slow upstream → 504 ERR_UPSTREAM_TIMEOUT', async () => {
    upstream.setDelay(1000);
    try {
      const repo = new UpstreamRepository({ config: upstreamConfig(upstream, { timeoutMs: 100 }), proxyFhirBase: PROXY });
      const err = await failure(repo.read('Patient', '1'));
      expect([err.code, err.status]).toEqual(['ERR_UPSTREAM_TIMEOUT', 504]);
      expect(leaks(err, upstream.url)).toEqual([]);
    } finally {
      upstream.setDelay(0);
    }
  });

  it.each([
    [404, 'ERR_NOT_FOUND'], [410, 'ERR_GONE'], [412, 'ERR_PRECONDITION_FAILED'], [409, 'ERR_CONFLICT'], [429, 'ERR_UNAVAILABLE'],
    [401, 'ERR_UPSTREAM'], [403, 'ERR_UPSTREAM'], [503, 'ERR_UPSTREAM'], [302, 'ERR_UPSTREAM'],
  ] as const)('upstream %i → %s', async (status, code) => {
    upstream.intercept(() => ({ status, headers: { location: 'http://elsewhere.example/' },
      body: { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'processing', diagnostics: 'upstream-internal-detail' }] } }));
    try {
      const repo = new UpstreamRepository({ config: upstreamConfig(upstream), proxyFhirBase: PROXY });
      const err = await failure(repo.read('Patient', '1'));
      expect(err.code).toBe(code);
      expect(leaks(err, 'upstream-internal-detail')).toEqual([]);
    } finally {
      upstream.intercept(undefined);
    }
  });

  it('a throttled read (429) is sent once more after a short Retry-After; a long one, or a write, is 503 with the upstream\'s Retry-After', async () => {
    const repo = new UpstreamRepository({ config: upstreamConfig(upstream), proxyFhirBase: PROXY });
    const { resource } = await repo.create({ resourceType: 'Patient', name: [{ family: 'Throttled' }] } as Patient);
    let calls = 0;
    const throttleOnce = (retryAfter: string) => upstream.intercept(() => (calls++ === 0
      ? { status: 429, headers: { 'retry-after': retryAfter }, body: { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'throttled', diagnostics: 'slow down' }] } }
      : undefined));
    try {
      throttleOnce('0');
      expect((await repo.read('Patient', resource.id!)).id).toBe(resource.id);
      expect(calls).toBe(2);
      // longer than UPSTREAM_RETRY_AFTER_MAX (2 s): not waited for here, the client is told
      calls = 0;
      throttleOnce('30');
      const long = await failure(repo.read('Patient', resource.id!));
      expect([long.code, long.status, long.headers, calls]).toEqual(['ERR_UNAVAILABLE', 503, { 'Retry-After': '30' }, 1]);
      // a write is never sent twice: the upstream may have applied it
      calls = 0;
      throttleOnce('0');
      const write = await failure(repo.create({ resourceType: 'Patient', name: [{ family: 'Once' }] } as Patient));
      expect([write.code, write.headers, calls]).toEqual(['ERR_UNAVAILABLE', { 'Retry-After': '0' }, 1]);
      // a 503 that says when to come back is 503 too (without Retry-After it stays a 502, above)
      upstream.intercept(() => ({ status: 503, headers: { 'retry-after': new Date(Date.now() + 120_000).toUTCString() }, body: 'maintenance' }));
      const down = await failure(repo.search(parseSearchRequest('Patient?family=Throttled')));
      expect([down.code, down.status]).toEqual(['ERR_UNAVAILABLE', 503]);
      expect(Number(down.headers!['Retry-After'])).toBeGreaterThanOrEqual(118);
      expect(leaks(down, upstream.url, 'maintenance')).toEqual([]);
    } finally {
      upstream.intercept(undefined);
    }
  });

  it.each([[400, 'ERR_INVALID', 400], [422, 'ERR_UNPROCESSABLE', 422]] as const)(
    'upstream %i → %s carrying only severity, code, diagnostics and expression of its issues', async (status, code, clientStatus) => {
      upstream.intercept(() => ({
        status,
        body: {
          resourceType: 'OperationOutcome',
          text: { status: 'generated', div: '<div>internal narrative</div>' },
          issue: [{
            severity: 'error', code: 'required', diagnostics: `Observation.status: minimum required = 1 (see ${upstream.url}/StructureDefinition/x)`,
            expression: ['Observation.status'], location: ['/f:Observation'], details: { coding: [{ system: 'http://internal', code: 'HAPI-1' }] },
            extension: [{ url: 'http://internal/stack', valueString: 'at org.hibernate' }],
          }, { severity: 'warning', code: 'informational', details: { text: 'profile not checked' } }],
        },
      }));
      try {
        const repo = new UpstreamRepository({ config: upstreamConfig(upstream), proxyFhirBase: PROXY });
        const err = await failure(repo.create(observation('1', '2024-01-01T00:00:00Z', 1)));
        expect([err.code, err.status]).toEqual([code, clientStatus]);
        expect(err.issues).toEqual([
          {
            severity: 'error', code: 'required', diagnostics: `Observation.status: minimum required = 1 (see ${PROXY}/StructureDefinition/x)`,
            expression: ['Observation.status'], location: ['/f:Observation'], details: { coding: [{ system: 'http://internal', code: 'HAPI-1' }] },
          },
          { severity: 'warning', code: 'informational', diagnostics: 'profile not checked' },
        ]);
      } finally {
        upstream.intercept(undefined);
      }
    });

  it.each([
    [400, 'SQL error in db-internal-7.hospital.local:5432 table hfj_resource: java.sql.SQLException at org.hibernate.Foo(Foo.java:12)'],
    [422, 'Could not store the resource on server epic-prod-3'],
    [422, 'Timeout talking to 10.20.30.40'],
    [400, 'NullPointerException in /opt/hapi/lib/validator'],
    [400, 'See http://hapi.internal:8080/admin'],
  ] as const)('upstream %i whose text shows its insides: the client gets the issue code and expression, and a generic text (%s)', async (status, diagnostics) => {
    upstream.intercept(() => ({
      status,
      body: { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'invalid', diagnostics, expression: ['Patient.name'] }] },
    }));
    try {
      const repo = new UpstreamRepository({ config: upstreamConfig(upstream), proxyFhirBase: PROXY });
      const err = await failure(repo.create({ resourceType: 'Patient' } as Patient));
      expect(err.status).toBe(status);
      expect(err.issues).toEqual([{
        severity: 'error', code: 'invalid', expression: ['Patient.name'],
        diagnostics: status === 400 ? 'Upstream FHIR server rejected the request (HTTP 400)' : 'Upstream FHIR server could not process the resource (HTTP 422)',
      }]);
      expect(err.message).not.toContain(diagnostics);
    } finally {
      upstream.intercept(undefined);
    }
  });

  it('keeps plain validation text, FHIRPath and the canonical URLs of FHIR profiles', async () => {
    const plain = [
      'Observation.value[x]: minimum required = 1, but only found 0 (from http://hl7.org/fhir/StructureDefinition/vitalsigns|4.0.1)',
      'Patient.id must match [A-Za-z0-9-.]{1,64}',
      'Unknown code \'12345-6\' in system http://loinc.org',
      'Value 2024-13-01T10:01:30Z is not a valid dateTime',
    ];
    upstream.intercept(() => ({
      status: 422,
      body: { resourceType: 'OperationOutcome', issue: plain.map((diagnostics) => ({ severity: 'error', code: 'invariant', diagnostics })) },
    }));
    try {
      const repo = new UpstreamRepository({ config: upstreamConfig(upstream), proxyFhirBase: PROXY });
      const err = await failure(repo.create({ resourceType: 'Patient' } as Patient));
      expect(err.issues?.map((i) => i.diagnostics)).toEqual(plain);
    } finally {
      upstream.intercept(undefined);
    }
  });

  it('a 400 to a read, whose URL the adapter built itself, is the upstream\'s failure: 502 without its text', async () => {
    upstream.intercept(() => ({ status: 400, body: { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'invalid', diagnostics: 'bad' }] } }));
    try {
      const repo = new UpstreamRepository({ config: upstreamConfig(upstream), proxyFhirBase: PROXY });
      const err = await failure(repo.read('Patient', '1'));
      expect([err.code, err.status]).toEqual(['ERR_UPSTREAM', 502]);
    } finally {
      upstream.intercept(undefined);
    }
  });

  it('an upstream answer that is not FHIR JSON → 502', async () => {
    upstream.intercept(() => ({ status: 200, headers: { 'content-type': 'text/html' }, body: '<html>login page</html>' }));
    try {
      const repo = new UpstreamRepository({ config: upstreamConfig(upstream), proxyFhirBase: PROXY });
      const err = await failure(repo.read('Patient', '1'));
      expect(err.code).toBe('ERR_UPSTREAM');
      expect(leaks(err, 'login page')).toEqual([]);
    } finally {
      upstream.intercept(undefined);
    }
  });
});

describe('upstream repository: static bearer token', () => {
  let upstream: UpstreamFhirServer;
  beforeAll(async () => { upstream = await startUpstreamFhirServer({ bearerTokens: ['upstream-secret'] }); });
  afterAll(async () => { await upstream.close(); });

  it('sends the configured token, not the caller\'s', async () => {
    const repo = new UpstreamRepository({ config: upstreamConfig(upstream, { auth: 'bearer', bearerToken: 'upstream-secret' }), proxyFhirBase: PROXY });
    const { resource } = await repo.create<Patient>({ resourceType: 'Patient' });
    await repo.forCaller({ authorization: 'Bearer caller-token' }).read('Patient', resource.id!);
    expect(upstream.requests.at(-1)!.headers.authorization).toBe('Bearer upstream-secret');
  });

  it('a token upstream refuses → 502, with the token neither shown nor logged', async () => {
    const { lines, logger } = capturingLogger();
    const repo = new UpstreamRepository({ config: upstreamConfig(upstream, { auth: 'bearer', bearerToken: 'wrong-secret' }), proxyFhirBase: PROXY, logger });
    const err = await failure(repo.read('Patient', '1'));
    expect([err.code, err.status]).toEqual(['ERR_UPSTREAM', 502]);
    expect(JSON.stringify({ m: err.message, i: err.issues })).not.toContain('wrong-secret');
    expect(lines.join('\n')).not.toContain('wrong-secret');
    expect(lines.join('\n')).toContain('401');
  });
});

describe.each(['RS384', 'ES384'] as const)('upstream repository: SMART Backend Services with %s', (alg) => {
  const clientId = `glucoguard-${alg.toLowerCase()}`;
  let upstream: UpstreamFhirServer;
  let dir: string;
  let keyFile: string;
  let jwkFile: string;

  beforeAll(async () => {
    const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true });
    const publicJwk = { ...(await exportJWK(publicKey)), kid: `${alg}-key-1`, alg, use: 'sig' };
    upstream = await startUpstreamFhirServer({ backendServices: { clientId, publicJwks: [publicJwk] } });
    dir = mkdtempSync(path.join(tmpdir(), 'gg-upstream-'));
    keyFile = path.join(dir, 'key.pem');
    writeFileSync(keyFile, await exportPKCS8(privateKey), { mode: 0o600 });
    jwkFile = path.join(dir, 'key.json');
    writeFileSync(jwkFile, JSON.stringify({ keys: [{ ...(await exportJWK(privateKey)), kid: `${alg}-key-1` }] }), { mode: 0o600 });
  });
  afterAll(async () => {
    await upstream.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const config = (extra: Partial<UpstreamConfig> = {}): UpstreamConfig => upstreamConfig(upstream, {
    auth: 'backend-services', clientId, tokenUrl: upstream.tokenUrl, privateKeyFile: keyFile, alg, kid: `${alg}-key-1`,
    scope: 'system/Patient.rs system/Observation.rs', ...extra,
  });

  it('gets one token with a signed client assertion and reuses it for several calls', async () => {
    const { lines, logger } = capturingLogger();
    const repo = new UpstreamRepository({ config: config(), proxyFhirBase: PROXY, logger });
    const before = upstream.tokenRequests.length;
    const { resource } = await repo.create<Patient>({ resourceType: 'Patient' });
    await Promise.all([repo.read('Patient', resource.id!), repo.read('Patient', resource.id!)]);
    await repo.search(parseSearchRequest('Patient?_count=1'));
    const tokenRequests = upstream.tokenRequests.slice(before);
    expect(tokenRequests).toHaveLength(1);
    const [request] = tokenRequests;
    expect(request!.error).toBeUndefined();
    expect(request!.form).toMatchObject({
      grant_type: 'client_credentials', scope: 'system/Patient.rs system/Observation.rs',
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
    });
    const { header, claims } = request!.assertion!;
    expect(header).toMatchObject({ alg, kid: `${alg}-key-1`, typ: 'JWT' });
    expect(claims).toMatchObject({ iss: clientId, sub: clientId, aud: upstream.tokenUrl });
    expect(typeof claims.jti).toBe('string');
    expect((claims.exp as number) - Math.floor(Date.now() / 1000)).toBeLessThanOrEqual(300);
    const token = upstream.requests.at(-1)!.headers.authorization!;
    expect(token).toMatch(/^Bearer .+/);
    expect(lines.join('\n')).not.toContain(token.slice('Bearer '.length));
    expect(lines.join('\n')).not.toContain(request!.form.client_assertion!);
  });

  it('reads the private key from a JWK Set file as well', async () => {
    const repo = new UpstreamRepository({ config: config({ privateKeyFile: jwkFile, kid: undefined }), proxyFhirBase: PROXY });
    const { resource } = await repo.create<Patient>({ resourceType: 'Patient' });
    expect(resource.id).toBeTruthy();
    expect(upstream.tokenRequests.at(-1)!.assertion!.header.kid).toBe(`${alg}-key-1`);
  });

  it('gets a new token once when upstream answers 401 to the cached one', async () => {
    const repo = new UpstreamRepository({ config: config(), proxyFhirBase: PROXY });
    const { resource } = await repo.create<Patient>({ resourceType: 'Patient' });
    const before = upstream.tokenRequests.length;
    upstream.revokeTokens();
    const read = await repo.read<Patient>('Patient', resource.id!);
    expect(read.id).toBe(resource.id);
    expect(upstream.tokenRequests.length).toBe(before + 1);
    const lastTwo = upstream.requests.slice(-2);
    expect(lastTwo.map((r) => r.method)).toEqual(['GET', 'GET']);
    expect(lastTwo[0]!.headers.authorization).not.toBe(lastTwo[1]!.headers.authorization);
  });

  it('renews the token shortly before it expires (clock frozen)', async () => {
    let now = Date.now();
    const repo = new UpstreamRepository({ config: config(), proxyFhirBase: PROXY, now: () => now });
    const before = upstream.tokenRequests.length;
    await repo.search(parseSearchRequest('Patient?_count=1'));
    now += 200_000; // token lives 300 s: still cached
    await repo.search(parseSearchRequest('Patient?_count=1'));
    expect(upstream.tokenRequests.length).toBe(before + 1);
    now += 45_000; // less than 60 s before expiry: renewed
    await repo.search(parseSearchRequest('Patient?_count=1'));
    expect(upstream.tokenRequests.length).toBe(before + 2);
  });

  it('a refused client assertion → 502 and nothing reaches the FHIR endpoint', async () => {
    const repo = new UpstreamRepository({ config: config({ clientId: 'unknown-client' }), proxyFhirBase: PROXY });
    const before = upstream.requests.length;
    const err = await failure(repo.read('Patient', '1'));
    expect([err.code, err.status]).toEqual(['ERR_UPSTREAM', 502]);
    expect(upstream.tokenRequests.at(-1)!.error).toBe('invalid_client');
    expect(upstream.requests.length).toBe(before);
  });

  it('refuses at construction a key that does not fit the algorithm', async () => {
    const other = alg === 'RS384' ? 'ES384' : 'RS384';
    const { privateKey } = await generateKeyPair(other, { extractable: true });
    const wrongFile = path.join(dir, 'wrong.pem');
    writeFileSync(wrongFile, await exportPKCS8(privateKey));
    expect(() => new UpstreamRepository({ config: config({ privateKeyFile: wrongFile }), proxyFhirBase: PROXY })).toThrow(ConfigError);
    expect(() => new UpstreamRepository({ config: config({ privateKeyFile: path.join(dir, 'absent.pem') }), proxyFhirBase: PROXY })).toThrow(ConfigError);
  });
});
