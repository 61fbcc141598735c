/**
 * The access log's write path: events of requests answered in one turn of the event loop are stored
 * in one bulk write; none is lost when a write fails later ones; flush() waits for every queued event.
 */
import { describe, expect, it } from '@jest/globals';
import type { AuditEvent, Resource } from '@medplum/fhirtypes';
import { AuditRecorder } from '../../../src/audit/recorder.js';
import type { FhirRequest, FhirResponse } from '../../../src/fhir/types.js';
import type { Repository } from '../../../src/repository/port.js';

function fakeRepository(failFirst = false) {
  const stored: AuditEvent[] = [];
  const calls: number[] = [];
  let fail = failFirst;
  const repo = {
    async create(r: Resource) {
      calls.push(1);
      stored.push(r as AuditEvent);
      return { resource: r, outcome: 'created' };
    },
    async createMany(rs: Resource[]) {
      await new Promise((r) => setTimeout(r, 5));
      calls.push(rs.length);
      if (fail) {
        fail = false;
        throw new Error('disk full');
      }
      stored.push(...(rs as AuditEvent[]));
      return rs;
    },
  };
  return { repo: repo as unknown as Repository, stored, calls };
}

const req = (i: number): FhirRequest => ({
  method: 'GET', path: `Observation/o${i}`, query: {}, headers: {}, access: { kind: 'open', scopes: [] },
} as unknown as FhirRequest);
const ok: FhirResponse = { status: 200, body: { resourceType: 'Observation' } } as FhirResponse;

describe('AuditRecorder', () => {
  it('stores the events of one turn in one bulk write, and flush() waits for them', async () => {
    const { repo, stored, calls } = fakeRepository();
    const recorder = new AuditRecorder({ repository: repo });
    for (let i = 0; i < 40; i++) recorder.record(req(i), ok);
    expect(stored).toHaveLength(0);
    await recorder.flush();
    expect(calls).toEqual([40]);
    expect(stored.map((e) => e.entity?.[0]?.what?.reference)).toEqual(Array.from({ length: 40 }, (_, i) => `Observation/o${i}`));
  });

  it('a failed write is logged and does not stop later events', async () => {
    const { repo, stored } = fakeRepository(true);
    const errors: string[] = [];
    const logger = { error: (o: { err: string }) => errors.push(o.err) } as never;
    const recorder = new AuditRecorder({ repository: repo, logger });
    recorder.record(req(1), ok);
    recorder.record(req(2), ok);
    await recorder.flush();
    recorder.record(req(3), ok);
    await recorder.flush();
    expect(errors).toEqual(['disk full']);
    expect(stored.map((e) => e.entity?.[0]?.what?.reference)).toEqual(['Observation/o3']);
  });
});
