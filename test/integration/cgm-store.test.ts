/**
 * The ingest service on the embedded repository, below HTTP: chunked storage with devices across
 * chunks, the read-twice path for large files, progress callbacks, concurrent imports of one file,
 * insulin doses, and the bulk identifier lookup it relies on (exact `system|value` matching).
 */
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { Operator } from '@medplum/core';
import type { Device, Observation, Patient, Reference } from '@medplum/fhirtypes';
import { toObservation } from '../../src/cgm/fhir.js';
import { readCgm } from '../../src/cgm/parse.js';
import { CgmIngestService, type IngestProgress } from '../../src/cgm/service.js';
import type { GlucoseRecord } from '../../src/cgm/types.js';
import { shapeCachedCheck } from '../../src/cgm/validate.js';
import { ProfileValidator } from '../../src/fhir/validation.js';
import { PACKAGE_ROOT, PROFILES_DIR } from '../../src/paths.js';
import { EmbeddedRepository } from '../../src/repository/embedded/index.js';
import { makeTrace, nightscoutJson } from '../fixtures/cgm-ingest/trace.js';
import { tempDir } from '../support/app.js';

const dir = tempDir('gg-cgm-store-');
let repository: EmbeddedRepository;
let validator: ProfileValidator;
const service = (options: { chunkSize?: number; holdBytes?: number } = {}) =>
  new CgmIngestService({ repository, check: shapeCachedCheck((r) => validator.check(r)), defaultTimeZone: 'UTC', ...options });
const newPatient = async (): Promise<string> => (await repository.create<Patient>({ resourceType: 'Patient', name: [{ family: 'T' }] })).resource.id!;
const observationsOf = async (patient: string): Promise<Observation[]> =>
  (await repository.search({ resourceType: 'Observation', filters: [{ code: 'patient', operator: Operator.EQUALS, value: `Patient/${patient}` }], count: 10_000, offset: 0 })).resources as Observation[];

