/**
 * Property-based leak test of consent enforcement (issue 6: "no path shows anything the patient
 * did not grant"). One small store — patients A, B and C with CGM readings inside and outside a
 * data period, other codes, panels (hasMember), DiagnosticReports (result), Devices
 * (Observation.device), MedicationAdministrations, Consents, AuditEvents, contained resources,
 * corrected and deleted versions, a reading with no patient link — and practitioners granted
 * access by A only. Requests come from a grammar (read, vread, history at every level, GET and POST
 * searches with patient/date/code/_id/_lastUpdated/_count/_sort/_include/_revinclude/:iterate/_has/
 * chains/_summary/_elements/_total/_contained, paging through `next`, batch and transaction Bundles
 * of GETs, $everything, $lastn, $cgm-summary, $cgm-agp, $meta), sent as one of five requesters
 * (a CGM-readings-only grantee, a broader grantee, each also EHR-launched with B in context, and a
 * registered practitioner with no grant) with a granted or other purpose of use, through the HTTP
 * edge (supertest against a server on 127.0.0.1:0) and in-process through `app.fhir.handle` with
 * the access context the HTTP edge would build from the verified token.
 *
 * On every response: no 5xx; every resource anywhere in the body is a stored version that the
 * grant permits — computed here from the fixture and the grant terms, never by the product's
 * decision code; contained resources linked to a patient pass the grant on their own; no id of a
 * resource the requester may not see appears anywhere (links aside, which echo the request);
 * no `total`; a `next` link leads to more visible data and is refused (400) to anyone else;
 * `$cgm-agp` counts no more readings than are permitted; a request stating a research purpose is
 * refused (403) whatever is granted (research data leaves de-identified, by `$export` only); a
 * resource whose time is not wholly inside the data period, or cannot be placed in it, is never
 * shown; and a request about an id the requester may not see answers exactly like the same request
 * about an id that was never stored (status, issue codes, diagnostics, header names). fast-check
 * prints the shrunk counterexample on failure.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import type { Bundle, Observation, OperationOutcome, Reference, Resource } from '@medplum/fhirtypes';
import fc from 'fast-check';
import request from 'supertest';
import { withPurpose } from '../../src/consent/requester.js';
import type { FhirRequest, FhirResponse } from '../../src/fhir/types.js';
import type { HistoryEntry } from '../../src/repository/port.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { DAY, grant, patientToken, person, practitionerToken, registerIdentity } from '../integration/consent-helpers.js';
import { agpOf } from '../support/agp.js';

/** Deterministic by default; `CONSENT_FUZZ_SEED` / `CONSENT_FUZZ_RUNS` (in-process runs) explore further by hand. */
const SEED = Number(process.env.CONSENT_FUZZ_SEED ?? 6006);
const RUNS = { inProcess: Number(process.env.CONSENT_FUZZ_RUNS ?? 8000), http: Math.ceil(Number(process.env.CONSENT_FUZZ_RUNS ?? 8000) / 10) };
const LOINC = 'http://loinc.org';
const CGM = '99504-3';
const now = Date.now();
const iso = (t: number): string => new Date(t).toISOString();
const ago = (days: number, minutes = 0): string => iso(now - days * DAY + minutes * 60_000);
/** The granted data period: 10 days ago to 2 days ago (readings 12 and 1 day old fall outside). */
const DATA_FROM = now - 10 * DAY;
const DATA_TO = now - 2 * DAY;
/** C's research grant to the broad grantee covers 13 to 8 days ago (C's readings 12 and 9 days old). */
const C_FROM = now - 13 * DAY;
const C_TO = now - 8 * DAY;

/** One active grant to a requester, as the test reads the patient's Consent (not the product's decision code). */
interface GrantSpec {
  patient: string;
  classes: Set<string>;
  /** `system|code`; undefined = every code. */
  codes?: Set<string>;
  from: number;
  to: number;
  purposes: Set<string>;
}

/** What a requester may see when stating one purpose of use. */
interface View {
  grants: GrantSpec[];
  /** `type/id/versionId` of every stored version the grants permit. */
  permitted: Set<string>;
  /** Ids that may appear in no body (ids not mentioned by any permitted version). */
  forbiddenIds: string[];
}

interface Requester {
  name: string;
  token: string;
  /** Its active grants (a grant whose access window has not begun is not one). */
  grants: GrantSpec[];
  views: Map<string, View>;
}

let t: TestApp;
/** Base URL of the app's HTTP server (the HTTP-edge property). */
let base = '';
const ids: Record<string, string> = {};
/** Every stored version: `type/id` → versions in order (resource undefined for a deletion). */
const versions = new Map<string, { versionId: string; resource?: Resource }[]>();
const requesters: Requester[] = [];
const stats = new Map<string, number>();
const count = (k: string): void => {
  stats.set(k, (stats.get(k) ?? 0) + 1);
};

