/** The upstream adapter of the Repository port: any FHIR R4 server at UPSTREAM_FHIR_URL. */
export { UpstreamRepository, type UpstreamRepositoryOptions } from './repository.js';
export { forwardableHeaders, type HeaderInput } from './headers.js';
export { rewriteBaseUrls } from './rewrite.js';
export { loadSigningKey } from './auth.js';
