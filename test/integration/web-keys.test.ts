/**
 * The patient's custodial key in the hands of their sign-in (issue 6 item 2, issue 8 key safety):
 * the key is wrapped under the password at sign-in and only that session can sign; a server-held key
 * moves under the login at the next sign-in; a recovery code is the backup; guardians on chain
 * recover a key whose password and code are lost. Everything through the HTTP surface a user has.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { RelatedPerson } from '@medplum/fhirtypes';
import { Wallet } from 'ethers';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { consentOf, DAY, patientToken, person, registerIdentity } from './consent-helpers.js';

let t: TestApp;
let doc: string;

beforeAll(async () => {
  t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
  doc = await person(t.app, 'Practitioner', 'Osei');
  await registerIdentity(t.app, `Practitioner/${doc}`);
}, 60_000);
afterAll(async () => t?.close());

/** The portal's sign-in, as the browser does it: authorize → login form → approval → code → token. */
async function signIn(username: string, password: string): Promise<{ status: number; token?: string }> {
  const verifier = randomBytes(32).toString('base64url');
  const challenge = createHash('sha256').update(verifier).digest('base64url');
  const redirectUri = t.app.web.urls.portalIndex;
  const clientId = t.app.web.clients.portal;
  const start = await request(t.app.http).get('/oauth/authorize').query({
    response_type: 'code', client_id: clientId, redirect_uri: redirectUri, scope: 'openid fhirUser launch/patient patient/*.cruds',
    state: 's', aud: 'http://127.0.0.1:8080/fhir', code_challenge: challenge, code_challenge_method: 'S256',
  });
  const id = (html: string) => /name="request" value="([^"]+)"/.exec(html)![1]!;
  const login = await request(t.app.http).post('/oauth/login').type('form').send({ request: id(start.text), username, password });
  if (login.status !== 200) return { status: login.status };
  const approved = await request(t.app.http).post('/oauth/approve').type('form').send({ request: id(login.text), decision: 'allow' });
  const code = new URL(approved.headers.location!).searchParams.get('code')!;
  const token = await request(t.app.http).post('/oauth/token').type('form')
    .send({ grant_type: 'authorization_code', code, redirect_uri: redirectUri, client_id: clientId, code_verifier: verifier });
  return { status: token.status, token: token.body.access_token as string };
}

function share(token: string, patient: string) {
  const now = Date.now();
  return request(t.app.http).post('/fhir/Consent').set('Authorization', `Bearer ${token}`).set('Content-Type', 'application/fhir+json')
    .send(consentOf({ patient, actor: `Practitioner/${doc}`, accessTo: now + 3 * DAY, dataFrom: now - 14 * DAY, dataTo: now }));
}

const keySafety = (token: string) => request(t.app.http).get('/apps/api/key-safety').set('Authorization', `Bearer ${token}`);

function keyFileOf(patient: string): Record<string, unknown> {
  const dir = path.join(t.dataDir, 'keys', 'patients');
  const name = `${t.app.consent.keys.pseudonym(patient).slice(2)}.json`;
  expect(readdirSync(dir)).toContain(name);
  return JSON.parse(readFileSync(path.join(dir, name), 'utf8')) as Record<string, unknown>;
}

async function newPatient(family: string, username: string, password: string): Promise<string> {
  const id = await person(t.app, 'Patient', family);
  await t.app.smart.store.addUser({ username, password, fhirUser: `Patient/${id}` });
  return id;
}

