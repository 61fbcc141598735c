/**
 * The HTTP server `glucoguard serve` listens with, around the express app. Node allows 16 KiB of
 * request line and headers by default; a FHIR search can be longer than that — the `next` link of a
 * POST `_search` over a few thousand ids carries them in its page token — so this server allows
 * MAX_HEADER_BYTES, and a request beyond that (or one Node cannot parse) gets an OperationOutcome
 * saying what to do, where Node would answer an empty 431 or 400. `shutDown` is how `serve` stops
 * on SIGTERM/SIGINT.
 */
import { createServer, type RequestListener, type Server } from 'node:http';
import type { Duplex } from 'node:stream';
import type { App } from './app.js';

/** Request line plus headers (a search URL of ~60 kB). */
export const MAX_HEADER_BYTES = 64 * 1024;

export function createHttpServer(handler: RequestListener): Server {
  const server = createServer({ maxHeaderSize: MAX_HEADER_BYTES }, handler);
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    if (!socket.writable) {
      socket.destroy();
      return;
    }
    const tooLarge = err.code === 'HPE_HEADER_OVERFLOW';
    const [status, text, diagnostics] = tooLarge
      ? [431, 'Request Header Fields Too Large', `The request line and headers are longer than ${MAX_HEADER_BYTES / 1024} KiB; send a long search as POST [base]/[type]/_search with the parameters in the body (application/x-www-form-urlencoded)`]
      : [400, 'Bad Request', 'The HTTP request could not be parsed'];
    const body = JSON.stringify({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: tooLarge ? 'too-long' : 'structure', diagnostics }] });
    socket.end(`HTTP/1.1 ${status} ${text}\r\nContent-Type: application/fhir+json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
  });
  return server;
}

/** How long a stopping server waits for in-flight requests before it exits anyway. */
export const SHUTDOWN_GRACE_MS = 10_000;

/**
 * The graceful shutdown `serve` runs on SIGTERM/SIGINT: no new connections; every answer from now
 * on closes its connection (a kept-alive one would otherwise hold the close for its idle timeout);
 * CGM imports stop at their next chunk boundary with a 503 saying how many readings were stored
 * (CgmIngestService.stop), a new one is refused the same way; other in-flight requests finish;
 * then the app closes (access log flushed, anchorer stopped with its queue on disk, stores closed).
 * Resolves with the exit code: 0 when all that ended within `graceMs`, else 1 (the process exits
 * anyway: what was not answered was not acknowledged).
 */
export async function shutDown(server: Server, app: Pick<App, 'cgm' | 'close' | 'logger'>,
  options: { signal?: string; graceMs?: number } = {}): Promise<0 | 1> {
  const { logger } = app;
  const graceMs = options.graceMs ?? SHUTDOWN_GRACE_MS;
  logger.info({ signal: options.signal }, 'shutting down: no new connections, finishing in-flight requests, CGM imports stop at their next chunk boundary');
  server.prependListener('request', (_req, res) => res.setHeader('Connection', 'close'));
  server.keepAliveTimeout = 1; // a connection an in-flight answer leaves idle closes at once
  let timer: NodeJS.Timeout | undefined;
  const graceOver = new Promise<1>((resolve) => {
    timer = setTimeout(() => {
      logger.error(`in-flight requests did not finish within ${graceMs / 1000} s; exiting`);
      resolve(1);
    }, graceMs);
  });
  const stopped = (async (): Promise<0 | 1> => {
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeIdleConnections();
    const interrupted = await app.cgm.ingest.stop('The server is stopping');
    for (const stored of interrupted) {
      logger.info({ stored }, stored
        ? `a CGM import was stopped by the shutdown after ${stored} readings (kept); its client was told to send the file again`
        : 'a CGM import was stopped by the shutdown before it stored anything; its client was told to send the file again');
    }
    await closed;
    try {
      await app.close();
    } catch (err) {
      logger.error({ err }, 'error while closing');
      return 1;
    }
    logger.info('stopped cleanly');
    return 0;
  })();
  try {
    return await Promise.race([stopped, graceOver]);
  } finally {
    clearTimeout(timer);
  }
}
