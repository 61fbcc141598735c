/** Jest runs the TypeScript sources directly as ESM through SWC (no build step needed for tests). */
export default {
  testEnvironment: 'node',
  extensionsToTreatAsEsm: ['.ts'],
  transform: {
    '^.+\\.ts$': ['@swc/jest', {
      jsc: { parser: { syntax: 'typescript' }, target: 'es2022' },
      module: { type: 'es6' },
    }],
  },
  moduleNameMapper: { '^(\\.{1,2}/.*)\\.js$': '$1' },
  testMatch: ['<rootDir>/test/**/*.test.ts'],
  testTimeout: 30000,
  // dist/ built once before the workers start (test/support/global-build.mjs says why)
  globalSetup: '<rootDir>/test/support/global-build.mjs',
  // Two workers on two cores. Three made a fresh-clone .ci/run faster (16m34s against 18m20s with
  // two, Jest 872 s against 956 s; session 27), but in a second run with three a health check of
  // test/integration/cgm-ingest-liveness.test.ts met a keep-alive connection the server had just
  // closed ("other side closed"), probably an import chunk held past the 5 s keep-alive (not verified).
  maxWorkers: 2,
  // Each test file's ESM module graph stays in its worker's heap: by the end of a full run a worker
  // held 2–2.9 GB, and tearing that down at exit took longer than the 500 ms Jest waits, so Jest
  // killed it and warned "a worker process has failed to exit gracefully" (seen with an exit probe:
  // the workers reached 'exit' at once, with only their stdio pipes open). So workers are replaced.
  // With a size limit ('1GB') Jest asks the worker its memory after a file while the next file is
  // already sent, and the restart that follows could lose that file: a fresh-clone run hung for good
  // on test/integration/smart-cli.test.ts (session 21; jestjs/jest#13106 describes the same race).
  // 0 restarts the worker after every file before the next is sent (jest-worker's own special case).
  workerIdleMemoryLimit: 0,
};
