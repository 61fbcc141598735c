/**
 * Unit conversion for quantity search (search.html#quantity: "the server may … convert to canonical
 * units"). A search value with a UCUM unit (`gt10|http://unitsofmeasure.org|mmol/L`) matches values
 * in any commensurable UCUM unit, compared after converting with @lhncbc/ucum-lhc's unit tables:
 * `gt1.8|…|g/L` finds 181 mg/dL.
 *
 * Two additions to plain UCUM:
 * - glucose concentrations convert between mass and substance (mg/dL ↔ mmol/L) with glucose's molar
 *   mass, the same factor the CGM converter uses, when the quantity is the value of an
 *   Observation coded as glucose (`molarMassOf`); UCUM alone cannot, as it needs the analyte;
 * - units UCUM cannot scale linearly are compared only with the same unit: arbitrary units
 *   (`[IU]`), special ones with an offset or a logarithm (`Cel`, `[degF]`, `[pH]`), and dimensionless
 *   ones. UCUM would equate 53 mmol/mol with 5.3 %, but an HbA1c of 53 mmol/mol (IFCC) is 7.0 % (NGSP).
 */
import type { Coding, Resource } from '@medplum/fhirtypes';
import ucum from '@lhncbc/ucum-lhc';
import { LOINC, METER_CODE, READING_CODE } from '../cgm/fhir.js';
import { SUMMARY_CODE } from '../cgm/summary.js';
import { MGDL_PER_MMOLL } from '../cgm/units.js';

export const UCUM = 'http://unitsofmeasure.org';

/** How a UCUM unit relates to base units: a value times `factor` is the value in base units of `dimension`. */
export interface UnitScale {
  factor: number;
  /** Base units with their exponents and the power of moles (`g1.m-3;mol0`): equal strings are commensurable. */
  dimension: string;
  exponents: Readonly<Record<string, number>>;
  moles: number;
}

const utils = ucum.UcumLhcUtils.getInstance();
/** Avogadro's number as UCUM defines the mole (mol = 6.0221367e23 × 1), from its own tables. */
const PER_MOLE = utils.convertToBaseUnits('mol', 1).magnitude!;
/** g/mol: 18.01559 mg/dL per mmol/L. */
const GLUCOSE_MOLAR_MASS = 10 * MGDL_PER_MMOLL;
/** LOINC codes of glucose concentrations (mass or substance): the CGM IG's, the meters' and the common laboratory ones. */
const GLUCOSE_CODES = new Set([
  ...Object.values(READING_CODE).map((c) => c.code),
  ...Object.values(METER_CODE).map((c) => c.code),
  SUMMARY_CODE.meanMass.code, SUMMARY_CODE.meanMoles.code,
  '2339-0', '2345-7', '2340-8', '1558-6', // blood, serum or plasma, test strip, fasting: mass/volume
  '15074-8', '14749-6', '14771-0', // blood, serum or plasma, fasting: moles/volume
]);

/** Scales of the unit codes seen, bounded: search values come from clients. */
const scales = new Map<string, UnitScale | null>();
const SCALES_MAX = 10_000;

/** The linear scale of a UCUM code, or undefined when it is not valid UCUM or not convertible (see above). */
export function ucumScale(code: string): UnitScale | undefined {
  let scale = scales.get(code);
  if (scale === undefined) {
    scale = scaleOf(code);
    if (scales.size >= SCALES_MAX) scales.clear();
    scales.set(code, scale);
  }
  return scale ?? undefined;
}

/** What a UCUM code can be made of (printable ASCII, no space), and a length no real unit reaches. */
const UCUM_CODE = /^[!-~]{1,64}$/;

function scaleOf(code: string): UnitScale | null {
  if (!UCUM_CODE.test(code)) return null;
  // ucum-lhc writes the unit string of a parse that throws to console.log; search values come from
  // clients and never reach a log, so the write is dropped for the duration of this synchronous call
  const log = console.log;
  console.log = () => undefined;
  try {
    return linearScale(code);
  } finally {
    console.log = log;
  }
}

