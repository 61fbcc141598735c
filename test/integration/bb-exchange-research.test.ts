/**
 * Black-box checks of research exports (HIPAA Safe Harbor style de-identification, 45 CFR
 * 164.514(b)(2)) over HTTP with auth on: what leaves in the files, and what a study may select by.
 * A study must not be able to pick a person out by who they are (name, address, telecom, exact
 * birth date, free text) and learn their pseudonym; nothing identifying may leave in the files.
 */
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Device, Observation, Organization, Patient } from '@medplum/fhirtypes';
import request from 'supertest';
import { Deidentifier, studyKey } from '../../src/exchange/deidentify.js';
import { researchMaySelectBy } from '../../src/exchange/export.js';
import { canonicalResourceText } from '../../src/ledger/canonical.js';
import { seal } from '../../src/repository/embedded/keys.js';
import { keyRingOf } from '../support/tamper.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { DAY, grant, person, registerIdentity } from './consent-helpers.js';

/**
 * The text of export lines with the study's pseudonyms (40 hex digits of an HMAC, deidentify.ts)
 * blanked out: a digest holds any run of digits by chance ("…84d1925825…" failed the birth-year
 * check once in CI), and a pseudonym is no identifier. What is searched for a leak is the rest.
 */
const PSEUDONYM = /\b[0-9a-f]{40}\b/g;
const withoutPseudonyms = (text: string): string => text.replace(PSEUDONYM, '<pseudonym>');

