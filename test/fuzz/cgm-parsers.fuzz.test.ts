/**
 * Property-based fuzzing of the CGM source parsers (src/cgm): arbitrary text and bytes, and
 * structurally plausible exports of each format with hostile field values. Each input must end in
 * records (every glucose value finite, in range, at a finite instant) or a GlucoGuardError
 * (ERR_INVALID for malformed input, ERR_UNPROCESSABLE for a rejected file) — never another
 * exception, never a hang. Case counts are recorded in docs/reliability.md.
 */
import { describe, expect, test } from '@jest/globals';
import fc from 'fast-check';
import { CGM_FORMATS, MAX_GLUCOSE_MGDL, readCgm, type CgmFormat } from '../../src/cgm/index.js';
import { isGlucoGuardError } from '../../src/errors.js';
import type { CgmInput } from '../../src/cgm/input.js';

const CASE_TIMEOUT_MS = 3000;
const NOW = Date.UTC(2026, 0, 1);

type Outcome = { kind: 'records'; count: number } | { kind: 'error'; code: string };

/** Reads a source; resolves with what a caller sees or rejects with anything unexpected. */
async function outcome(input: CgmInput, format?: CgmFormat): Promise<Outcome> {
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`parser did not finish within ${CASE_TIMEOUT_MS} ms`)), CASE_TIMEOUT_MS);
  });
  try {
    const result = await Promise.race([readCgm(input, { format, partial: true, now: () => NOW, maxIssues: 20 }), hang]);
    for (const r of result.records) {
      if (!Number.isFinite(r.epochMs)) throw new Error(`record ${r.record} has a non-finite instant`);
      if (r.kind === 'glucose' && !r.absent) {
        if (!Number.isFinite(r.value) || !Number.isFinite(r.mgdl) || r.mgdl! <= 0 || r.mgdl! > MAX_GLUCOSE_MGDL) {
          throw new Error(`record ${r.record} has glucose ${r.value} ${r.unit} (${r.mgdl} mg/dL)`);
        }
      }
    }
    return { kind: 'records', count: result.records.length };
  } catch (err) {
    if (isGlucoGuardError(err) && (err.code === 'ERR_INVALID' || err.code === 'ERR_UNPROCESSABLE')) return { kind: 'error', code: err.code };
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

// Values a device export might hold, and values a hostile one would.
const nasty = fc.oneof(
  fc.integer({ min: -1000, max: 2000 }),
  fc.double({ noNaN: false }),
  fc.constantFrom('', ' ', 'High', 'Low', 'HI', 'LO', '?NC', 'NaN', 'Infinity', '-0', '1e400', '0x10', '１２０', '12,5', '7.8.9',
    '2024-03-09T10:00:12', '2024-02-30T25:61:00Z', '2024-10-27T02:30:00', '9999-12-31T23:59:59Z', '0000-01-01', '1729990200000',
    '31-03-2024 01:30', '03-12-2024 11:45 PM', '13-13-2024 00:00', 'mg/dL', 'mmol/L', 'mg/dl', 'g/L', null, true, false),
  fc.string({ maxLength: 20 }),
  fc.constant({}),
  fc.constant([]),
);
const stringy = fc.oneof(fc.string({ maxLength: 12 }), fc.constantFrom('mg/dL', 'mmol/L', 'sgv', 'mbg', 'cbg', 'smbg', 'bolus', 'basal', 'egv', 'Flat'));

function objectOf(keys: string[]) {
  return fc.dictionary(fc.constantFrom(...keys), nasty, { maxKeys: keys.length });
}

const nightscout = fc.array(
  fc.tuple(fc.record({ type: fc.constantFrom('sgv', 'mbg', 'cal', 'x'), sgv: nasty, date: nasty }, { requiredKeys: [] }),
    objectOf(['mbg', 'dateString', 'direction', 'device', '_id', 'noise', 'sysTime', 'utcOffset'])).map(([a, b]) => ({ ...b, ...a })),
  { maxLength: 6 },
).map((a) => JSON.stringify(a));

const dexcom = fc.record({
  recordType: fc.constantFrom('egv', 'calibration', 'x'),
  recordVersion: fc.constantFrom('3.0', '2.0'),
  records: fc.array(fc.tuple(objectOf(['recordId', 'systemTime', 'displayTime', 'transmitterId', 'transmitterTicks', 'trend', 'trendRate', 'rateUnit', 'status']),
    fc.record({ value: nasty, unit: stringy }, { requiredKeys: [] })).map(([a, b]) => ({ ...a, ...b })), { maxLength: 6 }),
}, { requiredKeys: ['records'] }).map((o) => JSON.stringify(o));

const tidepool = fc.array(
  fc.tuple(fc.record({ type: fc.constantFrom('cbg', 'smbg', 'bolus', 'basal', 'upload', 'food'), units: stringy, value: nasty, time: nasty }, { requiredKeys: ['type'] }),
    objectOf(['deviceId', 'deviceTime', 'timezoneOffset', 'uploadId', 'id', 'normal', 'extended', 'duration', 'rate', 'deliveryType', 'subType', 'expectedNormal'])).map(([a, b]) => ({ ...b, ...a })),
  { maxLength: 6 },
).map((a) => JSON.stringify(a));

const openmhealth = fc.array(fc.record({
  header: fc.record({ uuid: nasty, schema_id: fc.record({ namespace: fc.constantFrom('omh', 'x'), name: fc.constantFrom('blood-glucose', 'x'), version: nasty }),
    acquisition_provenance: fc.record({ source_name: nasty, modality: fc.constantFrom('sensed', 'self-reported', 'x') }) }, { requiredKeys: [] }),
  body: fc.record({
    blood_glucose: fc.record({ unit: stringy, value: nasty }, { requiredKeys: [] }),
    effective_time_frame: fc.oneof(fc.record({ date_time: nasty }), fc.record({ time_interval: fc.record({ start_date_time: nasty, end_date_time: nasty }) }), nasty),
    specimen_source: fc.constantFrom('interstitial fluid', 'capillary blood', 'x'),
  }, { requiredKeys: [] }),
}, { requiredKeys: [] }), { maxLength: 5 }).map((a) => JSON.stringify(a));

const LIBRE_HEADER = 'Device,Serial Number,Device Timestamp,Record Type,Historic Glucose mg/dL,Scan Glucose mg/dL,Rapid-Acting Insulin (units),Notes';
const csvField = fc.oneof(nasty.map((v) => (v === null || typeof v === 'object' ? '' : String(v))), fc.constantFrom('"', '""', '"a,b"', '\r', '\n', ';', '\t'));
const libreview = fc.tuple(
  fc.constantFrom('', 'Glucose Data,Generated on,02-11-2024 09:14 UTC,Generated by,Test Patient\n', 'Patient report\n'),
  fc.array(fc.tuple(fc.constantFrom('FreeStyle Libre 2', ''), fc.constantFrom('0F1E2D3C', ''), csvField, fc.constantFrom('0', '1', '2', '4', '5', '6', 'x'), csvField, csvField, csvField, csvField)
    .map((row) => row.join(',')), { maxLength: 6 }),
  fc.constantFrom(',', ';', '\t'),
).map(([preamble, rows, sep]) => `${preamble}${[LIBRE_HEADER, ...rows].map((r) => (sep === ',' ? r : r.replaceAll(',', sep))).join('\n')}\n`);

const xmlAttr = fc.oneof(csvField, fc.constantFrom('&amp;', '&bogus;', '<', '"', "'", '&#0;', '&#x110000;'));
const healthkit = fc.array(fc.record({
  type: fc.constantFrom('HKQuantityTypeIdentifierBloodGlucose', 'HKQuantityTypeIdentifierInsulinDelivery', 'HKQuantityTypeIdentifierStepCount', 'x'),
  unit: fc.constantFrom('mg/dL', 'mmol<180.1558800000541>/L', 'IU', 'x', ''), startDate: xmlAttr, endDate: xmlAttr, value: xmlAttr, sourceName: xmlAttr,
}, { requiredKeys: ['type'] }), { maxLength: 6 }).chain((records) => fc.constantFrom(true, false).map((closed) =>
  `<?xml version="1.0" encoding="UTF-8"?>\n<HealthData locale="en_GB">\n${records.map((r) =>
    ` <Record ${Object.entries(r).map(([k, v]) => `${k}="${String(v).replace(/"/g, '&quot;')}"`).join(' ')}/>`).join('\n')}\n${closed ? '</HealthData>\n' : ''}`));

const STRUCTURED: [CgmFormat, fc.Arbitrary<string>][] = [
  ['nightscout', nightscout], ['dexcom', dexcom], ['tidepool', tidepool], ['openmhealth', openmhealth], ['libreview', libreview], ['healthkit', healthkit],
];

describe('CGM parsers never crash or hang', () => {
  test.each(STRUCTURED)('%s: plausible exports with hostile values → records or a clear error (detected and explicit)', async (format, arb) => {
    await fc.assert(fc.asyncProperty(arb, fc.boolean(), async (text, explicit) => {
      const o = await outcome({ text }, explicit ? format : undefined);
      expect(['records', 'error']).toContain(o.kind);
    }), { numRuns: 400 });
  });

  test('arbitrary text, detected or given any format → records or a clear error', async () => {
    const text = fc.oneof(fc.string({ maxLength: 200 }), fc.string({ unit: 'grapheme', maxLength: 60 }),
      fc.constantFrom('[', '{', '[{', '{"records":', '<', '<?xml', '<HealthData>', '[]', '{}', 'null', '"x"', '\ufeff[', 'Device,Serial Number\n'));
    await fc.assert(fc.asyncProperty(text, fc.constantFrom(undefined, ...CGM_FORMATS), async (t, format) => {
      await outcome({ text: t }, format);
    }), { numRuns: 1000 });
  });

  test('arbitrary bytes (invalid UTF-8, NULs, BOMs) split at arbitrary chunk boundaries → records or a clear error', async () => {
    await fc.assert(fc.asyncProperty(fc.uint8Array({ maxLength: 300 }), fc.integer({ min: 1, max: 64 }), fc.constantFrom(undefined, ...CGM_FORMATS),
      async (bytes, chunk, format) => {
        const chunks = (async function* () {
          for (let i = 0; i < bytes.length; i += chunk) yield bytes.subarray(i, i + chunk);
        })();
        await outcome(chunks, format);
      }), { numRuns: 600 });
  });
});

describe('regressions found by fuzzing', () => {
  test('a glucose value of 0 or "-0" is rejected as invalid-value, not stored as a reading (every format path that reads mg/dL)', async () => {
    for (const raw of ['-0', 0, '0.0']) {
      const result = await readCgm({ text: JSON.stringify([{ type: 'mbg', mbg: raw, date: 1729990200000 }]) }, { now: () => NOW });
      expect(result.accepted).toBe(false);
      expect(result.records).toEqual([]);
      expect(result.summary.rejectedByReason).toEqual({ 'invalid-value': 1 });
    }
    const tidepool = await readCgm({ text: JSON.stringify([{ type: 'smbg', units: 'mg/dL', value: 0, time: '2024-01-01T00:00:00Z', deviceId: 'd', uploadId: 'u' }]) },
      { now: () => NOW });
    expect(tidepool.summary.rejectedByReason).toEqual({ 'invalid-value': 1 });
  });
});
