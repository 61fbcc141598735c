/** Glucose unit conversion. 18.01559 mg/dL per mmol/L is the factor Tidepool uses (molar mass 180.1559 g/mol). */
import type { GlucoseUnit } from './types.js';

export const MGDL_PER_MMOLL = 18.01559;

/** Value in mg/dL of a value in `unit`. */
export function toMgdl(value: number, unit: GlucoseUnit): number {
  return unit === 'mg/dL' ? value : value * MGDL_PER_MMOLL;
}

/** A mg/dL value expressed in `unit`, rounded to the usual precision (integer mg/dL, 0.01 mmol/L). */
export function fromMgdl(mgdl: number, unit: GlucoseUnit): number {
  return unit === 'mg/dL' ? round(mgdl, 0) : round(mgdl / MGDL_PER_MMOLL, 2);
}

/** Recognises the unit spellings sources use (`mg/dl`, `mmol/l`, HealthKit's `mmol<180.155…>/L`). */
export function parseGlucoseUnit(text: unknown): GlucoseUnit | undefined {
  if (typeof text !== 'string') return undefined;
  const t = text.trim().toLowerCase();
  if (t === 'mg/dl' || t === 'mgdl' || t === 'mg/100ml') return 'mg/dL';
  if (t === 'mmol/l' || t === 'mmol' || /^mmol<[\d.]+>\/l$/.test(t)) return 'mmol/L';
  return undefined;
}

export function round(value: number, decimals: number): number {
  const f = 10 ** decimals;
  return Math.round((value + Number.EPSILON * Math.sign(value)) * f) / f;
}
