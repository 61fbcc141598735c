/** The pure decision point: each rule names its reason; expiry is by the clock passed in. */
import { describe, expect, test } from '@jest/globals';
import type { Observation } from '@medplum/fhirtypes';
import { decide, decideFacts, factsOf, internSet, type ActiveGrant, type Decision, type Permissions } from '../../../src/consent/decision.js';
import { consentTerms } from '../../../src/consent/terms.js';
import { consentOf } from '../../integration/consent-helpers.js';

const T0 = Date.parse('2026-03-01T00:00:00Z');
const DAY = 86_400_000;
const grant: ActiveGrant = {
  grantId: '0xg', consentId: 'c1', patientId: 'ana', notBefore: T0, notAfter: T0 + 3 * DAY, dataFrom: T0 - 14 * DAY, dataTo: T0,
  purposes: internSet(['TREAT']), classes: internSet(['Observation']), codes: internSet(['http://loinc.org|99504-3']),
};
const perms = (over: Partial<Permissions['requester']> = {}, addresses = ['0x1']): Permissions => ({
  requester: { kind: 'grantee', refs: ['Practitioner/d'], purpose: 'TREAT', key: 'k', ...over }, addresses, byPatient: new Map([['ana', [grant]]]),
});
const reading = { patientId: 'ana', resourceType: 'Observation', codes: ['http://loinc.org|99504-3'], effective: T0 - DAY };

describe('decide', () => {
  test('permits a granted reading inside the window and data period, naming the grant', () => {
    expect(decide(perms(), reading, T0 + DAY)).toEqual({ permit: true, reasons: ['grant 0xg'], grantId: '0xg' });
  });
  test.each([
    ['expired', { now: T0 + 3 * DAY }],
    ['not yet valid', { now: T0 - 1 }],
    ['outside the granted data period', { req: { effective: T0 - 15 * DAY } }],
    ['code not granted', { req: { codes: ['http://loinc.org|2339-0'] } }],
    ['type Device not granted', { req: { resourceType: 'Device', codes: [] } }],
    ['purpose HRESCH not granted', { purpose: 'HRESCH' }],
  ])('denies: %s', (reason, c: { now?: number; req?: Partial<typeof reading>; purpose?: string }) => {
    const d = decide(perms(c.purpose ? { purpose: c.purpose } : {}), { ...reading, ...c.req }, c.now ?? T0 + DAY);
    expect(d.permit).toBe(false);
    expect(d.reasons.join(' ')).toContain(reason);
  });
  test('denies without identity, purpose or patient link; patients see only their own data', () => {
    expect(decide(perms({}, []), reading, T0).reasons).toEqual(['requester has no registered identity']);
    expect(decide(perms({ purpose: undefined }), reading, T0).reasons).toEqual(['no purpose of use stated']);
    expect(decide(perms(), { ...reading, patientId: undefined }, T0).reasons).toEqual(['resource is not linked to a patient']);
    expect(decide(perms(), { ...reading, patientId: 'ana1' }, T0).permit).toBe(false);
    const self: Permissions = { requester: { kind: 'patient', patientId: 'ana', refs: [], key: 'p' }, addresses: [], byPatient: new Map() };
    expect(decide(self, reading, T0).permit).toBe(true);
    expect(decide(self, { ...reading, patientId: 'ben' }, T0).permit).toBe(false);
  });
});

describe('timeless records (Patient, Device, Consent)', () => {
  const withGrant = (g: Partial<ActiveGrant>): Permissions => ({ ...perms(), byPatient: new Map([['ana', [{ ...grant, ...g }]]]) });
  const timeless = (resourceType: string) => ({ patientId: 'ana', resourceType, codes: [] as string[] });
  test('a grant of every type ("everything in my record") covers the Patient and Device records, not the patient\'s Consents', () => {
    const everything = withGrant({ classes: undefined, codes: undefined });
    expect(decide(everything, timeless('Patient'), T0 + DAY).permit).toBe(true);
    expect(decide(everything, timeless('Device'), T0 + DAY).permit).toBe(true);
    expect(decide(everything, timeless('Consent'), T0 + DAY).reasons.join(' ')).toContain('its type is not named');
    // still only inside its access window and for its purposes
    expect(decide(everything, timeless('Patient'), T0 + 3 * DAY).permit).toBe(false);
    expect(decide(withGrant({ classes: undefined, codes: undefined, purposes: internSet(['HRESCH']) }), timeless('Patient'), T0 + DAY).permit).toBe(false);
  });
  test('a grant that lists types or codes covers a timeless record only when it names its type', () => {
    expect(decide(withGrant({ classes: internSet(['Observation']), codes: undefined }), timeless('Patient'), T0 + DAY).permit).toBe(false);
    expect(decide(withGrant({ classes: undefined, codes: internSet(['http://loinc.org|99504-3']) }), timeless('Patient'), T0 + DAY).permit).toBe(false);
    expect(decide(withGrant({ classes: internSet(['Observation', 'Patient']), codes: undefined }), timeless('Patient'), T0 + DAY).permit).toBe(true);
    expect(decide(withGrant({ classes: internSet(['Consent']), codes: undefined }), timeless('Consent'), T0 + DAY).permit).toBe(true);
  });
});

