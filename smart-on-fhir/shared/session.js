// Signing out, for both apps: the tokens are revoked at the authorization server (RFC 7009, the
// `revocation_endpoint` of the SMART configuration), which also ends what the server keeps for the
// sign-in (the patient's unlocked signing key); then everything the app kept of the session is
// forgotten and the page leaves for a signed-out page, so nothing of it stays in memory either.
import { el, endRequests } from './dom.js';

// fhirclient keeps its state in sessionStorage: SMART_KEY names the entry holding the tokens.
const SMART_KEY = 'SMART_KEY';

/** Whether this tab holds a SMART session (fhirclient state) at all. */
export function hasSession() {
  try {
    return sessionStorage.getItem(SMART_KEY) !== null;
  } catch {
    return false;
  }
}

/**
 * Forgets every token and launch state of this tab: fhirclient's entries (SMART_KEY and the state it
 * names) in sessionStorage and, should an older fhirclient have used it, localStorage. The portal's
 * collected guardian signatures (recovery.js) are no session state: they stay, as that page promises.
 */
export function forgetSession() {
  for (const store of [globalThis.sessionStorage, globalThis.localStorage]) {
    try {
      if (!store) continue;
      const named = store.getItem(SMART_KEY);
      if (named) store.removeItem(JSON.parse(named));
      store.removeItem(SMART_KEY);
      // Any other fhirclient state (a launch that never finished) holds a clientId and a serverUrl.
      for (const key of Object.keys(store)) {
        try {
          const value = JSON.parse(store.getItem(key) ?? 'null');
          if (value && typeof value === 'object' && 'clientId' in value && 'serverUrl' in value) store.removeItem(key);
        } catch {
          // not JSON: not fhirclient's
        }
      }
    } catch {
      // storage refused (private window): nothing was kept there
    }
  }
}

/** POSTs each token to the revocation endpoint as the app's public client; true when every one was accepted. */
async function revoke(client) {
  const tokens = client.state.tokenResponse ?? {};
  const res = await fetch(`${client.state.serverUrl.replace(/\/+$/, '')}/.well-known/smart-configuration`, { headers: { Accept: 'application/json' } });
  const endpoint = res.ok ? (await res.json()).revocation_endpoint : undefined;
  if (!endpoint) return false;
  let ok = true;
  // Revoking either token ends the whole grant; both are sent so neither outlives a server that does less.
  for (const [token, hint] of [[tokens.access_token, 'access_token'], [tokens.refresh_token, 'refresh_token']]) {
    if (!token) continue;
    const answer = await fetch(endpoint, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token, token_type_hint: hint, client_id: client.state.clientId }),
    });
    ok &&= answer.ok;
  }
  return ok;
}

/**
 * Signs out: aborts the session's requests still under way (cancellableRequests in dom.js), revokes
 * the tokens, forgets the session and replaces this page (not a new history entry: Back does not
 * return to the signed-in page) with `signedOutPage`, which is told when the server could not be
 * reached (`?revoked=no`: the tokens then end at their expiry).
 */
export async function signOut(client, signedOutPage) {
  // the session's requests under way end first: none reaches the server after the revocation
  endRequests(client);
  let revoked = false;
  try {
    revoked = await revoke(client);
  } catch {
    revoked = false;
  }
  forgetSession();
  window.location.replace(revoked ? signedOutPage : `${signedOutPage}?revoked=no`);
}

/** The "Sign out" button for an app's header. */
export function signOutButton(client, signedOutPage) {
  const button = el('button', { type: 'button', id: 'sign-out', class: 'secondary' }, 'Sign out');
  button.addEventListener('click', () => {
    button.disabled = true;
    button.textContent = 'Signing out…';
    void signOut(client, signedOutPage);
  });
  return button;
}
