/**
 * The GlucoGuard Consent profile (profiles/glucoguard/StructureDefinition-glucoguard-consent.json)
 * as code: a FHIR R4 Consent (https://hl7.org/fhir/R4/consent.html) is read into the terms of one
 * on-chain grant, and every provision GlucoGuard cannot enforce is refused with 422 — never
 * silently ignored, since an ignored restriction would widen the grant.
 */
import canonicalizeModule from 'canonicalize';
import type { CodeableConcept, Coding, Consent, OperationOutcomeIssue } from '@medplum/fhirtypes';
import { encodeBytes32String, keccak256, toUtf8Bytes } from 'ethers';
import { issue, unprocessable } from '../errors.js';
import { patientCompartmentParams, patientIdOfReference } from '../fhir/compartment.js';
import { isSupportedType } from '../fhir/resource-types.js';

export const CONSENT_PROFILE = 'https://glucoguard.example/fhir/StructureDefinition/glucoguard-consent';
/** Consent.identifier system holding the on-chain grant id (0x… 32 bytes). */
export const GRANT_ID_SYSTEM = 'urn:glucoguard:consent-grant';
/** Consent.identifier system holding the revocation transaction hash. */
export const REVOKE_TX_SYSTEM = 'urn:glucoguard:consent-revocation';
export const PURPOSE_SYSTEM = 'http://terminology.hl7.org/CodeSystem/v3-ActReason';
export const RESOURCE_TYPE_SYSTEM = 'http://hl7.org/fhir/resource-types';
const canonicalize = canonicalizeModule as unknown as (input: unknown) => string | undefined;
const SCOPE_SYSTEM = 'http://terminology.hl7.org/CodeSystem/consentscope';
const ACTION_SYSTEM = 'http://terminology.hl7.org/CodeSystem/consentaction';

/** v3 PurposeOfUse codes a grant may name. */
export const PURPOSES = new Set(['TREAT', 'ETREAT', 'CAREMGT', 'HRESCH', 'PATRQT', 'FAMRQT', 'PWATRNY', 'SUPNWK', 'COC', 'HPAYMT', 'HOPERAT']);
/** Consent.provision.actor.reference.identifier system naming a SMART client (backend service) by client_id. */
export const CLIENT_SYSTEM = 'urn:glucoguard:client';
const ACTOR_TYPES = new Set(['Client', 'Practitioner', 'Organization', 'RelatedPerson', 'CareTeam', 'Device', 'PractitionerRole']);

/** What a Consent grants, in the form the chain and the decision point use. Times in epoch ms. */
export interface ConsentTerms {
  /** Bare Patient id. */
  patientId: string;
  /** `Patient/ID` or `RelatedPerson/ID` (guardian) who gave the consent. */
  performer: string;
  /** The grantee, e.g. `Practitioner/ID`. */
  actor: string;
  notBefore: number;
  notAfter: number;
  dataFrom: number;
  dataTo: number;
  /** v3 PurposeOfUse codes, sorted. */
  purposes: string[];
  /** Resource types, sorted; empty = every type in the patient compartment. */
  classes: string[];
  /** `system|code`, sorted; empty = every code. */
  codes: string[];
}

/**
 * Reads a Consent into grant terms; throws ERR_UNPROCESSABLE (422) with one issue per unsupported
 * or missing provision.
 */
