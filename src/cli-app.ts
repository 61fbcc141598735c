/**
 * The one way a `glucoguard` subcommand uses the app: open it, run the command, close it however
 * the command ended (so a failing command still flushes the access log and stops the chain node).
 */
import type { App } from './app.js';

export async function withApp<T>(open: () => Promise<App>, command: (app: App) => Promise<T>): Promise<T> {
  const app = await open();
  try {
    return await command(app);
  } finally {
    await app.close();
  }
}
