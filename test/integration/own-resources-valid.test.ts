/**
 * What the proxy writes itself is valid R4 by the checks it applies to everyone else's writes
 * (ProfileValidator.check: JSON kinds, required codes, base R4, held profiles): the AuditEvent of
 * every access (BALP), including a refused one and an operation, of an erasure and of a failed
 * integrity check. These go to the repository directly, past the router's validation. Also what
 * `metadata` answers in each mode.
 */
import { afterAll, beforeAll, expect, test } from '@jest/globals';
import type { AuditEvent, Resource } from '@medplum/fhirtypes';
import request from 'supertest';
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
