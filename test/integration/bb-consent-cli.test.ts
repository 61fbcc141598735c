/**
 * Black-box findings on `glucoguard consent`:
 * - `consent grant` read its dates with Date.parse alone. "March 7" was taken for 2001-03-07 (a data
 *   period 25 years wider than meant), "2026-02-30T10:00:00Z" for 2 March, and a time without an
 *   offset ("2026-01-14T10:00") in the operator's own time zone. The options now take a FHIR date
 *   (YYYY-MM-DD, YYYY-MM, YYYY) or a date-time with its offset, and anything else is a usage error
 *   with nothing recorded (src/consent/cli.ts, instant).
 * - `consent revoke` given an unknown `--consent`, or one that is no longer active, failed as a
 *   runtime error (exit 1) where `consent grant` answers a wrong option as a usage error (exit 2,
 *   src/cli.ts). Both are usage errors now, and nothing changes.
 * One app for both (merged in session 24: the same setup twice).
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Consent } from '@medplum/fhirtypes';
import { CommanderError } from 'commander';
import { UsageError } from '../../src/cli-app.js';
import { registerConsentCommands } from '../../src/consent/cli.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { inProcessCli } from '../support/cli.js';
import { DAY, person } from './consent-helpers.js';

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

describe('consent grant dates', () => {
  const consents = async (): Promise<Consent[]> => (await t.app.repository.search({ resourceType: 'Consent', count: 100, offset: 0 })).resources as Consent[];
  const grant = (dataFrom: string, dataTo = '2026-01-31') => cli('consent', 'grant', '--patient', ana, '--to', `Practitioner/${doc}`,
    '--data-from', dataFrom, '--data-to', dataTo, '--until', new Date(Date.now() + 86_400_000).toISOString());

  test.each(['March 7', '2026/01/14', '1 Jan 2026', '2026-01-14T10:00', '2026-01-14T10:00:00', '2026-02-30T10:00:00Z', '2026-02-30', '2026-13', '20260114'])(
    '--data-from %s is a usage error, and nothing is recorded', async (value) => {
      const before = (await consents()).length;
      const refused = grant(value);
      await expect(refused).rejects.toBeInstanceOf(CommanderError);
      await expect(refused).rejects.toThrow(/date/);
      expect((await consents()).length).toBe(before);
    });

  test.each([
    ['2026-01-14T10:00:00+14:00', '2026-01-13T20:00:00.000Z'],
    ['2026-01-14T10:00Z', '2026-01-14T10:00:00.000Z'],
    ['2026-01-14', '2026-01-14'],
    ['2026-01', '2026-01'],
  ])('--data-from %s is recorded as %s', async (value, stored) => {
    const line = await grant(value);
    const id = line.split(' ')[0]!;
    const consent = await t.app.repository.read<Consent>('Consent', id);
    expect(consent.provision?.dataPeriod?.start).toBe(stored);
  });
});

describe('consent revoke with a wrong --consent', () => {
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
