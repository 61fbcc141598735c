/**
 * Full SMART App Launch 2.2 flows driven by the real `fhirclient` package (authorize with
 * noRedirect, ready) with the login, patient-picker and approval forms posted like a browser,
 * then FHIR reads with the issued token through `fhir-kit-client`.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createRemoteJWKSet, decodeProtectedHeader, generateKeyPair, exportJWK, jwtVerify, SignJWT } from 'jose';
import { randomUUID } from 'node:crypto';
import { Client as FhirKitClient } from 'fhir-kit-client';
import { startHarness, type Harness } from '../support/smart-harness.js';
import { APP_ORIGIN, REDIRECT_URI, SmartApp, browse, loginAndApprove } from '../support/smart-client.js';
import { createLaunch } from '../../src/smart/launch.js';

let h: Harness;
let appClientId: string;

beforeAll(async () => {
  h = await startHarness();
  await h.smart.store.addUser({ username: 'ana', password: 'correct horse battery', fhirUser: 'Patient/p1' });
  await h.smart.store.addUser({ username: 'dr.ben', password: 'stethoscope-42', fhirUser: 'Practitioner/d1' });
  appClientId = h.smart.store.addClient({
    name: 'CGM Viewer', type: 'public', redirectUris: [REDIRECT_URI], launchUri: `${APP_ORIGIN}/launch`,
    scopes: ['openid', 'fhirUser', 'launch', 'launch/patient', 'offline_access', 'online_access', 'patient/*.rs', 'user/*.rs'],
  }).client.clientId;
});
afterAll(async () => h.close());

function fhir(token: string) {
  return new FhirKitClient({ baseUrl: h.fhirBase, bearerToken: token });
}

describe('standalone launch', () => {
  test('patient user: login, approval, token with patient context, then reads of their own data only', async () => {
    const app = new SmartApp();
    const authorizeUrl = await app.authorizeUrl({
      clientId: appClientId, iss: h.fhirBase, scope: 'openid fhirUser launch/patient patient/*.rs offline_access',
    });
    expect(authorizeUrl).toContain('code_challenge_method=S256');
    const login = await browse(authorizeUrl);
    expect(login.status).toBe(200);
    expect(login.html).toContain('name="username"');
    expect(login.html).toContain('name="password"');
    const done = await loginAndApprove(h.baseUrl, login.html, { username: 'ana', password: 'correct horse battery' });
    const approval = done.pages.at(-1)!;
    expect(approval).toContain('asks to act for you (signed in as <strong>ana</strong>, Patient/p1) on <strong>your own records</strong>');
    expect(approval).toContain('Read all kinds of records of the selected patient');
    expect(approval).toContain('Keep access after you close the app');
    expect(done.status).toBe(302);
    expect(done.location!.startsWith(`${REDIRECT_URI}?code=`)).toBe(true);

    const client = await app.ready(done.location!);
    expect(client.patient.id).toBe('p1');
    expect(client.getFhirUser()).toBe('Patient/p1');
    const tr = client.state.tokenResponse!;
    expect(tr.token_type).toBe('Bearer');
    expect(typeof tr.expires_in).toBe('number');
    expect(tr.scope).toBe('openid fhirUser launch/patient patient/*.rs offline_access');
    expect(tr.refresh_token).toEqual(expect.any(String));
    expect(tr.id_token).toEqual(expect.any(String));
    expect(tr.need_patient_banner).toBe(true);
    // The id_token is RS256 with a kid from the published JWKS, for this client, naming the user.
    expect(decodeProtectedHeader(tr.id_token!)).toMatchObject({ alg: 'RS256', kid: expect.any(String) });
    const { payload } = await jwtVerify(tr.id_token!, createRemoteJWKSet(new URL(h.smart.urls.jwks)), {
      issuer: h.fhirBase, audience: appClientId, algorithms: ['RS256'], currentDate: new Date(h.now()) });
    expect(payload).toMatchObject({ sub: 'ana', fhirUser: `${h.fhirBase}/Patient/p1` });
    const style = await fetch(String(tr.smart_style_url));
    expect(style.status).toBe(200);
    expect(await style.json()).toHaveProperty('color_background');

    const token = tr.access_token!;
    await expect(fhir(token).read({ resourceType: 'Patient', id: 'p1' })).resolves.toMatchObject({ id: 'p1' });
    // patient/ scopes never reach another patient.
    await expect(fhir(token).read({ resourceType: 'Patient', id: 'p2' })).rejects.toMatchObject({ response: { status: 404 } });
    await expect(fhir(token).read({ resourceType: 'Observation', id: 'o3' })).rejects.toMatchObject({ response: { status: 404 } });
    const bundle = await fhir(token).search({ resourceType: 'Observation', searchParams: {} }) as unknown as { entry: Array<{ resource: { id: string } }> };
    expect(bundle.entry.map((e) => e.resource.id).sort()).toEqual(['o1', 'o2']);
  });

  test('practitioner user: picks a patient, gets that patient in context', async () => {
    const app = new SmartApp();
    const authorizeUrl = await app.authorizeUrl({
      clientId: appClientId, iss: h.fhirBase, scope: 'openid fhirUser launch/patient patient/Observation.rs user/Patient.rs',
    });
    const login = await browse(authorizeUrl);
    const done = await loginAndApprove(h.baseUrl, login.html, { username: 'dr.ben', password: 'stethoscope-42' }, { patient: 'p2' });
    expect(done.pages[1]).toContain('Choose a patient');
    expect(done.pages[1]).toContain('Ben Okafor');
    expect(done.status).toBe(302);
    const client = await app.ready(done.location!);
    expect(client.patient.id).toBe('p2');
    expect(client.getFhirUser()).toBe('Practitioner/d1');
    const token = client.state.tokenResponse!.access_token!;
    const bundle = await fhir(token).search({ resourceType: 'Observation', searchParams: {} }) as unknown as { entry: Array<{ resource: { id: string } }> };
    expect(bundle.entry.map((e) => e.resource.id)).toEqual(['o3']);
    await expect(fhir(token).read({ resourceType: 'Patient', id: 'p1' })).resolves.toMatchObject({ id: 'p1' });
  });

  test('the user denies: the app gets access_denied with its state and no code', async () => {
    const app = new SmartApp();
    const login = await browse(await app.authorizeUrl({ clientId: appClientId, iss: h.fhirBase, scope: 'launch/patient patient/*.rs' }));
    const done = await loginAndApprove(h.baseUrl, login.html, { username: 'ana', password: 'correct horse battery' }, { decision: 'deny' });
    const target = new URL(done.location!);
    expect(target.searchParams.get('error')).toBe('access_denied');
    expect(target.searchParams.get('state')).toEqual(expect.any(String));
    expect(target.searchParams.has('code')).toBe(false);
    await expect(app.ready(done.location!)).rejects.toThrow(/access_denied/);
  });

  test('a wrong password shows the login page again with an error and issues nothing', async () => {
    const app = new SmartApp();
    const login = await browse(await app.authorizeUrl({ clientId: appClientId, iss: h.fhirBase, scope: 'launch/patient patient/*.rs' }));
    const done = await loginAndApprove(h.baseUrl, login.html, { username: 'ana', password: 'wrong password' });
    expect(done.status).toBe(401);
    expect(done.html).toContain('Wrong username or password.');
    expect(done.location).toBeUndefined();
  });
});

describe('EHR launch', () => {
  /** An EHR system client's token with system/launch (Backend Services, ES384 assertion). */
  async function ehrToken(kid: string): Promise<string> {
    const { publicKey, privateKey } = await generateKeyPair('ES384');
    const jwk = { ...(await exportJWK(publicKey)), kid, alg: 'ES384' };
    const ehr = h.smart.store.addClient({ name: 'EHR', type: 'confidential-asymmetric', jwks: { keys: [jwk] }, scopes: ['system/launch'] }).client;
    const assertion = await new SignJWT({}).setProtectedHeader({ alg: 'ES384', kid, typ: 'JWT' })
      .setIssuer(ehr.clientId).setSubject(ehr.clientId).setAudience(h.smart.urls.token).setJti(randomUUID())
      .setIssuedAt(Math.floor(h.now() / 1000)).setExpirationTime(Math.floor(h.now() / 1000) + 60).sign(privateKey);
    const tokenRes = await fetch(h.smart.urls.token, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grant_type: 'client_credentials', scope: 'system/launch',
        client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: assertion }) });
    expect(tokenRes.status).toBe(200);
    return ((await tokenRes.json()) as { access_token: string }).access_token;
  }

  const postLaunch = (token: string, body: Record<string, unknown>) => fetch(`${h.baseUrl}/smart/launch`, { method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });

  test('EHR creates a launch with system/launch; the app gets a code without pages and the launch context', async () => {
    const launchRes = await postLaunch(await ehrToken('ehr-1'), { patient: 'p1', encounter: 'e1', practitioner: 'd1', client_id: appClientId,
      fhirContext: [{ reference: 'Observation/o1' }] });
    expect(launchRes.status).toBe(201);
    const { launch_url: launchUrl } = (await launchRes.json()) as { launch_url: string };
    expect(launchUrl.startsWith(`${APP_ORIGIN}/launch?iss=`)).toBe(true);

    const app = new SmartApp();
    const authorizeUrl = await app.authorizeUrl({ clientId: appClientId, launchUrl, scope: 'openid fhirUser launch patient/*.rs' });
    expect(authorizeUrl).toContain('launch=');
    const redirect = await browse(authorizeUrl);
    expect(redirect.status).toBe(302);
    const client = await app.ready(redirect.location!);
    const tr = client.state.tokenResponse!;
    expect(tr.patient).toBe('p1');
    expect(tr.encounter).toBe('e1');
    expect(tr.need_patient_banner).toBe(false);
    expect(tr.fhirContext).toEqual([{ reference: 'Observation/o1' }]);
    expect(tr.smart_style_url).toBe(`${h.baseUrl}/smart/style.json`);
    expect(client.getFhirUser()).toBe('Practitioner/d1');
    await expect(fhir(tr.access_token!).read({ resourceType: 'Observation', id: 'o1' })).resolves.toMatchObject({ id: 'o1' });

    // The launch value is single-use.
    const again = await browse(await new SmartApp().authorizeUrl({ clientId: appClientId, launchUrl, scope: 'launch patient/*.rs' }));
    expect(new URL(again.location!).searchParams.get('error')).toBe('invalid_request');
  });

  test('the EHR may ask the app to show its own patient banner and say what it launches it for (intent); a field a launch does not take is refused', async () => {
    const token = await ehrToken('ehr-2');
    const launchRes = await postLaunch(token, { patient: 'p1', practitioner: 'd1', client_id: appClientId, need_patient_banner: true, intent: 'reconcile-medications' });
    expect(launchRes.status).toBe(201);
    const app = new SmartApp();
    const redirect = await browse(await app.authorizeUrl({ clientId: appClientId, launchUrl: ((await launchRes.json()) as { launch_url: string }).launch_url, scope: 'openid fhirUser launch patient/*.rs' }));
    const tr = (await app.ready(redirect.location!)).state.tokenResponse!;
    expect(tr.need_patient_banner).toBe(true);
    expect(tr.intent).toBe('reconcile-medications');
    for (const [body, field] of [
      [{ patient: 'p1', practitioner: 'd1', client_id: appClientId, needPatientBanner: true }, 'needPatientBanner'],
      [{ patient: 'p1', practitioner: 'd1', client_id: appClientId, need_patient_banner: 'yes' }, 'need_patient_banner'],
      [{ patient: 'p1', practitioner: 'd1', client_id: appClientId, intent: 'two\nlines' }, 'intent'],
    ] as const) {
      const refused = await postLaunch(token, body);
      expect(refused.status).toBe(400);
      const error = (await refused.json()) as { error: string; error_description: string };
      expect(error.error).toBe('invalid_request');
      expect(error.error_description).toContain(field);
    }
  });

  test('a launch bound to one app is refused to another app without being used up: its own app still gets it, once', async () => {
    const other = h.smart.store.addClient({ name: 'Other app', type: 'public', redirectUris: [REDIRECT_URI], scopes: ['launch', 'patient/*.rs'] }).client.clientId;
    const { launch } = await createLaunch({ kv: h.kv, store: h.smart.store, fhirBase: h.fhirBase }, { patient: 'p1', practitioner: 'd1', clientId: appClientId });
    const launchUrl = `${APP_ORIGIN}/launch?iss=${encodeURIComponent(h.fhirBase)}&launch=${launch}`;

    const stolen = await browse(await new SmartApp().authorizeUrl({ clientId: other, launchUrl, scope: 'launch patient/*.rs' }));
    expect(stolen.status).toBe(302);
    const refused = new URL(stolen.location!).searchParams;
    expect(refused.get('error')).toBe('invalid_request');
    expect(refused.get('error_description')).toMatch(/another application/);
    expect(refused.has('code')).toBe(false);

    const app = new SmartApp();
    const own = await browse(await app.authorizeUrl({ clientId: appClientId, launchUrl, scope: 'openid fhirUser launch patient/*.rs' }));
    expect(own.status).toBe(302);
    const client = await app.ready(own.location!);
    expect(client.state.tokenResponse!.patient).toBe('p1');
    expect(client.getFhirUser()).toBe('Practitioner/d1');

    const again = await browse(await new SmartApp().authorizeUrl({ clientId: appClientId, launchUrl, scope: 'launch patient/*.rs' }));
    expect(new URL(again.location!).searchParams.get('error_description')).toMatch(/unknown, used or expired/);
  });

  test('a practitioner whose user account is disabled loses the tokens of EHR launches at once, and gets no new launch', async () => {
    // an EHR launch has no sign-in: its tokens name Practitioner/d2, whom this user is
    await h.smart.store.addUser({ username: 'dr.two', password: 'a long enough password', fhirUser: 'Practitioner/d2' });
    const launchOnce = async () => {
      const { launch } = await createLaunch({ kv: h.kv, store: h.smart.store, fhirBase: h.fhirBase }, { patient: 'p1', practitioner: 'd2', clientId: appClientId });
      const app = new SmartApp();
      return { app, page: await browse(await app.authorizeUrl({ clientId: appClientId, launchUrl: `${APP_ORIGIN}/launch?iss=${encodeURIComponent(h.fhirBase)}&launch=${launch}`, scope: 'openid fhirUser launch patient/*.rs' })) };
    };
    const first = await launchOnce();
    const client = await first.app.ready(first.page.location!);
    const token = client.state.tokenResponse!.access_token!;
    const read = () => fetch(`${h.fhirBase}/Patient/p1`, { headers: { authorization: `Bearer ${token}` } });
    expect((await read()).status).toBe(200);

    h.smart.store.setUserDisabled('dr.two', true, h.now());
    expect((await read()).status).toBe(401);
    const refused = new URL((await launchOnce()).page.location!).searchParams;
    expect(refused.get('error')).toBe('access_denied');
    expect(refused.has('code')).toBe(false);

    h.advance(1000);
    h.smart.store.setUserDisabled('dr.two', false, h.now());
    h.advance(1000);
    expect((await read()).status).toBe(401);
    const again = await launchOnce();
    expect((await again.app.ready(again.page.location!)).state.tokenResponse!.access_token).toBeTruthy();
  });

  test('POST /smart/launch refuses a request without a token (401 with a Bearer challenge)', async () => {
    const noToken = await fetch(`${h.baseUrl}/smart/launch`, { method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ patient: 'p1', practitioner: 'd1' }) });
    expect(noToken.status).toBe(401);
    expect(noToken.headers.get('www-authenticate')).toMatch(/^Bearer/);
  });
});
