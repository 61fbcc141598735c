/**
 * The repositories the facade tests run against, for `describe.each`: the embedded one, and the
 * upstream adapter in front of a real FHIR server (@medplum/fhir-router on port 0).
 */
import { startUpstreamFhirServer } from './upstream-server.js';

/** What a test app needs of a backend: env for startTestApp, and how to stop it. */
export interface Backend {
  env: Record<string, string>;
  close(): Promise<void>;
}

export const REPOSITORY_ADAPTERS: [string, () => Promise<Backend>][] = [
  ['embedded', async () => ({ env: {}, close: async () => undefined })],
  ['upstream', async () => {
    const upstream = await startUpstreamFhirServer();
    return { env: { UPSTREAM_FHIR_URL: upstream.url }, close: () => upstream.close() };
  }],
];
