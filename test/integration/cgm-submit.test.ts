/**
 * `POST /fhir/$submit-cgm-bundle` (IG OperationDefinition submit-cgm-bundle) with the IG's example
 * cgm-data-submission-bundle (test/fixtures/cgm-ig, CC0): transaction-response out, references
 * between entries resolved, re-submission idempotent; the CapabilityStatement lists the operation.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, Observation } from '@medplum/fhirtypes';
import request from 'supertest';
import { PACKAGE_ROOT } from '../../src/paths.js';
import { startTestApp, type TestApp } from '../support/app.js';

const FHIR_JSON = 'application/fhir+json';
const example = (): Bundle => JSON.parse(readFileSync(path.join(PACKAGE_ROOT, 'test/fixtures/cgm-ig/Bundle-cgmDataSubmissionBundle.json'), 'utf8')) as Bundle;

describe('$submit-cgm-bundle', () => {
  let t: TestApp;
  const http = () => request(t.app.http);
  let patientId: string;
  const submission = (): Bundle => {
    const text = JSON.stringify(example()).replaceAll('Patient/patientExample', `Patient/${patientId}`);
    return JSON.parse(text) as Bundle;
  };
  const observationsOf = async (): Promise<Observation[]> => {
    const res = await http().get(`/fhir/Observation?patient=Patient/${patientId}&_count=100`);
    expect(res.status).toBe(200);
    return ((res.body as Bundle).entry ?? []).map((e) => e.resource as Observation);
  };

  beforeAll(async () => {
    t = await startTestApp();
    const res = await http().post('/fhir/Patient').set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', name: [{ family: 'Example' }] });
    patientId = res.body.id;
  });
  afterAll(async () => {
    await t?.close();
  });

  test('the CapabilityStatement instantiates cgm-data-receiver and lists the CGM operations', async () => {
    const res = await http().get('/fhir/metadata');
    expect(res.body.instantiates).toContain('http://hl7.org/fhir/uv/cgm/CapabilityStatement/cgm-data-receiver');
    expect(res.body.rest[0].operation).toEqual(expect.arrayContaining([
      { name: 'submit-cgm-bundle', definition: 'http://hl7.org/fhir/uv/cgm/OperationDefinition/submit-cgm-bundle' },
    ]));
    const patient = res.body.rest[0].resource.find((r: { type: string }) => r.type === 'Patient');
    expect(patient.operation.map((o: { name: string }) => o.name)).toEqual(expect.arrayContaining(['cgm-summary', 'cgm-agp']));
  });

  test('the IG example bundle is stored; the response follows the submission order', async () => {
    const bundle = submission();
    const res = await http().post('/fhir/$submit-cgm-bundle').set('Content-Type', FHIR_JSON).send(bundle);
    expect(res.status).toBe(200);
    const response = res.body as Bundle;
    expect(response.type).toBe('transaction-response');
    expect(response.entry).toHaveLength(bundle.entry!.length);
    for (const [i, e] of response.entry!.entries()) {
      expect(e.response?.status).toMatch(/^201/);
      expect(e.response?.location).toMatch(new RegExp(`^${bundle.entry![i]!.resource!.resourceType}/`));
    }
    const stored = await observationsOf();
    expect(stored).toHaveLength(8);
    // hasMember pointed at other entries (Observation/<example id>): now at the stored members.
    const panel = stored.find((o) => o.hasMember)!;
    const ids = new Set(stored.map((o) => `Observation/${o.id}`));
    expect(panel.hasMember).toHaveLength(6);
    for (const m of panel.hasMember!) expect(ids.has(m.reference!)).toBe(true);
    const reading = stored.find((o) => o.code?.coding?.[0]?.code === '99504-3')!;
    expect(reading.valueQuantity?.value).toBe(120);
    expect(reading.identifier?.[0]?.system).toBe('urn:glucoguard:cgm-submission');
  });

  test('re-submitting the same bundle creates nothing new', async () => {
    const res = await http().post('/fhir/$submit-cgm-bundle').set('Content-Type', FHIR_JSON).send(submission());
    expect(res.status).toBe(200);
    for (const e of (res.body as Bundle).entry!) expect(e.response?.status).toMatch(/^200/);
    expect(await observationsOf()).toHaveLength(8);
  });

  test('Parameters with the bundle as "resource" works too; client identifiers drive the conditional create', async () => {
    const reading = structuredClone(submission().entry![8]!);
    (reading.resource as Observation).identifier = [{ system: 'urn:example:reading', value: 'r-1' }];
    (reading.resource as Observation).effectiveDateTime = '2024-05-02T10:20:00Z';
    const bundle: Bundle = { resourceType: 'Bundle', type: 'transaction', entry: [reading] };
    const params = { resourceType: 'Parameters', parameter: [{ name: 'resource', resource: bundle }] };
    const first = await http().post('/fhir/$submit-cgm-bundle').set('Content-Type', FHIR_JSON).send(params);
    expect(first.status).toBe(200);
    expect(first.body.entry[0].response.status).toMatch(/^201/);
    const again = await http().post('/fhir/$submit-cgm-bundle').set('Content-Type', FHIR_JSON).send(params);
    expect(again.body.entry[0].response.status).toMatch(/^200/);
    const found = await http().get(`/fhir/Observation?identifier=urn:example:reading|r-1`);
    expect(found.body.entry).toHaveLength(1);
  });

  test('a bundle that is not a transaction, or an invalid entry, is refused and stores nothing', async () => {
    const batch = { ...submission(), type: 'batch' };
    const res = await http().post('/fhir/$submit-cgm-bundle').set('Content-Type', FHIR_JSON).send(batch);
    expect(res.status).toBe(400);
    expect(res.body.resourceType).toBe('OperationOutcome');
    const broken = submission();
    const { status: _status, ...noStatus } = broken.entry![8]!.resource as Observation;
    broken.entry![8]!.resource = { ...noStatus, effectiveDateTime: '2024-05-03T10:15:00Z' } as Observation; // status is 1..1
    broken.entry![1]!.resource = { ...(broken.entry![1]!.resource as Observation), effectivePeriod: { start: '2024-06-01', end: '2024-06-30' } };
    const invalid = await http().post('/fhir/$submit-cgm-bundle').set('Content-Type', FHIR_JSON).send(broken);
    expect(invalid.status).toBe(422);
    expect(invalid.body.issue[0].expression[0]).toMatch(/^Bundle\.entry\[8\]/);
    expect(await observationsOf()).toHaveLength(9); // 8 from the example + the one from Parameters
    const get = await http().get('/fhir/$submit-cgm-bundle');
    expect(get.status).toBe(405);
  });
});
