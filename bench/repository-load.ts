/**
 * Helpers for repository benchmarks: synthetic CGM data shaped like the HL7 CGM IG
 * (https://build.fhir.org/ig/HL7/cgm/) sensor readings. No real health data.
 */
import type { Observation } from '@medplum/fhirtypes';

export const CGM_SENSOR_READING_PROFILE = 'http://hl7.org/fhir/uv/cgm/StructureDefinition/cgm-sensor-reading-mass-per-volume';
const FIVE_MINUTES = 5 * 60 * 1000;

export interface CgmGenerationOptions {
  /** Patient ids; readings are spread evenly over them (each gets its own consecutive days). */
  patientIds: string[];
  /** Readings per patient (288 = one day at 5-minute intervals). */
  readingsPerPatient: number;
  /** First reading's time (UTC); default 2026-01-01T00:00:00Z. */
  start?: string;
  /** Device id per patient; default `cgm-<patientId>`. */
  deviceIdOf?: (patientId: string) => string;
  /** Deterministic seed for glucose values. */
  seed?: number;
}

/**
 * CGM IG sensor-reading Observations (LOINC 99504-3, mg/dL, category laboratory), one every
 * 5 minutes per patient from `start`, referencing `Patient/<id>` and `Device/<deviceId>`.
 * Yields them lazily so a million readings need not sit in memory at once.
 */
export function* generateCgmObservations(options: CgmGenerationOptions): Generator<Observation> {
  const start = Date.parse(options.start ?? '2026-01-01T00:00:00Z');
  const deviceIdOf = options.deviceIdOf ?? ((p: string) => `cgm-${p}`);
  let state = (options.seed ?? 42) >>> 0;
  const random = (): number => {
    state = (state * 1664525 + 1013904223) >>> 0;
    return state / 2 ** 32;
  };
  for (const patientId of options.patientIds) {
    let glucose = 110;
    for (let i = 0; i < options.readingsPerPatient; i++) {
      glucose = Math.min(400, Math.max(40, glucose + (random() - 0.5) * 12));
      yield {
        resourceType: 'Observation',
        meta: { profile: [CGM_SENSOR_READING_PROFILE] },
        status: 'final',
        category: [{
          coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'laboratory' }],
        }],
        code: { coding: [{ system: 'http://loinc.org', code: '99504-3', display: 'Glucose [Mass/volume] in Interstitial fluid' }] },
        subject: { reference: `Patient/${patientId}` },
        device: { reference: `Device/${deviceIdOf(patientId)}` },
        effectiveDateTime: new Date(start + i * FIVE_MINUTES).toISOString().replace('.000Z', 'Z'),
        valueQuantity: { value: Math.round(glucose), unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
      };
    }
  }
}

/** Percentile (0–100) of a list of numbers, nearest-rank. */
export function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}
