/**
 * The decision point, pure part: (requester, patient, resource type, codes, effective time,
 * purpose) → permit or deny with reasons, against the requester's active grants worked out once
 * (src/consent/decisions.ts). Nothing here does I/O, so a cached decision costs microseconds.
 *
 * Rules (fail closed):
 * - patients always see resources linked to them, and only those;
 * - a grantee needs a registered identity, a purpose of use, and a grant of the patient that is
 *   inside its access window now (the clock decides, even mid-session), names the purpose, covers
 *   the type (provision.class) and code (provision.code), and whose data period wholly holds the
 *   resource's clinically relevant time (clinical-time.ts: the span of its time elements);
 * - a resource whose time cannot be placed in a period (clinical-time.ts `unknown`: a Timing, an
 *   open Period, a reading with no `effective[x]`) is denied to every grantee;
 * - a resource with no code, or of a timeless type (Patient, Device…), passes a restricted grant
 *   (one that lists types or codes) only when the grant names its type explicitly; a grant of every
 *   type covers timeless records too, except Consent, which must be named; a resource with no
 *   patient link is denied to everyone but `open`.
 */
import type { AuditEvent, Resource } from '@medplum/fhirtypes';
import { patientIdOfReference, patientIdsOf } from '../fhir/compartment.js';
import { clinicalTime } from './clinical-time.js';
import type { Requester } from './requester.js';
import { isImmutable } from '../repository/port.js';

export interface ActiveGrant {
  grantId: string;
  consentId: string;
  patientId: string;
  /** Epoch ms. */
  notBefore: number;
  notAfter: number;
  dataFrom: number;
  dataTo: number;
  purposes: ReadonlySet<string>;
  /** undefined = every type. */
  classes?: ReadonlySet<string>;
  /** `system|code`; undefined = every code. */
  codes?: ReadonlySet<string>;
}

/** A requester's permissions, worked out once and cached. */
export interface Permissions {
  requester: Requester;
  /** Registered grantee addresses (empty: no identity). */
  addresses: string[];
  byPatient: ReadonlyMap<string, ActiveGrant[]>;
}

export interface DecisionRequest {
  patientId?: string;
  resourceType: string;
  /** `system|code` of the resource's codes; empty when it has none. */
  codes: string[];
  /** Start of the clinically relevant time in epoch ms, when the resource has one (clinical-time.ts). */
  effective?: number;
  /** Its end (inclusive); absent: the same instant as `effective`. */
  effectiveEnd?: number;
  /** The resource has a time that cannot be placed in a data period: denied to every grantee. */
  timeUnknown?: boolean;
}

export interface Decision {
  permit: boolean;
  reasons: string[];
  grantId?: string;
}

const interned = new Map<string, ReadonlySet<string>>();

/** One shared Set per distinct content: grants made from the same template share their scope sets. */
export function internSet(values: Iterable<string>): ReadonlySet<string> {
  const sorted = [...new Set(values)].sort();
  const key = sorted.join('\u0000');
  let hit = interned.get(key);
  if (!hit) {
    hit = Object.freeze(new Set(sorted)) as ReadonlySet<string>;
    interned.set(key, hit);
  }
  return hit;
}

const PERMIT_OWN: Decision = Object.freeze({ permit: true, reasons: ['own data'] }) as Decision;
const PERMIT_OPEN: Decision = Object.freeze({ permit: true, reasons: ['consent not enforced (open access)'] }) as Decision;

