/**
 * One typed configuration object: defaults, then an optional JSON file (GLUCOGUARD_CONFIG) whose
 * keys are the environment variable names, then environment variables (which win). Validated at
 * start-up; every bad value gets its own message and start-up fails before anything is created or
 * listens. Insecure development settings are announced (insecureSettings); those that expose data
 * in transit or to anyone are refused when NODE_ENV=production.
 */
import { accessSync, constants, existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { isIP } from 'node:net';
import path from 'node:path';
import { EXCHANGE_VARIABLES, readExchangeSettings, type ExchangeSettings } from './exchange/settings.js';

export interface Config {
  /** TCP port of the HTTP server (PORT). */
  port: number;
  /** Interface to bind (GLUCOGUARD_HOST). */
  host: string;
  /** Public base URL of the proxy, without trailing slash (GLUCOGUARD_BASE_URL). FHIR base is `${baseUrl}/fhir`. */
  baseUrl: string;
  /** Directory for everything kept on disk: store, keys, chain (GLUCOGUARD_DATA_DIR). */
  dataDir: string;
  /** Master key (base64, 32 bytes) wrapping per-patient data keys (GLUCOGUARD_MASTER_KEY or the file GLUCOGUARD_MASTER_KEY_FILE names); else a file in dataDir. */
  masterKey?: string;
  /** The file GLUCOGUARD_MASTER_KEY_FILE names, when the master key came from it (what start-up and `keys status` say). */
  masterKeyFile?: string;
  /** Largest accepted request body in bytes (GLUCOGUARD_MAX_BODY_BYTES). */
  maxBodyBytes: number;
  /** Largest raw CGM export accepted by POST /cgm/ingest, in bytes (GLUCOGUARD_MAX_INGEST_BYTES). */
  maxIngestBytes: number;
  /** Default and maximum page sizes for searches. */
  defaultPageSize: number;
  maxPageSize: number;
  /**
   * Resources a FHIR search may have the embedded store examine beyond those its page needs before
   * it is refused as too costly (GLUCOGUARD_SEARCH_SCAN_LIMIT; 0 = no limit; see SearchOptions.scanLimit).
   */
  searchScanLimit: number;
  /**
   * How long the access log gathers AuditEvents into one write (GLUCOGUARD_AUDIT_WINDOW_MS, ms;
   * 0 = the events of one event-loop turn; see src/audit/recorder.ts).
   */
  auditWindowMs: number;
  /**
   * Where the access log (AuditEvents) is kept with an upstream repository (GLUCOGUARD_AUDIT_STORE):
   * `repository`, the upstream itself (default), or `local`, the embedded store of the data
   * directory, for an upstream that takes no AuditEvents from third parties (many EHR APIs).
   */
  auditStore: 'repository' | 'local';
  /** How often the anchoring server looks for commitments removed from the commitment store (GLUCOGUARD_LEDGER_CHECK_MS). */
  ledgerCheckMs: number;
  /**
   * Versions of the newest anchored batches the anchoring server proves against the chain at
   * start-up, in the background, so their first reads cost one hash each; 0 = none
   * (GLUCOGUARD_PROVE_AHEAD; ~100 bytes of memory each).
   */
  proveAhead: number;
  /** MiB of decoded resource versions the embedded repository keeps for repeated reads; 0 = off (GLUCOGUARD_READ_CACHE_MB). */
  readCacheMb: number;
  /**
   * MiB of the embedded store's file SQLite reads through a memory map instead of read calls
   * (GLUCOGUARD_STORE_MMAP_MB, at most 2047); 0 = off, e.g. for a data directory on a network filesystem.
   */
  storeMmapMb: number;
  /** Authentication on /fhir: 'on' (default) or 'off' for local experiments only (GLUCOGUARD_AUTH). */
  auth: 'on' | 'off';
  /**
   * gzip/deflate/brotli response bodies of 1 kB and more under /fhir and /exports when the client
   * sends Accept-Encoding: 'on' (default) or 'off', e.g. behind a reverse proxy that compresses
   * (GLUCOGUARD_COMPRESSION).
   */
  compression: 'on' | 'off';
  /**
   * `serve` rebuilds the embedded store's search index in the background when the store is of an
   * older index generation: 'on' (default) or 'off' to run `glucoguard reindex` at a time of one's
   * choosing (GLUCOGUARD_AUTO_REINDEX).
   */
  autoReindex: 'on' | 'off';
  /**
   * A version with no anchored commitment to check: served tagged `unverified` ('lenient', default)
   * or withheld ('strict') (GLUCOGUARD_INTEGRITY; src/ledger/integrity.ts).
   */
  integrity: 'lenient' | 'strict';
  /** Log level for pino (LOG_LEVEL). */
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  /** 'production' refuses insecure settings (NODE_ENV). */
  nodeEnv: string;
  upstream?: UpstreamConfig;
  chain: ChainConfig;
  /** Redis URL for the KV port (REDIS_URL); with it the KV adapter is `redis`. */
  redisUrl?: string;
  /**
   * The KV port's adapter (GLUCOGUARD_KV): `embedded` (default without REDIS_URL: `<dataDir>/kv/kv.sqlite`,
   * survives restarts), `redis` (default with REDIS_URL) or `memory` (tests and throw-away runs:
   * revocations and refresh tokens are forgotten at every restart; refused when NODE_ENV=production).
   */
  kv: 'embedded' | 'redis' | 'memory';
  /** Time zone for device-local timestamps without offset (GLUCOGUARD_DEFAULT_TZ). */
  defaultTimeZone: string;
  /** Bulk export and subscription settings (GLUCOGUARD_EXPORT_*, GLUCOGUARD_SUBSCRIPTION_*; src/exchange/settings.ts). */
  exchange: ExchangeSettings;
  /**
   * Which peers' X-Forwarded-For/-Proto are believed, i.e. express's `trust proxy` (GLUCOGUARD_TRUST_PROXY):
   * false ('off', default: the socket address is the client), a hop count, or addresses/CIDRs
   * (`loopback`, `linklocal`, `uniquelocal` too). The per-IP login and token rate limits key on the result.
   */
  trustProxy: TrustProxy;
}

export type TrustProxy = false | number | string[];

export interface UpstreamConfig {
  /** FHIR R4 base of the upstream server (UPSTREAM_FHIR_URL). */
  url: string;
  /** none | bearer | backend-services (UPSTREAM_AUTH). */
  auth: 'none' | 'bearer' | 'backend-services';
  /** Static bearer token, or a file holding it (UPSTREAM_BEARER_TOKEN / UPSTREAM_BEARER_TOKEN_FILE). */
  bearerToken?: string;
  /** Backend Services: client id, token URL, private key (PEM or JWK JSON) file, alg, kid, scope. */
  clientId?: string;
  tokenUrl?: string;
  privateKeyFile?: string;
  alg?: 'RS384' | 'ES384';
  kid?: string;
  scope?: string;
  /** Per-request timeout in ms (UPSTREAM_TIMEOUT_MS). */
  timeoutMs: number;
  /**
   * A read the upstream throttles (429 or 503 with Retry-After) is sent once more when the wait it
   * asks for is at most this many seconds (UPSTREAM_RETRY_AFTER_MAX; 0: never). Otherwise the
   * client gets 503 with the upstream's Retry-After. Default 2.
   */
  retryAfterMaxSeconds?: number;
  /**
   * Largest upstream response body read, in bytes (UPSTREAM_MAX_BODY_BYTES; default 64 MiB). A
   * larger one is aborted as it arrives and answered 502, so no upstream can fill the proxy's memory.
   */
  maxBodyBytes?: number;
  /**
   * Plain http to a host other than this machine accepted under NODE_ENV=production
   * (UPSTREAM_ALLOW_HTTP=true): an upstream on a private network the operator controls, such as a
   * compose network. Warned about on every start.
   */
  allowHttp?: boolean;
}

export interface ChainConfig {
  /** JSON-RPC URL of an external node (CHAIN_RPC_URL); the embedded Clique node runs when absent. */
  rpcUrl?: string;
  /** Port of the embedded node's JSON-RPC server (CHAIN_PORT); 0 picks a free port. */
  embeddedPort: number;
  /** Seconds between sealed blocks of the embedded node (CHAIN_BLOCK_PERIOD); 0 seals at once. */
  blockPeriod: number;
  /** Where the embedded node runs (CHAIN_NODE_THREAD): `worker` (default, a thread of its own) or `main` (the request thread). */
  nodeThread: 'worker' | 'main';
  /** Chain id of the embedded network, or of the external one (CHAIN_ID). */
  chainId: number;
  /** External chain: file with the authority's private key (CHAIN_AUTHORITY_KEY_FILE). */
  authorityKeyFile?: string;
  /** External chain: JSON file with the contract addresses {ResourceAnchor, ConsentRegistry, IdentityRegistry} (CHAIN_DEPLOYMENT_FILE). */
  deploymentFile?: string;
}

export class ConfigError extends Error {
  readonly code = 'ERR_CONFIG';
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  - ${problems.join('\n  - ')}`);
  }
}

type Env = Record<string, string | undefined>;

/**
 * Every setting, by the name of its environment variable: the only keys the GLUCOGUARD_CONFIG file
 * takes (NODE_ENV and GLUCOGUARD_CONFIG itself come from the environment only).
 */
export const CONFIG_VARIABLES: readonly string[] = [
  'PORT', 'GLUCOGUARD_HOST', 'GLUCOGUARD_BASE_URL', 'GLUCOGUARD_DATA_DIR', 'GLUCOGUARD_MASTER_KEY', 'GLUCOGUARD_MASTER_KEY_FILE',
  'GLUCOGUARD_MAX_BODY_BYTES', 'GLUCOGUARD_MAX_INGEST_BYTES', 'GLUCOGUARD_PAGE_SIZE', 'GLUCOGUARD_MAX_PAGE_SIZE',
  'GLUCOGUARD_SEARCH_SCAN_LIMIT', 'GLUCOGUARD_AUDIT_WINDOW_MS', 'GLUCOGUARD_AUDIT_STORE', 'GLUCOGUARD_LEDGER_CHECK_MS', 'GLUCOGUARD_PROVE_AHEAD', 'GLUCOGUARD_READ_CACHE_MB', 'GLUCOGUARD_STORE_MMAP_MB',
  'GLUCOGUARD_AUTH', 'GLUCOGUARD_COMPRESSION', 'GLUCOGUARD_AUTO_REINDEX', 'GLUCOGUARD_INTEGRITY', 'GLUCOGUARD_DEFAULT_TZ',
  'GLUCOGUARD_TRUST_PROXY', ...EXCHANGE_VARIABLES,
  'UPSTREAM_FHIR_URL', 'UPSTREAM_AUTH', 'UPSTREAM_BEARER_TOKEN', 'UPSTREAM_BEARER_TOKEN_FILE', 'UPSTREAM_CLIENT_ID',
  'UPSTREAM_TOKEN_URL', 'UPSTREAM_PRIVATE_KEY_FILE', 'UPSTREAM_ALG', 'UPSTREAM_KID', 'UPSTREAM_SCOPE', 'UPSTREAM_TIMEOUT_MS',
  'UPSTREAM_RETRY_AFTER_MAX', 'UPSTREAM_MAX_BODY_BYTES', 'UPSTREAM_ALLOW_HTTP',
  'CHAIN_RPC_URL', 'CHAIN_PORT', 'CHAIN_BLOCK_PERIOD', 'CHAIN_NODE_THREAD', 'CHAIN_ID', 'CHAIN_AUTHORITY_KEY_FILE', 'CHAIN_DEPLOYMENT_FILE',
  'REDIS_URL', 'REDIS_PASSWORD_FILE', 'GLUCOGUARD_KV', 'LOG_LEVEL',
];

/** Builds and validates the configuration; throws ConfigError listing every problem. */
export function loadConfig(env: Env = process.env, overrides: Partial<Config> = {}): Config {
  const problems: string[] = [];
  const file = env.GLUCOGUARD_CONFIG ? readConfigFile(env.GLUCOGUARD_CONFIG, problems) : {};
  // the environment wins over the file
  const pick = (name: string): string | undefined => env[name] ?? file[name];

  const port = int(pick('PORT') ?? '8080', 'PORT', 0, 65535, problems);
  const host = pick('GLUCOGUARD_HOST') ?? '0.0.0.0';
  if (!isHost(host)) problems.push(`GLUCOGUARD_HOST must be an IP address or a host name (got "${host}")`);
  const dataDir = path.resolve(pick('GLUCOGUARD_DATA_DIR') ?? './data');
  const baseUrlRaw = pick('GLUCOGUARD_BASE_URL') ?? `http://localhost:${port}`;
  const baseUrl = url(baseUrlRaw, 'GLUCOGUARD_BASE_URL', problems).replace(/\/+$/, '');
  if (/\/fhir$/i.test(new URL(baseUrl).pathname)) {
    problems.push(`GLUCOGUARD_BASE_URL is the proxy's base, not the FHIR base: the FHIR base is <base>/fhir, so "${baseUrlRaw}" would serve FHIR at ${baseUrl}/fhir (set "${baseUrl.replace(/\/fhir$/i, '')}")`);
  }
  const nodeEnv = env.NODE_ENV ?? 'development';
  const production = nodeEnv === 'production';
  if (production && !isLoopbackUrl(baseUrl) && new URL(baseUrl).protocol === 'http:') {
    problems.push(`GLUCOGUARD_BASE_URL must use https when NODE_ENV=production (got "${baseUrlRaw}"; tokens, codes and redirects would travel in clear)`);
  }
  const auth = oneOf(pick('GLUCOGUARD_AUTH') ?? 'on', ['on', 'off'] as const, 'GLUCOGUARD_AUTH', problems);
  const compression = oneOf(pick('GLUCOGUARD_COMPRESSION') ?? 'on', ['on', 'off'] as const, 'GLUCOGUARD_COMPRESSION', problems);
  const autoReindex = oneOf(pick('GLUCOGUARD_AUTO_REINDEX') ?? 'on', ['on', 'off'] as const, 'GLUCOGUARD_AUTO_REINDEX', problems);
  const integrity = oneOf(pick('GLUCOGUARD_INTEGRITY') ?? 'lenient', ['lenient', 'strict'] as const, 'GLUCOGUARD_INTEGRITY', problems);
  if (auth === 'off' && production) {
    problems.push('GLUCOGUARD_AUTH=off is refused when NODE_ENV=production');
  }
  const masterKeyFile = pick('GLUCOGUARD_MASTER_KEY_FILE') || undefined;
  const masterKeyValue = pick('GLUCOGUARD_MASTER_KEY');
  // two sources would leave the operator guessing which key opened (or made) the data directory
  if (masterKeyValue !== undefined && masterKeyFile) {
    problems.push('GLUCOGUARD_MASTER_KEY and GLUCOGUARD_MASTER_KEY_FILE are both set: give the master key one way only (unset one)');
  }
  const masterKey = masterKeyValue
    ?? (masterKeyFile ? readSecret(masterKeyFile, 'GLUCOGUARD_MASTER_KEY_FILE', problems) : undefined);
  if (masterKey !== undefined && Buffer.from(masterKey, 'base64').length !== 32) {
    problems.push(masterKeyValue === undefined && masterKeyFile
      ? `GLUCOGUARD_MASTER_KEY_FILE: ${masterKeyFile} does not hold a 32-byte key, base64-encoded`
      : 'GLUCOGUARD_MASTER_KEY must be 32 bytes, base64-encoded');
  }
  const logLevel = oneOf(pick('LOG_LEVEL') ?? 'info',
    ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const, 'LOG_LEVEL', problems);

  let upstream: UpstreamConfig | undefined;
  const upstreamUrl = pick('UPSTREAM_FHIR_URL');
  if (upstreamUrl) {
    const upstreamAuth = oneOf(pick('UPSTREAM_AUTH') ?? 'none',
      ['none', 'bearer', 'backend-services'] as const, 'UPSTREAM_AUTH', problems);
    const tokenFile = pick('UPSTREAM_BEARER_TOKEN_FILE');
    const allowHttp = oneOf(pick('UPSTREAM_ALLOW_HTTP') ?? 'false', ['false', 'true'] as const, 'UPSTREAM_ALLOW_HTTP', problems) === 'true';
    problems.push(...endpointProblems(upstreamUrl, 'UPSTREAM_FHIR_URL', production && !allowHttp));
    const tokenUrl = pick('UPSTREAM_TOKEN_URL');
    if (tokenUrl !== undefined) problems.push(...endpointProblems(tokenUrl, 'UPSTREAM_TOKEN_URL', production && !allowHttp));
    upstream = {
      url: upstreamUrl.replace(/\/+$/, ''),
      auth: upstreamAuth,
      bearerToken: pick('UPSTREAM_BEARER_TOKEN') ?? (tokenFile ? readSecret(tokenFile, 'UPSTREAM_BEARER_TOKEN_FILE', problems) : undefined),
      clientId: pick('UPSTREAM_CLIENT_ID'),
      tokenUrl,
      privateKeyFile: pick('UPSTREAM_PRIVATE_KEY_FILE'),
      alg: oneOf(pick('UPSTREAM_ALG') ?? 'RS384', ['RS384', 'ES384'] as const, 'UPSTREAM_ALG', problems),
      kid: pick('UPSTREAM_KID'),
      scope: pick('UPSTREAM_SCOPE') ?? 'system/*.rs',
      timeoutMs: int(pick('UPSTREAM_TIMEOUT_MS') ?? '10000', 'UPSTREAM_TIMEOUT_MS', 1, 600_000, problems),
      retryAfterMaxSeconds: int(pick('UPSTREAM_RETRY_AFTER_MAX') ?? '2', 'UPSTREAM_RETRY_AFTER_MAX', 0, 60, problems),
      // at most 512 MiB: about the longest string V8 can hold
      allowHttp,
      maxBodyBytes: int(pick('UPSTREAM_MAX_BODY_BYTES') ?? String(64 * 1024 * 1024), 'UPSTREAM_MAX_BODY_BYTES', 1024, 512 * 1024 * 1024, problems),
    };
    if (upstreamAuth === 'bearer' && !upstream.bearerToken) {
      problems.push('UPSTREAM_AUTH=bearer needs UPSTREAM_BEARER_TOKEN or UPSTREAM_BEARER_TOKEN_FILE');
    }
    if (upstreamAuth === 'backend-services') {
      for (const [k, v] of [['UPSTREAM_CLIENT_ID', upstream.clientId], ['UPSTREAM_TOKEN_URL', upstream.tokenUrl],
        ['UPSTREAM_PRIVATE_KEY_FILE', upstream.privateKeyFile]] as const) {
        if (!v) problems.push(`UPSTREAM_AUTH=backend-services needs ${k}`);
      }
    }
  }

  const chainRpc = pick('CHAIN_RPC_URL');
  const chain: ChainConfig = {
    rpcUrl: chainRpc ? url(chainRpc, 'CHAIN_RPC_URL', problems) : undefined,
    embeddedPort: int(pick('CHAIN_PORT') ?? '8545', 'CHAIN_PORT', 0, 65535, problems),
    blockPeriod: num(pick('CHAIN_BLOCK_PERIOD') ?? '1', 'CHAIN_BLOCK_PERIOD', 0, 3600, problems),
    nodeThread: oneOf(pick('CHAIN_NODE_THREAD') ?? 'worker', ['worker', 'main'] as const, 'CHAIN_NODE_THREAD', problems),
    chainId: int(pick('CHAIN_ID') ?? '1337', 'CHAIN_ID', 1, 2 ** 31, problems),
    authorityKeyFile: pick('CHAIN_AUTHORITY_KEY_FILE'),
    deploymentFile: pick('CHAIN_DEPLOYMENT_FILE'),
  };
  if (chain.rpcUrl && (!chain.authorityKeyFile || !chain.deploymentFile)) {
    problems.push('CHAIN_RPC_URL needs CHAIN_AUTHORITY_KEY_FILE (the authority account key) and CHAIN_DEPLOYMENT_FILE (contract addresses)');
  }
  let redisUrl = pick('REDIS_URL');
  const redisPasswordFile = pick('REDIS_PASSWORD_FILE');
  if (redisUrl && redisPasswordFile && /^rediss?:\/\//.test(redisUrl)) {
    const password = readSecret(redisPasswordFile, 'REDIS_PASSWORD_FILE', problems);
    if (password) {
      try {
        const u = new URL(redisUrl);
        // encoded whole: the URL setter leaves `%` as it is, and the client decodes the password (a `%` not
        // followed by two hex digits threw URIError at start)
        u.password = encodeURIComponent(password);
        redisUrl = u.toString();
      } catch {
        problems.push('REDIS_URL is not a valid URL');
      }
    }
  }
  // the scheme alone: the URL may carry a password
  if (redisUrl && !/^rediss?:\/\//.test(redisUrl)) problems.push(`REDIS_URL must start with redis:// or rediss:// (got "${redisUrl.split(':')[0]!.slice(0, 20)}:…")`);
  const kv = oneOf(pick('GLUCOGUARD_KV') ?? (redisUrl ? 'redis' : 'embedded'), ['embedded', 'redis', 'memory'] as const, 'GLUCOGUARD_KV', problems);
  if (kv === 'redis' && !redisUrl) problems.push('GLUCOGUARD_KV=redis needs REDIS_URL');
  if (kv !== 'redis' && redisUrl) problems.push(`GLUCOGUARD_KV=${kv} and REDIS_URL contradict each other: unset one`);
  if (kv === 'memory' && production) {
    problems.push('GLUCOGUARD_KV=memory is refused when NODE_ENV=production (revoked tokens would be accepted again, and refresh tokens refused, after every restart)');
  }
  const exchange = readExchangeSettings(pick, problems);
  if (production && exchange.subscriptionAllowHttp) {
    problems.push('GLUCOGUARD_SUBSCRIPTION_HTTP=true is refused when NODE_ENV=production (notifications would carry health data in clear)');
  }
  const trustProxy = trustProxySetting(pick('GLUCOGUARD_TRUST_PROXY') ?? 'off', problems);

  const config: Config = {
    port,
    host,
    baseUrl,
    dataDir,
    masterKey,
    ...(masterKeyValue === undefined && masterKeyFile ? { masterKeyFile } : {}),
    maxBodyBytes: int(pick('GLUCOGUARD_MAX_BODY_BYTES') ?? String(16 * 1024 * 1024), 'GLUCOGUARD_MAX_BODY_BYTES', 1024, 1024 ** 3, problems),
    maxIngestBytes: int(pick('GLUCOGUARD_MAX_INGEST_BYTES') ?? String(512 * 1024 * 1024), 'GLUCOGUARD_MAX_INGEST_BYTES', 1024, 16 * 1024 ** 3, problems),
    defaultPageSize: int(pick('GLUCOGUARD_PAGE_SIZE') ?? '50', 'GLUCOGUARD_PAGE_SIZE', 1, 10000, problems),
    maxPageSize: int(pick('GLUCOGUARD_MAX_PAGE_SIZE') ?? '1000', 'GLUCOGUARD_MAX_PAGE_SIZE', 1, 100000, problems),
    searchScanLimit: int(pick('GLUCOGUARD_SEARCH_SCAN_LIMIT') ?? '20000', 'GLUCOGUARD_SEARCH_SCAN_LIMIT', 0, 1_000_000_000, problems),
    auditWindowMs: int(pick('GLUCOGUARD_AUDIT_WINDOW_MS') ?? '50', 'GLUCOGUARD_AUDIT_WINDOW_MS', 0, 1000, problems),
    auditStore: oneOf(pick('GLUCOGUARD_AUDIT_STORE') ?? 'repository', ['repository', 'local'] as const, 'GLUCOGUARD_AUDIT_STORE', problems),
    ledgerCheckMs: int(pick('GLUCOGUARD_LEDGER_CHECK_MS') ?? '600000', 'GLUCOGUARD_LEDGER_CHECK_MS', 1000, 86_400_000, problems),
    proveAhead: int(pick('GLUCOGUARD_PROVE_AHEAD') ?? '1000000', 'GLUCOGUARD_PROVE_AHEAD', 0, 100_000_000, problems),
    readCacheMb: int(pick('GLUCOGUARD_READ_CACHE_MB') ?? '64', 'GLUCOGUARD_READ_CACHE_MB', 0, 65536, problems),
    storeMmapMb: int(pick('GLUCOGUARD_STORE_MMAP_MB') ?? '2047', 'GLUCOGUARD_STORE_MMAP_MB', 0, 2047, problems),
    auth,
    compression,
    autoReindex,
    integrity,
    logLevel,
    nodeEnv,
    upstream,
    chain,
    redisUrl,
    kv,
    defaultTimeZone: pick('GLUCOGUARD_DEFAULT_TZ') ?? 'UTC',
    exchange,
    trustProxy,
    ...overrides,
  };
  if (!isTimeZone(config.defaultTimeZone)) problems.push(`GLUCOGUARD_DEFAULT_TZ "${config.defaultTimeZone}" is not an IANA time zone`);
  if (problems.length) throw new ConfigError(problems);
  return config;
}

/** Settings a production deployment should not run with; logged as warnings at start-up. */
export function insecureSettings(config: Config): string[] {
  const warnings: string[] = [];
  if (config.auth === 'off') warnings.push('GLUCOGUARD_AUTH=off: /fhir is open to anyone who can reach it (local experiments only)');
  if (config.kv === 'memory') warnings.push('GLUCOGUARD_KV=memory: token revocations, refresh tokens and used codes are forgotten when the process stops (tests and throw-away runs only)');
  if (!config.masterKey) warnings.push(`master key kept as a file in ${config.dataDir}, so every copy of the directory carries it; in production give it by GLUCOGUARD_MASTER_KEY_FILE from a secret store (docs/operations.md, Moving the master key out of the data directory)`);
  const leftover = path.join(config.dataDir, 'keys', 'master.key'); // src/keys.ts masterKeyPath
  if (config.masterKey && existsSync(leftover)) {
    warnings.push(`${leftover} is still in the data directory although the master key comes from ${config.masterKeyFile ? 'GLUCOGUARD_MASTER_KEY_FILE' : 'GLUCOGUARD_MASTER_KEY'}: `
      + 'it is not used, but every copy of the directory carries it; delete it once this key is safe elsewhere (docs/operations.md, Moving the master key out of the data directory)');
  }
  if (config.baseUrl.startsWith('http://') && !isLoopbackUrl(config.baseUrl)) warnings.push('GLUCOGUARD_BASE_URL is not https');
  const plainUpstream = [config.upstream?.url, config.upstream?.tokenUrl].filter((u): u is string => u !== undefined && u.startsWith('http://') && !isLoopbackUrl(u));
  if (plainUpstream.length) warnings.push('the upstream FHIR server is reached over plain http: tokens and health data cross the network in clear (a private network you control only)');
  if (config.exchange.subscriptionAllowHttp) warnings.push('GLUCOGUARD_SUBSCRIPTION_HTTP=true: subscription notifications may go out over plain http');
  return warnings;
}

/** FHIR base URL (`<baseUrl>/fhir`). */
export function fhirBase(config: Pick<Config, 'baseUrl'>): string {
  return `${config.baseUrl}/fhir`;
}

/**
 * The GLUCOGUARD_CONFIG file: a JSON object whose keys are the variable names (CONFIG_VARIABLES)
 * and whose values are strings, numbers or booleans. Any other key is refused, so a typo (or an
 * old camelCase name) is never silently a different deployment.
 */
function readConfigFile(file: string, problems: string[]): Record<string, string> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'));
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('not a JSON object');
  } catch (err) {
    problems.push(`GLUCOGUARD_CONFIG: cannot read ${file}: ${(err as Error).message}`);
    return {};
  }
  const values: Record<string, string> = {};
  for (const [key, value] of Object.entries(parsed as Record<string, unknown>)) {
    if (!CONFIG_VARIABLES.includes(key)) {
      const meant = CONFIG_VARIABLES.find((name) => squash(name) === squash(key));
      problems.push(`GLUCOGUARD_CONFIG: unknown setting "${key}" in ${file}${meant ? ` (did you mean ${meant}?)` : ''}; the file takes the environment variable names`);
    } else if (typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean') {
      values[key] = String(value);
    } else if (value !== null) {
      problems.push(`GLUCOGUARD_CONFIG: ${key} in ${file} must be a string, number or boolean`);
    }
  }
  return values;
}