let readingsMade = 0;
function reading(patient: string | undefined, when: string, extra: Partial<Observation> = {}, code = CGM): Observation {
  return {
    resourceType: 'Observation', status: 'final',
    code: { coding: [{ system: LOINC, code }] },
    ...(patient ? { subject: { reference: `Patient/${patient}` } } : {}),
    effectiveDateTime: when,
    valueQuantity: { value: 100 + (readingsMade++ % 80), unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
    ...extra,
  };
}

// ---- the grant, read independently ---------------------------------------------------------------

const PATIENT_REF = /^Patient\/([A-Za-z0-9\-.]{1,64})$/;

/** The patients a resource is about: its own id for a Patient, else the Patient references in its patient-link elements. */
function patientLinks(r: Record<string, unknown>): string[] {
  if (r.resourceType === 'Patient') return [String(r.id)];
  const refs: unknown[] = [];
  for (const field of ['subject', 'patient', 'performer', 'agent', 'entity']) {
    const v = r[field];
    for (const x of Array.isArray(v) ? v : [v]) {
      if (!x || typeof x !== 'object') continue;
      const o = x as Record<string, { reference?: string } | string | undefined>;
      refs.push(typeof o.reference === 'string' ? o.reference : undefined, (o.who as { reference?: string } | undefined)?.reference,
        (o.what as { reference?: string } | undefined)?.reference, (o.actor as { reference?: string } | undefined)?.reference);
    }
  }
  return [...new Set(refs.flatMap((ref) => (typeof ref === 'string' ? [PATIENT_REF.exec(ref)?.[1]] : [])).filter((x): x is string => !!x))];
}

function codesOf(r: Record<string, unknown>): string[] {
  const concept = (r.code ?? r.medicationCodeableConcept) as { coding?: { system?: string; code?: string }[] } | undefined;
  return (concept?.coding ?? []).map((c) => `${c.system}|${c.code}`);
}

/** The types whose data is about a time, and the elements that carry it. */
const TIME_OF: Record<string, string[]> = {
  Observation: ['effectiveDateTime', 'effectiveInstant', 'effectivePeriod', 'effectiveTiming'], DiagnosticReport: ['effectiveDateTime', 'effectivePeriod'],
  MedicationAdministration: ['effectiveDateTime', 'effectivePeriod'], AuditEvent: ['recorded'],
};

/**
 * The span a resource's data is about, as the grant's data period is held against it: its time
 * elements from the earliest start to the latest end (a Period needs both ends; the fixture's
 * times are full instants); 'unknown' when one cannot be placed (a Timing, an open Period) or the
 * type is about a time and carries none; undefined for a timeless type.
 */
function effectiveOf(r: Record<string, unknown>): { from: number; to: number } | 'unknown' | undefined {
  const elements = TIME_OF[String(r.resourceType)];
  if (!elements) return undefined;
  let from = Infinity;
  let to = -Infinity;
  for (const e of elements) {
    const v = r[e];
    if (v === undefined) continue;
    const [start, end] = typeof v === 'string' ? [v, v] : e.endsWith('Period') ? [(v as { start?: string }).start, (v as { end?: string }).end] : [undefined, undefined];
    if (!start || !end) return 'unknown';
    from = Math.min(from, Date.parse(start));
    to = Math.max(to, Date.parse(end));
  }
  return from === Infinity ? 'unknown' : { from, to };
}

/**
 * Do the grants permit this resource (with its contained resources)? Every patient it is about
 * must have granted it: that patient's grant names its type and code and its data period holds the
 * resource's whole span of time (a timeless type passes only a grant naming it — all grants here
 * name types; a time that cannot be placed never passes); nothing without a patient link.
 * Contained resources about a patient pass on their own.
 */
function permits(grants: GrantSpec[], r: Record<string, unknown>): boolean {
  const links = patientLinks(r);
  if (links.length === 0 || !links.every((p) => grants.some((g) => g.patient === p && allows(g, r)))) return false;
  const contained = (r.contained ?? []) as Record<string, unknown>[];
  return contained.every((c) => patientLinks(c).length === 0 || permits(grants, c));
}

function allows(g: GrantSpec, r: Record<string, unknown>): boolean {
  if (!g.classes.has(String(r.resourceType))) return false;
  if (g.codes && !codesOf(r).some((c) => g.codes!.has(c))) return false;
  const when = effectiveOf(r);
  if (when === 'unknown') return false;
  return when === undefined || (when.from >= g.from && when.to <= g.to);
}

// ---- set-up --------------------------------------------------------------------------------------

async function loadVersions(): Promise<void> {
  versions.clear();
  const all = await t.app.repository.history({ count: 100_000, offset: 0 });
  for (const e of [...all.entries].reverse()) {
    const key = `${e.resourceType}/${e.id}`;
    if (!versions.has(key)) versions.set(key, []);
    versions.get(key)!.push({ versionId: e.versionId, ...(e.resource ? { resource: e.resource } : {}) });
  }
}

/** The purpose code of an `X-Purpose-Of-Use` header (IUA purpose_of_use: a v3 code, optionally system|code), '' for none. */
function purposeOf(header: string): string {
  const code = header.trim().replace(/^http:\/\/terminology\.hl7\.org\/CodeSystem\/v3-ActReason\|/, '');
  return /^[A-Z]{2,10}$/.test(code) ? code : '';
}

/**
 * Research (v3 ActReason HRESCH and the codes under it): data asked for under it leaves only
 * de-identified, by bulk export and subscriptions; the REST API refuses it (403) whatever is granted.
 */
const RESEARCH = new Set(['HRESCH', 'BIORCH', 'CLINTRCH', 'CLINTRCHNPC', 'CLINTRCHPC', 'PRECLINTRCH', 'DSRCH', 'POARCH', 'TRANSRCH']);
const isResearch = (header: string): boolean => RESEARCH.has(purposeOf(header));

/** The requester's grants that name this purpose (what they permit, on any path). */
function grantedFor(who: { grants: GrantSpec[] }, header: string): GrantSpec[] {
  return who.grants.filter((g) => g.purposes.has(purposeOf(header)));
}

/** What the requester may see through the REST API with this purpose-of-use header (worked out once per purpose). */
function view(who: Requester, header: string): View {
  const purposeCode = purposeOf(header);
  let v = who.views.get(purposeCode);
  if (v) return v;
  const grants = isResearch(header) ? [] : grantedFor(who, header);
  const permitted = new Set<string>();
  const mentioned = new Set<string>();
  for (const [key, vs] of versions) {
    for (const version of vs) {
      if (version.resource && permits(grants, version.resource as unknown as Record<string, unknown>)) {
        permitted.add(`${key}/${version.versionId}`);
        for (const m of JSON.stringify(version.resource).matchAll(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g)) mentioned.add(m[0]);
      }
    }
  }
  v = { grants, permitted, forbiddenIds: [...versions.keys()].map((k) => k.split('/')[1]!).filter((id) => !mentioned.has(id)) };
  who.views.set(purposeCode, v);
  return v;
}

function requesterOf(name: string, token: string, grants: GrantSpec[]): Requester {
  return { name, token, grants, views: new Map() };
}

beforeAll(async () => {
  t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
  const repo = t.app.repository;
  const a = await person(t.app, 'Patient', 'Alpha');
  const b = await person(t.app, 'Patient', 'Bravo');
  const c = await person(t.app, 'Patient', 'Charlie');
  Object.assign(ids, { A: a, B: b, C: c });
  const put = async (name: string, r: Resource): Promise<Resource> => {
    const stored = (await repo.create(r)).resource;
    ids[name] = stored.id!;
    return stored;
  };
  for (const [p, pid] of [['A', a], ['B', b], ['C', c]] as const) {
    const dev = await put(`${p}.device`, { resourceType: 'Device', status: 'active', patient: { reference: `Patient/${pid}` },
      deviceName: [{ name: `CGM of ${p}`, type: 'user-friendly-name' }] } as Resource);
    const days = [12, 9, 6, 4, 1];
    for (const [i, d] of days.entries()) await put(`${p}.r${i}`, reading(pid, ago(d), { device: { reference: `Device/${dev.id}` } }));
    await put(`${p}.other`, reading(pid, ago(5), {}, '2339-0'));
    await put(`${p}.panel`, reading(pid, ago(5, 1), { hasMember: [{ reference: `Observation/${ids[`${p}.r1`]}` }, { reference: `Observation/${ids[`${p}.r2`]}` }] }, '97507-8'));
    await put(`${p}.cgmPanel`, reading(pid, ago(5, 2), { hasMember: [{ reference: `Observation/${ids[`${p}.other`]}` }] }));
    await put(`${p}.report`, { resourceType: 'DiagnosticReport', status: 'final', code: { coding: [{ system: LOINC, code: '97506-0' }] },
      subject: { reference: `Patient/${pid}` }, effectiveDateTime: ago(5), result: [{ reference: `Observation/${ids[`${p}.r1`]}` }, { reference: `Observation/${ids[`${p}.r2`]}` }] } as Resource);
    await put(`${p}.med`, { resourceType: 'MedicationAdministration', status: 'completed', subject: { reference: `Patient/${pid}` },
      medicationCodeableConcept: { coding: [{ system: 'http://www.nlm.nih.gov/research/umls/rxnorm', code: '253182' }] }, effectiveDateTime: ago(5) } as Resource);
    await put(`${p}.audit`, { resourceType: 'AuditEvent', type: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110110' }, recorded: ago(5),
      agent: [{ who: { reference: `Patient/${pid}` }, requestor: true }], source: { observer: { display: 'test' } },
      entity: [{ what: { reference: `Patient/${pid}` } }] } as Resource);
    // Deleted: the read answers Gone to those who may see it, and nothing to those who may not.
    const gone = await put(`${p}.deleted`, reading(pid, ago(6, 3)));
    await repo.delete('Observation', gone.id!);
  }
  // A's special cases.
  await put('A.containedDevice', reading(a, ago(5, 4), { contained: [{ resourceType: 'Device', id: 'd1', status: 'active', patient: { reference: `Patient/${a}` } } as Resource], device: { reference: '#d1' } }));
  await put('A.containedB', reading(a, ago(5, 5), { contained: [{ resourceType: 'Observation', id: 'c1', status: 'final', code: { text: 'x' }, subject: { reference: `Patient/${b}` } } as Resource] }));
  await put('A.containedPlain', reading(a, ago(5, 6), { contained: [{ resourceType: 'Organization', id: 'o1', name: 'Lab' } as Resource], performer: [{ reference: '#o1' }] }));
  await put('A.performerB', reading(a, ago(5, 7), { performer: [{ reference: `Patient/${b}` }] }));
  // Times that are spans, or that cannot be placed in the data period (10 to 2 days ago).
  const untimed = (time: Partial<Observation>): Observation => {
    const { effectiveDateTime: _instant, ...rest } = reading(a, ago(5));
    return { ...rest, ...time };
  };
  await put('A.spanIn', untimed({ effectivePeriod: { start: ago(5, 10), end: ago(4) } }));
  await put('A.spanOut', untimed({ effectivePeriod: { start: ago(3, 10), end: ago(1) } }));
  await put('A.endOnly', untimed({ effectivePeriod: { end: ago(5, 11) } }));
  await put('A.issuedOnly', untimed({ issued: ago(5, 12) }));
  await put('A.timing', untimed({ effectiveTiming: { event: [ago(5, 13)] } }));
  const movedIn = await put('A.movedIn', reading(a, ago(20)));
  await repo.update({ ...movedIn, effectiveDateTime: ago(3) } as Resource);
  const movedOut = await put('A.movedOut', reading(a, ago(3, 8)));
  await repo.update({ ...movedOut, effectiveDateTime: ago(15) } as Resource);
  await put('orphan', reading(undefined, ago(5, 9)));
  await put('org', { resourceType: 'Organization', name: 'Clinic' } as Resource);

  const period = { accessTo: now + 3 * DAY, dataFrom: DATA_FROM, dataTo: DATA_TO };
  const docs: { name: string; classes: string[]; codes?: string[] }[] = [
    { name: 'cgm-only', classes: ['Observation'], codes: [`${LOINC}|${CGM}`] },
    { name: 'broad', classes: ['Observation', 'Patient', 'Device', 'DiagnosticReport'] },
  ];
  for (const d of docs) {
    const doc = await person(t.app, 'Practitioner', d.name);
    await registerIdentity(t.app, `Practitioner/${doc}`);
    const res = await grant(t.app, { ...period, patient: a, actor: `Practitioner/${doc}`, classes: d.classes, ...(d.codes ? { codes: d.codes } : {}) });
    expect(res.status).toBe(201);
    ids[`doc.${d.name}`] = doc;
  }
  // The broad grantee also holds a research grant from C (Observations of another period, HRESCH
  // only) and a grant from B whose access window begins tomorrow (not active yet).
  const broad = ids['doc.broad']!;
  expect((await grant(t.app, { accessTo: now + 3 * DAY, dataFrom: C_FROM, dataTo: C_TO, patient: c, actor: `Practitioner/${broad}`, classes: ['Observation'], purposes: ['HRESCH'] })).status).toBe(201);
  expect((await grant(t.app, { ...period, accessFrom: now + DAY, patient: b, actor: `Practitioner/${broad}`, classes: ['Observation', 'Patient'] })).status).toBe(201);
  // B and C grant someone else; the practitioners above have nothing from them.
  const other = await person(t.app, 'Practitioner', 'Other');
  await registerIdentity(t.app, `Practitioner/${other}`);
  for (const p of [b, c]) expect((await grant(t.app, { ...period, patient: p, actor: `Practitioner/${other}`, classes: ['Observation'] })).status).toBe(201);

  // A practitioner with a registered identity and no grant at all.
  const stranger = await person(t.app, 'Practitioner', 'Stranger');
  await registerIdentity(t.app, `Practitioner/${stranger}`);
  ids['doc.stranger'] = stranger;

  await loadVersions();
  for (const d of docs) {
    const specs: GrantSpec[] = [{ patient: a, classes: new Set(d.classes), ...(d.codes ? { codes: new Set(d.codes) } : {}), from: DATA_FROM, to: DATA_TO, purposes: new Set(['TREAT']) }];
    if (d.name === 'broad') specs.push({ patient: c, classes: new Set(['Observation']), from: C_FROM, to: C_TO, purposes: new Set(['HRESCH']) });
    requesters.push(requesterOf(d.name, practitionerToken(t.app, ids[`doc.${d.name}`]!, undefined, ['openid', 'fhirUser', 'user/*.rs']), specs));
    // The same practitioner launched from the EHR with B in context: B's context grants nothing.
    requesters.push(requesterOf(`${d.name} (EHR launch, B in context)`, practitionerToken(t.app, ids[`doc.${d.name}`]!, b), specs));
  }
  requesters.push(requesterOf('stranger', practitionerToken(t.app, stranger, undefined, ['openid', 'fhirUser', 'user/*.rs']), []));
  // The fixture is what it claims: some of A's readings are outside the period, B's are never visible.
  const narrow = view(requesters[0]!, 'TREAT');
  expect(narrow.permitted.has(`Observation/${ids['A.r1']}/1`)).toBe(true);
  expect(narrow.permitted.has(`Observation/${ids['A.r0']}/1`)).toBe(false);
  expect(narrow.permitted.has(`Observation/${ids['A.movedIn']}/2`)).toBe(true);
  expect(narrow.forbiddenIds).toContain(ids.B);
  expect(view(requesters[2]!, 'TREAT').permitted.has(`Patient/${a}/1`)).toBe(true);
  // C's research grant covers C's readings 12 and 9 days old (de-identified by $export, refused over REST)
  const research = grantedFor(requesters[2]!, 'HRESCH');
  expect(permits(research, versionOf(`Observation/${ids['C.r0']}/1`) as unknown as Record<string, unknown>)).toBe(true);
  expect(permits(research, versionOf(`Observation/${ids['C.r1']}/1`) as unknown as Record<string, unknown>)).toBe(true);
  expect(permits(research, versionOf(`Observation/${ids['C.r2']}/1`) as unknown as Record<string, unknown>)).toBe(false);
  expect(permits(research, versionOf(`Observation/${ids['A.r1']}/1`) as unknown as Record<string, unknown>)).toBe(false);
  expect(view(requesters[2]!, 'HRESCH').permitted.size).toBe(0);
  // A's readings whose time is not wholly inside the period, or cannot be placed, are never shown
  for (const name of ['A.spanOut', 'A.endOnly', 'A.issuedOnly', 'A.timing']) expect(narrow.permitted.has(`Observation/${ids[name]}/1`)).toBe(false);
  expect(narrow.permitted.has(`Observation/${ids['A.spanIn']}/1`)).toBe(true);
  expect(view(requesters.at(-1)!, 'TREAT').permitted.size).toBe(0);
}, 120_000);

afterAll(async () => {
  await t?.close();
});

// ---- the request grammar -------------------------------------------------------------------------

type Query = Record<string, string | string[]>;
interface Req {
  method: 'GET' | 'POST';
  path: string;
  query: Query;
  body?: unknown;
  contentType?: string;
}

/** Placeholders resolved once the store exists: `@A.r1` is the id of A's second reading, `@A` patient A. */
const resolve = (s: string): string => s.replace(/@([A-Za-z.0-9-]+?)(?=[^A-Za-z.0-9-]|$)/g, (_m, name: string) => {
  if (name === 'new') return randomUUID();
  if (name.endsWith('.trunc')) return ids[name.slice(0, -6)]!.slice(0, 8);
  return ids[name] ?? name;
});

const NAMED = ['A', 'B', 'C', 'A.device', 'B.device', 'C.device', ...['A', 'B', 'C'].flatMap((p) => [0, 1, 2, 3, 4].map((i) => `${p}.r${i}`)),
  'A.other', 'B.other', 'A.panel', 'B.panel', 'A.cgmPanel', 'A.report', 'B.report', 'C.report', 'A.med', 'B.med', 'A.audit', 'B.audit',
  'A.deleted', 'B.deleted', 'A.containedDevice', 'A.containedB', 'A.containedPlain', 'A.performerB', 'A.movedIn', 'A.movedOut', 'orphan', 'org',
  'A.spanIn', 'A.spanOut', 'A.endOnly', 'A.issuedOnly', 'A.timing',
  'doc.cgm-only', 'doc.broad', 'doc.stranger'];
/** The type each named fixture is stored as. */
function typeOfName(name: string): string {
  if (/^[ABC]$/.test(name)) return 'Patient';
  if (name.endsWith('.device')) return 'Device';
  if (name.endsWith('.report')) return 'DiagnosticReport';
  if (name.endsWith('.med')) return 'MedicationAdministration';
  if (name.endsWith('.audit')) return 'AuditEvent';
  if (name === 'org') return 'Organization';
  if (name.startsWith('doc.')) return 'Practitioner';
  return 'Observation';
}
const TYPES = ['Observation', 'Patient', 'Device', 'DiagnosticReport', 'MedicationAdministration', 'AuditEvent', 'Consent', 'Practitioner', 'Organization'];

const target = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(...NAMED).map((n) => ({ type: typeOfName(n), id: `@${n}` })) },
  { weight: 1, arbitrary: fc.constantFrom(...NAMED).chain((n) => fc.constantFrom(...TYPES).map((type) => ({ type, id: `@${n}` }))) },
  { weight: 1, arbitrary: fc.constantFrom('@new', '@A.trunc', '@B.r1.trunc', 'does-not-exist').chain((id) => fc.constantFrom(...TYPES).map((type) => ({ type, id }))) },
);