/** Decides one request against cached permissions at time `now` (epoch ms). */
export function decide(perms: Permissions, req: DecisionRequest, now: number): Decision {
  const r = perms.requester;
  if (r.kind === 'open') return PERMIT_OPEN;
  if (!req.patientId) return { permit: false, reasons: ['resource is not linked to a patient'] };
  if (r.kind === 'patient') return req.patientId === r.patientId ? PERMIT_OWN : { permit: false, reasons: ['not the patient\'s own data'] };
  if (perms.addresses.length === 0) return { permit: false, reasons: ['requester has no registered identity'] };
  if (!r.purpose) return { permit: false, reasons: ['no purpose of use stated'] };
  const grants = perms.byPatient.get(req.patientId);
  if (!grants?.length) return { permit: false, reasons: ['no grant from this patient'] };
  let reasons: string[] | undefined;
  for (const g of grants) {
    const why = mismatch(g, req, r.purpose, now);
    if (!why) return permitBy(g);
    (reasons ??= []).push(`grant ${g.grantId}: ${why}`);
  }
  return { permit: false, reasons: reasons ?? [] };
}

const permits = new WeakMap<ActiveGrant, Decision>();

/** The (frozen, shared) permit decision of a grant: made once, not per resource. */
function permitBy(g: ActiveGrant): Decision {
  let d = permits.get(g);
  if (!d) {
    d = Object.freeze({ permit: true, reasons: Object.freeze([`grant ${g.grantId}`]) as string[], grantId: g.grantId });
    permits.set(g, d);
  }
  return d;
}

function mismatch(g: ActiveGrant, req: DecisionRequest, purpose: string, now: number): string | undefined {
  if (now < g.notBefore) return 'not yet valid';
  if (now >= g.notAfter) return 'expired';
  if (!g.purposes.has(purpose)) return `purpose ${purpose} not granted`;
  const typeNamed = g.classes?.has(req.resourceType) ?? false;
  if (g.classes && !typeNamed) return `type ${req.resourceType} not granted`;
  if (g.codes) {
    if (req.codes.length === 0) {
      if (!typeNamed) return 'resource has no code and its type is not named';
    } else if (!hasAny(g.codes, req.codes)) return 'code not granted';
  }
  if (req.timeUnknown) return 'its clinically relevant time cannot be placed in the data period';
  if (req.effective === undefined) {
    // A timeless record (Patient, Device…) passes a grant of every type ("everything in my
    // record"), and a restricted grant only when it names its type. Consent never passes unnamed:
    // a patient's grants to others say whom else they share with.
    if (!typeNamed && (g.classes !== undefined || g.codes !== undefined || req.resourceType === 'Consent')) return 'resource has no effective time and its type is not named';
  } else if (req.effective < g.dataFrom || (req.effectiveEnd ?? req.effective) > g.dataTo) return 'outside the granted data period';
  return undefined;
}

function hasAny(granted: ReadonlySet<string>, codes: readonly string[]): boolean {
  for (let i = 0; i < codes.length; i++) if (granted.has(codes[i]!)) return true;
  return false;
}

/** Decides for a resource in hand: every patient it is linked to must be permitted. */
/** `cacheFacts` false: the resource is read once (bulk export); work its facts out without caching them. */
export function decideResource(perms: Permissions, resource: Resource, now: number, cacheFacts = true): Decision & { patientIds: string[] } {
  if (perms.requester.kind === 'open') return { ...PERMIT_OPEN, patientIds: [] };
  const facts = cacheFacts ? resourceFacts(resource) : computeFacts(resource);
  return withPatients(decideFacts(perms, facts, now), facts.patientIds);
}

/** One request object reused by decideFacts: `decide` reads it and keeps nothing of it. */
const scratch: DecisionRequest = { patientId: undefined, resourceType: '', codes: [], effective: undefined, effectiveEnd: undefined, timeUnknown: false };

/**
 * decideResource on facts in hand, allocating nothing when it permits (the guards call it for
 * every resource that leaves the proxy).
 */
export function decideFacts(perms: Permissions, facts: ResourceFacts, now: number): Decision {
  if (perms.requester.kind === 'open') return PERMIT_OPEN;
  const last = lastPermit;
  if (last.perms === perms && last.now === now && sameShape(last.facts!, facts)
    && facts.effective! >= last.grant!.dataFrom && facts.effectiveEnd! <= last.grant!.dataTo) return last.decision!;
  const d = decideAll(perms, facts, now);
  rememberPermit(perms, facts, now, d);
  return d;
}

