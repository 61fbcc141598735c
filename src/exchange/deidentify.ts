/**
 * De-identification for research grants (pure, no I/O). Applied to every resource that leaves
 * through `$export` or a subscription when the requester acts under a research purpose
 * (src/exchange/research.ts decides that).
 *
 * - Every resource id, and every reference to it, becomes a stable per-study pseudonym: a keyed
 *   HMAC-SHA-256 of `Type/id` under a key derived for the study (`deriveKey(root, 'study:'+id)`),
 *   so one study can link a patient's readings across exports and another study cannot link them
 *   to its own.
 * - Direct identifiers are removed (HIPAA Safe Harbor style): names, telecom, address, identifiers,
 *   photo, contacts, device serial/lot numbers, UDIs and names, URLs, network addresses, attachments,
 *   and all free text (narrative, notes, comments, descriptions, conclusions, CodeableConcept.text,
 *   valueString, and any `display` but a Coding's — a reference's display names whom it points to,
 *   whether or not it has a `reference`); extensions are dropped too since they can carry anything.
 *   A reference that is not `Type/id` (a `urn:`, an identifier-shaped URL) cannot be pseudonymised,
 *   so it is dropped rather than passed on; elements left empty are dropped.
 * - A Patient keeps only gender, active and the year of birth — not even the year when it shows an
 *   age over 89 (Safe Harbor: such ages go into one category, 90 or older), and an Age over 89
 *   years becomes `>= 90 a`.
 * - Optionally every date/dateTime/instant of a patient's resources is shifted by the same whole
 *   number of days (derived from the key and the patient, never stored), which keeps time of day
 *   and every interval between that patient's readings.
 * - `meta` keeps the profiles and gains the v3 ObservationValue labels PSEUDED and REDACTED.
 */
import { createHmac } from 'node:crypto';
import type { Coding, OperationOutcomeIssue, Resource } from '@medplum/fhirtypes';
import { patientIdsOf } from '../fhir/compartment.js';
import { deriveKey } from '../keys.js';

export const SECURITY_SYSTEM = 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue';
export const PSEUDED: Coding = { system: SECURITY_SYSTEM, code: 'PSEUDED', display: 'pseudonymized' };
export const REDACTED: Coding = { system: SECURITY_SYSTEM, code: 'REDACTED', display: 'redacted' };

export interface DeidentifyOptions {
  /** Shift dates per patient by a consistent whole number of days (default false). */
  dateShift?: boolean;
  /** Largest shift in days either way (default 180). */
  maxShiftDays?: number;
  /** The clock ages are told by (tests). */
  now?: () => number;
}

/** Keys removed wherever they appear: direct identifiers and free text. */
const REMOVED_KEYS = new Set([
  'text', 'note', 'comment', 'identifier', 'name', 'telecom', 'address', 'photo', 'contact', 'valueString',
  'serialNumber', 'lotNumber', 'udiCarrier', 'deviceName', 'distinctIdentifier', 'extension', 'modifierExtension',
  'contained', 'link', 'generalPractitioner', 'managingOrganization', 'communication', 'maritalStatus',
  // URLs and network addresses (Safe Harbor (b)(2)(i)(N), (O)): Device.url, Attachment.url, AuditEvent agent.network
  'url', 'network', 'altId', 'site',
  // free text and documents that can carry anything: DiagnosticReport conclusion and its scanned report,
  // ServiceRequest instructions, AuditEvent descriptions and queries, attached or encoded values
  'conclusion', 'presentedForm', 'patientInstruction', 'description', 'title', 'summary', 'outcomeDesc', 'query',
  'valueMarkdown', 'valueBase64Binary', 'valueAttachment', 'sourceAttachment',
  // Identifiers under other names than `identifier` (ServiceRequest.requisition)
  'requisition',
]);
/** UCUM age units in years, for Ages over 89. */
const AGE_UNIT_YEARS: Record<string, number> = { a: 1, mo: 1 / 12, wk: 7 / 365.25, d: 1 / 365.25 };
const UCUM = 'http://unitsofmeasure.org';
/** What a Patient keeps. */
const PATIENT_KEEPS = new Set(['resourceType', 'id', 'meta', 'gender', 'birthDate', 'active', 'deceasedBoolean']);
/** What a RelatedPerson keeps: how they relate to the patient; nothing of who they are (not even a birth year). */
const RELATED_PERSON_KEEPS = new Set(['resourceType', 'id', 'meta', 'active', 'patient', 'relationship']);
const DATE = /^(\d{4})-(\d{2})-(\d{2})(T.*)?$/;
const REFERENCE = /^(?:.*\/)?([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})(\/_history\/[A-Za-z0-9\-.]{1,64})?$/;
const DAY_MS = 86_400_000;

