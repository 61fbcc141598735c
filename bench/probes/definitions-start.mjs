// What loading the FHIR definitions costs a start, as the server does it (src/fhir/definitions.ts
// loadFhirDefinitions), then looking up the types a server uses (each parsed on first use since
// session 27): ms for each. One run per process (the index is global); D=<dir> names another
// checkout's dist to compare builds, taking turns:
//   node bench/probes/definitions-start.mjs
//   D=/tmp/prev0/dist node bench/probes/definitions-start.mjs
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const dist = path.resolve(process.env.D ?? 'dist');
const { loadFhirDefinitions } = await import(pathToFileURL(path.join(dist, 'src/fhir/definitions.js')).href);
const { isResourceType } = await import('@medplum/core');
const used = ['Patient', 'Observation', 'Device', 'Consent', 'AuditEvent', 'MedicationAdministration', 'DiagnosticReport', 'ServiceRequest',
  'Practitioner', 'Organization', 'RelatedPerson', 'Group', 'Subscription', 'Bundle', 'OperationOutcome', 'Parameters'];
let t = performance.now();
loadFhirDefinitions();
const loadMs = performance.now() - t;
t = performance.now();
for (const type of used) isResourceType(type);
const typesMs = performance.now() - t;
console.log(`${dist}: loadFhirDefinitions ${loadMs.toFixed(0)} ms, then the ${used.length} types a server uses ${typesMs.toFixed(0)} ms`);
