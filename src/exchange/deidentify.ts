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
 *   photo, contacts, device serial/lot numbers and names, and all free text (narrative, notes,
 *   comments, CodeableConcept.text, Reference.display, valueString); extensions are dropped too
 *   since they can carry anything.
 * - A Patient keeps only gender, active and the year of birth.
 * - Optionally every date/dateTime/instant of a patient's resources is shifted by the same whole
 *   number of days (derived from the key and the patient, never stored), which keeps time of day
 *   and every interval between that patient's readings.
 * - `meta` keeps the profiles and gains the v3 ObservationValue labels PSEUDED and REDACTED.
 */
import { createHmac } from 'node:crypto';
import type { Coding, Resource } from '@medplum/fhirtypes';
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
}

/** Keys removed wherever they appear: direct identifiers and free text. */
const REMOVED_KEYS = new Set([
  'text', 'note', 'comment', 'identifier', 'name', 'telecom', 'address', 'photo', 'contact', 'valueString',
  'serialNumber', 'lotNumber', 'udiCarrier', 'deviceName', 'distinctIdentifier', 'extension', 'modifierExtension',
  'contained', 'link', 'generalPractitioner', 'managingOrganization', 'communication', 'maritalStatus',
]);
/** What a Patient keeps. */
const PATIENT_KEEPS = new Set(['resourceType', 'id', 'meta', 'gender', 'birthDate', 'active', 'deceasedBoolean']);
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

  /** A de-identified copy of `resource`; the input is not changed. */
  apply<T extends Resource>(resource: T): T {
    const patientId = this.options.dateShift ? patientIdsOf(resource)[0] : undefined;
    const days = patientId ? this.shiftDays(patientId) : 0;
    let source = resource as unknown as Record<string, unknown>;
    if (resource.resourceType === 'Patient') {
      source = Object.fromEntries(Object.entries(source).filter(([k]) => PATIENT_KEEPS.has(k)));
    }
    const out = this.walk(source, days, '') as Record<string, unknown>;
    if (resource.id) out.id = this.pseudonym(resource.resourceType, resource.id);
    if (resource.resourceType === 'Patient' && typeof out.birthDate === 'string') out.birthDate = out.birthDate.slice(0, 4);
    const profile = resource.meta?.profile;
    out.meta = { ...(profile?.length ? { profile: [...profile] } : {}), security: [{ ...PSEUDED }, { ...REDACTED }] };
    return out as unknown as T;
  }

  private walk(value: unknown, days: number, key: string): unknown {
    if (Array.isArray(value)) return value.map((v) => this.walk(v, days, key));
    if (typeof value === 'string') {
      if (key === 'reference') return this.reference(value);
      return days !== 0 ? shiftDate(value, days) : value;
    }
    if (typeof value !== 'object' || value === null) return value;
    const obj = value as Record<string, unknown>;
    const out: Record<string, unknown> = {};
    const isReference = typeof obj.reference === 'string';
    for (const [k, v] of Object.entries(obj)) {
      if (REMOVED_KEYS.has(k) || k === 'meta' || (isReference && k === 'display')) continue;
      out[k] = this.walk(v, days, k);
    }
    return out;
  }

  /** `Patient/1`, `http://x/fhir/Patient/1/_history/2` → `Patient/<pseudonym>`; others (urn:uuid, #contained) as they are. */
  private reference(ref: string): string {
    let out = this.referenceCache.get(ref);
    if (out === undefined) {
      const m = REFERENCE.exec(ref);
      out = !m || ref.startsWith('urn:') ? ref : `${m[1]}/${this.pseudonym(m[1]!, m[2]!)}`;
      // A few patients and devices are referenced over and over; keep the cache bounded.
      if (this.referenceCache.size >= 50_000) this.referenceCache.clear();
      this.referenceCache.set(ref, out);
    }
    return out;
  }
}

/** Moves the calendar date of a full date/dateTime/instant by whole days, keeping time and offset as written. */
export function shiftDate(value: string, days: number): string {
  const m = DATE.exec(value);
  if (!m) return value;
  const t = Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]));
  if (Number.isNaN(t)) return value;
  return new Date(t + days * DAY_MS).toISOString().slice(0, 10) + (m[4] ?? '');
}