/** `auth`, `chainRpcUrl` → comparable with `GLUCOGUARD_AUTH`, `CHAIN_RPC_URL`. */
function squash(name: string): string {
  return name.toLowerCase().replace(/^glucoguard_/, '').replace(/_/g, '');
}

const HOST_NAME = /^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

/** An IP address, or a host name that is not a malformed dotted quad (`999.1.1.1`). */
function isHost(host: string): boolean {
  return isIP(host) !== 0 || (HOST_NAME.test(host) && !/^[\d.]+$/.test(host));
}

/**
 * What is wrong with an upstream endpoint URL (UPSTREAM_FHIR_URL, UPSTREAM_TOKEN_URL): it must be
 * http(s), without credentials (fetch refuses `user:password@` URLs, so every request would fail as
 * a bare network error, and the secret would sit in the configuration; UPSTREAM_AUTH carries
 * credentials), without a query or fragment (paths are appended to a base; a token endpoint takes
 * none), and under NODE_ENV=production https unless on this machine (tokens and health data would
 * cross the network in clear). The messages never repeat the URL, which may hold a secret. Checked
 * by loadConfig, before anything is created, and by the upstream adapter for configs built in code.
 */
export function endpointProblems(raw: string, name: string, production = false): string[] {
  let parsed: URL;
  try {
    parsed = new URL(raw);
  } catch {
    return [`${name} must be an http(s) URL`];
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') return [`${name} must be an http(s) URL`];
  const problems: string[] = [];
  if (parsed.username !== '' || parsed.password !== '') {
    problems.push(`${name} must not carry credentials (user:password@): give them by UPSTREAM_AUTH (bearer or backend-services)`);
  }
  // the raw text, not parsed.search: a bare trailing `?` or `#` leaves those empty yet breaks the paths
  if (/[?#]/.test(raw)) problems.push(`${name} must be the endpoint itself, without a query (?…) or fragment (#…)`);
  if (production && parsed.protocol === 'http:' && !isLoopbackUrl(raw)) {
    problems.push(`${name} must use https when NODE_ENV=production unless it is on this machine (tokens and health data would cross the network in clear); `
      + 'on a private network you control, UPSTREAM_ALLOW_HTTP=true accepts it');
  }
  return problems;
}

/** `raw` when endpointProblems finds nothing wrong with it; otherwise a ConfigError listing what is (for configs built in code). */
export function checkedEndpoint(raw: string, name: string): string {
  const problems = endpointProblems(raw, name);
  if (problems.length) throw new ConfigError(problems);
  return raw;
}

function isLoopbackUrl(raw: string): boolean {
  const host = new URL(raw).hostname;
  return host === 'localhost' || host === '127.0.0.1' || host === '[::1]';
}

/**
 * GLUCOGUARD_TRUST_PROXY as express's `trust proxy` takes it: `off` (false), a hop count, or a
 * comma-separated list of addresses, CIDRs and the names loopback, linklocal, uniquelocal.
 * `true` (believe any X-Forwarded-For) is not offered: a client could then choose its own address.
 */
function trustProxySetting(raw: string, problems: string[]): TrustProxy {
  const value = raw.trim();
  if (value === 'off' || value === 'false' || value === '') return false;
  if (/^\d+$/.test(value)) {
    const hops = Number(value);
    if (hops >= 1 && hops <= 10) return hops;
  } else {
    const entries = value.split(',').map((s) => s.trim()).filter(Boolean);
    const bad = entries.filter((entry) => {
      if (['loopback', 'linklocal', 'uniquelocal'].includes(entry)) return false;
      const [addr, bits, extra] = entry.split('/');
      const kind = isIP(addr ?? '');
      if (!kind || extra !== undefined) return true;
      return bits !== undefined && (!/^\d+$/.test(bits) || Number(bits) > (kind === 6 ? 128 : 32));
    });
    if (entries.length && !bad.length) return entries;
  }
  problems.push(`GLUCOGUARD_TRUST_PROXY must be off, a hop count from 1 to 10, or a comma-separated list of addresses, CIDRs, loopback, linklocal, uniquelocal (got "${raw}")`);
  return false;
}

function readSecret(file: string, name: string, problems: string[]): string | undefined {
  try {
    return readFileSync(file, 'utf8').trim();
  } catch (err) {
    problems.push(`${name}: cannot read ${file}: ${whyUnreadable(err)}`);
    return undefined;
  }
}

/**
 * Checks the data directory before anything opens it (GLUCOGUARD_DATA_DIR): an existing one must be
 * a directory this process can read and (with `write`) write; with `create`, a missing one is made
 * owner-only (0700), or refused naming the reason (a read-only file system, a folder of another
 * user) instead of the "no such file or directory" a failed recursive mkdir reports. Throws ConfigError.
 */
export function prepareDataDir(dataDir: string, options: { create: boolean; write: boolean }): void {
  let stat;
  try {
    stat = statSync(dataDir);
  } catch (err) {
    if ((err as { code?: string }).code !== 'ENOENT') throw new ConfigError([`GLUCOGUARD_DATA_DIR: ${dataDir}: ${whyUnreadable(err)}`]);
  }
  if (stat && !stat.isDirectory()) throw new ConfigError([`GLUCOGUARD_DATA_DIR: ${dataDir} is not a directory`]);
  if (stat) {
    const problem = pathProblem(dataDir, options.write ? constants.R_OK | constants.W_OK | constants.X_OK : constants.R_OK | constants.X_OK);
    if (problem) throw new ConfigError([`GLUCOGUARD_DATA_DIR: ${problem}`]);
    return;
  }
  if (!options.create) return;
  let parent = path.dirname(dataDir);
  while (!existsSync(parent) && path.dirname(parent) !== parent) parent = path.dirname(parent);
  const problem = pathProblem(parent, constants.W_OK | constants.X_OK);
  if (problem) throw new ConfigError([`GLUCOGUARD_DATA_DIR: cannot create ${dataDir}: ${problem}`]);
  try {
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new ConfigError([`GLUCOGUARD_DATA_DIR: cannot create ${dataDir}: ${whyUnreadable(err)}`]);
  }
}

/**
 * What keeps this process from using `target` as `mode` asks (fs.constants R_OK | W_OK | X_OK), in
 * words naming the path; undefined when nothing does. A read-only mount is said as such.
 */
export function pathProblem(target: string, mode: number): string | undefined {
  try {
    accessSync(target, mode);
    return undefined;
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'EROFS') return `${target} is on a read-only file system`;
    if (code === 'EACCES' || code === 'EPERM') {
      const wanted = [mode & constants.R_OK ? 'read' : '', mode & constants.W_OK ? 'write' : ''].filter(Boolean).join(' and ');
      return `permission denied: this user (uid ${process.getuid?.() ?? '?'}) may not ${wanted || 'enter'} ${target}`;
    }
    return `${target}: ${whyUnreadable(err)}`;
  }
}

/**
 * Why a file could not be read, in words (never its content): missing and not permitted call for
 * different fixes, so they are told apart.
 */
export function whyUnreadable(err: unknown): string {
  switch ((err as { code?: string }).code) {
    case 'ENOENT': return 'no such file';
    case 'EACCES':
    case 'EPERM': return `permission denied (glucoguard runs as uid ${process.getuid?.() ?? '?'})`;
    case 'EROFS': return 'read-only file system';
    case 'EISDIR': return 'it is a directory, not a file';
    case 'ENOTDIR': return 'a part of the path is not a directory';
    default: return (err as Error).message ?? String(err);
  }
}

function int(raw: string, name: string, min: number, max: number, problems: string[]): number {
  const n = Number(raw);
  if (!/^-?\d+$/.test(raw.trim()) || n < min || n > max) {
    problems.push(`${name} must be an integer from ${min} to ${max} (got "${raw}")`);
    return min;
  }
  return n;
}

function num(raw: string, name: string, min: number, max: number, problems: string[]): number {
  const n = Number(raw);
  if (raw.trim() === '' || Number.isNaN(n) || n < min || n > max) {
    problems.push(`${name} must be a number from ${min} to ${max} (got "${raw}")`);
    return min;
  }
  return n;
}

function oneOf<T extends string>(raw: string, allowed: readonly T[], name: string, problems: string[]): T {
  if ((allowed as readonly string[]).includes(raw)) return raw as T;
  problems.push(`${name} must be one of ${allowed.join(', ')} (got "${raw}")`);
  return allowed[0]!;
}

function url(raw: string, name: string, problems: string[]): string {
  try {
    const u = new URL(raw);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error('not http(s)');
    return raw;
  } catch {
    problems.push(`${name} must be an http(s) URL (got "${raw}")`);
    return 'http://invalid';
  }
}

function isTimeZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}
