/**
 * Text as FHIR string search compares it (search.html#string: "case- and accent-insensitive"):
 * accents removed, lower case. The embedded index folds with it; so do `$match`'s comparisons.
 */
export const foldText = (s: string): string => s.normalize('NFD').replace(/\p{M}/gu, '').toLowerCase();
