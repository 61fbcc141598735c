/**
 * A relative (RelatedPerson) as a grantee, end to end with auth on: the operator adds them as a user
 * (`glucoguard users add --fhir-user RelatedPerson/<id>`, refused for one not stored), the patient
 * finds them in the portal's grantee picker (their own relatives only, as "relative") and grants
 * them access, and the relative signs in through a standalone launch (the patient picker, as a
 * practitioner does) and reads exactly what was granted: no other patient, no write.
 */
import { afterAll, afterEach, beforeAll, describe, expect, jest, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Bundle, Observation, RelatedPerson } from '@medplum/fhirtypes';
import { Command } from 'commander';
import request from 'supertest';
import { resourceExists } from '../../src/repository/exists.js';
import { registerSmartCommands } from '../../src/smart/cli.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { REDIRECT_URI, requestIdOf } from '../support/smart-client.js';
import { DAY, grant, ingest, patientToken, person, registerIdentity, sparseTrace } from './consent-helpers.js';

let t: TestApp;
let ana: string;
let ben: string;
let mum: string; // Ana's mother, a user
let uncle: string; // Ben's relative, registered too
let clientId: string;
const MUM = { username: 'lucia.rivera', password: 'family-first-77' };

const relative = async (patient: string, given: string, family: string): Promise<string> =>
  (await t.app.repository.create<RelatedPerson>({ resourceType: 'RelatedPerson', patient: { reference: `Patient/${patient}` }, name: [{ given: [given], family }] })).resource.id!;

/** `glucoguard users add` as the operator runs it, on the app's own data directory. */
async function usersAdd(fhirUser: string, username: string): Promise<{ out: string; err: string; exitCode: unknown }> {
  const file = path.join(t.dataDir, `pw-${username}`);
  writeFileSync(file, `${MUM.password}\n`);
  const out: string[] = [];
  const err: string[] = [];
  jest.spyOn(console, 'log').mockImplementation((...a: unknown[]) => { out.push(a.join(' ')); });
  jest.spyOn(console, 'error').mockImplementation((...a: unknown[]) => { err.push(a.join(' ')); });
  process.exitCode = undefined;
  const program = new Command().exitOverride();
  registerSmartCommands(program, async () => ({ config: t.app.config, resourceExists: (type, id) => resourceExists(t.app.repository, type, id) }));
  try {
    await program.parseAsync(['node', 'glucoguard', 'users', 'add', '--username', username, '--password-file', file, '--fhir-user', fhirUser]);
  } catch (e) {
    err.push(e instanceof Error ? e.message : String(e));
  }
  const exitCode = process.exitCode;
  process.exitCode = undefined;
  jest.restoreAllMocks();
  return { out: out.join('\n'), err: err.join('\n'), exitCode };
}

beforeAll(async () => {
  t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
  ana = await person(t.app, 'Patient', 'Rivera');
  ben = await person(t.app, 'Patient', 'Okafor');
  mum = await relative(ana, 'Lucia', 'Rivera');
  uncle = await relative(ben, 'Kofi', 'Okafor');
  await relative(ana, 'Tomas', 'Unregistered');
  for (const r of [mum, uncle]) await registerIdentity(t.app, `RelatedPerson/${r}`);
  for (const p of [ana, ben]) await ingest(t.app, p, sparseTrace(2));
  clientId = t.app.smart.store.addClient({ name: 'Family viewer', type: 'public', redirectUris: [REDIRECT_URI],
    scopes: ['openid', 'fhirUser', 'launch/patient', 'patient/*.rs', 'user/*.rs'] }).client.clientId;
}, 120_000);
afterAll(async () => t?.close());
afterEach(() => {
  jest.restoreAllMocks();
});

