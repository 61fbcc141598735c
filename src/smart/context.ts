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
