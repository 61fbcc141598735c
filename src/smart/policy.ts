/**
 * SMART scopes as the facade's AccessPolicy and OutboundGuard: the type-level pre-check before the
 * repository is touched, `patient/` searches narrowed to the launch patient, and every resource that
 * leaves or is written checked against the scopes with the resource in hand (granular filters and
 * patient confinement are final only then).
 */
import { Operator, getSearchParameter, type SearchRequest } from '@medplum/core';
import type { Resource } from '@medplum/fhirtypes';
import { refuseClientWrite, serverWrittenRefusal, isServerWritten } from '../audit/server-written.js';
import { forbidden } from '../errors.js';
import type { AccessContext } from '../fhir/access.js';
import type { AccessPolicy, GuardResult, Interaction, OutboundGuard } from '../fhir/policy.js';
import { scopeAllows, scopeAllowsWholeType, type Interaction as ScopeInteraction } from './scopes.js';

/**
 * SMART App Launch 2.2 "Scopes for requesting clinical data": `r` covers instance read, vread and
 * instance history; `s` type and system search and type and system history. (A v1 `.read` is `.rs`.)
 */
const SCOPE_INTERACTION: Record<Interaction, ScopeInteraction> = {
  read: 'read',
  vread: 'read',
  search: 'search',
  history: 'read',
  'history-type': 'search',
  create: 'create',
  update: 'update',
  delete: 'delete',
  operation: 'read',
};

export class SmartScopePolicy implements AccessPolicy, OutboundGuard {
  authorize(access: AccessContext, interaction: Interaction, resourceType: string): void {
    // before any scope, and with auth off too: no requester writes the access log (src/audit/server-written.ts)
    refuseClientWrite(interaction, resourceType);
    if (access.kind === 'open') return;
    if (!scopeAllows(access, SCOPE_INTERACTION[interaction], resourceType)) {
      throw forbidden(`The access token's scopes do not allow ${interaction} on ${resourceType}`);
    }
  }

  /** A patient-context token only ever searches its own patient's compartment. */
  narrowSearch(access: AccessContext, request: SearchRequest): SearchRequest {
    if (access.kind === 'open' || !access.patient || !onlyPatientScopes(access)) return request;
    if (request.resourceType === 'Patient') {
      return { ...request, filters: [...(request.filters ?? []), { code: '_id', operator: Operator.EQUALS, value: access.patient }] };
    }
    if (getSearchParameter(request.resourceType, 'patient')) {
      return { ...request, filters: [...(request.filters ?? []), { code: 'patient', operator: Operator.EQUALS, value: `Patient/${access.patient}` }] };
    }
    return request;
  }

  /** A patient-context token sees its own patient's compartment only. */
  visiblePatients(access: AccessContext): string[] | undefined {
    return access.kind !== 'open' && access.patient && onlyPatientScopes(access) ? [access.patient] : undefined;
  }

  mayWrite(access: AccessContext, resource: Resource, interaction: 'create' | 'update' | 'delete'): boolean {
    // the type-level check refused it already; a write path that asks only with the resource in hand is refused alike
    if (isServerWritten(resource.resourceType)) throw serverWrittenRefusal(resource.resourceType, interaction);
    return scopeAllows(access, interaction, resource.resourceType, interaction === 'delete' && !hasContent(resource) ? undefined : resource);
  }

  async guard(access: AccessContext, resources: Resource[]): Promise<GuardResult> {
    if (access.kind === 'open') return { allowed: resources, issues: [] };
    // a type some unfiltered, non-patient scope reads wholesale needs no look at each resource
    const wholesale = new Map<string, boolean>();
    // pages are mostly of one type: the answer for the type before is reused without a lookup
    let lastType: string | undefined;
    let lastWhole = false;
    return {
      allowed: resources.filter((r) => {
        if (r.resourceType !== lastType) {
          lastType = r.resourceType;
          let whole = wholesale.get(lastType);
          if (whole === undefined) wholesale.set(lastType, whole = scopeAllowsWholeType(access, 'read', lastType));
          lastWhole = whole;
        }
        return lastWhole || scopeAllows(access, 'read', r.resourceType, r);
      }),
      issues: [],
    };
  }
}

function onlyPatientScopes(access: AccessContext): boolean {
  const resourceScopes = access.scopes.filter((s) => /^(patient|user|system)\//.test(s));
  return resourceScopes.length > 0 && resourceScopes.every((s) => s.startsWith('patient/'));
}

function hasContent(resource: Resource): boolean {
  return Object.keys(resource).some((k) => k !== 'resourceType' && k !== 'id');
}