describe('decideFacts over a run of resources (a page of readings)', () => {
  const obs = (minutesBefore: number, code = '99504-3', patient = 'ana'): Observation => ({
    resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code }] },
    subject: { reference: `Patient/${patient}` }, effectiveDateTime: new Date(T0 - minutesBefore * 60_000).toISOString(),
  });
  const run = (p: Permissions, resources: Observation[], now = T0 + DAY): Decision[] =>
    resources.map((r) => decideFacts(p, factsOf(r, false), now));

  test('each resource is decided on its own time, code and patient, though the one before had the same shape', () => {
    const p = perms();
    const ds = run(p, [obs(10), obs(5), obs(15 * DAY / 60_000), obs(4), obs(3, '2339-0'), obs(2), obs(1, '99504-3', 'ben'), obs(0)]);
    expect(ds.map((d) => d.permit)).toEqual([true, true, false, true, false, true, false, true]);
    expect(ds[2]!.reasons.join(' ')).toContain('outside the granted data period');
    expect(ds[4]!.reasons.join(' ')).toContain('code not granted');
    expect(ds[6]!.reasons.join(' ')).toContain('no grant from this patient');
    expect(new Set(ds.filter((d) => d.permit).map((d) => d.grantId))).toEqual(new Set(['0xg']));
    // the clock still decides: the same reading a moment after the window closed
    expect(run(p, [obs(10), obs(5)], T0 + 3 * DAY).map((d) => d.permit)).toEqual([false, false]);
  });

  test('a resource is credited to the first grant that permits it, as decide would', () => {
    // the patient's first grant covers the last day only; the second one two weeks
    const recent: ActiveGrant = { ...grant, grantId: '0xrecent', dataFrom: T0 - DAY };
    const p: Permissions = { ...perms(), byPatient: new Map([['ana', [recent, grant]]]) };
    const ds = run(p, [obs(3 * 24 * 60), obs(2 * 24 * 60), obs(60), obs(30), obs(2 * 24 * 60)]);
    expect(ds.map((d) => d.grantId)).toEqual(['0xg', '0xg', '0xrecent', '0xrecent', '0xg']);
    expect(decide(p, { ...reading, effective: T0 - 2 * DAY }, T0 + DAY).grantId).toBe('0xg');
    expect(decide(p, { ...reading, effective: T0 - 30 * 60_000 }, T0 + DAY).grantId).toBe('0xrecent');
  });

  test('the data period holds the whole span of a resource\'s time; a time that cannot be placed is denied even to a grant naming the type', () => {
    const p = perms();
    const at = (ms: number): string => new Date(ms).toISOString();
    const { effectiveDateTime: _instant, ...untimed } = obs(0);
    const period = (start?: number, end?: number): Observation => ({
      ...untimed, effectivePeriod: { ...(start !== undefined ? { start: at(start) } : {}), ...(end !== undefined ? { end: at(end) } : {}) },
    });
    // inside the period (dataFrom T0-14d … dataTo T0) after a permitted reading: the fast path must not carry it through
    const ds = run(p, [obs(60), period(T0 - 2 * DAY, T0 - DAY), obs(50), period(T0 - 2 * DAY, T0 + 1), obs(40), period(undefined, T0 - DAY), obs(30),
      period(T0 - 15 * DAY, T0 - DAY), { ...untimed, issued: at(T0 - DAY) }, { ...untimed, effectiveTiming: { event: [at(T0 - DAY)] } }, untimed]);
    expect(ds.map((d) => d.permit)).toEqual([true, true, true, false, true, false, true, false, false, false, false]);
    expect(ds[3]!.reasons.join(' ')).toContain('outside the granted data period');
    expect(ds[5]!.reasons.join(' ')).toContain('cannot be placed in the data period');
    expect(ds[8]!.reasons.join(' ')).toContain('cannot be placed in the data period');
    expect(decide(p, { ...reading, effective: T0 - DAY, effectiveEnd: T0 + 1 }, T0 + DAY).permit).toBe(false);
    expect(decide(p, { ...reading, effective: undefined, timeUnknown: true }, T0 + DAY).permit).toBe(false);
    // a timeless type (no time of its own) still passes a grant naming it
    const device: ActiveGrant = { ...grant, grantId: '0xdev', classes: internSet(['Device']), codes: undefined };
    const withDevice: Permissions = { ...perms(), byPatient: new Map([['ana', [device]]]) };
    expect(decideFacts(withDevice, factsOf({ resourceType: 'Device', patient: { reference: 'Patient/ana' } }, false), T0 + DAY).permit).toBe(true);
  });

  test('a contained resource about the patient is decided too, even after a permitted reading', () => {
    const p = perms();
    const withDevice: Observation = { ...obs(2), contained: [{ resourceType: 'Device', id: 'd', patient: { reference: 'Patient/ana' } }] };
    const ds = run(p, [obs(3), withDevice, obs(1)]);
    expect(ds.map((d) => d.permit)).toEqual([true, false, true]);
    expect(ds[1]!.reasons.join(' ')).toContain('contained Device');
  });
});

