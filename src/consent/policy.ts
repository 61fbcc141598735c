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
 * Data that outlives its request (bulk export files) is released only while the grants that let it
 * out are still in force: `takeReleased` names them, `stillReleasable` decides again.
 *
 * Research (DESIGN §4): data asked for under a research purpose (HRESCH and the codes under it)
 * leaves only de-identified, and only the exchange module de-identifies (`$export`, rest-hook
 * Subscriptions: src/exchange/research.ts). So the policy of the FHIR REST API refuses a grantee
 * stating a research purpose (403) for every interaction but operations (the `$export` kick-off and
 * status, Subscription `$status`; operations that return data read it through read or search and
 * are refused there) and writes of Subscriptions. Refused rather than pseudonymised on the REST
 * path: a pseudonym handed out by read, search, `_include`, history or batch would have to resolve
 * back to its resource on the next request (every reference in it too, chains and `_has` included),
 * a second de-identification path that any corner left out turns into a re-identification oracle.
 * The exchange module gets its own instance (`deidentifyingPolicy()`), which decides research
 * requests like any other.
 */
import { getSearchParameter, Operator, type Filter, type SearchRequest } from '@medplum/core';
import type { OperationOutcomeIssue, Resource } from '@medplum/fhirtypes';
import { badRequest, forbidden } from '../errors.js';
import type { AccessContext } from '../fhir/access.js';
import { patientCompartmentParams, patientIdOfReference, patientIdsOf } from '../fhir/compartment.js';
import { metrics } from '../observability/metrics.js';
import type { AccessPolicy, GuardOptions, GuardResult, Interaction, OutboundGuard } from '../fhir/policy.js';
import { decideFacts, decideResource, factsOf, type ActiveGrant, type Decision, type Permissions, type ResourceFacts } from './decision.js';
import type { ConsentDecisions } from './decisions.js';
import { isResearchPurpose, requesterOf, type ConsentAccessContext, type Requester } from './requester.js';

/** What consent decided during one request, read by the audit recorder. */
export interface RequestNotes {
  patients: Set<string>;
  grants: Set<string>;
  /** grant id → the patients whose data it let out (the access log names each patient's own grants only). */
  grantPatients: Map<string, Set<string>>;
  permitted: number;
  denied: number;
  reasons: Set<string>;
  /**
   * Once `takeReleased` asked for it: each patient whose data the guards let out, with the grants
   * that let it out (none for the patient's own data).
   */
  released?: Map<string, Set<string>>;
}

/** Whose data was let out: patient id → the grants that let it out (empty for the patient's own data). */
export type Released = ReadonlyMap<string, ReadonlySet<string>>;

const notes = new WeakMap<AccessContext, RequestNotes>();

/** The consent notes of a request (by its access context), if consent looked at it. */
export function consentNotes(access: AccessContext): RequestNotes | undefined {
  return notes.get(access);
}

/** What earlier takes of a request's notes returned, merged (see takeConsentNotes). */
const taken = new WeakMap<RequestNotes, RequestNotes>();

/**
 * The consent notes of one access-log event. A batch's entries share their batch's access context,
 * so its notes gather every entry's: each entry's event takes what consent noted since the previous
 * take (its own patients, grants and refusals, not an earlier entry's), and `whole` (the batch's own
 * event) reads all of the request without taking. The notes object itself stays (an export's
 * `released` lives on it).
 */
export function takeConsentNotes(access: AccessContext, whole = false): RequestNotes | undefined {
  const n = notes.get(access);
  if (!n) return undefined;
  const current: RequestNotes = {
    patients: new Set(n.patients), grants: new Set(n.grants), grantPatients: new Map([...n.grantPatients].map(([g, p]) => [g, new Set(p)])),
    permitted: n.permitted, denied: n.denied, reasons: new Set(n.reasons),
  };
  const before = taken.get(n);
  const all = before ? mergeNotes(before, current) : current;
  if (whole) return all;
  taken.set(n, all);
  n.patients.clear();
  n.grants.clear();
  n.grantPatients.clear();
  n.reasons.clear();
  n.permitted = 0;
  n.denied = 0;
  return current;
}

