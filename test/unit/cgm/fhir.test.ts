import path from 'node:path';
import { describe, expect, test } from '@jest/globals';
import type { Device, MedicationAdministration, Observation, Resource } from '@medplum/fhirtypes';
import {
  IDENTIFIER_SYSTEM, PROFILE, buildCgmSummary, shapeCachedCheck, computeMetrics, metricReadingsFromRecords, readCgm, toResources, toTransactionBundle,
  type CgmRecord,
} from '../../../src/cgm/index.js';
import { ProfileValidator } from '../../../src/fhir/validation.js';
import { PROFILES_DIR } from '../../../src/paths.js';

const FIXTURES = path.join(import.meta.dirname, '../../fixtures/cgm');
const NOW = () => Date.parse('2025-01-01T00:00:00Z');
const validator = new ProfileValidator(PROFILES_DIR);
const errorsOf = (r: Resource): string[] => validator.check(r).filter((i) => i.severity === 'error' || i.severity === 'fatal').map((i) => `${i.diagnostics} @ ${i.expression?.join(',')}`);
const ctx = { patient: 'Patient/p1' };

async function records(file: string, options = {}): Promise<CgmRecord[]> {
  return (await readCgm(path.join(FIXTURES, file), { now: NOW, partial: true, timeZone: 'Europe/Berlin', ...options })).records;
}

