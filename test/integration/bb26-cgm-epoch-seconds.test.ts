/**
 * A Nightscout export whose `date` is in epoch seconds instead of milliseconds (as some scripts and
 * uploaders write it) put every reading in January 1970, accepted and stored. A time before CGM (and
 * home glucose meters) existed is not a device time: such records are rejected naming the likely
 * cause, and the all-or-nothing import writes nothing.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { OperationOutcome } from '@medplum/fhirtypes';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';

const START = Date.parse('2026-03-01T00:00:00Z');

describe('Nightscout `date` in seconds', () => {
  let t: TestApp;
  const http = () => request(t.app.http);
  let patient: string;

  beforeAll(async () => {
    t = await startTestApp();
    const created = await http().post('/fhir/Patient').set('Content-Type', 'application/fhir+json').send({ resourceType: 'Patient', name: [{ family: 'Seconds' }] });
    patient = created.body.id as string;
  });
  afterAll(async () => {
    await t?.close();
  });

  test('rejected as not a device time, nothing stored', async () => {
    const entries = [0, 1, 2].map((k) => ({ type: 'sgv', sgv: 110 + k, date: (START + k * 300_000) / 1000, device: 'uploader' }));
    const res = await http().post(`/cgm/ingest?patient=${patient}&format=nightscout`).set('Content-Type', 'application/json').send(JSON.stringify(entries));
    expect(res.status).toBe(422);
    const text = (res.body as OperationOutcome).issue.map((i) => i.diagnostics).join('\n');
    expect(text).toMatch(/record 1 .*seconds/);
    const stored = await http().get(`/fhir/Observation?patient=Patient/${patient}`);
    expect(stored.body.entry ?? []).toEqual([]);
  });

  test('the same entries in milliseconds are imported', async () => {
    const entries = [0, 1, 2].map((k) => ({ type: 'sgv', sgv: 110 + k, date: START + k * 300_000, device: 'uploader' }));
    const res = await http().post(`/cgm/ingest?patient=${patient}&format=nightscout`).set('Content-Type', 'application/json').send(JSON.stringify(entries));
    expect(res.body).toMatchObject({ accepted: true, created: 3, first: '2026-03-01T00:00:00.000Z' });
  });
});
