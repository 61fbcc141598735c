/**
 * What the proxy writes itself is valid R4 by the checks it applies to everyone else's writes
 * (ProfileValidator.check: JSON kinds, required codes, base R4, held profiles): the AuditEvent of
 * every access (BALP), including a refused one and an operation, of an erasure and of a failed
 * integrity check. These go to the repository directly, past the router's validation. Also what
 * `metadata` answers in each mode, and what the facade itself composes: Bundles of each kind,
 * OperationOutcomes, and the answers of its operations.
 */
import { afterAll, beforeAll, expect, test } from '@jest/globals';
import type { AuditEvent, Resource } from '@medplum/fhirtypes';
import request from 'supertest';
import { makeTrace, nightscoutJson } from '../fixtures/cgm-ingest/trace.js';
import { erasureAuditEvent } from '../../src/audit/erasure.js';
import { integrityAuditEvent } from '../../src/ledger/integrity.js';
import { OPEN_ACCESS } from '../../src/fhir/access.js';
import { ProfileValidator } from '../../src/fhir/validation.js';
import { PROFILES_DIR } from '../../src/paths.js';
import { startTestApp, type TestApp } from '../support/app.js';

let t: TestApp;
const validator = new ProfileValidator(PROFILES_DIR);
let patientId: string;
beforeAll(async () => {
  t = await startTestApp();
  patientId = (await t.app.repository.create<Resource>({ resourceType: 'Patient', name: [{ family: 'Own' }] })).resource.id!;
});
afterAll(async () => {
  await t?.close();
});

test('the AuditEvents of reads, searches, a refused request and an operation are valid R4', async () => {
  const http = request(t.app.http);
  expect((await http.get(`/fhir/Patient/${patientId}`)).status).toBe(200);
  expect((await http.get('/fhir/Observation').query({ patient: patientId, date: 'ge2026-01-01' })).status).toBe(200);
  expect((await http.get('/fhir/Observation').query({ 'no-such-param': 'x' })).status).toBe(400);
  expect((await http.get(`/fhir/Patient/${patientId}/$everything`)).status).toBe(200);
  await t.app.consent.audit.flush();
  const events = (await t.app.repository.search({ resourceType: 'AuditEvent', count: 100, offset: 0 })).resources as AuditEvent[];
  expect(events.length).toBeGreaterThanOrEqual(4);
  for (const event of events) {
    const errors = validator.check(event).filter((i) => i.severity === 'error');
    expect([event.id, errors]).toEqual([event.id, []]);
  }
});

test('the erasure and integrity-failure AuditEvents are valid R4', () => {
  const erasure = erasureAuditEvent({ patientId, operator: 'ops@host-1', resources: 3, commitments: 3, recorded: new Date().toISOString() });
  const integrity = integrityAuditEvent(OPEN_ACCESS, { resourceType: 'Observation', id: 'o1', meta: { versionId: '2' }, subject: { reference: `Patient/${patientId}` } } as Resource, 'content');
  for (const event of [erasure, integrity]) expect(validator.check(event).filter((i) => i.severity === 'error')).toEqual([]);
});

test('metadata in each mode is valid R4: the CapabilityStatement (full, normal), a TerminologyCapabilities (terminology); another mode is 400', async () => {
  const http = request(t.app.http);
  for (const mode of [undefined, 'full', 'normal']) {
    const res = await http.get('/fhir/metadata').query(mode ? { mode } : {});
    expect([mode, res.status, res.body.resourceType]).toEqual([mode, 200, 'CapabilityStatement']);
  }
  const terminology = await http.get('/fhir/metadata').query({ mode: 'terminology' });
  expect(terminology.status).toBe(200);
  expect(terminology.body).toMatchObject({ resourceType: 'TerminologyCapabilities', status: 'active', kind: 'instance' });
  expect(terminology.body.description).toMatch(/no terminology service/);
  for (const body of [terminology.body, (await http.get('/fhir/metadata')).body] as Resource[]) {
    expect([body.resourceType, validator.check(body).filter((i) => i.severity === 'error')]).toEqual([body.resourceType, []]);
  }
  const other = await http.get('/fhir/metadata').query({ mode: 'everything' });
  expect(other.status).toBe(400);
  expect(other.body.issue[0].diagnostics).toBe('mode must be full, normal or terminology');
});

