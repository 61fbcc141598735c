/**
 * src/fhir/member-paths.ts must give exactly what @medplum/core's FHIRPath evaluator gives, on every
 * search parameter (and composite part, and Patient compartment expression) of every type the
 * embedded repository indexes: the index rows, the matcher, the sort keys and the encryption key's
 * patient all come from these values. Checked on the CGM IG's examples, on hand-made resources with
 * the shapes that trip property access (choice types, primitive extensions, arrays, contained
 * resources), and on random resources built from the properties the expressions name.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from '@jest/globals';
import { evalFhirPathTyped, getParsedExpressionForResourceType, getSearchParameter, parseFhirPath, toTypedValue } from '@medplum/core';
import type { FhirPathAtom } from '@medplum/core';
import type { Resource } from '@medplum/fhirtypes';
import fc from 'fast-check';
import { patientCompartmentParams } from '../../../src/fhir/compartment.js';
import { compilePath, isMemberPath } from '../../../src/fhir/member-paths.js';
import { PACKAGE_ROOT } from '../../../src/paths.js';
import { paramsOf, supportedParams } from '../../../src/repository/embedded/params.js';

const FIXTURES = path.join(PACKAGE_ROOT, 'test', 'fixtures', 'cgm-ig');

interface Expression { label: string; atom: FhirPathAtom; type: string; element?: boolean }

/** Every expression the repository evaluates, by resource type. */
function expressions(): Expression[] {
  const out: Expression[] = [];
  for (const type of Object.keys(supportedParams())) {
    for (const info of paramsOf(type).values()) {
      out.push({ label: `${type}.${info.code}`, atom: info.atom, type });
      for (const [i, part] of (info.parts ?? []).entries()) out.push({ label: `${type}.${info.code} part ${i}`, atom: part.atom, type, element: true });
    }
    for (const code of patientCompartmentParams(type)) {
      const expression = getSearchParameter(type, code)?.expression;
      if (expression) out.push({ label: `${type} compartment ${code}`, atom: getParsedExpressionForResourceType(type, expression), type });
    }
  }
  return out;
}

/** Both evaluations of an expression on a resource (a composite part on each element its parameter selects). */
function bothWays(e: Expression, resource: Resource): void {
  let inputs: ReturnType<typeof toTypedValue>[][];
  try {
    inputs = e.element
      ? [...evalFhirPathTyped(parseFhirPath('Observation | Observation.component'), [toTypedValue(resource)]).map((v) => [v])]
      : [[toTypedValue(resource)]];
  } catch {
    // medplum cannot list the elements to compare on (`"_component": 1`, which no write lets through:
    // jsonShapeIssues); found when a new type's parameters (RelatedPerson, session 24) moved the seeded stream
    return;
  }
  const compiled = compilePath(e.atom);
  for (const input of inputs) {
    let expected: unknown;
    let thrown: unknown;
    try {
      expected = evalFhirPathTyped(e.atom, input);
    } catch (err) {
      thrown = err;
    }
    if (thrown) {
      expect(() => compiled(input)).toThrow();
    } else {
      expect({ label: e.label, values: compiled(input) }).toEqual({ label: e.label, values: expected });
    }
  }
}

const ALL = expressions();

