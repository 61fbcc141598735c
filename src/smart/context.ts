/** Everything the authorization server's endpoints share, built once by createSmart (index.ts). */
import type { KeyValueStore } from '../kv/port.js';
import type { Logger } from '../log.js';
import type { SigningKeys } from './keys.js';
import type { RateLimiter } from './rate-limit.js';
import type { SmartStore } from './store.js';
import type { TokenService } from './tokens.js';

export interface PatientChoice {
  id: string;
  name: string;
  birthDate?: string;
}

/** Search for the practitioner's patient picker; `query` is what the user typed (may be empty). */
export type SearchPatients = (query: string) => Promise<PatientChoice[]>;

export interface SmartUrls {
  issuer: string;
  fhirBase: string;
  authorize: string;
  token: string;
  introspect: string;
  revoke: string;
  jwks: string;
  launch: string;
  style: string;
}

/**
 * Called at a patient's sign-in, right after the password was verified, with the grant id the
 * session's tokens will carry and how long the session may last. The password is handed over in
 * memory only (never stored or logged); src/consent/patient-keys.ts turns it into the unlock of the
 * patient's custodial key. A failing hook does not fail the sign-in.
 */
export type PatientLoginHook = (login: { patientId: string; password: string; gid: string; ttlMs: number }) => Promise<void>;

export interface SmartContext {
  store: SmartStore;
  kv: KeyValueStore;
  keys: SigningKeys;
  tokens: TokenService;
  limiter: RateLimiter;
  urls: SmartUrls;
  logger: Logger;
  now: () => number;
  searchPatients?: SearchPatients;
  loginHooks: PatientLoginHook[];
}

export function smartUrls(baseUrl: string, fhirBase: string): SmartUrls {
  return {
    issuer: fhirBase,
    fhirBase,
    authorize: `${baseUrl}/oauth/authorize`,
    token: `${baseUrl}/oauth/token`,
    introspect: `${baseUrl}/oauth/introspect`,
    revoke: `${baseUrl}/oauth/revoke`,
    jwks: `${baseUrl}/oauth/jwks`,
    launch: `${baseUrl}/smart/launch`,
    style: `${baseUrl}/smart/style.json`,
  };
}