/**
 * The last permit decided by a patient's first grant for a resource with one patient link, no
 * contained resources and an effective time. The next resource of the same patient, type and codes
 * (a day of readings: 288 of them in a row) whose effective time is inside that grant's data period
 * gets the same decision without deciding again: `decide` would try the same first grant, and the
 * only thing that differs, the time (its whole span), is inside its period.
 */
const lastPermit: { perms?: Permissions; now: number; facts?: ResourceFacts; grant?: ActiveGrant; decision?: Decision } = { now: NaN };

function rememberPermit(perms: Permissions, facts: ResourceFacts, now: number, d: Decision): void {
  lastPermit.perms = undefined;
  if (!d.permit || d.grantId === undefined || facts.patientIds.length !== 1 || facts.contained || facts.effective === undefined) return;
  const first = perms.byPatient.get(facts.patientIds[0]!)?.[0];
  if (first?.grantId !== d.grantId) return;
  lastPermit.perms = perms;
  lastPermit.now = now;
  lastPermit.facts = facts;
  lastPermit.grant = first;
  lastPermit.decision = d;
}

/** Same single patient, type and codes (interned strings), no contained resources, a time. */
function sameShape(a: ResourceFacts, b: ResourceFacts): boolean {
  if (a === b) return true;
  if (b.patientIds.length !== 1 || b.contained || b.effective === undefined) return false;
  if (a.patientIds[0] !== b.patientIds[0] || a.resourceType !== b.resourceType || a.codes.length !== b.codes.length) return false;
  for (let i = 0; i < a.codes.length; i++) if (a.codes[i] !== b.codes[i]) return false;
  return true;
}

function decideAll(perms: Permissions, facts: ResourceFacts, now: number): Decision {
  const req = scratch;
  req.patientId = undefined;
  req.resourceType = facts.resourceType;
  req.codes = facts.codes;
  req.effective = facts.effective;
  req.effectiveEnd = facts.effectiveEnd;
  req.timeUnknown = facts.timeUnknown ?? false;
  if (facts.patientIds.length === 0) return decide(perms, req, now);
  let last: Decision = PERMIT_OWN;
  for (const patientId of facts.patientIds) {
    req.patientId = patientId;
    last = decide(perms, req, now);
    if (!last.permit) break;
  }
  // A contained resource about a patient is that patient's data in its own right (a Device, another
  // code, another time): the grant must permit it too, not only its container.
  for (const inner of facts.contained ?? []) {
    if (!last.permit) break;
    for (const patientId of inner.patientIds) {
      const d = decide(perms, {
        patientId, resourceType: inner.resourceType, codes: inner.codes, effective: inner.effective, effectiveEnd: inner.effectiveEnd, timeUnknown: inner.timeUnknown ?? false,
      }, now);
      if (!d.permit) {
        last = { permit: false, reasons: d.reasons.map((r) => `contained ${inner.resourceType}: ${r}`) };
        break;
      }
    }
  }
  return last;
}

/** The facts of a resource, cached (reads) or worked out once (bulk export: `cacheFacts` false). */
export function factsOf(resource: Resource, cacheFacts = true): ResourceFacts {
  return cacheFacts ? resourceFacts(resource) : computeFacts(resource);
}

function withPatients(d: Decision, patientIds: string[]): Decision & { patientIds: string[] } {
  return { permit: d.permit, reasons: d.reasons, ...(d.grantId !== undefined ? { grantId: d.grantId } : {}), patientIds };
}

export interface ResourceFacts {
  patientIds: string[];
  resourceType: string;
  codes: string[];
  /** The span of the clinically relevant time (clinical-time.ts), epoch ms inclusive; both or neither. */
  effective?: number;
  effectiveEnd?: number;
  /** A time that cannot be placed in a data period (clinical-time.ts `unknown`). */
  timeUnknown?: true;
  /** Facts of the contained resources that are linked to a patient. */
  contained?: ResourceFacts[];
}