const patientValue = fc.constantFrom('Patient/@A', '@A', 'Patient/@B', '@B', '@A,@B', 'Patient/@A,Patient/@C', 'Patient/@C', 'Patient/@A.trunc',
  '@A.trunc', 'Patient/@A/_history/1', 'http://127.0.0.1:8080/fhir/Patient/@A', 'Patient/@B.r1');
const day = fc.constantFrom(30, 15, 12, 10, 9, 6, 5, 4, 3, 2, 1, 0, -1);
const dateValue = fc.tuple(fc.constantFrom('ge', 'le', 'gt', 'lt', 'eq', '', 'sa', 'eb', 'ne'), day, fc.boolean())
  .map(([p, d, dateOnly]) => p + (dateOnly ? ago(d).slice(0, 10) : ago(d)));
const codeValue = fc.constantFrom(`${LOINC}|${CGM}`, CGM, '2339-0', `${LOINC}|2339-0`, `${LOINC}|97507-8`, `${LOINC}|${CGM},${LOINC}|2339-0`, `|${CGM}`);
const idValue = fc.array(fc.constantFrom(...NAMED.map((n) => `@${n}`), '@new'), { minLength: 1, maxLength: 3 }).map((xs) => xs.join(','));
const includeValue = fc.constantFrom('Observation:device', 'Observation:subject', 'Observation:patient', 'Observation:has-member', 'Observation:performer',
  'DiagnosticReport:result', 'DiagnosticReport:subject', 'Device:patient', 'MedicationAdministration:subject', 'Observation:*', '*');
const revincludeValue = fc.constantFrom('Observation:subject', 'Observation:patient', 'Observation:device', 'Observation:has-member', 'DiagnosticReport:result',
  'DiagnosticReport:patient', 'Device:patient', 'AuditEvent:patient', 'AuditEvent:entity', 'Consent:patient', 'MedicationAdministration:patient', 'Provenance:target');

/** One search parameter: [name, value]. */
const param: fc.Arbitrary<[string, string]> = fc.oneof(
  { weight: 5, arbitrary: fc.tuple(fc.constantFrom('patient', 'subject', 'subject:Patient', 'patient:missing'), patientValue) },
  { weight: 4, arbitrary: fc.tuple(fc.constantFrom('date', 'effective-time'), dateValue) },
  { weight: 3, arbitrary: fc.tuple(fc.constantFrom('code', 'code:not'), codeValue) },
  { weight: 3, arbitrary: fc.tuple(fc.constant('_id'), idValue) },
  { weight: 1, arbitrary: fc.tuple(fc.constant('_lastUpdated'), fc.constantFrom(`ge${iso(now - 3_600_000)}`, `lt${iso(now + 3_600_000)}`, `gt${iso(now + DAY)}`)) },
  { weight: 3, arbitrary: fc.tuple(fc.constant('_count'), fc.constantFrom('0', '1', '2', '3', '5', '50')) },
  { weight: 2, arbitrary: fc.tuple(fc.constant('_sort'), fc.constantFrom('date', '-date', '_id', '-_lastUpdated', 'code', '-value-quantity', 'patient', 'birthdate')) },
  { weight: 3, arbitrary: fc.tuple(fc.constantFrom('_include', '_include:iterate'), includeValue) },
  { weight: 3, arbitrary: fc.tuple(fc.constantFrom('_revinclude', '_revinclude:iterate'), revincludeValue) },
  { weight: 2, arbitrary: fc.tuple(fc.constantFrom('_has:Observation:patient:code', '_has:Observation:subject:_id', '_has:DiagnosticReport:result:status'), fc.constantFrom(CGM, '@B.r1', '@A.r1', 'final')) },
  { weight: 2, arbitrary: fc.tuple(fc.constantFrom('patient.name', 'subject:Patient.family', 'device.patient', 'patient._id', 'result.code'), fc.constantFrom('Bravo', 'Alpha', '@A', '@B', CGM)) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom('_summary', '_elements', '_total', '_contained', '_containedType'), fc.constantFrom('count', 'true', 'data', 'accurate', 'id,subject', 'both', 'contained')) },
  { weight: 1, arbitrary: fc.tuple(fc.constant('_total'), fc.constantFrom('accurate', 'estimate', 'none', 'all')) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom('device', 'result', 'has-member', 'performer', 'status', 'identifier'), fc.constantFrom('Device/@B.device', 'Device/@A.device', 'Observation/@B.r1', 'final', 'Patient/@B')) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom('name', 'family', 'name:contains', 'family:exact', 'gender', 'birthdate'), fc.constantFrom('Bravo', 'Alpha', 'a', 'Charlie', 'male', 'ge1900')) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom('code-value-quantity', 'combo-code-value-quantity', 'code-value-quantity:missing', 'value-quantity'),
    fc.constantFrom(`${LOINC}|${CGM}$gt100`, `${CGM}$le120||mg/dL`, `2339-0$gt0`, `${LOINC}|${CGM}$ne120`, 'true', 'false', 'gt100', `${CGM}$gt100,2339-0$gt100`)) },
);
const query = fc.array(param, { maxLength: 5 }).map((pairs) => {
  const q: Query = {};
  for (const [k, v] of pairs) q[k] = k in q ? [q[k]!].flat().concat(v) : v;
  return q;
});

const readLike: fc.Arbitrary<Req> = fc.oneof(
  { weight: 4, arbitrary: target.map(({ type, id }) => ({ method: 'GET' as const, path: `${type}/${id}`, query: {} })) },
  { weight: 2, arbitrary: fc.tuple(target, fc.constantFrom('1', '2', '3')).map(([{ type, id }, v]) => ({ method: 'GET' as const, path: `${type}/${id}/_history/${v}`, query: {} })) },
  { weight: 2, arbitrary: target.map(({ type, id }) => ({ method: 'GET' as const, path: `${type}/${id}/_history`, query: {} })) },
  { weight: 1, arbitrary: target.map(({ type, id }) => ({ method: 'GET' as const, path: `${type}/${id}/$meta`, query: {} })) },
);
const historyAll: fc.Arbitrary<Req> = fc.tuple(fc.constantFrom(...TYPES.map((x) => `${x}/_history`), '_history'), fc.constantFrom('1', '2', '5', '100'), fc.boolean())
  .map(([path, c, since]) => ({ method: 'GET', path, query: { _count: c, ...(since ? { _since: iso(now - 3_600_000) } : {}) } }));
