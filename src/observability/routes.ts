/**
 * Route templates for logs and metric labels: the shape of a path without ids, patient names or
 * anything else a client put in it. The set of templates is bounded (known FHIR types, registered
 * operations, express route patterns), so hostile paths cannot grow metric cardinality and a log
 * line never carries an identifier.
 */
import { isSupportedType } from '../fhir/resource-types.js';

const FHIR_KEYWORDS = new Set(['metadata', '_history', '_search', '.well-known']);

/**
 * Template of a path below `/fhir`: `/fhir/Observation/:id/_history/:vid`, `/fhir/Patient/:id/$everything`.
 * Unknown types become `:type`, unknown operations `$:op`, and anything deeper than a vread `:rest`.
 */
export function fhirRouteTemplate(pathBelowFhir: string, isOperation: (name: string) => boolean = () => false): string {
  const parts = pathBelowFhir.split('/').filter((p) => p.length > 0);
  const out: string[] = ['/fhir'];
  const op = (seg: string) => (isOperation(seg.slice(1)) ? seg : '$:op');
  for (let i = 0; i < parts.length; i++) {
    const seg = parts[i]!;
    if (i >= 4) {
      out.push(':rest');
      break;
    }
    if (seg.startsWith('$')) out.push(op(seg));
    else if (i === 0) out.push(isSupportedType(seg) || FHIR_KEYWORDS.has(seg) ? seg : ':type');
    else if (i === 1) out.push(seg === '_history' || seg === '_search' ? seg : ':id');
    else if (i === 2) out.push(seg === '_history' ? seg : ':segment');
    else out.push(':vid');
  }
  return out.join('/');
}

/**
 * The label of a finished request: the express route pattern that served it (SMART, health
 * endpoints), the FHIR template below `/fhir`, or `unmatched` for everything else (404s, probes).
 */
export function routeLabel(input: { path: string; baseUrl: string; routePath?: unknown }, isOperation?: (name: string) => boolean): string {
  if (typeof input.routePath === 'string') return `${input.baseUrl}${input.routePath}` || '/';
  if (Array.isArray(input.routePath)) return `${input.baseUrl}${input.routePath.filter((p) => typeof p === 'string').join('|')}`;
  if (input.path === '/fhir' || input.path.startsWith('/fhir/')) return fhirRouteTemplate(input.path.slice('/fhir'.length), isOperation);
  return 'unmatched';
}
