/**
 * Serves the two SMART apps in `smart-on-fhir/` (clinician CGM viewer, patient portal) under
 * `/apps/`, the `fhirclient` and `ethers` browser builds from node_modules (no CDN: hospital
 * networks; no bundler: the apps import the ES-module build of ethers as it ships), the app
 * configuration (client ids) and the small JSON API of src/web/api.ts. src/app.ts mounts `router`
 * at `/`.
 *
 * Paths: /apps/ (static), /apps/vendor/fhir-client.min.js, /apps/vendor/ethers.min.js,
 * /apps/config.json, /apps/api/*.
 */
import path from 'node:path';
import express, { type Router } from 'express';
import type { Config } from '../config.js';
import type { Consent } from '../consent/index.js';
import type { Logger } from '../log.js';
import { PACKAGE_ROOT } from '../paths.js';
import type { Repository } from '../repository/port.js';
import type { Smart } from '../smart/index.js';
import { webApiRouter } from './api.js';
import { appUrls, CLINICIAN_SCOPE, CLINICIAN_STANDALONE_SCOPE, ensureWebClients, registeredWebClients, PORTAL_SCOPE, type WebClients } from './clients.js';

export { appUrls, CLINICIAN_SCOPE, CLINICIAN_STANDALONE_SCOPE, PORTAL_SCOPE, type WebClients } from './clients.js';
export { grantView, type GrantView } from './api.js';

export const APPS_DIR = path.join(PACKAGE_ROOT, 'smart-on-fhir');
const FHIRCLIENT_BUILD = path.join(PACKAGE_ROOT, 'node_modules', 'fhirclient', 'build');
// ethers' ES-module browser build (EIP-712 hashing and signer recovery in smart-on-fhir/shared/eip712.js).
const ETHERS_BUILD = path.join(PACKAGE_ROOT, 'node_modules', 'ethers', 'dist');

export interface WebDeps {
  config: Config;
  fhirBase: string;
  smart: Smart;
  repository: Repository;
  consent: Consent;
  logger: Logger;
  /**
   * Whether to register the apps when they are not (the server: default); a one-off command only
   * reads what the server registered, so that its own base URL does not register them again.
   */
  register?: boolean;
}

export interface Web {
  router: Router;
  /** Client ids of the registered apps (empty strings when they could not be registered). */
  clients: WebClients;
  urls: ReturnType<typeof appUrls>;
}

/**
 * Registers the apps as SMART clients (once per data directory) and builds the router. A base URL
 * the authorization server refuses as a redirect URI (plain http on a non-loopback host) leaves the
 * apps unregistered: the proxy still starts, says why, and /apps/config.json answers 503.
 */
export function createWeb(deps: WebDeps): Web {
  let clients: WebClients = { clinician: '', portal: '' };
  let problem: string | undefined;
  try {
    if (deps.register === false) {
      const saved = registeredWebClients(deps.config.dataDir);
      if (saved) clients = saved;
      else problem = 'the apps are registered when the server (glucoguard serve) starts';
    } else clients = ensureWebClients(deps.smart.store, deps.config.dataDir, deps.config.baseUrl);
  } catch (err) {
    problem = 'the apps need an https GLUCOGUARD_BASE_URL (or http on localhost) for their redirect URIs';
    // one line: the reason, not a stack trace (the cause is the base URL, not a fault)
    deps.logger.warn(`patient portal and clinician app disabled: ${problem} (${(err as Error).message})`);
  }
  // The portal's sign-in is where the patient's custodial key is unlocked for the session
  // (src/consent/patient-keys.ts): the password goes from the login check straight to the key.
  deps.smart.onPatientLogin(({ patientId, password, gid, ttlMs }) => deps.consent.keys.onLogin(patientId, password, gid, ttlMs));
  // Signing out (revoking the session's tokens) locks the key again at once, not at the token's expiry.
  deps.smart.onGrantRevoked((gid) => deps.consent.keys.sessions.drop(gid));
  const urls = appUrls(deps.config.baseUrl);
  const router = express.Router();
  router.get('/apps/config.json', (_req, res) => {
    if (problem) {
      res.status(503).json({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'transient', diagnostics: `The apps are not available: ${problem}` }] });
      return;
    }
    res.set('Cache-Control', 'no-store').json({
      fhirBase: deps.fhirBase,
      clinician: { clientId: clients.clinician, scope: CLINICIAN_SCOPE, standaloneScope: CLINICIAN_STANDALONE_SCOPE, redirectUri: urls.clinicianIndex },
      portal: { clientId: clients.portal, scope: PORTAL_SCOPE, redirectUri: urls.portalIndex },
    });
  });
  router.get(['/apps/vendor/fhir-client.min.js', '/apps/vendor/fhir-client.min.js.map'], (req, res) => {
    res.sendFile(path.basename(req.path), { root: FHIRCLIENT_BUILD, maxAge: '1h' });
  });
  router.get('/apps/vendor/ethers.min.js', (_req, res) => {
    res.sendFile('ethers.min.js', { root: ETHERS_BUILD, maxAge: '1h' });
  });
  router.use('/apps/api', webApiRouter({ smart: deps.smart, repository: deps.repository, consent: deps.consent, logger: deps.logger }));
  router.get(['/apps', '/apps/'], (_req, res) => res.redirect(302, '/apps/portal/index.html'));
  router.use('/apps', express.static(APPS_DIR, { index: 'index.html', dotfiles: 'ignore', fallthrough: true, maxAge: 0 }));
  return { router, clients, urls };
}
