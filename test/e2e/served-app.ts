/**
 * The app served over HTTP on 127.0.0.1 for browser tests: auth on, its base URL (port included)
 * known before it listens, since the SMART apps and the OAuth redirects name it.
 */
import { createServer } from 'node:http';
import { startTestApp, type TestApp } from '../support/app.js';
import { freePort } from './browser.js';

export interface ServedApp {
  t: TestApp;
  base: string;
  close(): Promise<void>;
}

export async function serveTestApp(): Promise<ServedApp> {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const t = await startTestApp({ GLUCOGUARD_AUTH: 'on', GLUCOGUARD_BASE_URL: base, PORT: String(port) });
  const server = createServer(t.app.http);
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return {
    t,
    base,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await t.close();
    },
  };
}
