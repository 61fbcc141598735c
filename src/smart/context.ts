/** Everything the authorization server's endpoints share, built once by createSmart (index.ts). */
import type { AccessContext } from '../fhir/access.js';
import type { KeyValueStore } from '../kv/port.js';
import type { Logger } from '../log.js';
import type { SigningKeys } from './keys.js';
import type { RateLimiter } from './rate-limit.js';
import type { SmartStore } from './store.js';
import type { TokenService } from './tokens.js';

export interface PatientChoice {
  id: string;
  /** The patient's name; absent when the record has none or the user may not be shown it. */
  name?: string;
  birthDate?: string;
  /** The user may choose the patient but not be shown their name or birth date (their grants do not cover the Patient record). */
  withheld?: boolean;
}

/**
 * The patients a signed-in user may pick for a standalone launch (`launch/patient`), by the FHIR
 * facade's own rules (src/consent/patient-picker.ts). `user` is the user as the facade will see
 * them with this authorization's token: their fhirUser, the app, the requested scopes, no patient.
 */
export interface PatientDirectory {
  /** Patients the user may see whose name or id matches `query` (what they typed; empty: any), a page at most. */
  search(user: AccessContext, query: string): Promise<PatientChoice[]>;
  /** Whether the user may see this patient: the server-side check of a choice. */
  mayChoose(user: AccessContext, patientId: string): Promise<boolean>;
  /**
   * The patient in context as the approval page names them to the user: as the picker would list
   * them (name and birth date, or by id when the user may not be shown them); undefined when the
   * patient is not one the user may see, or not found.
   */
  describe(user: AccessContext, patientId: string): Promise<PatientChoice | undefined>;
}

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

/**
 * Called when a grant's tokens are revoked at the revocation endpoint (a sign-out), with its grant
 * id: what was kept for that sign-in (the patient's key unlock) ends with it. A failing hook does not
 * fail the revocation.
 */
export type GrantRevokedHook = (gid: string) => Promise<void>;

export interface SmartContext {
  store: SmartStore;
  kv: KeyValueStore;
  keys: SigningKeys;
  tokens: TokenService;
  limiter: RateLimiter;
  urls: SmartUrls;
  logger: Logger;
  now: () => number;
  /** Without one, the picker asks for a patient ID and takes any well-formed one (the facade still decides every read). */
  patients?: PatientDirectory;
  /** Whether the server holds `type/id` (POST /smart/launch refuses a patient or practitioner it does not). */
  resourceExists?: (type: string, id: string) => Promise<boolean>;
  loginHooks: PatientLoginHook[];
  revokeHooks: GrantRevokedHook[];
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