/** Authorize (`launch/patient`) and sign in: the page after the login form. */
async function signIn(user: { username: string; password: string }) {
  const verifier = randomBytes(32).toString('base64url');
  const authorize = await request(t.app.http).get('/oauth/authorize').query({
    response_type: 'code', client_id: clientId, redirect_uri: REDIRECT_URI, scope: 'openid fhirUser launch/patient patient/*.rs', state: 's',
    aud: t.app.smart.urls.fhirBase, code_challenge: createHash('sha256').update(verifier).digest('base64url'), code_challenge_method: 'S256',
  });
  expect(authorize.status).toBe(200);
  const page = await request(t.app.http).post('/oauth/login').type('form').send({ request: requestIdOf(authorize.text), ...user });
  return { page, verifier };
}

/** Picks the patient, approves, redeems the code: the access token (and the token response). */
async function tokenFor(patient: string): Promise<{ token: string; body: Record<string, unknown> }> {
  const { page, verifier } = await signIn(MUM);
  expect(page.text).toContain('Choose a patient');
  const approval = await request(t.app.http).post('/oauth/select-patient').type('form').send({ request: requestIdOf(page.text), patient });
  expect(approval.text).toContain('name="decision"');
  const done = await request(t.app.http).post('/oauth/approve').type('form').send({ request: requestIdOf(approval.text), decision: 'allow' });
  expect(done.status).toBe(302);
  const code = new URL(done.headers.location!).searchParams.get('code')!;
  const redeemed = await request(t.app.http).post('/oauth/token').type('form')
    .send({ grant_type: 'authorization_code', code, redirect_uri: REDIRECT_URI, client_id: clientId, code_verifier: verifier });
  expect(redeemed.status).toBe(200);
  return { token: redeemed.body.access_token as string, body: redeemed.body as Record<string, unknown> };
}

const grantees = async (patient: string, name?: string) => {
  const res = await request(t.app.http).get('/apps/api/grantees').query(name ? { name } : {}).set('Authorization', `Bearer ${patientToken(t.app, patient)}`);
  expect(res.status).toBe(200);
  return res.body as { grantees: { reference: string; name: string; kind: string }[]; complete: boolean };
};