const search: fc.Arbitrary<Req> = fc.tuple(fc.constantFrom('Observation', 'Observation', 'Observation', ...TYPES), query, fc.constantFrom('get', 'get', 'post', 'both'), query)
  .map(([type, q, how, inUrl]): Req => (how === 'get'
    ? { method: 'GET', path: type, query: q }
    : { method: 'POST', path: `${type}/_search`, query: how === 'both' ? inUrl : {}, body: q, contentType: 'application/x-www-form-urlencoded' }));
const patientId = fc.constantFrom('@A', '@B', '@C', '@new', '@A.trunc', '@A.r1');
const operation: fc.Arbitrary<Req> = fc.oneof(
  // $everything pages (`_count`); the pages its next links lead to are checked like a search's
  fc.tuple(patientId, fc.option(fc.constantFrom('Observation', 'Observation,Device', 'DiagnosticReport,Observation', 'MedicationAdministration', 'Consent', 'AuditEvent'), { nil: undefined }),
    fc.option(fc.constantFrom('1', '2', '5'), { nil: undefined }), fc.option(fc.tuple(day, day), { nil: undefined }))
    .map(([p, type, n, range]): Req => ({ method: 'GET', path: `Patient/${p}/$everything`, query: {
      ...(type ? { _type: type } : {}), ...(n ? { _count: n } : {}), ...(range ? { start: ago(Math.max(...range)).slice(0, 10), end: ago(Math.min(...range)).slice(0, 10) } : {}),
    } })),
  fc.tuple(fc.constantFrom('patient', 'subject'), patientValue, fc.constantFrom('1', '2', '5'), fc.option(codeValue, { nil: undefined })).map(([param, p, max, code]): Req => ({
    method: 'GET', path: 'Observation/$lastn', query: { [param]: p, max, ...(code ? { code } : {}) },
  })),
  fc.tuple(fc.constantFrom('$cgm-summary', '$cgm-agp'), patientId, fc.option(fc.tuple(day, day), { nil: undefined })).map(([op, p, range]): Req => ({
    method: 'GET' as const, path: `Patient/${p}/${op}`,
    query: range ? { start: ago(Math.max(...range)), end: ago(Math.min(...range) - 0.5) } : {},
  })),
);
/** Searches whose chain or `_has` fits their type, with up to two other parameters. */
const chainSearch: fc.Arbitrary<Req> = fc.tuple(
  fc.constantFrom<[string, string]>(['Observation', 'patient.name'], ['Observation', 'subject:Patient.family'], ['Observation', 'device.patient'],
    ['Observation', 'patient._id'], ['DiagnosticReport', 'result.code'], ['DiagnosticReport', 'patient.name'], ['Patient', '_has:Observation:patient:code'],
    ['Patient', '_has:Observation:subject:_id'], ['Observation', '_has:DiagnosticReport:result:status'], ['Device', '_has:Observation:device:code']),
  fc.constantFrom('Alpha', 'Bravo', '@A', '@B', '@A.r1', '@B.r1', CGM, 'final'),
  fc.array(param, { maxLength: 2 }),
).map(([[type, name], value, more]) => {
  const q: Query = { [name]: value };
  for (const [k, v] of more) q[k] = k in q ? [q[k]!].flat().concat(v) : v;
  return { method: 'GET', path: type, query: q };
});
const single = fc.oneof({ weight: 4, arbitrary: readLike }, { weight: 5, arbitrary: search }, { weight: 1, arbitrary: chainSearch }, { weight: 1, arbitrary: historyAll }, { weight: 2, arbitrary: operation });
const batch: fc.Arbitrary<Req> = fc.tuple(fc.constantFrom('batch', 'transaction'), fc.array(fc.oneof(readLike, search.filter((s) => s.method === 'GET'), operation), { minLength: 1, maxLength: 4 }))
  .map(([type, entries]) => ({
    method: 'POST', path: '', query: {}, contentType: 'application/fhir+json',
    body: { resourceType: 'Bundle', type, entry: entries.map((e, i) => ({ request: { method: 'GET', url: `${i % 2 ? 'http://127.0.0.1:8080/fhir/' : ''}${entryUrl(e)}` } })) },
  }));
/** The purpose-of-use header: TREAT (granted, also as system|code) or one that grants nothing. */
const purpose = fc.oneof({ weight: 9, arbitrary: fc.constantFrom('TREAT', 'TREAT', 'http://terminology.hl7.org/CodeSystem/v3-ActReason|TREAT') },
  { weight: 3, arbitrary: fc.constantFrom('HRESCH', ' HRESCH') }, { weight: 1, arbitrary: fc.constantFrom('', 'treat', 'TREAT,HRESCH', 'ETREAT') });

function entryUrl(r: Req): string {
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(r.query)) for (const one of [v].flat()) qs.append(k, one);
  const s = qs.toString();
  return s ? `${r.path}?${s}` : r.path;
}

function resolveReq(r: Req): Req {
  return JSON.parse(resolve(JSON.stringify(r))) as Req;
}

// ---- running a request ---------------------------------------------------------------------------

type Transport = (who: Requester, purposeOfUse: string, r: Req) => Promise<FhirResponse>;

/** Through the HTTP edge (express, body parsing, content negotiation) with supertest. */
async function overHttp(who: Requester, purposeOfUse: string, r: Req): Promise<FhirResponse> {
  const url = `/fhir/${entryUrl({ ...r, path: r.path.split('/').map(encodeURIComponent).join('/') })}`;
  let call = r.method === 'GET' ? request(base).get(url) : request(base).post(url);
  call = call.set('Authorization', `Bearer ${who.token}`);
  if (purposeOfUse) call = call.set('X-Purpose-Of-Use', purposeOfUse);
  if (r.body !== undefined) {
    const text = r.contentType === 'application/x-www-form-urlencoded' ? new URLSearchParams(Object.entries(r.body as Query).flatMap(([k, v]) => [v].flat().map((x) => [k, x]))).toString() : JSON.stringify(r.body);
    call = call.set('Content-Type', r.contentType!).send(text);
  }
  const res = await call;
  return { status: res.status, body: res.body as FhirResponse['body'], headers: res.headers as Record<string, string> };
}

async function inProcess(who: Requester, purposeOfUse: string, r: Req): Promise<FhirResponse> {
  const headers: Record<string, string | undefined> = { authorization: `Bearer ${who.token}`, ...(purposeOfUse ? { 'x-purpose-of-use': purposeOfUse } : {}) };
  if (r.contentType) headers['content-type'] = r.contentType;
  const access = withPurpose(await t.app.smart.authenticate(headers), headers);
  const req: FhirRequest = { method: r.method, path: r.path, query: r.query, headers, ...(r.body !== undefined ? { body: r.body } : {}), access };
  return t.app.fhir.handle(req);
}

/** `http://host/fhir/Type?a=b` → the in-process request the HTTP edge would build. */
function fromUrl(url: string): Req {
  const u = new URL(url);
  const query: Query = {};
  for (const [k, v] of u.searchParams) query[k] = k in query ? [query[k]!].flat().concat(v) : v;
  return { method: 'GET', path: decodeURIComponent(u.pathname.replace(/^\/fhir\/?/, '')), query };
}

// ---- the invariants ------------------------------------------------------------------------------

const CONTAINERS = new Set(['Bundle', 'OperationOutcome', 'Parameters']);

/** Every problem with one response: an empty list means it leaked nothing. */
function leaks(who: Requester, purposeOfUse: string, res: FhirResponse): string[] {
  const problems: string[] = [];
  if (res.status >= 500) problems.push(`status ${res.status}`);
  const { permitted: visible, grants, forbiddenIds } = view(who, purposeOfUse);
  const walk = (value: unknown, path: string, inContained: boolean): void => {
    if (Array.isArray(value)) {
      value.forEach((v, i) => walk(v, `${path}[${i}]`, inContained));
      return;
    }
    if (!value || typeof value !== 'object') return;
    const o = value as Record<string, unknown>;
    if (typeof o.resourceType === 'string') {
      const type = o.resourceType;
      if (type === 'Bundle' && 'total' in o) problems.push(`${path}: Bundle.total`);
      if (inContained) {
        if (patientLinks(o).length > 0 && !permits(grants, o)) problems.push(`${path}: contained ${type} not permitted`);
      } else if (!CONTAINERS.has(type)) {
        const key = `${type}/${String(o.id)}/${String((o.meta as { versionId?: string } | undefined)?.versionId)}`;
        const stored = versions.has(`${type}/${String(o.id)}`);
        // Operation outputs that are not stored (CGM summaries) must at least be about a permitted patient only.
        const derivedOk = !stored && !(o.meta as { versionId?: string } | undefined)?.versionId
          && patientLinks(o).length > 0 && patientLinks(o).every((p) => grants.some((g) => g.patient === p && g.classes.has(type)));
        if (visible.has(key)) {
          count('permitted resource shown');
          for (const p of patientLinks(o)) count(`shown: about ${nameOf(p)}`);
        }
        else if (derivedOk) count('derived resource shown');
        else problems.push(`${path}: ${stored ? 'not permitted' : 'unknown'} ${key}`);
      }
    }
    for (const [k, v] of Object.entries(o)) {
      if (k === 'link') continue; // self/next links echo the request
      walk(v, `${path}.${k}`, inContained || k === 'contained');
    }
  };
  walk(res.body, '$', false);
  const text = JSON.stringify(res.body ?? {}, (k, v: unknown) => (k === 'link' ? undefined : v));
  for (const id of forbiddenIds) if (text.includes(id)) problems.push(`body mentions ${id} (${nameOf(id)})`);
  return problems;
}

function versionOf(key: string): Resource | undefined {
  const [type, id, vid] = key.split('/');
  return versions.get(`${type}/${id}`)?.find((v) => v.versionId === vid)?.resource;
}

function nameOf(id: string): string {
  return Object.entries(ids).find(([, v]) => v === id)?.[0] ?? '?';
}

const VOLATILE_HEADERS = new Set(['date', 'x-request-id', 'content-length', 'connection', 'keep-alive']);

