/**
 * The CapabilityStatement (`GET /fhir/metadata`): lists exactly what the facade supports — the
 * resource types, interactions, search parameters the repository answers, operations registered,
 * and the SMART security block when auth is on.
 */
import { getSearchParameter } from '@medplum/core';
import type {
  CapabilityStatement, CapabilityStatementRestResource, CapabilityStatementRestResourceSearchParam,
  CapabilityStatementRestSecurity,
} from '@medplum/fhirtypes';
import { SERVER_WRITTEN_INTERACTIONS, isServerWritten } from '../audit/server-written.js';
import type { OperationHandler } from './router.js';
import { SUPPORTED_RESOURCE_TYPES } from './resource-types.js';

export interface CapabilityInputs {
  fhirBase: string;
  version: string;
  /** Search parameters per type (from the repository), or undefined for the standard ones (upstream). */
  searchParams: Record<string, string[]> | undefined;
  operations: OperationHandler[];
  /** Types whose writes a module of their own handles: no conditional update or delete there. */
  handledWriteTypes?: string[];
  security?: CapabilityStatementRestSecurity;
  /** Canonicals this server instantiates (e.g. the CGM IG's cgm-data-receiver). */
  instantiates?: string[];
  /** Profiles held in profiles/ (supportedProfile per type). */
  profilesByType?: Record<string, string[]>;
  date: string;
}

const STANDARD_PARAMS: Record<string, string[]> = {
  Patient: ['identifier', 'name', 'family', 'given', 'birthdate', 'gender'],
  Observation: ['patient', 'subject', 'code', 'date', 'category', 'device', 'status'],
  Device: ['patient', 'identifier', 'type'],
  Consent: ['patient', 'status', 'date'],
  AuditEvent: ['patient', 'date', 'agent', 'entity'],
  MedicationAdministration: ['patient', 'effective-time', 'status'],
  DiagnosticReport: ['patient', 'subject', 'code', 'date', 'category'],
  ServiceRequest: ['patient', 'subject', 'code', 'status'],
  Practitioner: ['identifier', 'name'],
  Organization: ['identifier', 'name'],
  RelatedPerson: ['patient', 'identifier', 'name'],
};

