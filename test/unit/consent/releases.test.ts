/**
 * Data that outlives its request (bulk export files) goes out only while the grants that let it out
 * are in force: the guard notes, per patient, the grant behind each permitted resource (once asked
 * to), and `stillReleasable` decides again from those notes alone — O(patients), no resources.
 */
import { describe, expect, test } from '@jest/globals';
import { Operator } from '@medplum/core';
import type { Observation } from '@medplum/fhirtypes';
import { internSet, type ActiveGrant, type Permissions } from '../../../src/consent/decision.js';
import type { ConsentDecisions } from '../../../src/consent/decisions.js';
import { ComposedPolicy, ConsentPolicy } from '../../../src/consent/policy.js';
import type { AccessContext } from '../../../src/fhir/access.js';
import { OPEN_ACCESS } from '../../../src/fhir/access.js';
import { OPEN_POLICY, type AccessPolicy } from '../../../src/fhir/policy.js';

const T0 = Date.parse('2026-03-01T00:00:00Z');
const DAY = 86_400_000;

const grantOf = (grantId: string, patientId: string, over: Partial<ActiveGrant> = {}): ActiveGrant => ({
  grantId, consentId: `c-${grantId}`, patientId, notBefore: T0 - DAY, notAfter: T0 + 3 * DAY, dataFrom: T0 - 14 * DAY, dataTo: T0,
  purposes: internSet(['TREAT']), classes: internSet(['Observation']), ...over,
});

/** A ConsentPolicy over fixed permissions and a clock the test moves. */
function policyOver(grants: ActiveGrant[]) {
  const state = { now: T0 + DAY, grants };
  const perms = (access: AccessContext): Permissions => {
    const self = access.fhirUser?.startsWith('Patient/') ? access.fhirUser.slice(8) : undefined;
    if (self) return { requester: { kind: 'patient', patientId: self, refs: [access.fhirUser!], key: `patient:${self}` }, addresses: [], byPatient: new Map() };
    const byPatient = new Map<string, ActiveGrant[]>();
    for (const g of state.grants) byPatient.set(g.patientId, [...(byPatient.get(g.patientId) ?? []), g]);
    const purpose = (access as { purposeOfUse?: string }).purposeOfUse;
    return { requester: { kind: 'grantee', refs: [access.fhirUser!], purpose, key: 'doc' }, addresses: ['0x1'], byPatient };
  };
  const decisions = { sync: async () => undefined, permissions: async (a: AccessContext) => perms(a), now: () => state.now } as unknown as ConsentDecisions;
  return { policy: new ConsentPolicy(decisions), state };
}

const doctor = (): AccessContext & { purposeOfUse: string } => ({ kind: 'token', clientId: 'ehr', fhirUser: 'Practitioner/doc', scopes: ['user/*.rs'], purposeOfUse: 'TREAT' });
const reading = (patient: string, also?: string): Observation => ({
  resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] },
  subject: { reference: `Patient/${patient}` }, effectiveDateTime: new Date(T0 - DAY).toISOString(),
  ...(also ? { performer: [{ reference: `Patient/${also}` }] } : {}),
});

