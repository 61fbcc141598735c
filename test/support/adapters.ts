/**
 * The repositories the facade tests run against, for `describe.each`: the embedded one, and the
 * upstream adapter in front of a real FHIR server (@medplum/fhir-router on port 0).
 *
 * `GG_TEST_UPSTREAM_PAGING=opaque` runs the upstream adapter against a server that pages only by its
 * own opaque `next` links and ignores `_offset` (as Epic and Oracle Health do); by default the
 * server honours `_offset` as well.
 */
import { isGlucoGuardError, type GlucoGuardError } from '../../src/errors.js';
import { startUpstreamFhirServer, type UpstreamServerOptions } from './upstream-server.js';

/** What a test app needs of a backend: env for startTestApp, and how to stop it. */
export interface Backend {
  env: Record<string, string>;
  close(): Promise<void>;
}

/** An upstream FHIR server as a backend (UPSTREAM_FHIR_URL), with the given server options. */
export async function upstreamBackend(options: UpstreamServerOptions = {}): Promise<Backend> {
  const upstream = await startUpstreamFhirServer(options);
  return { env: { UPSTREAM_FHIR_URL: upstream.url }, close: () => upstream.close() };
}

export const REPOSITORY_ADAPTERS: [string, () => Promise<Backend>][] = [
  ['embedded', async () => ({ env: {}, close: async () => undefined })],
  ['upstream', () => upstreamBackend({ opaquePaging: process.env.GG_TEST_UPSTREAM_PAGING === 'opaque' })],
];

/** The GlucoGuardError a promise rejects with (an adapter's answer to an upstream failure); fails the test otherwise. */
export async function failure(promise: Promise<unknown>): Promise<GlucoGuardError> {
  try {
    await promise;
  } catch (err) {
    if (isGlucoGuardError(err)) return err;
    throw err;
  }
  throw new Error('expected a GlucoGuardError');
}
