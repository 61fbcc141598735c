/**
 * The access log's write path: events recorded within the write window (or, with a window of 0, in
 * one turn of the event loop) are stored in one bulk write; none is lost when a write fails later
 * ones; flush() stores every queued event at once and waits for it.
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
    description: { adapter: 'embedded' },
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

  it('gathers the events of a window into one write, without a flush, and never holds one longer than the window', async () => {
    const { repo, stored, calls } = fakeRepository();
    const recorder = new AuditRecorder({ repository: repo, windowMs: 60 });
    recorder.record(req(1), ok);
    await new Promise((r) => setTimeout(r, 20));
    recorder.record(req(2), ok);
    recorder.record(req(3), ok);
    await new Promise((r) => setTimeout(r, 20));
    expect(calls).toEqual([]);
    await new Promise((r) => setTimeout(r, 80));
    expect(calls).toEqual([3]);
    expect(stored).toHaveLength(3);
    // a new window opens with the next event
    recorder.record(req(4), ok);
    await new Promise((r) => setTimeout(r, 100));
    expect(calls).toEqual([3, 1]);
  });

  it('with a window of 0 writes the events of each turn of the event loop together', async () => {
    const { repo, calls } = fakeRepository();
    const recorder = new AuditRecorder({ repository: repo, windowMs: 0 });
    recorder.record(req(1), ok);
    recorder.record(req(2), ok);
    await new Promise((r) => setImmediate(r));
    recorder.record(req(3), ok);
    await new Promise((r) => setTimeout(r, 30));
    // two writes, of two events and of one (a single event is stored by create(), which answers first here)
    expect([...calls].sort()).toEqual([1, 2]);
  });

  it('a failed write is logged and its events are written again (they were dropped before session 24); later events go on', async () => {
    const { repo, stored } = fakeRepository(true);
    const errors: string[] = [];
    const logger = { error: (o: { err: string }) => errors.push(o.err) } as never;
    const recorder = new AuditRecorder({ repository: repo, logger });
    recorder.record(req(1), ok);
    recorder.record(req(2), ok);
    await recorder.flush();
    expect(recorder.unstored()).toBe(2);
    recorder.record(req(3), ok);
    await recorder.flush();
    expect(errors).toEqual(['disk full']);
    expect(stored.map((e) => e.entity?.[0]?.what?.reference)).toEqual(['Observation/o1', 'Observation/o2', 'Observation/o3']);
    expect(recorder.unstored()).toBe(0);
  });

  it('on a repository without an atomic bulk write (upstream) only the events whose write failed are tried again, after a pause, without a flush', async () => {
    const stored: string[] = [];
    let refusals = 2; // the upstream refuses the second and third event once each
    const repo = {
      description: { adapter: 'upstream' },
      async create(r: AuditEvent) {
        const ref = r.entity![0]!.what!.reference!;
        if (refusals > 0 && ref !== 'Observation/o1') {
          refusals--;
          throw new Error('HTTP 503');
        }
        stored.push(ref);
        return { resource: r, outcome: 'created' };
      },
      async createMany() {
        throw new Error('not used: one write per event');
      },
    } as unknown as Repository;
    const recorder = new AuditRecorder({ repository: repo, logger: { error: () => undefined } as never });
    for (const i of [1, 2, 3]) recorder.record(req(i), ok);
    await new Promise((r) => setTimeout(r, 100));
    expect(stored).toEqual(['Observation/o1']);
    expect(recorder.unstored()).toBe(2);
    await new Promise((r) => setTimeout(r, 1200)); // the first retry comes after 1 s
    expect(stored.sort()).toEqual(['Observation/o1', 'Observation/o2', 'Observation/o3']); // each once
    expect(recorder.unstored()).toBe(0);
  });

  it('close() tries once more and says how many events it could not store', async () => {
    const repo = {
      description: { adapter: 'upstream' },
      async create() {
        throw new Error('HTTP 403');
      },
    } as unknown as Repository;
    const lost: number[] = [];
    const recorder = new AuditRecorder({ repository: repo, logger: { error: (o: { events?: number }, msg: string) => { if (/lost/.test(msg)) lost.push(o.events!); } } as never });
    recorder.record(req(1), ok);
    recorder.record(req(2), ok);
    await recorder.flush();
    expect(await recorder.close()).toBe(2);
    expect(lost).toEqual([2]);
  });

  it('a patch is audited as an update; a conditional write records its criteria and the resource it wrote', () => {
    const { repo } = fakeRepository();
    const recorder = new AuditRecorder({ repository: repo });
    const open = { kind: 'open', scopes: [] };
    const patched = recorder.eventOf({ method: 'PATCH', path: 'Observation/o1', query: {}, headers: {}, access: open } as unknown as FhirRequest, ok)!;
    expect(patched.subtype?.[0]?.code).toBe('update');
    expect(patched.entity?.map((e) => e.what?.reference)).toContain('Observation/o1');
    const upsert = recorder.eventOf({ method: 'PUT', path: 'Patient', query: { identifier: 'urn:mrn|42' }, headers: {}, access: open } as unknown as FhirRequest,
      { status: 201, headers: { Location: 'http://127.0.0.1:8080/fhir/Patient/p9/_history/1' }, body: { resourceType: 'Patient' } } as unknown as FhirResponse)!;
    expect(upsert.subtype?.[0]?.code).toBe('update');
    expect(upsert.entity?.map((e) => e.what?.reference)).toContain('Patient/p9');
    const query = upsert.entity?.find((e) => e.query)?.query;
    expect(Buffer.from(query!, 'base64').toString('utf8')).toBe('Patient?identifier=urn:mrn|42');
    const removed = recorder.eventOf({ method: 'DELETE', path: 'Patient', query: { identifier: 'urn:mrn|42' }, headers: {}, access: open } as unknown as FhirRequest, { status: 204 } as FhirResponse)!;
    expect(removed.subtype?.[0]?.code).toBe('delete');
    expect(Buffer.from(removed.entity!.find((e) => e.query)!.query!, 'base64').toString('utf8')).toBe('Patient?identifier=urn:mrn|42');
  });
});
