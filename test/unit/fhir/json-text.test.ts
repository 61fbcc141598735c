/**
 * src/fhir/json-text.ts writes an answer's JSON in pieces, reusing the text kept with immutable
 * resources (the embedded repository's cached versions) and writing the router's searchset entries
 * from a template, a large Bundle straight into bytes: whatever the shape of the body, the pieces
 * together must be exactly `JSON.stringify` of it, and as many bytes as it has in UTF-8.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { parseSearchRequest } from '@medplum/core';
import type { Observation, Resource } from '@medplum/fhirtypes';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { byteLengthOf, jsonBody } from '../../../src/fhir/json-text.js';
import { EmbeddedRepository } from '../../../src/repository/embedded/index.js';
import { isImmutable } from '../../../src/repository/port.js';

let dataDir: string;
let repo: EmbeddedRepository;
let cached: Resource[];
let fresh: Resource[];

beforeAll(async () => {
  dataDir = mkdtempSync(path.join(tmpdir(), 'gg-json-text-'));
  repo = await EmbeddedRepository.open({ dataDir });
  const readings: Observation[] = Array.from({ length: 40 }, (_, i) => ({
    resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }], text: i % 7 ? 'glucose' : 'glucose – “CGM” ☃' },
    subject: { reference: 'Patient/p1' }, effectiveDateTime: new Date(Date.parse('2026-03-01T00:00:00Z') + i * 300_000).toISOString(),
    valueQuantity: { value: 100 + i / 3, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
  }));
  await repo.createMany(readings);
  const query = parseSearchRequest('Observation?patient=Patient/p1&_count=100');
  fresh = (await repo.search(query)).resources;
  cached = (await repo.search(query)).resources; // the second read keeps them (frozen, immutable)
  expect(cached.every((r) => isImmutable(r))).toBe(true);
  expect(fresh.some((r) => isImmutable(r))).toBe(false);
});

afterAll(async () => {
  await repo.close();
  rmSync(dataDir, { recursive: true, force: true });
});

const base = 'http://localhost:8080/fhir';

function bundleOf(entry: unknown[]): unknown {
  return { resourceType: 'Bundle', type: 'searchset', link: [{ relation: 'self', url: `${base}/Observation?patient=p1` }], entry };
}

function expectSameText(body: unknown): void {
  const written = jsonBody(body);
  expect(written.toString()).toBe(JSON.stringify(body));
  expect(byteLengthOf(written)).toBe(Buffer.byteLength(JSON.stringify(body)));
}

class ModeWithToJson {
  mode = 'match';
  toJSON(): unknown {
    return { mode: 'rewritten' };
  }
}

describe('jsonBody', () => {
  it('writes the router\'s searchset entries as JSON.stringify does, for cached and fresh resources', () => {
    for (const resources of [cached, fresh]) {
      expectSameText(bundleOf(resources.map((resource, i) => ({
        fullUrl: `${base}/Observation/${resource.id}`, resource, search: { mode: i % 3 === 0 ? 'include' : 'match' },
      }))));
    }
  });

  it('writes entries of any other shape as JSON.stringify does', () => {
    const shapes = (resource: Resource, i: number): unknown => {
      const fullUrl = `${base}/Observation/${resource.id}`;
      switch (i % 15) {
        case 13: return { fullUrl, resource, search: new ModeWithToJson() };
        case 0: return { fullUrl, resource, search: { mode: 'match' }, extra: 1 };
        case 1: return { resource, fullUrl, search: { mode: 'match' } };
        case 2: return { fullUrl, resource, search: { mode: 'match', score: 0.5 } };
        case 3: return { fullUrl, resource, search: { mode: 'constructor' } };
        case 4: return { fullUrl, resource, search: { mode: '__proto__' } };
        case 5: return { fullUrl: 7, resource, search: { mode: 'match' } };
        case 6: return { fullUrl: undefined, resource, search: { mode: 'match' } };
        case 7: return { fullUrl, resource, search: null };
        case 8: return { fullUrl, resource, search: ['match'] };
        case 9: return { fullUrl, resource, search: { mode: 'match', toJSON: () => ({ mode: 'other' }) } };
        case 10: return Object.assign(Object.create({ inherited: true }), { fullUrl, resource, search: { mode: 'match' } });
        case 11: return { fullUrl, resource, search: Object.assign(Object.create({ inherited: 'x' }), { mode: 'match' }) };
        case 12: return { fullUrl, resource, search: { mode: 'outcome' }, toJSON: () => 'replaced' };
        default: return { fullUrl: `${fullUrl}"\u2028`, resource, search: { mode: undefined } };
      }
    };
    expectSameText(bundleOf(cached.map(shapes)));
    expectSameText(bundleOf(fresh.map(shapes)));
  });
});