describe('conversion to CGM IG resources', () => {
  test('mg/dL readings are cgm-sensor-reading-mass-per-volume with LOINC 99504-3 and the profile unit text', async () => {
    const entries = toResources(await records('nightscout-entries.json'), ctx);
    const obs = entries.map((e) => e.resource).filter((r): r is Observation => r.resourceType === 'Observation');
    const first = obs[0]!;
    expect(first).toMatchObject({
      meta: { profile: [PROFILE.readingMass] },
      status: 'final',
      code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] },
      subject: { reference: 'Patient/p1' },
      effectiveDateTime: '2024-10-27T02:50:00+02:00',
      valueQuantity: { value: 142, unit: 'mg/dl', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
      identifier: [{ system: IDENTIFIER_SYSTEM.reading, value: expect.stringMatching(/^[0-9a-f]{32}$/) }],
    });
    for (const o of obs) expect(errorsOf(o)).toEqual([]);
  });

  test('sensor error codes become dataAbsentReason without a value, and still validate', async () => {
    const obs = toResources(await records('nightscout-entries.json'), ctx).map((e) => e.resource as Observation);
    const err = obs.find((o) => o.effectiveDateTime === '2024-10-27T02:05:00+01:00')!;
    expect(err.valueQuantity).toBeUndefined();
    expect(err.dataAbsentReason).toEqual({
      coding: [{ system: 'http://terminology.hl7.org/CodeSystem/data-absent-reason', code: 'error' }],
      text: expect.stringContaining('Sensor error code 5'),
    });
    expect(errorsOf(err)).toEqual([]);
    const broken = { ...err, dataAbsentReason: undefined };
    expect(errorsOf(broken).join('\n')).toMatch(/value.exists\(\) or dataAbsentReason.exists\(\)/);
  });

  test('meter readings use the capillary code and no CGM profile', async () => {
    const obs = toResources(await records('nightscout-entries.json'), ctx).map((e) => e.resource as Observation);
    const meter = obs.find((o) => o.effectiveDateTime === '2024-10-27T02:11:40+01:00')!;
    expect(meter.meta).toBeUndefined();
    expect(meter.code.coding![0]!.code).toBe('41653-7');
    expect(errorsOf(meter)).toEqual([]);
  });

  test('a meter reading references a Device for the meter its source names; one with no named meter has none', async () => {
    const entries = toResources(await records('tidepool-export.json'), ctx);
    const devices = entries.filter((e) => e.resource.resourceType === 'Device');
    const meterDevice = devices.find((e) => (e.resource as Device).deviceName?.[0]?.name === 'ContourNext_123')!;
    const cgmDevice = devices.find((e) => (e.resource as Device).deviceName?.[0]?.name === 'DexG6_SM12345678')!;
    expect(devices).toHaveLength(2);
    expect(meterDevice.resource.meta).toBeUndefined(); // a meter is not a cgm-device
    expect(cgmDevice.resource.meta?.profile).toEqual([PROFILE.device]);
    expect(errorsOf(meterDevice.resource)).toEqual([]);
    const meter = entries.map((e) => e.resource).find((r): r is Observation => r.resourceType === 'Observation' && r.code.coding?.[0]?.code === '41653-7')!;
    expect(meter.device).toEqual({ reference: meterDevice.fullUrl });

    // One device string naming both a sensor and a meter (a Nightscout uploader): two Devices, never one with the other's profile.
    const ns = toResources(await records('nightscout-entries.json'), ctx);
    const nsDevices = ns.filter((e) => e.resource.resourceType === 'Device').map((e) => e.resource as Device);
    expect(nsDevices.map((d) => [d.deviceName?.[0]?.name, d.meta?.profile?.[0]])).toEqual([['xDrip-DexcomG6', PROFILE.device], ['xDrip-DexcomG6', undefined]]);
    expect(new Set(nsDevices.map((d) => d.identifier![0]!.value)).size).toBe(2);

    // The sources' own stand-ins are not a named meter: no Device.
    for (const text of [
      JSON.stringify([{ type: 'mbg', mbg: 118, date: 1729991500000, dateString: '2024-10-27T02:11:40.000+01:00' }]),
      JSON.stringify([{ type: 'smbg', units: 'mg/dL', value: 120, time: '2018-05-14T08:25:00.000Z', timezoneOffset: 600 }]),
      JSON.stringify([{ blood_glucose: { unit: 'mg/dL', value: 99 }, effective_time_frame: { date_time: '2023-06-01T07:30:00-04:00' }, specimen_source: 'capillary blood' }]),
    ]) {
      const { records: recs } = await readCgm({ text }, { now: NOW });
      const resources = toResources(recs, ctx).map((e) => e.resource);
      expect(resources.map((r) => r.resourceType)).toEqual(['Observation']);
      expect((resources[0] as Observation).device).toBeUndefined();
    }
  });

  test('HealthKit: a meter named by its HKDevice gets a Device; a value typed into the phone (an Apple device) or with only an app name does not', async () => {
    const record = (device?: string) => `<Record type="HKQuantityTypeIdentifierBloodGlucose" sourceName="Contour" unit="mg/dL" startDate="2024-03-31 08:00:00 +0200" value="112"${device ? ` device="${device}"` : ''}/>`;
    const xml = (device?: string) => `<?xml version="1.0"?>\n<HealthData locale="en_US">\n${record(device)}\n</HealthData>\n`;
    const deviceOf = async (device?: string) => {
      const { records: recs } = await readCgm({ text: xml(device) }, { now: NOW });
      return toResources(recs, ctx).map((e) => e.resource).filter((r): r is Device => r.resourceType === 'Device');
    };
    expect((await deviceOf('&lt;&lt;HKDevice: 0x1&gt;, name:Contour, manufacturer:Ascensia Diabetes Care, model:Contour Next One&gt;')).map((d) => d.deviceName?.[0]?.name))
      .toEqual(['Ascensia Diabetes Care Contour Next One']);
    expect(await deviceOf('&lt;&lt;HKDevice: 0x2&gt;, name:iPhone, manufacturer:Apple Inc., model:iPhone&gt;')).toEqual([]);
    expect(await deviceOf()).toEqual([]);
  });

  test('mmol/L readings are -moles-per-volume (105272-9) and reference one cgm-device Device', async () => {
    const entries = toResources(await records('libreview-mmol-dst.csv'), ctx);
    const devices = entries.filter((e) => e.resource.resourceType === 'Device');
    expect(devices).toHaveLength(1);
    const device = devices[0]!.resource as Device;
    expect(device).toMatchObject({
      meta: { profile: [PROFILE.device] },
      deviceName: [{ name: 'FreeStyle LibreLink', type: 'user-friendly-name' }],
      serialNumber: '3C8D2E1A-7F44-4B1A-9E55-0A1B2C3D4E5F',
      identifier: [{ system: IDENTIFIER_SYSTEM.device }],
    });
    expect(errorsOf(device)).toEqual([]);
    const obs = entries.filter((e) => e.resource.resourceType === 'Observation').map((e) => e.resource as Observation);
    expect(obs[0]).toMatchObject({
      meta: { profile: [PROFILE.readingMoles] },
      code: { coding: [{ code: '105272-9' }] },
      valueQuantity: { value: 6.1, unit: 'mmol/l', code: 'mmol/L' },
      device: { reference: devices[0]!.fullUrl },
    });
    for (const o of obs) expect(errorsOf(o)).toEqual([]);
  });

  test('insulin becomes completed MedicationAdministration: bolus dose in [iU], basal period and [iU]/h rate', async () => {
    const mas = toResources(await records('tidepool-export.json'), ctx)
      .map((e) => e.resource).filter((r): r is MedicationAdministration => r.resourceType === 'MedicationAdministration');
    expect(mas).toHaveLength(4);
    expect(mas[0]).toMatchObject({
      status: 'completed', effectiveDateTime: '2018-05-14T18:30:00+10:00',
      dosage: { dose: { value: 4.5, system: 'http://unitsofmeasure.org', code: '[iU]' } },
      subject: { reference: 'Patient/p1' },
    });
    expect(mas[1]).toMatchObject({ effectivePeriod: { start: '2018-05-14T19:00:00+10:00', end: '2018-05-14T20:00:00+10:00' }, dosage: { dose: { value: 3.5 } } });
    expect(mas[2]).toMatchObject({
      effectivePeriod: { start: '2018-05-14T18:00:00+10:00', end: '2018-05-14T20:00:00+10:00' },
      dosage: { rateQuantity: { value: 0.85, code: '[iU]/h', system: 'http://unitsofmeasure.org' }, dose: { value: 1.7 } },
    });
    expect(mas[3]).toMatchObject({ dosage: { rateQuantity: { value: 0 }, dose: { value: 0 } } });
    for (const m of mas) expect(errorsOf(m)).toEqual([]);
  });
});