describe('custodial key unlocked by the patient\'s sign-in', () => {
  let ana: string;
  let session: string;

  beforeAll(async () => {
    ana = await newPatient('Rivera', 'ana', 'correct horse battery');
  });

  test('a key made in a signed-in session is wrapped under the login; the file holds neither the key nor a master-only seal', async () => {
    const signedIn = await signIn('ana', 'correct horse battery');
    expect(signedIn.status).toBe(200);
    session = signedIn.token!;
    const res = await share(session, ana);
    expect(res.status).toBe(201);
    expect(res.body.status).toBe('active');
    const file = keyFileOf(ana);
    expect(file.login).toBeDefined();
    expect(file.sealed).toBeUndefined();
    expect(JSON.stringify(file)).not.toMatch(/0x[0-9a-f]{64}/i);
    const safety = await keySafety(session);
    expect(safety.body).toMatchObject({ protection: 'login', locked: false, backup: { backedUp: false, recoveryCodeCreated: null, guardians: 0 } });
  });

  test('a token that did not come from the patient\'s sign-in cannot sign: 403 in plain words, no Consent stored', async () => {
    const before = (await t.app.consent.service.list(ana)).length;
    const res = await share(patientToken(t.app, ana), ana);
    expect(res.status).toBe(403);
    expect(res.body.issue[0].diagnostics).toContain('Sign in again');
    expect((await t.app.consent.service.list(ana)).length).toBe(before);
  });

  test('a wrong password is refused at sign-in (the key is not touched)', async () => {
    const before = JSON.stringify(keyFileOf(ana));
    expect((await signIn('ana', 'wrong password!')).status).toBe(401);
    expect(JSON.stringify(keyFileOf(ana))).toBe(before);
  });

  test('the recovery code is the backup: shown once, then the portal reports the key backed up', async () => {
    const res = await request(t.app.http).post('/apps/api/key/recovery-code').set('Authorization', `Bearer ${session}`);
    expect(res.status).toBe(200);
    expect(res.body.code).toMatch(/^([A-Z2-9]{5}-){4}[A-Z2-9]{5}$/);
    expect(JSON.stringify(keyFileOf(ana))).not.toContain(res.body.code);
    const safety = await keySafety(session);
    expect(safety.body.backup).toMatchObject({ backedUp: true, recoveryCodeCreated: expect.any(String) });
    expect(safety.body.features).toEqual({ guardianConsent: true, guardianKeyRecovery: true, custodialBackupStatus: true });

    // A password reset elsewhere (here: a second account of the same patient with another password):
    // that session cannot open the key, and is told so; the recovery code re-opens it under the new login.
    await t.app.smart.store.addUser({ username: 'ana2', password: 'a brand new passphrase', fhirUser: `Patient/${ana}` });
    const other = (await signIn('ana2', 'a brand new passphrase')).token!;
    expect((await keySafety(other)).body.locked).toBe(true);
    expect((await share(other, ana)).status).toBe(403);
    const wrong = await request(t.app.http).post('/apps/api/key/recover-with-code').set('Authorization', `Bearer ${other}`).send({ code: 'AAAAA-AAAAA-AAAAA-AAAAA-AAAAA' });
    expect(wrong.status).toBe(403);
    const address = t.app.consent.keys.get(ana)!.address;
    const ok = await request(t.app.http).post('/apps/api/key/recover-with-code').set('Authorization', `Bearer ${other}`)
      .send({ code: res.body.code.toLowerCase().replace(/-/g, ' ') });
    expect(ok.status).toBe(200);
    expect((await keySafety(other)).body.locked).toBe(false);
    expect((await share(other, ana)).status).toBe(201);
    expect(t.app.consent.keys.get(ana)!.address).toBe(address); // the same key, re-protected
  });
});

describe('password change', () => {
  test('re-wraps the key: the session keeps signing, the old password no longer signs in; a wrong current password changes nothing', async () => {
    const eve = await newPatient('Marsh', 'eve', 'eve-password-1');
    const token = (await signIn('eve', 'eve-password-1')).token!;
    expect((await share(token, eve)).status).toBe(201);
    const change = (body: object) => request(t.app.http).post('/apps/api/password').set('Authorization', `Bearer ${token}`).send(body);
    const before = JSON.stringify(keyFileOf(eve));
    expect((await change({ current: 'not my password', password: 'eve-password-2' })).status).toBe(403);
    expect(JSON.stringify(keyFileOf(eve))).toBe(before);
    expect((await change({ current: 'eve-password-1', password: 'short' })).status).toBe(400);
    expect((await change({ current: 'eve-password-1', password: 'eve-password-2' })).status).toBe(200);
    expect((await share(token, eve)).status).toBe(201);
    expect((await signIn('eve', 'eve-password-1')).status).toBe(401);
    const fresh = (await signIn('eve', 'eve-password-2')).token!;
    expect((await share(fresh, eve)).status).toBe(201);
    expect((await keySafety(fresh)).body.locked).toBe(false);
  });
});