/** The key of one study's pseudonyms, derived from the key root. */
export function studyKey(rootKeyBase64: string, studyId: string): Buffer {
  return deriveKey(rootKeyBase64, `study:${studyId}`);
}

export class Deidentifier {
  private readonly shiftCache = new Map<string, number>();
  private readonly referenceCache = new Map<string, string>();
  private readonly maxShiftDays: number;

  constructor(private readonly key: Buffer, private readonly options: DeidentifyOptions = {}) {
    this.maxShiftDays = options.maxShiftDays ?? 180;
  }

  /** The study pseudonym of a resource id (40 hex characters, a valid FHIR id). */
  pseudonym(resourceType: string, id: string): string {
    return createHmac('sha256', this.key).update(`${resourceType}/${id}`).digest('hex').slice(0, 40);
  }

  /** The pseudonymous id of a patient in this study. */
  patientPseudonym(patientId: string): string {
    return this.pseudonym('Patient', patientId);
  }

  /** Whole days this patient's dates move by (0 when date shifting is off); never 0 when on. */
  shiftDays(patientId: string): number {
    if (!this.options.dateShift) return 0;
    let days = this.shiftCache.get(patientId);
    if (days === undefined) {
      const n = createHmac('sha256', this.key).update(`date-shift:${patientId}`).digest().readUInt32BE(0);
      const span = this.maxShiftDays * 2;
      days = (n % span) - this.maxShiftDays;
      if (days >= 0) days += 1; // in [-max, -1] ∪ [1, max]
      this.shiftCache.set(patientId, days);
    }
    return days;
  }

  /**
   * An issue about exported resources (an integrity failure names `Observation/<id> version 2`)
   * with every `Type/id` in its text as its pseudonym: a research export's error file must not
   * hand the study the real ids its data files hide.
   */
  issue(issue: OperationOutcomeIssue): OperationOutcomeIssue {
    if (issue.diagnostics === undefined) return issue;
    return { ...issue, diagnostics: issue.diagnostics.replace(/\b([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})/g, (_m, type: string, id: string) => `${type}/${this.pseudonym(type, id)}`) };
  }

  /** A de-identified copy of `resource`; the input is not changed. */
  apply<T extends Resource>(resource: T): T {
    const patientId = this.options.dateShift ? patientIdsOf(resource)[0] : undefined;
    const days = patientId ? this.shiftDays(patientId) : 0;
    let source = resource as unknown as Record<string, unknown>;
    if (resource.resourceType === 'Patient' || resource.resourceType === 'RelatedPerson') {
      const keeps = resource.resourceType === 'Patient' ? PATIENT_KEEPS : RELATED_PERSON_KEEPS;
      source = Object.fromEntries(Object.entries(source).filter(([k]) => keeps.has(k)));
    }
    const out = (this.walk(source, days, '') ?? {}) as Record<string, unknown>;
    out.resourceType = resource.resourceType;
    if (resource.id) out.id = this.pseudonym(resource.resourceType, resource.id);
    if (resource.resourceType === 'Patient' && typeof out.birthDate === 'string') {
      // told by the birth date as stored (not shifted): a year at least 90 years back may be an age over 89
      const born = Number(resource.birthDate?.slice(0, 4));
      if (!Number.isInteger(born) || new Date(this.options.now?.() ?? Date.now()).getUTCFullYear() - born >= 90) delete out.birthDate;
      else out.birthDate = out.birthDate.slice(0, 4);
    }
    const profile = resource.meta?.profile;
    out.meta = { ...(profile?.length ? { profile: [...profile] } : {}), security: [{ ...PSEUDED }, { ...REDACTED }] };
    return out as unknown as T;
  }

