import { describe, expect, test } from '@jest/globals';
import type { Device, Observation, Patient, RelatedPerson } from '@medplum/fhirtypes';
import { Deidentifier, shiftDate, studyKey } from '../../../src/exchange/deidentify.js';

const MASTER = Buffer.alloc(32, 7).toString('base64');

const ana: Patient = {
  resourceType: 'Patient', id: 'ana-4711', meta: { versionId: '3', lastUpdated: '2026-01-02T03:04:05Z' },
  text: { status: 'generated', div: '<div xmlns="http://www.w3.org/1999/xhtml">Ana Rivera, 12 Elm Street</div>' },
  identifier: [{ system: 'urn:oid:2.16.840.1.113883.4.1', value: '123-45-6789' }, { system: 'urn:mrn', value: 'MRN-998877' }],
  name: [{ family: 'Rivera', given: ['Ana', 'Lucia'] }],
  telecom: [{ system: 'phone', value: '+1-555-0100' }, { system: 'email', value: 'ana.rivera@example.org' }],
  address: [{ line: ['12 Elm Street'], city: 'Springfield', postalCode: '62704' }],
  photo: [{ contentType: 'image/png', data: 'UGhvdG9PZkFuYQ==' }],
  contact: [{ name: { family: 'Rivera', given: ['Jorge'] }, telecom: [{ system: 'phone', value: '+1-555-0199' }] }],
  birthDate: '1984-07-23', gender: 'female',
};
const reading: Observation = {
  resourceType: 'Observation', id: 'obs-1', status: 'final',
  meta: { profile: ['http://hl7.org/fhir/uv/cgm/StructureDefinition/cgm-sensor-reading-mass-per-volume'] },
  identifier: [{ system: 'urn:dexcom', value: 'DX-READING-0001' }],
  code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }], text: 'Glucose for Ana' },
  subject: { reference: 'Patient/ana-4711', display: 'Ana Rivera' },
  device: { reference: 'Device/dev-SN778899' },
  effectiveDateTime: '2026-03-01T23:30:00-05:00',
  valueQuantity: { value: 123, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
  note: [{ text: 'Ana had cake at Jorge\'s party' }],
};
const device: Device = {
  resourceType: 'Device', id: 'dev-SN778899', serialNumber: 'SN778899', lotNumber: 'LOT42',
  deviceName: [{ name: 'Ana Rivera G7', type: 'user-friendly-name' }], patient: { reference: 'Patient/ana-4711' },
};

describe('de-identification', () => {
  const d = new Deidentifier(studyKey(MASTER, 'study-A'));

  test('output contains none of the source identifiers, names, contacts, free text or the full birth date', () => {
    const out = JSON.stringify([ana, reading, device].map((r) => d.apply(r)));
    for (const secret of ['ana-4711', 'Rivera', 'Ana', 'Lucia', 'Jorge', '123-45-6789', 'MRN-998877', '555-01', 'example.org', 'Elm',
      'Springfield', '62704', 'UGhvdG9PZkFuYQ', '1984-07-23', '07-23', 'DX-READING', 'SN778899', 'LOT42', 'cake', 'obs-1']) {
      expect(out).not.toContain(secret);
    }
  });

  test('a relative keeps how they relate to the patient and nothing of who they are (RelatedPerson served since session 24)', () => {
    const mum: RelatedPerson = {
      resourceType: 'RelatedPerson', id: 'rp-mum', active: true, patient: { reference: 'Patient/ana-4711' },
      relationship: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-RoleCode', code: 'MTH' }] }],
      name: [{ family: 'Rivera', given: ['Lucia'] }], birthDate: '1961-07-23', gender: 'female',
      period: { start: '2020-01-01' }, telecom: [{ system: 'phone', value: '+1-555-0142' }],
    };
    const out = d.apply(mum);
    expect(Object.keys(out).sort()).toEqual(['active', 'id', 'meta', 'patient', 'relationship', 'resourceType']);
    expect(out.patient?.reference).toBe(`Patient/${d.apply(ana).id}`);
    expect(JSON.stringify(out)).not.toMatch(/1961|Lucia|Rivera|555|2020/);
  });

  test('the pseudonym is stable within a study, different across studies, and references follow it', () => {
    const p = d.apply(ana);
    const o = d.apply(reading);
    expect(p.id).toMatch(/^[0-9a-f]{40}$/);
    expect(o.subject?.reference).toBe(`Patient/${p.id}`);
    expect(d.apply(ana).id).toBe(p.id);
    expect(new Deidentifier(studyKey(MASTER, 'study-B')).apply(ana).id).not.toBe(p.id);
    expect(o.device?.reference).toBe(`Device/${d.apply(device).id}`);
  });

  test('birth date reduced to the year; values, codes and profiles kept; PSEUDED and REDACTED labels', () => {
    const p = d.apply(ana);
    expect(p.birthDate).toBe('1984');
    expect(p.gender).toBe('female');
    const o = d.apply(reading);
    expect(o.valueQuantity?.value).toBe(123);
    expect(o.code.coding?.[0]?.code).toBe('99504-3');
    expect(o.effectiveDateTime).toBe(reading.effectiveDateTime);
    expect(o.meta?.profile).toEqual(reading.meta?.profile);
    expect(o.meta?.security?.map((c) => c.code)).toEqual(['PSEUDED', 'REDACTED']);
    expect(o.meta?.versionId).toBeUndefined();
  });

  test('date shift is per patient, whole days, keeps time of day and intervals; the input is unchanged', () => {
    const shifted = new Deidentifier(studyKey(MASTER, 'study-A'), { dateShift: true });
    const days = shifted.shiftDays('ana-4711');
    expect(days).not.toBe(0);
    expect(Math.abs(days)).toBeLessThanOrEqual(180);
    const a = shifted.apply(reading);
    const b = shifted.apply({ ...reading, effectiveDateTime: '2026-03-02T00:05:00-05:00' });
    expect(a.effectiveDateTime!.slice(10)).toBe('T23:30:00-05:00');
    expect(Date.parse(b.effectiveDateTime!) - Date.parse(a.effectiveDateTime!)).toBe(35 * 60_000);
    expect(Date.parse(a.effectiveDateTime!) - Date.parse(reading.effectiveDateTime!)).toBe(days * 86_400_000);
    expect(reading.effectiveDateTime).toBe('2026-03-01T23:30:00-05:00');
    expect(shiftDate('2024-02-28', 1)).toBe('2024-02-29');
  });
});
