/**
 * One HTTP exchange with the upstream side (FHIR server or its token endpoint) over Node's global
 * fetch, bounded by the configured timeout. Network failures become ERR_UPSTREAM (502) and timeouts
 * ERR_UPSTREAM_TIMEOUT (504); the client-facing errors never carry upstream URLs, bodies or stacks,
 * and the server-side log gets a safe summary (what, method, status, error code, duration).
 * Bodies are read as they arrive and the exchange is aborted once one grows past the cap
 * (UPSTREAM_MAX_BODY_BYTES): an upstream, or anything posing as it, cannot fill the proxy's memory.
 */
import { isGlucoGuardError, upstreamError, upstreamTimeout } from '../../errors.js';
import type { Logger } from '../../log.js';

export type UpstreamLogger = Pick<Logger, 'debug' | 'info' | 'warn' | 'error'>;

export interface TransportRequest {
  url: string;
  method: string;
  headers: Record<string, string>;
  body?: string;
  /** Safe label for logs: an interaction and resource type, or 'token'. Never ids or query strings. */
  what: string;
}

export interface TransportResponse {
  status: number;
  headers: Headers;
  text: string;
}

/** Default cap on one upstream body (UpstreamConfig.maxBodyBytes): 64 MiB. */
export const DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024;

export class UpstreamTransport {
  constructor(
    private readonly fetchImpl: typeof fetch,
    private readonly timeoutMs: number,
    readonly logger?: UpstreamLogger,
    private readonly maxBodyBytes = DEFAULT_MAX_BODY_BYTES,
  ) {}

  async send(request: TransportRequest): Promise<TransportResponse> {
    const started = performance.now();
    try {
      const response = await this.fetchImpl(request.url, {
        method: request.method,
        headers: request.headers,
        body: request.body,
        redirect: 'manual',
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      // The timeout also covers reading the body.
      const text = await this.readBody(response, request);
      this.logger?.debug({ what: request.what, method: request.method, status: response.status,
        ms: Math.round(performance.now() - started) }, 'upstream exchange');
      return { status: response.status, headers: response.headers, text };
    } catch (err) {
      if (isGlucoGuardError(err)) throw err;
      const ms = Math.round(performance.now() - started);
      const name = (err as { name?: string } | undefined)?.name;
      if (name === 'TimeoutError' || name === 'AbortError') {
        this.logger?.warn({ what: request.what, method: request.method, ms, timeoutMs: this.timeoutMs }, 'upstream timed out');
        throw upstreamTimeout(undefined, new Error(`upstream ${request.what} timed out after ${this.timeoutMs} ms`));
      }
      const code = networkErrorCode(err);
      this.logger?.warn({ what: request.what, method: request.method, ms, code }, 'upstream unreachable');
      throw upstreamError(undefined, new Error(`upstream ${request.what} failed: ${code}`));
    }
  }

  /** The body as text, read chunk by chunk; past maxBodyBytes the exchange is aborted → ERR_UPSTREAM. */
  private async readBody(response: Response, request: TransportRequest): Promise<string> {
    const tooLarge = async (cancel: () => Promise<void> = async () => response.body?.cancel()): Promise<never> => {
      await cancel().catch(() => undefined);
      this.logger?.warn({ what: request.what, method: request.method, status: response.status, maxBytes: this.maxBodyBytes },
        'upstream response body is larger than UPSTREAM_MAX_BODY_BYTES; aborted');
      throw upstreamError('Upstream FHIR server sent a response that is too large');
    };
    const declared = Number(response.headers.get('content-length'));
    if (Number.isFinite(declared) && declared > this.maxBodyBytes) return tooLarge();
    if (!response.body) return '';
    const chunks: Uint8Array[] = [];
    let size = 0;
    const reader = response.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > this.maxBodyBytes) return tooLarge(() => reader.cancel());
      chunks.push(value);
    }
    // TextDecoder drops a byte order mark, as response.text() does.
    return new TextDecoder().decode(Buffer.concat(chunks, size));
  }
}

/** A short code for a fetch failure (ECONNREFUSED, ENOTFOUND, UND_ERR_SOCKET…), without addresses. */
function networkErrorCode(err: unknown): string {
  let current: unknown = err;
  for (let depth = 0; depth < 4 && current; depth++) {
    const code = (current as { code?: unknown }).code;
    if (typeof code === 'string' && /^[A-Z0-9_]{2,40}$/.test(code)) return code;
    current = (current as { cause?: unknown }).cause;
  }
  return 'network error';
}
