/**
 * Conversion of normalised records to HL7 CGM IG 1.0.0 resources (sensor readings, the cgm-device
 * Device) and to R4 MedicationAdministration for insulin, plus the transaction Bundle with
 * conditional creates that the IG's cgm-data-submission-bundle describes.
 *
 * Idempotency: every resource carries an identifier derived from (patient, source, device, time), so
 * posting the same file twice matches the existing resources through `ifNoneExist`.
 */
import { createHash } from 'node:crypto';
import type {
  Bundle, BundleEntry, CodeableConcept, Device, MedicationAdministration, Observation, Quantity, Reference, Resource,
} from '@medplum/fhirtypes';
import type { BasalRecord, BolusRecord, CgmFormat, CgmRecord, GlucoseRecord, GlucoseUnit } from './types.js';

export const CGM_IG = 'http://hl7.org/fhir/uv/cgm/StructureDefinition/';
export const PROFILE = {
  readingMass: `${CGM_IG}cgm-sensor-reading-mass-per-volume`,
  readingMoles: `${CGM_IG}cgm-sensor-reading-moles-per-volume`,
  device: `${CGM_IG}cgm-device`,
  bundle: `${CGM_IG}cgm-data-submission-bundle`,
} as const;

export const LOINC = 'http://loinc.org';
export const UCUM = 'http://unitsofmeasure.org';
export const OBSERVATION_CATEGORY = 'http://terminology.hl7.org/CodeSystem/observation-category';
export const DATA_ABSENT_REASON = 'http://terminology.hl7.org/CodeSystem/data-absent-reason';

/** Identifier systems GlucoGuard assigns. */
export const IDENTIFIER_SYSTEM = {
  reading: 'urn:glucoguard:cgm-reading',
  device: 'urn:glucoguard:cgm-device',
  insulin: 'urn:glucoguard:insulin-dose',
} as const;

/** LOINC codes of the sensor-reading profiles, and of capillary meter glucose (not a CGM IG profile). */
export const READING_CODE: Record<GlucoseUnit, { code: string; label: string }> = {
  'mg/dL': { code: '99504-3', label: 'Glucose [Mass/volume] in Interstitial fluid' },
  'mmol/L': { code: '105272-9', label: 'Glucose [Moles/volume] in Interstitial fluid' },
};
export const METER_CODE: Record<GlucoseUnit, { code: string; label: string }> = {
  'mg/dL': { code: '41653-7', label: 'Glucose [Mass/volume] in Capillary blood by Glucometer' },
  'mmol/L': { code: '14743-9', label: 'Glucose [Moles/volume] in Capillary blood by Glucometer' },
};

/** The profiles' fixed valueQuantity: UCUM code plus the exact unit text the IG gives. */
export const GLUCOSE_QUANTITY: Record<GlucoseUnit, { unit: string; system: string; code: string }> = {
  'mg/dL': { unit: 'mg/dl', system: UCUM, code: 'mg/dL' },
  'mmol/L': { unit: 'mmol/l', system: UCUM, code: 'mmol/L' },
};

const LABORATORY: CodeableConcept[] = [{ coding: [{ system: OBSERVATION_CATEGORY, code: 'laboratory', display: 'Laboratory' }] }];

export interface ConvertContext {
  /** Reference to the Patient, e.g. `Patient/123`. */
  patient: string;
}

/** A resource with the fullUrl and conditional-create query it goes into a transaction with. */
export interface ConvertedEntry<T extends Resource = Resource> {
  fullUrl: string;
  resource: T;
  /** `identifier=system|value`, for `request.ifNoneExist`. */
  ifNoneExist: string;
  /**
   * `system|value` the same reading was stored under before its identifier changed: a LibreView scan's
   * identifier until 2026-12 was a historic reading's, so a scan in the same minute as one was dropped
   * as its duplicate. An import matches stored scans on it (CgmService.storeChunk) so that sending an
   * old export again adds the scans it lost and duplicates none.
   */
  formerIdentifier?: string;
}

/** Identifier value of a reading: SHA-256 over patient, source, device and instant (hex, 32 chars). */
export function readingIdentifier(patient: string, source: CgmFormat, deviceId: string, epochMs: number, kind = 'glucose'): string {
  return digest(`${patient}\u0000${source}\u0000${deviceId}\u0000${kind}\u0000${epochMs}`);
}

/**
 * Identifier value of a Device: SHA-256 over patient, source and device id. A meter's Device is kept
 * apart from a CGM Device of the same name (a Tidepool receiver or Nightscout uploader can name both),
 * so neither takes the other's profile.
 */
