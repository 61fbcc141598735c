/**
 * The embedded chain's signer key file: what loadAuthorityKey accepts (a 32-byte secp256k1 private
 * key, with or without 0x, any case) and refuses (zero, the group order and above, wrong length, not
 * hex), checked against @ethereumjs/util's isValidPrivate, which the file reader no longer loads.
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { afterAll, expect, test } from '@jest/globals';
import { isValidPrivate } from '@ethereumjs/util';
import { Wallet } from 'ethers';
import { loadAuthorityKey, signerKeyPath } from '../../chain/node/index.js';
import { loadOrCreateSignerKey } from '../../chain/node/keys.js';
import { tempDir } from '../support/app.js';

const dataDir = tempDir('gg-signer-key-');
afterAll(() => rmSync(dataDir, { recursive: true, force: true }));

const N = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141n;
const hex64 = (n: bigint): string => n.toString(16).padStart(64, '0');

function withKeyFile(text: string): () => string {
  mkdirSync(signerKeyPath(dataDir).replace(/\/[^/]+$/, ''), { recursive: true });
  writeFileSync(signerKeyPath(dataDir), text);
  return () => loadAuthorityKey(dataDir);
}

test.each([
  ['one', hex64(1n)],
  ['the group order less one', hex64(N - 1n)],
  ['a random key, upper case, 0x-prefixed', `0x${Wallet.createRandom().privateKey.slice(2).toUpperCase()}`],
])('accepts %s, answered as 0x-prefixed lower-case hex', (_name, text) => {
  const bare = text.replace(/^0x/, '').toLowerCase();
  expect(isValidPrivate(Buffer.from(bare, 'hex'))).toBe(true);
  expect(withKeyFile(`${text}\n`)()).toBe(`0x${bare}`);
});

test.each([
  ['zero', hex64(0n)],
  ['the group order', hex64(N)],
  ['above the group order', hex64(N + 5n)],
  ['all ones', 'f'.repeat(64)],
])('refuses %s, as @ethereumjs/util does', (_name, text) => {
  expect(isValidPrivate(Buffer.from(text, 'hex'))).toBe(false);
  expect(withKeyFile(text)).toThrow(/does not hold a valid secp256k1 private key/);
});

test.each([
  ['31 bytes', hex64(7n).slice(2)],
  ['33 bytes', `00${hex64(7n)}`],
  ['not hex', `${hex64(7n).slice(0, 62)}zz`],
  ['empty', ''],
])('refuses a key of %s', (_name, text) => {
  expect(withKeyFile(text)).toThrow(/does not hold a valid secp256k1 private key/);
});

test('a created key is valid, kept, and read back the same', () => {
  const fresh = tempDir('gg-signer-new-');
  try {
    const key = loadOrCreateSignerKey(fresh);
    expect(key).toHaveLength(32);
    expect(isValidPrivate(key)).toBe(true);
    expect(loadOrCreateSignerKey(fresh)).toEqual(key);
    expect(loadAuthorityKey(fresh)).toBe(`0x${Buffer.from(key).toString('hex')}`);
  } finally {
    rmSync(fresh, { recursive: true, force: true });
  }
});
