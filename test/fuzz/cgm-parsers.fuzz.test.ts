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
import { STRUCTURED } from './cgm-arbitraries.js';
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

describe('CGM parsers never crash or hang', () => {
  test.each(STRUCTURED)('%s: plausible exports with hostile values → records or a clear error (detected and explicit)', async (format, arb) => {
    await fc.assert(fc.asyncProperty(arb, fc.boolean(), async (text, explicit) => {
      const o = await outcome({ text }, explicit ? format : undefined);
      expect(['records', 'error']).toContain(o.kind);
    }), { numRuns: 400 });
  });

  test('arbitrary text, detected or given any format → records or a clear error', async () => {
    const text = fc.oneof(fc.string({ maxLength: 200 }), fc.string({ unit: 'grapheme', maxLength: 60 }),
      fc.constantFrom('[', '{', '[{', '{"records":', '<', '<?xml', '<HealthData>', '[]', '{}', 'null', '"x"', '\ufeff[', 'Device,Serial Number\n',
        'Index,Timestamp (YYYY-MM-DDThh:mm:ss),Event Type,Glucose Value (mg/dL)\n'));
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
