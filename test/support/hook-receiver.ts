/**
 * A rest-hook endpoint for subscription tests: a local HTTP server that keeps every notification
 * Bundle it is sent and the headers it came with, and answers 503 while `down` or for the next
 * `failNext` deliveries (a subscriber that is failing).
 */
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Bundle, Parameters } from '@medplum/fhirtypes';

export interface Receiver {
  url: string;
  bundles: Bundle[];
  headers: IncomingHttpHeaders[];
  /** Answers 503 to everything while true. */
  down: boolean;
  /** Answers 503 to this many more deliveries. */
  failNext: number;
  server: Server;
}

export async function receiver(): Promise<Receiver> {
  const r = { bundles: [] as Bundle[], headers: [] as IncomingHttpHeaders[], down: false, failNext: 0 } as Receiver;
  r.server = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => { body += c.toString(); });
    req.on('end', () => {
      if (r.down || r.failNext > 0) {
        if (r.failNext > 0) r.failNext--;
        res.writeHead(503).end();
        return;
      }
      r.headers.push(req.headers);
      r.bundles.push(JSON.parse(body) as Bundle);
      res.writeHead(200).end();
    });
  });
  await new Promise<void>((resolve) => r.server.listen(0, '127.0.0.1', resolve));
  r.url = `http://127.0.0.1:${(r.server.address() as AddressInfo).port}/hook`;
  return r;
}

/** The SubscriptionStatus of a notification Bundle, one of its parameters, and its type. */
export const statusOf = (b: Bundle): Parameters => b.entry![0]!.resource as Parameters;
export const param = (p: Parameters, name: string) => p.parameter!.find((x) => x.name === name);
export const typeOf = (b: Bundle): string | undefined => param(statusOf(b), 'type')?.valueCode;
