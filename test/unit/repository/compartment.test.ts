import { describe, expect, it } from '@jest/globals';
import type { Resource } from '@medplum/fhirtypes';
import { patientCompartmentParams, patientIdOfReference, patientIdsOf } from '../../../src/fhir/compartment.js';

const r = (resource: Record<string, unknown>): Resource => resource as unknown as Resource;

describe('patient compartment', () => {
  it('a Patient belongs to itself only (not to linked records)', () => {
    expect(patientIdsOf(r({ resourceType: 'Patient', id: 'p1', link: [{ other: { reference: 'Patient/p2' }, type: 'seealso' }] })))
      .toEqual(['p1']);
  });

  it('parses Patient references exactly: Patient/12 is not Patient/123', () => {
    expect(patientIdOfReference('Patient/12')).toBe('12');
    expect(patientIdOfReference('Patient/123')).toBe('123');
    expect(patientIdOfReference('Patient/12/_history/3')).toBe('12');
    expect(patientIdOfReference('Patient/12/extra')).toBeUndefined();
    expect(patientIdOfReference('Patient/')).toBeUndefined();
    expect(patientIdOfReference('https://other.example/fhir/Patient/12')).toBeUndefined();
    expect(patientIdOfReference('#contained')).toBeUndefined();
    expect(patientIdOfReference('Group/12')).toBeUndefined();
    expect(patientIdOfReference('PatientX/12')).toBeUndefined();
  });

  it('Observation: subject and performer when they are Patients, ignoring absolute URLs and other types', () => {
    expect(patientIdsOf(r({
      resourceType: 'Observation', status: 'final', code: {},
      subject: { reference: 'Patient/123' },
      performer: [{ reference: 'Practitioner/9' }, { reference: 'Patient/12' }, { reference: 'https://other.example/fhir/Patient/77' }],
    }))).toEqual(['123', '12']);
    expect(patientIdsOf(r({ resourceType: 'Observation', status: 'final', code: {}, subject: { reference: 'Group/1' } }))).toEqual([]);
    expect(patientIdsOf(r({ resourceType: 'Observation', status: 'final', code: {}, subject: { identifier: { value: 'x' } } }))).toEqual([]);
  });

  it('Device (its patient), Consent, MedicationAdministration, DiagnosticReport, ServiceRequest', () => {
    expect(patientIdsOf(r({ resourceType: 'Device', patient: { reference: 'Patient/a' } }))).toEqual(['a']);
    expect(patientIdsOf(r({ resourceType: 'Consent', status: 'active', scope: {}, category: [], patient: { reference: 'Patient/b' } }))).toEqual(['b']);
    expect(patientIdsOf(r({ resourceType: 'MedicationAdministration', status: 'completed', subject: { reference: 'Patient/c' },
      performer: [{ actor: { reference: 'Practitioner/x' } }] }))).toEqual(['c']);
    expect(patientIdsOf(r({ resourceType: 'DiagnosticReport', status: 'final', code: {}, subject: { reference: 'Patient/d' } }))).toEqual(['d']);
    expect(patientIdsOf(r({ resourceType: 'ServiceRequest', status: 'active', intent: 'order', subject: { reference: 'Patient/e' },
      performer: [{ reference: 'Patient/f' }] }))).toEqual(['e', 'f']);
  });

  it('AuditEvent: agent.who and entity.what when they are Patients', () => {
    expect(patientIdsOf(r({
      resourceType: 'AuditEvent', type: {}, recorded: '2026-01-01T00:00:00Z', source: { observer: {} },
      agent: [{ who: { reference: 'Practitioner/dr' }, requestor: true }, { who: { reference: 'Patient/g' }, requestor: false }],
      entity: [{ what: { reference: 'Patient/h' } }, { what: { reference: 'Observation/o1' } }],
    })).sort()).toEqual(['g', 'h']);
  });

  it('types outside the compartment have no patients', () => {
    expect(patientIdsOf(r({ resourceType: 'Practitioner', id: 'x' }))).toEqual([]);
    expect(patientIdsOf(r({ resourceType: 'Organization', id: 'x' }))).toEqual([]);
    expect(patientCompartmentParams('Observation')).toEqual(['subject', 'performer']);
  });
});