describe('transaction bundle', () => {
  test('every entry is a conditional create on its identifier; Devices come first', async () => {
    const bundle = toTransactionBundle(toResources(await records('libreview-mmol-dst.csv'), ctx), '2025-01-01T00:00:00Z');
    expect(bundle).toMatchObject({ resourceType: 'Bundle', type: 'transaction', timestamp: '2025-01-01T00:00:00Z', meta: { profile: [PROFILE.bundle] } });
    expect(bundle.entry![0]!.resource!.resourceType).toBe('Device');
    for (const e of bundle.entry!) {
      const id = (e.resource as Observation).identifier![0]!;
      expect(e.request).toEqual({ method: 'POST', url: e.resource!.resourceType, ifNoneExist: `identifier=${id.system}|${id.value}` });
      expect(e.fullUrl).toMatch(/^urn:uuid:[0-9a-f-]{36}$/);
    }
    expect(errorsOf(bundle)).toEqual([]);
  });

  test('re-importing the same file yields the same identifiers; another patient gets different ones', async () => {
    const a = toResources(await records('nightscout-entries.json'), ctx);
    const b = toResources(await records('nightscout-entries.json'), ctx);
    const c = toResources(await records('nightscout-entries.json'), { patient: 'Patient/p2' });
    const ids = (entries: typeof a): string[] => entries.map((e) => (e.resource as Observation).identifier![0]!.value!);
    expect(ids(b)).toEqual(ids(a));
    expect(new Set(ids(a)).size).toBe(a.length);
    expect(ids(c).filter((v) => ids(a).includes(v))).toEqual([]);
  });

  test('a corrected value keeps the identifier (so the store makes it a new version)', async () => {
    const original = await records('nightscout-entries.json');
    const corrected = original.map((r) => (r.kind === 'glucose' && r.value === 142 ? { ...r, value: 145, mgdl: 145 } : r));
    const [a, b] = [toResources(original, ctx), toResources(corrected, ctx)];
    const i = a.findIndex((e) => (e.resource as Observation).valueQuantity?.value === 142);
    expect((b[i]!.resource as Observation).valueQuantity?.value).toBe(145);
    expect(b[i]!.ifNoneExist).toBe(a[i]!.ifNoneExist);
  });
});

