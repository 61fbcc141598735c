/**
 * Security headers (helmet) on every response. The defaults are tightened or relaxed only where a
 * SMART-on-FHIR server needs it:
 * - `Cross-Origin-Resource-Policy: cross-origin`: the FHIR API, JWKS and discovery documents are
 *   meant to be fetched by apps on other origins.
 * - no `Cross-Origin-Opener-Policy`: SMART apps may open the authorize page in a popup and need
 *   `window.opener` after the redirect back.
 * - CSP without `form-action` and `upgrade-insecure-requests`: the approval form's answer is a
 *   redirect to the app's own origin (browsers apply form-action to that redirect), and development
 *   runs on plain http. The authorization pages (src/smart/pages.ts) send their own stricter CSP
 *   (`default-src 'none'; style-src 'unsafe-inline'`), which replaces this one.
 */
import helmet from 'helmet';

export function securityHeaders() {
  return helmet({
    contentSecurityPolicy: {
      useDefaults: false,
      directives: {
        defaultSrc: ["'self'"],
        baseUri: ["'self'"],
        fontSrc: ["'self'", 'data:'],
        imgSrc: ["'self'", 'data:'],
        objectSrc: ["'none'"],
        scriptSrc: ["'self'"],
        scriptSrcAttr: ["'none'"],
        styleSrc: ["'self'", "'unsafe-inline'"],
        frameAncestors: ["'none'"],
      },
    },
    crossOriginResourcePolicy: { policy: 'cross-origin' },
    crossOriginOpenerPolicy: false,
    frameguard: { action: 'deny' },
    referrerPolicy: { policy: 'no-referrer' },
  });
}
