/**
 * Black-box finding: `glucoguard consent revoke` given an unknown `--consent`, or one that is no
 * longer active, failed as a runtime error (exit 1) where `consent grant` answers a wrong option as
 * a usage error (exit 2, src/cli.ts). Both are usage errors now, and nothing changes.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Consent } from '@medplum/fhirtypes';
import { UsageError } from '../../src/cli-app.js';
import { registerConsentCommands } from '../../src/consent/cli.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { inProcessCli } from '../support/cli.js';
import { DAY, person } from './consent-helpers.js';

describe('consent revoke with a wrong --consent', () => {
  let t: TestApp;
  let ana: string;
  let doc: string;
  const cli = inProcessCli(registerConsentCommands, () => t.app);

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
    ana = await person(t.app, 'Patient', 'Rivera');
    doc = await person(t.app, 'Practitioner', 'Osei');
    await cli('identity', 'register', '--ref', `Practitioner/${doc}`);
  }, 60_000);

  afterAll(async () => {
    await t?.close();
  });

  test('an unknown Consent is a usage error naming it', async () => {
    const revoke = cli('consent', 'revoke', '--consent', 'nonexistent');
    await expect(revoke).rejects.toThrow('Consent/nonexistent not found');
    await expect(revoke).rejects.toBeInstanceOf(UsageError);
  });

  test('a Consent already revoked is a usage error, and stays as it was', async () => {
    const now = Date.now();
    const granted = await cli('consent', 'grant', '--patient', ana, '--to', `Practitioner/${doc}`, '--data-from', new Date(now - DAY).toISOString(),
      '--data-to', new Date(now).toISOString(), '--until', new Date(now + DAY).toISOString());
    const id = granted.split(' ')[0]!;
    expect(await cli('consent', 'revoke', '--consent', id)).toMatch(/ inactive /);
    const before = await t.app.repository.read<Consent>('Consent', id);
    const again = cli('consent', 'revoke', '--consent', id);
    await expect(again).rejects.toThrow('Only an active Consent can be revoked');
    await expect(again).rejects.toBeInstanceOf(UsageError);
    const after = await t.app.repository.read<Consent>('Consent', id);
    expect(after.meta?.versionId).toBe(before.meta?.versionId);
  });
});
