/**
 * Issue 8 in a real browser (Chromium via playwright-core): the clinician viewer launched from an
 * EHR and the patient portal, against a whole GlucoGuard (SMART, FHIR facade, consent on the
 * embedded chain). One browser, run once, the flows in order:
 * no grant → "no access"; patient checks an export, then uploads it with progress; patient shares in a few steps; clinician
 * sees the AGP with the numbers of $cgm-summary; the patient's access log lists the clinician's
 * reads; patient stops sharing → clinician sees "access ended"; a grant of everything with date-only
 * ends reads the same day in both apps; both apps sign out (tokens revoked, nothing kept).
 * Screenshots go to test-artifacts/.
 */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, Observation, Patient, Practitioner } from '@medplum/fhirtypes';
import { Wallet } from 'ethers';
import type { Page, Route } from 'playwright-core';
import request from 'supertest';
import { createLaunch } from '../../src/smart/launch.js';
import { GRANTEE_LIMITS } from '../../src/web/api.js';
import type { TestApp } from '../support/app.js';
import { makeTrace, nightscoutJson } from '../fixtures/cgm-ingest/trace.js';
import { CHROMIUM, chromiumPath, injectWallet, launchBrowser, signIn, signInToPortal, type Browser } from './browser.js';
import { serveTestApp, type ServedApp } from './served-app.js';

const CHROME = chromiumPath();
if (!CHROME) console.warn(`SKIPPED web-apps e2e: ${CHROMIUM} is missing (apt-get install -y chromium, or set CHROMIUM_PATH).`);
const describeBrowser = CHROME ? describe : describe.skip;
const ARTIFACTS = path.resolve('test-artifacts');
const ANA = { username: 'ana', password: 'correct horse battery' };
const DAY = 86_400_000;
const DOC = { username: 'dr.osei', password: 'stethoscope-42' };

