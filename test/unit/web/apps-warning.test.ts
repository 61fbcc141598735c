/**
 * A base URL the authorization server refuses as a redirect URI (plain http, not loopback) leaves
 * the built-in apps unregistered; the start-up says so in one line, not with a stack trace.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { expect, test } from '@jest/globals';
import { loadConfig } from '../../../src/config.js';
import { createWeb } from '../../../src/web/index.js';

test('an http public base URL disables the apps with a one-line warning', () => {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'gg-web-'));
  try {
    const config = loadConfig({ GLUCOGUARD_BASE_URL: 'http://public.example.org', GLUCOGUARD_DATA_DIR: dataDir });
    const warnings: unknown[][] = [];
    const logger = { warn: (...args: unknown[]) => warnings.push(args), info() {}, debug() {}, error() {} };
    const store = { getClient: () => undefined, addClient: () => { throw new Error('redirect URI "http://public.example.org/apps/clinician/index.html" must use https (http only for localhost)'); } };
    createWeb({
      config, fhirBase: `${config.baseUrl}/fhir`, logger: logger as never, repository: {} as never,
      smart: { store, onPatientLogin() {}, onGrantRevoked() {} } as never,
      consent: {} as never,
    });
    expect(warnings).toEqual([[expect.stringMatching(/^patient portal and clinician app disabled: .*https GLUCOGUARD_BASE_URL.*\(redirect URI .* must use https/)]]);
    expect(String(warnings[0]![0])).not.toContain('\n');
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
});
