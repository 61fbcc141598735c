/**
 * Guardian key recovery in the patient portal, in a real browser (Chromium via playwright-core),
 * against a whole GlucoGuard (SMART sign-in, web API, IdentityRegistry on the embedded chain):
 * the patient names three guardians (two must agree), starts a recovery, copies the signing
 * request, pastes one guardian's signature (a stranger's and a repeated one are refused in words),
 * leaves and comes back, has a second guardian sign with the wallet in the browser, and gets the new
 * key; a grant made afterwards is signed by the new key and accepted on chain. Also: the page's own
 * signature check (smart-on-fhir/shared/eip712.js, over the ethers build this server serves) names
 * the signer and refuses in words what the chain refuses.
 */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Patient, Practitioner, RelatedPerson } from '@medplum/fhirtypes';
import { keccak256, Signature, Wallet, type BaseWallet } from 'ethers';
import type { Page } from 'playwright-core';
import { grantIdOf } from '../../src/consent/terms.js';
import type { TestApp } from '../support/app.js';
import { CHROMIUM, chromiumPath, injectWallet, launchBrowser, signInToPortal, type Browser } from './browser.js';
import { serveTestApp, type ServedApp } from './served-app.js';

interface TypedDataJson {
  domain: Record<string, unknown>;
  types: Record<string, { name: string; type: string }[]>;
  primaryType: string;
  message: Record<string, unknown>;
}

const RECOVER_TYPES = {
  Recover: [{ name: 'patientId', type: 'bytes32' }, { name: 'newKey', type: 'address' }, { name: 'nonce', type: 'uint256' }, { name: 'deadline', type: 'uint256' }],
};
const N = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141n;

const CHROME = chromiumPath();
if (!CHROME) console.warn(`SKIPPED guardian recovery e2e: ${CHROMIUM} is missing (apt-get install -y chromium, or set CHROMIUM_PATH).`);
const describeBrowser = CHROME ? describe : describe.skip;
const ARTIFACTS = path.resolve('test-artifacts');
const EVE = { username: 'eve', password: 'tulips in april 3' };

