/**
 * Black-box findings in the two SMART apps, in Chromium (playwright-core), against a whole
 * GlucoGuard with auth on:
 * - a patient whose sensor reports mmol/L (LOINC 105272-9) saw "no readings" in both apps: the apps
 *   searched 99504-3 (mg/dL) only. Their report is now found and shown in mmol/L;
 * - a clinician with several active grants from one patient saw one of them (any), with its data
 *   period, beside a report drawn from all of them: each is listed;
 * - `iss` (and fhirclient's URL overrides) naming another server was followed up to the page's CSP;
 *   SMART asks the app itself to check it: both launch pages refuse it;
 * - a session that ended (token revoked or expired, user disabled) read as "you do not have access"
 *   in the clinician app and as a raw HTTP dump ("URL: …", JSON, "Please launch it as SMART app!")
 *   or "could not be loaded" in every portal section: both apps now say the sign-in ended;
 * - daily profiles stepped back 24 h from the last local midnight, so in a week with a clock change
 *   every earlier day was an hour off (the 25-hour day lost an hour of readings);
 * - one AuditEvent whose entity.query was not base64 made the whole access log disappear;
 * - coming back from the authorization server with an error (the user said no, a used launch) read
 *   as "could not connect to the health record" / "please sign in": now said in words.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { AuditEvent, Patient, Practitioner } from '@medplum/fhirtypes';
import type { Page } from 'playwright-core';
import request from 'supertest';
import { createLaunch } from '../../src/smart/launch.js';
import type { TestApp } from '../support/app.js';
import { consentOf, DAY, patientToken, registerIdentity } from '../integration/consent-helpers.js';
import { CHROMIUM, chromiumPath, launchBrowser, signIn, signInToPortal, type Browser } from './browser.js';
import { serveTestApp, type ServedApp } from './served-app.js';

const CHROME = chromiumPath();
if (!CHROME) console.warn(`SKIPPED bb-apps e2e: ${CHROMIUM} is missing (apt-get install -y chromium, or set CHROMIUM_PATH).`);
const describeBrowser = CHROME ? describe : describe.skip;

const MO = { username: 'mo', password: 'mmol-patient-pw' };
const ANA = { username: 'ana.bb', password: 'mgdl-patient-pw' };

/** A Dexcom Clarity export in mmol/L: one reading every 5 minutes for `days` days, ending 10 minutes ago. */
function clarityMmol(days: number): string {
  const rows = ['Index,Timestamp (YYYY-MM-DDThh:mm:ss),Event Type,Event Subtype,Patient Info,Device Info,Source Device ID,Glucose Value (mmol/L),Insulin Value (u),Carb Value (grams),Duration (hh:mm:ss),Glucose Rate of Change (mmol/L/min),Transmitter Time (Long Integer),Transmitter ID'];
  const end = Date.now() - 10 * 60_000;
  let i = 1;
  for (let t = end - days * DAY; t <= end; t += 5 * 60_000) {
    const hour = new Date(t).getUTCHours();
    rows.push(`${i++},${new Date(t).toISOString().slice(0, 19)},EGV,,,,G6,${(7 + 3 * Math.sin((hour / 24) * 2 * Math.PI)).toFixed(1)},,,,,${Math.round(t / 1000)},8AB12C`);
  }
  return rows.join('\n');
}

