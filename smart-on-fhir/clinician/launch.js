// EHR launch: the EHR opens this page with ?iss=…&launch=…; fhirclient does the SMART dance.
// Opened without them (a bookmark, the GlucoGuard home page), it is a standalone launch: the
// clinician signs in at GlucoGuard and picks the patient; the token then asks for a patient banner.
import { appConfig, trustedLaunch } from '../shared/dom.js';

const status = document.getElementById('status');
try {
  const config = await appConfig();
  const params = new URLSearchParams(window.location.search);
  const ehr = params.has('launch');
  // An EHR launch names its server; one that does not (or names another) is not followed.
  if (!trustedLaunch(config, params) || (ehr && !params.has('iss'))) {
    status.dataset.refused = 'iss';
    status.textContent = 'This link does not come from this GlucoGuard server, so the viewer did not follow it. '
      + 'Open the viewer from the patient\'s record in your EHR.';
  } else {
    await window.FHIR.oauth2.authorize({
      clientId: config.clinician.clientId,
      scope: ehr ? config.clinician.scope : config.clinician.standaloneScope,
      redirectUri: config.clinician.redirectUri,
      iss: config.fhirBase,
    });
  }
} catch {
  // fhirclient's messages name URLs and responses: the clinician gets a plain sentence.
  status.textContent = 'This app could not start. Open it again from the patient\'s record in your EHR.';
}
