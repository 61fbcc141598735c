/**
 * Structured logging (pino). Never log resource bodies, tokens or query strings that may carry
 * health data: request logs carry method, route template, status, duration and request id only.
 */
import { pino, stdSerializers, type DestinationStream, type Logger } from 'pino';

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
    serializers: { err: scrubbedError },
  }, destination);
}

/**
 * V8 quotes the start of the input in JSON.parse errors (`Unexpected token 'A', "Ana Rivera"... is
 * not valid JSON`); a stored body or upstream answer that fails to parse would put health data in
 * the log. The excerpt is dropped from message and stack; everything else of the error is kept.
 */
function scrubbedError(err: unknown): unknown {
  const scrub = (v: unknown) => (typeof v === 'string' ? v.replace(/"(?:[^"\\]|\\.)*"(?:\.\.\.)? is not valid JSON/g, '<input> is not valid JSON') : v);
  // Callers also log `{ err: message }` strings; anything not error-like passes through (scrubbed if text).
  if (typeof err !== 'object' || err === null) return scrub(err);
  const serialized = stdSerializers.err(err as Error) as unknown;
  if (typeof serialized !== 'object' || serialized === null) return serialized;
  // A copy: a plain object passes through the serializer as itself, and must not be changed.
  const out = { ...(serialized as Record<string, unknown>) };
  if (typeof out.message === 'string') out.message = scrub(out.message);
  if (typeof out.stack === 'string') out.stack = scrub(out.stack);
  return out;
}