export function deviceIdentifier(patient: string, source: CgmFormat, deviceId: string, role: 'cgm' | 'meter' = 'cgm'): string {
  return digest(`${patient}\u0000${source}\u0000${deviceId}${role === 'meter' ? '\u0000meter' : ''}`);
}

/**
 * Which Device a glucose reading references: every CGM reading its cgm-device; a meter reading the
 * meter its source names (Nightscout `device`, Tidepool `deviceId`, Open mHealth `source_name`, an
 * HKDevice), none when the source names none. Undefined: no Device.
 */
export function deviceRole(rec: GlucoseRecord): 'cgm' | 'meter' | undefined {
  if (rec.method === 'cgm') return 'cgm';
  return rec.deviceNamed === true ? 'meter' : undefined;
}

/** A stable `urn:uuid:` from an identifier value (name-based, so the same device gets the same fullUrl). */
export function stableUuid(seed: string): string {
  const h = createHash('sha256').update(seed).digest('hex');
  const variant = ((parseInt(h[16]!, 16) & 0x3) | 0x8).toString(16);
  return `urn:uuid:${h.slice(0, 8)}-${h.slice(8, 12)}-5${h.slice(13, 16)}-${variant}${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

/**
 * The Device for a record's device: a cgm-device for sensor readings, a plain Device (no CGM
 * profile, its own identifier) for a named meter.
 */
export function toDevice(rec: CgmRecord, ctx: ConvertContext, role: 'cgm' | 'meter' = 'cgm'): ConvertedEntry<Device> {
  const value = deviceIdentifier(ctx.patient, rec.source, rec.deviceId, role);
  const resource: Device = {
    resourceType: 'Device',
    ...(role === 'cgm' ? { meta: { profile: [PROFILE.device] } } : {}),
    identifier: [{ system: IDENTIFIER_SYSTEM.device, value }],
    deviceName: [{ name: rec.deviceName, type: 'user-friendly-name' }],
    ...(rec.serialNumber ? { serialNumber: rec.serialNumber } : {}),
    patient: { reference: ctx.patient },
  };
  return { fullUrl: stableUuid(`${IDENTIFIER_SYSTEM.device}|${value}`), resource, ifNoneExist: `identifier=${IDENTIFIER_SYSTEM.device}|${value}` };
}

/**
 * A glucose record as an Observation: CGM readings conform to cgm-sensor-reading-mass-per-volume
 * (mg/dL) or -moles-per-volume (mmol/L); meter readings use the capillary LOINC code and no CGM
 * profile. A reading without a value carries dataAbsentReason (invariant cgm-sensor-value-or-dar).
 */
export function toObservation(rec: GlucoseRecord, ctx: ConvertContext, device?: Reference<Device>): ConvertedEntry<Observation> {
  const value = readingIdentifier(ctx.patient, rec.source, rec.deviceId, rec.epochMs, rec.method === 'smbg' ? 'smbg' : rec.scan ? 'scan' : 'glucose');
  const isCgm = rec.method === 'cgm';
  const code = (isCgm ? READING_CODE : METER_CODE)[rec.unit];
  const resource: Observation = {
    resourceType: 'Observation',
    ...(isCgm ? { meta: { profile: [rec.unit === 'mg/dL' ? PROFILE.readingMass : PROFILE.readingMoles] } } : {}),
    identifier: [{ system: IDENTIFIER_SYSTEM.reading, value }],
    status: 'final',
    category: LABORATORY,
    code: { coding: [{ system: LOINC, code: code.code }], text: code.label },
    subject: { reference: ctx.patient },
    effectiveDateTime: rec.time,
    ...(rec.value !== undefined && !rec.absent
      ? { valueQuantity: { value: rec.value, ...GLUCOSE_QUANTITY[rec.unit] } }
      : { dataAbsentReason: { coding: [{ system: DATA_ABSENT_REASON, code: rec.absent?.code ?? 'unknown' }], text: rec.absent?.text ?? 'No value' } }),
    ...(device ? { device } : {}),
  };
  const former = rec.scan && rec.method === 'cgm' ? `${IDENTIFIER_SYSTEM.reading}|${readingIdentifier(ctx.patient, rec.source, rec.deviceId, rec.epochMs)}` : undefined;
  return {
    fullUrl: stableUuid(`${IDENTIFIER_SYSTEM.reading}|${value}`), resource, ifNoneExist: `identifier=${IDENTIFIER_SYSTEM.reading}|${value}`,
    ...(former ? { formerIdentifier: former } : {}),
  };
}

const INSULIN: CodeableConcept = {
  coding: [{ system: 'http://snomed.info/sct', code: '67866001', display: 'Insulin (substance)' }],
  text: 'Insulin',
};
const units = (value: number): Quantity => ({ value, unit: 'IU', system: UCUM, code: '[iU]' });

/**
 * An insulin record as a completed MedicationAdministration: a bolus at `effectiveDateTime` with its
 * dose in [iU] (an extended bolus over `effectivePeriod`); a basal segment over `effectivePeriod` with
 * `rateQuantity` in [iU]/h and the delivered dose.
 */
export function toMedicationAdministration(rec: BolusRecord | BasalRecord, ctx: ConvertContext): ConvertedEntry<MedicationAdministration> {
  const value = readingIdentifier(ctx.patient, rec.source, rec.deviceId, rec.epochMs, rec.kind);
  const device: Reference<Device> = { identifier: { system: IDENTIFIER_SYSTEM.device, value: deviceIdentifier(ctx.patient, rec.source, rec.deviceId) }, display: rec.deviceName };
  const base = {
    resourceType: 'MedicationAdministration' as const,
    identifier: [{ system: IDENTIFIER_SYSTEM.insulin, value }],
    status: 'completed' as const,
    medicationCodeableConcept: INSULIN,
    subject: { reference: ctx.patient },
    device: [device],
  };
  let resource: MedicationAdministration;
  if (rec.kind === 'bolus') {
    resource = {
      ...base,
      category: { text: 'bolus' },
      ...(rec.endTime ? { effectivePeriod: { start: rec.time, end: rec.endTime } } : { effectiveDateTime: rec.time }),
      dosage: { text: rec.endTime ? 'Extended bolus' : 'Bolus', dose: units(round3(rec.units)) },
    };
  } else {
    const hours = (rec.endEpochMs - rec.epochMs) / 3_600_000;
    resource = {
      ...base,
      category: { text: 'basal' },
      effectivePeriod: { start: rec.time, end: rec.endTime },
      dosage: {
        text: `Basal${rec.deliveryType ? ` (${rec.deliveryType})` : ''}`,
        dose: units(round3(rec.rate * hours)),
        rateQuantity: { value: rec.rate, unit: 'IU/h', system: UCUM, code: '[iU]/h' },
      },
    };
  }
  return { fullUrl: stableUuid(`${IDENTIFIER_SYSTEM.insulin}|${value}`), resource, ifNoneExist: `identifier=${IDENTIFIER_SYSTEM.insulin}|${value}` };
}

/**
 * Converts records to resources: one Device per CGM device and per named meter (first), then one
 * Observation or MedicationAdministration per record. Observations reference their Device by its
 * fullUrl, which a transaction resolves to the created or matched Device.
 */
export function toResources(records: Iterable<CgmRecord>, ctx: ConvertContext): ConvertedEntry[] {
  const devices = new Map<string, ConvertedEntry<Device>>();
  const out: ConvertedEntry[] = [];
  for (const rec of records) {
    if (rec.kind === 'glucose') {
      let reference: Reference<Device> | undefined;
      const role = deviceRole(rec);
      if (role) {
        const key = `${role}\u0000${rec.source}\u0000${rec.deviceId}`;
        let dev = devices.get(key);
        if (!dev) devices.set(key, (dev = toDevice(rec, ctx, role)));
        reference = { reference: dev.fullUrl };
      }
      out.push(toObservation(rec, ctx, reference));
    } else out.push(toMedicationAdministration(rec, ctx));
  }
  return [...devices.values(), ...out];
}

/**
 * A transaction Bundle (IG cgm-data-submission-bundle): each entry a conditional create
 * (`POST` with `ifNoneExist` on the identifier), so re-submitting creates nothing new.
 */
export function toTransactionBundle(entries: ConvertedEntry[], timestamp = new Date().toISOString()): Bundle {
  return {
    resourceType: 'Bundle',
    meta: { profile: [PROFILE.bundle] },
    type: 'transaction',
    timestamp,
    entry: entries.map((e): BundleEntry => ({
      fullUrl: e.fullUrl,
      resource: e.resource,
      request: { method: 'POST', url: e.resource.resourceType, ifNoneExist: e.ifNoneExist },
    })),
  };
}

function digest(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 32);
}

function round3(n: number): number {
  return Math.round(n * 1000) / 1000;
}
