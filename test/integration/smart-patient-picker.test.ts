/**
 * The "Choose a patient" step of a standalone launch (`launch/patient`) in the real app, auth on:
 * the picker offers a signed-in user only the patients consent lets them see (a practitioner: those
 * whose grant to them is in force), a choice of any other patient is refused on the server, and
 * what the picker shows is in each listed patient's access log, like a FHIR search.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { AuditEvent, Bundle, Consent, Patient } from '@medplum/fhirtypes';
import { createHash, randomBytes } from 'node:crypto';
import request from 'supertest';
import { GRANT_ID_SYSTEM } from '../../src/consent/terms.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { REDIRECT_URI, requestIdOf } from '../support/smart-client.js';
import { DAY, grant, patientToken, person, registerIdentity } from './consent-helpers.js';

let t: TestApp;
let ana: string;
let ben: string;
let clientId: string;
let grantId: string;
const DOC = { username: 'dr.osei', password: 'stethoscope-42' };
const STRANGER = { username: 'dr.mensah', password: 'stethoscope-43' };
const READINGS_ONLY = { username: 'd.lund', password: 'stethoscope-44' };
const RESEARCHER = { username: 'r.haddad', password: 'stethoscope-45' };
const EVERYTHING = { username: 'n.park', password: 'stethoscope-46' };

beforeAll(async () => {
  t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
  const patient = async (given: string, family: string, birthDate: string) =>
    (await t.app.repository.create<Patient>({ resourceType: 'Patient', name: [{ given: [given], family }], birthDate })).resource.id!;
  ana = await patient('Ana', 'Rivera', '1950-04-02');
  ben = await patient('Ben', 'Okafor', '1960-01-01');
  const doc = await person(t.app, 'Practitioner', 'Osei');
  const stranger = await person(t.app, 'Practitioner', 'Mensah');
  await registerIdentity(t.app, `Practitioner/${doc}`);
  await registerIdentity(t.app, `Practitioner/${stranger}`);
  const now = Date.now();
  // the grant names the Patient type, so the practitioner may be shown Ana's name (readings alone would not)
  const granted = await grant(t.app, { patient: ana, actor: `Practitioner/${doc}`, accessTo: now + DAY, dataFrom: now - 7 * DAY, dataTo: now, classes: ['Patient', 'Observation'] });
  expect(granted.status).toBe(201);
  // Ben's grant to the same practitioner starts tomorrow: not in force yet
  expect((await grant(t.app, { patient: ben, actor: `Practitioner/${doc}`, accessFrom: now + DAY, accessTo: now + 2 * DAY, dataFrom: now - 7 * DAY, dataTo: now })).status).toBe(201);
  grantId = (granted.body as Consent).identifier!.find((i) => i.system === GRANT_ID_SYSTEM)!.value!;
  await t.app.smart.store.addUser({ ...DOC, fhirUser: `Practitioner/${doc}` });
  await t.app.smart.store.addUser({ ...STRANGER, fhirUser: `Practitioner/${stranger}` });
  // a dietitian Ana shares her readings with, not her Patient record
  const dietitian = await person(t.app, 'Practitioner', 'Lund');
  await registerIdentity(t.app, `Practitioner/${dietitian}`);
  expect((await grant(t.app, { patient: ana, actor: `Practitioner/${dietitian}`, accessTo: now + DAY, dataFrom: now - 7 * DAY, dataTo: now, classes: ['Observation'] })).status).toBe(201);
  await t.app.smart.store.addUser({ ...READINGS_ONLY, fhirUser: `Practitioner/${dietitian}` });
  // a researcher Ana shares her readings and record with for research alone, and a GP she shares everything with
  const researcher = await person(t.app, 'Practitioner', 'Haddad');
  const gp = await person(t.app, 'Practitioner', 'Park');
  for (const p of [researcher, gp]) await registerIdentity(t.app, `Practitioner/${p}`);
  expect((await grant(t.app, { patient: ana, actor: `Practitioner/${researcher}`, accessTo: now + DAY, dataFrom: now - 7 * DAY, dataTo: now, purposes: ['HRESCH'], classes: ['Patient', 'Observation'] })).status).toBe(201);
  expect((await grant(t.app, { patient: ana, actor: `Practitioner/${gp}`, accessTo: now + DAY, dataFrom: now - 7 * DAY, dataTo: now })).status).toBe(201);
  await t.app.smart.store.addUser({ ...RESEARCHER, fhirUser: `Practitioner/${researcher}` });
  await t.app.smart.store.addUser({ ...EVERYTHING, fhirUser: `Practitioner/${gp}` });
  clientId = t.app.smart.store.addClient({ name: 'Clinician app', type: 'public', redirectUris: [REDIRECT_URI],
    scopes: ['openid', 'fhirUser', 'launch/patient', 'patient/*.rs', 'user/*.rs'] }).client.clientId;
});
afterAll(async () => t?.close());

/** GET /oauth/authorize for `launch/patient`, then the login form: the page after sign-in (the picker). */
async function signIn(user: { username: string; password: string }) {
  const challenge = createHash('sha256').update(randomBytes(32).toString('base64url')).digest('base64url');
  const authorize = await request(t.app.http).get('/oauth/authorize').query({
    response_type: 'code', client_id: clientId, redirect_uri: REDIRECT_URI, scope: 'openid fhirUser launch/patient patient/*.rs', state: 's',
    aud: t.app.smart.urls.fhirBase, code_challenge: challenge, code_challenge_method: 'S256',
  });
  expect(authorize.status).toBe(200);
  const picker = await request(t.app.http).post('/oauth/login').type('form').send({ request: requestIdOf(authorize.text), ...user });
  expect(picker.status).toBe(200);
  expect(picker.text).toContain('Choose a patient');
  return picker;
}

