/**
 * src/fhir/chains.ts on its own, with a stand-in for the requester's searches: what each chain
 * asks of them, what it turns into, the limits (too costly, links), and lenient handling.
 */
import { beforeAll, describe, expect, test } from '@jest/globals';
import type { Resource } from '@medplum/fhirtypes';
import { CHAIN_TARGET_LIMIT, HAS_SOURCE_LIMIT, isChained, resolveChains, type ChainContext, type Query } from '../../../src/fhir/chains.js';
import { isGlucoGuardError } from '../../../src/errors.js';
import { loadFhirDefinitions } from '../../../src/fhir/definitions.js';

const BASE = 'https://gg.example/fhir';

/** A context whose searches answer from `answers` (by type) and record what they were asked. */
function context(answers: Record<string, Resource[]>, lenient = false): ChainContext & { asked: [string, Query, number, number][] } {
  const asked: [string, Query, number, number][] = [];
  return {
    asked,
    supported: undefined,
    lenient,
    fhirBase: BASE,
    matches: async (type, query, limit, links) => {
      asked.push([type, query, limit, links]);
      return (answers[type] ?? []).slice(0, limit + 1);
    },
  };
}

const patients = (n: number): Resource[] => Array.from({ length: n }, (_, i) => ({ resourceType: 'Patient', id: `p${i}` }));
const reading = (id: string, subject: string): Resource => ({ resourceType: 'Observation', id, status: 'final', code: {}, subject: { reference: subject } });

async function rejection(p: Promise<unknown>): Promise<{ status: number; code: string | undefined }> {
  try {
    await p;
  } catch (err) {
    if (isGlucoGuardError(err)) return { status: err.status, code: err.issues[0]?.code };
    throw err;
  }
  throw new Error('expected a rejection');
}

describe('resolveChains', () => {
  beforeAll(() => loadFhirDefinitions());

  test('tells chained names from plain ones', () => {
    for (const name of ['patient.name', 'subject:Patient.name', '_has:Observation:patient:code', '_has', 'a.b:exact']) expect([name, isChained(name)]).toEqual([name, true]);
    for (const name of ['patient', 'name:exact', 'subject:Patient', 'code:not', '_id', 'value-quantity']) expect([name, isChained(name)]).toEqual([name, false]);
  });

  test('a forward chain asks the target type and becomes a reference filter; other parameters pass through', async () => {
    const ctx = context({ Patient: patients(2) });
    const out = await resolveChains('Observation', { 'patient.name': 'Rivera', code: '99504-3', _count: '5' }, ctx);
    expect(out).toEqual({ patient: 'Patient/p0,Patient/p1', code: '99504-3', _count: '5' });
    expect(ctx.asked).toEqual([['Patient', { name: 'Rivera' }, CHAIN_TARGET_LIMIT, 1]]);
  });

  test('repeated values of a chain are AND: one filter each, next to a plain one of the same name', async () => {
    const ctx = context({ Patient: patients(1) });
    expect(await resolveChains('Observation', { 'patient.name': ['a', 'b'], patient: 'Patient/x' }, ctx))
      .toEqual({ patient: ['Patient/p0', 'Patient/p0', 'Patient/x'] });
    expect(ctx.asked.map((a) => a[1])).toEqual([{ name: 'a' }, { name: 'b' }]);
  });

  test('nothing selected means nothing can match (undefined)', async () => {
    expect(await resolveChains('Observation', { 'patient.name': 'nobody' }, context({}))).toBeUndefined();
    expect(await resolveChains('Patient', { '_has:Observation:patient:code': 'x' }, context({}))).toBeUndefined();
  });

  test('_has collects the references of the source matches to the searched type, relative, versioned or under this base', async () => {
    const sources = [reading('o1', 'Patient/a'), reading('o2', 'Patient/a/_history/3'), reading('o3', `${BASE}/Patient/b`),
      reading('o4', 'https://elsewhere.example/fhir/Patient/c'), reading('o5', 'Group/g')];
    const ctx = context({ Observation: sources });
    expect(await resolveChains('Patient', { '_has:Observation:subject:code': '99504-3' }, ctx)).toEqual({ _id: 'a,b' });
    expect(ctx.asked).toEqual([['Observation', { code: '99504-3' }, HAS_SOURCE_LIMIT, 1]]);
  });

  test('more targets than the limit, summed over target types, is too costly', async () => {
    expect(await rejection(resolveChains('Observation', { 'patient.name': 'x' }, context({ Patient: patients(CHAIN_TARGET_LIMIT + 5) }))))
      .toEqual({ status: 400, code: 'too-costly' });
    const exactly = await resolveChains('Observation', { 'patient.name': 'x' }, context({ Patient: patients(CHAIN_TARGET_LIMIT) }));
    expect((exactly!.patient as string).split(',')).toHaveLength(CHAIN_TARGET_LIMIT);
    const many = Array.from({ length: HAS_SOURCE_LIMIT + 1 }, (_, i) => reading(`o${i}`, 'Patient/a'));
    expect(await rejection(resolveChains('Patient', { '_has:Observation:patient:code': 'x' }, context({ Observation: many }))))
      .toEqual({ status: 400, code: 'too-costly' });
  });

  test('malformed chains are 400; under lenient handling they are dropped, but too costly stays an error', async () => {
    const malformed: Query[] = [{ 'code.name': 'x' }, { 'subject:Medication.code': 'x' }, { 'patient.': 'x' }, { '_has:Observation:patient': 'x' }, { _has: 'x' }];
    for (const q of malformed) {
      expect([q, await rejection(resolveChains('Observation', q, context({}))).then((r) => r.status)]).toEqual([q, 400]);
    }
    expect(await resolveChains('Observation', { 'code.name': 'x', code: 'y' }, context({}, true))).toEqual({ code: 'y' });
    expect(await rejection(resolveChains('Observation', { 'patient.name': 'x' }, context({ Patient: patients(CHAIN_TARGET_LIMIT + 1) }, true))))
      .toEqual({ status: 400, code: 'too-costly' });
  });
});