describe('guessing', () => {
  test('a token holder cannot keep guessing the password or the recovery code: 429 after 10 tries', async () => {
    const fay = await newPatient('Moreau', 'fay', 'fay-password-1');
    const token = (await signIn('fay', 'fay-password-1')).token!;
    expect((await share(token, fay)).status).toBe(201);
    const statuses: number[] = [];
    for (let i = 0; i < 11; i++) {
      const res = i % 2
        ? await request(t.app.http).post('/apps/api/password').set('Authorization', `Bearer ${token}`).send({ current: `guess ${i}`, password: 'whatever-123' })
        : await request(t.app.http).post('/apps/api/key/recovery-code').set('Authorization', `Bearer ${token}`).then(() =>
          request(t.app.http).post('/apps/api/key/recover-with-code').set('Authorization', `Bearer ${token}`).send({ code: 'AAAAA-AAAAA-AAAAA-AAAAA-AAAAA' }));
      statuses.push(res.status);
    }
    expect(statuses.slice(0, 10).every((s) => s === 403)).toBe(true);
    expect(statuses[10]).toBe(429);
  }, 60_000);
});

describe('keys made before the patient ever signed in', () => {
  test('a server-held key moves under the login at the next sign-in, with the same address (no data loss)', async () => {
    const ben = await newPatient('Okafor', 'ben', 'ben-password-1');
    // Granted with a token that did not come from a sign-in (as older versions and operator tools did).
    expect((await share(patientToken(t.app, ben), ben)).status).toBe(201);
    const before = keyFileOf(ben);
    expect(before.sealed).toBeDefined();
    const token = (await signIn('ben', 'ben-password-1')).token!;
    const after = keyFileOf(ben);
    expect(after.sealed).toBeUndefined();
    expect(after.login).toBeDefined();
    expect(after.address).toBe(before.address);
    expect((await keySafety(token)).body.protection).toBe('login');
    const consents = await t.app.consent.service.list(ben);
    const revoke = await request(t.app.http).delete(`/fhir/Consent/${consents[0]!.id}`).set('Authorization', `Bearer ${token}`);
    expect(revoke.status).toBe(204);
    // Now only a signed-in session can sign.
    expect((await share(patientToken(t.app, ben), ben)).status).toBe(403);
  });
});

