/**
 * The operator CLI and a key locked with the patient's password: `consent grant|revoke` need
 * `--password-file` (refused without it, nothing recorded); `patient-key guardians|status|
 * recovery-start|recover` set guardians and recover a key with their signatures.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { Wallet } from 'ethers';
import { registerConsentCommands } from '../../src/consent/cli.js';
import { startTestApp, tempDir, type TestApp } from '../support/app.js';
import { inProcessCli } from '../support/cli.js';
import { DAY, person, registerIdentity } from './consent-helpers.js';

describe('patient keys from the CLI', () => {
  let t: TestApp;
  let ana: string;
  let doc: string;
  const dir = tempDir('gg-pwfile-');
  const passwordFile = path.join(dir, 'password');
  const wrongFile = path.join(dir, 'wrong');

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
    ana = await person(t.app, 'Patient', 'Rivera');
    doc = await person(t.app, 'Practitioner', 'Osei');
    await registerIdentity(t.app, `Practitioner/${doc}`);
    await t.app.smart.store.addUser({ username: 'ana', password: 'correct horse battery', fhirUser: `Patient/${ana}` });
    writeFileSync(passwordFile, 'correct horse battery\n');
    writeFileSync(wrongFile, 'not her password\n');
    // Ana signed in once and her key was made in that session: it is locked with her password.
    await t.app.consent.keys.onLogin(ana, 'correct horse battery', 'gid-1', 60_000);
    await t.app.consent.keys.ensure(ana, { kind: 'token', grantId: 'gid-1' });
    expect((await t.app.consent.keys.protection(ana))!.protection).toBe('login');
  }, 60_000);
  afterAll(async () => t?.close());

  const cli = inProcessCli(registerConsentCommands, () => t.app, { quietErrors: true });

  const grantArgs = () => {
    const now = Date.now();
    return ['consent', 'grant', '--patient', ana, '--to', `Practitioner/${doc}`, '--data-from', new Date(now - 14 * DAY).toISOString(),
      '--data-to', new Date(now).toISOString(), '--until', new Date(now + 3 * DAY).toISOString()];
  };

  test('consent grant without the patient\'s password is refused and records nothing; a wrong password too', async () => {
    await expect(cli(...grantArgs())).rejects.toThrow(/--password-file/);
    await expect(cli(...grantArgs(), '--password-file', wrongFile)).rejects.toThrow(/password does not open/);
    expect(await t.app.consent.service.list(ana)).toHaveLength(0);
  });

  test('with --password-file the grant is signed by the patient\'s key, and so is the revocation', async () => {
    const granted = await cli(...grantArgs(), '--password-file', passwordFile);
    expect(granted).toMatch(/ active .*grant 0x[0-9a-f]{64}/);
    const id = granted.split(' ')[0]!;
    await expect(cli('consent', 'revoke', '--consent', id)).rejects.toThrow(/--password-file/);
    expect(await cli('consent', 'revoke', '--consent', id, '--password-file', passwordFile)).toMatch(/ inactive /);
  }, 60_000);

  test('guardians set from the CLI; recovery with two guardian signatures gives the patient a new key under her password', async () => {
    const g1 = Wallet.createRandom();
    const g2 = Wallet.createRandom();
    await expect(cli('patient-key', 'guardians', '--patient', ana, '--guardian', g1.address, '--threshold', '1')).rejects.toThrow(/--password-file/);
    const set = await cli('patient-key', 'guardians', '--patient', ana, '--guardian', g1.address, '--guardian', g2.address, '--threshold', '2',
      '--password-file', passwordFile);
    expect(set).toContain(`guardians set`);
    const status = await cli('patient-key', 'status', '--patient', ana);
    expect(status).toContain("locked with the patient's password");
    expect(status).toContain(`2 of ${g1.address}, ${g2.address}`);

    await expect(cli('patient-key', 'recovery-start', '--patient', ana, '--username', 'ana', '--password-file', wrongFile)).rejects.toThrow(/do not belong/);
    const printed = await cli('patient-key', 'recovery-start', '--patient', ana, '--username', 'ana', '--password-file', passwordFile);
    const typedData = JSON.parse(printed) as { domain: object; types: Record<string, []>; message: { newKey: string } & Record<string, string> };
    const file = path.join(dir, 'recover.json');
    writeFileSync(file, printed);
    const sign = (w: typeof g1) => w.signTypedData(typedData.domain, typedData.types, typedData.message);
    await expect(cli('patient-key', 'recover', '--patient', ana, '--typed-data', file, '--signature', await sign(g1))).rejects.toThrow(/InsufficientSignatures/);
    const done = await cli('patient-key', 'recover', '--patient', ana, '--typed-data', file, '--signature', await sign(g1), '--signature', await sign(g2));
    expect(done).toContain(`now signs with ${typedData.message.newKey}`);
    expect(await t.app.consent.identity.patientKey(t.app.consent.keys.pseudonym(ana))).toBe(typedData.message.newKey);
    // The new key is locked with the same password, and signs.
    expect(await cli(...grantArgs(), '--password-file', passwordFile)).toMatch(/ active /);
  }, 90_000);
});