describe('member paths against @medplum/core FHIRPath', () => {
  it('compiles the plain member paths and leaves functions to medplum', () => {
    const compiled = ALL.filter((e) => isMemberPath(e.atom)).map((e) => e.label);
    expect(compiled).toEqual(expect.arrayContaining([
      'Observation.subject', 'Observation.code', 'Observation.date', 'Observation.value-quantity', 'Observation.component-code',
      'Observation.component-value-quantity', 'Observation._profile', 'Patient.name', 'Patient.birthdate', 'Consent.period',
      'Observation compartment subject',
    ]));
    // `where(resolve() is Patient)` is compiled too; `telecom.where(system = …)`, `deceased.exists() and …`, `value.as(Quantity)` are not
    expect(compiled).toEqual(expect.arrayContaining(['Observation.patient', 'MedicationAdministration.patient', 'AuditEvent.patient', 'AuditEvent compartment patient']));
    const left = ALL.filter((e) => !isMemberPath(e.atom)).map((e) => e.label);
    expect(left).toEqual(expect.arrayContaining(['Patient.phone', 'Patient.deceased', 'Observation.component-code-value-quantity part 1']));
    expect(compiled.length).toBeGreaterThan(left.length * 5);
  });

  it('gives the same values on the CGM IG examples', () => {
    const files = readdirSync(FIXTURES).filter((f) => f.endsWith('.json'));
    const resources: Resource[] = files.map((f) => JSON.parse(readFileSync(path.join(FIXTURES, f), 'utf8')) as Resource);
    for (const bundle of resources.filter((r) => r.resourceType === 'Bundle')) {
      for (const entry of (bundle as { entry?: { resource?: Resource }[] }).entry ?? []) if (entry.resource) resources.push(entry.resource);
    }
    let checked = 0;
    for (const resource of resources) {
      for (const e of ALL.filter((x) => x.type === resource.resourceType)) {
        bothWays(e, resource);
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(200);
  });

  it('gives the same values on choice types, primitive extensions, arrays and contained resources', () => {
    const resources: Resource[] = [
      {
        resourceType: 'Observation', status: 'final', _status: { extension: [{ url: 'http://example.org/x', valueString: 'y' }] },
        code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }, { system: 'http://loinc.org', code: '99504-3' }] },
        subject: { reference: 'Patient/a' }, effectivePeriod: { start: '2026-01-01', end: '2026-01-02T10:00:00Z' },
        valueSampledData: { origin: { value: 0 }, period: 300000, dimensions: 1, data: '1 2 3' },
        component: [
          { code: { text: 'a' }, valueQuantity: { value: 1, unit: 'mg/dL' } },
          { code: { text: 'a' }, valueQuantity: { value: 1, unit: 'mg/dL' } },
          { code: { coding: [{ code: 'b' }] }, valueCodeableConcept: { text: 'c' } },
          { code: { text: 'd' }, valueString: 'e' },
        ],
        contained: [{ resourceType: 'Patient', id: 'p', name: [{ family: 'X' }] }],
        performer: [{ reference: '#p' }, { reference: 'Practitioner/1' }, { display: 'only a display' }],
        meta: { tag: [{ code: 't' }], security: [], profile: ['http://hl7.org/fhir/uv/cgm/StructureDefinition/cgm-sensor-reading-mass-per-volume'] },
      } as Resource,
      { resourceType: 'Observation', status: 'final', code: { text: 'x' }, effectiveInstant: '2026-01-01T00:00:00.000Z', valueString: 'seven' } as Resource,
      { resourceType: 'Observation', status: 'final', code: {}, effectiveTiming: { event: ['2026-01-01'] }, valueQuantity: { value: 0 } } as Resource,
      {
        resourceType: 'Patient', id: 'a', active: false, gender: 'unknown', birthDate: '1970', _birthDate: { extension: [{ url: 'http://example.org/t', valueTime: '10:00:00' }] },
        name: [{ family: 'Müller', given: ['Anna', 'B.'], _given: [null, { extension: [{ url: 'http://example.org/i', valueBoolean: true }] }] }, { text: 'Anna Müller' }],
        telecom: [{ system: 'phone', value: '+41 1' }, { system: 'email', value: 'a@example.org' }, { value: 'bare' }],
        address: [{ line: ['1 Main St', 'Flat 2'], city: 'Bern', postalCode: '3000', country: 'CH' }],
        deceasedDateTime: '2026-01-01', communication: [{ language: { coding: [{ system: 'urn:ietf:bcp:47', code: 'de' }] } }],
        generalPractitioner: [{ reference: 'Practitioner/1' }, { reference: 'Organization/2' }],
      } as Resource,
      { resourceType: 'Consent', status: 'active', scope: { text: 's' }, category: [{ text: 'c' }], patient: { reference: 'Patient/a' }, dateTime: '2026-01-01', provision: { period: { start: '2026-01-01' }, actor: [{ role: { text: 'r' }, reference: { reference: 'Practitioner/1' } }] } } as Resource,
      { resourceType: 'MedicationAdministration', status: 'completed', medicationCodeableConcept: { text: 'insulin' }, subject: { reference: 'Patient/a' }, effectivePeriod: { start: '2026-01-01T08:00:00Z' } } as Resource,
      { resourceType: 'MedicationAdministration', status: 'completed', medicationReference: { reference: 'Medication/m' }, subject: { reference: 'Patient/a' }, effectiveDateTime: '2026-01-01T08:00:00Z' } as Resource,
      { resourceType: 'AuditEvent', type: { code: 'rest' }, recorded: '2026-01-01T00:00:00Z', agent: [{ requestor: true, who: { reference: 'Patient/a' } }], source: { observer: { display: 'x' } }, entity: [{ what: { reference: 'Observation/1' } }, { what: { reference: 'Patient/a' } }] } as Resource,
      { resourceType: 'ServiceRequest', status: 'active', intent: 'order', subject: { reference: 'Patient/a' }, occurrenceTiming: { repeat: { boundsPeriod: { start: '2026-01-01' } } }, authoredOn: '2026-01-01' } as Resource,
      { resourceType: 'Provenance', target: [{ reference: 'Observation/1' }, { reference: 'Patient/a' }], recorded: '2026-01-01T00:00:00Z', agent: [{ who: { reference: 'Device/d' } }] } as Resource,
    ];
    // every shape `resolve()` tells apart, in the references `where(resolve() is Patient)` filters
    const references: unknown[] = [
      { reference: 'Patient/a' }, { reference: 'Patient/a/_history/2' }, { reference: 'Patient?identifier=urn:mrn|1' }, { reference: 'Patient' },
      { reference: 'Group/g' }, { reference: 'Patientx/a' }, { reference: 'http://example.org/fhir/Patient/a' }, { reference: '#p' }, { reference: '' },
      { reference: 'Patient?x=a/b' }, { reference: 'Group?identifier=Patient/a' }, { reference: 7 }, { reference: ['Patient/a'] },
      { type: 'Patient', identifier: { system: 'urn:mrn', value: '1' } }, { type: 'Group', identifier: { value: '1' } }, { reference: '', type: 'Patient', identifier: { value: '1' } },
      { resource: { resourceType: 'Patient', id: 'c' } }, { resource: { resourceType: 'Group' } }, { display: 'only a display' }, {}, 'Patient/a', 'Group/a', '', 3, true,
    ];
    for (const subject of references) {
      resources.push({ resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject } as Resource);
      resources.push({ resourceType: 'MedicationAdministration', status: 'completed', medicationCodeableConcept: { text: 'i' }, subject, effectiveDateTime: '2026-01-01' } as Resource);
      resources.push({ resourceType: 'AuditEvent', type: { code: 'rest' }, recorded: '2026-01-01T00:00:00Z', agent: [{ requestor: true, who: subject }], source: { observer: {} }, entity: [{ what: subject }] } as Resource);
    }
    resources.push({ resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: null } as unknown as Resource);
    for (const resource of resources) for (const e of ALL.filter((x) => x.type === resource.resourceType)) bothWays(e, resource);
  });

  it('gives the same values on random resources made of the properties the expressions name', () => {
    const names = new Set<string>();
    for (const e of ALL) for (const m of e.atom.toString().matchAll(/[A-Za-z]+/g)) names.add(m[0]);
    const suffixes = ['Quantity', 'SampledData', 'String', 'CodeableConcept', 'DateTime', 'Period', 'Instant', 'Timing', 'Boolean', 'Reference', 'Integer'];
    // and a Reference's own properties, which `resolve()` reads
    const keys = [...names, 'reference', 'type', 'identifier', 'resource'].flatMap((n) => [n, `_${n}`, ...suffixes.map((s) => n + s)]);
    const leaf = fc.oneof(fc.constant(null), fc.boolean(), fc.integer({ min: -3, max: 3 }),
      fc.constantFrom('', 'x', 'Patient/a', '2026-01-01', 'http://loinc.org', 'Patient?identifier=1', 'Group/g', 'http://a/Patient/1', '#p', 'Patient'));
    const { tree } = fc.letrec<{ tree: unknown }>((tie) => ({
      tree: fc.oneof({ depthSize: 'small', withCrossShrink: true },
        leaf,
        fc.array(tie('tree'), { maxLength: 3 }),
        fc.dictionary(fc.constantFrom(...keys), tie('tree'), { maxKeys: 4 })),
    }));
    const types = Object.keys(supportedParams());
    const resource = fc.record({ resourceType: fc.constantFrom(...types), body: fc.dictionary(fc.constantFrom(...keys), tree, { maxKeys: 8 }) })
      .map(({ resourceType, body }) => ({ ...(body as object), resourceType }) as Resource);
    fc.assert(fc.property(resource, (r) => {
      for (const e of ALL.filter((x) => x.type === r.resourceType)) bothWays(e, r);
    }), { numRuns: 400, seed: 20261205 });
  });
});