function mergeNotes(a: RequestNotes, b: RequestNotes): RequestNotes {
  const grantPatients = new Map([...a.grantPatients].map(([g, p]) => [g, new Set(p)]));
  for (const [g, p] of b.grantPatients) grantPatients.set(g, new Set([...(grantPatients.get(g) ?? []), ...p]));
  return {
    patients: new Set([...a.patients, ...b.patients]), grants: new Set([...a.grants, ...b.grants]), grantPatients,
    permitted: a.permitted + b.permitted, denied: a.denied + b.denied, reasons: new Set([...a.reasons, ...b.reasons]),
  };
}

function noteGrant(note: RequestNotes, grantId: string, patientIds: readonly string[]): void {
  note.grants.add(grantId);
  let of = note.grantPatients.get(grantId);
  if (!of) note.grantPatients.set(grantId, of = new Set());
  for (const p of patientIds) of.add(p);
}

function noteFor(access: AccessContext): RequestNotes {
  let n = notes.get(access);
  if (!n) {
    n = { patients: new Set(), grants: new Set(), grantPatients: new Map(), permitted: 0, denied: 0, reasons: new Set() };
    notes.set(access, n);
  }
  return n;
}

/**
 * Date search parameter bounding a type's clinically relevant time, where the facade supports one.
 * Each indexes exactly the element clinical-time.ts judges for its type (`effective[x]`), so the
 * narrowing finds every resource the guards would let through (a span wholly inside the period
 * matches `ge` its start and `le` its end), and nothing a read would show is missing from a search.
 */
const DATE_PARAM: Record<string, string> = {
  Observation: 'date', DiagnosticReport: 'date', MedicationAdministration: 'effective-time',
};
/** What a guardian writes in their ward's record: readings, the devices behind them, insulin doses, reports. */
const GUARDIAN_WRITES: ReadonlySet<string> = new Set(['Observation', 'Device', 'MedicationAdministration', 'DiagnosticReport']);
/** The `_id` a search narrowed to nothing the requester may see is given (ConsentPolicy.narrow): readers need not send it (src/exchange/reader.ts). */
export const CONSENT_NO_MATCH_ID = 'gg-consent-no-match';
const NO_MATCH: Filter = { code: '_id', operator: Operator.EQUALS, value: CONSENT_NO_MATCH_ID };

/** A grant of the requester's that is inside its access window now and names the purpose they state. */
function inForce(g: ActiveGrant, requester: Requester, now: number): boolean {
  return now >= g.notBefore && now < g.notAfter && !!requester.purpose && g.purposes.has(requester.purpose);
}

export interface ConsentPolicyOptions {
  /**
   * The caller de-identifies what it delivers to research requesters (the exchange module:
   * `$export` files, Subscription notifications), so research purposes are decided like any other.
   * Without it (the FHIR REST API) a grantee stating a research purpose is refused.
   */
  deidentifying?: boolean;
  /**
   * Whether a signed-in user acts for a patient by a legal authority (legal-authority.ts
   * actsForPatient: their guardian); without it no grantee writes patient data.
   */
  actsFor?: (fhirUser: string | undefined, patientId: string) => Promise<boolean>;
}

export class ConsentPolicy implements AccessPolicy, OutboundGuard {
  private readonly deidentifying: boolean;

  constructor(private readonly decisions: ConsentDecisions, private readonly options: ConsentPolicyOptions = {}) {
    this.deidentifying = options.deidentifying ?? false;
  }

  /** The same decisions for a caller that de-identifies research deliveries (ConsentPolicyOptions). */
  deidentifyingPolicy(): ConsentPolicy {
    return new ConsentPolicy(this.decisions, { ...this.options, deidentifying: true });
  }

  async authorize(access: AccessContext, interaction: Interaction, resourceType: string): Promise<void> {
    if (access.kind === 'open') return;
    this.refuseIdentifiedResearch(access, interaction, resourceType);
    await this.decisions.sync();
    await this.decisions.permissions(access);
  }

  /**
   * 403 for a grantee stating a research purpose, unless this policy's caller de-identifies or the
   * interaction leads to the de-identifying deliveries: an operation (`$export`; operations that
   * return data read it through read or search and meet this check there) or a Subscription write.
   * Decided on the stated purpose alone, before anything is read: the same answer whatever exists.
   */
  private refuseIdentifiedResearch(access: AccessContext, interaction: Interaction, resourceType: string): void {
    if (this.deidentifying) return;
    const requester = requesterOf(access);
    if (requester.kind !== 'grantee' || !isResearchPurpose(requester.purpose)) return;
    if (interaction === 'operation') return;
    if (resourceType === 'Subscription' && (interaction === 'create' || interaction === 'update' || interaction === 'delete')) return;
    throw forbidden(`Under the research purpose of use ${requester.purpose} data leaves only de-identified, by bulk export ([base]/Patient/$export, `
      + '[base]/Group/[id]/$export) or rest-hook Subscriptions: reads, searches, history, writes and search chains (in _typeFilter too) are refused');
  }

