/** A test app whose logger writes every line (level trace) into memory, for assertions on logs. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createApp, type App } from '../../../src/app.js';
import { loadConfig } from '../../../src/config.js';
import { createLogger } from '../../../src/log.js';

export interface LoggedApp {
  app: App;
  /** Every line the logger wrote, as raw JSON text. */
  lines: string[];
  records(): Record<string, unknown>[];
  close(): Promise<void>;
}

export async function startLoggedApp(env: Record<string, string> = {}): Promise<LoggedApp> {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'gg-obs-'));
  const lines: string[] = [];
  const logger = createLogger('trace', { write: (line: string) => void lines.push(line) });
  const app = await createApp(loadConfig({
    GLUCOGUARD_DATA_DIR: dataDir,
    GLUCOGUARD_BASE_URL: 'http://127.0.0.1:8080',
    GLUCOGUARD_AUTH: 'off',
    CHAIN_BLOCK_PERIOD: '0',
    CHAIN_PORT: '0',
    ...env,
  }), { logger });
  return {
    app,
    lines,
    records: () => lines.map((l) => JSON.parse(l) as Record<string, unknown>),
    async close() {
      await app.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
