/**
 * The per-patient copies of an access-log event (src/audit/recorder.ts, eventsOf): a finished
 * export is recorded with every exported patient in its query (src/exchange/export.ts); each
 * patient's copy keeps only that patient, and working the copies out stays linear in the number of
 * patients (20,000 here).
 */
import { describe, expect, test } from '@jest/globals';
import type { AuditEvent } from '@medplum/fhirtypes';
import { AuditRecorder } from '../../src/audit/recorder.js';
import type { FhirRequest, FhirResponse } from '../../src/fhir/types.js';
import type { Repository } from '../../src/repository/port.js';

const queryOf = (e: AuditEvent): string => Buffer.from(e.entity!.find((x) => x.query)!.query!, 'base64').toString('utf8');
const subjectsOf = (e: AuditEvent): string[] => (e.entity ?? []).filter((x) => x.role?.code === '1').map((x) => x.what!.reference!);

describe('per-patient copies of an event', () => {
  const recorder = new AuditRecorder({ repository: {} as Repository });
  const access = { kind: 'smart', scopes: ['system/*.rs'], clientId: 'study' };

  test('a finished export naming 20,000 patients: one copy each, with its own patient only, in linear time', () => {
    const patients = Array.from({ length: 20_000 }, (_, i) => `p-${i}`);
    const request = { method: 'GET', path: '$export', query: { patient: patients }, headers: {}, access } as unknown as FhirRequest;
    const started = performance.now();
    const events = recorder.eventsOf(request, { status: 200 } as FhirResponse);
    const ms = performance.now() - started;
    expect(events).toHaveLength(patients.length);
    expect(subjectsOf(events[7]!)).toEqual(['Patient/p-7']);
    expect(queryOf(events[7]!)).toBe('$export?patient=p-7');
    // quadratic work (each copy filtering the whole list) takes tens of seconds here
    expect(ms).toBeLessThan(5_000);
  });

  test('a next page of a search of two patients: the token (which holds the search) is not copied', () => {
    const token = Buffer.from(JSON.stringify({ q: [['patient', 'a,b']] })).toString('base64url');
    const request = { method: 'GET', path: 'Observation', query: { _pageToken: `${token}.sig` }, headers: {}, access } as unknown as FhirRequest;
    // the patients come from the consent notes in the facade; here from a second, patient-naming parameter
    (request.query as Record<string, string>).subject = 'Patient/a,Patient/b';
    const events = recorder.eventsOf(request, { status: 200 } as FhirResponse);
    expect(events.map(queryOf)).toEqual([
      'Observation?_pageToken=(a further page of the search)&subject=Patient/a',
      'Observation?_pageToken=(a further page of the search)&subject=Patient/b',
    ]);
  });

  test('values naming several patients, and ids inside other parameters', () => {
    const request = { method: 'GET', path: 'Observation', query: { patient: 'Patient/a,b,Group/g', code: 'x|1', _id: 'a,b' }, headers: {}, access } as unknown as FhirRequest;
    const events = recorder.eventsOf(request, { status: 200 } as FhirResponse);
    expect(events.map(subjectsOf)).toEqual([['Patient/a'], ['Patient/b']]);
    expect(events.map(queryOf)).toEqual([
      'Observation?patient=Patient/a,Group/g&code=x|1&_id=a,(another patient)',
      'Observation?patient=b,Group/g&code=x|1&_id=(another patient),b',
    ]);
  });
});
