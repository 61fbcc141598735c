/**
 * Consent as the facade's AccessPolicy and OutboundGuard (src/fhir/policy.ts), composed with the
 * SMART scope policy so a request needs both (ComposedPolicy).
 *
 * - authorize: syncs the consent epoch and works out the requester's permissions once per request
 *   (503 when the KV store or chain cannot decide);
 * - narrowSearch: confines a search to the patients that granted access (or the patient themself)
 *   and to the granted data period and codes before the repository sees it; parameters that could
 *   act as oracles for consent-limited requesters are refused;
 * - guard: every resource that leaves (reads, searches, includes, history, batch entries, write
 *   echoes, operation inputs) is decided again with the resource in hand; denied ones are dropped.
 * Each decision is noted per request (patients touched, grants used, denials) for the audit record.
 */
import { getSearchParameter, Operator, type Filter, type SearchRequest } from '@medplum/core';
import type { Resource } from '@medplum/fhirtypes';
import { badRequest } from '../errors.js';
import type { AccessContext } from '../fhir/access.js';
import { patientCompartmentParams, patientIdOfReference } from '../fhir/compartment.js';
import { metrics } from '../observability/metrics.js';
import type { AccessPolicy, GuardOptions, GuardResult, Interaction, OutboundGuard } from '../fhir/policy.js';
import { decideFacts, decideResource, factsOf, type Permissions } from './decision.js';
import type { ConsentDecisions } from './decisions.js';
import { requesterOf } from './requester.js';

/** What consent decided during one request, read by the audit recorder. */
export interface RequestNotes {
  patients: Set<string>;
  grants: Set<string>;
  permitted: number;
  denied: number;
  reasons: Set<string>;
}

const notes = new WeakMap<AccessContext, RequestNotes>();

/** The consent notes of a request (by its access context), if consent looked at it. */
export function consentNotes(access: AccessContext): RequestNotes | undefined {
  return notes.get(access);
}

function noteFor(access: AccessContext): RequestNotes {
  let n = notes.get(access);
  if (!n) {
    n = { patients: new Set(), grants: new Set(), permitted: 0, denied: 0, reasons: new Set() };
    notes.set(access, n);
  }
  return n;
}

/** Date search parameter bounding a type's clinically relevant time, where the facade supports one. */
const DATE_PARAM: Record<string, string> = {
  Observation: 'date', DiagnosticReport: 'date', MedicationAdministration: 'effective-time',
};
const NO_MATCH: Filter = { code: '_id', operator: Operator.EQUALS, value: 'gg-consent-no-match' };

export class ConsentPolicy implements AccessPolicy, OutboundGuard {
  constructor(private readonly decisions: ConsentDecisions) {}

  async authorize(access: AccessContext, _interaction: Interaction, _resourceType: string): Promise<void> {
    if (access.kind === 'open') return;
    await this.decisions.sync();
    await this.decisions.permissions(access);
  }