/** Builds the statement; cheap enough to call per request, but callers may cache it. */
export function buildCapabilityStatement(inputs: CapabilityInputs): CapabilityStatement {
  const typeOps = (type: string) => inputs.operations.filter((op) =>
    (op.levels.includes('type') || op.levels.includes('instance')) && (!op.resourceTypes?.length || op.resourceTypes.includes(type))
    // $validate checks a write the requester could make: none of a server-written type
    && !(op.name === 'validate' && isServerWritten(type)));
  const codesOf = (type: string): string[] => ['_id', '_lastUpdated', ...(inputs.searchParams ? inputs.searchParams[type] ?? [] : STANDARD_PARAMS[type] ?? [])];
  // `_include` and `_revinclude` values: the reference parameters searched here (`Type:param`)
  const references = SUPPORTED_RESOURCE_TYPES.flatMap((type) => [...new Set(codesOf(type))].flatMap((code) => {
    const sp = getSearchParameter(type, code);
    return sp?.type === 'reference' ? [{ type, code, targets: (sp.target ?? []) as string[] }] : [];
  }));
  const resources: CapabilityStatementRestResource[] = SUPPORTED_RESOURCE_TYPES.map((type) => {
    const codes = codesOf(type);
    const searchParam: CapabilityStatementRestResourceSearchParam[] = [...new Set(codes)].map((code) => {
      const sp = getSearchParameter(type, code);
      return { name: code, type: (sp?.type ?? 'token') as CapabilityStatementRestResourceSearchParam['type'], ...(sp?.url ? { definition: sp.url } : {}) };
    });
    // the access log is written by the server alone (src/audit/server-written.ts): read and search only
    const readOnly = isServerWritten(type);
    const interactions: string[] = readOnly
      ? [...SERVER_WRITTEN_INTERACTIONS]
      : ['read', 'vread', 'update', ...(inputs.handledWriteTypes?.includes(type) ? [] : ['patch']), 'delete', 'history-instance', 'history-type', 'create', 'search-type'];
    return {
      type,
      ...(inputs.profilesByType?.[type]?.length ? { supportedProfile: inputs.profilesByType[type] } : {}),
      interaction: interactions.map((code) => ({ code })) as CapabilityStatementRestResource['interaction'],
      ...(readOnly
        ? { documentation: 'The access log: the server records an AuditEvent for every access; no client creates, updates, patches or deletes one (405).',
          versioning: 'versioned', readHistory: true, updateCreate: false, conditionalCreate: false, conditionalRead: 'full-support', conditionalUpdate: false, conditionalDelete: 'not-supported' }
        : {
          versioning: 'versioned-update',
          readHistory: true,
          updateCreate: true,
          conditionalCreate: true,
          conditionalRead: 'full-support',
          conditionalUpdate: !inputs.handledWriteTypes?.includes(type),
          conditionalDelete: inputs.handledWriteTypes?.includes(type) ? 'not-supported' : 'single',
        }),
      // (an empty list is left out: FHIR JSON has no empty arrays)
      ...nonEmpty('searchInclude', references.filter((r) => r.type === type).map((r) => `${r.type}:${r.code}`)),
      ...nonEmpty('searchRevInclude', references.filter((r) => r.targets.includes(type)).map((r) => `${r.type}:${r.code}`)),
      searchParam,
      ...(typeOps(type).length ? { operation: typeOps(type).map((op) => ({ name: op.name, definition: operationCanonical(op.name) })) } : {}),
    };
  });
  const systemOps = inputs.operations.filter((op) => op.levels.includes('system'));
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: inputs.date,
    kind: 'instance',
    publisher: 'GlucoGuard',
    software: { name: 'GlucoGuard', version: inputs.version },
    implementation: { description: 'GlucoGuard FHIR R4 proxy', url: inputs.fhirBase },
    fhirVersion: '4.0.1',
    format: ['application/fhir+json', 'json'],
    // JSON Patch, and FHIRPath Patch (a Parameters resource) as FHIR JSON
    patchFormat: ['application/json-patch+json', 'application/fhir+json'],
    ...(inputs.instantiates?.length ? { instantiates: inputs.instantiates } : {}),
    rest: [{
      mode: 'server',
      // R4 has no element for these search features: they are said here, for whoever reads the statement
      documentation: 'Search: chained parameters (up to three links, with or without a :Type) and _has on reference parameters, '
        + 'resolved over what the requester may see; '
        + (inputs.searchParams
          ? 'composite parameters where listed; modifiers :missing, :not, :exact, :contains, :text and identifier:of-type, and a reference :Type; '
          : 'other parameters and modifiers as the upstream server answers them; ')
        + 'conditional read with If-None-Match and If-Modified-Since. '
        + '_total is taken as a hint and never answered: no Bundle.total over data filtered for the requester. '
        + 'Refused: _summary=count, _text, _content, _filter. A search that would examine too many resources is 400 too-costly.',
      ...(inputs.security ? { security: inputs.security } : {}),
      resource: resources,
      interaction: [{ code: 'batch' }, { code: 'transaction' }, { code: 'history-system' }],
      ...(systemOps.length ? { operation: systemOps.map((op) => ({ name: op.name, definition: operationCanonical(op.name) })) } : {}),
    }],
  };
}

function operationCanonical(name: string): string {
  if (name === 'submit-cgm-bundle') return 'http://hl7.org/fhir/uv/cgm/OperationDefinition/submit-cgm-bundle';
  const standard: Record<string, string> = {
    everything: 'http://hl7.org/fhir/OperationDefinition/Patient-everything',
    lastn: 'http://hl7.org/fhir/OperationDefinition/Observation-lastn',
    export: 'http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export',
    meta: 'http://hl7.org/fhir/OperationDefinition/Resource-meta',
    match: 'http://hl7.org/fhir/OperationDefinition/Patient-match',
    validate: 'http://hl7.org/fhir/OperationDefinition/Resource-validate',
    status: 'http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status',
  };
  return standard[name] ?? `urn:glucoguard:operation:${name}`;
}

/** `{ [name]: list }`, or nothing for an empty list (FHIR JSON has no empty arrays). */
function nonEmpty<K extends string>(name: K, list: string[]): { [key in K]?: string[] } {
  return (list.length ? { [name]: list } : {}) as { [key in K]?: string[] };
}
