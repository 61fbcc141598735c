/** Observability and edge hygiene: request logs and ids, metrics, health/readiness, security headers. */
export { metrics, registry, type Metrics } from './metrics.js';
export { Readiness, anchoringCheck, chainCheck, kvCheck, repositoryCheck, type AnchoringState, type ChainHead, type CheckResult, type ReadinessCheck, type ReadinessReport } from './readiness.js';
export { requestObservability, type RequestObservabilityOptions } from './request.js';
export { observabilityRouter } from './router.js';
export { securityHeaders } from './security-headers.js';
export { finalErrorHandler, notFoundHandler } from './fallback.js';
export { fhirRouteTemplate, routeLabel } from './routes.js';
