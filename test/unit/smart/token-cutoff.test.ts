/**
 * A password change ends the user's other sessions: tokens issued before it are dead, and one issued
 * after it lives, even within the same second (an access token's `iat` is in whole seconds; a sign-in
 * right after the change used to get a token that was refused at once: found by a fresh-clone CI run
 * of test/integration/web-keys.test.ts, session 28). A token without the milliseconds claim (issued
 * by an earlier version) counts from the start of its `iat` second, as before.
 */
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { afterAll, expect, test } from '@jest/globals';
import { MemoryKeyValueStore } from '../../../src/kv/memory.js';
import { SigningKeys } from '../../../src/smart/keys.js';
import type { UserCutoff } from '../../../src/smart/store.js';
import { TokenService, type Grant } from '../../../src/smart/tokens.js';
import { tempDir } from '../../support/app.js';

const dataDir = tempDir('gg-token-cutoff-');
afterAll(() => rmSync(dataDir, { recursive: true, force: true }));

const BASE = 'http://127.0.0.1:8080/fhir';
const SECOND = 1_800_000_000_000; // a whole second, in epoch ms
const ROOT = randomBytes(32).toString('base64');

function service() {
  let now = SECOND;
  const cutoff: { value: UserCutoff } = { value: {} };
  const keys = SigningKeys.open(dataDir, ROOT, () => now);
  const tokens = new TokenService(new MemoryKeyValueStore(), keys, BASE, () => now, undefined, () => false, () => cutoff.value);
  return { tokens, keys, at: (ms: number) => { now = ms; }, cutoff };
}

const grant = (gid: string): Grant => ({ gid, clientId: 'portal', sub: 'eve', scopes: ['openid', 'patient/*.read'], fhirUser: 'Patient/eve' });

test('within one second: a token from before the password change is dead, one from after it lives, the changing session is kept', () => {
  const { tokens, at, cutoff } = service();
  at(SECOND + 100);
  const before = tokens.signAccessToken(grant('old-session')).token;
  const changing = tokens.signAccessToken(grant('changing-session')).token;
  at(SECOND + 400);
  cutoff.value = { before: SECOND + 400, keptGrant: 'changing-session' }; // SmartStore.endOtherSessions at .400
  at(SECOND + 700);
  const after = tokens.signAccessToken(grant('new-sign-in')).token;
  expect(tokens.verifyAccessToken(before)).toBeUndefined();
  expect(tokens.verifyAccessToken(changing)?.gid).toBe('changing-session');
  expect(tokens.verifyAccessToken(after)?.gid).toBe('new-sign-in');
  at(SECOND + 1_500);
  expect(tokens.verifyAccessToken(after)?.gid).toBe('new-sign-in');
  expect(tokens.verifyAccessToken(before)).toBeUndefined();
});

test('a token without the milliseconds claim counts from the start of its iat second; one whose claim disagrees with iat likewise', () => {
  const { tokens, keys, at, cutoff } = service();
  at(SECOND + 700);
  const { claims } = tokens.signAccessToken(grant('any'));
  const { iat_ms: _dropped, ...older } = claims;
  const legacy = keys.signAccessToken(older);
  const mismatched = keys.signAccessToken({ ...claims, iat_ms: SECOND + 5_000 });
  expect(tokens.verifyAccessToken(legacy)?.gid).toBe('any');
  cutoff.value = { before: SECOND + 400 };
  expect(tokens.verifyAccessToken(legacy)).toBeUndefined(); // iat second start (.000) <= .400
  expect(tokens.verifyAccessToken(mismatched)).toBeUndefined();
  expect(tokens.verifyAccessToken(keys.signAccessToken(claims))?.gid).toBe('any'); // .700 > .400
});

test('a disabled user has no live token, whenever it was issued', () => {
  const { tokens, at, cutoff } = service();
  at(SECOND + 900);
  const token = tokens.signAccessToken(grant('s')).token;
  cutoff.value = { before: Infinity };
  expect(tokens.verifyAccessToken(token)).toBeUndefined();
});
