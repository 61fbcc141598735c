/**
 * Apple Health `export.xml` (streamed with the `sax` tokenizer): `<Record type=
 * "HKQuantityTypeIdentifierBloodGlucose" unit=… value=… startDate="2024-03-31 01:55:00 +0100"
 * sourceName=… device="<<HKDevice…>, name:…, manufacturer:…, model:…>">`. Every other record type is
 * ignored (export.xml holds steps, heart rate, …). HealthKit does not say whether glucose came from a
 * sensor or a meter; sources and devices that name a CGM maker are taken as CGM, the rest as meter.
 */
import sax from 'sax';
import { CgmInputError } from '../json-stream.js';
import { parseIso } from '../time.js';
import { parseGlucoseUnit } from '../units.js';
import { glucoseRecord, numeric, reject, where, type ParserContext, type ParserItem } from './common.js';

const GLUCOSE_TYPE = 'HKQuantityTypeIdentifierBloodGlucose';
const CGM_MAKERS = /dexcom|libre|abbott|freestyle|guardian|medtronic|eversense|senseonics|simplera|\bcgm\b/i;

export async function* parseHealthKit(chunks: AsyncIterable<string>, ctx: ParserContext): AsyncGenerator<ParserItem> {
  const parser = sax.parser(true, { position: true });
  let pending: ParserItem[] = [];
  let record = 0;
  let ignored = 0;
  let sawRoot = false;
  let failure: Error | undefined;
  let failureLine = 0;
  parser.onerror = (err) => {
    if (!failure) {
      failure = err;
      failureLine = parser.line + 1;
    }
  };
  parser.onopentag = (tag) => {
    if (!sawRoot) {
      sawRoot = true;
      if (tag.name !== 'HealthData' && !failure) {
        failure = new Error(`root element <${tag.name}> is not <HealthData>`);
        failureLine = parser.line + 1;
      }
    }
    if (tag.name !== 'Record') return;
    const a = tag.attributes;
    if (a.type !== GLUCOSE_TYPE) {
      ignored++;
      return;
    }
    record++;
    pending.push(toItem({ record, line: parser.line + 1 }, a));
  };
  for await (const chunk of chunks) {
    parser.write(chunk);
    if (failure) throw new CgmInputError(`line ${failureLine}: malformed XML (${firstLine(failure.message)})`, failureLine);
    if (pending.length) {
      const batch = pending;
      pending = [];
      yield* batch;
    }
  }
  parser.close();
  if (failure) throw new CgmInputError(`line ${failureLine}: malformed XML (${firstLine(failure.message)})`, failureLine);
  if (!sawRoot) throw new CgmInputError('empty input: no XML document');
  yield* pending;
  if (ignored) ctx.report.warnings.push(`${ignored} non-glucose HealthKit records ignored`);
}

function toItem(pos: { record: number; line: number }, a: Record<string, string>): ParserItem {
  const t = a.startDate ? parseIso(a.startDate) : undefined;
  if (!t || t.offsetMinutes === undefined) return reject(pos, 'invalid-timestamp', `${where(pos)}: missing or invalid startDate`);
  const unit = parseGlucoseUnit(a.unit);
  if (!unit) return reject(pos, 'unknown-unit', `${where(pos)}: unknown unit`);
  const value = numeric(a.value);
  if (value === undefined) return reject(pos, a.value === undefined ? 'missing-value' : 'invalid-value', `${where(pos)}: missing or invalid value`);
  const device = parseHkDevice(a.device);
  const sourceName = a.sourceName?.trim() || 'Apple Health';
  const deviceName = [device.manufacturer, device.model].filter(Boolean).join(' ') || device.name || sourceName;
  const isCgm = CGM_MAKERS.test(`${sourceName} ${device.manufacturer ?? ''} ${device.model ?? ''} ${device.name ?? ''}`);
  return glucoseRecord(pos, {
    source: 'healthkit',
    method: isCgm ? 'cgm' : 'smbg',
    deviceId: `${sourceName}/${deviceName}`,
    deviceName,
    // A meter is named by the HKDevice that recorded the value (maker, model); `sourceName` is the app
    // that wrote it to Health, and an Apple device is the phone or watch a value was typed into.
    deviceNamed: Boolean(device.manufacturer || device.model) && !/^apple\b/i.test(device.manufacturer ?? ''),
    epochMs: t.epochMs,
    offsetMinutes: t.offsetMinutes,
    unit,
    value,
  });
}

/** `<<HKDevice: 0x…>, name:CGM, manufacturer:Dexcom, model:G7, …>` → its fields. */
function parseHkDevice(text: string | undefined): { name?: string; manufacturer?: string; model?: string } {
  if (!text) return {};
  const out: Record<string, string> = {};
  for (const m of text.matchAll(/(\w+):([^,>]*)/g)) out[m[1]!] = m[2]!.trim();
  return { name: out.name, manufacturer: out.manufacturer, model: out.model };
}

function firstLine(message: string): string {
  return message.split('\n')[0]!;
}