function linearScale(code: string): UnitScale | null {
  const unit = utils.getSpecifiedUnit(code, 'validate');
  if (unit.status !== 'valid' || !unit.unit || unit.unit.isSpecial_ || unit.unit.isArbitrary_) return null;
  const base = utils.convertToBaseUnits(code, 1);
  if (base.status !== 'succeeded' || !base.unitToExp || !(base.magnitude! > 0) || !Number.isFinite(base.magnitude)) return null;
  const moles = unit.unit.moleExp_ ?? 0;
  if (Object.keys(base.unitToExp).length === 0 && moles === 0) return null;
  return withDimension(base.magnitude!, base.unitToExp, moles);
}

function withDimension(factor: number, exponents: Record<string, number>, moles: number): UnitScale {
  const parts = Object.keys(exponents).filter((k) => exponents[k] !== 0).sort().map((k) => `${k}${exponents[k]}`);
  return { factor, exponents, moles, dimension: `${parts.join('.')};mol${moles}` };
}

/**
 * The same quantity measured the other way, mass ↔ substance, given the analyte's molar mass
 * (g/mol): mg/dL (g·m⁻³) ↔ mmol/L (mol·m⁻³). Undefined when the unit is neither.
 */
function otherWay(scale: UnitScale, molarMass: number): UnitScale | undefined {
  const grams = scale.exponents.g ?? 0;
  if (scale.moles === 1) {
    return withDimension(scale.factor * molarMass / PER_MOLE, { ...scale.exponents, g: grams + 1 }, 0);
  }
  if (scale.moles === 0 && grams >= 1) {
    return withDimension(scale.factor * PER_MOLE / molarMass, { ...scale.exponents, g: grams - 1 }, 1);
  }
  return undefined;
}

/** Molar mass (g/mol) of the analyte an Observation's code names, when the search converts it: glucose. */
export function molarMassOf(codings: readonly Coding[] | undefined): number | undefined {
  return codings?.some((c) => c.system === LOINC && c.code !== undefined && GLUCOSE_CODES.has(c.code)) ? GLUCOSE_MOLAR_MASS : undefined;
}

/** Forms per unit code and molar mass, bounded like `scales`. */
const forms = new Map<string, UnitScale[]>();

/**
 * The forms under which a value in UCUM `code` is comparable (value × factor, in `dimension`): its
 * own, and with a molar mass also the other way. Empty when the unit does not convert.
 */
export function canonicalForms(code: string, molarMass?: number): readonly UnitScale[] {
  const key = molarMass === undefined ? code : `${code}\0${molarMass}`;
  let found = forms.get(key);
  if (!found) {
    const scale = ucumScale(code);
    const other = scale && molarMass !== undefined ? otherWay(scale, molarMass) : undefined;
    found = !scale ? [] : other ? [scale, other] : [scale];
    if (forms.size >= SCALES_MAX) forms.clear();
    forms.set(key, found);
  }
  return found;
}

/**
 * The factor taking a value in UCUM `code` to base units of `dimension` (with `molarMass`: also
 * mass ↔ substance), or undefined when the unit is not of that dimension.
 */
export function baseFactor(code: string, dimension: string, molarMass?: number): number | undefined {
  return canonicalForms(code, molarMass).find((f) => f.dimension === dimension)?.factor;
}

/**
 * A value in base units, rounded to 12 significant digits, so that 0.57 g/dL and 570 mg/dL are the
 * same number (5700 g·m⁻³), not 5699.999999999999 and 5700. The index rows, the planner's bounds and
 * the matcher all compute it this way, so they agree to the bit: a search reads exactly the rows the
 * matcher accepts.
 */
export const inBaseUnits = (value: number, factor: number): number => Number((value * factor).toPrecision(12));

/**
 * The molar mass a search parameter's quantities convert with on this resource: an Observation's
 * `value-quantity` takes the analyte of its `code`; other parameters (a component's value) none.
 */
export function molarMassFor(resource: Resource, param: string): number | undefined {
  return param === 'value-quantity' && resource.resourceType === 'Observation' ? molarMassOf(resource.code?.coding) : undefined;
}
