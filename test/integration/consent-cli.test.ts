/**
 * `glucoguard identity register`, `consent grant|list|revoke` and `audit --patient` run in-process
 * against a test app (the commands' parsing and output, the chain and repository underneath).
 */
import { afterAll, beforeAll, describe, expect, jest, test } from '@jest/globals';
import type { Consent } from '@medplum/fhirtypes';
import { CommanderError } from 'commander';
import request from 'supertest';
import { registerConsentCommands } from '../../src/consent/cli.js';
import { GRANT_ID_SYSTEM } from '../../src/consent/terms.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { inProcessCli } from '../support/cli.js';
import { DAY, person, practitionerToken } from './consent-helpers.js';

describe('consent CLI', () => {
  let t: TestApp;
  let ana: string;
  let doc: string;

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
    ana = await person(t.app, 'Patient', 'Rivera');
    doc = await person(t.app, 'Practitioner', 'Osei');
  });
  afterAll(async () => {
    await t?.close();
  });

  const cli = inProcessCli(registerConsentCommands, () => t.app);

  test('audit of a patient no AuditEvent names says so on stderr and prints an empty log', async () => {
    const said: string[] = [];
    const err = jest.spyOn(console, 'error').mockImplementation((...a: unknown[]) => { said.push(a.join(' ')); });
    try {
      expect(await cli('audit', '--patient', 'no-such-patient')).toBe('');
    } finally {
      err.mockRestore();
    }
    expect(said).toEqual(['no AuditEvent names Patient/no-such-patient']);
  });

  test('register an identity, grant, list, read as the grantee, revoke, and print the access log', async () => {
    expect(await cli('identity', 'register', '--ref', `Practitioner/${doc}`)).toMatch(new RegExp(`^Practitioner/${doc} 0x[0-9a-fA-F]{40}`));
    const now = Date.now();
    const granted = await cli('consent', 'grant', '--patient', ana, '--to', `Practitioner/${doc}`,
      '--data-from', new Date(now - 14 * DAY).toISOString(), '--data-to', new Date(now).toISOString(),
      '--until', new Date(now + 3 * DAY).toISOString(), '--purpose', 'TREAT', '--types', 'Patient');
    expect(granted).toMatch(/ active .*grant 0x[0-9a-f]{64}/);
    const consentId = granted.split(' ')[0]!;
    expect(await cli('consent', 'list', '--patient', ana)).toContain(consentId);

    const read = await request(t.app.http).get(`/fhir/Patient/${ana}`).set('X-Purpose-Of-Use', 'TREAT')
      .set('Authorization', `Bearer ${practitionerToken(t.app, doc, ana, ['user/*.rs'])}`);
    expect(read.status).toBe(200);
    expect(await cli('consent', 'revoke', '--consent', consentId)).toMatch(/ inactive /);
    const denied = await request(t.app.http).get(`/fhir/Patient/${ana}`).set('X-Purpose-Of-Use', 'TREAT')
      .set('Authorization', `Bearer ${practitionerToken(t.app, doc, ana, ['user/*.rs'])}`);
    expect(denied.status).toBe(404);

    await t.app.consent.audit.flush();
    let log = '';
    for (let i = 0; i < 30 && log.split('\n').filter((l) => l.includes(`Practitioner/${doc}`)).length < 2; i++) {
      if (i) await new Promise((r) => setTimeout(r, 100));
      log = await cli('audit', '--patient', ana);
    }
    const docLines = log.split('\n').filter((l) => l.includes(`Practitioner/${doc}`));
    expect(docLines).toHaveLength(2);
    expect(docLines[0]).toMatch(/read .*permitted .*purpose TREAT .*grant 0x/);
    expect(docLines[1]).toMatch(/read .*DENIED/);
  });

  test('a grant for a Patient no one holds is refused before any key is made or anything reaches the chain', async () => {
    await cli('identity', 'register', '--ref', `Practitioner/${doc}`);
    const grant = cli('consent', 'grant', '--patient', 'nobody', '--to', `Practitioner/${doc}`,
      '--data-from', '2026-01-01', '--data-to', '2026-01-07', '--until', new Date(Date.now() + 3 * DAY).toISOString().slice(0, 10));
    // a usage error since session 23 (exit 2, a bad --patient), no longer the service's OperationOutcome error
    await expect(grant).rejects.toThrow(/^Patient\/nobody not found$/);
    expect(t.app.consent.keys.get('nobody')).toBeUndefined();
    // a usage error since session 24 (it printed nothing and exited 0, as for a patient with no Consents)
    await expect(cli('consent', 'list', '--patient', 'nobody')).rejects.toThrow(/^Patient\/nobody not found$/);
  });

  test('an identity for a resource that does not exist is refused; revoking an unknown Consent names it', async () => {
    await expect(cli('identity', 'register', '--ref', 'Practitioner/doesnotexist')).rejects.toThrow('Practitioner/doesnotexist not found');
    expect(await t.app.consent.identity.granteesOf('Practitioner/doesnotexist')).toEqual([]);
    await expect(cli('consent', 'revoke', '--consent', 'nonexistent')).rejects.toThrow('Consent/nonexistent not found');
  });

  test('an identity for a client is refused unless the client is registered (a usage error: exit 2); a registered one, even disabled, is accepted', async () => {
    const refused = cli('identity', 'register', '--ref', 'Client/not-registered');
    await expect(refused).rejects.toThrow('Client/not-registered is not a registered client (see glucoguard clients list)');
    // commander's usage error: the glucoguard command exits 2 on it, as for a malformed --ref
    await expect(refused).rejects.toBeInstanceOf(CommanderError);
    expect(await t.app.consent.identity.granteesOf('Client/not-registered')).toEqual([]);
    const { client } = t.app.smart.store.addClient({ name: 'Study server', type: 'public', redirectUris: ['https://study.example/cb'] });
    expect(await cli('identity', 'register', '--ref', `Client/${client.clientId}`)).toMatch(new RegExp(`^Client/${client.clientId} 0x[0-9a-fA-F]{40}`));
    expect(await t.app.consent.identity.granteesOf(`Client/${client.clientId}`)).toHaveLength(1);
    t.app.smart.store.setDisabled(client.clientId, true);
    expect(await cli('identity', 'register', '--ref', `Client/${client.clientId}`)).toMatch(new RegExp(`^Client/${client.clientId} 0x`));
    expect(await t.app.consent.identity.granteesOf(`Client/${client.clientId}`)).toHaveLength(2);
  });

  test('grant dates are kept as dates: --data-to and --until include their whole day on chain', async () => {
    const day = (offset: number) => new Date(Date.now() + offset * DAY).toISOString().slice(0, 10);
    const granted = await cli('consent', 'grant', '--patient', ana, '--to', `Practitioner/${doc}`,
      '--data-from', day(-14), '--data-to', day(0), '--until', day(3), '--purpose', 'TREAT', '--types', 'Patient');
    const consent = (await t.app.repository.read<Consent>('Consent', granted.split(' ')[0]!));
    expect(consent.provision!.dataPeriod).toEqual({ start: day(-14), end: day(0) });
    expect(consent.provision!.period!.end).toBe(day(3));
    const grantId = consent.identifier!.find((i) => i.system === GRANT_ID_SYSTEM)!.value!;
    const onChain = (await t.app.consent.registry.getGrant(grantId))!;
    expect(new Date(onChain.dataTo * 1000).toISOString()).toBe(`${day(0)}T23:59:59.000Z`);
    expect(new Date(onChain.notAfter * 1000).toISOString()).toBe(`${day(3)}T23:59:59.000Z`);
    await expect(cli('consent', 'grant', '--patient', ana, '--to', `Practitioner/${doc}`, '--data-from', '2026-02-30', '--data-to', day(0), '--until', day(3)))
      .rejects.toThrow(/not a date/);
  });
});