/** Status, issue codes and diagnostics with the asked id blanked: what a client can tell apart. */
function shape(res: FhirResponse, id: string): string {
  const body = res.body as { resourceType?: string; issue?: { severity?: string; code?: string; diagnostics?: string }[]; entry?: unknown[] } | undefined;
  const issues = (body?.issue ?? []).map((i) => `${i.severity}/${i.code}/${(i.diagnostics ?? '').replaceAll(id, '<id>')}`);
  // Header names too (an ETag or Location only for the hidden one would tell); not their per-response values.
  const headers = Object.keys(res.headers ?? {}).map((h) => h.toLowerCase()).filter((h) => !VOLATILE_HEADERS.has(h)).sort();
  return `${res.status} ${body?.resourceType ?? ''} ${issues.join(' | ')}${body?.resourceType === 'Bundle' ? ` entries=${body.entry?.length ?? 0}` : ''} headers=${headers.join(',')}`;
}

/** For read-like requests about a stored id the requester may not see: the id asked about, else undefined. */
function hiddenTarget(who: Requester, purposeOfUse: string, r: Req): string | undefined {
  const m = /^([A-Za-z]+)\/([A-Za-z0-9\-.]+)(?:\/(_history)(?:\/(\d+))?|\/\$(meta|everything|cgm-summary|cgm-agp))?$/.exec(r.path);
  if (!m || r.method !== 'GET') return undefined;
  const [, type, id, history, vid] = m;
  const vs = versions.get(`${type}/${id}`);
  if (!vs) return undefined;
  const { permitted } = view(who, purposeOfUse);
  const visible = (v: { versionId: string; resource?: Resource }): boolean => permitted.has(`${type}/${id}/${v.versionId}`);
  if (vid !== undefined) {
    const at = vs.findIndex((x) => x.versionId === vid);
    if (at < 0) return id;
    // A deletion is visible (410) to whoever could see the version it deleted.
    const judged = vs[at]!.resource ? vs[at]! : [...vs.slice(0, at)].reverse().find((x) => x.resource);
    return judged && visible(judged) ? undefined : id;
  }
  if (history) return vs.some(visible) ? undefined : id;
  // read, $meta and the patient operations: decided on the current version (the last one before a deletion).
  const current = [...vs].reverse().find((v) => v.resource);
  return current && visible(current) ? undefined : id;
}

async function check(who: Requester, purposeOfUse: string, raw: Req, send: Transport = inProcess): Promise<void> {
  const r = resolveReq(raw);
  const res = await send(who, purposeOfUse, r);
  count(`${r.path.split('/')[0] || 'bundle'} ${res.status}`);
  const problems = leaks(who, purposeOfUse, res);
  // A research purpose is refused by the REST API before anything is read: 403 for every request
  // (batch entries one by one), 404 from the CGM operations (which answer a refused Patient read so).
  if (isResearch(purposeOfUse) && r.path !== '') {
    if (res.status === 403) count('research refused');
    else if (!(/\$cgm-(summary|agp)$/.test(r.path) && res.status === 404)) problems.push(`a research purpose answered ${res.status}, not 403`);
  }
  if (problems.length) throw new Error(`${who.name} (${purposeOfUse || 'no purpose'}) ${r.method} ${entryUrl(r)} ${r.body ? JSON.stringify(r.body) : ''}\n→ ${res.status}\n${problems.join('\n')}`);
  // Oracle parameters are refused outright, not answered over filtered data.
  if (/^[A-Za-z]+(\/_search)?$/.test(r.path)) {
    const params: Query = { ...r.query };
    for (const [k, v] of Object.entries((r.body as Query | undefined) ?? {})) params[k] = k in params ? [params[k]!].flat().concat(v) : v;
    const oracle = Object.entries(params).find(([k, v]) => (k === '_summary' && [v].flat().includes('count')) || (k === '_sort' && [v].flat().some((x) => !['date', '-date', '_id', '-_id', '_lastUpdated', '-_lastUpdated', 'birthdate', '-birthdate'].includes(x))));
    if (oracle && res.status !== 400 && !(isResearch(purposeOfUse) && res.status === 403)) throw new Error(`${who.name} ${entryUrl(r)} ${JSON.stringify(r.body ?? '')}: oracle parameter ${oracle[0]} answered ${res.status}, not 400`);
    if (oracle) count('oracle parameter refused');
    // `_total` is a hint the facade never honours: a 200 has no Bundle.total (leaks() looks for one anywhere) and says why
    if (!oracle && res.status === 200 && [params._total ?? []].flat().some((v) => v === 'accurate' || v === 'estimate')) {
      const said = ((res.body as Bundle).entry ?? []).some((e) => e.search?.mode === 'outcome'
        && (e.resource as OperationOutcome).issue?.some((i) => /Bundle\.total is not given/.test(i.diagnostics ?? '')));
      if (!said) throw new Error(`${who.name} ${entryUrl(r)}: _total answered without saying Bundle.total is not given`);
      count('_total declined');
    }
    else if (res.status === 200 && Object.keys(params).some(isChainName)) await sameAsResolvedByHand(who, purposeOfUse, r.path.split('/')[0]!, params, res, send);
  }
  // $cgm-agp counts only readings the grant permits (its output holds numbers, not resources).
  if (/\$cgm-agp$/.test(r.path) && res.status === 200) {
    const readings = agpOf(res.body).readings;
    if (!Number.isInteger(readings)) throw new Error(`${who.name} ${entryUrl(r)}: the AGP says no reading count`);
    const permittedReadings = [...view(who, purposeOfUse).permitted]
      .filter((k) => k.startsWith('Observation/') && codesOf(versionOf(k)! as unknown as Record<string, unknown>).includes(`${LOINC}|${CGM}`)).length;
    count('agp computed');
    if (readings > permittedReadings) throw new Error(`${who.name} ${entryUrl(r)}: AGP over ${readings} readings, only ${permittedReadings} permitted`);
  }
  // A hidden id answers like one never stored.
  const hidden = hiddenTarget(who, purposeOfUse, r);
  if (hidden) {
    count('compared with a made-up id');
    const madeUp = randomUUID();
    const twin = await send(who, purposeOfUse, { ...r, path: r.path.replace(hidden, madeUp) });
    const [seen, absent] = [shape(res, hidden), shape(twin, madeUp)];
    if (seen !== absent) throw new Error(`${who.name} ${r.method} ${entryUrl(r)} (${nameOf(hidden)}) answers unlike a made-up id:\n  hidden:  ${seen}\n  made-up: ${absent}`);
  }
  // Paging: every `next` leads to more visible data, and its pages obey the same rules.
  let body = res.body as Bundle | undefined;
  for (let page = 0; page < 4 && body?.resourceType === 'Bundle'; page++) {
    const next = body.link?.find((l) => l.relation === 'next')?.url;
    if (!next) break;
    count('followed next');
    if (page === 0) {
      // A page token is bound to its requester: anyone else gets 400, not the page.
      const thief = requesters[(requesters.indexOf(who) + 1) % requesters.length]!;
      const stolen = await send(thief, purposeOfUse, fromUrl(next));
      const stolenProblems = leaks(thief, purposeOfUse, stolen);
      if (stolen.status !== 400) stolenProblems.push(`answered ${stolen.status}, not 400`);
      if (stolenProblems.length) throw new Error(`${who.name}'s next link ${next} used by ${thief.name}:\n${stolenProblems.join('\n')}`);
    }
    const nextRes = await send(who, purposeOfUse, fromUrl(next));
    const pageProblems = leaks(who, purposeOfUse, nextRes);
    const shown = ((nextRes.body as Bundle | undefined)?.entry ?? []).filter((e) => (e.resource && e.resource.resourceType !== 'OperationOutcome') || e.request?.method === 'DELETE');
    if (nextRes.status === 200 && shown.length === 0) pageProblems.push('a next link led to an empty page');
    if (pageProblems.length) throw new Error(`${who.name} ${entryUrl(r)} page ${page + 2} (${next}) → ${nextRes.status}\n${pageProblems.join('\n')}`);
    body = nextRes.body as Bundle;
  }
}

const isChainName = (k: string): boolean => k.startsWith('_has') || k.includes('.');
/** The type a forward chain of the fuzz's shapes leads to. */
const CHAIN_TARGET: Record<string, string> = { patient: 'Patient', 'subject:Patient': 'Patient', device: 'Device', result: 'Observation' };
/** The references a `_has` source of the fuzz's shapes makes in a reference parameter. */
const referencesIn = (source: Resource, param: string): string[] => {
  const o = source as { subject?: Reference; device?: Reference; result?: Reference[] };
  const one = param === 'device' ? o.device : o.subject;
  const refs = param === 'result' ? (o.result ?? []) : one ? [one] : [];
  return refs.map((r) => (r.reference ?? '').replace(/\/_history\/.*$/, ''));
};

/**
 * A chain or `_has` may select only by what the requester could search for themself: its answer
 * must be the answer to the same search with each chain replaced by the ids the requester's own
 * search of the chain's target (or `_has` source) finds. Worked out here, by hand, from those
 * searches; a chain whose search finds nothing must answer no entries.
 */
