/**
 * The column names of LibreView's "Glucose Data" CSV export in each language GlucoGuard reads.
 * LibreView writes the header in the account's language; the columns are the same in every
 * language. Abbott publishes no list of them, so each language below says where its names come
 * from. Only names seen in an export (or in code that reads real exports) are listed: a language
 * whose names could not be confirmed (Italian so far: no source names its record-type column) is
 * refused with a message naming what is read (`expectedHeaders`), never guessed.
 *
 * Glucose columns are matched on their start: the unit follows the name (`Historic Glucose mg/dL`,
 * `Historische glucose mmol/l`).
 */

export interface LibreViewLanguage {
  language: string;
  device: readonly string[];
  serial: readonly string[];
  timestamp: readonly string[];
  recordType: readonly string[];
  /** Record type 0 (historic, every 15 minutes). */
  historic: readonly string[];
  /** Record type 1 (scan). */
  scan: readonly string[];
  /** Record type 2 (strip: the reader's built-in blood glucose meter). Empty when not known. */
  strip: readonly string[];
}

export const LIBREVIEW_LANGUAGES: readonly LibreViewLanguage[] = [
  {
    // Abbott LibreView export published with nidhog/glyco (MIT; /work/shared/fhir/cgm-samples).
    language: 'English',
    device: ['Device'],
    serial: ['Serial Number'],
    timestamp: ['Device Timestamp'],
    recordType: ['Record Type'],
    historic: ['Historic Glucose'],
    scan: ['Scan Glucose'],
    strip: ['Strip Glucose'],
  },
  {
    // Read since session 21; the full header (strip column included) as in the fixtures of a Django
    // importer of German LibreView exports, and the first five columns as an iOS CGM app writes
    // its LibreView-format export.
    language: 'German',
    device: ['Gerät'],
    serial: ['Seriennummer'],
    timestamp: ['Gerätezeitstempel'],
    recordType: ['Aufzeichnungstyp'],
    historic: ['Glukosewert-Verlauf'],
    scan: ['Glukose-Scan'],
    strip: ['Glukose-Teststreifen'],
  },
  {
    // Two independent importers of Spanish LibreView exports, one stating its column list was
    // checked against a real 9,080-row export (`Dispositivo, Número de serie, Marca de hora del
    // dispositivo, Tipo de registro, Historial de glucosa mg/dL, Escanear glucosa mg/dL`); the
    // other also names `Sello de tiempo del dispositivo` for the timestamp. No source names the
    // strip column, so Spanish strip readings are skipped (and said so), not guessed.
    language: 'Spanish',
    device: ['Dispositivo'],
    serial: ['Número de serie'],
    timestamp: ['Marca de hora del dispositivo', 'Sello de tiempo del dispositivo'],
    recordType: ['Tipo de registro'],
    historic: ['Historial de glucosa'],
    scan: ['Escanear glucosa'],
    strip: [],
  },
  {
    // A converter that writes LibreView's Dutch layout for re-import (metadata line
    // `Glucosegegevens,Gegenereerd op,…`) and an analysis script reading Dutch exports by
    // `Tijdstempel apparaat` and `Historische glucose mmol/l`.
    language: 'Dutch',
    device: ['Apparaat'],
    serial: ['Serienummer'],
    timestamp: ['Tijdstempel apparaat'],
    recordType: ['Gegevenstype'],
    historic: ['Historische glucose'],
    scan: ['Scan Glucose'],
    strip: ['Strip Glucose'],
  },
  {
    // A FastAPI importer of French LibreView exports validates uploads against a strict schema of
    // all 19 columns (every other column refused), checked against the real export it keeps for
    // its tests: `Appareil, Numéro de série, Horodatage de l'appareil, Type d'enregistrement,
    // Historique de la glycémie mg/dL, Numérisation de la glycémie mg/dL, …, Glycémie par
    // bandelette mg/dL, Cétone mmol/L, …`. Two independent readers of French exports name the
    // same timestamp and historic columns (one also the scan column).
    language: 'French',
    device: ['Appareil'],
    serial: ['Numéro de série'],
    timestamp: ["Horodatage de l'appareil"],
    recordType: ["Type d'enregistrement"],
    historic: ['Historique de la glycémie'],
    scan: ['Numérisation de la glycémie'],
    strip: ['Glycémie par bandelette'],
  },
];

const norm = (s: string): string => s.trim().toLowerCase();

/** The language whose timestamp and record-type columns are both among `cells`, if any. */
export function headerLanguage(cells: readonly string[]): LibreViewLanguage | undefined {
  const names = new Set(cells.map(norm));
  return LIBREVIEW_LANGUAGES.find((l) => l.timestamp.some((n) => names.has(norm(n))) && l.recordType.some((n) => names.has(norm(n))));
}

/** Whether a header line (not yet split) names a language's timestamp and record-type columns. */
export function isLibreViewHeaderLine(line: string): boolean {
  const text = norm(line);
  return LIBREVIEW_LANGUAGES.some((l) => l.timestamp.some((n) => text.includes(norm(n))) && l.recordType.some((n) => text.includes(norm(n))));
}

/** Index of the first cell equal to one of `names`, or starting with one when `prefix`; -1 when none. */
export function findColumn(cells: readonly string[], names: readonly string[], prefix = false): number {
  const wanted = names.map(norm);
  return cells.findIndex((c) => {
    const cell = norm(c);
    return wanted.some((n) => (prefix ? cell.startsWith(n) : cell === n));
  });
}

/** What a LibreView header must have, in every language read: for messages. */
export function expectedHeaders(): string {
  return LIBREVIEW_LANGUAGES.map((l) => `"${l.timestamp[0]}" and "${l.recordType[0]}" (${l.language})`).join(', ');
}

/** The languages read, for messages: `English, German, Spanish or Dutch`. */
export function languagesRead(): string {
  const names = LIBREVIEW_LANGUAGES.map((l) => l.language);
  return `${names.slice(0, -1).join(', ')} or ${names[names.length - 1]}`;
}
