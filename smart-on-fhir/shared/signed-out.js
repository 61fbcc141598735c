// The signed-out page of both apps: says whether the server ended the session, and forgets any
// session state a sign-out interrupted half-way (the page may also be opened on its own).
import { forgetSession } from './session.js';

forgetSession();
if (new URLSearchParams(window.location.search).get('revoked') === 'no') {
  document.getElementById('not-revoked').hidden = false;
}
