// What the JSON-kind check of every write (src/fhir/validation.ts jsonShapeIssues) costs beside the rest of base validation,
// for a layout it has seen (the common case; a new layout is walked, ~70-100 µs for a reading): a CGM sensor reading and a Patient, 5 rounds of 2,000 each, µs per resource.
import { D } from './kept-store.mjs';
const { loadFhirDefinitions } = await import(`${D}/src/fhir/definitions.js`);
const { jsonShapeIssues, ProfileValidator } = await import(`${D}/src/fhir/validation.js`);
const { PROFILES_DIR } = await import(`${D}/src/paths.js`);
loadFhirDefinitions();
const validator = new ProfileValidator(PROFILES_DIR);
const reading = {
  resourceType: 'Observation', status: 'final',
  category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'laboratory' }] }],
  code: { coding: [{ system: 'http://loinc.org', code: '99504-3', display: 'Glucose [Mass/volume] in Interstitial fluid' }] },
  subject: { reference: 'Patient/p1' }, device: { reference: 'Device/d1' }, effectiveDateTime: '2026-01-01T08:00:00Z',
  identifier: [{ system: 'urn:example:readings', value: 'r-1' }],
  valueQuantity: { value: 123, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
};
const patient = { resourceType: 'Patient', name: [{ family: 'Rivera', given: ['Ana'] }], birthDate: '1950-04-02', identifier: [{ system: 'urn:mrn', value: '1' }], telecom: [{ system: 'phone', value: '555' }] };
for (let round = 0; round < 5; round++) {
  const line = [];
  for (const [name, r] of [['reading', reading], ['patient', patient]]) {
    let t = performance.now(); for (let i = 0; i < 2000; i++) jsonShapeIssues(r); const shape = (performance.now() - t) * 1000 / 2000;
    t = performance.now(); for (let i = 0; i < 2000; i++) validator.check(r); const all = (performance.now() - t) * 1000 / 2000;
    line.push(`${name}: JSON kinds ${shape.toFixed(1)} µs of base validation ${all.toFixed(1)} µs`);
  }
  console.log(line.join('; '));
}
