/**
 * `POST /cgm/ingest` takes the export itself as the body. A browser form or an HTTP client's "form
 * data" upload (multipart/form-data) and a compressed body (Content-Encoding: gzip) were read as the
 * export and refused with "cannot detect the format of this file; give it explicitly (…)", which
 * sends the user after the wrong problem (and with `format` given, a header error about the
 * multipart boundary line). They are refused (415) saying what to send instead, and nothing is written.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { OperationOutcome } from '@medplum/fhirtypes';
import { gzipSync } from 'node:zlib';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';

const ENTRIES = JSON.stringify([0, 1, 2].map((k) => ({ type: 'sgv', sgv: 120 + k, date: Date.parse('2026-03-01T00:00:00Z') + k * 300_000, device: 'uploader' })));

describe('an upload that is not the export itself', () => {
  let t: TestApp;
  const http = () => request(t.app.http);
  let patient: string;

  beforeAll(async () => {
    t = await startTestApp();
    const created = await http().post('/fhir/Patient').set('Content-Type', 'application/fhir+json').send({ resourceType: 'Patient', name: [{ family: 'Upload' }] });
    patient = created.body.id as string;
  });
  afterAll(async () => {
    await t?.close();
  });

  const diagnostics = (body: OperationOutcome): string => body.issue.map((i) => i.diagnostics ?? '').join('\n');
  const stored = async (): Promise<unknown[]> => (await http().get(`/fhir/Observation?patient=Patient/${patient}`)).body.entry ?? [];

  test('multipart/form-data: 415 saying to send the file as the body', async () => {
    for (const format of ['', '&format=nightscout']) {
      const res = await http().post(`/cgm/ingest?patient=${patient}${format}`).attach('file', Buffer.from(ENTRIES), 'entries.json');
      expect(res.status).toBe(415);
      expect(res.body.resourceType).toBe('OperationOutcome');
      expect(diagnostics(res.body)).toMatch(/multipart\/form-data.*send the export itself as the request body/);
    }
    expect(await stored()).toEqual([]);
  });

  test('Content-Encoding gzip: 415 naming the encoding', async () => {
    const res = await http().post(`/cgm/ingest?patient=${patient}`).set('Content-Type', 'application/json').set('Content-Encoding', 'gzip').send(gzipSync(ENTRIES));
    expect(res.status).toBe(415);
    expect(diagnostics(res.body)).toMatch(/Content-Encoding gzip is not read/);
    expect(await stored()).toEqual([]);
  });

  test('the same export as the body is imported', async () => {
    const res = await http().post(`/cgm/ingest?patient=${patient}`).set('Content-Type', 'application/json').send(ENTRIES);
    expect(res.body).toMatchObject({ accepted: true, created: 3 });
    const identity = await http().post(`/cgm/ingest?patient=${patient}`).set('Content-Type', 'application/json').set('Content-Encoding', 'identity').send(ENTRIES);
    expect(identity.body).toMatchObject({ accepted: true, unchanged: 3 });
  });
});