  async narrowSearch(access: AccessContext, request: SearchRequest): Promise<SearchRequest> {
    if (access.kind === 'open') return request;
    const requester = requesterOf(access);
    if (requester.kind === 'open') return request;
    const type = request.resourceType;
    const filters = [...(request.filters ?? [])];
    for (const f of filters) {
      if (f.code.includes('.') || f.code.startsWith('_has')) throw badRequest(`Parameter "${f.code}" is not allowed for consent-limited requesters`, f.code);
    }
    for (const s of request.sortRules ?? []) {
      if (!['_id', '_lastUpdated', 'date', 'effective-time'].includes(s.code)) throw badRequest(`Sorting by "${s.code}" is not allowed for consent-limited requesters`, '_sort');
    }
    const linkParam = patientLinkParam(type);
    if (!linkParam) return { ...request, filters: [...filters, NO_MATCH] };
    const ref = (id: string): string => (linkParam === '_id' ? id : `Patient/${id}`);
    const asked = filters.filter((f) => f.code === linkParam && f.operator === Operator.EQUALS);
    const askedIds = asked.flatMap((f) => f.value.split(',').map((v) =>
      linkParam === '_id' ? v : patientIdOfReference(v.includes('/') ? v : `Patient/${v}`) ?? `\u0000${v}`));
    if (requester.kind === 'patient') {
      if (asked.length === 1 && askedIds.every((id) => id === requester.patientId)) return { ...request, filters };
      return { ...request, filters: [...filters, { code: linkParam, operator: Operator.EQUALS, value: ref(requester.patientId!) }] };
    }
    const perms = await this.decisions.permissions(access);
    const now = this.decisions.now();
    const grants = [...perms.byPatient.values()].flat().filter((g) =>
      now >= g.notBefore && now < g.notAfter && !!requester.purpose && g.purposes.has(requester.purpose) && (!g.classes || g.classes.has(type)));
    if (grants.length === 0 || perms.addresses.length === 0) return { ...request, filters: [...filters, NO_MATCH] };
    const patients = new Set(grants.map((g) => g.patientId));
    // A patient filter the client gave is kept when every patient in it is granted (so the
    // repository can keep using its patient+date index); otherwise it is cut to the granted ones.
    if (asked.length === 1 && askedIds.every((id) => patients.has(id))) {
      // already confined to granted patients
    } else {
      const allowed = asked.length ? askedIds.filter((id) => patients.has(id)) : [...patients];
      if (allowed.length === 0) return { ...request, filters: [...filters, NO_MATCH] };
      filters.push({ code: linkParam, operator: Operator.EQUALS, value: allowed.map(ref).join(',') });
    }
    const dateParam = DATE_PARAM[type];
    const from = Math.min(...grants.map((g) => g.dataFrom));
    const to = Math.max(...grants.map((g) => g.dataTo));
    if (dateParam && !queryWithin(filters, dateParam, from, to)) {
      filters.push({ code: dateParam, operator: Operator.GREATER_THAN_OR_EQUALS, value: new Date(from).toISOString() });
      filters.push({ code: dateParam, operator: Operator.LESS_THAN_OR_EQUALS, value: new Date(to).toISOString() });
    }
    if (grants.every((g) => g.codes && !g.classes?.has(type)) && type !== 'Patient') {
      const codes = [...new Set(grants.flatMap((g) => [...g.codes!]))];
      filters.push({ code: 'code', operator: Operator.EQUALS, value: codes.join(',') });
    }
    return { ...request, filters };
  }

  /** The requester's own patient, or the patients who granted them anything (still active or not: the guards decide). */
  async visiblePatients(access: AccessContext): Promise<string[] | undefined> {
    if (access.kind === 'open') return undefined;
    const requester = requesterOf(access);
    if (requester.kind === 'open') return undefined;
    if (requester.kind === 'patient') return [requester.patientId!];
    return [...(await this.decisions.permissions(access)).byPatient.keys()];
  }

  /**
   * Consent is written only through the grant path (src/consent/service.ts), never directly
   * (transactions). A person — a patient, or a user such as a practitioner — creates data only in a
   * record they could read it back from: a grant from Ana is no licence to add readings to Ben's
   * record. System clients (device and EHR integrations, `system/` scopes) create by their scopes
   * alone: they bring the data in. The same holds for what a person's update writes (the new
   * version), or a visible reading of Ana's could be rewritten into Ben's record. Updates and deletes
   * are also decided by the router on the version they change (it must pass the requester's guards).
   */
  async mayWrite(access: AccessContext, resource: Resource, interaction: 'create' | 'update' | 'delete'): Promise<boolean> {
    if (access.kind === 'open') return true;
    if (resource.resourceType === 'Consent') return false;
    if (interaction === 'delete' || access.scopes.some((s) => s.startsWith('system/'))) return true;
    const requester = requesterOf(access);
    if (requester.kind === 'open') return true;
    const perms = await this.decisions.permissions(access);
    const decision = decideResource(perms, resource, this.decisions.now(), false);
    // data about no patient (a Practitioner, an Organization) is not consent's to decide
    return decision.patientIds.length === 0 || decision.permit;
  }

