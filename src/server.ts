/**
 * The HTTP server `glucoguard serve` listens with, around the express app. Node allows 16 KiB of
 * request line and headers by default; a FHIR search can be longer than that — the `next` link of a
 * POST `_search` over a few thousand ids carries them in its page token — so this server allows
 * MAX_HEADER_BYTES, and a request beyond that (or one Node cannot parse) gets an OperationOutcome
 * saying what to do, where Node would answer an empty 431 or 400.
 */
import { createServer, type RequestListener, type Server } from 'node:http';
import type { Duplex } from 'node:stream';

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