export function consentTerms(consent: Consent): ConsentTerms {
  const problems: OperationOutcomeIssue[] = [];
  const fail = (message: string, expression: string): void => {
    problems.push(issue('ERR_UNPROCESSABLE', message, expression));
  };
  // The body is client JSON: a list element that is not a list is a problem to report, not a crash.
  const list = <T>(value: T[] | undefined, expression: string): T[] => {
    if (value === undefined || value === null) return [];
    if (Array.isArray(value)) return value.filter((v) => typeof v === 'object' && v !== null);
    fail(`${expression} must be a list`, expression);
    return [];
  };
  if (hasModifierExtension(consent)) fail('Modifier extensions are not supported', 'Consent.modifierExtension');
  if (!hasCoding(consent.scope, SCOPE_SYSTEM, 'patient-privacy')) fail('Consent.scope must be patient-privacy', 'Consent.scope');
  const patientId = patientIdOfReference(str(consent.patient?.reference) || undefined);
  if (!patientId) fail('Consent.patient must reference a Patient (Patient/ID)', 'Consent.patient');
  const performers = list(consent.performer, 'Consent.performer');
  const performer = str(performers[0]?.reference);
  if (performers.length !== 1 || !(performer === `Patient/${patientId}` || /^RelatedPerson\/[A-Za-z0-9\-.]{1,64}$/.test(performer))) {
    fail('Consent.performer must be exactly the patient or a RelatedPerson (guardian)', 'Consent.performer');
  }
  if (list(consent.organization, 'Consent.organization').length > 0) fail('Consent.organization is not supported', 'Consent.organization');
  const p = typeof consent.provision === 'object' && consent.provision !== null && !Array.isArray(consent.provision) ? consent.provision : undefined;
  if (!p) {
    fail('Consent.provision is required', 'Consent.provision');
    throw unprocessable(problems);
  }
  if (p.type !== 'permit') fail('Only provision.type permit is supported', 'Consent.provision.type');
  for (const field of ['provision', 'data', 'securityLabel'] as const) {
    if (list(p[field] as unknown[] | undefined, `Consent.provision.${field}`).length > 0) fail(`Consent.provision.${field} is not supported`, `Consent.provision.${field}`);
  }
  if (hasModifierExtension(p)) fail('Modifier extensions are not supported', 'Consent.provision.modifierExtension');
  const notBefore = instant(p.period?.start);
  const notAfter = instant(p.period?.end, 'end');
  if (notBefore === undefined || notAfter === undefined || notBefore >= notAfter) {
    fail('provision.period needs a start before its end (the access window)', 'Consent.provision.period');
  }
  const dataFrom = instant(p.dataPeriod?.start);
  const dataTo = instant(p.dataPeriod?.end, 'end');
  if (dataFrom === undefined || dataTo === undefined || dataFrom > dataTo) {
    fail('provision.dataPeriod needs a start not after its end (the data the grantee may read)', 'Consent.provision.dataPeriod');
  }
  const actors = list(p.actor, 'Consent.provision.actor');
  // A backend client (SMART system token) is named by its client id: reference.identifier in CLIENT_SYSTEM.
  const actorRef = actors[0]?.reference;
  const actor = str(actorRef?.reference)
    || (actorRef?.identifier?.system === CLIENT_SYSTEM && str(actorRef.identifier.value) ? `Client/${str(actorRef.identifier.value)}` : '');
  const actorType = /^([A-Za-z]+)\/[A-Za-z0-9\-._~]{1,64}$/.exec(actor)?.[1];
  if (actors.length !== 1 || !actorType || !ACTOR_TYPES.has(actorType) || (actorType === 'Client' && actorRef?.reference)) {
    fail('provision.actor must be exactly one Practitioner, PractitionerRole, Organization, RelatedPerson, CareTeam or Device reference, or a client (identifier urn:glucoguard:client)', 'Consent.provision.actor');
  }
  const actions = list(p.action, 'Consent.provision.action');
  if (actions.length !== 1 || !hasCoding(actions[0], ACTION_SYSTEM, 'access')) {
    fail('provision.action must be exactly "access"', 'Consent.provision.action');
  }
  const purposeList = list(p.purpose, 'Consent.provision.purpose');
  const classList = list(p.class, 'Consent.provision.class');
  const codeList = list(p.code, 'Consent.provision.code');
  const purposes = [...new Set(purposeList.map((c) => str(c.code)))].sort();
  if (purposes.length === 0) fail('provision.purpose needs at least one v3 PurposeOfUse code', 'Consent.provision.purpose');
  for (const c of purposeList) {
    if (c.system !== PURPOSE_SYSTEM || !PURPOSES.has(str(c.code))) fail(`Unsupported purpose ${str(c.system)}|${str(c.code)}`, 'Consent.provision.purpose');
  }
  if (purposes.join(',').length > 31) fail('Too many purposes for one grant', 'Consent.provision.purpose');
  const classes = [...new Set(classList.map((c) => str(c.code)))].sort();
  for (const c of classList) {
    const type = str(c.code);
    if (c.system !== RESOURCE_TYPE_SYSTEM || !isSupportedType(type) || (type !== 'Patient' && patientCompartmentParams(type).length === 0)) {
      fail(`Unsupported provision.class ${str(c.system)}|${type}: a patient-compartment resource type is expected`, 'Consent.provision.class');
    }
  }
  const codingsOf = (cc: (typeof codeList)[number]) => (Array.isArray(cc.coding) ? cc.coding.filter((c) => typeof c === 'object' && c !== null) : []);
  const codes = [...new Set(codeList.flatMap((cc) => codingsOf(cc).map(codeKey)))].sort();
  for (const cc of codeList) {
    const codings = codingsOf(cc);
    if (!codings.length || codings.length !== (Array.isArray(cc.coding) ? cc.coding.length : -1) || codings.some((c) => typeof c.system !== 'string' || typeof c.code !== 'string' || !c.system || !c.code)) fail('provision.code codings need a system and a code', 'Consent.provision.code');
  }
  if (problems.length) throw unprocessable(problems);
  return {
    patientId: patientId!, performer, actor, notBefore: notBefore!, notAfter: notAfter!, dataFrom: dataFrom!, dataTo: dataTo!,
    purposes, classes, codes,
  };
}

