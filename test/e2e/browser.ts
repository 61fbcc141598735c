/**
 * Chromium for the browser tests: Debian's /usr/bin/chromium driven by playwright-core, headless,
 * a fresh user-data-dir per run. `chromiumPath()` is undefined when it is not installed (the tests
 * then skip and say why).
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

export function chromiumPath(): string | undefined {
  return existsSync(CHROMIUM) ? CHROMIUM : undefined;
}

export interface Browser {
  context: BrowserContext;
  /** Console errors and page errors seen so far, per page label. */
  errors: string[];
  newPage(label: string): Promise<Page>;
  close(): Promise<void>;
}

export async function launchBrowser(): Promise<Browser> {
  const userDataDir = mkdtempSync(path.join(tmpdir(), 'gg-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
    viewport: { width: 1280, height: 900 },
  });
  const errors: string[] = [];
  return {
    context,
    errors,
    async newPage(label) {
      const page = await context.newPage();
      page.on('console', (m) => { if (m.type() === 'error') errors.push(`${label}: console: ${m.text()}`); });
      page.on('pageerror', (e) => errors.push(`${label}: page error: ${e.message}`));
      // Names the request behind a "Failed to load resource" console error.
      page.on('response', (r) => { if (r.status() >= 400) errors.push(`${label}: HTTP ${r.status()} ${r.request().method()} ${new URL(r.url()).pathname}`); });
      return page;
    },
    async close() {
      await context.close();
      rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/** Answers the GlucoGuard sign-in page and the approval page when they are shown. */
export async function signIn(page: Page, user: { username: string; password: string }, appPath: string): Promise<void> {
  await page.waitForURL((u) => u.pathname.startsWith('/oauth/') || u.pathname === appPath, { timeout: 15_000 });
  if (await page.locator('input[name="username"]').count()) {
    await page.fill('input[name="username"]', user.username);
    await page.fill('input[name="password"]', user.password);
    await Promise.all([page.waitForLoadState(), page.click('button[type="submit"]')]);
  }
  const allow = page.locator('button[name="decision"][value="allow"]');
  if (await allow.count()) await Promise.all([page.waitForURL((u) => u.pathname === appPath, { timeout: 15_000 }), allow.click()]);
  await page.waitForURL((u) => u.pathname === appPath, { timeout: 15_000 });
}

/** What `injectWallet` saw: the primary type of each typed-data message the wallet signed. */
export interface InjectedWallet {
  signed: string[];
}

/**
 * Gives the page an EIP-1193 wallet (`window.ethereum`: eth_requestAccounts, eth_accounts,
 * eth_signTypedData_v4) backed by ethers wallets in the test process. Call before the page loads.
 */
export async function injectWallet(page: Page, wallets: { address: string; signTypedData: (domain: object, types: Record<string, []>, message: Record<string, unknown>) => Promise<string> }[]): Promise<InjectedWallet> {
  const seen: InjectedWallet = { signed: [] };
  await page.exposeFunction('ggWalletAccounts', () => wallets.map((w) => w.address));
  await page.exposeFunction('ggWalletSign', async (account: string, json: string) => {
    const wallet = wallets.find((w) => w.address.toLowerCase() === account.toLowerCase());
    if (!wallet) throw new Error('unknown account');
    const { domain, types, message, primaryType } = JSON.parse(json) as { domain: object; types: Record<string, []>; message: Record<string, unknown>; primaryType: string };
    if (!types.EIP712Domain) throw new Error('eth_signTypedData_v4 needs types.EIP712Domain');
    delete types.EIP712Domain;
    seen.signed.push(primaryType);
    return wallet.signTypedData(domain, types, message);
  });
  await page.addInitScript(() => {
    const w = window as unknown as { ethereum: unknown; ggWalletAccounts: () => Promise<string[]>; ggWalletSign: (a: string, j: string) => Promise<string> };
    w.ethereum = {
      request: async ({ method, params }: { method: string; params?: string[] }) => {
        if (method === 'eth_requestAccounts' || method === 'eth_accounts') return w.ggWalletAccounts();
        if (method === 'eth_signTypedData_v4') return w.ggWalletSign(params![0]!, params![1]!);
        throw Object.assign(new Error(`unsupported method ${method}`), { code: 4200 });
      },
    };
  });
  return seen;
}

/** A free TCP port on 127.0.0.1 (the apps need their base URL, port included, before the server listens). */
export async function freePort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const port = (probe.address() as AddressInfo).port;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  return port;
}

/** Opens the patient portal at `base` in `page` and signs `user` in. */
export async function signInToPortal(page: Page, base: string, user: { username: string; password: string }): Promise<void> {
  await page.goto(`${base}/apps/portal/launch.html`);
  await signIn(page, user, '/apps/portal/index.html');
}
