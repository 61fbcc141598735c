/** The part of `@lhncbc/ucum-lhc` (no bundled types) that quantity search uses. */
declare module '@lhncbc/ucum-lhc' {
  export interface UcumUnit {
    moleExp_: number;
    isSpecial_: boolean;
    isArbitrary_: boolean;
  }
  export interface UcumUtils {
    /** `status` 'valid' with the unit, or 'invalid' / 'error'. */
    getSpecifiedUnit(code: string, mode: 'validate' | 'convert'): { status: string; unit?: UcumUnit };
    /** `status` 'succeeded' with the value in base units and their exponents (`{ g: 1, m: -3 }`). */
    convertToBaseUnits(code: string, value: number): { status: string; magnitude?: number; unitToExp?: Record<string, number> };
  }
  const ucum: { UcumLhcUtils: { getInstance(): UcumUtils } };
  export default ucum;
}