describe('research export: de-identification and selection (black box)', () => {
  let t: TestApp;
  let ana: string;
  let old: string;
  let study: string;
  let token: string;
  const now = Date.now();
  const ids: Record<string, string> = {};

  const kickOff = (url: string) => request(t.app.http).get(url)
    .set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'HRESCH').set('Prefer', 'respond-async').set('Accept', 'application/fhir+json');

  /** Runs a research export to the end and answers every file's lines, by type. */
  async function exportOf(url: string): Promise<Record<string, string[]>> {
    const kick = await kickOff(url);
    expect(kick.status).toBe(202);
    const job = new URL(kick.headers['content-location']!).searchParams.get('_job')!;
    expect((await t.app.exchange.exports.whenDone(job, 50))?.status).toBe('completed');
    const manifest = await request(t.app.http).get(`/fhir/$export-status?_job=${job}`).set('Authorization', `Bearer ${token}`);
    expect(manifest.status).toBe(200);
    const out: Record<string, string[]> = {};
    for (const f of [...manifest.body.output, ...manifest.body.error] as { type: string; url: string }[]) {
      const res = await request(t.app.http).get(f.url.replace(/^https?:\/\/[^/]+/, '')).set('Authorization', `Bearer ${token}`).buffer(true)
        .parse((r, cb) => {
          let data = '';
          r.on('data', (c: Buffer) => { data += c.toString(); });
          r.on('end', () => cb(null, data));
        });
      expect(res.status).toBe(200);
      out[f.type] = (res.body as string).trim().split('\n');
    }
    return out;
  }

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on', GLUCOGUARD_EXPORT_RETRY_AFTER: '1' });
    study = (await t.app.repository.create<Organization>({ resourceType: 'Organization', name: 'Study 7' })).resource.id!;
    await registerIdentity(t.app, `Organization/${study}`);
    const patient = (family: string, birthDate: string): Patient => ({
      resourceType: 'Patient', name: [{ family, given: ['Ana'] }], birthDate, gender: 'female',
      identifier: [{ system: 'urn:mrn', value: `MRN-${family}` }], telecom: [{ system: 'phone', value: '555-0100' }],
      address: [{ line: ['1 Main St'], city: 'Springfield', postalCode: '02139' }],
    });
    ana = (await t.app.repository.create(patient('Rivera', '1950-04-02'))).resource.id!;
    old = (await t.app.repository.create(patient('Elder', '1925-06-15'))).resource.id!;
    const doc = await person(t.app, 'Practitioner', 'Osei');
    for (const p of [ana, old]) {
      const device = (await t.app.repository.create<Device>({
        resourceType: 'Device', status: 'active', patient: { reference: `Patient/${p}` }, serialNumber: `SN-${p}`,
        udiCarrier: [{ deviceIdentifier: 'UDI-DI-1', carrierHRF: `(01)UDI-${p}` }], deviceName: [{ name: 'Ana\'s sensor', type: 'user-friendly-name' }],
        url: `https://devices.example/${p}`,
      })).resource;
      ids[`device-${p}`] = device.id!;
      const obs = (await t.app.repository.create<Observation>({
        resourceType: 'Observation', status: 'final', identifier: [{ system: 'urn:reading', value: `R-${p}` }],
        code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] }, subject: { reference: `Patient/${p}` },
        device: { reference: `Device/${device.id}` },
        // a reference by identifier only, with a display: the display names a person
        performer: [{ identifier: { system: 'urn:npi', value: '1234567893' }, display: 'Dr. Kwame Osei' }, { reference: `Practitioner/${doc}`, display: 'Dr. Kwame Osei' }],
        effectiveDateTime: new Date(now - 2 * DAY).toISOString(),
        valueQuantity: { value: 120, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
        note: [{ text: 'Ana Rivera called' }],
      })).resource;
      ids[`obs-${p}`] = obs.id!;
      expect((await grant(t.app, {
        patient: p, actor: `Organization/${study}`, accessTo: now + DAY, dataFrom: now - 10 * DAY, dataTo: now, purposes: ['HRESCH'],
        classes: ['Observation', 'Patient', 'Device'],
      })).status).toBe(201);
    }
    token = t.app.smart.tokens.signAccessToken({ gid: randomUUID(), clientId: 'study-client', sub: 'study-client', fhirUser: `Organization/${study}`, scopes: ['system/*.rs'] }).token;
  }, 120_000);
  afterAll(async () => {
    await t?.close();
  });

  test('no direct identifier or free text leaves in the files', async () => {
    const files = await exportOf('/fhir/Patient/$export?_type=Patient,Observation,Device');
    const all = withoutPseudonyms(Object.values(files).flat().join("\n"));
    for (const leak of [ana, old, 'Rivera', 'Elder', 'MRN-', '555-0100', 'Main St', 'Springfield', '02139', 'SN-', 'UDI-', 'sensor', 'devices.example',
      'R-', 'Kwame', 'Osei', '1234567893', '1950-04-02', ids[`obs-${ana}`]!, ids[`device-${ana}`]!]) {
      expect({ leak, found: all.includes(leak) }).toEqual({ leak, found: false });
    }
  }, 60_000);

  test('a birth year that shows an age over 89 does not leave (Safe Harbor: aggregated as 90 or older)', async () => {
    const files = await exportOf('/fhir/Patient/$export?_type=Patient');
    const patients = files.Patient!.map((l) => JSON.parse(l) as Patient);
    expect(patients).toHaveLength(2);
    const years = patients.map((p) => p.birthDate);
    expect(years).toContain('1950');
    expect(years.filter((y) => y !== undefined && Number(y) <= new Date().getUTCFullYear() - 90)).toEqual([]);
    for (const p of patients) expect(p.id).toMatch(/^[0-9a-f]{40}$/); // pseudonyms only, blanked below
    expect(withoutPseudonyms(JSON.stringify(files))).not.toContain('1925');
  }, 60_000);

  test('a _typeFilter cannot pick a person out by name, address, telecom, exact birth date or free text', async () => {
    const enc = encodeURIComponent;
    const filters = [
      'Patient?name=Rivera', 'Patient?family=Rivera', 'Patient?given=Ana', 'Patient?address-postalcode=02139', 'Patient?address=Springfield',
      'Patient?phone=555-0100', 'Patient?telecom=555-0100', 'Patient?birthdate=1950-04-02',
      'Observation?code:text=Rivera', 'Device?device-name=sensor',
      `Patient?_has:Observation:patient:identifier=${`urn:reading|R-${ana}`}`, `Patient?_has:Observation:patient:_id=${ids[`obs-${ana}`]}`,
      `Patient?_has:Device:patient:identifier=x`,
    ];
    for (const f of filters) {
      const type = f.slice(0, f.indexOf('?'));
      const res = await kickOff(`/fhir/Patient/$export?_type=${type}&_typeFilter=${enc(f)}`);
      expect({ f, status: res.status }).toEqual({ f, status: 403 });
      expect(res.body.resourceType).toBe('OperationOutcome');
    }
    // what was measured is still a fine filter
    expect((await kickOff(`/fhir/Patient/$export?_type=Observation&_typeFilter=${enc('Observation?code=http://loinc.org|99504-3')}`)).status).toBe(202);
    expect((await kickOff(`/fhir/Patient/$export?_type=Patient&_typeFilter=${enc('Patient?gender=female')}`)).status).toBe(202);
  }, 60_000);

  test('with date shifting on, a research _typeFilter cannot select by a real date (it would undo the shift); codes still select', () => {
    // the app above has loaded the search parameter definitions
    expect(researchMaySelectBy('Observation', 'date', false)).toBe(true);
    expect(researchMaySelectBy('Observation', 'date', true)).toBe(false);
    expect(researchMaySelectBy('Observation', 'code-value-date', true)).toBe(false);
    expect(researchMaySelectBy('Observation', 'code', true)).toBe(true);
    expect(researchMaySelectBy('Observation', 'code-value-quantity', true)).toBe(true);
    expect(researchMaySelectBy('Observation', 'code-value-string', false)).toBe(false);
    expect(researchMaySelectBy('Observation', 'value-string', false)).toBe(false);
    expect(researchMaySelectBy('Patient', 'death-date', false)).toBe(false);
  });

  test('the error file of a research export names withheld versions by their pseudonyms, not their real ids', async () => {
    // one of ana's readings, committed and anchored, then rewritten in the store: the integrity check withholds and reports it
    const obs = (await t.app.repository.create<Observation>({
      resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] }, subject: { reference: `Patient/${ana}` },
      effectiveDateTime: new Date(now - 3 * DAY).toISOString(), valueQuantity: { value: 140, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
    })).resource;
    await t.app.ledger.anchorer.flush();
    const db = new Database(path.join(t.dataDir, 'store', 'glucoguard.db'));
    try {
      const body = seal(keyRingOf(db, t.dataDir).keyFor(ana).key, Buffer.from(canonicalResourceText({ ...obs, valueQuantity: { ...obs.valueQuantity, value: 417 } })), `Observation/${obs.id}/1`);
      expect(db.prepare('UPDATE versions SET body = ? WHERE type = ? AND id = ? AND version = 1').run(body, 'Observation', obs.id).changes).toBe(1);
    } finally {
      db.close();
    }
    t.app.readCache?.clear();
    const files = await exportOf('/fhir/Patient/$export?_type=Observation');
    const errors = files.OperationOutcome!.join('\n');
    expect(errors).toContain('integrity-failed');
    expect(errors).not.toContain(obs.id!);
    expect(errors).toMatch(/Observation\/[0-9a-f]{40} version 1/);
  }, 60_000);
});

