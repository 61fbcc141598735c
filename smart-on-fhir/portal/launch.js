// Standalone launch of the patient portal: sign in as a patient at GlucoGuard's own server.
import { appConfig, trustedLaunch } from '../shared/dom.js';

const status = document.getElementById('status');
try {
  const config = await appConfig();
  // fhirclient would follow an `iss` (or fhirServiceUrl, clientId…) in this page's URL over the
  // options below: a link naming another server would send the patient's sign-in there.
  if (!trustedLaunch(config, new URLSearchParams(window.location.search))) {
    status.dataset.refused = 'iss';
    status.textContent = 'This sign-in link does not come from this GlucoGuard server, so it was not followed. '
      + 'Open the portal from your clinic\'s GlucoGuard address.';
  } else {
    await window.FHIR.oauth2.authorize({
      iss: config.fhirBase,
      clientId: config.portal.clientId,
      scope: config.portal.scope,
      redirectUri: config.portal.redirectUri,
    });
  }
} catch {
  status.textContent = 'Sign-in could not start. Please try again in a moment.';
}
