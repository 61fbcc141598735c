/**
 * PatientKeys without a chain: which secret opens which wrap. The login wrap needs the key root
 * AND the password; a password change re-wraps; the recovery code opens the key after a reset; a
 * wrong secret changes nothing.
 */
import { randomBytes } from 'node:crypto';
import { copyFileSync, readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, test } from '@jest/globals';
import { PatientKeys } from '../../../src/consent/patient-keys.js';
import { newRecoveryCode, normaliseRecoveryCode } from '../../../src/consent/keys/wrap.js';
import { MemoryKeyValueStore } from '../../../src/kv/memory.js';
import type { IdentityRegistryClient } from '../../../src/ledger/identity-registry.js';
import { tempDir } from '../../support/app.js';

const identity = { registerPatient: async () => ({ txHash: '0x' }) } as unknown as IdentityRegistryClient;
const kvs: MemoryKeyValueStore[] = [];
afterEach(async () => { for (const kv of kvs.splice(0)) await kv.close(); });

function keys(dir = tempDir('gg-keys-'), rootKey = randomBytes(32).toString('base64')) {
  const kv = new MemoryKeyValueStore();
  kvs.push(kv);
  return { keys: new PatientKeys({ dir, rootKey, identity, kv }), dir, rootKey };
}

const session = (grantId: string) => ({ kind: 'token' as const, grantId });

describe('custodial key wraps', () => {
  test('a key made in a signed-in session opens only with that session; the file holds no key in clear', async () => {
    const { keys: k, dir } = keys();
    await k.onLogin('p1', 'pass word one', 'g1', 60_000);
    const key = await k.ensure('p1', session('g1'));
    const wallet = await k.signer('p1', session('g1'));
    expect(wallet?.address).toBe(key.address);
    await expect(k.signer('p1', session('other'))).rejects.toMatchObject({ code: 'ERR_FORBIDDEN' });
    await expect(k.signer('p1')).rejects.toMatchObject({ code: 'ERR_FORBIDDEN' });
    const file = readFileSync(path.join(dir, readdirSync(dir)[0]!), 'utf8');
    expect(file).not.toContain(wallet!.privateKey.slice(2));
  });

  test('the same files with the same password but another key root do not open', async () => {
    const first = keys();
    await first.keys.onLogin('p1', 'pass word one', 'g1', 60_000);
    await first.keys.ensure('p1', session('g1'));
    const other = keys(tempDir('gg-keys-')); // another key root, given a copy of the key file under its own name for p1
    const name = (k: PatientKeys) => `${k.pseudonym('p1').slice(2)}.json`;
    copyFileSync(path.join(first.dir, name(first.keys)), path.join(other.dir, name(other.keys)));
    expect(other.keys.get('p1')).toBeDefined();
    await other.keys.onLogin('p1', 'pass word one', 'g2', 60_000);
    await expect(other.keys.signer('p1', session('g2'))).rejects.toMatchObject({ code: 'ERR_FORBIDDEN' });
  });

  test('an unlock serves only the patient it was made for', async () => {
    const { keys: k } = keys();
    await k.onLogin('p1', 'pass word one', 'g1', 60_000);
    await k.onLogin('p2', 'pass word two', 'g2', 60_000);
    await k.ensure('p2', session('g2'));
    await expect(k.signer('p2', session('g1'))).rejects.toMatchObject({ code: 'ERR_FORBIDDEN' });
  });

  test('a password change re-wraps; the old password no longer opens it, a wrong old password changes nothing', async () => {
    const { keys: k } = keys();
    await k.onLogin('p1', 'old password', 'g1', 60_000);
    const { address } = await k.ensure('p1', session('g1'));
    await expect(k.changePassword('p1', 'not the password', 'new password')).rejects.toMatchObject({ code: 'ERR_FORBIDDEN' });
    await k.changePassword('p1', 'old password', 'new password');
    await k.onLogin('p1', 'old password', 'g-old', 60_000);
    await expect(k.signer('p1', session('g-old'))).rejects.toMatchObject({ code: 'ERR_FORBIDDEN' });
    await k.onLogin('p1', 'new password', 'g-new', 60_000);
    expect((await k.signer('p1', session('g-new')))!.address).toBe(address);
  });

  test('the recovery code re-opens the key under a new login; a wrong code is refused', async () => {
    const { keys: k } = keys();
    await k.onLogin('p1', 'old password', 'g1', 60_000);
    const { address } = await k.ensure('p1', session('g1'));
    const code = await k.createRecoveryCode('p1', session('g1'));
    expect((await k.protection('p1'))!.recoveryCodeCreated).not.toBeNull();
    await k.onLogin('p1', 'reset password', 'g2', 60_000);
    expect((await k.protection('p1', session('g2')))!.locked).toBe(true);
    await expect(k.recoverWithCode('p1', newRecoveryCode(), session('g2'))).rejects.toMatchObject({ code: 'ERR_FORBIDDEN' });
    await k.recoverWithCode('p1', code, session('g2'));
    expect((await k.signer('p1', session('g2')))!.address).toBe(address);
  });

  test('recovery codes: 25 characters from an alphabet without look-alikes; typing is forgiving', () => {
    const code = newRecoveryCode();
    expect(code).toMatch(/^([A-HJ-NP-Z2-9]{5}-){4}[A-HJ-NP-Z2-9]{5}$/);
    expect(normaliseRecoveryCode(code.toLowerCase().replace(/-/g, ' '))).toBe(code.replace(/-/g, ''));
  });
});