describe('de-identification of what the export tests above do not store (Deidentifier alone)', () => {
  const d = new Deidentifier(studyKey(Buffer.alloc(32, 3).toString('base64'), 'study-bb'), { now: () => Date.UTC(2026, 5, 1) });

  test('report conclusions, scanned reports, instructions, audit network addresses and non-Type/id references do not leave', () => {
    const out = JSON.stringify([
      d.apply({
        resourceType: 'DiagnosticReport', id: 'dr-1', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '97506-0' }] },
        subject: { reference: 'Patient/p1' }, conclusion: 'Ana Rivera is well', effectiveDateTime: '2026-01-02',
        presentedForm: [{ contentType: 'application/pdf', data: 'QW5hIFJpdmVyYQ==', url: 'https://ehr.example/docs/ana.pdf', title: 'Ana Rivera AGP' }],
        performer: [{ reference: 'urn:oid:2.16.840.1.113883.19.5.99999', display: 'Springfield Clinic' }],
        result: [{ id: 'ana-rivera-result-1', reference: 'Observation/o1' }],
      }),
      d.apply({
        resourceType: 'ServiceRequest', id: 'sr-1', status: 'active', intent: 'order', subject: { reference: 'Patient/p1' },
        patientInstruction: 'Call Ana at 555-0100', requester: { reference: 'Practitioner?identifier=urn:npi|1234567893' },
        requisition: { system: 'urn:lab:requisition', value: 'REQ-778899' },
        performer: [{ identifier: { system: 'urn:npi', value: 'NPI-1234567893' } }],
        // an Identifier under a name this code does not know (a later FHIR version, a local element)
        ...({ subjectIdentifier: { system: 'urn:mrn', value: 'MRN-5551212' } } as object),
      }),
      d.apply({
        resourceType: 'AuditEvent', id: 'ae-1', type: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110110' }, recorded: '2026-01-02T00:00:00Z',
        agent: [{ requestor: true, altId: 'ana.rivera', network: { address: '203.0.113.7', type: '2' }, who: { reference: 'Patient/p1' } }],
        source: { site: 'ana-laptop', observer: { reference: 'Device/d1' } },
        entity: [{ what: { reference: 'Patient/p1' }, query: 'cGF0aWVudC5uYW1lPVJpdmVyYQ==', description: 'Ana Rivera', detail: [{ type: 'x', valueBase64Binary: 'QW5h' }] }],
      }),
    ]);
    for (const leak of ['Ana', 'Rivera', 'QW5h', 'ehr.example', '2.16.840', 'Springfield', '555-0100', '1234567893', 'ana.rivera', 'ana-rivera', 'REQ-778899', 'MRN-5551212', 'NPI-1234567893', '203.0.113.7', 'ana-laptop', 'cGF0']) {
      expect({ leak, found: out.includes(leak) }).toEqual({ leak, found: false });
    }
    // what a reference or display left behind is dropped, not an empty element
    expect(out).not.toContain('{}');
  });

  test('an Age of 90 years or more becomes the one category >= 90 a; younger ages stay', () => {
    const age = (value: number, code: string) => ({ value, unit: code, system: 'http://unitsofmeasure.org', code });
    const condition = (onsetAge: object) => d.apply({ resourceType: 'Condition', id: 'c', subject: { reference: 'Patient/p1' }, onsetAge } as never) as { onsetAge?: object };
    expect(condition(age(93, 'a')).onsetAge).toEqual({ ...age(90, 'a'), comparator: '>=' });
    expect(condition(age(1100, 'mo')).onsetAge).toEqual({ ...age(90, 'a'), comparator: '>=' });
    expect(condition(age(89, 'a')).onsetAge).toEqual(age(89, 'a'));
    // the year of birth goes when it shows 90 or more (born 1936, in 2026: 89 or 90)
    expect(d.apply({ resourceType: 'Patient', id: 'p1', birthDate: '1936-12-31' }).birthDate).toBeUndefined();
    expect(d.apply({ resourceType: 'Patient', id: 'p1', birthDate: '1937-01-01' }).birthDate).toBe('1937');
  });
});