async function sameAsResolvedByHand(who: Requester, purposeOfUse: string, type: string, params: Query, res: FhirResponse, send: Transport): Promise<void> {
  const plain: Query = {};
  const add = (k: string, v: string): void => {
    plain[k] = k in plain ? [plain[k]!].flat().concat(v) : v;
  };
  let selectsNothing = false;
  const fail = (why: string): never => {
    throw new Error(`${who.name} (${purposeOfUse}) ${type}?${JSON.stringify(params)} answered 200, but ${why}`);
  };
  for (const [k, values] of Object.entries(params)) {
    for (const v of [values].flat()) {
      if (!isChainName(k)) {
        add(k, v);
        continue;
      }
      let search: Req;
      let toValue: (found: Resource[]) => [string, string[]];
      if (k.startsWith('_has:')) {
        const [, source, ref, ...rest] = k.split(':');
        search = { method: 'GET', path: source!, query: { [rest.join(':')]: v, _count: '1000' } };
        toValue = (found) => ['_id', [...new Set(found.flatMap((f) => referencesIn(f, ref!)).filter((x) => x.startsWith(`${type}/`)).map((x) => x.slice(type.length + 1)))]];
      } else {
        const head = k.slice(0, k.indexOf('.'));
        const target = CHAIN_TARGET[head] ?? fail(`the fuzz has no target type for chain ${k}`);
        search = { method: 'GET', path: target, query: { [k.slice(head.length + 1)]: v, _count: '1000' } };
        toValue = (found) => [head.split(':')[0]!, found.map((f) => `${target}/${f.id}`)];
      }
      const found = await send(who, purposeOfUse, search);
      if (found.status !== 200) fail(`the requester's own search ${entryUrl(search)} answered ${found.status}`);
      const [name, ids] = toValue(((found.body as Bundle).entry ?? []).filter((e) => e.search?.mode === 'match').map((e) => e.resource!));
      if (ids.length === 0) selectsNothing = true;
      else add(name, ids.join(','));
    }
  }
  // the resources shown; outcome entries are notes about the request (e.g. no purpose of use stated), which a
  // chain that selects nothing never gets to send by hand
  const entriesOf = (b: FhirResponse['body']): string[] => ((b as Bundle).entry ?? []).filter((e) => e.search?.mode !== 'outcome')
    .map((e) => `${e.search?.mode} ${e.resource?.resourceType}/${e.resource?.id}`);
  const expected = selectsNothing ? [] : await send(who, purposeOfUse, { method: 'GET', path: type, query: plain }).then((byHand) => {
    if (byHand.status !== 200) fail(`the search resolved by hand answered ${byHand.status}`);
    return entriesOf(byHand.body);
  });
  const got = entriesOf(res.body);
  if (JSON.stringify(got) !== JSON.stringify(expected)) fail(`its entries ${JSON.stringify(got)} differ from those of the search resolved by hand ${JSON.stringify(plain)}: ${JSON.stringify(expected)}`);
  count(selectsNothing ? 'chain selected nothing' : 'chain answered as resolved by hand');
}

describe('consent enforcement: no request shape shows anything the patient did not grant', () => {
  test('through the HTTP edge (express parsing of paths, queries and form bodies)', async () => {
    stats.clear();
    const server = t.app.http.listen(0, '127.0.0.1');
    await new Promise((ok) => server.once('listening', ok));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const requester = fc.nat({ max: requesters.length - 1 });
      await fc.assert(fc.asyncProperty(requester, purpose, fc.oneof({ weight: 6, arbitrary: single }, { weight: 1, arbitrary: batch }),
        async (i, p, r) => check(requesters[i]!, p, r, overHttp)), { numRuns: RUNS.http, seed: SEED + 1 });
    } finally {
      await new Promise((ok) => server.close(ok));
    }
    process.stdout.write(`consent fuzz over HTTP: ${JSON.stringify(Object.fromEntries([...stats].sort()))}\n`);
    expect(stats.get('compared with a made-up id') ?? 0).toBeGreaterThan(20);
    expect(stats.get('permitted resource shown') ?? 0).toBeGreaterThan(20);
    expect(stats.get('research refused') ?? 0).toBeGreaterThan(10);
  }, 120_000);

  test('reads, searches, history, paging, batches and operations in-process (the router, as the HTTP edge calls it)', async () => {
    stats.clear();
    const requester = fc.nat({ max: requesters.length - 1 });
    await fc.assert(fc.asyncProperty(requester, purpose, fc.oneof({ weight: 6, arbitrary: single }, { weight: 1, arbitrary: batch }),
      async (i, p, r) => check(requesters[i]!, p, r)), { numRuns: RUNS.inProcess, seed: SEED });
    process.stdout.write(`consent fuzz: ${JSON.stringify(Object.fromEntries([...stats].sort()))}\n`);
    // Not a vacuous run: permitted data was shown, hidden ids were compared, pages were followed.
    expect(stats.get('compared with a made-up id') ?? 0).toBeGreaterThan(50);
    expect(stats.get('followed next') ?? 0).toBeGreaterThan(5);
    expect(stats.get('Observation 200') ?? 0).toBeGreaterThan(50);
    expect(stats.get('permitted resource shown') ?? 0).toBeGreaterThan(100);
    expect(stats.get('oracle parameter refused') ?? 0).toBeGreaterThan(50);
    // chains compared with the same search resolved by hand: ones that selected something, and ones that did not
    expect(stats.get('chain answered as resolved by hand') ?? 0).toBeGreaterThan(10);
    expect(stats.get('chain selected nothing') ?? 0).toBeGreaterThan(100);
    expect(stats.get('_total declined') ?? 0).toBeGreaterThan(3);
    // C granted research only: nothing of C's is ever shown over REST, and research requests are refused
    expect(stats.get('shown: about C') ?? 0).toBe(0);
    expect(stats.get('research refused') ?? 0).toBeGreaterThan(100);
  }, 120_000);
});

// ---- writes (issue 6, writes) --------------------------------------------------------------------
//
// PUT, DELETE, POST creates (with and without If-None-Exist) and batch/transaction Bundles of them,
// from limited requesters holding write scopes. The store changes as the run goes (that is the
// point), so what a requester could see is worked out from the repository just before each request
// — from the versions and the grant terms, never by the product's decision code — and what the
// request changed is read back from the repository (open access) just after it.

interface Writer {
  name: string;
  token: string;
  /** The patient a patient token is for: it sees (and writes) that patient's data alone. */
  self?: string;
  /** A system client: creates by scope, sees nothing through consent (it holds no read scope). */
  system?: boolean;
  grants: GrantSpec[];
}

interface WReq {
  method: 'PUT' | 'DELETE' | 'POST' | 'PATCH';
  path: string;
  body?: unknown;
  headers: Record<string, string>;
}

/** Is this stored version one the writer may see (with this purpose of use)? */
function writerSees(w: Writer, purposeOfUse: string, r: Resource | undefined): boolean {
  if (!r || w.system) return false;
  const o = r as unknown as Record<string, unknown>;
  if (w.self) {
    const links = patientLinks(o);
    const contained = (o.contained ?? []) as Record<string, unknown>[];
    return links.length > 0 && links.every((p) => p === w.self) && contained.every((c) => patientLinks(c).every((p) => p === w.self));
  }
  return !isResearch(purposeOfUse) && permits(grantedFor(w, purposeOfUse), o);
}

const W_FUZZ = 'urn:glucoguard:fuzz';
const wPatient = fc.constantFrom('@A', '@A', '@A', '@B', '@C');
/** In the period (5, 3 days ago), before it (12), after it (1). */
const wDay = fc.constantFrom(5, 5, 3, 12, 1);
const wCode = fc.constantFrom(CGM, CGM, '2339-0');
const wKey = fc.option(fc.constantFrom('k1', 'k2', 'k3'), { nil: undefined });

/** A body of `type` about a patient (placeholders resolved later). */
const wBody = (type: string): fc.Arbitrary<Record<string, unknown>> => fc.tuple(wPatient, wDay, wCode, wKey, fc.constantFrom(false, false, false, true)).map(([p, d, code, key, conditional]) => {
  const identifier = key ? [{ system: W_FUZZ, value: key }] : undefined;
  switch (type) {
    case 'Patient': return { resourceType: 'Patient', name: [{ family: `Changed ${d}` }] };
    case 'Device': return { resourceType: 'Device', status: 'active', patient: { reference: `Patient/${p}` }, ...(identifier ? { identifier } : {}) };
    case 'MedicationAdministration': return { resourceType: 'MedicationAdministration', status: 'completed', subject: { reference: `Patient/${p}` },
      medicationCodeableConcept: { coding: [{ system: 'http://www.nlm.nih.gov/research/umls/rxnorm', code: '253182' }] }, effectiveDateTime: ago(d) };
    case 'Organization': return { resourceType: 'Organization', name: `Org ${d}` };
    // a conditional reference to the patient: resolved among what the writer may see inside a transaction, 400 elsewhere
    default: return { ...reading(p, ago(d), { ...(identifier ? { identifier } : {}), ...(conditional ? { subject: { reference: `Patient?_id=${p}` } } : {}) }, code) } as unknown as Record<string, unknown>;
  }
});
/** Stored ids of every kind: visible to some, hidden, outside the period, deleted, never stored. */
const W_TARGETS = ['A.r0', 'A.r1', 'A.r2', 'A.r3', 'A.r4', 'B.r1', 'B.r2', 'C.r0', 'C.r1', 'C.r3', 'A.deleted', 'B.deleted', 'A.other', 'A.panel',
  'A.movedIn', 'A.movedOut', 'A.containedB', 'A.performerB', 'A.containedDevice', 'orphan', 'A.device', 'B.device', 'A', 'B', 'A.med', 'B.med', 'org', 'new'];
/** One write: [method, url, resource?, ifNoneExist?]; `@<name>` placeholders, `@new` a never-stored id. */
type WEntry = { method: 'PUT' | 'DELETE' | 'POST' | 'PATCH'; type: string; id?: string; resource?: Record<string, unknown>; ifNoneExist?: string; criteria?: string };
/** Search criteria of conditional creates, updates and deletes: matching visible, hidden, both or nothing. */
const wCriteria = fc.constantFrom(`identifier=${W_FUZZ}|k1`, `identifier=${W_FUZZ}|k2`, '_id=@B.r1', '_id=@A.r1',
  'patient=Patient/@B&code=' + CGM, 'patient=Patient/@A&code=' + CGM, `identifier=${W_FUZZ}|k3&patient=Patient/@A`,
  // chains, resolved over what the requester may see (Bravo's Patient resource never is)
  `patient.name=Bravo&identifier=${W_FUZZ}|k1`, `patient.name=Alpha&identifier=${W_FUZZ}|k1`, `patient._id=@B&identifier=${W_FUZZ}|k2`, 'subject:Patient._id=@A&_id=@A.r1');