  async narrowSearch(access: AccessContext, request: SearchRequest): Promise<SearchRequest> {
    if (access.kind === 'open') return request;
    // every caller authorizes first; checked here too, so that no search path can go around it
    this.refuseIdentifiedResearch(access, 'search', request.resourceType);
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
    const link = patientLink(type);
    if (!link) return { ...request, filters: [...filters, NO_MATCH] };
    const linkParam = link.code;
    const ref = (id: string): string => (linkParam === '_id' ? id : `Patient/${id}`);
    const asked = filters.filter((f) => f.code === linkParam && f.operator === Operator.EQUALS);
    // (a bare id is a Patient's only where the parameter names nothing else; `\u0000…`: no patient)
    const askedIds = asked.flatMap((f) => f.value.split(',').map((v) =>
      linkParam === '_id' ? v : patientIdOfReference(v.includes('/') || !link.onlyPatients ? v : `Patient/${v}`) ?? `\u0000${v}`));
    if (requester.kind === 'patient') {
      if (asked.length === 1 && askedIds.every((id) => id === requester.patientId)) return { ...request, filters };
      return { ...request, filters: [...filters, { code: linkParam, operator: Operator.EQUALS, value: ref(requester.patientId!) }] };
    }
    const perms = await this.decisions.permissions(access);
    const now = this.decisions.now();
    const grants = [...perms.byPatient.values()].flat().filter((g) => inForce(g, requester, now) && (!g.classes || g.classes.has(type)));
    if (grants.length === 0 || perms.addresses.length === 0) return { ...request, filters: [...filters, NO_MATCH] };
    const patients = new Set(grants.map((g) => g.patientId));
    // A patient filter the client gave is kept when every patient in it is granted (so the
    // repository can keep using its patient+date index); otherwise it is cut to the granted ones
    // and added beside it.
    if (asked.length === 1 && askedIds.every((id) => patients.has(id))) {
      // already confined to granted patients
    } else {
      // A value naming no patient (`member=Practitioner/x`) can select a Group the requester may
      // see: then the filter cannot be cut, and every granted patient is added beside it.
      const cut = asked.length > 0 && (link.onlyPatients || askedIds.every((id) => !id.startsWith('\u0000')));
      const allowed = cut ? askedIds.filter((id) => patients.has(id)) : [...patients];
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
    // A type with no `code` search parameter (AuditEvent, Device, Consent) cannot be cut to the codes
    // here (the repository would refuse a parameter the client never sent, 400): the guards decide
    // each of its resources instead, as they do for every result.
    if (grants.every((g) => g.codes && !g.classes?.has(type)) && type !== 'Patient' && getSearchParameter(type, 'code')) {
      const codes = [...new Set(grants.flatMap((g) => [...g.codes!]))];
      filters.push({ code: 'code', operator: Operator.EQUALS, value: codes.join(',') });
    }
    return { ...request, filters };
  }

  /**
   * A grantee that states no purpose of use sees no patient data (decision.ts): say so, so that an
   * empty searchset or a 404 is not taken for "nothing there". Nothing about any patient or grant.
   */
  notices(access: AccessContext): OperationOutcomeIssue[] {
    if (access.kind === 'open') return [];
    const requester = requesterOf(access);
    if (requester.kind !== 'grantee' || requester.purpose) return [];
    const unreadable = (access as ConsentAccessContext).purposeUnreadable;
    return [{
      severity: 'warning', code: 'security',
      diagnostics: `${unreadable ? 'The X-Purpose-Of-Use header is not a purpose-of-use code' : 'No purpose of use was stated'} (X-Purpose-Of-Use: a v3 ActReason code such as TREAT): `
        + 'a requester other than the patient is shown no patient data without one. Send it on every request, next links included',
    }];
  }

  /** The requester's own patient, or the patients with a grant to them in force now (see visibleGrants). */
  async visiblePatients(access: AccessContext): Promise<string[] | undefined> {
    const visible = await this.visibleGrants(access);
    return visible && [...visible.keys()];
  }

  /**
   * The patients whose data the requester may see some of now, each with the ids of the grants
   * that let them: the requester's own record (no grant needed), or the patients whose grant to
   * one of its identities is inside its access window. Types, codes, data period and purpose are
   * left to the guards (the purpose is stated per request). undefined: consent does not limit the
   * requester (open access).
   */
  async visibleGrants(access: AccessContext): Promise<Map<string, string[]> | undefined> {
    if (access.kind === 'open') return undefined;
    const requester = requesterOf(access);
    if (requester.kind === 'open') return undefined;
    if (requester.kind === 'patient') return new Map([[requester.patientId!, []]]);
    const perms = await this.decisions.permissions(access);
    const now = this.decisions.now();
    const visible = new Map<string, string[]>();
    for (const [patientId, grants] of perms.byPatient) {
      const live = grants.filter((g) => now >= g.notBefore && now < g.notAfter).map((g) => g.grantId);
      if (live.length) visible.set(patientId, live);
    }
    return visible;
  }

  /**
   * The patients a SMART patient picker offers the requester (src/consent/patient-picker.ts), each
   * with whether their Patient record may be shown (name, birth date): their own; or the patients
   * with a grant in force now for a purpose the REST API serves — not research alone, which
   * reaches data only de-identified, so a picker listing would tie people to a study — shown by
   * record when such a grant covers the Patient type (it names it, or covers every type, as
   * decision.ts decides). Each read still states its own purpose. undefined: consent does not limit
   * the requester (open access).
   */
  async pickable(access: AccessContext): Promise<Map<string, { grants: string[]; shown: boolean }> | undefined> {
    if (access.kind === 'open') return undefined;
    const requester = requesterOf(access);
    if (requester.kind === 'open') return undefined;
    if (requester.kind === 'patient') return new Map([[requester.patientId!, { grants: [], shown: true }]]);
    const perms = await this.decisions.permissions(access);
    const now = this.decisions.now();
    const pickable = new Map<string, { grants: string[]; shown: boolean }>();
    for (const [patientId, grants] of perms.byPatient) {
      const usable = grants.filter((g) => now >= g.notBefore && now < g.notAfter && [...g.purposes].some((p) => !isResearchPurpose(p)));
      if (!usable.length) continue;
      const shown = usable.some((g) => (g.classes === undefined && g.codes === undefined) || g.classes?.has('Patient'));
      pickable.set(patientId, { grants: usable.map((g) => g.grantId), shown });
    }
    return pickable;
  }

  /**
   * Consent is written only through the grant path (src/consent/service.ts), never directly
   * (transactions). A grantee (a practitioner, a relative, a client acting for someone) writes no
   * patient data at all: a grant's one action is `access` (terms.ts; consentaction: retrieval, not
   * `collect` or `correct`), so sharing lets the grantee read, never add to, change or delete the
   * patient's record. The one exception is a relative with a legal authority to act for the
   * patient (their guardian: legal-authority.ts), who creates and updates the patient's clinical
   * data (GUARDIAN_WRITES) in that patient's record only — a parent importing their child's sensor —
   * and deletes nothing. Not the Patient, their relatives (who acts for whom), nor their access log. The patient writes only in their own record (what they could read back: a
   * reading can't be moved into another record). System clients (device and EHR integrations,
   * `system/` scopes) write by their scopes alone: they bring the data in. An update is judged on
   * the version it replaces too, or patient data could be made data about nobody (a patch deleting
   * `subject`), which consent no longer decides on. Updates and deletes are also decided by the
   * router on the version they change (it must pass the requester's guards).
   */
  async mayWrite(access: AccessContext, resource: Resource, interaction: 'create' | 'update' | 'delete', replaced?: Resource): Promise<boolean> {
    if (access.kind === 'open') return true;
    if (resource.resourceType === 'Consent' || replaced?.resourceType === 'Consent') return false;
    if (access.scopes.some((s) => s.startsWith('system/'))) return true;
    const requester = requesterOf(access);
    if (requester.kind === 'open') return true;
    const aboutPatients = (r: Resource | undefined): boolean => r !== undefined && patientIdsOf(r).length > 0;
    // data about no patient (a Practitioner, an Organization) is not consent's to decide
    if (requester.kind === 'grantee') {
      if (!aboutPatients(resource) && !aboutPatients(replaced)) return true;
      return interaction !== 'delete' && GUARDIAN_WRITES.has(resource.resourceType) && (!replaced || GUARDIAN_WRITES.has(replaced.resourceType))
        && await this.actsForAll(access, [resource, ...(replaced ? [replaced] : [])]);
    }
    if (interaction === 'delete') return true;
    const perms = await this.decisions.permissions(access);
    const decision = decideResource(perms, resource, this.decisions.now(), false);
    // the patient's data stays theirs: an update must leave it in their record
    if (aboutPatients(replaced)) return decision.patientIds.length > 0 && decision.permit;
    return decision.patientIds.length === 0 || decision.permit;
  }

  /** Whether the requester acts for every patient these resources are about (their guardian); false when they are about none. */
  private async actsForAll(access: AccessContext, resources: Resource[]): Promise<boolean> {
    const patients = new Set(resources.flatMap((r) => patientIdsOf(r)));
    if (!patients.size || !this.options.actsFor) return false;
    for (const patient of patients) if (!(await this.options.actsFor(access.fhirUser, patient))) return false;
    return true;
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
      // A patient reading their own log is shown the events about them; one they are only the
      // requester of (their attempt on another patient's data) is withheld, but fetching it is no
      // access to that patient's data: naming them would put this reading into their log.
      if (d.permit || perms.requester.kind !== 'patient' || r.resourceType !== 'AuditEvent') {
        for (const p of facts.patientIds) note.patients.add(p);
      }
      if (d.permit) {
        allowed.push(r);
        note.permitted++;
        if (d.grantId) noteGrant(note, d.grantId, facts.patientIds.length === 1 ? facts.patientIds : facts.patientIds.filter((p) => perms.byPatient.get(p)?.some((g) => g.grantId === d.grantId)));
        if (note.released) noteReleased(note.released, perms, facts, d, now);
      } else {
        note.denied++;
        for (const reason of d.reasons) note.reasons.add(reason);
      }
    }
    if (allowed.length) metrics.consentDecisions.inc({ outcome: 'permit' }, allowed.length);
    if (allowed.length < resources.length) metrics.consentDecisions.inc({ outcome: 'deny' }, resources.length - allowed.length);
    return { allowed, issues: [] };
  }

