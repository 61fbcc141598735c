/**
 * Route templates for logs and metric labels: no ids, names or other client text, and a bounded
 * set of values whatever path a client sends.
 */
import { describe, expect, test } from '@jest/globals';
import fc from 'fast-check';
import { SUPPORTED_RESOURCE_TYPES } from '../../../src/fhir/resource-types.js';
import { fhirRouteTemplate, routeLabel } from '../../../src/observability/routes.js';

const isOp = (name: string) => ['cgm-summary', 'everything'].includes(name);

describe('FHIR route templates', () => {
  test.each([
    ['', '/fhir'],
    ['/metadata', '/fhir/metadata'],
    ['/Patient', '/fhir/Patient'],
    ['/Patient/abc-123', '/fhir/Patient/:id'],
    ['/Observation/abc/_history', '/fhir/Observation/:id/_history'],
    ['/Observation/abc/_history/7', '/fhir/Observation/:id/_history/:vid'],
    ['/Patient/abc/$everything', '/fhir/Patient/:id/$everything'],
    ['/Observation/$cgm-summary', '/fhir/Observation/$cgm-summary'],
    ['/Patient/abc/$drop-tables', '/fhir/Patient/:id/$:op'],
    ['/AnaRivera/1', '/fhir/:type/:id'],
    ['/Patient/_search', '/fhir/Patient/_search'],
    ['/Patient/a/b/c/d/e/f', '/fhir/Patient/:id/:segment/:vid/:rest'],
  ])('%s → %s', (path, template) => {
    expect(fhirRouteTemplate(path, isOp)).toBe(template);
  });

  test('any path maps to segments from a fixed vocabulary (bounded metric labels)', () => {
    const allowed = new Set(['fhir', ...SUPPORTED_RESOURCE_TYPES, 'metadata', '_history', '_search', '.well-known', ':type', ':id', ':segment', ':vid', ':rest',
      '$:op', '$cgm-summary', '$everything']);
    fc.assert(fc.property(fc.array(fc.oneof(fc.string({ maxLength: 8 }), fc.constantFrom('Patient', '$everything', '_history', '$x')), { maxLength: 8 }), (segs) => {
      const template = fhirRouteTemplate(`/${segs.join('/')}`, isOp);
      for (const seg of template.split('/').filter(Boolean)) expect(allowed.has(seg)).toBe(true);
      expect(template.split('/').filter(Boolean).length).toBeLessThanOrEqual(6);
    }), { numRuns: 2000 });
  });
});

describe('route labels', () => {
  test('an express route pattern wins; /fhir paths get the FHIR template; anything else is unmatched', () => {
    expect(routeLabel({ path: '/oauth/token', baseUrl: '', routePath: '/oauth/token' })).toBe('/oauth/token');
    expect(routeLabel({ path: '/cgm/ingest', baseUrl: '/cgm', routePath: '/ingest' })).toBe('/cgm/ingest');
    expect(routeLabel({ path: '/fhir/Patient/x', baseUrl: '/fhir', routePath: /.*/ })).toBe('/fhir/Patient/:id');
    expect(routeLabel({ path: '/wp-login.php', baseUrl: '' })).toBe('unmatched');
    expect(routeLabel({ path: '/fhirx/Patient', baseUrl: '' })).toBe('unmatched');
  });
});
