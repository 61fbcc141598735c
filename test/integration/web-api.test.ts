/**
 * The server side of the apps (src/web): static pages and the fhirclient and ethers builds served locally,
 * the apps registered as SMART clients with their launch URIs, and the /apps/api answers — each
 * requester sees only what is theirs.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { randomUUID } from 'node:crypto';
import { grantView } from '../../src/web/index.js';
import { GRANTEE_LIMITS } from '../../src/web/api.js';
import { consentOf, DAY, grant, patientToken, person, practitionerToken, registerIdentity } from './consent-helpers.js';

let t: TestApp;
let ana: string;
let ben: string;
let doc: string;
let other: string;

beforeAll(async () => {
  t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
  ana = await person(t.app, 'Patient', 'Rivera');
  ben = await person(t.app, 'Patient', 'Okafor');
  doc = await person(t.app, 'Practitioner', 'Osei');
  other = await person(t.app, 'Practitioner', 'Lindqvist');
  await registerIdentity(t.app, `Practitioner/${doc}`);
  await registerIdentity(t.app, `Practitioner/${other}`);
  const now = Date.now();
  expect((await grant(t.app, { patient: ana, actor: `Practitioner/${doc}`, accessTo: now + 7 * DAY, dataFrom: now - 14 * DAY, dataTo: now + 7 * DAY })).status).toBe(201);
  expect((await grant(t.app, { patient: ana, actor: `Practitioner/${other}`, accessTo: now + 2 * DAY, dataFrom: now - 14 * DAY, dataTo: now })).status).toBe(201);
}, 60_000);
afterAll(async () => t?.close());

describe('apps served by GlucoGuard', () => {
  test('pages, scripts and the fhirclient build come from this server (no CDN), under the default CSP', async () => {
    for (const path of ['/apps/clinician/launch.html', '/apps/clinician/index.html', '/apps/clinician/signed-out.html', '/apps/portal/launch.html', '/apps/portal/index.html', '/apps/portal/signed-out.html']) {
      const res = await request(t.app.http).get(path);
      expect(res.status).toBe(200);
      expect(res.headers['content-type']).toMatch(/text\/html/);
      expect(res.text).not.toMatch(/https?:\/\//);
      expect(res.text).not.toMatch(/<script>(?!<)/); // no inline scripts: script-src 'self'
      expect(res.headers['content-security-policy']).toContain("script-src 'self'");
    }
    const lib = await request(t.app.http).get('/apps/vendor/fhir-client.min.js');
    expect(lib.status).toBe(200);
    expect(lib.headers['content-type']).toMatch(/javascript/);
    expect(lib.text).toContain('oauth2');
    // ethers' ES-module build, which the portal's guardian-recovery page imports (shared/eip712.js).
    const ethers = await request(t.app.http).get('/apps/vendor/ethers.min.js');
    expect(ethers.status).toBe(200);
    expect(ethers.headers['content-type']).toMatch(/javascript/);
    expect(ethers.headers['cache-control']).toBe(lib.headers['cache-control']);
    expect(ethers.headers['x-content-type-options']).toBe('nosniff');
    expect(ethers.text).toMatch(/export\s*\{[^}]*\bverifyTypedData\b/);
    const css = await request(t.app.http).get('/apps/shared/app.css');
    expect(css.text).toContain('@media print');
    expect(css.text).not.toMatch(/@import|url\(http/);
  });

  test('the apps are registered SMART clients; config.json names their client ids', async () => {
    const res = await request(t.app.http).get('/apps/config.json');
    expect(res.status).toBe(200);
    expect(res.body.fhirBase).toBe('http://127.0.0.1:8080/fhir');
    const clinician = t.app.smart.store.getClient(res.body.clinician.clientId);
    expect(clinician?.launchUri).toBe('http://127.0.0.1:8080/apps/clinician/launch.html');
    expect(clinician?.redirectUris).toEqual(['http://127.0.0.1:8080/apps/clinician/index.html']);
    expect(t.app.smart.store.getClient(res.body.portal.clientId)?.scopes).toContain('launch/patient');
  });

  test('the client ids survive a restart', async () => {
    const before = t.app.web.clients;
    const app = await t.restart();
    expect(app.web.clients).toEqual(before);
  }, 60_000);

  test('a plain-http public base URL disables the apps (with a reason) instead of stopping the proxy', async () => {
    const insecure = await startTestApp({ GLUCOGUARD_AUTH: 'on', GLUCOGUARD_BASE_URL: 'http://glucoguard.example:8080' });
    try {
      const res = await request(insecure.app.http).get('/apps/config.json');
      expect(res.status).toBe(503);
      expect(res.body.issue[0].diagnostics).toContain('https GLUCOGUARD_BASE_URL');
      expect((await request(insecure.app.http).get('/fhir/metadata')).status).toBe(200);
    } finally {
      await insecure.close();
    }
  }, 60_000);

  test('unknown app paths are 404, paths outside smart-on-fhir are not served', async () => {
    expect((await request(t.app.http).get('/apps/nope.html')).status).toBe(404);
    expect((await request(t.app.http).get('/apps/..%2fpackage.json')).status).toBe(404);
  });
});

describe('/apps/api', () => {
  test('no token: 401 OperationOutcome with a challenge', async () => {
    const res = await request(t.app.http).get(`/apps/api/access?patient=${ana}`);
    expect(res.status).toBe(401);
    expect(res.body.resourceType).toBe('OperationOutcome');
    expect(res.headers['www-authenticate']).toMatch(/^Bearer/);
  });

  test("access: the clinician sees only their own grant from the patient, with who granted it and until when", async () => {
    const res = await request(t.app.http).get(`/apps/api/access?patient=${ana}`).set('Authorization', `Bearer ${practitionerToken(t.app, doc, ana)}`);
    expect(res.status).toBe(200);
    expect(res.body.grants).toHaveLength(1);
    expect(res.body.grants[0]).toMatchObject({ state: 'active', grantedBy: `Patient/${ana}`, grantedByName: 'Rivera', purposes: ['TREAT'] });
    expect(JSON.stringify(res.body)).not.toContain(`Practitioner/${other}`);
    // Another patient: nothing (not an error that reveals whether grants exist).
    const none = await request(t.app.http).get(`/apps/api/access?patient=${ben}`).set('Authorization', `Bearer ${practitionerToken(t.app, doc, ben)}`);
    expect(none.body.grants).toEqual([]);
  });

  test('access: a revoked grant reads as revoked', async () => {
    const list = await t.app.consent.service.list(ana);
    const mine = list.find((c) => c.provision?.actor?.[0]?.reference?.reference === `Practitioner/${other}`)!;
    expect((await request(t.app.http).delete(`/fhir/Consent/${mine.id}`).set('Authorization', `Bearer ${patientToken(t.app, ana)}`)).status).toBe(204);
    const res = await request(t.app.http).get(`/apps/api/access?patient=${ana}`).set('Authorization', `Bearer ${practitionerToken(t.app, other, ana)}`);
    expect(res.body.grants.map((g: { state: string }) => g.state)).toEqual(['revoked']);
  });

  test('access: bad patient id is a 400; a patient asking about another patient is a 403', async () => {
    expect((await request(t.app.http).get('/apps/api/access?patient=a/b').set('Authorization', `Bearer ${patientToken(t.app, ana)}`)).status).toBe(400);
    expect((await request(t.app.http).get(`/apps/api/access?patient=${ben}`).set('Authorization', `Bearer ${patientToken(t.app, ana)}`)).status).toBe(403);
  });

  test('grantees: a patient gets the clinicians with an identity on chain; a clinician is refused', async () => {
    const res = await request(t.app.http).get('/apps/api/grantees').set('Authorization', `Bearer ${patientToken(t.app, ana)}`);
    expect(res.status).toBe(200);
    expect(res.body.grantees.map((g: { reference: string }) => g.reference).sort()).toEqual([`Practitioner/${other}`, `Practitioner/${doc}`].sort());
    expect((await request(t.app.http).get('/apps/api/grantees').set('Authorization', `Bearer ${practitionerToken(t.app, doc)}`)).status).toBe(403);
  });

  test('grantees: every registered clinician is offered, however many unregistered Practitioners come before them', async () => {
    for (let i = 0; i < 105; i++) await person(t.app, 'Practitioner', `Unregistered ${String(i).padStart(3, '0')}`);
    const nadia = await person(t.app, 'Practitioner', 'Newcomer');
    await registerIdentity(t.app, `Practitioner/${nadia}`);
    const res = await request(t.app.http).get('/apps/api/grantees').set('Authorization', `Bearer ${patientToken(t.app, ana)}`);
    expect(res.status).toBe(200);
    expect(res.body.grantees.map((g: { reference: string }) => g.reference).sort()).toEqual([`Practitioner/${other}`, `Practitioner/${doc}`, `Practitioner/${nadia}`].sort());
    expect(res.body.grantees.find((g: { reference: string }) => g.reference === `Practitioner/${nadia}`)).toMatchObject({ name: 'Newcomer', kind: 'clinician' });
    expect(res.body.complete).toBe(true);
  }, 120_000);

  test('grantees: a directory longer than the limits is cut (complete: false) and searched by part of a name', async () => {
    const limits = { ...GRANTEE_LIMITS };
    Object.assign(GRANTEE_LIMITS, { page: 20, scan: 40 });
    try {
      const cut = await request(t.app.http).get('/apps/api/grantees').set('Authorization', `Bearer ${patientToken(t.app, ana)}`);
      expect(cut.status).toBe(200);
      expect(cut.body.complete).toBe(false);
      expect(cut.body.grantees.map((g: { name: string }) => g.name)).not.toContain('Newcomer');
      const found = await request(t.app.http).get('/apps/api/grantees').query({ name: 'comer' }).set('Authorization', `Bearer ${patientToken(t.app, ana)}`);
      expect(found.status).toBe(200);
      expect(found.body).toMatchObject({ complete: true, grantees: [{ name: 'Newcomer', kind: 'clinician' }] });
      // unregistered people are never listed, whatever the name
      const unregistered = await request(t.app.http).get('/apps/api/grantees').query({ name: 'Unregistered' }).set('Authorization', `Bearer ${patientToken(t.app, ana)}`);
      expect(unregistered.body.grantees).toEqual([]);
      expect((await request(t.app.http).get('/apps/api/grantees').query({ name: 'x'.repeat(101) }).set('Authorization', `Bearer ${patientToken(t.app, ana)}`)).status).toBe(400);
    } finally {
      Object.assign(GRANTEE_LIMITS, limits);
    }
  }, 60_000);

  test('signing out (RFC 7009 revocation of the access token) locks the key the sign-in unlocked', async () => {
    const cruz = await person(t.app, 'Patient', 'Cruz');
    const password = 'a long enough password';
    const gid = randomUUID();
    // What the portal's sign-in does (src/web/index.ts onPatientLogin), then a key made inside that session.
    await t.app.consent.keys.onLogin(cruz, password, gid, 3_600_000);
    const session = { kind: 'token' as const, grantId: gid };
    await t.app.consent.keys.ensure(cruz, session);
    await expect(t.app.consent.keys.signer(cruz, session)).resolves.toBeDefined();
    const portal = t.app.web.clients.portal;
    const token = t.app.smart.tokens.signAccessToken({
      gid, clientId: portal, sub: 'cruz', fhirUser: `Patient/${cruz}`, patient: cruz, scopes: ['openid', 'fhirUser', 'launch/patient', 'patient/*.cruds'],
    }).token;
    expect((await request(t.app.http).get('/apps/api/key-safety').set('Authorization', `Bearer ${token}`)).body.protection).toBe('login');
    const revoked = await request(t.app.http).post('/oauth/revoke').type('form').send({ token, token_type_hint: 'access_token', client_id: portal });
    expect(revoked.status).toBe(200);
    expect((await request(t.app.http).get('/apps/api/key-safety').set('Authorization', `Bearer ${token}`)).status).toBe(401);
    // The unlock is gone server-side: nothing can sign for that session any more.
    await expect(t.app.consent.keys.signer(cruz, session)).rejects.toMatchObject({ code: 'ERR_FORBIDDEN' });
  }, 60_000);

  test('key-safety: the custodial key made at the first grant, how it is protected and whether it is backed up', async () => {
    const res = await request(t.app.http).get('/apps/api/key-safety').set('Authorization', `Bearer ${patientToken(t.app, ana)}`);
    expect(res.status).toBe(200);
    expect(res.body.key).toMatchObject({ custodial: true, address: expect.stringMatching(/^0x[0-9a-fA-F]{40}$/) });
    expect(res.body.features).toEqual({ guardianConsent: true, guardianKeyRecovery: true, custodialBackupStatus: true });
    // Made with a token that did not come from a sign-in: server-held until the patient signs in; no backup yet.
    expect(res.body).toMatchObject({ protection: 'server', backup: { backedUp: false, recoveryCodeCreated: null, guardians: 0, threshold: 0 } });
    const fresh = await request(t.app.http).get('/apps/api/key-safety').set('Authorization', `Bearer ${patientToken(t.app, ben)}`);
    expect(fresh.body.key).toBeNull();
  });
});

describe('grant states in words (grantView)', () => {
  const now = Date.UTC(2026, 10, 25, 12);
  const base = consentOf({ patient: 'p1', actor: 'Practitioner/d1', accessFrom: now - DAY, accessTo: now + DAY, dataFrom: now - 14 * DAY, dataTo: now });
  test.each([
    ['active', { status: 'active' }, 'active'],
    ['recorded but not yet on chain (awaiting a signature)', { status: 'proposed' }, 'pending'],
    ['revoked', { status: 'inactive' }, 'revoked'],
    ['expired', { status: 'active', provision: { ...base.provision, period: { start: new Date(now - 3 * DAY).toISOString(), end: new Date(now - DAY).toISOString() } } }, 'expired'],
    ['not started', { status: 'active', provision: { ...base.provision, period: { start: new Date(now + DAY).toISOString(), end: new Date(now + 3 * DAY).toISOString() } } }, 'not-started'],
  ] as const)('%s', (_name, patch, state) => {
    expect(grantView({ ...base, ...patch } as typeof base, now)?.state).toBe(state);
  });

  test('ends given as dates (the whole day counts) are passed on as the dates they are; instants are not', () => {
    const dated = { ...base, status: 'active' as const, provision: { ...base.provision,
      period: { start: '2026-11-20', end: '2027-01-01' }, dataPeriod: { start: '2026-11-20', end: '2026-11-30' } } };
    expect(grantView(dated, now)).toMatchObject({
      state: 'active', accessTo: '2027-01-01T23:59:59.999Z', accessToDate: '2027-01-01',
      dataFrom: '2026-11-20T00:00:00.000Z', dataFromDate: '2026-11-20', dataTo: '2026-11-30T23:59:59.999Z', dataToDate: '2026-11-30',
    });
    const view = grantView({ ...base, status: 'active' }, now)!;
    expect(view).not.toHaveProperty('accessToDate');
    expect(view).not.toHaveProperty('dataToDate');
  });

  test('a Consent the engine cannot read is left out, not shown half-understood', () => {
    expect(grantView({ ...base, provision: { ...base.provision, actor: [] } }, now)).toBeUndefined();
  });
});