describe('released data, decided again', () => {
  test('notes nothing until asked, then each patient with the grant that let their data out', async () => {
    const { policy } = policyOver([grantOf('g-ana', 'ana'), grantOf('g-ben', 'ben')]);
    const access = doctor();
    await policy.guard(access, [reading('ana')]);
    expect(policy.takeReleased(access).size).toBe(0);
    await policy.guard(access, [reading('ana'), reading('ana'), reading('ben'), reading('carl')]);
    expect(policy.takeReleased(access)).toEqual(new Map([['ana', new Set(['g-ana'])], ['ben', new Set(['g-ben'])]]));
    // taken: the count starts afresh
    expect(policy.takeReleased(access).size).toBe(0);
  });

  test('a resource about two patients notes each patient\'s own grant, not only the last one decided', async () => {
    const { policy, state } = policyOver([grantOf('g-ana', 'ana'), grantOf('g-ben', 'ben')]);
    const access = doctor();
    policy.takeReleased(access);
    expect((await policy.guard(access, [reading('ana', 'ben')])).allowed).toHaveLength(1);
    const released = policy.takeReleased(access);
    expect(released).toEqual(new Map([['ana', new Set(['g-ana'])], ['ben', new Set(['g-ben'])]]));
    expect(await policy.stillReleasable(doctor(), released)).toBe(true);
    state.grants = [grantOf('g-ben', 'ben')]; // ana revokes
    expect(await policy.stillReleasable(doctor(), released)).toBe(false);
  });

  test('refused once a grant behind the data is revoked, replaced or past its access window; noted for the access log', async () => {
    const { policy, state } = policyOver([grantOf('g-ana', 'ana'), grantOf('g-ben', 'ben')]);
    const released = new Map([['ana', new Set(['g-ana'])], ['ben', new Set(['g-ben'])]]);
    expect(await policy.stillReleasable(doctor(), released)).toBe(true);
    // ana replaces her grant with a new one (a new id): the data was not let out under it
    state.grants = [grantOf('g-ana-2', 'ana'), grantOf('g-ben', 'ben')];
    const access = doctor();
    expect(await policy.stillReleasable(access, released)).toBe(false);
    const { consentNotes } = await import('../../../src/consent/policy.js');
    expect([...consentNotes(access)!.patients].sort()).toEqual(['ana', 'ben']);
    expect([...consentNotes(access)!.reasons]).toEqual(['grant g-ana: no longer in force (revoked or ended)']);
    expect([...consentNotes(access)!.grants]).toEqual(['g-ben']);
    // the access window ends
    state.grants = [grantOf('g-ana', 'ana'), grantOf('g-ben', 'ben', { notAfter: T0 + 2 * DAY })];
    expect(await policy.stillReleasable(doctor(), released)).toBe(true);
    state.now = T0 + 2 * DAY;
    expect(await policy.stillReleasable(doctor(), released)).toBe(false);
    // another purpose than the one the data went out for
    state.now = T0 + DAY;
    const research = { ...doctor(), purposeOfUse: 'HRESCH' };
    expect(await policy.stillReleasable(research, released)).toBe(false);
    // a grantee's data noted without a grant, or not noted at all: refused (fail closed)
    expect(await policy.stillReleasable(doctor(), new Map([['ana', new Set<string>()]]))).toBe(false);
    expect(await policy.stillReleasable(doctor(), undefined)).toBe(false);
  });

  test('the patient\'s own data and open access are not limited by grants', async () => {
    const { policy, state } = policyOver([]);
    const ana: AccessContext = { kind: 'token', clientId: 'app', fhirUser: 'Patient/ana', patient: 'ana', scopes: ['patient/*.rs'] };
    policy.takeReleased(ana);
    await policy.guard(ana, [reading('ana')]);
    const released = policy.takeReleased(ana);
    expect(released).toEqual(new Map([['ana', new Set()]]));
    state.now = T0 + 365 * DAY;
    expect(await policy.stillReleasable(ana, released)).toBe(true);
    expect(await policy.stillReleasable(ana, undefined)).toBe(true);
    expect(await policy.stillReleasable(ana, new Map([['ben', new Set<string>()]]))).toBe(false);
    expect(await policy.stillReleasable(OPEN_ACCESS, new Map([['ben', new Set(['gone'])]]))).toBe(true);
  });

  test('ComposedPolicy sends a filter that several parts add only once (the same condition), keeping different ones', async () => {
    const addPatient: AccessPolicy = {
      authorize: () => undefined,
      mayWrite: () => true,
      narrowSearch: (_access, request) => ({ ...request, filters: [...(request.filters ?? []), { code: 'patient', operator: Operator.EQUALS, value: 'Patient/ana' }] }),
    };
    const composed = new ComposedPolicy([addPatient, addPatient, OPEN_POLICY]);
    const narrowed = await composed.narrowSearch(OPEN_ACCESS, {
      resourceType: 'Observation',
      filters: [{ code: 'patient', operator: Operator.EQUALS, value: 'Patient/ana' }, { code: 'date', operator: Operator.GREATER_THAN_OR_EQUALS, value: '2026-01-01' }],
    });
    expect(narrowed.filters).toEqual([
      { code: 'patient', operator: Operator.EQUALS, value: 'Patient/ana' },
      { code: 'date', operator: Operator.GREATER_THAN_OR_EQUALS, value: '2026-01-01' },
    ]);
  });

  test('ComposedPolicy asks the parts that decide releases (consent) and merges what they noted', async () => {
    const { policy, state } = policyOver([grantOf('g-ana', 'ana')]);
    const composed = new ComposedPolicy([OPEN_POLICY, policy]);
    const access = doctor();
    composed.takeReleased(access);
    await policy.guard(access, [reading('ana')]);
    const released = composed.takeReleased(access);
    expect(released).toEqual(new Map([['ana', new Set(['g-ana'])]]));
    expect(await composed.stillReleasable(doctor(), released)).toBe(true);
    state.grants = [];
    expect(await composed.stillReleasable(doctor(), released)).toBe(false);
  });
});