  /** A de-identified copy of one element; undefined when nothing of it is left (dropped by the caller). */
  private walk(value: unknown, days: number, key: string): unknown {
    if (Array.isArray(value)) {
      const items = value.map((v) => this.walk(v, days, key)).filter((v) => v !== undefined);
      return items.length ? items : undefined;
    }
    if (typeof value === 'string') {
      if (key === 'reference') return this.reference(value);
      return days !== 0 ? shiftDate(value, days) : value;
    }
    if (typeof value !== 'object' || value === null) return value;
    const obj = value as Record<string, unknown>;
    const out: Record<string, unknown> = {};
    // only a Coding's display is terminology; any other (Reference.display, with or without a
    // reference) is free text, often a person's name
    const isCoding = typeof obj.system === 'string' || typeof obj.code === 'string';
    // an Identifier (or ContactPoint) under any name: a string value given by an assigning system
    if (typeof obj.value === 'string' && typeof obj.code !== 'string' && (typeof obj.system === 'string' || obj.assigner !== undefined)) return undefined;
    for (const [k, v] of Object.entries(obj)) {
      // an element's own id (not the resource's, which becomes its pseudonym) is free text a source system chose
      if (REMOVED_KEYS.has(k) || k === 'meta' || (k === 'display' && !isCoding) || (k === 'id' && key !== '')) continue;
      const walked = this.walk(v, days, k);
      if (walked !== undefined) out[k] = walked;
    }
    if (Object.keys(out).length === 0) return undefined;
    return overNinety(out) ?? out;
  }

  /**
   * `Patient/1`, `http://x/fhir/Patient/1/_history/2` → `Patient/<pseudonym>`; any other (`urn:…`, a
   * conditional or malformed reference) → undefined, dropped: what cannot be pseudonymised does not leave.
   */
  private reference(ref: string): string | undefined {
    let out = this.referenceCache.get(ref);
    if (out === undefined) {
      const m = REFERENCE.exec(ref);
      out = !m || ref.startsWith('urn:') ? '' : `${m[1]}/${this.pseudonym(m[1]!, m[2]!)}`;
      // A few patients and devices are referenced over and over; keep the cache bounded.
      if (this.referenceCache.size >= 50_000) this.referenceCache.clear();
      this.referenceCache.set(ref, out);
    }
    return out || undefined;
  }
}

/** An Age (UCUM years, months, weeks or days) of 90 years or more as the one category `>= 90 a`; undefined for anything else. */
function overNinety(q: Record<string, unknown>): Record<string, unknown> | undefined {
  if (q.system !== UCUM || typeof q.code !== 'string' || typeof q.value !== 'number') return undefined;
  const perUnit = AGE_UNIT_YEARS[q.code];
  if (perUnit === undefined || q.value * perUnit < 90) return undefined;
  return { ...q, value: 90, comparator: '>=', unit: 'a', code: 'a' };
}

/** Moves the calendar date of a full date/dateTime/instant by whole days, keeping time and offset as written. */
export function shiftDate(value: string, days: number): string {
  const m = DATE.exec(value);
  if (!m) return value;
  const t = Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]));
  if (Number.isNaN(t)) return value;
  return new Date(t + days * DAY_MS).toISOString().slice(0, 10) + (m[4] ?? '');
}
