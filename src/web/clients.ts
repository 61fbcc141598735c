/**
 * The two SMART apps GlucoGuard serves (clinician viewer, patient portal) are registered as public
 * clients of its own authorization server on start-up. Their client ids are kept in
 * `<dataDir>/web/clients.json` so they stay stable across restarts; a changed base URL (the
 * redirect URIs) registers them again.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { SmartStore } from '../smart/store.js';

export const CLINICIAN_SCOPE = 'openid fhirUser launch user/*.rs';
/** Standalone launch of the clinician app: the clinician signs in here and picks the patient. */
export const CLINICIAN_STANDALONE_SCOPE = 'openid fhirUser launch/patient user/*.rs';
export const PORTAL_SCOPE = 'openid fhirUser launch/patient patient/*.cruds';

const CLINICIAN_SCOPES = [...new Set([...CLINICIAN_SCOPE.split(' '), ...CLINICIAN_STANDALONE_SCOPE.split(' ')])];

export interface WebClients {
  clinician: string;
  portal: string;
}

interface ClientsFile extends WebClients {
  baseUrl: string;
}

/** App URLs under a base URL. */
export function appUrls(baseUrl: string) {
  return {
    clinicianLaunch: `${baseUrl}/apps/clinician/launch.html`,
    clinicianIndex: `${baseUrl}/apps/clinician/index.html`,
    portalLaunch: `${baseUrl}/apps/portal/launch.html`,
    portalIndex: `${baseUrl}/apps/portal/index.html`,
  };
}

function clientsFile(dataDir: string): string {
  return path.join(dataDir, 'web', 'clients.json');
}

function savedClients(dataDir: string): ClientsFile | undefined {
  const file = clientsFile(dataDir);
  return existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')) as ClientsFile : undefined;
}

/** The apps' client ids as the server registered them (web/clients.json), without registering anything. */
export function registeredWebClients(dataDir: string): WebClients | undefined {
  const saved = savedClients(dataDir);
  return saved && { clinician: saved.clinician, portal: saved.portal };
}

/** Registers (once) the clinician and portal apps; returns their client ids. */
export function ensureWebClients(store: SmartStore, dataDir: string, baseUrl: string): WebClients {
  const saved = savedClients(dataDir);
  if (saved) {
    const clinician = store.getClient(saved.clinician);
    // Registered before the standalone launch existed (no launch/patient): registered again below.
    const current = clinician && CLINICIAN_SCOPES.every((s) => clinician.scopes.includes(s));
    if (saved.baseUrl === baseUrl && current && store.getClient(saved.portal)) {
      return { clinician: saved.clinician, portal: saved.portal };
    }
  }
  const urls = appUrls(baseUrl);
  const clinician = store.addClient({
    name: 'GlucoGuard CGM viewer (clinician)', type: 'public', redirectUris: [urls.clinicianIndex], launchUri: urls.clinicianLaunch,
    scopes: CLINICIAN_SCOPES,
  }).client.clientId;
  const portal = store.addClient({
    name: 'GlucoGuard patient portal', type: 'public', redirectUris: [urls.portalIndex], launchUri: urls.portalLaunch,
    scopes: PORTAL_SCOPE.split(' '),
  }).client.clientId;
  mkdirSync(path.dirname(clientsFile(dataDir)), { recursive: true, mode: 0o700 });
  writeFileSync(clientsFile(dataDir), JSON.stringify({ baseUrl, clinician, portal } satisfies ClientsFile, null, 2), { mode: 0o600 });
  return { clinician, portal };
}