  /**
   * Whose data the guards let out to this access object since the last call, and under which grants;
   * the first call starts the count (other requests pay nothing for it). Bulk export records this
   * with each job, so its files can be decided again when they are fetched (`stillReleasable`).
   */
  takeReleased(access: AccessContext): Released {
    const note = noteFor(access);
    const taken = note.released ?? new Map<string, Set<string>>();
    note.released = new Map();
    return taken;
  }

  /**
   * May data let out to this requester under `released` still go to them now? Yes for open access
   * and for the patient's own data; for anyone else every grant it was let out under must still be
   * theirs (not revoked, withdrawn or replaced — a grant's terms never change) and in force now for
   * the purpose they stated. O(patients × their grants), whatever the number of resources.
   * `released` undefined: not known (a job recorded before releases were) — only open access and the
   * patient may have it. The patients, grants and reasons are noted for the audit record; ERR_UNAVAILABLE
   * (503) when consent cannot be decided, as for any read.
   */
  async stillReleasable(access: AccessContext, released: Released | undefined): Promise<boolean> {
    if (access.kind === 'open') return true;
    await this.decisions.sync();
    const perms = await this.decisions.permissions(access);
    const requester = perms.requester;
    if (requester.kind === 'open') return true;
    const note = noteFor(access);
    if (released === undefined) {
      if (requester.kind === 'patient') return true;
      note.reasons.add('the export does not record whose data it holds');
      return false;
    }
    const now = this.decisions.now();
    let ok = true;
    for (const [patientId, grants] of released) {
      note.patients.add(patientId);
      if (requester.kind === 'patient') {
        if (patientId !== requester.patientId) {
          ok = false;
          note.reasons.add('not the patient\'s own data');
        }
        continue;
      }
      if (grants.size === 0 || perms.addresses.length === 0) {
        ok = false;
        note.reasons.add('no grant from this patient');
        continue;
      }
      const held = perms.byPatient.get(patientId) ?? [];
      for (const grantId of grants) {
        const g = held.find((h) => h.grantId === grantId);
        if (g && inForce(g, requester, now)) {
          noteGrant(note, grantId, [patientId]);
        } else {
          ok = false;
          note.reasons.add(`grant ${grantId}: no longer in force (revoked or ended)`);
        }
      }
    }
    return ok;
  }
}