const FACTS_CACHE_SIZE = 100_000;
const factsCache = new Map<string, ResourceFacts>();
/** Facts of immutable resource objects (see isImmutable), kept as long as the object lives. */
const factsOfObject = new WeakMap<object, ResourceFacts>();

/**
 * Patient links, codes and effective time of a resource. A stored version never changes, so the
 * facts are cached by `type/id/versionId` (bounded; oldest dropped first): the FHIRPath work of
 * finding the patient links is done once per version, not once per request.
 */
export function resourceFacts(resource: Resource): ResourceFacts {
  // a version the repository shares between requests (frozen) keeps its facts itself: no key to build
  if (isImmutable(resource)) {
    let own = factsOfObject.get(resource);
    if (!own) {
      own = computeFacts(resource);
      factsOfObject.set(resource, own);
    }
    return own;
  }
  const version = resource.meta?.versionId;
  if (!version || !resource.id) return computeFacts(resource);
  const key = `${resource.resourceType}/${resource.id}/${version}/${resource.meta?.lastUpdated ?? ''}`;
  let facts = factsCache.get(key);
  if (!facts) {
    facts = computeFacts(resource);
    if (factsCache.size >= FACTS_CACHE_SIZE) factsCache.delete(factsCache.keys().next().value!);
    factsCache.set(key, facts);
  }
  return facts;
}

function computeFacts(resource: Resource): ResourceFacts {
  const own = ownFacts(resource);
  // Contained resources travel with their container: any patient they link must be permitted too,
  // and each one about a patient is decided on its own (type, code, time).
  const contained: ResourceFacts[] = [];
  for (const inner of (resource as { contained?: Resource[] }).contained ?? []) {
    const facts = ownFacts(inner);
    if (facts.patientIds.length === 0) continue;
    contained.push(facts);
    for (const id of facts.patientIds) if (!own.patientIds.includes(id)) own.patientIds.push(id);
  }
  return contained.length ? { ...own, contained } : own;
}

function ownFacts(resource: Resource): ResourceFacts {
  const r = resource as unknown as Record<string, unknown>;
  const concept = (r.code ?? r.medicationCodeableConcept) as { coding?: { system?: string; code?: string }[] } | undefined;
  const codes = (concept?.coding ?? []).map((c) => internString(`${c.system ?? ''}|${c.code ?? ''}`));
  const time = clinicalTime(resource);
  const patientIds = (auditSubjects(resource) ?? patientIdsOf(resource)).map(internString);
  return {
    patientIds,
    resourceType: internString(resource.resourceType),
    codes,
    ...(time === 'unknown' ? { timeUnknown: true } : time === 'none' ? {} : { effective: time.from, effectiveEnd: time.to }),
  };
}

/**
 * The patients an AuditEvent is about: its Patient entities (BALP role 1). The agents are who asked:
 * a patient who tried to read another's data is the requester, not the subject, so the event is in
 * the subject's log (and not withheld from them for naming someone else). An event about no
 * patient (a patient's own write of their Consent) is linked as its compartment says (the agent).
 */
function auditSubjects(resource: Resource): string[] | undefined {
  if (resource.resourceType !== 'AuditEvent') return undefined;
  const ids = ((resource as AuditEvent).entity ?? [])
    .filter((e) => e.role?.code === '1' && e.what?.reference?.startsWith('Patient/'))
    .map((e) => patientIdOfReference(e.what!.reference!))
    .filter((id): id is string => !!id);
  return ids.length ? [...new Set(ids)] : undefined;
}

const INTERNED_MAX = 100_000;
const internedStrings = new Map<string, string>();

/**
 * One string instance per distinct patient id, type and code in the facts: the decisions look them
 * up in Maps and Sets, and equal strings that are the same instance compare without reading their
 * characters (a day of readings otherwise carries 288 copies of its patient's id).
 */
function internString(value: string): string {
  const known = internedStrings.get(value);
  if (known !== undefined) return known;
  if (internedStrings.size >= INTERNED_MAX) internedStrings.clear();
  internedStrings.set(value, value);
  return value;
}
