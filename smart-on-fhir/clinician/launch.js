// EHR launch: the EHR opens this page with ?iss=…&launch=…; fhirclient does the SMART dance.
// Opened without them (a bookmark, the GlucoGuard home page), it is a standalone launch: the
// clinician signs in at GlucoGuard and picks the patient; the token then asks for a patient banner.
import { appConfig } from '../shared/dom.js';

const status = document.getElementById('status');
try {
  const config = await appConfig();
  const params = new URLSearchParams(window.location.search);
  const ehr = params.has('launch');
  await window.FHIR.oauth2.authorize({
    clientId: config.clinician.clientId,
    scope: ehr ? config.clinician.scope : config.clinician.standaloneScope,
    redirectUri: config.clinician.redirectUri,
    ...(ehr ? {} : { iss: params.get('iss') ?? config.fhirBase }),
  });
} catch (err) {
  status.textContent = `This app could not start: ${err.message}. Open it from the patient's record in your EHR.`;
}