describeBrowser('guardian recovery in the patient portal (Chromium)', () => {
  let t: TestApp;
  let served: ServedApp | undefined;
  let base: string;
  let browser: Browser;
  let portal: Page;
  let eve: string;
  let oldKey: string;
  const sam = Wallet.createRandom();
  const lee = Wallet.createRandom();
  const kim = Wallet.createRandom();

  beforeAll(async () => {
    served = await serveTestApp();
    ({ t, base } = served);
    eve = (await t.app.repository.create<Patient>({ resourceType: 'Patient', name: [{ given: ['Eve'], family: 'Marsh' }] })).resource.id!;
    const doc = (await t.app.repository.create<Practitioner>({ resourceType: 'Practitioner', name: [{ prefix: ['Dr'], given: ['Ines'], family: 'Vidal' }] })).resource.id!;
    await t.app.consent.identity.registerGrantee(`Practitioner/${doc}`, Wallet.createRandom().address);
    for (const [given, wallet] of [['Sam', sam], ['Lee', lee]] as const) {
      const id = (await t.app.repository.create<RelatedPerson>({
        resourceType: 'RelatedPerson', patient: { reference: `Patient/${eve}` }, name: [{ given: [given], family: 'Marsh' }],
      })).resource.id!;
      await t.app.consent.identity.registerGrantee(`RelatedPerson/${id}`, wallet.address);
    }
    await t.app.smart.store.addUser({ ...EVE, fhirUser: `Patient/${eve}` });
    mkdirSync(ARTIFACTS, { recursive: true });
    browser = await launchBrowser();
    await browser.context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await served?.close();
  });

  /** The portal, signed in as Eve, with Lee's wallet in the browser (Lee is at Eve's side). */
  async function openPortal(label: string): Promise<Page> {
    const page = await browser.newPage(label);
    await injectWallet(page, [lee]);
    await signInToPortal(page, base, EVE);
    await page.locator('#keys-body [data-protection]').waitFor({ timeout: 20_000 });
    return page;
  }

  async function shareWithDoctor(page: Page): Promise<void> {
    const before = await page.locator('tr[data-state="active"]').count();
    for (let step = 0; step < 5; step++) await page.click('#share-form button:has-text("Next")');
    await page.click('#share-form button:has-text("Share my data")');
    await page.locator('tr[data-state="active"]').nth(before).waitFor({ timeout: 30_000 });
  }

  /** The signing request as the patient copied it, signed by a guardian's own wallet. */
  async function guardianSigns(wallet: BaseWallet, request: string): Promise<string> {
    const { domain, types, message } = JSON.parse(request) as TypedDataJson;
    delete types.EIP712Domain;
    return wallet.signTypedData(domain, types, message);
  }

  async function paste(page: Page, signature: string): Promise<void> {
    await page.fill('#recovery-signature', '');
    await page.focus('#recovery-signature');
    await page.keyboard.insertText(signature);
    await page.keyboard.press('Tab');
    await expect(page.evaluate(() => document.activeElement?.textContent)).resolves.toBe('Add this signature');
    await page.keyboard.press('Enter');
  }

  const progress = (page: Page) => page.locator('#recovery-progress-text').innerText();

  test('the patient names three guardians, two of whom must agree; the portal explains recovery in plain words', async () => {
    portal = await openPortal('portal');
    await shareWithDoctor(portal); // the first share makes Eve's key, locked with her password
    await portal.locator('#keys-body [data-protection="login"]').waitFor({ timeout: 15_000 });
    oldKey = t.app.consent.keys.get(eve)!.address;
    // Before guardians there is nothing to recover with: no recovery section.
    await expect(portal.locator('#recovery-body').count()).resolves.toBe(0);
    await portal.check('#guardians-form input[type="checkbox"] + label:has-text("Sam Marsh") >> xpath=preceding-sibling::input');
    await portal.check('#guardians-form input[type="checkbox"] + label:has-text("Lee Marsh") >> xpath=preceding-sibling::input');
    await portal.fill('#guardian-address', kim.address);
    await portal.selectOption('#guardian-threshold', '2');
    await portal.click('#guardians-form button[type="submit"]');
    await portal.locator('#status', { hasText: 'Your guardians are saved: 2 of 3 must agree.' }).waitFor({ timeout: 30_000 });
    const intro = await portal.locator('#recovery-body').innerText();
    expect(intro).toContain('Get a new key with your guardians');
    expect(intro).toContain('GlucoGuard makes a new key for you, locked with the password you signed in with today.');
    expect(intro).toMatch(/Sam Marsh, Lee Marsh, wallet 0x[0-9a-fA-F]{4}…[0-9a-fA-F]{4}\)\. 2 of them must sign it with their own wallet within 24 hours/);
    expect(intro).toContain('Permissions you already gave stay as they are');
  }, 120_000);

  test('the page\'s signature check (shared/eip712.js over the served ethers build) names the signer, and refuses in words what the chain refuses', async () => {
    const domain = { name: 'GlucoGuard IdentityRegistry', version: '1', chainId: 1337, verifyingContract: Wallet.createRandom().address };
    const cases: { typedData: TypedDataJson; signature: string; expected: string }[] = [];
    for (let i = 0; i < 3; i++) {
      const signer = Wallet.createRandom();
      const message = { patientId: keccak256(Uint8Array.of(i)), newKey: Wallet.createRandom().address, nonce: String(i), deadline: '1790000000' };
      // As the copied request has it (eth_signTypedData_v4 lists the domain type) and as the API sends it (without).
      const types = i === 0 ? { ...RECOVER_TYPES, EIP712Domain: [] } : RECOVER_TYPES;
      const typedData = { domain, types, primaryType: 'Recover', message };
      const signature = await signer.signTypedData(domain, RECOVER_TYPES, message);
      cases.push({ typedData, signature, expected: signer.address });
      // The same signature over another request names someone else (so a guardian check fails).
      cases.push({ typedData: { ...typedData, message: { ...message, nonce: String(i + 1) } }, signature, expected: `not ${signer.address}` });
      // The high-s twin of a valid signature: OpenZeppelin's ECDSA (and so the chain) refuses it.
      const sig = Signature.from(signature);
      const twin = `${sig.r}${(N - BigInt(sig.s)).toString(16).padStart(64, '0')}${sig.v === 27 ? '1c' : '1b'}`;
      cases.push({ typedData, signature: twin, expected: 'This is not a valid signature.' });
      // A v the chain does not know.
      cases.push({ typedData, signature: `${signature.slice(0, -2)}05`, expected: 'This is not a valid signature.' });
    }
    const typedData = cases[0]!.typedData;
    cases.push({ typedData, signature: '0x1234', expected: 'A signature is 65 bytes (132 characters with 0x); this one is 2 bytes.' });
    cases.push({ typedData, signature: 'hello', expected: 'A signature is written in hexadecimal, starting with 0x.' });
    cases.push({ typedData, signature: `0x${'00'.repeat(64)}1b`, expected: 'This is not a valid signature.' });
    // EIP-2's bound exactly: s = N/2 is the largest s the chain accepts (r = 1 is the x of a curve point).
    const rOne = `0x${'00'.repeat(31)}01`;
    cases.push({ typedData, signature: `${rOne}${(N / 2n).toString(16)}1b`, expected: 'not 0x0000000000000000000000000000000000000000' });
    cases.push({ typedData, signature: `${rOne}${(N / 2n + 1n).toString(16)}1b`, expected: 'This is not a valid signature.' });

    // In the portal page, signed in: the module and the ethers build as recovery.js loads them.
    const answers = await portal.evaluate(async (checks) => {
      const { recoverTypedDataSigner } = await import('/apps/shared/eip712.js' as string) as { recoverTypedDataSigner(t: unknown, s: string): string };
      return checks.map(({ typedData, signature }) => {
        try {
          return recoverTypedDataSigner(typedData, signature);
        } catch (err) {
          return (err as Error).message;
        }
      });
    }, cases.map(({ typedData, signature }) => ({ typedData, signature })));
    cases.forEach(({ expected }, i) => {
      if (expected.startsWith('not ')) {
        expect(answers[i]).toMatch(/^0x[0-9a-fA-F]{40}$/);
        expect(answers[i]).not.toBe(expected.slice(4));
      } else {
        expect(answers[i]).toBe(expected);
      }
    });
  }, 60_000);

  test('starting a recovery (by keyboard) shows the signing request to copy, with progress 0 of 2', async () => {
    await portal.focus('#recovery-start');
    await portal.keyboard.press('Enter');
    await portal.locator('#recovery-request').waitFor({ timeout: 30_000 });
    await expect(portal.evaluate(() => document.activeElement?.id)).resolves.toBe('recovery-title');
    await expect(portal.locator('#status').innerText()).resolves.toBe('Recovery started. 2 of your guardians must now sign the request.');
    await expect(progress(portal)).resolves.toBe('0 of 2 guardian signatures collected.');
    const request = JSON.parse(await portal.locator('#recovery-request').inputValue()) as TypedDataJson;
    const pending = t.app.consent.keys.pendingRecovery(eve)!;
    expect(pending).not.toBe(oldKey);
    expect(request.primaryType).toBe('Recover');
    expect(request.types.EIP712Domain).toBeDefined(); // what eth_signTypedData_v4 expects
    expect(request.message).toMatchObject({ patientId: t.app.consent.keys.pseudonym(eve), newKey: pending });
    await portal.click('#recovery-copy');
    await portal.locator('#recovery-copy-result', { hasText: 'Copied' }).waitFor();
    await expect(portal.evaluate(() => navigator.clipboard.readText())).resolves.toBe(await portal.locator('#recovery-request').inputValue());
  }, 60_000);

  test('a stranger\'s signature, a broken one and a repeated guardian are refused in words; a guardian\'s pasted signature counts', async () => {
    const request = await portal.evaluate(() => navigator.clipboard.readText());
    const result = portal.locator('#recovery-signature-result');
    const stranger = Wallet.createRandom();
    await paste(portal, await guardianSigns(stranger, request));
    await expect(result.innerText()).resolves.toContain('This signature is not from one of your guardians for this request: it was made by the key '
      + `${stranger.address.slice(0, 6)}…${stranger.address.slice(-4)}`);
    await expect(portal.evaluate(() => document.activeElement?.id)).resolves.toBe('recovery-signature');
    await paste(portal, '0x1234');
    await expect(result.innerText()).resolves.toContain('A signature is 65 bytes');
    await expect(progress(portal)).resolves.toBe('0 of 2 guardian signatures collected.');

    await paste(portal, await guardianSigns(sam, request));
    await portal.locator('#status', { hasText: 'Sam Marsh has signed: 1 of 2 signatures.' }).waitFor();
    await expect(progress(portal)).resolves.toBe('1 of 2 guardian signatures collected.');
    await expect(portal.locator(`#recovery-guardians [data-guardian="${sam.address}"]`).innerText()).resolves.toBe('✔ Sam Marsh has signed.');
    await expect(portal.locator(`#recovery-guardians [data-guardian="${lee.address}"]`).innerText()).resolves.toBe('… Lee Marsh has not signed yet.');
    await expect(portal.evaluate(() => document.activeElement?.id)).resolves.toBe('recovery-signature');

    await paste(portal, await guardianSigns(sam, request));
    await expect(result.innerText()).resolves.toContain('Sam Marsh has already signed. Each guardian counts once');
    // Finishing early is stopped here, with how many are missing; the key does not change.
    await portal.click('#recovery-complete');
    await expect(portal.locator('#recovery-complete-result').innerText()).resolves.toContain('1 more guardian signature is needed first.');
    expect(t.app.consent.keys.get(eve)!.address).toBe(oldKey);

    await portal.locator('#keys').screenshot({ path: path.join(ARTIFACTS, 'portal-recovery.png') });
    // 200 % zoom (half the CSS width): the request and signatures wrap; no sideways scrolling.
    await portal.setViewportSize({ width: 640, height: 900 });
    await expect(portal.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth)).resolves.toBe(true);
    await portal.setViewportSize({ width: 1280, height: 900 });
  }, 60_000);

  test('the patient can leave and come back: the waiting request and the signature so far are still there', async () => {
    const newKey = t.app.consent.keys.pendingRecovery(eve);
    await portal.close();
    portal = await openPortal('portal-again');
    await portal.locator('#recovery-request').waitFor({ timeout: 20_000 });
    await expect(progress(portal)).resolves.toBe('1 of 2 guardian signatures collected.');
    const request = JSON.parse(await portal.locator('#recovery-request').inputValue()) as TypedDataJson;
    expect(request.message.newKey).toBe(newKey);
    expect(t.app.consent.keys.pendingRecovery(eve)).toBe(newKey); // no second key was made
  }, 60_000);

  test('a guardian signs with the wallet in this browser; the patient gets the new key, and a new grant is signed by it on chain', async () => {
    const newKey = t.app.consent.keys.pendingRecovery(eve)!;
    await portal.click('#recovery-wallet-sign');
    await portal.locator('#status', { hasText: 'Lee Marsh has signed: 2 of 2 signatures. You can now get your new key.' }).waitFor({ timeout: 15_000 });
    await expect(progress(portal)).resolves.toBe('2 of 2 guardian signatures collected. That is enough: you can get your new key.');
    await expect(portal.evaluate(() => document.activeElement?.id)).resolves.toBe('recovery-complete');
    await portal.keyboard.press('Enter');
    await portal.locator('#recovery-done').waitFor({ timeout: 30_000 });
    await expect(portal.evaluate(() => document.activeElement?.id)).resolves.toBe('recovery-done');
    await expect(portal.locator('#status').innerText()).resolves.toBe('Your new key is in use.');
    await expect(portal.locator('#recovery-done').innerText()).resolves.toContain(`(${newKey.slice(0, 6)}…${newKey.slice(-4)}), locked with your current password`);

    // On chain and on disk the new key is Eve's; the old one is no longer hers.
    const pseudonym = t.app.consent.keys.pseudonym(eve);
    await expect(t.app.consent.identity.patientKey(pseudonym)).resolves.toBe(newKey);
    expect(t.app.consent.keys.get(eve)!.address).toBe(newKey);
    await expect(portal.locator('#keys-body [data-protection="login"]').count()).resolves.toBe(1);

    // A new grant, made in the portal after the recovery, is signed by the new key and accepted by the chain.
    await shareWithDoctor(portal);
    const consents = (await t.app.consent.service.list(eve)).filter((c) => c.status === 'active');
    expect(consents).toHaveLength(2);
    const signers = await Promise.all(consents.map(async (c) => (await t.app.consent.registry.getGrant(grantIdOf(c)!))!.patient));
    expect(signers.sort()).toEqual([oldKey, newKey].sort());
    // The grant made with the old key stays, and the new key can still stop it.
    const oldGrant = consents.find((c, i) => signers[i] === oldKey)!;
    await portal.click(`button[data-revoke="${oldGrant.id}"]`);
    await portal.locator(`tr[data-consent="${oldGrant.id}"][data-state="revoked"]`).waitFor({ timeout: 30_000 });
    await expect((await t.app.consent.registry.getGrant(grantIdOf(oldGrant)!))!.revoked).toBe(true);
  }, 120_000);

  test('a request made stale by a change of guardians: the ledger\'s refusal is shown in words, and starting over works', async () => {
    // Key safety was shown again by the last share: a new recovery can be started.
    await portal.click('#recovery-start');
    await portal.locator('#recovery-request').waitFor({ timeout: 30_000 });
    const request = await portal.locator('#recovery-request').inputValue();
    // The patient saves the guardians again (same people): the ledger's nonce moves on, the request is stale.
    await portal.click('#guardians-form button[type="submit"]');
    await portal.locator('#status', { hasText: 'Your guardians are saved: 2 of 3 must agree.' }).waitFor({ timeout: 30_000 });
    await portal.locator('#recovery-request').waitFor({ timeout: 15_000 });
    await paste(portal, await guardianSigns(sam, request));
    await paste(portal, await guardianSigns(kim, request));
    await portal.locator('#status', { hasText: '2 of 2 signatures' }).waitFor();
    const keyBefore = t.app.consent.keys.get(eve)!.address;
    await portal.click('#recovery-complete');
    const refusal = portal.locator('#recovery-complete-result');
    await refusal.locator('[data-notice="error"]').waitFor({ timeout: 30_000 });
    await expect(refusal.innerText()).resolves.toContain('The ledger refused the signatures. One signature is not from a current guardian of yours, or was made for an older request.');
    expect(await refusal.innerText()).not.toContain('IdentityRegistry');
    await expect(portal.evaluate(() => document.activeElement?.id)).resolves.toBe('recovery-complete');
    expect(t.app.consent.keys.get(eve)!.address).toBe(keyBefore);
    // Starting over makes a fresh request; the old signatures no longer count.
    await portal.click('#recovery-restart');
    await portal.locator('#status', { hasText: 'Recovery started.' }).waitFor({ timeout: 30_000 });
    await expect(progress(portal)).resolves.toBe('0 of 2 guardian signatures collected.');
    expect(await portal.locator('#recovery-request').inputValue()).not.toBe(request);
  }, 120_000);

  test('after a password reset, with no recovery code, two guardians\' signatures give a new key the new password opens', async () => {
    // A reset done elsewhere: Eve signs in with a password her key was never locked with.
    const RESET = { username: 'eve.reset', password: 'a fresh start 2026' };
    await t.app.smart.store.addUser({ ...RESET, fhirUser: `Patient/${eve}` });
    const page = await browser.newPage('portal-reset');
    await signInToPortal(page, base, RESET);
    await page.locator('#keys-body', { hasText: 'Your key cannot be opened with your current password.' }).waitFor({ timeout: 20_000 });
    await expect(page.locator('#keys-body [role="alert"]').first().innerText()).resolves.toContain('see "Get a new key with your guardians" below');
    const locked = t.app.consent.keys.get(eve)!.address;
    // The request waiting from before the reset has its new key under the old password: start over.
    await page.locator('#recovery-request').waitFor({ timeout: 15_000 });
    await expect(page.locator('#recovery-body').innerText()).resolves.toContain('do this if your password was reset after this request was made');
    await page.click('#recovery-restart');
    await page.locator('#status', { hasText: 'Recovery started.' }).waitFor({ timeout: 30_000 });
    await page.locator('#recovery-request').waitFor({ timeout: 30_000 });
    const request = await page.locator('#recovery-request').inputValue();
    await paste(page, await guardianSigns(kim, request));
    await page.locator('#status', { hasText: ': 1 of 2 signatures.' }).waitFor();
    await paste(page, await guardianSigns(lee, request));
    await page.locator('#status', { hasText: 'Lee Marsh has signed: 2 of 2 signatures.' }).waitFor();
    await page.click('#recovery-complete');
    await page.locator('#recovery-done').waitFor({ timeout: 30_000 });
    const newKey = t.app.consent.keys.get(eve)!.address;
    expect(newKey).not.toBe(locked);
    await expect(t.app.consent.identity.patientKey(t.app.consent.keys.pseudonym(eve))).resolves.toBe(newKey);
    // The key is no longer locked: the reset password opens it, and this session signs a grant with it.
    await expect(page.locator('#keys-body').innerText()).resolves.not.toContain('Your key cannot be opened');
    await expect(t.app.consent.keys.openSession(eve, RESET.password)).resolves.toMatch(/^cli-/);
    await shareWithDoctor(page);
    const newest = (await t.app.consent.service.list(eve)).filter((c) => c.status === 'active')
      .sort((a, b) => (b.meta?.lastUpdated ?? '').localeCompare(a.meta?.lastUpdated ?? ''))[0]!;
    expect((await t.app.consent.registry.getGrant(grantIdOf(newest)!))!.patient).toBe(newKey);
    await page.close();
  }, 120_000);

  test('no console errors on the page (beyond the one refusal the last test asked for)', () => {
    const expected = [
      /^portal-again: HTTP 422 POST \/apps\/api\/recovery\/complete$/,
      /^portal-again: console: Failed to load resource: the server responded with a status of 422/,
    ];
    const unexpected = browser.errors.filter((e) => {
      const i = expected.findIndex((re) => re.test(e));
      if (i < 0) return true;
      expected.splice(i, 1);
      return false;
    });
    expect(unexpected).toEqual([]);
  });
});