/** The url of an entry: `Type/id`, `Type?criteria` (conditional update or delete) or `Type` (create). */
const wUrl = (e: WEntry): string => (e.criteria !== undefined ? `${e.type}?${e.criteria}` : e.method === 'POST' ? e.type : `${e.type}/${e.id}`);
const wTarget = fc.constantFrom(...W_TARGETS).map((n) => ({ type: n === 'new' ? 'Observation' : typeOfName(n), id: `@${n}` }));
/** The same edits as FHIRPath Patch documents (Parameters, sent as FHIR JSON). */
const fpOperation = (type: string, path: string, value?: Record<string, unknown>, name?: string) => ({ name: 'operation', part: [
  { name: 'type', valueCode: type }, { name: 'path', valueString: path }, ...(name ? [{ name: 'name', valueString: name }] : []), ...(value ? [{ name: 'value', ...value }] : []),
] });
const wFhirPathPatch = fc.constantFrom(
  [fpOperation('replace', 'Observation.status', { valueCode: 'amended' })],
  [fpOperation('add', 'Observation', { valueAnnotation: { text: 'patched' } }, 'note')],
  [fpOperation('replace', 'Observation.subject', { valueReference: { reference: 'Patient/@B' } })],
  [fpOperation('replace', 'Observation.subject', { valueReference: { reference: 'Patient/@A' } })],
  [fpOperation('replace', 'Device.patient', { valueReference: { reference: 'Patient/@B' } })],
  [fpOperation('delete', 'Observation.subject')],
).map((parameter) => ({ resourceType: 'Parameters', parameter }));
const wEntry: fc.Arbitrary<WEntry> = fc.oneof(
  { weight: 5, arbitrary: wTarget.chain(({ type, id }) => wBody(type).map((b): WEntry => ({ method: 'PUT', type, id, resource: { ...b, id } }))) },
  { weight: 2, arbitrary: wTarget.map(({ type, id }): WEntry => ({ method: 'DELETE', type, id })) },
  { weight: 3, arbitrary: fc.constantFrom('Observation', 'Observation', 'Observation', 'Device', 'MedicationAdministration', 'Organization')
    .chain((type) => fc.tuple(wBody(type), fc.option(fc.constantFrom(`identifier=${W_FUZZ}|k1`, `identifier=${W_FUZZ}|k2`, '_id=@B.r1', '_id=@A.r1',
      'patient=Patient/@B&code=' + CGM, 'patient=Patient/@A&code=' + CGM, `identifier=${W_FUZZ}|k3&patient=Patient/@A`,
      `patient.name=Bravo&identifier=${W_FUZZ}|k1`, `patient.name=Alpha&identifier=${W_FUZZ}|k2`), { nil: undefined })))
    .map(([b, ifNoneExist]): WEntry => ({ method: 'POST', type: String(b.resourceType), resource: b, ...(ifNoneExist ? { ifNoneExist } : {}) })) },
  { weight: 2, arbitrary: fc.constantFrom('Observation', 'Observation', 'Device').chain((type) => fc.tuple(wBody(type), wCriteria))
    .map(([b, criteria]): WEntry => ({ method: 'PUT', type: String(b.resourceType), resource: b, criteria })) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom('Observation', 'Observation', 'Device'), wCriteria).map(([type, criteria]): WEntry => ({ method: 'DELETE', type, criteria })) },
  // a FHIRPath Patch as an entry (in a transaction it becomes the update it makes)
  { weight: 1, arbitrary: fc.tuple(wTarget, wFhirPathPatch).map(([{ type, id }, doc]): WEntry => ({ method: 'PATCH', type, id, resource: doc })) },
);
const wPrefer = fc.constantFrom(undefined, undefined, 'return=representation', 'return=minimal', 'return=OperationOutcome');
/** JSON Patch documents: harmless edits, a move into another patient's record, a failing test. */
const wPatchOps = fc.constantFrom(
  [{ op: 'replace', path: '/status', value: 'amended' }],
  [{ op: 'add', path: '/note', value: [{ text: 'patched' }] }],
  [{ op: 'replace', path: '/subject', value: { reference: 'Patient/@B' } }],
  [{ op: 'replace', path: '/subject', value: { reference: 'Patient/@A' } }],
  [{ op: 'test', path: '/status', value: 'cancelled' }, { op: 'replace', path: '/status', value: 'final' }],
);
const writeReq: fc.Arbitrary<WReq> = fc.oneof(
  { weight: 1, arbitrary: fc.tuple(wTarget, wPatchOps, fc.option(wCriteria, { nil: undefined, freq: 3 })).map(([{ type, id }, ops, criteria]): WReq => ({
    method: 'PATCH', path: criteria !== undefined ? `${type}?${criteria}` : `${type}/${id}`, body: ops, headers: { 'content-type': 'application/json-patch+json' },
  })) },
  { weight: 1, arbitrary: fc.tuple(wTarget, wFhirPathPatch, fc.option(wCriteria, { nil: undefined, freq: 3 })).map(([{ type, id }, doc, criteria]): WReq => ({
    method: 'PATCH', path: criteria !== undefined ? `${type}?${criteria}` : `${type}/${id}`, body: doc, headers: { 'content-type': 'application/fhir+json' },
  })) },
  { weight: 3, arbitrary: fc.tuple(wEntry, wPrefer).map(([e, prefer]): WReq => ({
    method: e.method, path: wUrl(e),
    ...(e.resource ? { body: e.resource } : {}),
    headers: { ...(e.resource ? { 'content-type': 'application/fhir+json' } : {}), ...(e.ifNoneExist ? { 'if-none-exist': e.ifNoneExist } : {}), ...(prefer ? { prefer } : {}) },
  })) },
  { weight: 2, arbitrary: fc.tuple(fc.constantFrom('transaction', 'transaction', 'batch'), fc.array(wEntry, { minLength: 1, maxLength: 3 }), wPrefer).map(([type, entries, prefer]): WReq => ({
    method: 'POST', path: '',
    headers: { 'content-type': 'application/fhir+json', ...(prefer ? { prefer } : {}) },
    body: { resourceType: 'Bundle', type, entry: entries.map((e, i) => ({
      ...(e.method === 'POST' ? { fullUrl: `urn:uuid:00000000-0000-4000-8000-00000000000${i}` } : {}),
      ...(e.resource ? { resource: e.resource } : {}),
      request: { method: e.method, url: wUrl(e), ...(e.ifNoneExist ? { ifNoneExist: e.ifNoneExist } : {}) },
    })) },
  })) },
);

async function sendWrite(w: Writer, purposeOfUse: string, r: WReq): Promise<FhirResponse> {
  const headers: Record<string, string | undefined> = { authorization: `Bearer ${w.token}`, ...(purposeOfUse ? { 'x-purpose-of-use': purposeOfUse } : {}), ...r.headers };
  const access = withPurpose(await t.app.smart.authenticate(headers), headers);
  const [path, qs] = r.path.split('?', 2) as [string, string | undefined];
  const query: Record<string, string | string[]> = {};
  for (const [k, v] of new URLSearchParams(qs ?? '')) query[k] = k in query ? [query[k]!].flat().concat(v) : v;
  return t.app.fhir.handle({ method: r.method, path, query, headers, ...(r.body !== undefined ? { body: r.body } : {}), access });
}

/** The newest history entry: a marker to read back what a request wrote. */
async function newestVersion(): Promise<string> {
  await t.app.consent.audit.flush();
  const e = (await t.app.repository.history({ count: 1, offset: 0 })).entries[0]!;
  return `${e.resourceType}/${e.id}/${e.versionId}`;
}

/** Every version stored after `marker`, oldest first — the access log (new AuditEvents) aside. */
async function writtenSince(marker: string): Promise<HistoryEntry[]> {
  await t.app.consent.audit.flush();
  const out: HistoryEntry[] = [];
  for (let offset = 0; ; offset += 50) {
    const { entries, hasMore } = await t.app.repository.history({ count: 50, offset });
    for (const e of entries) {
      if (`${e.resourceType}/${e.id}/${e.versionId}` === marker) return out.reverse().filter((x) => !(x.resourceType === 'AuditEvent' && x.versionId === '1'));
      out.push(e);
    }
    if (!hasMore || entries.length === 0) throw new Error(`history marker ${marker} not found`);
  }
}

/** The version of a resource current just before the request (undefined: never stored, or deleted). */
async function currentBefore(type: string, id: string, written: HistoryEntry[]): Promise<{ existed: boolean; resource?: Resource }> {
  const fresh = new Set(written.filter((e) => e.resourceType === type && e.id === id).map((e) => e.versionId));
  const { entries } = await t.app.repository.history({ resourceType: type, id, count: 100, offset: 0 });
  const older = entries.find((e) => !fresh.has(e.versionId));
  return older ? { existed: true, ...(older.resource ? { resource: older.resource } : {}) } : { existed: false };
}

/** What a client can tell apart about a write's answer: status, issues (id blanked), header names, per-entry statuses. */
function writeShape(res: FhirResponse, id: string, only?: number): string {
  const blank = (s: string | undefined) => (s ?? '').replaceAll(id, '<id>');
  const issues = (o: unknown) => ((o as { issue?: { severity?: string; code?: string; diagnostics?: string }[] } | undefined)?.issue ?? [])
    .map((i) => `${i.severity}/${i.code}/${blank(i.diagnostics)}`).join(' | ');
  const body = res.body as { resourceType?: string; entry?: { response?: { status?: string; outcome?: unknown; location?: string } }[] } | undefined;
  const headers = Object.keys(res.headers ?? {}).map((h) => h.toLowerCase()).filter((h) => !VOLATILE_HEADERS.has(h)).sort();
  const entries = (body?.entry ?? []).filter((_e, i) => only === undefined || i === only).map((e) => `${e.response?.status}:${issues(e.response?.outcome)}:${e.response?.location ? 'location' : ''}`);
  return `${res.status} ${body?.resourceType ?? ''} ${issues(body)} [${entries.join(', ')}] headers=${headers.join(',')}`;
}

/** The ids a write is about: stored ids named by PUT/DELETE urls. */
function writeTargets(r: WReq): string[] {
  const urls = r.path === '' ? ((r.body as Bundle).entry ?? []).map((e) => `${e.request?.method} ${e.request?.url}`) : [`${r.method} ${r.path}`];
  return urls.flatMap((u) => {
    const m = /^(?:PUT|DELETE|PATCH) [A-Za-z]+\/([A-Za-z0-9\-.]+)$/.exec(u);
    return m && m[1]!.length > 20 ? [m[1]!] : [];
  });
}

