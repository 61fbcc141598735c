/**
 * Structured logging (pino). Never log resource bodies, tokens or query strings that may carry
 * health data: request logs carry method, route template, status, duration and request id only.
 */
import { pino, type Logger } from 'pino';

export type { Logger };

/** Creates the process logger. Redacts auth headers and anything named like a secret defensively. */
export function createLogger(level: string): Logger {
  return pino({
    level,
    base: { service: 'glucoguard' },
    redact: {
      paths: ['req.headers.authorization', 'headers.authorization', '*.password', '*.token', '*.access_token',
        '*.refresh_token', '*.client_secret', '*.secret'],
      censor: '[redacted]',
    },
  });
}