/**
 * Notes whose data a permitted resource let out, and under which grant. The decision names the
 * grant of its last patient; a resource linked to several patients, or holding contained resources,
 * is decided again for each patient alone (its own facts, or the contained resource's) to find
 * each one's grant.
 */
function noteReleased(released: Map<string, Set<string>>, perms: Permissions, facts: ResourceFacts, d: Decision, now: number): void {
  if (facts.patientIds.length === 1 && !facts.contained) {
    addReleased(released, facts.patientIds[0]!, d.grantId);
    return;
  }
  if (perms.requester.kind !== 'grantee') {
    for (const p of facts.patientIds) addReleased(released, p, undefined);
    return;
  }
  for (const part of [facts, ...(facts.contained ?? [])]) {
    for (const patientId of part.patientIds) {
      const { contained: _, ...own } = part;
      addReleased(released, patientId, decideFacts(perms, { ...own, patientIds: [patientId] }, now).grantId);
    }
  }
}

/** A patient's own data needs no grant (`grantId` undefined); a grantee's noted without one is refused when decided again. */
function addReleased(released: Map<string, Set<string>>, patientId: string, grantId: string | undefined): void {
  let grants = released.get(patientId);
  if (!grants) released.set(patientId, grants = new Set());
  if (grantId !== undefined) grants.add(grantId);
}

