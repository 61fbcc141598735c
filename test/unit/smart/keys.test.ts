import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { SigningKeys } from '../../../src/smart/keys.js';
import { hashPassword, verifyPassword } from '../../../src/smart/passwords.js';

const ROOT = randomBytes(32).toString('base64');
let dir: string;
beforeEach(() => { dir = mkdtempSync(path.join(tmpdir(), 'gg-keys-')); });
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('signing keys', () => {
  test('generated once on first start, private file mode 0600, reused on the next start', () => {
    const first = SigningKeys.open(dir, ROOT);
    const file = path.join(dir, 'keys', 'smart-signing-keys.json');
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const second = SigningKeys.open(dir, ROOT);
    expect(second.jwks()).toEqual(first.jwks());
    const algs = first.jwks().keys.map((k) => k.alg).sort();
    expect(algs).toEqual(['ES256', 'RS256']);
    expect(first.jwks().keys.every((k) => !('d' in k) && k.kid.length > 20)).toBe(true);
  });

  test('the file is sealed under the key root: no private key in it, another root does not open it', () => {
    const keys = SigningKeys.open(dir, ROOT);
    const file = path.join(dir, 'keys', 'smart-signing-keys.json');
    const text = readFileSync(file, 'utf8');
    expect(JSON.parse(text)).toEqual({ version: 2, sealed: expect.any(String) });
    expect(text).not.toMatch(/"d"|privateJwk|"kty"/);
    expect(() => SigningKeys.open(dir, randomBytes(32).toString('base64'))).toThrow(/does not open with this data directory's key root/);
    expect(readFileSync(file, 'utf8')).toBe(text); // the refusal rewrote nothing
    expect(SigningKeys.open(dir, ROOT).jwks()).toEqual(keys.jwks());
  });

  test('a file an earlier version wrote in clear is sealed when opened, keeping its keys', () => {
    const keys = SigningKeys.open(dir, ROOT);
    const token = keys.signAccessToken({ sub: 'a' });
    // the clear layout of version 1, as the keys themselves would have been written
    const clear = { version: 1, access: { current: { kid: 'k1', alg: 'ES256', privateJwk: {} }, previous: [] }, id: { current: { kid: 'k2', alg: 'RS256', privateJwk: {} }, previous: [] } };
    const file = path.join(dir, 'keys', 'smart-signing-keys.json');
    clear.access.current.privateJwk = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
    clear.id.current.privateJwk = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
    writeFileSync(file, JSON.stringify(clear));
    const migrated = SigningKeys.open(dir, ROOT);
    expect(migrated.jwks().keys.map((k) => k.kid).sort()).toEqual(['k1', 'k2']);
    expect(JSON.parse(readFileSync(file, 'utf8'))).toEqual({ version: 2, sealed: expect.any(String) });
    expect(readFileSync(file, 'utf8')).not.toMatch(/"d"/);
    expect(migrated.verifyAccessToken(migrated.signAccessToken({ sub: 'b' }))).toMatchObject({ sub: 'b' });
    expect(migrated.verifyAccessToken(token)).toBeUndefined(); // another key pair entirely
  });

  test('an access token verifies; a tampered one or one signed by the id_token key does not', () => {
    const keys = SigningKeys.open(dir, ROOT);
    const token = keys.signAccessToken({ sub: 'a', scope: 'patient/*.rs' });
    expect(keys.verifyAccessToken(token)).toMatchObject({ sub: 'a' });
    const [h, , s] = token.split('.');
    expect(keys.verifyAccessToken(`${h}.${Buffer.from('{"sub":"b"}').toString('base64url')}.${s}`)).toBeUndefined();
    expect(keys.verifyAccessToken(keys.signIdToken({ sub: 'a' }))).toBeUndefined();
    expect(keys.verifyAccessToken('a.b')).toBeUndefined();
  });

  test('rotation: new kid signs, the previous public key stays in the JWKS, old tokens still verify', () => {
    const keys = SigningKeys.open(dir, ROOT);
    const old = keys.signAccessToken({ sub: 'a' });
    const before = keys.jwks().keys.map((k) => k.kid);
    keys.rotate();
    const after = keys.jwks().keys.map((k) => k.kid);
    expect(after).toHaveLength(4);
    expect(after).toEqual(expect.arrayContaining(before));
    expect(keys.verifyAccessToken(old)).toMatchObject({ sub: 'a' });
    const fresh = keys.signAccessToken({ sub: 'b' });
    const kid = JSON.parse(Buffer.from(fresh.split('.')[0]!, 'base64url').toString()).kid;
    expect(before).not.toContain(kid);
    // A second rotation drops the oldest key: tokens signed with it stop verifying.
    keys.rotate();
    expect(keys.verifyAccessToken(old)).toBeUndefined();
    expect(SigningKeys.open(dir, ROOT).verifyAccessToken(fresh)).toMatchObject({ sub: 'b' });
  });
});

describe('passwords (scrypt)', () => {
  test('hash verifies the right password only, and is salted', async () => {
    const a = await hashPassword('correct horse battery');
    const b = await hashPassword('correct horse battery');
    expect(a).toMatch(/^scrypt\$32768\$8\$1\$/);
    expect(a).not.toBe(b);
    expect(await verifyPassword('correct horse battery', a)).toBe(true);
    expect(await verifyPassword('correct horse batterx', a)).toBe(false);
    expect(await verifyPassword('x', 'not-a-hash')).toBe(false);
  });
});