beforeAll(async () => {
  repository = await EmbeddedRepository.open({ dataDir: dir, masterKey: Buffer.alloc(32, 3).toString('base64') });
  validator = new ProfileValidator(PROFILES_DIR);
});
afterAll(async () => {
  await repository.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('CgmIngestService', () => {
  const trace = makeTrace(1, { seed: 11 }); // 288 readings
  const text = nightscoutJson(trace);

  test('stores in chunks, one Device for all of them, with progress after each chunk', async () => {
    const patient = await newPatient();
    const progress: IngestProgress[] = [];
    const report = await service({ chunkSize: 50 }).ingest({ text }, { patient, onProgress: (p) => progress.push(p) });
    expect(report).toMatchObject({ accepted: true, created: 288, devicesCreated: 1 });
    const stored = await observationsOf(patient);
    expect(stored).toHaveLength(288);
    expect(new Set(stored.map((o) => o.device?.reference)).size).toBe(1);
    const storing = progress.filter((p) => p.phase === 'storing');
    expect(storing.length).toBeGreaterThanOrEqual(6);
    expect(storing[storing.length - 1]).toMatchObject({ stored: 288, total: 288 });
  });

  test('a file larger than the hold limit is checked, then read again and stored', async () => {
    const patient = await newPatient();
    const file = path.join(dir, 'trace.json');
    writeFileSync(file, text);
    const phases = new Set<string>();
    const report = await service({ chunkSize: 100, holdBytes: 1024 }).ingest(file, { patient, onProgress: (p) => phases.add(p.phase) });
    expect(report).toMatchObject({ accepted: true, created: 288, read: 288 });
    expect([...phases]).toEqual(['checking', 'storing']);
    expect(await observationsOf(patient)).toHaveLength(288);

    const bad = path.join(dir, 'bad.json');
    writeFileSync(bad, text.replace(/"sgv":\d+/, '"sgv":-3'));
    const other = await newPatient();
    const rejected = await service({ holdBytes: 1024 }).ingest(bad, { patient: other });
    expect(rejected).toMatchObject({ accepted: false, created: 0, rejected: 1 });
    expect(await observationsOf(other)).toHaveLength(0);
  });

  test('two concurrent imports of one file store each reading once', async () => {
    const patient = await newPatient();
    const s = service();
    const [a, b] = await Promise.all([s.ingest({ text }, { patient }), s.ingest({ text }, { patient })]);
    expect(a.created + b.created).toBe(288);
    expect(a.unchanged + b.unchanged).toBe(288);
    expect(await observationsOf(patient)).toHaveLength(288);
  });

  test('insulin doses from a Tidepool export are stored once; meter readings kept apart from sensor readings', async () => {
    const patient = await newPatient();
    const tidepool = readFileSync(path.join(PACKAGE_ROOT, 'test/fixtures/cgm/tidepool-export.json'), 'utf8');
    const first = await service().ingest({ text: tidepool }, { patient });
    expect(first.accepted).toBe(true);
    expect(first.created).toBe(8); // 3 cbg + 1 smbg + 2 bolus + 2 basal
    const doses = await repository.search({ resourceType: 'MedicationAdministration', filters: [{ code: 'patient', operator: Operator.EQUALS, value: `Patient/${patient}` }], count: 100, offset: 0 });
    expect(doses.resources).toHaveLength(4);
    const again = await service().ingest({ text: tidepool }, { patient });
    expect(again).toMatchObject({ created: 0, unchanged: 8, corrected: 0 });
  });

  test('a meter reading references the meter its source names, a Device of its own without the cgm-device profile', async () => {
    const patient = await newPatient();
    const tidepool = readFileSync(path.join(PACKAGE_ROOT, 'test/fixtures/cgm/tidepool-export.json'), 'utf8');
    const report = await service().ingest({ text: tidepool }, { patient });
    expect(report).toMatchObject({ accepted: true, devicesCreated: 2 }); // the CGM and the meter
    const stored = await observationsOf(patient);
    const meter = stored.find((o) => o.code.coding?.[0]?.code === '41653-7')!;
    const sensor = stored.find((o) => o.code.coding?.[0]?.code === '99504-3')!;
    expect(meter.device?.reference).toMatch(/^Device\/[A-Za-z0-9-]+$/);
    expect(meter.device!.reference).not.toBe(sensor.device!.reference);
    const device = await repository.read<Device>('Device', meter.device!.reference!.slice('Device/'.length));
    expect(device).toMatchObject({ deviceName: [{ name: 'ContourNext_123', type: 'user-friendly-name' }], patient: { reference: `Patient/${patient}` } });
    expect(device.meta?.profile ?? []).not.toContain('http://hl7.org/fhir/uv/cgm/StructureDefinition/cgm-device');
    // A re-import matches the Device and the reading; a source that names no meter gives no Device.
    expect(await service().ingest({ text: tidepool }, { patient })).toMatchObject({ created: 0, unchanged: 8, devicesCreated: 0 });
    const unnamed = JSON.stringify([{ type: 'smbg', units: 'mg/dL', value: 120, time: '2018-05-14T08:25:00.000Z', timezoneOffset: 600 }]);
    const other = await newPatient();
    expect(await service().ingest({ text: unnamed }, { patient: other })).toMatchObject({ created: 1, devicesCreated: 0 });
    expect((await observationsOf(other))[0]!.device).toBeUndefined();
  });

  test('a meter reading stored before it had a Device gets it when the file is sent again: a new version of the same reading, no duplicate', async () => {
    const patient = await newPatient();
    const tidepool = readFileSync(path.join(PACKAGE_ROOT, 'test/fixtures/cgm/tidepool-export.json'), 'utf8');
    // What an import before session 21 stored: the meter reading with its identifier, value and time, and no device.
    const { records } = await readCgm({ text: tidepool });
    const smbg = records.find((r): r is GlucoseRecord => r.kind === 'glucose' && r.method === 'smbg')!;
    const old = await repository.create<Observation>(toObservation(smbg, { patient: `Patient/${patient}` }).resource);
    expect(old.resource.device).toBeUndefined();

    const report = await service().ingest({ text: tidepool }, { patient });
    expect(report).toMatchObject({ accepted: true, created: 7, linked: 1, unchanged: 0, corrected: 0, devicesCreated: 2 });
    const meters = (await observationsOf(patient)).filter((o) => o.code.coding?.[0]?.code === '41653-7');
    expect(meters).toHaveLength(1); // the same resource, not a second reading
    expect(meters[0]).toMatchObject({ id: old.resource.id, meta: { versionId: '2' }, valueQuantity: old.resource.valueQuantity, effectiveDateTime: old.resource.effectiveDateTime });
    const device = await repository.read<Device>('Device', meters[0]!.device!.reference!.slice('Device/'.length));
    expect(device.deviceName).toEqual([{ name: 'ContourNext_123', type: 'user-friendly-name' }]);
    // the version without the Device stays readable
    expect((await repository.vread<Observation>('Observation', old.resource.id!, '1')).device).toBeUndefined();
    // sending it once more changes nothing
    expect(await service().ingest({ text: tidepool }, { patient })).toMatchObject({ created: 0, linked: 0, unchanged: 8, corrected: 0, devicesCreated: 0 });
  });

  test('LibreView strip readings and Clarity calibrations are stored as meter readings, once; only the reader that measured a strip is a Device', async () => {
    const patient = await newPatient();
    const libre = readFileSync(path.join(PACKAGE_ROOT, 'test/fixtures/cgm/libreview-strip-mgdl.csv'), 'utf8');
    expect(await service().ingest({ text: libre }, { patient, timeZone: 'Europe/Paris' }))
      .toMatchObject({ accepted: true, created: 8, skipped: 1, devicesCreated: 2 }); // the sensor's Device and the reader's meter
    const stored = await observationsOf(patient);
    const meters = stored.filter((o) => o.code.coding?.[0]?.code === '41653-7');
    expect(meters.map((o) => o.valueQuantity?.value ?? o.dataAbsentReason?.coding?.[0]?.code).sort()).toEqual([112, 'positive-infinity']);
    expect(meters.every((o) => o.meta?.profile === undefined || !o.meta.profile.some((p) => p.includes('cgm-sensor-reading')))).toBe(true);
    const sensor = stored.filter((o) => o.code.coding?.[0]?.code === '99504-3');
    expect(sensor).toHaveLength(6);
    expect(meters[0]!.device!.reference).not.toBe(sensor[0]!.device!.reference);
    const meter = await repository.read<Device>('Device', meters[0]!.device!.reference!.slice('Device/'.length));
    expect(meter).toMatchObject({ deviceName: [{ name: 'FreeStyle Libre 2' }], serialNumber: '5D6E7F80-2222-4333-8444-555566667777' });
    expect(meter.meta?.profile ?? []).not.toContain('http://hl7.org/fhir/uv/cgm/StructureDefinition/cgm-device');
    expect(await service().ingest({ text: libre }, { patient, timeZone: 'Europe/Paris' })).toMatchObject({ created: 0, unchanged: 8, linked: 0 });

    const clarity = readFileSync(path.join(PACKAGE_ROOT, 'test/fixtures/cgm/dexcom-clarity-mgdl.csv'), 'utf8');
    const other = await newPatient();
    expect(await service().ingest({ text: clarity }, { patient: other, timeZone: 'America/Los_Angeles' }))
      .toMatchObject({ accepted: true, created: 7, skipped: 6, devicesCreated: 1 });
    const calibration = (await observationsOf(other)).filter((o) => o.code.coding?.[0]?.code === '41653-7');
    expect(calibration).toEqual([expect.objectContaining({ effectiveDateTime: '2024-03-10T03:10:00-07:00', valueQuantity: expect.objectContaining({ value: 130 }) })]);
    expect(calibration[0]!.device).toBeUndefined(); // the export does not name the meter
  });

  describe('LibreView scans in the minute of a historic reading', () => {
    // Listed as LibreView lists them: every historic reading (type 0) first, then the scans (type 1).
    const row = (time: string, type: 0 | 1, value: number) =>
      `FreeStyle Libre 3,9A8B7C6D-1111-4222-8333-444455556666,14-04-2024 ${time},${type},${type === 0 ? value : ''},${type === 1 ? value : ''}`;
    const csv = (rows: string[]) => ['Glucose Data,Generated on,15-04-2024 10:00 UTC,Generated by,Test Patient',
      'Device,Serial Number,Device Timestamp,Record Type,Historic Glucose mg/dL,Scan Glucose mg/dL', ...rows].join('\n') + '\n';
    const historic = [row('08:00', 0, 104), row('08:15', 0, 111), row('08:30', 0, 120)];
    const scans = [row('08:07', 1, 109), row('08:15', 1, 130), row('08:30', 1, 120)];
    const valuesAt = async (patient: string) => (await observationsOf(patient))
      .map((o) => `${o.effectiveDateTime!.slice(11, 16)} ${o.valueQuantity!.value}`).sort();

    test('are readings of their own; a scan of the historic value adds nothing; sending the file again stores nothing new', async () => {
      const patient = await newPatient();
      const report = await service().ingest({ text: csv([...historic, ...scans]) }, { patient, timeZone: 'UTC' });
      // before, the 08:15 scan was skipped as a conflicting duplicate of the historic reading
      expect(report).toMatchObject({ accepted: true, created: 5, skipped: 1, skippedByReason: { duplicate: 1 } });
      expect(await valuesAt(patient)).toEqual(['08:00 104', '08:07 109', '08:15 111', '08:15 130', '08:30 120']);
      // the historic readings in one chunk and the scans in later ones: the store's lookup decides the same
      const chunked = await newPatient();
      expect(await service({ chunkSize: 3 }).ingest({ text: csv([...historic, ...scans]) }, { patient: chunked, timeZone: 'UTC' }))
        .toMatchObject({ created: 5, skipped: 1 });
      expect(await service().ingest({ text: csv([...historic, ...scans]) }, { patient, timeZone: 'UTC' })).toMatchObject({ created: 0, unchanged: 5, corrected: 0, skipped: 1 });
    });

    // What an import before 2026-12 stored: a scan under the identifier of a historic reading of its minute.
    const storeAsBefore = async (patient: string, time: string): Promise<void> => {
      const { records } = await readCgm({ text: csv(scans) }, { timeZone: 'UTC' });
      const rec = records.find((r): r is GlucoseRecord => r.kind === 'glucose' && r.time.slice(11, 16) === time)!;
      const { scan, ...before } = rec;
      expect(scan).toBe(true);
      const device = (await observationsOf(patient))[0]?.device as Reference<Device> | undefined;
      await repository.create<Observation>(toObservation(before, { patient: `Patient/${patient}` }, device).resource);
    };

    test('one stored before under the historic identifier is matched, not stored twice; the scans dropped then are added', async () => {
      const patient = await newPatient();
      await service().ingest({ text: csv(historic) }, { patient, timeZone: 'UTC' });
      await storeAsBefore(patient, '08:07');
      expect(await valuesAt(patient)).toEqual(['08:00 104', '08:07 109', '08:15 111', '08:30 120']);
      const report = await service().ingest({ text: csv([...historic, ...scans]) }, { patient, timeZone: 'UTC' });
      expect(report).toMatchObject({ accepted: true, created: 1, unchanged: 4, corrected: 0, skipped: 1 });
      expect(await valuesAt(patient)).toEqual(['08:00 104', '08:07 109', '08:15 111', '08:15 130', '08:30 120']);
    });

    test.each([[2000], [1]])('a scan stored before in place of its minute\'s historic reading (listed first) gets its own resource as the historic one is restored (chunks of %i)', async (chunkSize) => {
      const patient = await newPatient();
      await service().ingest({ text: csv([historic[0]!]) }, { patient, timeZone: 'UTC' });
      await storeAsBefore(patient, '08:15'); // 130 under the identifier the historic 111 has
      // in chunks of 1 the scan is taken for the stored resource before the historic reading shows it is not
      const report = await service({ chunkSize }).ingest({ text: csv([scans[1]!, ...historic]) }, { patient, timeZone: 'UTC' });
      expect(report).toMatchObject({ accepted: true, created: 2, corrected: 1, unchanged: 1 });
      expect(await valuesAt(patient)).toEqual(['08:00 104', '08:15 111', '08:15 130', '08:30 120']);
    });
  });

  test('the bulk identifier lookup matches system|value exactly, among thousands of values', async () => {
    const patient = await newPatient();
    await repository.create<Observation>({
      resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: `Patient/${patient}` },
      identifier: [{ system: 'urn:test:a', value: 'Value-1' }],
    });
    const values = Array.from({ length: 3000 }, (_, i) => `urn:test:b|v${i}`);
    const search = (extra: string) => repository.search({
      resourceType: 'Observation', filters: [{ code: 'identifier', operator: Operator.EQUALS, value: [...values, extra].join(',') }], count: 10, offset: 0,
    });
    expect((await search('urn:test:a|value-1')).resources).toHaveLength(1); // token matching is case-insensitive
    expect((await search('urn:test:b|Value-1')).resources).toHaveLength(0); // another system
    expect((await search('urn:test:a|Value-10')).resources).toHaveLength(0);
    expect((await search('Value-1')).resources).toHaveLength(1); // code only, any system
  });
});