/**
 * The search parameter that names a resource type's patients. `onlyPatients`: each of its values
 * names a patient (`patient`, Patient `_id`); otherwise it names other things too (Group `member`:
 * practitioners, devices…), among which the patients are `Patient/<id>` references.
 */
interface PatientLink { code: string; onlyPatients: boolean }

const links = new Map<string, PatientLink | undefined>();

/**
 * `_id` for Patient; `patient` for a type in the Patient compartment that has it; else the type's
 * one compartment parameter (Group `member`, whose members a read decides on: compartment.ts);
 * else none, and nothing of the type is shown to a consent-limited requester.
 */
function patientLink(type: string): PatientLink | undefined {
  if (!links.has(type)) links.set(type, findPatientLink(type));
  return links.get(type);
}

function findPatientLink(type: string): PatientLink | undefined {
  if (type === 'Patient') return { code: '_id', onlyPatients: true };
  const compartment = patientCompartmentParams(type);
  if (compartment.length === 0) return undefined;
  if (getSearchParameter(type, 'patient')) return { code: 'patient', onlyPatients: true };
  const only = compartment.length === 1 ? compartment[0]! : undefined;
  return only && getSearchParameter(type, only)?.type === 'reference' ? { code: only, onlyPatients: false } : undefined;
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
    // the parts narrow alike (a patient token's scopes and consent both add its patient): the same
    // filter twice is the same condition, so it is sent once (an upstream server got it three times)
    const seen = new Set<string>();
    const filters = (r.filters ?? []).filter((f) => {
      const key = `${f.code}\u0000${f.operator}\u0000${f.value}`;
      if (seen.has(key)) return false;
      seen.add(key);
      return true;
    });
    return filters.length === (r.filters ?? []).length ? r : { ...r, filters };
  }

  async mayWrite(access: AccessContext, resource: Resource, interaction: 'create' | 'update' | 'delete', replaced?: Resource): Promise<boolean> {
    for (const p of this.parts) if (!(await p.mayWrite(access, resource, interaction, replaced))) return false;
    return true;
  }

  notices(access: AccessContext): OperationOutcomeIssue[] {
    return this.parts.flatMap((p) => p.notices?.(access) ?? []);
  }

  /** What the parts that note releases noted (consent), merged. */
  takeReleased(access: AccessContext): Released {
    const merged = new Map<string, Set<string>>();
    for (const p of this.parts) {
      if (!isReleasePolicy(p)) continue;
      for (const [patientId, grants] of p.takeReleased(access)) {
        const into = merged.get(patientId) ?? new Set<string>();
        for (const g of grants) into.add(g);
        merged.set(patientId, into);
      }
    }
    return merged;
  }

  /** True when every part that decides releases (consent) still allows them. */
  async stillReleasable(access: AccessContext, released: Released | undefined): Promise<boolean> {
    for (const p of this.parts) if (isReleasePolicy(p) && !(await p.stillReleasable(access, released))) return false;
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

function isReleasePolicy(p: AccessPolicy): p is AccessPolicy & Pick<ConsentPolicy, 'takeReleased' | 'stillReleasable'> {
  return typeof (p as Partial<ConsentPolicy>).takeReleased === 'function' && typeof (p as Partial<ConsentPolicy>).stillReleasable === 'function';
}