describe('consentTerms', () => {
  test('reads a profile-conformant Consent into grant terms', () => {
    const terms = consentTerms(consentOf({ patient: 'ana', actor: 'Practitioner/d', accessFrom: T0, accessTo: T0 + DAY, dataFrom: T0 - DAY, dataTo: T0, codes: ['http://loinc.org|99504-3'] }));
    expect(terms).toMatchObject({ patientId: 'ana', actor: 'Practitioner/d', notBefore: T0, notAfter: T0 + DAY, purposes: ['TREAT'], classes: [], codes: ['http://loinc.org|99504-3'] });
  });
  test('a period end given as a date includes that whole day, month or year (datatypes.html#Period); a start begins it; a date that does not exist is refused', () => {
    const withDates = (access: [string, string], data: [string, string]) => {
      const c = consentOf({ patient: 'ana', actor: 'Practitioner/d', accessTo: T0 + DAY, dataFrom: T0 - DAY, dataTo: T0 });
      c.provision!.period = { start: access[0], end: access[1] };
      (c.provision as { dataPeriod?: { start: string; end: string } }).dataPeriod = { start: data[0], end: data[1] };
      return c;
    };
    const day = consentTerms(withDates(['2026-01-01', '2026-12-31'], ['2026-01-10', '2026-01-14']));
    expect(new Date(day.dataFrom).toISOString()).toBe('2026-01-10T00:00:00.000Z');
    expect(new Date(day.dataTo).toISOString()).toBe('2026-01-14T23:59:59.999Z');
    expect(new Date(day.notAfter).toISOString()).toBe('2026-12-31T23:59:59.999Z');
    const month = consentTerms(withDates(['2026-01-01T08:00:00Z', '2026-02'], ['2024', '2025']));
    expect(new Date(month.notBefore).toISOString()).toBe('2026-01-01T08:00:00.000Z');
    expect(new Date(month.notAfter).toISOString()).toBe('2026-02-28T23:59:59.999Z');
    expect(new Date(month.dataFrom).toISOString()).toBe('2024-01-01T00:00:00.000Z');
    expect(new Date(month.dataTo).toISOString()).toBe('2025-12-31T23:59:59.999Z');
    // an instant is taken as it is
    expect(new Date(consentTerms(withDates(['2026-01-01', '2026-06-01T12:00:00Z'], ['2026-01-10', '2026-01-14T06:00:00Z'])).dataTo).toISOString()).toBe('2026-01-14T06:00:00.000Z');
    expect(() => consentTerms(withDates(['2026-01-01', '2026-12-31'], ['2026-01-10', '2026-02-30']))).toThrow(expect.objectContaining({ status: 422 }));
  });

  test('a performer other than the patient or a guardian is refused with 422', () => {
    const c = consentOf({ patient: 'ana', actor: 'Practitioner/d', accessTo: T0 + DAY, dataFrom: T0 - DAY, dataTo: T0 });
    c.performer = [{ reference: 'Practitioner/d' }];
    expect(() => consentTerms(c)).toThrow(expect.objectContaining({ status: 422 }));
  });
});
