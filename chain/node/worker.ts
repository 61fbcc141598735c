/**
 * Worker-thread entry of the embedded chain (see `startEmbeddedChainThread` in index.ts): starts the
 * node with the options it is given, answers `ready` with what the proxy needs to reach it (or
 * `failed`), forwards its log lines, and closes the node cleanly when told to, then ends.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { startEmbeddedChain, type EmbeddedChain, type EmbeddedChainOptions } from './index.js';

export type FromChainWorker =
  | { type: 'ready'; info: Omit<EmbeddedChain, 'close'> }
  | { type: 'failed'; message: string; code?: string }
  | { type: 'log'; level: 'info' | 'warn' | 'error'; message: string };

const port = parentPort!;
const post = (message: FromChainWorker): void => port.postMessage(message);
const logger = {
  info: (message: string) => post({ type: 'log', level: 'info', message }),
  warn: (message: string) => post({ type: 'log', level: 'warn', message }),
  error: (message: string) => post({ type: 'log', level: 'error', message }),
};

try {
  const chain = await startEmbeddedChain({ ...(workerData as Omit<EmbeddedChainOptions, 'logger'>), logger });
  const { close, ...info } = chain;
  port.on('message', (message: unknown) => {
    if (message !== 'close') return;
    // the parent waits for this thread to exit, which it does once the port is closed
    void close().catch((err: unknown) => logger.error(`chain: closing failed: ${(err as Error).message}`)).finally(() => port.close());
  });
  post({ type: 'ready', info });
} catch (err) {
  post({ type: 'failed', message: (err as Error).message, code: (err as { code?: string }).code });
  port.close();
}
