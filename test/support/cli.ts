/**
 * Runs `glucoguard` subcommands in-process against a running test app: registers a command group
 * on a fresh commander program (errors thrown, not process.exit), hands it the app (whose close()
 * the command must not reach), and answers what the command printed with console.log.
 */
import { jest } from '@jest/globals';
import { Command } from 'commander';
import type { App } from '../../src/app.js';

export type RegisterCommands = (program: Command, open: () => Promise<App>) => void;

export function inProcessCli(register: RegisterCommands, app: () => App, options: { quietErrors?: boolean } = {}) {
  return async (...args: string[]): Promise<string> => {
    const program = new Command().exitOverride();
    register(program, async () => ({ ...app(), close: async () => undefined }));
    const lines: string[] = [];
    const log = jest.spyOn(console, 'log').mockImplementation((...a: unknown[]) => { lines.push(a.join(' ')); });
    const err = options.quietErrors ? jest.spyOn(console, 'error').mockImplementation(() => undefined) : undefined;
    try {
      await program.parseAsync(['node', 'glucoguard', ...args]);
    } finally {
      log.mockRestore();
      err?.mockRestore();
    }
    return lines.join('\n');
  };
}