describeBrowser('clinician viewer and patient portal in Chromium', () => {
  let t: TestApp;
  let served: ServedApp | undefined;
  let base: string;
  let browser: Browser;
  let clinician: Page;
  let portal: Page;
  let ana: string;
  let doc: string;
  let recoveryCode = '';

  beforeAll(async () => {
    served = await serveTestApp();
    ({ t, base } = served);
    ana = (await t.app.repository.create<Patient>({ resourceType: 'Patient', name: [{ given: ['Ana'], family: 'Rivera' }], birthDate: '1958-04-02' })).resource.id!;
    doc = (await t.app.repository.create<Practitioner>({ resourceType: 'Practitioner', name: [{ prefix: ['Dr'], given: ['Kofi'], family: 'Osei' }] })).resource.id!;
    await t.app.consent.identity.registerGrantee(`Practitioner/${doc}`, Wallet.createRandom().address);
    await t.app.smart.store.addUser({ ...ANA, fhirUser: `Patient/${ana}` });
    await t.app.smart.store.addUser({ ...DOC, fhirUser: `Practitioner/${doc}` });
    mkdirSync(ARTIFACTS, { recursive: true });
    browser = await launchBrowser();
    portal = await browser.newPage('portal');
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await served?.close();
  });

  /** An EHR launch of the clinician app for Ana, as Dr Osei. */
  async function launchClinician(): Promise<Page> {
    const { launchUrl } = await createLaunch({ kv: t.app.kv, store: t.app.smart.store, fhirBase: `${base}/fhir` },
      { patient: ana, practitioner: doc, clientId: t.app.web.clients.clinician });
    expect(launchUrl).toMatch(/\/apps\/clinician\/launch\.html\?iss=.*&launch=/);
    const page = clinician ?? await browser.newPage('clinician');
    await page.goto(launchUrl!);
    await signIn(page, DOC, '/apps/clinician/index.html');
    await page.locator('[data-access]').waitFor({ timeout: 20_000 });
    return page;
  }

  test('EHR launch before any grant: the clinician is told plainly that no access was granted', async () => {
    clinician = await launchClinician();
    await expect(clinician.locator('[data-access]').getAttribute('data-access')).resolves.toBe('none');
    await expect(clinician.locator('#access').innerText()).resolves.toContain('has not shared their glucose data with you');
    await expect(clinician.locator('svg.agp').count()).resolves.toBe(0);
    // An EHR launch answers need_patient_banner false (the EHR shows its own banner): the app shows none.
    await expect(clinician.locator('body').getAttribute('data-need-patient-banner')).resolves.toBe('false');
    await expect(clinician.locator('#banner').isHidden()).resolves.toBe(true);
  }, 60_000);

  test('the patient signs in, checks an export (nothing stored), uploads it with progress and sees the import summary and their AGP', async () => {
    await signInToPortal(portal, base, ANA);
    await portal.locator('#who', { hasText: 'Signed in as Ana Rivera' }).waitFor({ timeout: 15_000 });
    await portal.locator('#summary-body [data-notice]').waitFor();
    const trace = makeTrace(16, { seed: 3 }).filter((_r, i) => i % 3 === 0);
    await portal.setInputFiles('#upload-file', { name: 'nightscout-entries.json', mimeType: 'application/json', buffer: Buffer.from(nightscoutJson(trace)) });
    // times without a zone (LibreView, Clarity) are read in the zone chosen, this device's to begin with: it goes with the upload
    const zone = await portal.evaluate(() => Intl.DateTimeFormat().resolvedOptions().timeZone);
    await expect(portal.locator('#upload-tz').inputValue()).resolves.toBe(zone);
    // "Check the file" first: what the upload would store, with nothing stored yet
    const checking = portal.waitForRequest((r) => new URL(r.url()).pathname === '/cgm/ingest');
    await portal.click('#upload-check');
    expect(new URL((await checking).url()).searchParams.get('dryRun')).toBe('true');
    const checked = portal.locator('[data-import*=\'"dryRun":true\']');
    await checked.waitFor({ timeout: 60_000 });
    const preview = JSON.parse((await checked.getAttribute('data-import'))!) as { created: number };
    await expect(portal.locator('#upload-result').innerText()).resolves.toContain('Checked: nothing is stored yet');
    await expect(portal.locator('#upload-result').innerText()).resolves.toContain(`${preview.created} new readings would be stored`);
    await expect(portal.locator('#summary-body').innerText()).resolves.toContain('No glucose readings yet');
    const sent = portal.waitForRequest((r) => new URL(r.url()).pathname === '/cgm/ingest');
    await portal.click('#upload-form button[type="submit"]');
    const upload = new URL((await sent).url()).searchParams;
    expect(upload.get('tz')).toBe(zone);
    expect(upload.has('dryRun')).toBe(false);
    const done = portal.locator('[data-import*=\'"dryRun":false\']');
    await done.waitFor({ timeout: 60_000 });
    await expect(portal.locator('#upload-progress').evaluate((p: HTMLProgressElement) => p.value)).resolves.toBe(100);
    await expect(portal.locator('#upload-progress-text').innerText()).resolves.toContain('100 % sent');
    const imported = JSON.parse((await done.getAttribute('data-import'))!) as { created: number };
    expect(imported.created).toBeGreaterThan(trace.length * 0.9);
    expect(imported.created).toBe(preview.created); // the check said what the upload did
    await expect(portal.locator('#upload-result').innerText()).resolves.toContain('nightscout (detected automatically)');
    await portal.locator('#summary-body svg.agp').waitFor({ timeout: 30_000 });
    // the ethers build (~0.5 MB) is fetched only for a guardian recovery, not on every visit
    const fetched = await portal.evaluate(() => performance.getEntriesByType('resource').map((e) => e.name));
    expect(fetched.some((url) => url.endsWith('/apps/shared/dom.js'))).toBe(true);
    expect(fetched.filter((url) => url.includes('ethers'))).toEqual([]);
  }, 120_000);

  test('the patient shares in a few steps with a plain-language confirmation; the grants page lists it as active', async () => {
    await expect(portal.locator('#share-who option').first().innerText()).resolves.toContain('Dr Kofi Osei');
    // Keyboard only: from each step's first control, Tab reaches "Next" (Back is skipped while disabled), Enter moves on
    // and focus lands on the next step's legend.
    await portal.focus('#share-who');
    for (let step = 0; step < 5; step++) {
      for (let tab = 0; tab < (step === 0 ? 1 : 3); tab++) await portal.keyboard.press('Tab');
      await expect(portal.evaluate(() => document.activeElement?.textContent)).resolves.toBe('Next');
      await portal.keyboard.press('Enter');
      await expect(portal.evaluate(() => document.activeElement?.tagName)).resolves.toBe('LEGEND');
    }
    const sentence = await portal.locator('[data-confirm]').innerText();
    expect(sentence).toContain('Dr Kofi Osei will be able to see your glucose data');
    expect(sentence).toContain('for your treatment');
    expect(sentence).toContain('You can stop sharing at any time');
    await portal.click('#share-form button:has-text("Share my data")');
    await portal.locator('tr[data-state="active"]').waitFor({ timeout: 30_000 });
    await expect(portal.locator('#status').innerText()).resolves.toContain('Dr Kofi Osei can now see your data');
    const row = await portal.locator('tr[data-state="active"]').innerText();
    expect(row).toContain('Dr Kofi Osei');
    expect(row).toContain('Active');
    await portal.locator('#sharing').screenshot({ path: path.join(ARTIFACTS, 'portal-grants.png') });
    // 200 % zoom (half the CSS width): the page reflows without sideways scrolling.
    await portal.setViewportSize({ width: 640, height: 900 });
    await expect(portal.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth)).resolves.toBe(true);
    await portal.setViewportSize({ width: 1280, height: 900 });
  }, 60_000);

  test('key safety in plain words: the key is locked with the password; a recovery code and a guardian back it up', async () => {
    // The key was made when Ana shared, inside the session her sign-in opened: it is under her login.
    await portal.locator('#keys-body [data-protection="login"]').waitFor({ timeout: 15_000 });
    await expect(portal.locator('#keys-body').innerText()).resolves.toContain('locked with your password');
    await expect(portal.locator('[data-backup]').getAttribute('data-backup')).resolves.toBe('no');
    await expect(portal.locator('[data-backup]').innerText()).resolves.toContain('not backed up yet');
    await portal.click('#make-recovery-code');
    const code = portal.locator('#recovery-code');
    await code.waitFor({ timeout: 15_000 });
    await expect(code.innerText()).resolves.toMatch(/^([A-Z2-9]{5}-){4}[A-Z2-9]{5}$/);
    recoveryCode = await code.innerText();
    await expect(portal.evaluate(() => document.activeElement?.id)).resolves.toBe('recovery-code');
    await portal.locator('[data-backup="yes"]').waitFor({ timeout: 15_000 });
    await expect(portal.locator('[data-backup-item="code"]').innerText()).resolves.toContain('✔ Recovery code: made on');
    // A guardian, by keyboard: check Dr Osei, 1 of 1, save.
    await portal.locator('#guardians-form label', { hasText: 'Dr Kofi Osei' }).waitFor();
    await portal.focus('#guardian-0');
    await portal.keyboard.press('Space');
    await expect(portal.locator('#guardian-threshold').inputValue()).resolves.toBe('1');
    await portal.click('#guardians-form button[type="submit"]');
    await portal.locator('#status', { hasText: 'Your guardians are saved: 1 of 1 must agree.' }).waitFor({ timeout: 30_000 });
    await expect(portal.locator('[data-backup-item="guardians"]').innerText()).resolves.toContain('✔ Guardians: Dr Kofi Osei. 1 of them must agree');
    const onChain = await t.app.consent.guardians.current(ana);
    expect(onChain.threshold).toBe(1);
    expect(onChain.guardians[0]!.reference).toBe(`Practitioner/${doc}`);
    await portal.locator('#keys').screenshot({ path: path.join(ARTIFACTS, 'portal-key-safety.png') });
    await portal.setViewportSize({ width: 640, height: 900 });
    await expect(portal.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth)).resolves.toBe(true);
    await portal.setViewportSize({ width: 1280, height: 900 });
  }, 90_000);

  test('the clinician sees the AGP report with the numbers of $cgm-summary, who granted access and until when', async () => {
    clinician = await launchClinician();
    await expect(clinician.locator('[data-access]').getAttribute('data-access')).resolves.toBe('active');
    await expect(clinician.locator('#access').innerText()).resolves.toMatch(/Access granted by Ana Rivera until/);
    // smart_style_url from the token response was fetched and applied (its highlight colour drives the header).
    await expect(clinician.locator('html').getAttribute('data-smart-style')).resolves.toBe('applied');
    await expect(clinician.locator('header.app').evaluate((h) => getComputedStyle(h).backgroundColor)).resolves.toBe('rgb(11, 95, 255)');
    await clinician.locator('svg.agp').waitFor({ timeout: 30_000 });
    const report = clinician.locator('.report');
    const start = (await report.getAttribute('data-period-start'))!;
    const end = (await report.getAttribute('data-period-end'))!;
    const token = t.app.smart.tokens.signAccessToken({
      gid: randomUUID(), clientId: 'test', sub: `Practitioner/${doc}`, fhirUser: `Practitioner/${doc}`, patient: ana, scopes: ['openid', 'fhirUser', 'launch', 'user/*.rs'],
    }).token;
    const res = await request(t.app.http).get(`/fhir/Patient/${ana}/$cgm-summary`).query({ start, end })
      .set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT');
    expect(res.status).toBe(200);
    const obs = ((res.body as Bundle).entry ?? []).map((e) => e.resource as Observation);
    const value = (code: string) => obs.find((o) => o.code.coding?.some((c) => c.code === code))!.valueQuantity!.value!;
    const tir = obs.find((o) => o.code.coding?.some((c) => c.code === '106793-3'))!.component!;
    const range = (code: string) => tir.find((c) => c.code.coding?.some((x) => x.code === code))!.valueQuantity!.value!;
    const shown = async (key: string) => clinician.locator(`[data-metric="${key}"] .value`).innerText();
    await expect(shown('mean')).resolves.toBe(`${Math.round(value('97507-8'))} mg/dL`);
    await expect(shown('gmi')).resolves.toBe(`${value('97506-0').toFixed(1)} %`);
    await expect(shown('cv')).resolves.toBe(`${value('104638-2').toFixed(1)} %`);
    await expect(shown('active')).resolves.toBe(`${value('104637-4').toFixed(1)} %`);
    await expect(shown('days')).resolves.toBe(`${value('104636-6')} days`);
    const pct = (v: number) => (v > 0 && v < 0.5 ? '<1' : String(Math.round(v)));
    for (const [key, code, label] of [['veryHigh', '104639-0', 'Very high'], ['high', '104640-8', 'High'], ['target', '97510-2', 'In range'],
      ['low', '104641-6', 'Low'], ['veryLow', '104642-4', 'Very low']] as const) {
      const text = await clinician.locator(`[data-range="${key}"]`).innerText();
      expect(text).toContain(`${pct(range(code))} %`);
      expect(text).toContain(label); // a text label, not colour alone
    }
    // Percentile bands and the median over 24 h; 14 daily profiles; integrity marks; sufficiency.
    await expect(clinician.locator('svg.agp polygon.band-outer').count()).resolves.toBeGreaterThan(0);
    await expect(clinician.locator('svg.agp polygon.band-inner').count()).resolves.toBeGreaterThan(0);
    await expect(clinician.locator('svg.agp polyline.median').count()).resolves.toBeGreaterThan(0);
    await expect(clinician.locator('.daily figure').count()).resolves.toBe(14);
    // Every reading of the last 14 days is drawn (more than one page of 1000): yesterday has data.
    const yesterday = await clinician.locator('.daily figure').nth(12).innerText();
    expect(yesterday).toMatch(/% in range/);
    const integrity = JSON.parse((await clinician.locator('[data-integrity]').getAttribute('data-integrity'))!) as Record<string, number>;
    // Readings ingested through GlucoGuard are either anchored and verified, or waiting (pending).
    expect(integrity.verified + integrity.pending).toBeGreaterThan(0);
    expect(integrity.unverified).toBe(0);
    await expect(clinician.locator('[data-integrity]').innerText()).resolves.toMatch(/verified against the ledger|waiting to be anchored/);
    await expect(clinician.locator('[data-sufficiency]').count()).resolves.toBe(1);
    await clinician.screenshot({ path: path.join(ARTIFACTS, 'clinician-agp.png'), fullPage: true });
    // The print stylesheet fits the report on one A4 page.
    await clinician.emulateMedia({ media: 'print' });
    const pdf = await clinician.pdf({ format: 'A4', printBackground: true });
    await clinician.emulateMedia({ media: 'screen' });
    expect(pdf.toString('latin1').match(/\/Type\s*\/Page[^s]/g)).toHaveLength(1);
    // Period selector: 30 days.
    await clinician.check('#period-30');
    await clinician.locator('.report[data-period-days="30"]').waitFor({ timeout: 30_000 });
    await expect(clinician.locator('.report').innerText()).resolves.toContain('(30 days)');
    // The span of the readings the clinician sees, not the 30 days asked for: Ana shared "the last 14
    // days" (of the 16 the trace holds), and the trace ends ~1 h ago.
    const report30 = clinician.locator('.report');
    const first = Date.parse((await report30.getAttribute('data-readings-first'))!);
    const last = Date.parse((await report30.getAttribute('data-readings-last'))!);
    expect(Math.abs(first - (Date.now() - 14 * DAY))).toBeLessThan(DAY / 2);
    expect(Math.abs(last - (Date.now() - 3_600_000))).toBeLessThan(DAY / 2);
    await expect(report30.locator('.readings-span').innerText()).resolves.toMatch(/^Readings from .+ to .+\.$/);
    // 16 days of data in 30: the data-sufficiency warning is shown in words.
    await expect(clinician.locator('[data-sufficiency="warning"]').innerText()).resolves.toMatch(/Data sufficiency/);
  }, 120_000);

  test('standalone launch of the clinician app: the clinician picks the patient and the banner is shown (need_patient_banner true)', async () => {
    const page = await browser.newPage('clinician-standalone');
    await page.goto(`${base}/apps/clinician/launch.html`);
    await page.waitForURL((u) => u.pathname.startsWith('/oauth/'), { timeout: 15_000 });
    await page.fill('input[name="username"]', DOC.username);
    await page.fill('input[name="password"]', DOC.password);
    await Promise.all([page.waitForLoadState(), page.click('button[type="submit"]')]);
    await expect(page.locator('h1').innerText()).resolves.toBe('Choose a patient');
    const radio = page.locator(`input[name="patient"][value="${ana}"]`);
    if (await radio.count()) await radio.check();
    else await page.fill('input[name="patient"]', ana);
    await Promise.all([page.waitForLoadState(), page.click('form[action="select-patient"] button[type="submit"]:not([name])')]);
    await page.click('button[name="decision"][value="allow"]');
    await page.waitForURL((u) => u.pathname === '/apps/clinician/index.html', { timeout: 15_000 });
    await page.locator('[data-access]').waitFor({ timeout: 20_000 });
    await expect(page.locator('body').getAttribute('data-need-patient-banner')).resolves.toBe('true');
    // the banner is filled after the access box (it reads the Patient): wait for it, not for the access box
    await page.locator('#banner [data-patient-name]').waitFor({ timeout: 20_000 });
    await expect(page.locator('#banner').isVisible()).resolves.toBe(true);
    await expect(page.locator('#banner').innerText()).resolves.toContain('Ana Rivera');
    await expect(page.locator('#banner').innerText()).resolves.toContain(`Record ID ${ana}`);
    await page.close();
  }, 60_000);

  test("the patient's access log lists the clinician's reads in plain words", async () => {
    await t.app.consent.audit.flush();
    await portal.click('#log-body button:has-text("Refresh the log")');
    const entry = portal.locator(`#log-body li[data-audit-who="Practitioner/${doc}"][data-audit-outcome="allowed"]`);
    await entry.first().waitFor({ timeout: 15_000 });
    const text = await portal.locator('#log-body').innerText();
    expect(text).toContain('Dr Kofi Osei ran a report on your glucose summary');
    expect(text).toContain('Allowed by your permission');
  }, 60_000);

  test('the patient stops sharing with one action; the clinician then sees "access ended"', async () => {
    await portal.click('button[data-revoke]');
    await portal.locator('tr[data-state="revoked"]').waitFor({ timeout: 30_000 });
    await expect(portal.locator('tr[data-state="revoked"]').innerText()).resolves.toContain('Stopped (revoked)');
    await clinician.click('button:has-text("Refresh")');
    await clinician.locator('[data-access="ended"]').waitFor({ timeout: 15_000 });
    await expect(clinician.locator('#access').innerText()).resolves.toContain('Access ended');
    await expect(clinician.locator('svg.agp').count()).resolves.toBe(0);
    // The FHIR API agrees: nothing is served any more.
    await portal.screenshot({ path: path.join(ARTIFACTS, 'portal-after-revoke.png'), fullPage: true });
  }, 60_000);

  test('a directory too long to list: the share step finds a clinician by name', async () => {
    await t.app.repository.create<Practitioner>({ resourceType: 'Practitioner', name: [{ given: ['Una'], family: 'Unregistered' }] });
    const limits = { ...GRANTEE_LIMITS };
    Object.assign(GRANTEE_LIMITS, { page: 1, scan: 1 });
    try {
      await portal.reload();
      await portal.locator('#share-find').waitFor({ timeout: 15_000 });
      await expect(portal.locator('#share-find-help').innerText()).resolves.toContain('Search by name to find others');
      await portal.fill('#share-find', 'osei');
      await portal.press('#share-find', 'Enter');
      await portal.locator('#share-find-result', { hasText: '1 found' }).waitFor({ timeout: 15_000 });
      await expect(portal.locator('#share-who option').allInnerTexts()).resolves.toEqual(['Dr Kofi Osei (clinician)']);
      await expect(portal.evaluate(() => document.activeElement?.id)).resolves.toBe('share-who');
      await expect(portal.locator('#share-form [data-step="who"]').isVisible()).resolves.toBe(true); // Enter searched, it did not move on
    } finally {
      Object.assign(GRANTEE_LIMITS, limits);
    }
  }, 60_000);

  test('a grant of everything with ends given as dates: the clinician sees the report, addressed as the clinician, until the end of that day; the portal shows the same day', async () => {
    // What `glucoguard consent grant --until D --data-from D --data-to D` (no --types) records: dates, the whole day included.
    const date = (days: number) => new Date(Date.now() + days * DAY).toISOString().slice(0, 10);
    const [until, dataFrom, dataTo] = [date(30), date(-20), date(0)];
    const gid = await t.app.consent.keys.openSession(ana, ANA.password);
    const token = t.app.smart.tokens.signAccessToken({
      gid, clientId: t.app.web.clients.portal, sub: ANA.username, fhirUser: `Patient/${ana}`, patient: ana, scopes: ['openid', 'fhirUser', 'launch/patient', 'patient/*.cruds'],
    }).token;
    const consent = {
      resourceType: 'Consent', status: 'active',
      scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] },
      category: [{ coding: [{ system: 'http://loinc.org', code: '59284-0' }] }],
      policyRule: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'OPTIN' }] },
      patient: { reference: `Patient/${ana}` }, performer: [{ reference: `Patient/${ana}` }],
      provision: {
        type: 'permit', period: { start: new Date(Date.now() - 60_000).toISOString(), end: until },
        actor: [{ role: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType', code: 'IRCP' }] }, reference: { reference: `Practitioner/${doc}` } }],
        action: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentaction', code: 'access' }] }],
        purpose: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActReason', code: 'TREAT' }],
        dataPeriod: { start: dataFrom, end: dataTo },
      },
    };
    const created = await request(t.app.http).post('/fhir/Consent').set('Authorization', `Bearer ${token}`).set('Content-Type', 'application/fhir+json').send(consent);
    expect(created.body.issue ?? []).toEqual([]);
    expect(created.status).toBe(201);
    await t.app.consent.keys.sessions.drop(gid);
    // Readers far east and far west of UTC: a date must not move to the day before or after.
    const east = await clinician.context().newCDPSession(clinician);
    await east.send('Emulation.setTimezoneOverride', { timezoneId: 'Pacific/Auckland' });
    const west = await portal.context().newCDPSession(portal);
    await west.send('Emulation.setTimezoneOverride', { timezoneId: 'America/Los_Angeles' });
    const words = (page: Page, d: string) => page.evaluate((iso) => new Intl.DateTimeFormat('en-GB', { day: 'numeric', month: 'short', year: 'numeric', timeZone: 'UTC' })
      .format(new Date(`${iso}T00:00:00Z`)), d);

    // Reloaded: a page reads its time zone when it starts.
    await clinician.reload();
    await clinician.locator('[data-access="active"]').waitFor({ timeout: 15_000 });
    const access = await clinician.locator('#access').innerText();
    expect(access).toContain(`Access granted by Ana Rivera until the end of ${await words(clinician, until)}.`);
    expect(access).toContain(`Covers everything in the patient's record from ${await words(clinician, dataFrom)} to ${await words(clinician, dataTo)}, for treatment.`);
    expect(access).not.toMatch(/\byour\b/i);
    // A grant of every type covers what the AGP report reads: the report is shown.
    await clinician.locator('svg.agp').waitFor({ timeout: 30_000 });
    await expect(clinician.locator('.report').innerText()).resolves.toContain('Ambulatory glucose profile');

    await portal.reload();
    const row = portal.locator('tr[data-state="active"]');
    await row.waitFor({ timeout: 30_000 });
    await expect(row.locator('td[data-until]').innerText()).resolves.toBe(`The end of ${await words(portal, until)}`);
    const text = await row.innerText();
    expect(text).toContain('everything in your record');
    expect(text).toContain(`${await words(portal, dataFrom)} – ${await words(portal, dataTo)}`);
    await Promise.all([east.detach(), west.detach()]);
  }, 90_000);

  test('a patient with their own wallet shares and stops sharing by signing in the browser wallet (EIP-1193, eth_signTypedData_v4)', async () => {
    const bea = (await t.app.repository.create<Patient>({ resourceType: 'Patient', name: [{ given: ['Bea'], family: 'Lund' }] })).resource.id!;
    const BEA = { username: 'bea', password: 'my own wallet 123' };
    await t.app.smart.store.addUser({ ...BEA, fhirUser: `Patient/${bea}` });
    const wallet = Wallet.createRandom();
    await t.app.consent.keys.registerWallet(bea, wallet.address);
    const page = await browser.newPage('wallet-portal');
    // The test wallet: the page's window.ethereum forwards to an ethers Wallet in the test process.
    const { signed } = await injectWallet(page, [wallet]);
    await signInToPortal(page, base, BEA);
    await page.locator('#keys-body [data-protection="wallet"]').waitFor({ timeout: 15_000 });
    await page.locator('#share-who').waitFor();
    for (let step = 0; step < 5; step++) await page.click('#share-form button:has-text("Next")');
    await page.click('#share-form button:has-text("Share my data")');
    await page.locator('tr[data-state="active"]').waitFor({ timeout: 30_000 });
    await expect(page.locator('#status').innerText()).resolves.toContain('Dr Kofi Osei can now see your data');
    expect(signed).toEqual(['Grant']);
    const [consent] = await t.app.consent.service.list(bea);
    expect(consent!.status).toBe('active');
    await page.click('button[data-revoke]');
    await page.locator('tr[data-state="revoked"]').waitFor({ timeout: 30_000 });
    expect(signed).toEqual(['Grant', 'Revoke']);
    await expect(page.locator('#status').innerText()).resolves.toContain('You stopped sharing with Dr Kofi Osei');
    await page.close();
  }, 90_000);

  test('after a password reset the key is locked; the recovery code opens it; a password change in the portal keeps it open', async () => {
    // A reset done elsewhere: Ana now signs in with a password her key was never locked with.
    const RESET = { username: 'ana.reset', password: 'a reset passphrase 7' };
    await t.app.smart.store.addUser({ ...RESET, fhirUser: `Patient/${ana}` });
    const page = await browser.newPage('portal-reset');
    await signInToPortal(page, base, RESET);
    await page.locator('#keys-body', { hasText: 'Your key cannot be opened with your current password.' }).waitFor({ timeout: 15_000 });
    expect(recoveryCode).not.toBe('');
    await page.fill('#unlock-code', recoveryCode.toLowerCase());
    await page.click('#unlock-form button[type="submit"]');
    await page.locator('#status', { hasText: 'Your key is open again' }).waitFor({ timeout: 15_000 });
    await expect(page.locator('#keys-body').innerText()).resolves.not.toContain('cannot be opened');
    await page.fill('#password-current', RESET.password);
    await page.fill('#password-new', 'another passphrase 9');
    await page.fill('#password-repeat', 'another passphrase 9');
    await page.click('#password-form button[type="submit"]');
    await page.locator('#password-form', { hasText: 'Your password is changed.' }).waitFor({ timeout: 15_000 });
    // The new password opens the key (and the old one no longer does).
    await expect(t.app.consent.keys.openSession(ana, 'another passphrase 9')).resolves.toMatch(/^cli-/);
    await expect(t.app.consent.keys.openSession(ana, RESET.password)).rejects.toMatchObject({ code: 'ERR_FORBIDDEN' });
    await page.close();
  }, 90_000);

  test('the patient signs out: the token is revoked, the key locked again, nothing kept in the browser; a reload stays signed out', async () => {
    await portal.locator('#who', { hasText: 'Signed in as Ana Rivera' }).waitFor({ timeout: 15_000 });
    const token = await portal.evaluate(() => JSON.parse(sessionStorage.getItem(JSON.parse(sessionStorage.getItem('SMART_KEY')!))!).tokenResponse.access_token as string);
    const gid = (JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as { gid: string }).gid;
    const pseudonym = t.app.consent.keys.pseudonym(ana);
    expect((await request(t.app.http).get(`/fhir/Patient/${ana}`).set('Authorization', `Bearer ${token}`)).status).toBe(200);
    await expect(t.app.consent.keys.sessions.get(gid, pseudonym)).resolves.toBeDefined();

    const signOut = portal.getByRole('button', { name: 'Sign out' });
    await expect(signOut.isVisible()).resolves.toBe(true);
    await Promise.all([portal.waitForURL((u) => u.pathname === '/apps/portal/signed-out.html', { timeout: 15_000 }), signOut.click()]);
    await expect(portal.locator('h2').innerText()).resolves.toBe('You are signed out');
    await expect(portal.locator('#not-revoked').isHidden()).resolves.toBe(true);
    // Revoked at the server: the old token is refused, and the sign-in's key unlock is gone.
    const after = await request(t.app.http).get(`/fhir/Patient/${ana}`).set('Authorization', `Bearer ${token}`);
    expect(after.status).toBe(401);
    await expect(t.app.consent.keys.sessions.get(gid, pseudonym)).resolves.toBeUndefined();
    // Nothing of the session is kept in the browser.
    const kept = await portal.evaluate(() => [sessionStorage, localStorage].flatMap((store) => Object.keys(store).map((k) => `${k}=${store.getItem(k)}`)));
    expect(kept.filter((entry) => entry.includes('SMART_KEY') || entry.includes('tokenResponse') || entry.includes(token))).toEqual([]);
    // A reload (and opening the portal again) shows the signed-out page, with a way to sign in.
    await portal.reload();
    await expect(portal.locator('h2').innerText()).resolves.toBe('You are signed out');
    await portal.goto(`${base}/apps/portal/index.html`);
    await portal.locator('[data-signed-out]').waitFor({ timeout: 15_000 });
    await expect(portal.locator('#main').innerText()).resolves.toContain('Please sign in');
    await expect(portal.locator('#who').innerText()).resolves.toBe('');
    await portal.screenshot({ path: path.join(ARTIFACTS, 'portal-signed-out.png') });
    await Promise.all([portal.waitForURL((u) => u.pathname.startsWith('/oauth/'), { timeout: 15_000 }), portal.click('a:has-text("Sign in")')]);
    await expect(portal.locator('input[name="username"]').count()).resolves.toBe(1);
  }, 60_000);

  test('the clinician signs out of the viewer while the report is loading: its requests end first, the token is revoked and a reload stays signed out', async () => {
    // The report's first search is held in the browser while the clinician signs out, and let go
    // once the server has revoked the token; the signed-out page is held until that search is
    // settled, so the viewer is still there to receive its answer: a request still under way at
    // sign-out would reach the server after the revocation and come back 401.
    let holdSearch: (route: Route) => void = () => undefined;
    const searchHeld = new Promise<Route>((resolve) => { holdSearch = resolve; });
    let searchSettled: () => void = () => undefined;
    const searchDone = new Promise<void>((resolve) => { searchSettled = resolve; });
    let accessRevoked: () => void = () => undefined;
    const revoked = new Promise<void>((resolve) => { accessRevoked = resolve; });
    clinician ??= await browser.newPage('clinician');
    const page = clinician;
    await page.route((u) => u.pathname === '/fhir/Observation', (route) => holdSearch(route));
    await page.route((u) => u.pathname === '/oauth/revoke', async (route) => {
      await route.fulfill({ response: await route.fetch() });
      accessRevoked();
    });
    await page.route((u) => u.pathname === '/apps/clinician/signed-out.html', async (route) => {
      await searchDone;
      await route.continue();
    });
    const errorsBefore = browser.errors.length;
    try {
      await launchClinician();
      const held = await Promise.race([searchHeld, new Promise<never>((_r, reject) => setTimeout(() => reject(new Error('the report never searched')), 20_000))]);
      const token = await page.evaluate(() => JSON.parse(sessionStorage.getItem(JSON.parse(sessionStorage.getItem('SMART_KEY')!))!).tokenResponse.access_token as string);
      const read = () => request(t.app.http).get(`/fhir/Patient/${ana}`).set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT');
      expect((await read()).status).not.toBe(401);
      const signedOut = page.waitForURL((u) => u.pathname === '/apps/clinician/signed-out.html', { timeout: 15_000 });
      await page.getByRole('button', { name: 'Sign out' }).click();
      await revoked;
      expect((await read()).status).toBe(401);
      // the held search goes on to the server now, unless the app ended it (then the browser refuses to send it)
      await held.continue().then(() => page.waitForResponse((r) => new URL(r.url()).pathname === '/fhir/Observation', { timeout: 1_500 })).catch(() => undefined);
      searchSettled();
      await signedOut;
      expect(browser.errors.slice(errorsBefore)).toEqual([]);
    } finally {
      searchSettled();
      await page.unrouteAll({ behavior: 'ignoreErrors' });
    }
    await expect(page.locator('h2').innerText()).resolves.toBe('You are signed out of the CGM viewer');
    const kept = await page.evaluate(() => Object.keys(sessionStorage).map((k) => `${k}=${sessionStorage.getItem(k)}`));
    expect(kept.filter((entry) => entry.includes('SMART_KEY') || entry.includes('tokenResponse'))).toEqual([]);
    await page.reload();
    await expect(page.locator('h2').innerText()).resolves.toBe('You are signed out of the CGM viewer');
    await page.goto(`${base}/apps/clinician/index.html`);
    await page.locator('[data-signed-out]').waitFor({ timeout: 15_000 });
    await expect(page.locator('#report').innerText()).resolves.toContain('You are not signed in');
  }, 60_000);

  test('no console errors on either page', () => {
    expect(browser.errors).toEqual([]);
  });
});
