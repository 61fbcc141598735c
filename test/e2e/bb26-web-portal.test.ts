/**
 * Black-box round of the patient portal in Chromium (playwright-core), against a whole GlucoGuard
 * with auth on:
 * - the share wizard is a form: Enter on a choice (a radio of step 2, "What data?") submitted it,
 *   so a keyboard user who confirmed a choice with Enter shared at once with the defaults of every
 *   later step (the last 14 days, 1 week, treatment), signed on chain, without seeing the
 *   confirmation step. Enter now moves to the next step; only the last step shares;
 * - "Who can see my data" listed a grant of the readings, the devices and the name and date of birth
 *   (the portal's own "My glucose data … and my name and date of birth") as "glucose readings and
 *   summaries": the patient was told less than they shared. Every type is now said (the clinician's
 *   "Covers …" too);
 * - an upload the server refused (a file of no known format) kept "100 % sent. Reading your file…"
 *   under "Nothing was imported.", as if the file were still being read: the progress now goes away;
 * - (a later session's flow) a file uploaded in the wrong time zone has its readings removed after a
 *   confirmation, then is uploaded again in the right one;
 * - a password change in the portal keeps the tab it was made in working (it still shares, which
 *   needs the key the sign-in unlocked), while a browser signed in before it is told its sign-in
 *   ended, and the old password no longer signs in. The patient was not told that their other
 *   sign-ins end: the confirmation now says so.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Bundle, Consent, Patient, Practitioner } from '@medplum/fhirtypes';
import { Wallet } from 'ethers';
import type { Page } from 'playwright-core';
import request from 'supertest';
import type { TestApp } from '../support/app.js';
import { patientToken } from '../integration/consent-helpers.js';
import { CHROMIUM, chromiumPath, launchBrowser, signIn, signInToPortal, type Browser } from './browser.js';
import { serveTestApp, type ServedApp } from './served-app.js';

const CHROME = chromiumPath();
if (!CHROME) console.warn(`SKIPPED bb26-web-portal e2e: ${CHROMIUM} is missing (apt-get install -y chromium, or set CHROMIUM_PATH).`);
const describeBrowser = CHROME ? describe : describe.skip;

const ANA = { username: 'ana.bb26', password: 'first portal pw 1' };
const NEW_PASSWORD = 'second portal pw 2';

describeBrowser('patient portal: keyboard sharing and password change', () => {
  let served: ServedApp | undefined;
  let t: TestApp;
  let base: string;
  let first: Browser;
  let second: Browser;
  let ana: string;

  beforeAll(async () => {
    served = await serveTestApp();
    ({ t, base } = served);
    ana = (await t.app.repository.create<Patient>({ resourceType: 'Patient', name: [{ given: ['Ana'], family: 'Rivera' }], birthDate: '1958-04-02' })).resource.id!;
    const doc = (await t.app.repository.create<Practitioner>({ resourceType: 'Practitioner', name: [{ given: ['Kofi'], family: 'Osei' }] })).resource.id!;
    await t.app.consent.identity.registerGrantee(`Practitioner/${doc}`, Wallet.createRandom().address);
    await t.app.smart.store.addUser({ ...ANA, fhirUser: `Patient/${ana}` });
    first = await launchBrowser();
    second = await launchBrowser();
  }, 60_000);

  afterAll(async () => {
    await first?.close();
    await second?.close();
    await served?.close();
  });

  async function consents(): Promise<Consent[]> {
    const res = await request(t.app.http).get(`/fhir/Consent?patient=Patient/${ana}`).set('Authorization', `Bearer ${patientToken(t.app, ana)}`);
    expect(res.status).toBe(200);
    return ((res.body as Bundle<Consent>).entry ?? []).map((e) => e.resource!);
  }

  const visibleStep = (page: Page) => page.locator('#share-form fieldset:not([hidden])').getAttribute('data-step');

  test('Enter on a choice moves the share wizard on; only the last step shares', async () => {
    const portal = await first.newPage('portal-keyboard');
    await signInToPortal(portal, base, ANA);
    await portal.locator('#share-form').waitFor({ timeout: 30_000 });
    await portal.locator('#sharing-body [data-grants]').waitFor({ timeout: 30_000 });
    await portal.click('#share-form button:has-text("Next")');
    await expect(visibleStep(portal)).resolves.toBe('what');
    await portal.focus('#what-glucose');
    await portal.keyboard.press('Enter');
    await expect(visibleStep(portal)).resolves.toBe('dataperiod');
    for (const step of ['duration', 'why', 'confirm']) {
      await portal.focus(`#share-form fieldset[data-step="${await visibleStep(portal)}"] input:checked`);
      await portal.keyboard.press('Enter');
      await expect(visibleStep(portal)).resolves.toBe(step);
    }
    await expect(visibleStep(portal)).resolves.toBe('confirm');
    await expect(portal.locator('#share-sentence').innerText()).resolves.toContain('Kofi Osei will be able to see');
    expect(await consents()).toEqual([]);
    await portal.click('#share-form button[type="submit"]:has-text("Share my data")');
    await portal.locator('#sharing-body [data-state="active"]').waitFor({ timeout: 30_000 });
    expect(await consents()).toHaveLength(1);
    // The list says all that was shared (name and date of birth, devices), not the readings alone.
    await expect(portal.locator('#sharing-body tbody tr').first().innerText())
      .resolves.toContain('glucose readings and summaries, devices, name and date of birth');
    await portal.close();
  }, 120_000);
  test('an upload the server refuses says so, and its progress no longer reads "Reading your file…"', async () => {
    const portal = await first.newPage('portal-upload');
    await signInToPortal(portal, base, ANA);
    await portal.locator('#upload-form').waitFor({ timeout: 30_000 });
    await portal.setInputFiles('#upload-file', { name: 'notes.csv', mimeType: 'text/csv', buffer: Buffer.from('hello,world\n1,2\n') });
    await portal.click('#upload-form button[type="submit"]');
    await portal.locator('#upload-result', { hasText: 'Nothing was imported.' }).waitFor({ timeout: 30_000 });
    await expect(portal.locator('#upload-progress-text').isVisible()).resolves.toBe(false);
    await portal.close();
  }, 60_000);

  test('a file uploaded in the wrong time zone: its readings are removed after a confirmation, then it is uploaded in the right one', async () => {
    const libre = ['Device,Serial Number,Device Timestamp,Record Type,Historic Glucose mg/dL,Scan Glucose mg/dL,Notes',
      ...Array.from({ length: 12 }, (_, i) => `FreeStyle Libre 2,0F1E2D3C-1111-4222-8333-444455556666,14-03-2026 ${String(8 + Math.floor(i / 4)).padStart(2, '0')}:${String((i % 4) * 15).padStart(2, '0')},0,${100 + i},,`),
    ].join('\n');
    const readings = async (): Promise<number> => {
      const res = await request(t.app.http).get(`/fhir/Observation?patient=Patient/${ana}&date=ge2026-03-13&date=lt2026-03-16&_count=100`).set('Authorization', `Bearer ${patientToken(t.app, ana)}`);
      expect(res.status).toBe(200);
      return ((res.body as Bundle).entry ?? []).length;
    };
    const portal = await first.newPage('portal-remove');
    await signInToPortal(portal, base, ANA);
    await portal.locator('#upload-form').waitFor({ timeout: 30_000 });
    await portal.setInputFiles('#upload-file', { name: 'libreview.csv', mimeType: 'text/csv', buffer: Buffer.from(libre) });
    await portal.selectOption('#upload-format', 'libreview');
    await portal.selectOption('#upload-tz', 'UTC');
    await portal.click('#upload-form button[type="submit"]');
    await portal.locator('[data-import*=\'"dryRun":false\']').waitFor({ timeout: 30_000 });
    expect(await readings()).toBe(12);

    await portal.click('#upload-remove');
    await portal.locator('[data-remove*=\'"dryRun":true\']').waitFor({ timeout: 30_000 });
    await expect(portal.locator('#upload-result').innerText()).resolves.toContain('12 readings of this file are stored and would be removed');
    // the readings' span in this device's time, saying so (where a wrong zone shows as wrong hours)
    await expect(portal.locator('#upload-result').innerText()).resolves.toMatch(/Readings from 14 Mar 2026, \d\d:\d\d to 14 Mar 2026, \d\d:\d\d \(this device's time, [A-Za-z_/]+\)\./);
    expect(await readings()).toBe(12); // nothing removed before the confirmation
    // the confirmation sends the file and options checked, whatever the form holds by then
    await portal.selectOption('#upload-tz', 'Europe/Berlin');
    await portal.click('#upload-remove-confirm');
    await portal.locator('[data-remove*=\'"dryRun":false\']').waitFor({ timeout: 30_000 });
    await expect(portal.locator('#upload-result').innerText()).resolves.toContain('12 readings removed.');
    expect(await readings()).toBe(0);

    await portal.click('#upload-form button[type="submit"]'); // in Europe/Berlin now
    await portal.locator('[data-import*=\'"dryRun":false\']').waitFor({ timeout: 30_000 });
    await expect(portal.locator('#upload-result').innerText()).resolves.toContain('Times without a time zone were read in Europe/Berlin');
    expect(await readings()).toBe(12);
    await portal.close();
  }, 120_000);

  test('a password change keeps its own tab working (it shares again), signs out a browser signed in before it, and only the new password signs in', async () => {
    const before = await second.newPage('portal-before');
    await signInToPortal(before, base, ANA);
    await before.locator('#log-body [data-log]').waitFor({ timeout: 30_000 });
    const portal = await first.newPage('portal-change');
    await signInToPortal(portal, base, ANA);
    await portal.locator('#password-form').waitFor({ timeout: 30_000 });
    await portal.fill('#password-current', ANA.password);
    await portal.fill('#password-new', NEW_PASSWORD);
    await portal.fill('#password-repeat', NEW_PASSWORD);
    await portal.press('#password-repeat', 'Enter');
    await portal.locator('#password-form', { hasText: 'Your password is changed.' }).waitFor({ timeout: 15_000 });
    await expect(portal.locator('#password-form').innerText()).resolves.toContain('Anywhere else you were signed in');

    // This tab goes on: it reads, and it shares (which needs the key its sign-in unlocked).
    const granted = (await consents()).length;
    for (let i = 0; i < 5; i++) await portal.click('#share-form button:has-text("Next")');
    await portal.click('#share-form button[type="submit"]:has-text("Share my data")');
    await portal.locator('#status', { hasText: 'Done:' }).waitFor({ timeout: 30_000 });
    expect(await consents()).toHaveLength(granted + 1);
    await expect(portal.locator('[data-session="ended"]').count()).resolves.toBe(0);

    // The browser signed in before the change is told its sign-in ended, in words.
    await before.click('#log-body button:has-text("Refresh the log")');
    await before.locator('[data-session="ended"]').waitFor({ timeout: 15_000 });
    await expect(before.locator('main').innerText()).resolves.toContain('Your sign-in has ended');

    // The old password no longer signs in; the new one does.
    await before.goto(`${base}/apps/portal/launch.html`);
    await before.waitForURL((u) => u.pathname.startsWith('/oauth/'), { timeout: 15_000 });
    await before.fill('input[name="username"]', ANA.username);
    await before.fill('input[name="password"]', ANA.password);
    await Promise.all([before.waitForLoadState(), before.click('button[type="submit"]')]);
    await expect(before.locator('[role="alert"]').innerText()).resolves.toBe('Wrong username or password.');
    await signIn(before, { username: ANA.username, password: NEW_PASSWORD }, '/apps/portal/index.html');
    await before.locator('#keys-body [data-protection="login"]').waitFor({ timeout: 30_000 });
    expect(new URL(before.url()).search).toBe('');
    await before.close();
    await portal.close();
  }, 120_000);
});