const searchPicker = (page: string, query: string) =>
  request(t.app.http).post('/oauth/select-patient').type('form').send({ request: requestIdOf(page), action: 'search', query });
const choose = (page: string, patient: string) =>
  request(t.app.http).post('/oauth/select-patient').type('form').send({ request: requestIdOf(page), patient });

async function storedEvents(): Promise<AuditEvent[]> {
  await t.app.consent.audit.flush();
  return (await t.app.repository.search({ resourceType: 'AuditEvent', count: 1000, offset: 0 })).resources as AuditEvent[];
}
const about = (events: AuditEvent[], patient: string, who: string) => events.filter((e) =>
  e.entity?.some((x) => x.what?.reference === `Patient/${patient}`) && e.agent?.some((a) => a.requestor && a.who?.reference === who));

describe('patient picker', () => {
  test('a practitioner without any grant is offered no patient: no name, birth date or id, by listing or by search', async () => {
    const picker = await signIn(STRANGER);
    for (const page of [picker.text, (await searchPicker(picker.text, 'Oka')).text, (await searchPicker(picker.text, 'Rivera')).text, (await searchPicker(picker.text, ana)).text]) {
      // what follows the search form (which echoes the query) is the list
      const list = page.slice(page.indexOf('</form>'));
      expect(list).toContain('No patients found.');
      expect(list).not.toContain('name="patient"');
      for (const hidden of ['Rivera', 'Okafor', '1950-04-02', '1960-01-01', ana, ben]) expect(list).not.toContain(hidden);
    }
  });

  test('a practitioner is offered exactly the patients whose grant to them is in force (not one starting tomorrow), found by name or id', async () => {
    const picker = await signIn(DOC);
    expect(picker.text).toContain('Ana Rivera, born 1950-04-02');
    expect(picker.text).toContain(ana);
    expect(picker.text).not.toContain('Okafor');
    expect(picker.text).not.toContain(ben);
    expect((await searchPicker(picker.text, 'Riv')).text).toContain('Ana Rivera');
    expect((await searchPicker(picker.text, ana)).text).toContain('Ana Rivera');
    const oka = await searchPicker(picker.text, 'Oka');
    expect(oka.text).toContain('No patients found.');
    expect(oka.text).not.toContain(ben);
    const byId = await searchPicker(picker.text, ben);
    expect(byId.text).toContain('No patients found.');
  });

  test('a grant of readings alone lists the patient by id: no name or birth date, and a name search does not find them', async () => {
    const picker = await signIn(READINGS_ONLY);
    const list = (page: string) => page.slice(page.indexOf('</form>'));
    expect(list(picker.text)).toContain(ana);
    expect(list(picker.text)).toContain('name not shared with you');
    for (const hidden of ['Rivera', 'Ana ', '1950-04-02']) expect(list(picker.text)).not.toContain(hidden);
    const byName = await searchPicker(picker.text, 'Rivera');
    expect(list(byName.text)).toContain('No patients found.');
    expect(list(byName.text)).not.toContain(ana);
    const byId = await searchPicker(picker.text, ana);
    expect(list(byId.text)).toContain(ana);
    expect(list(byId.text)).not.toContain('Rivera');
    // and the choice is theirs to make: it leads to the approval
    expect((await choose(picker.text, ana)).text).toContain('name="decision"');
  });

  test('a grant for research alone offers no patient (research reaches data de-identified only): not listed, not found, not choosable', async () => {
    const picker = await signIn(RESEARCHER);
    const list = (page: string) => page.slice(page.indexOf('</form>'));
    for (const page of [picker.text, (await searchPicker(picker.text, 'Rivera')).text, (await searchPicker(picker.text, ana)).text]) {
      expect(list(page)).toContain('No patients found.');
      for (const hidden of ['Rivera', '1950-04-02', ana]) expect(list(page)).not.toContain(hidden);
    }
    expect((await choose(picker.text, ana)).status).toBe(400);
  });

  test('a grant of every type shows the name and birth date, as it lets Patient/<id> be read', async () => {
    const picker = await signIn(EVERYTHING);
    expect(picker.text).toContain('Ana Rivera, born 1950-04-02');
    expect((await searchPicker(picker.text, 'Rivera')).text).toContain(ana);
  });

  test('choosing a patient the user may not see is refused on the server: 400, the picker again, no code', async () => {
    const stranger = await signIn(STRANGER);
    const refused = await choose(stranger.text, ana);
    expect(refused.status).toBe(400);
    expect(refused.text).toContain('Choose a patient from the list.');
    expect(refused.text).not.toContain('name="decision"');
    expect(refused.headers.location).toBeUndefined();

    const doc = await signIn(DOC);
    const notGranted = await choose(doc.text, ben);
    expect(notGranted.status).toBe(400);
    expect(notGranted.text).not.toContain('Okafor');
  });

  test('choosing a granted patient leads to the approval and a code with that patient', async () => {
    const picker = await signIn(DOC);
    const approval = await choose(picker.text, ana);
    expect(approval.status).toBe(200);
    expect(approval.text).toContain('name="decision"');
    expect(approval.text).toContain(ana);
    const done = await request(t.app.http).post('/oauth/approve').type('form').send({ request: requestIdOf(approval.text), decision: 'allow' });
    expect(done.status).toBe(302);
    expect(new URL(done.headers.location!).searchParams.get('code')).toEqual(expect.any(String));
  });

  test('the approval page names the chosen patient as the picker listed them: name and birth date with the grant of the Patient record, the id alone without it', async () => {
    const doc = t.app.smart.store.getUser(DOC.username)!.fhirUser;
    const named = await choose((await signIn(DOC)).text, ana);
    expect(named.text).toContain('name="decision"');
    expect(named.text).toContain(`on the records of <strong>Ana Rivera, born 1950-04-02 (Patient/${ana})</strong>`);
    expect(named.text).toContain(`asks to act for you (signed in as <strong>${DOC.username}</strong>, ${doc})`);
    // shown on the approval page is a read of Ana's Patient record by that user and app, in her access log
    const reads = about(await storedEvents(), ana, doc).filter((e) => e.subtype?.[0]?.code === 'read' && e.outcome === '0');
    expect(reads.length).toBeGreaterThan(0);
    expect(reads.some((e) => e.entity!.some((x) => x.what?.identifier?.value === grantId))).toBe(true);
    // a grant of readings alone: the page names the patient by id, and neither name nor birth date
    const byId = await choose((await signIn(READINGS_ONLY)).text, ana);
    expect(byId.text).toContain('name="decision"');
    expect(byId.text).toContain(`on the records of <strong>Patient ${ana} (name not shared with you)</strong>`);
    for (const hidden of ['Rivera', 'Ana ', '1950-04-02']) expect(byId.text).not.toContain(hidden);
  });

  test("what the picker lists is in that patient's access log, with the grant that allowed it; a refused choice too", async () => {
    const doc = t.app.smart.store.getUser(DOC.username)!.fhirUser;
    const stranger = t.app.smart.store.getUser(STRANGER.username)!.fhirUser;
    await signIn(DOC);
    const events = await storedEvents();
    const listed = about(events, ana, doc).filter((e) => e.subtype?.[0]?.code === 'search-type' && e.outcome === '0');
    expect(listed.length).toBeGreaterThan(0);
    for (const e of listed) {
      // one patient per event, so it lands in that patient's log and names no one else
      expect(e.entity!.filter((x) => x.what?.reference?.startsWith('Patient/')).map((x) => x.what!.reference)).toEqual([`Patient/${ana}`]);
      expect(e.entity!.some((x) => x.what?.identifier?.value === grantId)).toBe(true);
      expect(e.agent!.some((a) => a.who?.identifier?.value === clientId)).toBe(true);
    }
    // Ben was never listed to the practitioner (only their refused choice of him is logged)
    expect(about(events, ben, doc).map((e) => e.outcome)).not.toContain('0');
    const refused = about(events, ana, stranger).filter((e) => e.outcome === '4');
    expect(refused.length).toBeGreaterThan(0);
    expect(refused[0]!.entity!.some((x) => x.what?.reference === `Patient/${ana}`)).toBe(true);

    // Ana reads both in her own access log through the FHIR API
    const log = await request(t.app.http).get('/fhir/AuditEvent').query({ patient: `Patient/${ana}`, _count: '1000' })
      .set('Authorization', `Bearer ${patientToken(t.app, ana)}`);
    expect(log.status).toBe(200);
    const mine = ((log.body as Bundle).entry ?? []).map((e) => e.resource as AuditEvent);
    expect(about(mine, ana, doc).some((e) => e.subtype?.[0]?.code === 'search-type')).toBe(true);
    expect(about(mine, ana, stranger).some((e) => e.outcome === '4')).toBe(true);
  });

  test('a revoked grant takes the patient off the picker at once', async () => {
    const consent = (await t.app.repository.search({ resourceType: 'Consent', count: 10, offset: 0 })).resources
      .find((c) => (c as Consent).patient?.reference === `Patient/${ana}`) as Consent;
    const revoked = await request(t.app.http).delete(`/fhir/Consent/${consent.id}`).set('Authorization', `Bearer ${patientToken(t.app, ana)}`);
    expect(revoked.status).toBe(204);
    const picker = await signIn(DOC);
    expect(picker.text).toContain('No patients found.');
    expect(picker.text).not.toContain('Rivera');
    expect((await choose(picker.text, ana)).status).toBe(400);
  });
});