describe('a relative as a grantee', () => {
  test('users add: a stored RelatedPerson becomes a user; one not stored is refused and no user is added', async () => {
    const missing = await usersAdd('RelatedPerson/nobody', 'ghost');
    expect(missing.exitCode).toBe(2); // bad input (docs/operations.md)
    expect(missing.err).toContain('RelatedPerson/nobody not found');
    expect(t.app.smart.store.getUser('ghost')).toBeUndefined();
    const added = await usersAdd(`RelatedPerson/${mum}`, MUM.username);
    expect([added.err, added.exitCode]).toEqual(['', undefined]);
    expect(added.out).toContain(`user ${MUM.username} added (RelatedPerson/${mum})`);
    expect(t.app.smart.store.getUser(MUM.username)?.fhirUser).toBe(`RelatedPerson/${mum}`);
  });

  test("the portal's grantee picker offers the patient's own registered relatives as 'relative', never another patient's", async () => {
    const doc = await person(t.app, 'Practitioner', 'Osei');
    await registerIdentity(t.app, `Practitioner/${doc}`);
    const forAna = await grantees(ana);
    expect(forAna.complete).toBe(true);
    expect(forAna.grantees).toEqual(expect.arrayContaining([
      { reference: `RelatedPerson/${mum}`, name: 'Lucia Rivera', kind: 'relative' },
      { reference: `Practitioner/${doc}`, name: 'Osei', kind: 'clinician' },
    ]));
    const refs = forAna.grantees.map((g) => g.reference);
    expect(refs).not.toContain(`RelatedPerson/${uncle}`); // Ben's
    expect(refs.filter((r) => r.startsWith('RelatedPerson/'))).toEqual([`RelatedPerson/${mum}`]); // not the unregistered one
    const forBen = (await grantees(ben)).grantees.map((g) => g.reference);
    expect(forBen).toContain(`RelatedPerson/${uncle}`);
    expect(forBen).not.toContain(`RelatedPerson/${mum}`);
    // by part of a name, too
    expect((await grantees(ana, 'luc')).grantees).toEqual([{ reference: `RelatedPerson/${mum}`, name: 'Lucia Rivera', kind: 'relative' }]);
    expect((await grantees(ben, 'luc')).grantees).toEqual([]);
  });

  test('without a grant the relative signs in and is offered no patient', async () => {
    const { page } = await signIn(MUM);
    expect(page.status).toBe(200);
    const list = page.text.slice(page.text.indexOf('</form>'));
    expect(list).toContain('No patients found.');
    for (const hidden of [ana, ben, 'Okafor']) expect(list).not.toContain(hidden);
  });

  test("once granted, the relative signs in, picks the patient and reads exactly the granted data; no other patient, no write", async () => {
    const now = Date.now();
    // the portal's grant form: her name and readings, for her treatment
    const granted = await grant(t.app, { patient: ana, actor: `RelatedPerson/${mum}`, accessTo: now + DAY, dataFrom: now - 7 * DAY, dataTo: now, classes: ['Patient', 'Observation'] });
    expect(granted.status).toBe(201);
    const { page } = await signIn(MUM);
    expect(page.text).toContain(ana);
    expect(page.text).not.toContain(ben);
    // Ben is not hers to choose: refused on the server
    expect((await request(t.app.http).post('/oauth/select-patient').type('form').send({ request: requestIdOf(page.text), patient: ben })).status).toBe(400);

    const { token, body } = await tokenFor(ana);
    expect(body.patient).toBe(ana);
    const get = (p: string, purpose = 'TREAT') => request(t.app.http).get(`/fhir/${p}`).set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', purpose);
    const readings = await get(`Observation?patient=${ana}&_count=200`);
    expect(readings.status).toBe(200);
    const obs = ((readings.body as Bundle).entry ?? []).map((e) => e.resource as Observation).filter((r) => r.resourceType === 'Observation');
    expect(obs.length).toBeGreaterThan(0);
    expect(obs.every((o) => o.subject?.reference === `Patient/${ana}`)).toBe(true);
    expect((await get(`Patient/${ana}`)).status).toBe(200);
    // not granted: a purpose the grant does not name, another type, another patient
    const otherPurpose = await get(`Observation?patient=${ana}`, 'HPAYMT');
    expect(((otherPurpose.body as Bundle).entry ?? []).filter((e) => e.resource?.resourceType === 'Observation')).toEqual([]);
    const devices = await get(`Device?patient=${ana}`);
    expect(((devices.body as Bundle).entry ?? []).filter((e) => e.resource?.resourceType === 'Device')).toEqual([]);
    const other = await get(`Observation?patient=${ben}`);
    expect(((other.body as Bundle).entry ?? []).filter((e) => e.resource?.resourceType === 'Observation')).toEqual([]);
    expect(JSON.stringify(other.body)).not.toContain(`"Patient/${ben}"`);
    // a relative is never the patient: writes of the patient's data are refused, and nothing changes
    const before = obs.length;
    const write = await request(t.app.http).post('/fhir/Observation').set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT')
      .set('Content-Type', 'application/fhir+json')
      .send({ resourceType: 'Observation', status: 'final', code: { text: 'note' }, subject: { reference: `Patient/${ana}` } });
    expect(write.status).toBe(403);
    const after = await get(`Observation?patient=${ana}&_count=200`);
    expect(((after.body as Bundle).entry ?? []).filter((e) => e.resource?.resourceType === 'Observation')).toHaveLength(before);
    // the relative's reads are in Ana's access log, as the relative's
    const log = await request(t.app.http).get(`/fhir/AuditEvent?patient=${ana}&_count=1000`).set('Authorization', `Bearer ${patientToken(t.app, ana)}`);
    expect(JSON.stringify(log.body)).toContain(`RelatedPerson/${mum}`);
  }, 60_000);
});