describeBrowser('SMART apps: black-box findings', () => {
  let served: ServedApp | undefined;
  let t: TestApp;
  let base: string;
  let browser: Browser;
  let mo: string;
  let ana: string;
  let doc: string;
  let other: Server;
  const otherSaw: string[] = [];
  let otherBase: string;

  beforeAll(async () => {
    served = await serveTestApp();
    ({ t, base } = served);
    mo = (await t.app.repository.create<Patient>({ resourceType: 'Patient', name: [{ given: ['Mo'], family: 'Mmol' }], birthDate: '1970-01-01' })).resource.id!;
    ana = (await t.app.repository.create<Patient>({ resourceType: 'Patient', name: [{ given: ['Ana'], family: 'Rivera' }], birthDate: '1958-04-02' })).resource.id!;
    doc = (await t.app.repository.create<Practitioner>({ resourceType: 'Practitioner', name: [{ given: ['Kofi'], family: 'Osei' }] })).resource.id!;
    await registerIdentity(t.app, `Practitioner/${doc}`);
    await t.app.smart.store.addUser({ ...MO, fhirUser: `Patient/${mo}` });
    await t.app.smart.store.addUser({ ...ANA, fhirUser: `Patient/${ana}` });
    const imported = await request(t.app.http).post(`/cgm/ingest?patient=${mo}&format=dexcom-clarity&tz=UTC`)
      .set('Authorization', `Bearer ${patientToken(t.app, mo)}`).set('Content-Type', 'text/csv').send(clarityMmol(10));
    expect(imported.status).toBe(200);
    expect(imported.body.created).toBeGreaterThan(2000);
    const now = Date.now();
    // Two active grants to the same clinician: recent data, and a January that the report never shows.
    for (const spec of [
      { patient: mo, actor: `Practitioner/${doc}`, accessTo: now + 7 * DAY, dataFrom: now - 30 * DAY, dataTo: now + 7 * DAY },
      { patient: mo, actor: `Practitioner/${doc}`, accessTo: now + 5 * DAY, dataFrom: Date.UTC(2026, 0, 1), dataTo: Date.UTC(2026, 0, 14) },
    ]) {
      const res = await request(t.app.http).post('/fhir/Consent').set('Authorization', `Bearer ${patientToken(t.app, mo)}`)
        .set('Content-Type', 'application/fhir+json').send(consentOf(spec));
      expect(res.status).toBe(201);
    }
    // Another server, which a crafted launch link names as `iss`: it must never hear from the apps.
    other = createServer((req, res) => {
      otherSaw.push(`${req.method} ${req.url}`);
      res.setHeader('Access-Control-Allow-Origin', '*');
      res.setHeader('Content-Type', 'application/json');
      res.end(JSON.stringify({ authorization_endpoint: `${otherBase}/authorize`, token_endpoint: `${otherBase}/token`, capabilities: ['launch-ehr', 'launch-standalone'] }));
    });
    await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve));
    otherBase = `http://127.0.0.1:${(other.address() as AddressInfo).port}`;
    browser = await launchBrowser();
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    await new Promise<void>((resolve) => (other ? other.close(() => resolve()) : resolve()));
    await served?.close();
  });

  async function launchClinician(patient: string): Promise<Page> {
    const { launchUrl } = await createLaunch({ kv: t.app.kv, store: t.app.smart.store, fhirBase: `${base}/fhir` },
      { patient, practitioner: doc, clientId: t.app.web.clients.clinician });
    const page = await browser.newPage('clinician');
    await page.goto(launchUrl!);
    await signIn(page, { username: '', password: '' }, '/apps/clinician/index.html');
    await page.locator('[data-access]').first().waitFor({ timeout: 30_000 });
    return page;
  }

  /** Revokes the page's access token at the server, as a sign-out in another window or an expiry would end it. */
  async function endTokenOf(page: Page): Promise<void> {
    const { token, clientId } = await page.evaluate(() => {
      const state = JSON.parse(sessionStorage.getItem(JSON.parse(sessionStorage.getItem('SMART_KEY')!))!);
      return { token: state.tokenResponse.access_token as string, clientId: state.clientId as string };
    });
    const res = await request(t.app.http).post('/oauth/revoke').type('form').send({ token, client_id: clientId });
    expect(res.status).toBe(200);
  }

  test('a patient whose sensor reports mmol/L sees their AGP report, in mmol/L', async () => {
    const portal = await browser.newPage('portal-mmol');
    await signInToPortal(portal, base, MO);
    const report = portal.locator('#summary-body .report');
    await report.waitFor({ timeout: 30_000 });
    await expect(report.getAttribute('data-unit')).resolves.toBe('mmol/L');
    await expect(portal.locator('#summary-body svg.agp').count()).resolves.toBe(1);
    await expect(portal.locator('[data-metric="mean"] .value').innerText()).resolves.toMatch(/^\d+\.\d mmol\/L$/);
    await expect(portal.locator('#summary-body .tir-legend').first().innerText()).resolves.toContain('3.9–10.0 mmol/L');
    await portal.close();
  }, 90_000);

  test('a clinician with two active grants sees both, and the mmol/L patient\'s report', async () => {
    const clinician = await launchClinician(mo);
    await clinician.locator('#report svg.agp').waitFor({ timeout: 30_000 });
    await expect(clinician.locator('#report .report').getAttribute('data-unit')).resolves.toBe('mmol/L');
    const grants = clinician.locator('#access [data-access="active"]');
    await expect(grants.count()).resolves.toBe(2);
    await expect(clinician.locator('#access').innerText()).resolves.toContain('14 Jan 2026');
    await clinician.close();
  }, 90_000);

  test('a launch link naming another server as iss is refused by both apps, and that server hears nothing', async () => {
    const { launch } = await createLaunch({ kv: t.app.kv, store: t.app.smart.store, fhirBase: `${base}/fhir` },
      { patient: mo, practitioner: doc, clientId: t.app.web.clients.clinician });
    const links = [
      `${base}/apps/clinician/launch.html?iss=${encodeURIComponent(`${otherBase}/fhir`)}&launch=${launch}`,
      `${base}/apps/clinician/launch.html?iss=${encodeURIComponent(`${otherBase}/fhir`)}`,
      `${base}/apps/clinician/launch.html?launch=${launch}`,
      `${base}/apps/portal/launch.html?iss=${encodeURIComponent(`${otherBase}/fhir`)}`,
      `${base}/apps/portal/launch.html?fhirServiceUrl=${encodeURIComponent(`${otherBase}/fhir`)}&patientId=${ana}`,
    ];
    for (const link of links) {
      const page = await browser.newPage('launch');
      await page.goto(link);
      await page.locator('#status[data-refused="iss"]').waitFor({ timeout: 10_000 });
      expect(new URL(page.url()).origin).toBe(base);
      await expect(page.locator('#status').innerText()).resolves.not.toMatch(/URL|metadata|conformance|http/);
      await page.close();
    }
    expect(otherSaw).toEqual([]);
  }, 90_000);

  test('the clinician whose session ends is told so, not that access was refused', async () => {
    const clinician = await launchClinician(mo);
    await clinician.locator('#report svg.agp').waitFor({ timeout: 30_000 });
    await endTokenOf(clinician);
    await clinician.click('#controls button:has-text("Refresh")');
    await clinician.locator('[data-session="ended"]').waitFor({ timeout: 15_000 });
    const text = await clinician.locator('main').innerText();
    expect(text).toContain('Your session has ended');
    expect(text).not.toMatch(/do not have access|could not be checked/);
    await expect(clinician.locator('[data-session="ended"] a').getAttribute('href')).resolves.toBe('launch.html');
    // Nothing of the dead session is kept: a reload says "not signed in".
    await clinician.reload();
    await clinician.locator('[data-signed-out]').waitFor({ timeout: 15_000 });
    await clinician.close();
  }, 90_000);

  test('the patient whose session ends is told so once, without raw HTTP answers', async () => {
    const portal = await browser.newPage('portal-ended');
    await signInToPortal(portal, base, ANA);
    await portal.locator('#log-body [data-log]').waitFor({ timeout: 30_000 });
    await portal.locator('#keys-body [data-protection]').waitFor({ timeout: 30_000 });
    await endTokenOf(portal);
    await portal.click('#log-body button:has-text("Refresh the log")');
    await portal.locator('[data-session="ended"]').waitFor({ timeout: 15_000 });
    const text = await portal.locator('body').innerText();
    expect(text).toContain('Your sign-in has ended');
    expect(text).not.toMatch(/URL:|OperationOutcome|launch it as SMART app|could not be loaded/);
    await portal.close();
  }, 90_000);

  test('a failed request reads as the server\'s words, never fhirclient\'s dump', async () => {
    const page = await browser.newPage('problem');
    await page.goto(`${base}/apps/portal/signed-out.html`);
    // Evaluated as page source: the module is the browser's, imported from the app's own server.
    const words = await page.evaluate(`(async () => {
      const { problemOf } = await import('/apps/shared/dom.js');
      const dump = (status, body) => Object.assign(new Error(status + ' Unprocessable\\nURL: http://x/fhir/Consent\\n\\n' + body
        + '\\nThis app cannot be accessed directly. Please launch it as SMART app!'), { name: 'HttpError', status });
      return [
        problemOf(dump(422, JSON.stringify({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'invalid', diagnostics: 'provision.period has already ended' }] }, null, 4))),
        problemOf(dump(500, '<html>oops</html>')),
        problemOf(new Error('your wallet did not sign (refused). Nothing was changed.')),
      ];
    })()`);
    expect(words).toEqual(['provision.period has already ended', 'the server answered 500', 'your wallet did not sign (refused). Nothing was changed.']);
    await page.close();
  }, 30_000);

  test('daily profiles in a week the clocks go back: each day runs midnight to midnight (the 25-hour day has 300 readings)', async () => {
    const page = await browser.newPage('dst');
    const cdp = await page.context().newCDPSession(page);
    await cdp.send('Emulation.setTimezoneOverride', { timezoneId: 'America/New_York' });
    await page.goto(`${base}/apps/portal/signed-out.html`);
    const days = await page.evaluate(`(async () => {
      const { dailyProfiles } = await import('/apps/shared/agp.js');
      // Every 5 minutes from 25 Oct to 6 Nov 2026 (New York leaves summer time on 1 Nov at 02:00 EDT).
      const readings = [];
      for (let t = Date.parse('2026-10-25T04:00:00Z'); t < Date.parse('2026-11-06T05:00:00Z'); t += 300000) readings.push({ t, v: 120, inRange: true });
      const section = dailyProfiles(readings, '2026-11-05T17:00:00Z', 7);
      return [...section.querySelectorAll('svg')].map((s) => s.getAttribute('aria-label'));
    })()`);
    expect(days).toEqual([
      '30 Oct 2026: 288 readings, 100 % in range', '31 Oct 2026: 288 readings, 100 % in range', '1 Nov 2026: 300 readings, 100 % in range',
      '2 Nov 2026: 288 readings, 100 % in range', '3 Nov 2026: 288 readings, 100 % in range', '4 Nov 2026: 288 readings, 100 % in range',
      '5 Nov 2026: 288 readings, 100 % in range',
    ]);
    await page.close();
  }, 30_000);

  test('an access-log entry whose query is not base64 does not take the log down', async () => {
    await t.app.repository.create<AuditEvent>({
      resourceType: 'AuditEvent',
      type: { system: 'http://terminology.hl7.org/CodeSystem/audit-event-type', code: 'rest' },
      subtype: [{ system: 'http://hl7.org/fhir/restful-interaction', code: 'search-type' }],
      action: 'E', recorded: new Date().toISOString(), outcome: '0',
      agent: [{ requestor: true, who: { reference: `Practitioner/${doc}` } }],
      source: { observer: { display: 'test' } },
      entity: [{ what: { reference: `Patient/${ana}` }, query: 'not base64 at all %%%' }],
    });
    await t.app.consent.audit.flush();
    const portal = await browser.newPage('portal-log');
    await signInToPortal(portal, base, ANA);
    const log = portal.locator('#log-body [data-log]');
    await log.waitFor({ timeout: 30_000 });
    await expect(portal.locator(`#log-body li[data-audit-who="Practitioner/${doc}"]`).count()).resolves.toBeGreaterThan(0);
    await portal.close();
  }, 60_000);

  test('back from the sign-in with an error: a used EHR launch and a patient who said no are told what happened', async () => {
    const clinician = await browser.newPage('clinician-error');
    await clinician.goto(`${base}/apps/clinician/launch.html?iss=${encodeURIComponent(`${base}/fhir`)}&launch=no-such-launch`);
    await clinician.locator('[data-oauth-error="other"]').waitFor({ timeout: 15_000 });
    await expect(clinician.locator('main').innerText()).resolves.toContain('may have expired or been used already');
    await clinician.close();
    const portal = await browser.newPage('portal-deny');
    await portal.goto(`${base}/apps/portal/launch.html`);
    await portal.waitForURL((u) => u.pathname.startsWith('/oauth/'), { timeout: 15_000 });
    await portal.fill('input[name="username"]', ANA.username);
    await portal.fill('input[name="password"]', ANA.password);
    await Promise.all([portal.waitForLoadState(), portal.click('button[type="submit"]')]);
    await Promise.all([portal.waitForURL((u) => u.pathname === '/apps/portal/index.html', { timeout: 15_000 }),
      portal.click('button[name="decision"][value="deny"]')]);
    await portal.locator('[data-oauth-error="access_denied"]').waitFor({ timeout: 15_000 });
    await expect(portal.locator('main').innerText()).resolves.toContain('You did not allow the portal');
    await portal.close();
  }, 60_000);
});