describe('guardians for key recovery', () => {
  let cleo: string;
  let token: string;
  let sister: Wallet;
  let friend: Wallet;
  let sisterRef: string;

  beforeAll(async () => {
    cleo = await newPatient('Dubois', 'cleo', 'cleo-password-1');
    token = (await signIn('cleo', 'cleo-password-1')).token!;
    expect((await share(token, cleo)).status).toBe(201);
    sisterRef = `RelatedPerson/${(await t.app.repository.create<RelatedPerson>({
      resourceType: 'RelatedPerson', patient: { reference: `Patient/${cleo}` }, name: [{ given: ['Maud'], family: 'Dubois' }],
    })).resource.id!}`;
    sister = Wallet.createRandom() as unknown as Wallet;
    friend = Wallet.createRandom() as unknown as Wallet;
    await t.app.consent.identity.registerGrantee(sisterRef, sister.address);
  }, 60_000);

  const put = (body: unknown) => request(t.app.http).put('/apps/api/guardians').set('Authorization', `Bearer ${token}`).send(body as object);

  test('bad guardian input is refused and changes nothing', async () => {
    expect((await put({ guardians: [sisterRef, friend.address], threshold: 3 })).status).toBe(400);
    expect((await put({ guardians: [sisterRef, sisterRef], threshold: 1 })).status).toBe(400);
    expect((await put({ guardians: ['RelatedPerson/nobody'], threshold: 1 })).status).toBe(422);
    expect((await put({ guardians: ['not an address'], threshold: 1 })).status).toBe(400);
    expect((await t.app.consent.guardians.current(cleo)).threshold).toBe(0);
  });

  test('the patient names a related person and a wallet address, 2 of 2; the chain and the portal show them', async () => {
    const res = await put({ guardians: [sisterRef, friend.address], threshold: 2 });
    expect(res.status).toBe(200);
    expect(res.body.state).toBe('done');
    const onChain = await t.app.consent.guardians.current(cleo);
    expect(onChain).toEqual({ guardians: [{ address: sister.address, reference: sisterRef }, { address: friend.address }], threshold: 2 });
    const safety = (await keySafety(token)).body;
    expect(safety.backup).toMatchObject({ backedUp: true, guardians: 2, threshold: 2 });
    expect(safety.recovery.guardians[0]).toMatchObject({ reference: sisterRef, name: 'Maud Dubois' });
    // The portal offers the people of the record who have an identity as guardians.
    expect(safety.related).toEqual([{ reference: sisterRef, name: 'Maud Dubois', registered: true }]);
  });

  test('guardian recovery: one signature is not enough; two replace the key on chain and on disk', async () => {
    const old = t.app.consent.keys.get(cleo)!.address;
    const start = await request(t.app.http).post('/apps/api/recovery').set('Authorization', `Bearer ${token}`);
    expect(start.status).toBe(200);
    const { typedData, newKey } = start.body as { newKey: string; typedData: { domain: object; types: Record<string, []>; message: Record<string, string> } };
    const sign = (w: Wallet) => w.signTypedData(typedData.domain, typedData.types, typedData.message);
    const complete = (signatures: string[]) => request(t.app.http).post('/apps/api/recovery/complete').set('Authorization', `Bearer ${token}`).send({ signatures });
    const one = await complete([await sign(sister)]);
    expect(one.status).toBe(422);
    expect(t.app.consent.keys.get(cleo)!.address).toBe(old);
    const stranger = await complete([await sign(sister), await sign(Wallet.createRandom() as unknown as Wallet)]);
    expect(stranger.status).toBe(422);
    const both = await complete([await sign(sister), await sign(friend)]);
    expect(both.status).toBe(200);
    expect(both.body.address).toBe(newKey);
    expect(await t.app.consent.identity.patientKey(t.app.consent.keys.pseudonym(cleo))).toBe(newKey);
    expect(t.app.consent.keys.get(cleo)!.address).toBe(newKey);
    // The new key signs in this session.
    expect((await share(token, cleo)).status).toBe(201);
  }, 60_000);

  test('a wallet patient gets the SetGuardians typed data and its signature sets them', async () => {
    const dan = await newPatient('Novak', 'dan', 'dan-password-1');
    const wallet = Wallet.createRandom() as unknown as Wallet;
    await t.app.consent.keys.registerWallet(dan, wallet.address);
    const danToken = (await signIn('dan', 'dan-password-1')).token!;
    const res = await request(t.app.http).put('/apps/api/guardians').set('Authorization', `Bearer ${danToken}`).send({ guardians: [friend.address], threshold: 1 });
    expect(res.status).toBe(200);
    expect(res.body.state).toBe('awaiting-signature');
    const td = res.body.typedData as { domain: object; types: Record<string, []>; message: Record<string, string> };
    expect(td.message.guardians).toEqual([friend.address]);
    const bad = await request(t.app.http).post('/apps/api/guardians/sign').set('Authorization', `Bearer ${danToken}`)
      .send({ signature: await friend.signTypedData(td.domain, td.types, td.message) });
    expect(bad.status).toBe(422); // not the patient's key: the chain refuses, nothing set
    const pending = await request(t.app.http).put('/apps/api/guardians').set('Authorization', `Bearer ${danToken}`).send({ guardians: [friend.address], threshold: 1 });
    const td2 = pending.body.typedData as typeof td;
    const signed = await request(t.app.http).post('/apps/api/guardians/sign').set('Authorization', `Bearer ${danToken}`)
      .send({ signature: await wallet.signTypedData(td2.domain, td2.types, td2.message) });
    expect(signed.status).toBe(200);
    expect(signed.body).toMatchObject({ state: 'done', threshold: 1 });
    expect((await keySafety(danToken)).body).toMatchObject({ protection: 'wallet', backup: { backedUp: false } });
  }, 60_000);
});
