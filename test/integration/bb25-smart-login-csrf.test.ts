/**
 * The sign-in of an authorization request is bound to the browser that signed in (session 25,
 * black-box round). A request id is shown in the login page, and a cross-site form POST of a wrong
 * password to /oauth/login has the real page rendered with an id of the poster's choosing; a victim
 * who then signs in there used to continue that same id, so its poster — who started the request
 * with its own PKCE verifier — could post /oauth/approve itself and redeem the code for the
 * victim's tokens. The signed-in request now continues under a new id shown only to the browser
 * that signed in.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { startHarness, type Harness } from '../support/smart-harness.js';
import { browse, requestIdOf, REDIRECT_URI } from '../support/smart-client.js';

let h: Harness;
let clientId: string;
const VICTIM = { username: 'ana', password: 'correct horse battery' };

beforeAll(async () => {
  h = await startHarness();
  await h.smart.store.addUser({ ...VICTIM, fhirUser: 'Patient/p1' });
  await h.smart.store.addUser({ username: 'doc', password: 'doctor password 1', fhirUser: 'Practitioner/d1' });
  clientId = h.smart.store.addClient({ name: 'Viewer', type: 'public', redirectUris: [REDIRECT_URI],
    scopes: ['openid', 'fhirUser', 'launch/patient', 'offline_access', 'patient/*.rs'] }).client.clientId;
});
afterAll(async () => h.close());

/** The attacker starts an authorization request with its own PKCE verifier: the login page's request id. */
async function attackerStarts(scope: string): Promise<{ id: string; verifier: string }> {
  const verifier = randomBytes(32).toString('base64url');
  const url = new URL(h.smart.urls.authorize);
  for (const [k, v] of Object.entries({ response_type: 'code', client_id: clientId, redirect_uri: REDIRECT_URI, scope, state: 's', aud: h.fhirBase,
    code_challenge: createHash('sha256').update(verifier).digest('base64url'), code_challenge_method: 'S256' })) url.searchParams.set(k, v);
  return { id: requestIdOf((await browse(url.href)).html), verifier };
}

async function redeem(location: string | undefined, verifier: string) {
  const code = location ? new URL(location).searchParams.get('code') : null;
  if (!code) return undefined;
  const res = await fetch(h.smart.urls.token, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'authorization_code', code, code_verifier: verifier, redirect_uri: REDIRECT_URI, client_id: clientId }) });
  return res.status === 200 ? ((await res.json()) as Record<string, unknown>) : undefined;
}

describe('a request id planted in the login page', () => {
  test('the victim signs in on it; its planter cannot approve and redeem the victim\'s sign-in', async () => {
    const attacker = await attackerStarts('openid fhirUser patient/*.rs offline_access');
    // the cross-site POST: a wrong password renders the genuine sign-in page holding the planted id
    const planted = await browse(`${h.baseUrl}/oauth/login`, { request: attacker.id, username: '', password: '' });
    expect(planted.status).toBe(401);
    expect(requestIdOf(planted.html)).toBe(attacker.id);
    const victim = await browse(`${h.baseUrl}/oauth/login`, { request: attacker.id, ...VICTIM });
    expect(victim.status).toBe(200);
    expect(victim.html).toContain('name="decision"');
    expect(requestIdOf(victim.html)).not.toBe(attacker.id);
    // the planter, polling with the id it knows
    const stolen = await browse(`${h.baseUrl}/oauth/approve`, { request: attacker.id, decision: 'allow' });
    expect(stolen.status).toBe(400);
    expect(stolen.location).toBeUndefined();
    expect(await redeem(stolen.location, attacker.verifier)).toBeUndefined();
    // nor may the old id sign in again (another user, or the victim's password a second time)
    expect((await browse(`${h.baseUrl}/oauth/login`, { request: attacker.id, ...VICTIM })).status).toBe(400);
    // the victim's own browser carries on
    const approved = await browse(`${h.baseUrl}/oauth/approve`, { request: requestIdOf(victim.html), decision: 'allow' });
    expect(approved.status).toBe(302);
    expect(new URL(approved.location!).searchParams.get('code')).toBeTruthy();
  });

  test('the same through the patient picker: the planted id reaches neither the picker nor the approval', async () => {
    const attacker = await attackerStarts('launch/patient patient/*.rs');
    const picker = await browse(`${h.baseUrl}/oauth/login`, { request: attacker.id, username: 'doc', password: 'doctor password 1' });
    expect(picker.html).toContain('Choose a patient');
    expect((await browse(`${h.baseUrl}/oauth/select-patient`, { request: attacker.id, patient: 'p1' })).status).toBe(400);
    const approval = await browse(`${h.baseUrl}/oauth/select-patient`, { request: requestIdOf(picker.html), patient: 'p1' });
    expect(approval.html).toContain('name="decision"');
    const stolen = await browse(`${h.baseUrl}/oauth/approve`, { request: attacker.id, decision: 'allow' });
    expect(stolen.location).toBeUndefined();
    expect(await redeem(stolen.location, attacker.verifier)).toBeUndefined();
  });
});
