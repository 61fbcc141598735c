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
  maxWorkers: 2,
  // Each test file's ESM module graph stays in its worker's heap: by the end of a full run a worker
  // held 2–2.9 GB, and tearing that down at exit took longer than the 500 ms Jest waits, so Jest
  // killed it and warned "a worker process has failed to exit gracefully" (seen with an exit probe:
  // the workers reached 'exit' at once, with only their stdio pipes open). A worker past 1 GB after a
  // test file is replaced by a fresh one.
  workerIdleMemoryLimit: '1GB',
};