test('what the facade composes is valid R4: Bundles of each kind, OperationOutcomes, the answers of its operations', async () => {
  const http = request(t.app.http);
  const imported = await http.post(`/cgm/ingest?patient=${patientId}&format=nightscout`).send(nightscoutJson(makeTrace(3, { seed: 41 })));
  expect(imported.status).toBe(200);
  const reading = (await t.app.repository.search({ resourceType: 'Observation', count: 1, offset: 0 })).resources[0]!;
  const json = 'application/fhir+json';
  const answers: [string, request.Response][] = [
    ['searchset', await http.get('/fhir/Observation').query({ patient: patientId, _count: 5, _include: 'Observation:device' })],
    ['empty searchset', await http.get('/fhir/Observation').query({ patient: patientId, date: 'lt1999-01-01' })],
    ['history', await http.get(`/fhir/Observation/${reading.id}/_history`)],
    ['batch-response', await http.post('/fhir').set('Content-Type', json).send({ resourceType: 'Bundle', type: 'batch', entry: [
      { request: { method: 'GET', url: `Patient/${patientId}` } }, { request: { method: 'GET', url: 'Patient/no-such-one' } }] })],
    ['transaction-response', await http.post('/fhir').set('Content-Type', json).send({ resourceType: 'Bundle', type: 'transaction', entry: [
      { fullUrl: 'urn:uuid:6f1d3c1e-6a3e-4f57-9c1e-2b7d0c7f1a01', resource: { resourceType: 'Practitioner', name: [{ family: 'Valid' }] }, request: { method: 'POST', url: 'Practitioner' } }] })],
    ['404', await http.get('/fhir/Observation/no-such-one')],
    ['400', await http.get('/fhir/Observation').query({ 'no-such-param': 'x' })],
    ['422', await http.post('/fhir/Observation').set('Content-Type', json).send({ resourceType: 'Observation', status: 'not-a-status' })],
    ['$everything', await http.get(`/fhir/Patient/${patientId}/$everything`).query({ _count: 20 })],
    ['$lastn', await http.get('/fhir/Observation/$lastn').query({ patient: patientId })],
    ['$meta', await http.get(`/fhir/Observation/${reading.id}/$meta`)],
    ['$cgm-summary', await http.get(`/fhir/Patient/${patientId}/$cgm-summary`)],
    ['$cgm-agp', await http.get(`/fhir/Patient/${patientId}/$cgm-agp`)],
    ['$validate', await http.post('/fhir/Observation/$validate').set('Content-Type', json).send({ resourceType: 'Observation', status: 'final', code: { text: 'x' } })],
    ['$match', await http.post('/fhir/Patient/$match').set('Content-Type', json).send({ resourceType: 'Parameters', parameter: [
      { name: 'resource', resource: { resourceType: 'Patient', name: [{ family: 'Own', given: ['Ana'] }], birthDate: '1980-01-01' } }] })],
    ['a deletion', await http.delete(`/fhir/Observation/${reading.id}`)],
    ['history with a deletion', await http.get('/fhir/Observation/_history').query({ _count: 5 })],
    ['410', await http.get(`/fhir/Observation/${reading.id}`)],
    ['/cgm/ingest 400', await http.post(`/cgm/ingest?patient=${patientId}&timezone=UTC`).send('[]')],
    ['/cgm/ingest 422', await http.post(`/cgm/ingest?patient=${patientId}&format=nightscout`).send(nightscoutJson(makeTrace(1, { seed: 42 }).slice(0, 3)).replace(/"sgv":\d+/, '"sgv":-1'))],
  ];
  for (const [what, res] of answers) {
    if (what === 'a deletion') {
      expect([200, 204]).toContain(res.status); // an OperationOutcome, or no body
      if (res.body?.resourceType === undefined) continue;
    }
    const status = /(\d{3})$/.exec(what)?.[1];
    expect([what, res.status]).toEqual([what, status ? Number(status) : res.status < 300 ? res.status : 200]);
    expect([what, typeof res.body.resourceType]).toEqual([what, 'string']);
    expect([what, validator.check(res.body as Resource).filter((i) => i.severity === 'error')]).toEqual([what, []]);
  }
});
