/**
 * Helpers for repository benchmarks: synthetic CGM data shaped like the HL7 CGM IG
 * (https://build.fhir.org/ig/HL7/cgm/) sensor readings. No real health data.
 */
import { parseSearchRequest } from '@medplum/core';
import type { SearchRequest } from '@medplum/core';
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

/** What the load helpers need from a repository (EmbeddedRepository has both). */
export interface BulkRepository {
  createMany(resources: Observation[]): Promise<unknown>;
  search(request: SearchRequest): Promise<{ resources: unknown[] }>;
}

export interface LoadResult {
  loaded: number;
  seconds: number;
  patientIds: string[];
  /** Whole days of readings per patient (days from 2026-01-01). */
  days: number;
}

/**
 * The order readings are stored in: `patient`, each patient's readings together (a bulk import of
 * one patient after another: a patient-day is contiguous in every table and in one anchoring
 * batch); `time`, the patients' readings taking turns one at a time (streamed uploads as they
 * arrive from many patients: a patient-day is spread over the tables and over many batches).
 */
export type LoadOrder = 'patient' | 'time';

/** One item of each generator in turn until all are done. */
function* interleaved<T>(sources: Generator<T>[]): Generator<T> {
  let live = sources;
  while (live.length) {
    const next: Generator<T>[] = [];
    for (const source of live) {
      const item = source.next();
      if (!item.done) {
        yield item.value;
        next.push(source);
      }
    }
    live = next;
  }
}

/**
 * Bulk-loads `total` CGM readings spread over `patients` patients (`pat-0`, `pat-1`, …), in
 * `chunk`-sized createMany calls, in the given order (default `patient`), and times it.
 */
export async function loadCgmObservations(repo: BulkRepository, options: { total: number; patients: number; chunk?: number;
  order?: LoadOrder; onProgress?: (loaded: number, seconds: number) => void; }): Promise<LoadResult> {
  const patientIds = Array.from({ length: options.patients }, (_, i) => `pat-${i}`);
  const perPatient = Math.ceil(options.total / options.patients);
  const chunk = options.chunk ?? 10_000;
  const started = performance.now();
  let batch: Observation[] = [];
  let loaded = 0;
  const flush = async (): Promise<void> => {
    await repo.createMany(batch);
    loaded += batch.length;
    batch = [];
    options.onProgress?.(loaded, (performance.now() - started) / 1000);
  };
  const readings = options.order === 'time'
    ? interleaved(patientIds.map((p, i) => generateCgmObservations({ patientIds: [p], readingsPerPatient: perPatient, seed: 42 + i })))
    : generateCgmObservations({ patientIds, readingsPerPatient: perPatient });
  for (const o of readings) {
    if (loaded + batch.length >= options.total) break;
    batch.push(o);
    if (batch.length === chunk) await flush();
  }
  if (batch.length) await flush();
  return { loaded, seconds: (performance.now() - started) / 1000, patientIds, days: Math.floor(perPatient / 288) };
}

/** The headline query: one patient's readings for one UTC day (`day` = YYYY-MM-DD). */
export function patientDayQuery(patientId: string, day: string): string {
  const next = new Date(Date.parse(`${day}T00:00:00Z`) + 86_400_000).toISOString().slice(0, 10);
  return `Observation?patient=${patientId}&date=ge${day}T00:00:00Z&date=lt${next}T00:00:00Z&_count=1000`;
}

/**
 * Times `iterations` patient-day queries over loaded data (patients and days varied
 * deterministically); returns milliseconds per query in run order. Throws if a day does not
 * answer exactly 288 readings.
 */
export async function timePatientDayQueries(repo: BulkRepository, load: Pick<LoadResult, 'patientIds' | 'days'>,
  iterations: number): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < iterations; i++) {
    const patient = load.patientIds[(i * 37) % load.patientIds.length]!;
    const day = new Date(Date.parse('2026-01-01T00:00:00Z') + ((i * 13) % load.days) * 86_400_000).toISOString().slice(0, 10);
    const request = parseSearchRequest(patientDayQuery(patient, day));
    const t0 = performance.now();
    const result = await repo.search(request);
    times.push(performance.now() - t0);
    if (result.resources.length !== 288) throw new Error(`patient-day query answered ${result.resources.length} readings, expected 288`);
  }
  return times;
}
