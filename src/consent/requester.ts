/**
 * Who is asking, for consent purposes, worked out from the access context the SMART layer built:
 * - `open`: GLUCOGUARD_AUTH=off or an in-process tool — consent does not apply;
 * - `patient`: the user is the patient (`fhirUser` Patient/ID), or a patient-facing app token
 *   (patient context, only `patient/` scopes, no other user) — patients always see their own data;
 * - `grantee`: anyone else (practitioners, related persons, backend clients) — sees only what a
 *   patient granted to one of its registered identities, for the purpose it states.
 *
 * The purpose of use comes from the `X-Purpose-Of-Use` request header (a v3 PurposeOfUse code, as in
 * IHE IUA's `purpose_of_use`); a grantee without one is denied. Nothing picks a purpose for the
 * requester from the grants it holds (not its only grant, nor the first): a grant is used only for
 * the purpose the request states, so a research grant never serves a request that states none.
 */
import type { AccessContext } from '../fhir/access.js';
import { patientIdOfReference } from '../fhir/compartment.js';

export interface ConsentAccessContext extends AccessContext {
  purposeOfUse?: string;
  /** An X-Purpose-Of-Use header was sent that is not a purpose code (so none is stated). */
  purposeUnreadable?: boolean;
}

export interface Requester {
  kind: 'open' | 'patient' | 'grantee';
  /** The patient themself (kind `patient`). */
  patientId?: string;
  /** Identities the requester acts as: its `fhirUser` and `Client/<client_id>`. */
  refs: string[];
  purpose?: string;
  /** Cache key: the identities, not the purpose (grants do not depend on it). */
  key: string;
}

const PURPOSE = /^(?:http:\/\/terminology\.hl7\.org\/CodeSystem\/v3-ActReason\|)?([A-Z]{2,10})$/;

/**
 * v3 ActReason HRESCH (healthcare research) and every code under it: data asked for under any of
 * them leaves only de-identified (src/exchange/research.ts), so the FHIR REST API refuses them
 * (ConsentPolicy). Grants can name HRESCH alone today (terms.ts PURPOSES); the narrower codes are
 * here so that adding one there cannot open identified research access by the REST door.
 */
export const RESEARCH_PURPOSES: ReadonlySet<string> = new Set([
  'HRESCH', 'BIORCH', 'CLINTRCH', 'CLINTRCHNPC', 'CLINTRCHPC', 'PRECLINTRCH', 'DSRCH', 'POARCH', 'TRANSRCH',
]);

/** Is this purpose of use (a v3 ActReason code) research? */
export function isResearchPurpose(purpose: string | undefined): boolean {
  return purpose !== undefined && RESEARCH_PURPOSES.has(purpose);
}

/** Adds the purpose of use from the request headers to an access context. */
export function withPurpose<T extends AccessContext>(access: T, headers: Record<string, string | undefined>): T & ConsentAccessContext {
  const raw = headers['x-purpose-of-use']?.trim();
  const code = raw ? PURPOSE.exec(raw)?.[1] : undefined;
  return code ? { ...access, purposeOfUse: code } : raw ? { ...access, purposeUnreadable: true } : access;
}

const cache = new WeakMap<AccessContext, Requester>();

export function requesterOf(access: ConsentAccessContext): Requester {
  const hit = cache.get(access);
  if (hit) return hit;
  const requester = compute(access);
  cache.set(access, requester);
  return requester;
}

function compute(access: ConsentAccessContext): Requester {
  if (access.kind === 'open') return { kind: 'open', refs: [], key: 'open' };
  const self = patientIdOfReference(access.fhirUser);
  if (self) return { kind: 'patient', patientId: self, refs: [`Patient/${self}`], key: `patient:${self}` };
  // A patient context alone never makes the requester the patient: every user login carries
  // fhirUser, so a token without one is a client acting for someone else (fail closed).
  const refs = [access.fhirUser, access.clientId ? `Client/${access.clientId}` : undefined].filter((r): r is string => !!r);
  return { kind: 'grantee', refs, purpose: access.purposeOfUse, key: `grantee:${refs.join(' ')}` };
}

