/** Builds a GlucoGuard app for tests: temp data dir, silent logger, optional upstream. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createApp, type App } from '../../src/app.js';
import { loadConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';

export interface TestApp {
  app: App;
  dataDir: string;
  /** Closes the app and builds a new one on the same data directory (a restart). */
  restart(): Promise<App>;
  close(): Promise<void>;
}

export function tempDir(prefix = 'gg-test-'): string {
  return mkdtempSync(path.join(tmpdir(), prefix));
}

export async function startTestApp(env: Record<string, string> = {}, dataDir = tempDir()): Promise<TestApp> {
  const build = () => createApp(loadConfig({
    GLUCOGUARD_DATA_DIR: dataDir,
    GLUCOGUARD_BASE_URL: 'http://127.0.0.1:8080',
    GLUCOGUARD_AUTH: 'off',
    LOG_LEVEL: 'silent',
    CHAIN_BLOCK_PERIOD: '0',
    CHAIN_PORT: '0',
    ...env,
  }), { logger: createLogger('silent') });
  const state = { app: await build() };
  return {
    get app() {
      return state.app;
    },
    dataDir,
    async restart() {
      await state.app.close();
      state.app = await build();
      return state.app;
    },
    async close() {
      await state.app.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
