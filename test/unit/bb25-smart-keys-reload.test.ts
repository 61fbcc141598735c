/**
 * Signing-key rotation reaches every process on the data directory without a restart (session 25,
 * black-box round): two SigningKeys opened on one directory stand for two replicas, or the server
 * and the `glucoguard signing-keys rotate` command. They share nothing but the key file.
 */
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { SigningKeys } from '../../src/smart/keys.js';

const ROOT = randomBytes(32).toString('base64');
const kidOf = (jws: string): string => JSON.parse(Buffer.from(jws.split('.')[0]!, 'base64url').toString()).kid;
let dir: string;
let clock: number;
const now = () => clock;
beforeEach(() => { dir = mkdtempSync(path.join(tmpdir(), 'gg-bb25-keys-')); clock = 1_000_000; });
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('signing keys rotated by another process', () => {
  test('a token signed with the new key verifies at once in a process that has not seen the rotation', () => {
    const a = SigningKeys.open(dir, ROOT, now);
    const b = SigningKeys.open(dir, ROOT, now);
    a.rotate();
    const fresh = a.signAccessToken({ sub: 'x' });
    expect(b.verifyAccessToken(fresh)).toMatchObject({ sub: 'x' }); // no clock step: the unknown kid makes b look
  });

  test('within a second the other process signs with the new keys and publishes them', () => {
    const a = SigningKeys.open(dir, ROOT, now);
    const b = SigningKeys.open(dir, ROOT, now);
    const before = kidOf(b.signAccessToken({ sub: 'x' }));
    a.rotate();
    clock += 1000;
    const after = b.signAccessToken({ sub: 'x' });
    expect(kidOf(after)).toBe(kidOf(a.signAccessToken({ sub: 'x' })));
    expect(kidOf(after)).not.toBe(before);
    expect(kidOf(b.signIdToken({ sub: 'x' }))).toBe(kidOf(a.signIdToken({ sub: 'x' })));
    expect(b.jwks()).toEqual(a.jwks());
    // and a third process (a replica restarted meanwhile) accepts what b now signs
    expect(SigningKeys.open(dir, ROOT, now).verifyAccessToken(after)).toMatchObject({ sub: 'x' });
  });

  test('a key two rotations dropped stops verifying in the other process, even for a token it verified before', () => {
    const a = SigningKeys.open(dir, ROOT, now);
    const b = SigningKeys.open(dir, ROOT, now);
    const old = b.signAccessToken({ sub: 'x' });
    expect(b.verifyAccessToken(old)).toMatchObject({ sub: 'x' }); // now in b's verified cache
    a.rotate();
    a.rotate(); // e.g. the key leaked: rotated twice to drop it from the JWKS
    clock += 1000;
    expect(b.verifyAccessToken(old)).toBeUndefined();
    expect(b.jwks().keys.map((k) => k.kid)).not.toContain(kidOf(old));
  });

  test('an unreadable key file leaves the loaded keys working', () => {
    const a = SigningKeys.open(dir, ROOT, now);
    const token = a.signAccessToken({ sub: 'x' });
    rmSync(path.join(dir, 'keys', 'smart-signing-keys.json'));
    clock += 1000;
    expect(a.verifyAccessToken(token)).toMatchObject({ sub: 'x' });
    expect(kidOf(a.signAccessToken({ sub: 'y' }))).toBe(kidOf(token));
  });
});