  async guard(access: AccessContext, resources: Resource[], options?: GuardOptions): Promise<GuardResult> {
    if (access.kind === 'open' || resources.length === 0) return { allowed: resources, issues: [] };
    let perms: Permissions;
    try {
      perms = await this.decisions.permissions(access);
    } catch (err) {
      metrics.consentDecisions.inc({ outcome: 'error' }, resources.length);
      throw err;
    }
    const now = this.decisions.now();
    const note = noteFor(access);
    const allowed: Resource[] = [];
    const open = perms.requester.kind === 'open';
    for (const r of resources) {
      if (open) {
        allowed.push(r);
        note.permitted++;
        continue;
      }
      const facts = factsOf(r, !options?.oneOff);
      const d = decideFacts(perms, facts, now);
      for (const p of facts.patientIds) note.patients.add(p);
      if (d.permit) {
        allowed.push(r);
        note.permitted++;
        if (d.grantId) note.grants.add(d.grantId);
      } else {
        note.denied++;
        for (const reason of d.reasons) note.reasons.add(reason);
      }
    }
    if (allowed.length) metrics.consentDecisions.inc({ outcome: 'permit' }, allowed.length);
    if (allowed.length < resources.length) metrics.consentDecisions.inc({ outcome: 'deny' }, resources.length - allowed.length);
    return { allowed, issues: [] };
  }
}

const linkParams = new Map<string, string | undefined>();

/** The search parameter that names a resource type's patient: `_id` for Patient, `patient`, or none. */
function patientLinkParam(type: string): string | undefined {
  if (!linkParams.has(type)) {
    linkParams.set(type, type === 'Patient' ? '_id' : getSearchParameter(type, 'patient') && patientCompartmentParams(type).length > 0 ? 'patient' : undefined);
  }
  return linkParams.get(type);
}

/** True when the query's own date filters already keep it inside [from, to] (no extra filter needed). */
function queryWithin(filters: Filter[], dateParam: string, from: number, to: number): boolean {
  let lower = -Infinity;
  let upper = Infinity;
  for (const f of filters) {
    if (f.code !== dateParam) continue;
    const t = Date.parse(f.value);
    if (Number.isNaN(t) || !/T\d\d:\d\d/.test(f.value)) continue;
    if (f.operator === Operator.GREATER_THAN_OR_EQUALS || f.operator === Operator.GREATER_THAN || f.operator === Operator.STARTS_AFTER) lower = Math.max(lower, t);
    if (f.operator === Operator.LESS_THAN || f.operator === Operator.ENDS_BEFORE) upper = Math.min(upper, t);
  }
  return lower >= from && upper <= to;
}

/** Several policies as one: a request must pass every one; searches are narrowed by each in turn. */
export class ComposedPolicy implements AccessPolicy {
  constructor(private readonly parts: AccessPolicy[]) {}

  async authorize(access: AccessContext, interaction: Interaction, resourceType: string): Promise<void> {
    for (const p of this.parts) await p.authorize(access, interaction, resourceType);
  }

  async narrowSearch(access: AccessContext, request: SearchRequest): Promise<SearchRequest> {
    let r = request;
    for (const p of this.parts) r = await p.narrowSearch(access, r);
    return r;
  }

  async mayWrite(access: AccessContext, resource: Resource, interaction: 'create' | 'update' | 'delete'): Promise<boolean> {
    for (const p of this.parts) if (!(await p.mayWrite(access, resource, interaction))) return false;
    return true;
  }

  /** The patients every part allows (the intersection); undefined when no part limits the requester. */
  async visiblePatients(access: AccessContext): Promise<string[] | undefined> {
    let out: string[] | undefined;
    for (const p of this.parts) {
      const some = await p.visiblePatients?.(access);
      if (some !== undefined) out = out === undefined ? [...some] : out.filter((id) => some.includes(id));
    }
    return out;
  }
}
