/**
 * Black-box round 25 on transactions, on either repository:
 * - entries that share a fullUrl (bundle.html, invariant bdl-7): a reference to it could name
 *   either entry; it had been committed, both created. Now 400 naming both, nothing written.
 * - the transaction-response entry of each write (http.html#transaction-response) has the same
 *   shape on both: status with its reason phrase, etag and lastModified of the version written,
 *   fullUrl on this server. Through the upstream adapter it had `"status": "201"` and no etag; from
 *   the embedded store no fullUrl.
 * - a HEAD entry (batch or transaction) answers as HEAD does: status and ETag, no resource; it had
 *   carried the whole resource or searchset.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle } from '@medplum/fhirtypes';
import { randomUUID } from 'node:crypto';
import request from 'supertest';
import { REPOSITORY_ADAPTERS, type Backend } from '../support/adapters.js';
import { startTestApp, type TestApp } from '../support/app.js';

const FHIR_JSON = 'application/fhir+json';
const patient = (mrn: string) => ({ resourceType: 'Patient', identifier: [{ system: 'urn:mrn', value: mrn }] });

describe.each(REPOSITORY_ADAPTERS)('transaction fullUrls on the %s repository', (_adapter, startBackend) => {
  let t: TestApp;
  let backend: Backend;
  const http = () => request(t.app.http);
  const byMrn = async (mrn: string): Promise<number> =>
    ((await http().get('/fhir/Patient').query({ identifier: `urn:mrn|${mrn}` })).body as Bundle).entry?.length ?? 0;

  beforeAll(async () => {
    backend = await startBackend();
    t = await startTestApp(backend.env);
  });
  afterAll(async () => {
    await t?.close();
    await backend?.close();
  });

  test('two entries with one fullUrl are 400 naming both; nothing is written', async () => {
    const [a, b, c] = [randomUUID(), randomUUID(), randomUUID()];
    const shared = `urn:uuid:${randomUUID()}`;
    const res = await http().post('/fhir').set('Content-Type', FHIR_JSON).send({
      resourceType: 'Bundle', type: 'transaction', entry: [
        { fullUrl: shared, resource: patient(a), request: { method: 'POST', url: 'Patient' } },
        { fullUrl: `urn:uuid:${randomUUID()}`, resource: patient(c), request: { method: 'POST', url: 'Patient' } },
        { fullUrl: shared, resource: patient(b), request: { method: 'POST', url: 'Patient' } },
        { resource: { resourceType: 'Observation', status: 'final', code: { text: 'glucose' }, subject: { reference: shared } }, request: { method: 'POST', url: 'Observation' } },
      ],
    });
    expect(res.status).toBe(400);
    expect(res.body.resourceType).toBe('OperationOutcome');
    expect(res.body.issue[0].diagnostics).toMatch(/entry\[0\] and Bundle\.entry\[2\].*fullUrl/);
    expect(res.body.issue[0].expression).toEqual(['Bundle.entry[2].fullUrl']);
    expect([await byMrn(a), await byMrn(b), await byMrn(c)]).toEqual([0, 0, 0]);
  });

  test('distinct fullUrls are taken as before', async () => {
    const mrn = randomUUID();
    const full = `urn:uuid:${randomUUID()}`;
    const res = await http().post('/fhir').set('Content-Type', FHIR_JSON).send({
      resourceType: 'Bundle', type: 'transaction', entry: [
        { fullUrl: full, resource: patient(mrn), request: { method: 'POST', url: 'Patient' } },
        { fullUrl: `urn:uuid:${randomUUID()}`, resource: { resourceType: 'Observation', status: 'final', code: { text: 'glucose' }, subject: { reference: full } }, request: { method: 'POST', url: 'Observation' } },
      ],
    });
    expect(res.status).toBe(200);
    expect(await byMrn(mrn)).toBe(1);
  });

  test('each write\'s entry has status, location, etag, lastModified and fullUrl, whatever Prefer says', async () => {
    for (const prefer of [undefined, 'return=minimal', 'return=OperationOutcome']) {
      const mrn = randomUUID();
      const req = http().post('/fhir').set('Content-Type', FHIR_JSON);
      if (prefer) req.set('Prefer', prefer);
      const res = await req.send({
        resourceType: 'Bundle', type: 'transaction', entry: [
          { fullUrl: `urn:uuid:${randomUUID()}`, resource: patient(mrn), request: { method: 'POST', url: 'Patient' } },
        ],
      });
      expect(res.status).toBe(200);
      const entry = (res.body as Bundle).entry![0]!;
      const read = await http().get(`/fhir/${entry.response!.location!.replace(/\/_history\/.*$/, '')}`);
      expect(read.status).toBe(200);
      expect(entry.response!.status).toBe('201 Created');
      expect(entry.response!.location).toBe(`Patient/${read.body.id}/_history/${read.body.meta.versionId}`);
      expect(entry.response!.etag).toBe(`W/"${read.body.meta.versionId}"`);
      expect(entry.response!.etag).toBe(read.headers.etag);
      expect(entry.response!.lastModified).toBe(read.body.meta.lastUpdated);
      expect(entry.fullUrl).toMatch(new RegExp(`^https?://[^/]+/fhir/Patient/${read.body.id}$`));
    }
  });

  test('a HEAD entry has the GET\'s status and etag but no resource, in a batch and a transaction', async () => {
    const mrn = randomUUID();
    const created = await http().post('/fhir/Patient').set('Content-Type', FHIR_JSON).send(patient(mrn));
    expect(created.status).toBe(201);
    for (const type of ['batch', 'transaction']) {
      const res = await http().post('/fhir').set('Content-Type', FHIR_JSON).send({
        resourceType: 'Bundle', type, entry: [
          { request: { method: 'HEAD', url: `Patient/${created.body.id}` } },
          { request: { method: 'GET', url: `Patient/${created.body.id}` } },
          { request: { method: 'HEAD', url: `Patient?identifier=urn:mrn|${mrn}` } },
        ],
      });
      expect(res.status).toBe(200);
      const [head, get, headSearch] = (res.body as Bundle).entry!;
      expect(head!.response!.status).toBe('200 OK');
      expect(head!.response!.etag).toBe(created.headers.etag);
      expect(head!.resource).toBeUndefined();
      expect(get!.resource?.id).toBe(created.body.id);
      expect(headSearch!.response!.status).toBe('200 OK');
      expect(headSearch!.resource).toBeUndefined();
    }
  });
});