/** keccak256 of the canonical JSON of what is granted (types, codes) — the grant's `scopeHash`. */
export function scopeHash(terms: Pick<ConsentTerms, 'classes' | 'codes'>): string {
  return keccak256(toUtf8Bytes(canonicalize({ classes: terms.classes, codes: terms.codes })!));
}

/** The grant's `purpose` bytes32: the sorted purpose codes joined by commas. */
export function purposeBytes(purposes: string[]): string {
  return encodeBytes32String(purposes.join(','));
}

export function codeKey(c: Coding): string {
  return `${c.system ?? ''}|${c.code ?? ''}`;
}

/** The grant id recorded on a Consent, if any. */
export function grantIdOf(consent: Consent): string | undefined {
  return consent.identifier?.find((i) => i.system === GRANT_ID_SYSTEM)?.value;
}

/** Fills what a client may leave out (category, policyRule, profile) before validation. */
export function withDefaults(consent: Consent): Consent {
  return {
    ...consent,
    meta: { ...consent.meta, profile: [...new Set([...(consent.meta?.profile ?? []), CONSENT_PROFILE])] },
    category: consent.category?.length ? consent.category : [{ coding: [{ system: 'http://loinc.org', code: '59284-0' }] }],
    ...(consent.policy?.length || consent.policyRule ? {} : { policyRule: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'OPTIN' }] } }),
  };
}

function hasCoding(cc: CodeableConcept | undefined, system: string, code: string): boolean {
  return Array.isArray(cc?.coding) && cc.coding.some((c) => typeof c === 'object' && c !== null && c.system === system && c.code === code);
}

function hasModifierExtension(element: { modifierExtension?: unknown[] }): boolean {
  const m = element.modifierExtension as unknown;
  return m !== undefined && m !== null && (!Array.isArray(m) || m.length > 0);
}

/** A string field of client JSON, or '' when it is anything else. */
function str(value: unknown): string {
  return typeof value === 'string' ? value : '';
}

/**
 * Issues for the bounds of a new Consent given as a date-time without its offset: FHIR says "if
 * hours and minutes are specified, a timezone offset SHALL be populated" (datatypes.html#dateTime),
 * and without one Date.parse reads the time in the server's own zone. Checked when a grant is made
 * only: a recorded Consent keeps being read as it was.
 */
export function unzonedBounds(consent: Consent): OperationOutcomeIssue[] {
  const p = consent.provision;
  const bounds: [unknown, string][] = [
    [p?.period?.start, 'Consent.provision.period.start'], [p?.period?.end, 'Consent.provision.period.end'],
    [p?.dataPeriod?.start, 'Consent.provision.dataPeriod.start'], [p?.dataPeriod?.end, 'Consent.provision.dataPeriod.end'],
  ];
  return bounds.filter(([v]) => typeof v === 'string' && v.includes('T') && !/(?:Z|[+-]\d{2}:\d{2})$/.test(v))
    .map(([, expression]) => issue('ERR_UNPROCESSABLE', `${expression} has a time but no time-zone offset (Z or ±hh:mm)`, expression));
}

/** FHIR dates of year, month or day precision (no time), which stand for the whole of that span. */
const PARTIAL_DATE = /^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$/;

/**
 * The instant a Period bound stands for. An end given as a date (`2026-01-14`, `2026-01`, `2026`)
 * is inclusive (datatypes.html#Period: a period of 2011-05-23 to 2011-05-27 includes the whole of
 * those days), so it ends at the last millisecond of that span; a start given as one begins with
 * it. Dates are read in UTC, as the search index reads them.
 */
function instant(value: string | undefined, bound: 'start' | 'end' = 'start'): number | undefined {
  if (typeof value !== 'string' || !value) return undefined;
  const partial = PARTIAL_DATE.exec(value);
  if (partial) {
    const [, y, m = '01', d = '01'] = partial;
    const first = Date.UTC(Number(y), Number(m) - 1, Number(d));
    // a date that does not exist (2026-02-30) is no date, not the day it would roll over to
    if (Number.isNaN(first) || new Date(first).toISOString().slice(0, 10) !== `${y}-${m}-${d}`) return undefined;
    if (bound === 'start') return first;
    const next = partial[3] !== undefined ? Date.UTC(Number(y), Number(m) - 1, Number(d) + 1)
      : partial[2] !== undefined ? Date.UTC(Number(y), Number(m), 1) : Date.UTC(Number(y) + 1, 0, 1);
    return next - 1;
  }
  const t = Date.parse(value);
  return Number.isNaN(t) ? undefined : t;
}
