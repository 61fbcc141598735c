// Standalone launch of the patient portal: sign in as a patient at GlucoGuard's own server.
import { appConfig } from '../shared/dom.js';

const status = document.getElementById('status');
try {
  const config = await appConfig();
  await window.FHIR.oauth2.authorize({
    iss: config.fhirBase,
    clientId: config.portal.clientId,
    scope: config.portal.scope,
    redirectUri: config.portal.redirectUri,
  });
} catch (err) {
  status.textContent = `Sign-in could not start: ${err.message}`;
}