describe('cgm-summary observations', () => {
  test('the summary and its members validate against their IG profiles', async () => {
    const metrics = computeMetrics(metricReadingsFromRecords(await records('libreview-mmol-dst.csv')))!;
    const { entries, summary, members } = buildCgmSummary(metrics, ctx);
    expect(members).toHaveLength(7);
    expect(summary.hasMember!.map((m) => m.reference)).toEqual(entries.slice(1).map((e) => e.fullUrl));
    expect(summary.code.coding).toEqual([{ system: 'http://loinc.org', code: '107931-8' }]);
    expect(summary.note?.[0]?.text).toMatch(/Data sufficiency/);
    for (const e of entries) expect(errorsOf(e.resource)).toEqual([]);
    const tir = members.find((m) => m.code.coding![0]!.code === '106793-3')!;
    expect(tir.component!.map((c) => c.code.coding![0]!.code)).toEqual(['104642-4', '104641-6', '97510-2', '104640-8', '104639-0']);
    expect(tir.component!.map((c) => c.valueQuantity!.unit)).toEqual(['%', '%', '%', '%', '%']);
    const wear = members.find((m) => m.code.coding![0]!.code === '104636-6')!;
    // the default period is the last 14 days of data: only 27 October
    expect(wear.valueQuantity).toEqual({ value: 1, unit: 'days', system: 'http://unitsofmeasure.org', code: 'd' });
  });

  test('a member with a wrong unit fails its profile', async () => {
    const metrics = computeMetrics(metricReadingsFromRecords(await records('libreview-mmol-dst.csv')))!;
    const gmi = buildCgmSummary(metrics, ctx).members.find((m) => m.code.coding![0]!.code === '97506-0')!;
    expect(errorsOf({ ...gmi, valueQuantity: { ...gmi.valueQuantity, code: 'mg/dL' } }).length).toBeGreaterThan(0);
  });
});

describe('shape-cached validation', () => {
  test('runs the full check once per shape and still catches a bad date-time or a missing value', async () => {
    const check = shapeCachedCheck((r) => validator.check(r));
    const entries = toResources([...await records('nightscout-entries.json'), ...await records('libreview-mmol-dst.csv')], ctx);
    for (const e of entries) expect(check(e.resource).filter((i) => i.severity === 'error')).toEqual([]);
    expect(check.fullChecks()).toBeLessThan(entries.length / 2);
    const obs = entries.find((e) => e.resource.resourceType === 'Observation')!.resource as Observation;
    const badTime = check({ ...obs, effectiveDateTime: '2024-13-40T25:00:00Z' });
    expect(badTime.some((i) => i.severity === 'error')).toBe(true);
    const noValue = check({ ...obs, valueQuantity: undefined });
    expect(noValue.map((i) => i.diagnostics).join()).toMatch(/value.exists\(\) or dataAbsentReason.exists\(\)/);
  });

  test('leaves date-like text outside date elements to the full check (a device may be called "2019-G6 receiver")', () => {
    const check = shapeCachedCheck((r) => validator.check(r));
    const device = (name: string, manufactureDate?: string): Resource =>
      ({ resourceType: 'Device', deviceName: [{ name, type: 'user-friendly-name' }], patient: { reference: 'Patient/p' }, ...(manufactureDate ? { manufactureDate } : {}) }) as Resource;
    expect(check(device('Dexcom G6'))).toEqual([]);
    expect(check(device('2019-G6 receiver'))).toEqual([]);
    const before = check.fullChecks();
    expect(check(device('2019-G6 receiver'))).toEqual([]);
    expect(check.fullChecks()).toBe(before + 1); // never taken from the cache: the full check decides each time
    // in a date element the same text is still wrong, cached shape or not
    expect(check(device('Dexcom G6', '2019-01-02'))).toEqual([]);
    expect(check(device('Dexcom G6', '2019-13-45')).some((i) => i.severity === 'error')).toBe(true);
  });

  test('names the path of each value invalid wherever it stands, when the full check says nothing', () => {
    const check = shapeCachedCheck(() => []);
    const issues = check({
      resourceType: 'Observation', status: 'final', code: { text: 'x' }, effectiveDateTime: '2024-13-40T25:00:00Z',
      component: [{ code: { text: 'a' } }, { code: { text: 'b' }, valueQuantity: { value: Infinity } }], note: [{ text: '  ' }],
      device: { display: '2019-99 receiver' },
    } as Resource);
    expect(issues.map((i) => `${i.diagnostics} @ ${i.expression?.join()}`)).toEqual([
      'invalid value at effectiveDateTime @ effectiveDateTime',
      'invalid value at component[1].valueQuantity.value @ component[1].valueQuantity.value',
      'invalid value at note[0].text @ note[0].text',
    ]);
  });
});
