/**
 * What the facade knows about who is asking, worked out once per request by the auth layer
 * (src/smart/) and handed down to every handler. The FHIR router never looks at tokens itself.
 */
export interface AccessContext {
  /** 'open' only when GLUCOGUARD_AUTH=off (local experiments); 'token' for a verified access token. */
  kind: 'open' | 'token';
  /** Token subject (user id or client id). */
  subject?: string;
  clientId?: string;
  /** `Patient/ID` or `Practitioner/ID` of the user, when the token has one. */
  fhirUser?: string;
  /** Launch / standalone patient context (bare id), confining `patient/` scopes. */
  patient?: string;
  /** Granted scopes, as issued. */
  scopes: string[];
}

/** Access with no restriction, used when GLUCOGUARD_AUTH=off and by in-process tools (CLI, benchmarks). */
export const OPEN_ACCESS: AccessContext = Object.freeze({ kind: 'open', scopes: [] }) as AccessContext;
