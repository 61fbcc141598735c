/**
 * Structured logging (pino). Never log resource bodies, tokens or query strings that may carry
 * health data: request logs carry method, route template, status, duration and request id only.
 */
import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger };

/**
 * Creates the process logger (stdout, or `destination` — tests capture lines with it). Redacts auth
 * headers and anything named like a secret defensively, at the top level and one level down.
 */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  const secrets = ['password', 'token', 'access_token', 'refresh_token', 'id_token', 'client_secret', 'client_assertion',
    'code_verifier', 'secret', 'authorization', 'cookie'];
  return pino({
    level,
    base: { service: 'glucoguard' },
    redact: {
      paths: ['req.headers.authorization', 'req.headers.cookie', 'headers.authorization', 'headers.cookie',
        ...secrets, ...secrets.map((k) => `*.${k}`)],
      censor: '[redacted]',
    },
  }, destination);
}
