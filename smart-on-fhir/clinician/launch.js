// EHR launch: the EHR opens this page with ?iss=…&launch=…; fhirclient does the SMART dance.
import { appConfig } from '../shared/dom.js';

const status = document.getElementById('status');
try {
  const config = await appConfig();
  await window.FHIR.oauth2.authorize({
    clientId: config.clinician.clientId,
    scope: config.clinician.scope,
    redirectUri: config.clinician.redirectUri,
  });
} catch (err) {
  status.textContent = `This app could not start: ${err.message}. Open it from the patient's record in your EHR.`;
}
