/**
 * The composition root: the only place that builds adapters (repository, KV, chain) from the
 * configuration and wires them into the routers. Everything else receives what it needs.
 */
import { mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { Observation, Resource } from '@medplum/fhirtypes';
import compression from 'compression';
import express, { type Express } from 'express';
import { erasureAuditEvent } from './audit/erasure.js';
import { resourceExists } from './repository/exists.js';
import type { Config } from './config.js';
import { fhirBase, insecureSettings } from './config.js';
import { cgmHttpRouter } from './cgm/http.js';
import { CgmOperations } from './cgm/operations.js';
import { ImportTurns } from './cgm/turns.js';
import { CgmIngestService } from './cgm/service.js';
import { shapeCachedCheck } from './cgm/validate.js';
import { buildCapabilityStatement } from './fhir/capability.js';
import { loadFhirDefinitions } from './fhir/definitions.js';
import { isGlucoGuardError, unavailable } from './errors.js';
import { cors, fhirHttpRouter } from './fhir/http.js';
import { standardOperations } from './fhir/operations.js';
import { FhirRouter } from './fhir/router.js';
import { ProfileValidator } from './fhir/validation.js';
import { deriveKey, loadServerKeys, masterKeyPath, rootSealPath, type ServerKeys } from './keys.js';
import { EmbeddedKeyValueStore } from './kv/embedded.js';
import { MemoryKeyValueStore } from './kv/memory.js';
import type { KeyValueStore } from './kv/port.js';
import { createSmart, type Smart } from './smart/index.js';
import { createWeb, type Web } from './web/index.js';
import { SmartScopePolicy } from './smart/policy.js';
import { createConsent, type Consent } from './consent/index.js';
import { createExchange, NotifyingRepository, type Exchange } from './exchange/index.js';
import { ComposedPolicy } from './consent/policy.js';
import { withPurpose } from './consent/requester.js';
import { createLogger, type Logger } from './log.js';
import {
  anchoringCheck, chainCheck, finalErrorHandler, kvCheck, notFoundHandler, observabilityRouter, Readiness, repositoryCheck, requestObservability, securityHeaders,
} from './observability/index.js';
import { PROFILES_DIR, VERSION } from './paths.js';
import { EmbeddedRepository } from './repository/embedded/index.js';
import type { DecodedCache } from './repository/embedded/decoded-cache.js';
import type { Repository } from './repository/port.js';
import { UpstreamRepository } from './repository/upstream/index.js';
import { AccessLogApartRepository } from './repository/access-log-apart.js';
import { ChainClient, type ChainAddresses } from './ledger/client.js';
import { createLedger, INTEGRITY_TAG_SYSTEM, type Ledger } from './ledger/index.js';
import { removeEndpoint, runningEmbeddedNode, writeEndpoint } from './ledger/embedded-endpoint.js';
import { assertCommitmentStorePresent, assertEmbeddedChainPresent } from './ledger/restore.js';
import { loadAuthorityKey, startEmbeddedChainThread, type EmbeddedChainThread } from '../chain/node/index.js';

/** The package's version (it lives in paths.ts, which the CLI loads without the app). */
export { VERSION };

export interface App {
  config: Config;
  logger: Logger;
  http: Express;
  fhir: FhirRouter;
  repository: Repository;
  kv: KeyValueStore;
  smart: Smart;
  /** The chain port: provider, the one nonce-managed authority signer, the contracts. */
  chain: ChainClient;
  /** Patient consent: grants on chain, the decision point enforced on every FHIR path, the access log. */
  consent: Consent;
  /** Commitments of every stored version, their anchoring, and the integrity check on reads. */
  ledger: Ledger;
  /** CGM ingest (service) and the summary/AGP computations behind the $cgm-* operations. */
  cgm: { ingest: CgmIngestService; operations: CgmOperations };
  /** Checks behind `GET /readyz`; add one per dependency with `readiness.add({ name, check })`. */
  readiness: Readiness;
  /** Bulk $export jobs, Subscriptions and research de-identification. */
  exchange: Exchange;
  /** The clinician app and patient portal under /apps/ (registered SMART clients). */
  web: Web;
  /** The embedded repository's decoded-version cache (undefined with an upstream repository). */
  readCache?: DecodedCache;
  /**
   * Right to erasure (embedded repository only; an upstream server erases by its own means): the
   * patient's data key is destroyed, so every version of their data becomes unreadable, and the
   * salts of its commitments are overwritten (AnchoredRepository.forgetUnreadableSalts). An AuditEvent naming
   * the operator records it (`auditEvent`: its id). A repeat finishes an erasure that stopped after
   * the key was destroyed (`finished`: salts were still to overwrite); with nothing left to do it
   * throws the adapter's ERR_GONE.
   */
  erasePatient?: (patientId: string, operator: string) => Promise<{ resources: number; commitments: number; auditEvent: string; finished?: boolean }>;
  /**
   * Rebuilds the embedded repository's search index for every current version and records the
   * current index generation (EmbeddedRepository.reindex; undefined with an upstream repository).
   */
  reindex?: (onProgress?: (done: number, total: number) => void, options?: { chunk?: number; background?: boolean; all?: boolean }) => Promise<{ versions: number; unreadable: number; generation: number }>;
  /** The index generation the embedded store's search rows are complete for (undefined with an upstream repository). */
  indexGeneration?: () => number;
  /** One line per port: which adapter serves it and where its data lives. */
  adapters: { port: string; adapter: string; location: string }[];
  close(): Promise<void>;
}

/** Builds the repository adapter the configuration asks for (CLI tools use this too). */
export async function createRepository(config: Config, logger: Logger, keys?: ServerKeys): Promise<Repository> {
  if (config.upstream) {
    const upstream = new UpstreamRepository({ config: config.upstream, proxyFhirBase: fhirBase(config), logger });
    // a client the upstream's token endpoint refuses stops the start here (ConfigError), not at first use
    await upstream.checkAtStartup();
    if (config.auditStore !== 'local') return upstream;
    // the access log in the data directory's embedded store (src/repository/access-log-apart.ts)
    mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
    const log = await EmbeddedRepository.open({ dataDir: config.dataDir, keys: keys ?? loadServerKeys(config), readCacheBytes: 0, mmapBytes: 0, logger });
    return new AccessLogApartRepository(upstream, log);
  }
  mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
  return EmbeddedRepository.open({ dataDir: config.dataDir, keys: keys ?? loadServerKeys(config), readCacheBytes: config.readCacheMb * 1024 * 1024, mmapBytes: config.storeMmapMb * 1024 * 1024, logger });
}

/**
 * Builds the KV adapter the configuration asks for: Redis (REDIS_URL), the SQLite file in the data
 * directory (default; shared with the CLI processes of that directory), or process memory.
 */
export async function createKeyValueStore(config: Config, logger: Logger, keys: ServerKeys = loadServerKeys(config)): Promise<KeyValueStore> {
  if (config.kv === 'redis') {
    // the Redis client (~90 modules) is loaded only by installations that use it
    const { RedisKeyValueStore } = await import('./kv/redis.js');
    return RedisKeyValueStore.connect(config.redisUrl!, { logger });
  }
  if (config.kv === 'memory') return new MemoryKeyValueStore();
  return new EmbeddedKeyValueStore({ file: path.join(config.dataDir, 'kv', 'kv.sqlite'), rootKey: keys.root, logger });
}

/**
 * Connects to the chain the configuration names: an external node (CHAIN_RPC_URL, e.g. Besu) with
 * the authority key and contract addresses from files, or the embedded Clique node started here.
 * `create: false` (read-only commands) never creates an embedded chain where there is none.
 */
export async function createChain(config: Config, logger: Logger, options: { create?: boolean } = {}): Promise<{ client: ChainClient; embedded?: EmbeddedChainThread; shared?: boolean }> {
  if (config.chain.rpcUrl) {
    const authorityKey = readFileSync(config.chain.authorityKeyFile!, 'utf8').trim();
    const addresses = JSON.parse(readFileSync(config.chain.deploymentFile!, 'utf8')) as ChainAddresses & { contracts?: ChainAddresses };
    return {
      client: new ChainClient({ rpcUrl: config.chain.rpcUrl, chainId: config.chain.chainId, authorityKey, addresses: addresses.contracts ?? addresses, adapter: 'rpc' }),
    };
  }
  // No new chain beside data made with another one (a restore without chain/): refused, not replaced.
  assertEmbeddedChainPresent(config.dataDir, { create: options.create });
  // A running server already owns the embedded node of this data directory (LevelDB is
  // single-process): operator commands talk to that node over its JSON-RPC instead. A stale or
  // copied endpoint file is checked and set aside (src/ledger/embedded-endpoint.ts).
  const running = await runningEmbeddedNode(config.dataDir, (m) => logger.warn(m));
  if (running) {
    const client = new ChainClient({
      rpcUrl: running.rpcUrl, chainId: running.chainId, authorityKey: loadAuthorityKey(config.dataDir), addresses: running.deployment, adapter: 'embedded',
    });
    try {
      await client.head();
      return { client, shared: true };
    } catch {
      await client.close();
      throw unavailable(`the embedded chain node of ${config.dataDir} (pid ${running.pid}) does not answer at ${running.rpcUrl}`);
    }
  }
  const embedded = await startEmbeddedChainThread({
    thread: config.chain.nodeThread,
    // The node failed on its own thread: exit non-zero, as a failure on the request thread would
    // have, so a supervisor restarts the whole proxy instead of leaving it up without its chain.
    onUnexpectedExit: (code) => {
      logger.fatal({ code }, 'the embedded chain node stopped; exiting so that the proxy is restarted');
      process.exit(70);
    },
    dataDir: config.dataDir,
    port: config.chain.embeddedPort,
    blockPeriod: config.chain.blockPeriod,
    chainId: config.chain.chainId,
    logger: { info: (m: string) => logger.info(m), warn: (m: string) => logger.warn(m), error: (m: string) => logger.error(m) },
  });
  writeEndpoint(config.dataDir, { rpcUrl: embedded.rpcUrl, chainId: embedded.chainId, deployment: embedded.deployment });
  const client = new ChainClient({
    rpcUrl: embedded.rpcUrl,
    chainId: embedded.chainId,
    authorityKey: loadAuthorityKey(config.dataDir),
    addresses: embedded.deployment,
    adapter: 'embedded',
  });
  const close = embedded.close.bind(embedded);
  embedded.close = async () => {
    removeEndpoint(config.dataDir);
    await close();
  };
  return { client, embedded };
}

/**
 * The access log is written to the repository: an upstream whose CapabilityStatement does not list
 * AuditEvent `create` (many EHR APIs take none from third parties) would keep none, and one without
 * `search-type` would not let patients read theirs. Said once at `serve`, as an error, so it is seen
 * before go-live (docs/audit.md); the recorder's failures and lost-events counter say it again.
 */
export async function checkUpstreamAccessLog(repository: Repository, logger: Logger): Promise<string[]> {
  if (!(repository instanceof UpstreamRepository)) return [];
  const missing = await repository.undeclared('AuditEvent', ['create', 'search-type']);
  if (missing?.length) {
    logger.error({ missing }, `the upstream FHIR server's CapabilityStatement does not list AuditEvent ${missing.join(' and ')}: `
      + 'the access log is written there, so accesses may go unrecorded (create) or patients be unable to read their log (search-type); '
      + 'GLUCOGUARD_AUDIT_STORE=local keeps it in the data directory instead (docs/audit.md)');
  }
  return missing ?? [];
}

/**
 * Builds the whole proxy from a configuration. Nothing listens until the caller calls `http.listen`.
 * `registerWebApps: false` (the one-off commands) leaves the built-in apps' SMART registrations to
 * the server: a command run under another base URL would register them again (src/web/index.ts).
 */
export async function createApp(config: Config, options: { logger?: Logger; registerWebApps?: boolean } = {}): Promise<App> {
  const logger = options.logger ?? createLogger(config.logLevel);
  for (const warning of insecureSettings(config)) logger.warn(warning);
  // A restore that left out chain/ or ledger/ is refused before anything is opened or created.
  if (!config.chain.rpcUrl) assertEmbeddedChainPresent(config.dataDir);
  if (!config.upstream) assertCommitmentStorePresent(config.dataDir);
  // Each step that opens something says how to close it; a step that fails closes what the steps
  // before it opened (Opened.fail), so a failed start leaves nothing holding the data directory.
  const opened = new Opened();
  // An upstream that refuses GlucoGuard's client (or cannot be reached) stops the start before
  // anything is written to the data directory: no key files left from a start that never ran.
  let upstream: Repository | undefined;
  if (config.upstream) {
    loadFhirDefinitions(); // before the adapter, as for the embedded one below
    upstream = opened.add(await createRepository(config, logger), (r) => r.close());
  }
  const keys = await attempt(() => {
    mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
    return loadServerKeys(config);
  }).catch(opened.fail);
  // The embedded chain node starts on its own thread (its modules and database: about a second)
  // while this one loads the FHIR definitions and opens the stores: started first, awaited last.
  const chainStarted = opened.add(createChain(config, logger), (started) => started.then((c) => c.client.close().then(() => c.embedded?.close()), () => undefined));
  chainStarted.catch(() => undefined); // awaited below; a failure meanwhile is not unhandled
  await new Promise((resolve) => setImmediate(resolve)); // lets it reach `new Worker` before the synchronous load
  const { adapter, kv, validator } = await attempt(async () => {
    loadFhirDefinitions();
    const validator = new ProfileValidator(PROFILES_DIR);
    // (the repository port's decorators below close nothing of their own: the adapter is closed as opened)
    const adapter = upstream ?? opened.add(await createRepository(config, logger, keys), (r) => r.close());
    const kv = opened.add(await createKeyValueStore(config, logger, keys), (k) => k.close()); // (a KV that cannot be reached fails here)
    return { adapter, kv, validator };
  }).catch(opened.fail);
  const chain = await chainStarted.catch(opened.fail);
  // Every write goes through the ledger's decorator (commitment recorded, then anchored in batches);
  // refused when the chain is older than the ledger.
  const ledger = opened.add(await createLedger({
    dataDir: config.dataDir, chain: chain.client, repository: adapter, logger, integrity: config.integrity, anchor: !chain.shared, ownChain: chain.embedded !== undefined,
    completenessCheckMs: config.ledgerCheckMs, proveAhead: config.proveAhead,
  }).catch(opened.fail), (l) => l.close());
  // Subscriptions hear of every stored version through this decorator (src/exchange/write-events.ts).
  const repository = new NotifyingRepository(ledger.repository);

  const base = fhirBase(config);
  const consent = opened.add(await attempt(() => createConsent({
    dataDir: config.dataDir, rootKey: keys.root, repository, validator, kv, chain: chain.client, logger, auditWindowMs: config.auditWindowMs,
    // a guardian's authority is read off a RelatedPerson the ledger vouches for (verified, or committed and not yet anchored)
    trusted: async (resource) => ['verified', 'pending'].includes((await ledger.checker.checkMany([resource]))[0]!.status),
  })).catch(opened.fail), (c) => c.close());
  const smart = opened.add(await createSmart({
    config,
    rootKey: keys.root,
    kv,
    logger,
    fhirBase: base,
    // the patient picker offers only the patients consent lets the signed-in user see, and logs what it shows
    patients: consent.picker,
    // an EHR launch naming a patient or practitioner this server doesn't hold is refused
    resourceExists: (type, id) => resourceExists(repository, type, id),
  }).catch(opened.fail), (a) => a.close());
  const scopes = new SmartScopePolicy();
  // A request needs both: the token's scopes AND the patient's consent.
  const policy = new ComposedPolicy([scopes, consent.policy]);
  const profilesByType: Record<string, string[]> = {};
  for (const url of validator.profileUrls()) {
    const sd = validator.profile(url)!;
    if (sd.kind === 'resource' && sd.type) (profilesByType[sd.type] ??= []).push(url);
  }
  const started = new Date().toISOString();
  const fhir: FhirRouter = new FhirRouter({
    repository,
    validator,
    fhirBase: base,
    pageTokenKey: deriveKey(keys.root, 'page-token'),
    defaultPageSize: config.defaultPageSize,
    maxPageSize: config.maxPageSize,
    searchScanLimit: config.searchScanLimit,
    logger,
    policy,
    onResponse: (request, response) => consent.audit.record(request, response),
    beforeAuditRead: () => consent.audit.flush(),
    guards: [scopes, consent.policy, ledger.guard],
    serverTagSystems: [INTEGRITY_TAG_SYSTEM],
    capabilityStatement: () => buildCapabilityStatement({
      fhirBase: base,
      version: VERSION,
      searchParams: repository.supportedSearchParams(),
      operations: fhir.registeredOperations(),
      handledWriteTypes: fhir.handledWriteTypes(),
      instantiates: ['http://hl7.org/fhir/uv/cgm/CapabilityStatement/cgm-data-receiver'],
      profilesByType,
      security: config.auth === 'on' ? smart.capabilitySecurity() : undefined,
      date: started,
    }),
  });

  const cgm = {
    ingest: new CgmIngestService({
      repository, check: shapeCachedCheck((r) => validator.check(r)), defaultTimeZone: config.defaultTimeZone,
      // Bulk path through the ledger decorator, so bulk-created readings are committed too.
      ...(adapter instanceof EmbeddedRepository ? { bulkCreate: (r: Resource[]) => repository.createMany(r) } : {}),
      // one import of a patient at a time among the processes on the data directory (src/cgm/turns.ts)
      turns: new ImportTurns(ledger.store),
    }),
    operations: new CgmOperations({ fhir, fhirBase: base }),
  };
  for (const op of cgm.operations.handlers()) fhir.registerOperation(op);
  for (const op of standardOperations(fhir, base)) fhir.registerOperation(op);
  await consent.attach(fhir).catch(opened.fail);
  // Bulk $export, Subscriptions, de-identification for research requesters.
  // Research requests are refused by `policy` (the REST API) and decided by this one: the exchange de-identifies them.
  const exchange: Exchange = opened.add(await createExchange({
    dataDir: config.dataDir, rootKey: keys.root, fhir, policy: new ComposedPolicy([scopes, consent.policy.deidentifyingPolicy()]), repository, fhirBase: base, baseUrl: config.baseUrl, logger,
    authenticate: async (headers, url) => withPurpose(await smart.authenticate(headers, url), headers),
    audit: (request, response) => consent.audit.record(request, response),
    commitments: ledger.store, // subscriptions notify versions other processes (CLI ingest) commit
    // a Subscription stops delivering once its client or user is disabled, as their tokens stop working
    requesterCutOff: (a) => a.kind === 'token' && a.clientId !== undefined && smart.tokens.isCutOff(a.clientId, a.subject ?? a.clientId, a.storedAt ?? 0),
    settings: config.exchange, // validated with the rest of the configuration (src/config.ts)
  }).catch(opened.fail), (e) => e.close());

  const http = express();
  http.disable('x-powered-by');
  http.set('trust proxy', config.trustProxy); // GLUCOGUARD_TRUST_PROXY: whose X-Forwarded-For req.ip (the per-IP rate limits) believes
  const readiness = new Readiness(logger, [repositoryCheck(repository), kvCheck(kv), chainCheck(chain.client), anchoringCheck(ledger.anchorer)]);
  http.use(requestObservability({ logger, isFhirOperation: (name) => fhir.registeredOperations().some((op) => op.name === name) }));
  http.use(securityHeaders());
  http.use(observabilityRouter(readiness));
  http.use(smart.router);
  // Bulk export files (streamed NDJSON) compressed when the client asks (Accept-Encoding), from
  // 1 kB up; FHIR answers are coded in one piece by src/fhir/http.ts (see sendCoded there).
  // (the library's own filter does not know application/fhir+ndjson as compressible).
  if (config.compression === 'on') http.use('/exports', compression({ filter: (req, res) => /ndjson/.test(String(res.getHeader('Content-Type'))) || compression.filter(req, res) }));
  http.use('/fhir', fhirHttpRouter({
    router: fhir, authenticate: async (headers, url) => withPurpose(await smart.authenticate(headers, url), headers), maxBodyBytes: config.maxBodyBytes, logger, compress: config.compression === 'on',
    onUnauthenticated: (request, status) => consent.audit.recordUnauthenticated(request, status),
  }));
  http.use('/exports', cors, exchange.filesRouter);
  http.use('/cgm', cors, cgmHttpRouter({
    service: cgm.ingest, authenticate: (headers, url) => smart.authenticate(headers, url),
    // an import creates readings and corrects stored ones: both, as POST and PUT of such an
    // Observation would need them (scopes, then consent: a grantee can't place a reading without
    // its time in a granted period, so only the patient, their apps and system clients import); a
    // removal deletes them, as DELETE would need
    mayWriteObservations: async (access, patient, remove) => {
      const reading: Observation = { resourceType: 'Observation', status: 'final', code: { text: 'CGM reading' }, subject: { reference: `Patient/${patient}` } };
      for (const interaction of remove ? ['delete'] as const : ['create', 'update'] as const) {
        await policy.authorize(access, interaction, 'Observation');
        if (!(await policy.mayWrite(access, reading, interaction))) return false;
      }
      return true;
    },
    // in the patient's access log as a create of their readings (a guardian's import included), a
    // removal as a delete of them, a dry run as a search
    record: (access, patient, status, as) => consent.audit.record(
      { method: ({ create: 'POST', delete: 'DELETE', search: 'GET' } as const)[as], path: 'Observation', query: { patient }, headers: {}, access }, { status }),
    logger,
    maxBytes: config.maxIngestBytes,
  }));
  const web = createWeb({ config, fhirBase: base, smart, repository, consent, logger, register: options.registerWebApps !== false });
  http.use(web.router);
  http.get('/', (_req, res) => {
    res.json({ name: 'GlucoGuard', version: VERSION, fhir: base });
  });
  // Keep these two last: JSON 404 and the one error handler for errors that escape a router.
  http.use(notFoundHandler());
  http.use(finalErrorHandler(logger));

  const adapters = [
    {
      port: 'repository',
      adapter: repository.description.adapter,
      // how it is reached, and whether versions without a commitment are served: both decide what clients see
      location: [repository.description.location, repository.description.access, `integrity ${config.integrity}`].filter(Boolean).join('; '),
    },
    { port: 'kv', adapter: kv.description.adapter, location: kv.description.location },
    {
      port: 'chain',
      adapter: chain.embedded ? `embedded Clique node (${chain.embedded.thread === 'worker' ? 'own thread' : 'request thread'})` : chain.shared ? 'embedded Clique node of the running server' : 'JSON-RPC',
      location: chain.embedded || chain.shared ? `${path.join(config.dataDir, 'chain')} (RPC ${chain.client.description.location})` : chain.client.description.location,
    },
    {
      port: 'master key',
      adapter: config.masterKey ? 'env' : 'file',
      location: (config.masterKey ? 'GLUCOGUARD_MASTER_KEY' : masterKeyPath(config.dataDir))
        + (keys.root === keys.master ? '' : `; key root sealed in ${rootSealPath(config.dataDir)}`),
    },
  ];

  return {
    config,
    logger,
    http,
    fhir,
    repository,
    kv,
    smart,
    chain: chain.client,
    consent,
    ledger,
    cgm,
    readiness,
    web,
    ...(adapter instanceof EmbeddedRepository ? {
      readCache: adapter.decoded,
      erasePatient: async (patientId: string, operator: string) => {
        let resources = 0;
        let repeat: unknown;
        try {
          ({ resources } = await adapter.eraseSubject(patientId));
        } catch (err) {
          if (!isGlucoGuardError(err, 'ERR_GONE')) throw err;
          repeat = err; // already erased: only salts a stopped erasure left behind are still to go
        }
        const commitments = await ledger.repository.forgetUnreadableSalts(patientId);
        if (repeat && commitments === 0) throw repeat;
        ledger.checker.clearCache(); // proven versions keep their salts in memory
        ledger.proveAhead(); // again, without the erased salts
        const event = await repository.create(erasureAuditEvent({ patientId, operator, resources, commitments, recorded: new Date().toISOString(), finished: repeat !== undefined }));
        return { resources, commitments, auditEvent: event.resource.id!, ...(repeat ? { finished: true } : {}) };
      },
      reindex: (onProgress?: (done: number, total: number) => void, options?: { chunk?: number; background?: boolean; all?: boolean }) => adapter.reindex(onProgress, options),
      indexGeneration: () => adapter.indexGeneration,
    } : {}),
    adapters,
    exchange,
    close: () => opened.close(),
  };
}

/** `work`'s result as a promise, a throw of it included (so `.catch` sees both). */
function attempt<T>(work: () => T | Promise<T>): Promise<T> {
  return Promise.resolve().then(work);
}

/**
 * What a start has opened, closed newest first: by the app's close(), and by a step of the start
 * that fails (`fail`: everything opened so far is closed, then the step's error thrown).
 */
class Opened {
  private readonly closers: (() => Promise<unknown>)[] = [];

  /** Records how to close `value`, just opened; answers `value`. */
  add<T>(value: T, close: (value: T) => Promise<unknown>): T {
    this.closers.unshift(() => close(value));
    return value;
  }

  /** Closes everything, newest first, each even when another fails; then throws the first failure. */
  async close(): Promise<void> {
    let failed: { err: unknown } | undefined;
    for (const close of this.closers.splice(0)) {
      await close().catch((err: unknown) => {
        failed ??= { err };
      });
    }
    if (failed) throw failed.err;
  }

  /** For `.catch` on a step of the start: closes what was opened (its failures ignored), then throws `err`. */
  readonly fail = async (err: unknown): Promise<never> => {
    await this.close().catch(() => undefined);
    throw err;
  };
}
