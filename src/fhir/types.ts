/**
 * The FHIR facade's own request/response shapes: plain objects, no express. The HTTP adapter
 * (src/fhir/http.ts) turns an express request into a FhirRequest and a FhirResponse back into HTTP.
 */
import type { Resource } from '@medplum/fhirtypes';
import type { AccessContext } from './access.js';

export type HttpMethod = 'GET' | 'POST' | 'PUT' | 'DELETE' | 'PATCH' | 'HEAD';

export interface FhirRequest {
  method: HttpMethod;
  /** Path below the FHIR base without leading slash: `Observation/1/_history/2`, `` for the base. */
  path: string;
  /** Query parameters; repeated parameters are arrays. */
  query: Record<string, string | string[]>;
  /** Request headers, lower-case names. */
  headers: Record<string, string | undefined>;
  /** Parsed JSON body (create, update, transaction) or the form fields of POST `_search`. */
  body?: unknown;
  /** Who is asking, worked out once by the auth layer. */
  access: AccessContext;
}

export interface FhirResponse {
  status: number;
  /** A FHIR resource (often a Bundle or OperationOutcome) or, for custom operations, plain JSON. */
  body?: Resource | Record<string, unknown>;
  headers?: Record<string, string>;
}
