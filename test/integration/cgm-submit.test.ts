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

  describe('matching is per patient; corrections become new versions', () => {
    const other = async (): Promise<string> => {
      const res = await http().post('/fhir/Patient').set('Content-Type', FHIR_JSON).send({ resourceType: 'Patient', name: [{ family: 'Other' }] });
      return res.body.id as string;
    };
    /** A Device and a reading with client identifiers, for one patient. */
    const clientBundle = (patient: string, value = 120): Bundle => ({
      resourceType: 'Bundle', type: 'transaction', entry: [
        {
          fullUrl: 'urn:uuid:11111111-1111-4111-8111-111111111111',
          resource: {
            resourceType: 'Device', identifier: [{ system: 'https://app.example/device', value: 'rx-1' }],
            deviceName: [{ name: 'My CGM', type: 'user-friendly-name' }], patient: { reference: `Patient/${patient}` },
          },
          request: { method: 'POST', url: 'Device' },
        },
        {
          fullUrl: 'urn:uuid:22222222-2222-4222-8222-222222222222',
          resource: {
            ...(submission().entry![8]!.resource as Observation),
            id: undefined, identifier: [{ system: 'https://app.example/reading', value: 'r-1' }],
            subject: { reference: `Patient/${patient}` }, device: { reference: 'urn:uuid:11111111-1111-4111-8111-111111111111' },
            effectiveDateTime: '2026-11-05T08:00:00-05:00', valueQuantity: { value, unit: 'mg/dl', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
          } as Observation,
          request: { method: 'POST', url: 'Observation' },
        },
      ],
    });
    const submit = (bundle: Bundle) => http().post('/fhir/$submit-cgm-bundle').set('Content-Type', FHIR_JSON).send(bundle);
    const locations = (res: request.Response): string[] => (res.body as Bundle).entry!.map((e) => e.response!.location!);

    test('the same client identifiers for two patients give each patient their own resources', async () => {
      const a = await other();
      const b = await other();
      const first = await submit(clientBundle(a));
      expect(first.status).toBe(200);
      for (const e of (first.body as Bundle).entry!) expect(e.response?.status).toMatch(/^201/);
      const second = await submit(clientBundle(b));
      expect(second.status).toBe(200);
      for (const e of (second.body as Bundle).entry!) expect(e.response?.status).toMatch(/^201/);
      // no id of A's resources in B's response
      const ofA = locations(first).map((l) => l.split('/_history')[0]!);
      for (const l of locations(second)) for (const x of ofA) expect(l.startsWith(`${x}/`) || l === x).toBe(false);
      const readingsOfB = await http().get(`/fhir/Observation?patient=Patient/${b}`);
      const stored = ((readingsOfB.body as Bundle).entry ?? []).map((e) => e.resource as Observation);
      expect(stored).toHaveLength(1);
      expect(stored[0]!.valueQuantity?.value).toBe(120);
      const devicesOfB = await http().get(`/fhir/Device?patient=Patient/${b}`);
      expect((devicesOfB.body as Bundle).entry).toHaveLength(1);
      expect(stored[0]!.device?.reference).toBe(`Device/${(devicesOfB.body as Bundle).entry![0]!.resource!.id}`);
      // A's resources are untouched: one version each
      for (const l of ofA) expect((await http().get(`/fhir/${l}`)).body.meta.versionId).toBe('1');
    });

    test('a resubmitted reading with another value becomes version 2 with the new value; an identical one creates no version', async () => {
      const p = await other();
      const first = await submit(clientBundle(p, 120));
      const observation = locations(first)[1]!.split('/_history')[0]!;
      const device = locations(first)[0]!.split('/_history')[0]!;

      const same = await submit(clientBundle(p, 120));
      expect(same.status).toBe(200);
      for (const e of (same.body as Bundle).entry!) expect(e.response?.status).toMatch(/^200/);
      expect(locations(same).map((l) => l.split('/_history')[0])).toEqual([device, observation]);
      expect((await http().get(`/fhir/${observation}`)).body.meta.versionId).toBe('1');

      const corrected = await submit(clientBundle(p, 135));
      expect(corrected.status).toBe(200);
      expect(locations(corrected)[1]).toMatch(new RegExp(`^${observation}/_history/2`));
      const current = await http().get(`/fhir/${observation}`);
      expect(current.body.meta.versionId).toBe('2');
      expect(current.body.valueQuantity.value).toBe(135);
      expect(current.body.device.reference).toBe(device);
      expect((await http().get(`/fhir/${observation}/_history/1`)).body.valueQuantity.value).toBe(120);
      // the unchanged Device keeps its version
      expect((await http().get(`/fhir/${device}`)).body.meta.versionId).toBe('1');
      const all = await http().get(`/fhir/Observation?patient=Patient/${p}`);
      expect((all.body as Bundle).entry).toHaveLength(1);

      const again = await submit(clientBundle(p, 135));
      expect(locations(again)[1]).toMatch(new RegExp(`^${observation}/_history/2`));
      expect((await http().get(`/fhir/${observation}`)).body.meta.versionId).toBe('2');
    });
  });
});