/** The same write about another id: only the PUT/DELETE naming `from` (its url and body id) changes, not other entries' references. */
function retarget(r: WReq, from: string, to: string): WReq {
  const swap = (x: unknown): unknown => JSON.parse(JSON.stringify(x).replaceAll(from, to));
  if (r.path !== '' && Array.isArray(r.body)) return { ...r, path: r.path.replace(from, to) }; // a JSON Patch names no id
  if (r.path !== '') return { ...r, path: r.path.replace(from, to), ...(r.body !== undefined ? { body: { ...(r.body as object), ...((r.body as Resource).id === from ? { id: to } : {}) } } : {}) };
  const bundle = r.body as Bundle;
  return { ...r, body: { ...bundle, entry: (bundle.entry ?? []).map((e) => (e.request?.url?.endsWith(`/${from}`)
    ? { ...e, request: swap(e.request) as typeof e.request, ...(e.resource ? { resource: { ...e.resource, id: e.resource.id === from ? to : e.resource.id } } : {}) }
    : e)) } };
}

/** The type of every id stored (the fixture, then whatever the write property writes). */
const typeOfId = new Map<string, string>();

async function checkWrite(w: Writer, purposeOfUse: string, raw: WReq): Promise<void> {
  // One never-stored id per request (a PUT names it in the url and the body).
  const r = JSON.parse(resolve(JSON.stringify(raw).replaceAll('@new', randomUUID()))) as WReq;
  const label = `${w.name} (${purposeOfUse || 'no purpose'}) ${r.method} /${r.path} ${JSON.stringify(r.headers)} ${r.body ? JSON.stringify(r.body) : ''}`;
  // What the requester could see of the ids it names, before the request.
  const targets = writeTargets(r);
  const hiddenBefore = new Map<string, boolean>();
  for (const id of targets) {
    const type = r.path === '' ? ((r.body as Bundle).entry ?? []).find((e) => e.request?.url?.endsWith(`/${id}`))!.request!.url!.split('/')[0]! : r.path.split('/')[0]!;
    const { entries } = await t.app.repository.history({ resourceType: type, id, count: 1, offset: 0 }).catch(() => ({ entries: [] as HistoryEntry[] }));
    if (entries.length) hiddenBefore.set(id, !writerSees(w, purposeOfUse, entries[0]!.resource));
  }
  const marker = await newestVersion();
  const res = await sendWrite(w, purposeOfUse, r);
  const written = await writtenSince(marker);
  const problems: string[] = [];
  if (res.status >= 500) problems.push(`status ${res.status}`);
  const isTx = r.path === '' && (r.body as Bundle).type === 'transaction';
  if ((res.status >= 400 || (r.path !== '' && res.status >= 300)) && written.length) problems.push(`rejected (${res.status}) yet wrote ${written.map((e) => `${e.method} ${e.resourceType}/${e.id}`).join(', ')}`);
  count(`write ${r.path === '' ? (r.body as Bundle).type : r.method} ${res.status}`);
  if (r.method === 'PATCH' && r.headers?.['content-type'] === 'application/fhir+json') count(`write FHIRPath PATCH ${res.status}`);
  if (r.path.includes('?')) count(`conditional write ${res.status}`);
  if (isTx && res.status >= 400) count('transaction rejected');
  if (isTx && JSON.stringify(r.body).includes('"Patient?_id=')) count(`transaction with a conditional reference ${res.status}`);
  /** What the requester could read before of the resources it changed (a patch's answer holds what the patch left as it was). */
  let seenBefore = '';
  for (const e of written) {
    const before = await currentBefore(e.resourceType, e.id, written);
    if (before.existed) {
      if (!writerSees(w, purposeOfUse, before.resource)) problems.push(`${e.method} changed ${e.resourceType}/${e.id} (${nameOf(e.id)}) which it could not see (${before.resource ? 'hidden' : 'deleted'})`);
      else {
        count(e.resource ? 'visible resource updated' : 'visible resource deleted');
        seenBefore += JSON.stringify(before.resource ?? {});
      }
    } else if (!e.resource) problems.push(`a deletion of never-seen ${e.resourceType}/${e.id}`);
    else count('resource created');
    // A person writes patient data only where they could read it back.
    if (e.resource && !w.system && patientLinks(e.resource as unknown as Record<string, unknown>).length > 0 && !writerSees(w, purposeOfUse, e.resource)) {
      problems.push(`${e.method} wrote ${e.resourceType}/${e.id} that it cannot read back: ${JSON.stringify(e.resource)}`);
    }
    // A grantee writes no patient data at all: a grant is for access (Consent.provision.action), not collect or correct.
    const about = [e.resource, before.resource].filter((x) => x !== undefined) as unknown as Record<string, unknown>[];
    if (!w.system && w.self === undefined && about.some((x) => patientLinks(x).length > 0)) {
      problems.push(`grantee ${w.name}: ${e.method} changed patient data ${e.resourceType}/${e.id}`);
    }
  }
  // The answer (body, Location) names no stored resource the requester cannot see, beyond what it asked about or wrote itself.
  for (const e of written) typeOfId.set(e.id, e.resourceType);
  const asked = JSON.stringify(r);
  const own = new Set(written.map((e) => e.id));
  for (const [id] of new Set(JSON.stringify([res.body ?? {}, res.headers ?? {}]).matchAll(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g))) {
    const type = typeOfId.get(id!);
    if (!type || asked.includes(id!) || own.has(id!) || seenBefore.includes(id!)) continue;
    const latest = (await t.app.repository.history({ resourceType: type, id: id!, count: 20, offset: 0 })).entries.find((x) => x.resource)?.resource;
    if (!writerSees(w, purposeOfUse, latest)) problems.push(`the answer names ${type}/${id} (${nameOf(id!)}) which it cannot see`);
    else count('answer names a visible resource');
  }
  if (problems.length) throw new Error(`${label}\n→ ${res.status} ${JSON.stringify(res.body)}\n${problems.join('\n')}`);
  // A write about a hidden id answers like the same write about an id never stored, and changes nothing either.
  const hidden = [...hiddenBefore].filter(([, h]) => h).map(([id]) => id);
  if (hidden.length === 1 && targets.length === 1) {
    const madeUp = randomUUID();
    const twinReq = retarget(r, hidden[0]!, madeUp);
    const twinMarker = await newestVersion();
    const twin = await sendWrite(w, purposeOfUse, twinReq);
    const twinWritten = await writtenSince(twinMarker);
    // A batch's other entries (creates) ran once already and may answer otherwise now: compare the entry about the id.
    const only = r.path === '' && (r.body as Bundle).type === 'batch' ? (r.body as Bundle).entry!.findIndex((e) => e.request?.url?.endsWith(`/${hidden[0]}`)) : undefined;
    const [seen, absent] = [writeShape(res, hidden[0]!, only), writeShape(twin, madeUp, only)];
    count('write compared with a made-up id');
    if (seen !== absent) throw new Error(`${label} (${nameOf(hidden[0]!)}) answers unlike a made-up id:\n  hidden:  ${seen}\n  made-up: ${absent}`);
    // Whatever else the request holds (creates) may be written again; the made-up id itself never is.
    const madeUpWritten = twinWritten.filter((e) => e.id === madeUp);
    if (madeUpWritten.length) throw new Error(`${label}: the made-up id ${madeUp} was written (update-as-create)`);
  }
}

describe('consent enforcement: writes change nothing the requester could not see', () => {
  test('PUT, PATCH, DELETE, conditional updates, patches and deletes, creates (If-None-Exist), batch and transaction Bundles of them, from limited requesters with write scopes', async () => {
    stats.clear();
    const writeScopes = ['openid', 'fhirUser', 'user/*.cruds'];
    const cgmOnly = requesters.find((x) => x.name === 'cgm-only')!;
    const broad = requesters.find((x) => x.name === 'broad')!;
    const writers: Writer[] = [
      { name: 'cgm-only', token: practitionerToken(t.app, ids['doc.cgm-only']!, undefined, writeScopes), grants: cgmOnly.grants },
      { name: 'broad', token: practitionerToken(t.app, ids['doc.broad']!, undefined, writeScopes), grants: broad.grants },
      { name: 'broad (EHR launch, B in context)', token: practitionerToken(t.app, ids['doc.broad']!, ids.B, [...writeScopes, 'launch']), grants: broad.grants },
      { name: 'stranger', token: practitionerToken(t.app, ids['doc.stranger']!, undefined, writeScopes), grants: [] },
      { name: 'patient A', token: patientToken(t.app, ids.A!), self: ids.A!, grants: [] },
      { name: 'uploader (system/Observation.c)', token: t.app.smart.tokens.signAccessToken({ gid: randomUUID(), clientId: 'uploader', sub: 'uploader', scopes: ['system/Observation.c'] }).token,
        system: true, grants: [] },
    ];
    for (const key of versions.keys()) typeOfId.set(key.split('/')[1]!, key.split('/')[0]!);
    const runs = Number(process.env.CONSENT_FUZZ_WRITE_RUNS ?? 1500);
    await fc.assert(fc.asyncProperty(fc.nat({ max: writers.length - 1 }), purpose, writeReq, async (i, p, r) => checkWrite(writers[i]!, p, r)),
      { numRuns: runs, seed: SEED + 2 });
    process.stdout.write(`consent write fuzz: ${JSON.stringify(Object.fromEntries([...stats].sort()))}\n`);
    // Not a vacuous run: visible data was changed, hidden ids were compared, creates and rejected transactions happened.
    expect(stats.get('write compared with a made-up id') ?? 0).toBeGreaterThan(runs / 10);
    expect(stats.get('visible resource updated') ?? 0).toBeGreaterThan(3);
    expect(stats.get('visible resource deleted') ?? 0).toBeGreaterThan(3);
    expect(stats.get('resource created') ?? 0).toBeGreaterThan(10);
    expect(stats.get('transaction rejected') ?? 0).toBeGreaterThan(5);
    // conditional references to hidden or unseen patients fail the transaction (412) as a missing match does
    expect(stats.get('transaction with a conditional reference 412') ?? 0).toBeGreaterThan(5);
    expect(stats.get('conditional write 200') ?? 0).toBeGreaterThan(1);
    expect(stats.get('conditional write 201') ?? 0).toBeGreaterThan(1);
    expect(stats.get('conditional write 204') ?? 0).toBeGreaterThan(1);
    expect(stats.get('write PATCH 200') ?? 0).toBeGreaterThan(1);
    expect(stats.get('write FHIRPath PATCH 200') ?? 0).toBeGreaterThan(1);
  }, 120_000);
});
