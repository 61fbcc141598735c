/**
 * The one way a `glucoguard` subcommand uses the app: open it, run the command, close it however
 * the command ended (so a failing command still flushes the access log and stops the chain node).
 */
import type { App } from './app.js';

/**
 * Opens the app for one command. Only a command that sets an installation up (`setUp`: serve,
 * patients create, ingest, consent grant, …) may create one in an empty data directory; any other
 * refuses a directory that holds none, so a mistyped GLUCOGUARD_DATA_DIR is said, not answered
 * with "not found" from a new empty installation. `withoutData`: the error a command that sets up
 * answers when its input names what only an installation holds (a stored Patient, a registered
 * grantee) and the directory holds none (and no upstream repository does): thrown before anything
 * is created, where the installation would be set up only to refuse the same input.
 */
export type OpenApp = (options?: { setUp?: boolean; withoutData?: Error }) => Promise<App>;

/**
 * A command given wrongly (a missing confirmation, a missing, unknown or conflicting option, a bad
 * option value, no installation where one must be): the CLI exits 2, like a configuration error,
 * whichever command file throws it (commander's own InvalidArgumentError is treated alike).
 */
export class UsageError extends Error {
  readonly code = 'ERR_USAGE';
}

export async function withApp<T>(open: () => Promise<App>, command: (app: App) => Promise<T>): Promise<T> {
  const app = await open();
  try {
    return await command(app);
  } finally {
    await app.close();
  }
}
