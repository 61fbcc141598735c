/**
 * The `glucoguard` command. `serve` runs the proxy; the other commands are operator tools that
 * work on the same data directory / upstream as the server.
 */
import { existsSync } from 'node:fs';
import type { Server } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { hostname, userInfo } from 'node:os';
import type { AuditEvent, Bundle, Patient as PatientResource } from '@medplum/fhirtypes';
import { Operator } from '@medplum/core';
import { Command, CommanderError, Help, InvalidArgumentError } from 'commander';
import { createHttpServer, shutDown } from './server.js';
import { UsageError, withApp, type OpenApp } from './cli-app.js';
import { isGlucoGuardError } from './errors.js';
import { resourceExists } from './repository/exists.js';
import type { Repository } from './repository/port.js';
import { OPEN_ACCESS } from './fhir/access.js';
import { ConfigError, fhirBase, loadConfig, prepareDataDir, type Config } from './config.js';
import { createLogger } from './log.js';
import { VERSION } from './paths.js';
import { registerSmartCommands } from './smart/cli.js';
import { registerCgmCommands } from './cgm/cli.js';
import { registerConsentCommands } from './consent/cli.js';
import { registerLedgerCommands } from './ledger/cli.js';
import { describeServerKeys, holdsInstallation, loadServerKeys, masterKeyPath, masterKeySource, readKeyFile, rootSealPath } from './keys.js';
import { registerExchangeCommands } from './exchange/cli.js';

// The app, its stores and what only some commands use are imported by the action that needs them
// (`await import(…)`), not here: --help and a command given wrongly answer without loading them
// (about 1 s of module loading).

// Everything GlucoGuard creates under the data directory (and the files a command writes) is for
// its own user only: keys, stores, export files, job and subscription state (patient and grant ids).
// Set before any command runs, so no file or folder is ever created readable by others, whatever
// the module creating it asks for; the chain node's thread shares the process's mask.
process.umask(0o077);

/** The configuration this process loaded (what the error handler names a setting from). */
let loaded: Config | undefined;

function config(): Config {
  try {
    loaded = loadConfig();
    return loaded;
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(`glucoguard: ${err.message}`);
      process.exit(2);
    }
    throw err;
  }
}

/** Who runs an administrative command, as its AuditEvent names them. */
function operatorName(): string {
  let user = process.env.USER ?? 'unknown user';
  try {
    user = userInfo().username;
  } catch {
    // no passwd entry for this uid (containers): keep $USER
  }
  return `${user} on ${hostname()} (glucoguard CLI)`;
}

/** Commander has already printed why the command line is wrong (or printed help/version); only the exit code is left. */
class CommanderExit extends Error {
  constructor(readonly exitCode: number) {
    super('commander exit');
  }
}

/**
 * The configuration, refusing a data directory with no installation unless the command sets one up
 * (cli-app.ts OpenApp), and one this process cannot write (a read-only mount, another owner) with
 * the reason before anything opens it. `readOnly`: the command only reads keys (`keys status`).
 */
function configFor(options: { setUp?: boolean; readOnly?: boolean } = {}): Config {
  const cfg = checkedConfig(options);
  if (options.setUp) prepareDataDir(cfg.dataDir, { create: true, write: true });
  return cfg;
}

/** configFor's checks alone: a command that sets an installation up creates nothing yet (see setUpDataDir). */
function checkedConfig(options: { setUp?: boolean; readOnly?: boolean } = {}): Config {
  const cfg = config();
  prepareDataDir(cfg.dataDir, { create: false, write: !options.readOnly });
  if (!options.setUp && !holdsInstallation(cfg.dataDir)) throw new UsageError(`no GlucoGuard data in ${cfg.dataDir}; set GLUCOGUARD_DATA_DIR`);
  return cfg;
}

/** Sets an installation up in the data directory (the directory, its master key and key root), or checks the one there opens. */
function setUpDataDir(cfg: Config): void {
  prepareDataDir(cfg.dataDir, { create: true, write: true });
  loadServerKeys(cfg);
}

/** The app as a one-off command opens it: logs at warn to stderr (stdout carries the result). */
const openApp: OpenApp = async (options = {}) => {
  const cfg = checkedConfig(options);
  if (options.withoutData && !cfg.upstream && !holdsInstallation(cfg.dataDir)) throw options.withoutData;
  if (options.setUp) prepareDataDir(cfg.dataDir, { create: true, write: true });
  const { createApp } = await import('./app.js');
  return createApp(cfg, { logger: createLogger('warn', process.stderr), registerWebApps: false });
};
const setUpApp = () => openApp({ setUp: true });

/** The listen error of `port` in words (serve's listen and its check before the set-up say the same). */
function listenProblem(port: number, code: string | undefined, message: string): string {
  return `cannot listen on port ${port}: ${code === 'EADDRINUSE' ? 'it is in use by another process; stop it, or set PORT to a free port' : code === 'EACCES' ? 'permission denied (PORT below 1024 needs privileges)' : message}`;
}

/** Refuses (exit 2) a port in use or one this process may not bind, by binding it for a moment. */
async function portAvailable(port: number, host: string): Promise<void> {
  const probe = createNetServer();
  await new Promise<void>((resolve, reject) => {
    probe.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EADDRINUSE' || err.code === 'EACCES') reject(new UsageError(listenProblem(port, err.code, err.message)));
      else resolve(); // anything else is for the real listen to report
    });
    probe.listen(port, host, () => probe.close(() => resolve()));
  });
}

/** A real calendar date as YYYY, YYYY-MM or YYYY-MM-DD (commander names the option when this refuses). */
function birthDate(v: string): string {
  const full = /^\d{4}-\d{2}-\d{2}$/.test(v) ? v : /^\d{4}-\d{2}$/.test(v) ? `${v}-01` : /^\d{4}$/.test(v) ? `${v}-01-01` : undefined;
  if (!full) throw new InvalidArgumentError('expected YYYY, YYYY-MM or YYYY-MM-DD');
  const parsed = new Date(`${full}T00:00:00Z`);
  if (Number.isNaN(parsed.getTime()) || parsed.toISOString().slice(0, 10) !== full) throw new InvalidArgumentError(`${v} is not a calendar date (YYYY-MM-DD)`);
  return v;
}

const program = new Command();
// Set before any subcommand is added, which inherits it: usage errors reach the handler at the end.
program.exitOverride((err) => {
  throw new CommanderExit(err.exitCode === 0 ? 0 : 2);
});
// Set before any subcommand is added too: a required option says so in every command's help
// (commander's own text marks defaults, not this).
program.configureHelp({
  optionDescription(option) {
    const text = Help.prototype.optionDescription.call(this, option);
    return option.mandatory ? `${text} (required)` : text;
  },
});
program.name('glucoguard').description('GlucoGuard: SMART-on-FHIR proxy for CGM data with on-chain consent').version(VERSION);

program
  .command('serve')
  .description('run the proxy (FHIR endpoint at <base>/fhir) on the configured adapters')
  .action(async () => {
    // a port that cannot be had is refused before the installation is set up (nothing created for it)
    const config0 = config();
    if (config0.port !== 0) await portAvailable(config0.port, config0.host);
    const cfg = configFor({ setUp: true });
    const { createApp, checkUpstreamAccessLog } = await import('./app.js');
    const { INDEX_GENERATION } = await import('./repository/embedded/params.js');
    const { recordServedFhirBase } = await import('./smart/launch.js');
    const app = await createApp(cfg);
    const { logger } = app;
    for (const a of app.adapters.map((x) => (x.port === 'master key' ? withKeySource(x, cfg) : x))) {
      logger.info({ port: a.port, adapter: a.adapter, location: a.location }, `${a.port}: ${a.adapter} (${a.location})`);
    }
    void checkUpstreamAccessLog(app.ledger.repository.adapter, logger);
    // a server that takes long search URLs and answers malformed requests with an OperationOutcome (server.ts)
    const server: Server = createHttpServer(app.http);
    server.once('error', (err: NodeJS.ErrnoException) => {
      // a listen error: say it and stop, never "listening"
      const code = err.code;
      logger.error({ port: cfg.port, code }, listenProblem(cfg.port, code, err.message));
      // a port held by another process or below 1024 is configured wrongly: exit 2, as CHAIN_PORT's
      void app.close().finally(() => process.exit(code === 'EADDRINUSE' || code === 'EACCES' ? 2 : 1));
    });
    server.listen(cfg.port, cfg.host, () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : cfg.port;
      logger.info({ fhirBase: fhirBase(cfg), port }, `GlucoGuard ${VERSION} listening on port ${port}: FHIR base ${fhirBase(cfg)}`);
      // operator commands beside it (launch create) make launches for this base, whatever their own settings
      recordServedFhirBase(app.kv, fhirBase(cfg)).catch((err: unknown) => logger.warn({ err }, 'could not record the FHIR base in the KV store: `launch create` uses its own settings'));
      logger.info({ portal: app.web.urls.portalLaunch, clinicianLaunchUri: app.web.urls.clinicianLaunch, clinicianClientId: app.web.clients.clinician },
        `apps: patient portal ${app.web.urls.portalLaunch}; clinician viewer launch_uri ${app.web.urls.clinicianLaunch} (client_id ${app.web.clients.clinician})`);
    });
    server.keepAliveTimeout = 5000;
    let stopping = false;
    if (app.reindex && app.indexGeneration && app.indexGeneration() < INDEX_GENERATION && cfg.autoReindex === 'on') {
      // Searches stay correct meanwhile (newer parameters are matched without their index); small
      // chunks with a pause after each (as long as the chunk took) leave requests most of the thread.
      const started = Date.now();
      let logged = 0;
      logger.info({ from: app.indexGeneration(), to: INDEX_GENERATION }, 'rebuilding the search index in the background (GLUCOGUARD_AUTO_REINDEX=off to leave it to `glucoguard reindex`)');
      app.reindex((done, total) => {
        if (Date.now() - logged < 10_000) return;
        logged = Date.now();
        logger.info({ done, total }, `search index: ${done} of ${total} current versions rebuilt`);
      }, { chunk: 100, background: true }).then(({ versions, unreadable, generation }) => {
        logger.info({ versions, unreadable, generation, seconds: (Date.now() - started) / 1000 }, `search index rebuilt: ${versions} current versions, index generation ${generation}`);
      }, (err: unknown) => {
        if (stopping) logger.info('search index rebuild stopped by the shutdown; it starts again at the next start');
        else logger.error({ err }, 'search index rebuild failed; searches stay correct, run `glucoguard reindex`');
      });
    }
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      void shutDown(server, app, { signal }).then((code) => {
        logger.flush?.();
        process.exit(code);
      });
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });

const patients = program.command('patients').description('manage patients in the repository');
patients
  .command('create')
  .description('create a Patient and print its id')
  .requiredOption('--given <name>', 'given name')
  .requiredOption('--family <name>', 'family name')
  .option('--birth-date <YYYY-MM-DD>', 'birth date', birthDate)
  .option('--gender <gender>', 'male | female | other | unknown')
  .action(async (opts: { given: string; family: string; birthDate?: string; gender?: string }) => {
    // Through the whole app, so the Patient is validated, committed for anchoring and audited like any write.
    await withApp(setUpApp, async (app) => {
      const patient: PatientResource = {
        resourceType: 'Patient',
        active: true,
        name: [{ given: [opts.given], family: opts.family }],
        ...(opts.birthDate ? { birthDate: opts.birthDate } : {}),
        ...(opts.gender ? { gender: opts.gender as PatientResource['gender'] } : {}),
      };
      const res = await app.fhir.handle({
        method: 'POST', path: 'Patient', query: {}, headers: { 'content-type': 'application/fhir+json' }, body: patient, access: OPEN_ACCESS,
      });
      if (res.status !== 201) {
        const issues = (res.body as { issue?: { diagnostics?: string }[] } | undefined)?.issue ?? [];
        throw new Error(issues.map((i) => i.diagnostics).join('; ') || `status ${res.status}`);
      }
      console.log((res.body as PatientResource).id);
    });
  });

patients
  .command('find')
  .description('find patients by name, birth date or identifier: id, name, birth date, identifiers (a FHIR search, in the access log)')
  .option('--name <text>', 'any part of a name, from its start (FHIR name search)')
  .option('--birth-date <YYYY-MM-DD>', 'birth date', birthDate)
  .option('--identifier <system|value>', 'an identifier, e.g. urn:mrn|12345 (or just the value)')
  .option('--limit <n>', 'at most this many, up to 500', (v) => {
    if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > 500) throw new InvalidArgumentError('a whole number from 1 to 500');
    return Number(v);
  }, 20)
  .action(async (opts: { name?: string; birthDate?: string; identifier?: string; limit: number }) => {
    if (!opts.name && !opts.birthDate && !opts.identifier) throw new UsageError('give --name, --birth-date or --identifier (or several): the command does not list every patient');
    await withApp(openApp, async (app) => {
      const query: Record<string, string> = { _count: String(opts.limit) };
      if (opts.name) query.name = opts.name;
      if (opts.birthDate) query.birthdate = opts.birthDate;
      if (opts.identifier) query.identifier = opts.identifier;
      // through the FHIR router, so the search is the API's and the access is logged like any other
      const res = await app.fhir.handle({ method: 'GET', path: 'Patient', query, headers: {}, access: OPEN_ACCESS });
      const body = res.body as Bundle<PatientResource> & { issue?: { diagnostics?: string }[] };
      if (res.status !== 200) throw new UsageError(body.issue?.map((i) => i.diagnostics).join('; ') || `status ${res.status}`);
      const found = (body.entry ?? []).map((e) => e.resource!).filter((r) => r.resourceType === 'Patient');
      if (!found.length) console.log('no patient matches');
      for (const p of found) {
        const name = (p.name ?? []).map((n) => [...(n.given ?? []), n.family].filter(Boolean).join(' ')).filter(Boolean).join(' / ') || '(no name)';
        const ids = (p.identifier ?? []).map((i) => `${i.system ? `${i.system}|` : ''}${i.value ?? ''}`).join(', ');
        console.log([p.id, name, p.birthDate ?? '-', ids].filter(Boolean).join('  '));
      }
      if (body.link?.some((l) => l.relation === 'next')) console.log(`… more than ${opts.limit}: narrow the search or raise --limit`);
    });
  });

patients
  .command('erase')
  .description('right to erasure: destroy the patient\'s data key (every version of their data becomes unreadable) and the salts of its commitments')
  .requiredOption('--patient <id>', 'the Patient id')
  .option('--yes', 'confirm: this cannot be undone')
  .action(async (opts: { patient: string; yes?: boolean }) => {
    if (!opts.yes) throw new UsageError(`erasing Patient/${opts.patient} cannot be undone: run again with --yes to confirm`);
    await withApp(openApp, async (app) => {
      if (!app.erasePatient) throw new Error('erasure is for the embedded repository; an upstream FHIR server erases data by its own means');
      // A running server keeps data keys and decoded versions in memory: it must not go on serving them.
      const { anchoringElsewhere } = await import('./ledger/anchor.js');
      const server = anchoringElsewhere(app.ledger.store);
      if (server) throw new Error(`another GlucoGuard process is using this data directory (${server}: a server, or an import writing through it): stop it or let it finish first, then erase`);
      let erased;
      try {
        erased = await app.erasePatient(opts.patient, operatorName());
      } catch (err) {
        // a repeat (a retry after a timeout) with nothing stored since: already done, and nothing changed (exit 0)
        if (!isGlucoGuardError(err, 'ERR_GONE')) throw err;
        const on = await erasedOn(app.repository, opts.patient);
        console.log(`Patient/${opts.patient}: already erased${on ? ` (on ${on})` : ''}; nothing changed`);
        return;
      }
      const { resources, commitments, auditEvent, finished } = erased;
      console.log(finished
        ? `Patient/${opts.patient}: an earlier erasure had destroyed the data key and stopped; finished it: salts of ${commitments} commitments overwritten; recorded as AuditEvent/${auditEvent}`
        : `Patient/${opts.patient}: data key destroyed, ${resources} current resources unreadable; salts of ${commitments} commitments overwritten; recorded as AuditEvent/${auditEvent}`);
    });
  });

/** When the patient's latest erasure was recorded (its AuditEvent, src/audit/erasure.ts), if it can be found. */
async function erasedOn(repository: Repository, patientId: string): Promise<string | undefined> {
  const { resources } = await repository.search({
    resourceType: 'AuditEvent', filters: [{ code: 'patient', operator: Operator.EQUALS, value: `Patient/${patientId}` }],
    sortRules: [{ code: 'date', descending: true }], count: 100, offset: 0,
  });
  return (resources as AuditEvent[]).find((e) => e.subtype?.some((c) => c.code === 'destroy'))?.recorded;
}

program
  .command('reindex')
  .description('rebuild the embedded store\'s search index (after an upgrade that indexes more search parameters; progress on stderr)')
  .option('--all', 'rebuild every type, not only those with parameters indexed since the store\'s generation')
  .action(async (opts: { all?: boolean }) => {
    await withApp(openApp, async (app) => {
      if (!app.reindex) throw new Error('reindex is for the embedded repository; an upstream FHIR server indexes by its own means');
      const { INDEX_GENERATION } = await import('./repository/embedded/params.js');
      const { anchoringElsewhere } = await import('./ledger/anchor.js');
      if (!opts.all && app.indexGeneration && app.indexGeneration() >= INDEX_GENERATION) {
        console.log(`the search index is up to date (generation ${app.indexGeneration()}): nothing to rebuild; --all rebuilds every type`);
        return;
      }
      const started = Date.now();
      let shown = 0;
      const { versions, unreadable, generation } = await app.reindex((done, total) => {
        if (Date.now() - shown < 1000 && done < total) return;
        shown = Date.now();
        process.stderr.write(`reindex: ${done.toLocaleString('en')} of ${total.toLocaleString('en')} current versions\n`);
      }, { all: !!opts.all });
      console.log(`reindexed ${versions} current versions in ${((Date.now() - started) / 1000).toFixed(1)} s`
        + `${unreadable ? ` (${unreadable} unreadable: their patient's data key was erased)` : ''}; index generation ${generation}`);
      if (anchoringElsewhere(app.ledger.store)) console.log('a server is running on this data directory: restart it to use the new index');
    });
  });

const keys = program.command('keys').description('the master key that wraps the data directory\'s keys (docs/operations.md)');
keys
  .command('status')
  .description('where the master key comes from, whether it was rotated, fingerprints to compare replicas (never the keys)')
  .action(() => {
    const { lines, problem } = describeServerKeys(configFor({ readOnly: true }));
    for (const line of lines) console.log(line);
    if (problem) throw new Error(problem);
  });

keys
  .command('bind-row-times')
  .description('after an upgrade, once no process of an earlier release runs on this data directory: every row written from now on binds its write time (meta.lastUpdated) into its encryption (docs/operations.md, Upgrading)')
  .action(async () => {
    const cfg = configFor();
    if (cfg.upstream && cfg.auditStore !== 'local') throw new UsageError('bind-row-times is for the embedded store; this installation keeps its data on an upstream FHIR server');
    const { EmbeddedRepository } = await import('./repository/embedded/index.js');
    const repo = await EmbeddedRepository.open({ dataDir: cfg.dataDir, keys: loadServerKeys(cfg), readCacheBytes: 0, mmapBytes: 0 });
    try {
      const already = repo.bindsRowTimes;
      const from = await repo.bindRowTimes();
      console.log(already
        ? `rows already bind their write time (from row ${from}): nothing to do`
        : `rows written from now on (row ${from} and after) bind their write time; a server running on this data directory does so from its next start`);
    } finally {
      await repo.close();
    }
  });
keys
  .command('rotate-master')
  .description('put every data key of the store under a new master key, keeping the key root (pseudonyms, custodial wraps); stop the server first')
  .option('--new-key-file <file>', 'the new key (32 bytes, base64) when GLUCOGUARD_MASTER_KEY or GLUCOGUARD_MASTER_KEY_FILE gives the current one')
  .option('--resume', 'finish a rotation that was interrupted')
  .option('--yes', 'confirm: afterwards only the new key opens this data directory')
  .action(async (opts: { newKeyFile?: string; resume?: boolean; yes?: boolean }) => {
    if (!opts.yes) throw new UsageError('after the rotation only the new master key opens this data directory: run again with --yes to confirm');
    // a rotation on an empty (mistyped) directory would make a whole new installation and call it rotated
    const cfg = configFor();
    if (opts.newKeyFile !== undefined && !cfg.masterKey) {
      throw new UsageError(`--new-key-file is for a master key given by GLUCOGUARD_MASTER_KEY or GLUCOGUARD_MASTER_KEY_FILE; this data directory's key is the file ${masterKeyPath(cfg.dataDir)}, and the rotation makes the new key itself: leave --new-key-file out`);
    }
    const { createApp } = await import('./app.js');
    const { commitmentStorePath } = await import('./ledger/index.js');
    const { CommitmentStore } = await import('./ledger/store.js');
    const { anchoringElsewhere } = await import('./ledger/anchor.js');
    const { keyRotationAuditEvent, rotateMasterKey } = await import('./key-rotation.js');
    // A running server holds data keys and the old master key in memory and would write new keys under it.
    const storeFile = commitmentStorePath(cfg.dataDir);
    if (existsSync(storeFile)) {
      const store = new CommitmentStore(storeFile);
      let server: string | undefined;
      try {
        server = anchoringElsewhere(store);
      } finally {
        store.close();
      }
      if (server) throw new Error(`another GlucoGuard process is using this data directory (${server}: a server, or an import writing through it): stop it or let it finish first, then rotate`);
    }
    const newKey = opts.newKeyFile === undefined ? undefined : newKeyFrom(opts.newKeyFile);
    const result = rotateMasterKey({ config: cfg, ...(newKey !== undefined ? { newKey } : {}), ...(opts.resume ? { resume: true } : {}) });
    // the rotation is done whatever happens to its record: say so first
    const keys = result.dataKeys;
    console.log(`master key rotated: ${keys ? `${keys.rewrapped} data keys re-wrapped${keys.already ? ` (${keys.already} already were)` : ''}, ${keys.erased} erased left as they were` : 'no embedded store'}; `
      + `key root sealed in ${rootSealPath(cfg.dataDir)}`);
    console.log(result.held === 'file'
      ? `the new key is in ${masterKeyPath(cfg.dataDir)}: back it up; the old key opens only backups made before now`
      : 'now give the new key to every server of this data directory (GLUCOGUARD_MASTER_KEY or GLUCOGUARD_MASTER_KEY_FILE); the old key no longer opens it');
    const reopened = { ...cfg, ...(result.newKey !== undefined ? { masterKey: result.newKey } : {}) };
    try {
      const event = await withApp(() => createApp(reopened, { logger: createLogger('warn', process.stderr), registerWebApps: false }),
        (app) => app.repository.create(keyRotationAuditEvent(operatorName(), result)));
      console.log(`recorded as AuditEvent/${event.resource.id}`);
    } catch (err) {
      throw new Error(`the rotation is complete, but its AuditEvent could not be written: ${(err as Error).message}`);
    }
  });

/** The new key `--new-key-file` names; a file that cannot be read or holds no key is a wrong option value (exit 2). */
function newKeyFrom(file: string): string {
  try {
    return readKeyFile(file);
  } catch (err) {
    throw new UsageError(`--new-key-file: ${(err as Error).message}`);
  }
}

/**
 * The master-key line of the start-up log naming where the key really comes from (the setting, and
 * the file GLUCOGUARD_MASTER_KEY_FILE names), keeping what the app adds (a sealed key root).
 */
function withKeySource(adapter: { port: string; adapter: string; location: string }, cfg: Config) {
  const source = masterKeySource(cfg);
  const sealed = adapter.location.indexOf('; key root sealed in ');
  return { port: adapter.port, adapter: source.adapter, location: source.location + (sealed >= 0 ? adapter.location.slice(sealed) : '') };
}

// Logs go to stderr: stdout carries the command's result.
registerCgmCommands(program, openApp);
registerConsentCommands(program, openApp);
registerExchangeCommands(program, openApp);

registerLedgerCommands(program, config, () => configFor());

registerSmartCommands(program, async (options) => {
  // A command that sets an installation up (users add, clients add) makes it only once its input
  // passed (setUp below): one refused creates nothing, in a missing data directory least of all.
  const cfg = checkedConfig(options);
  const { createKeyValueStore, createRepository } = await import('./app.js');
  // the repository only for the command that asks (users add: does its fhirUser exist?)
  let repository: Repository | undefined;
  const resourceExistsHere = async (type: string, id: string) => {
    // an embedded repository not set up yet holds nothing: not made for the question
    if (!cfg.upstream && !holdsInstallation(cfg.dataDir)) return false;
    repository ??= await createRepository(cfg, createLogger('warn', process.stderr));
    return resourceExists(repository, type, id);
  };
  // the server's own KV (launch create hands it a launch): Redis, or the data directory's embedded
  // file; none before an installation is set up (a command that needs it refuses a directory without one)
  const kv = holdsInstallation(cfg.dataDir) ? await createKeyValueStore(cfg, createLogger('warn', process.stderr)) : undefined;
  return {
    config: cfg, resourceExists: resourceExistsHere, kv,
    setUp: () => setUpDataDir(cfg),
    close: async () => {
      await repository?.close();
      await kv?.close();
    },
  };
});

/** What a file the operator named could not be read for, in words (Node's own message leads with the errno). */
const FILE_ERRORS: Record<string, string> = {
  ENOENT: 'no such file or directory', EACCES: 'permission denied', EPERM: 'permission denied', EISDIR: 'is a directory, not a file', ENOTDIR: 'a part of the path is not a directory',
};

function fileError(e: { code?: string; path?: unknown }): string | undefined {
  const words = e.code ? FILE_ERRORS[e.code] : undefined;
  if (!words) return undefined;
  if (typeof e.path === 'string') return `${e.path}: ${words}`;
  // reading a directory fails after it opened, so that error names no path
  return e.code === 'EISDIR' ? 'a path given as a file is a directory' : undefined;
}

program.parseAsync(process.argv).catch((err: unknown) => {
  if (err instanceof CommanderExit) process.exit(err.exitCode);
  // found while starting (the upstream's token endpoint refused the client): a configuration error like any other;
  // and a command given wrongly (a bad option value found by the command itself)
  if (err instanceof ConfigError || err instanceof UsageError || err instanceof CommanderError) {
    console.error(`glucoguard: ${err.message}`);
    process.exit(2);
  }
  const e = err as { code?: string; path?: unknown; address?: unknown; issues?: { diagnostics?: string }[]; message?: string };
  // a data file this process cannot open or write (src/sqlite.ts names the file and why): the data directory is configured wrongly
  if (e.code === 'ERR_DATA_DIR') {
    console.error(`glucoguard: ${e.message}; check GLUCOGUARD_DATA_DIR and its permissions`);
    process.exit(2);
  }
  // serve's own port is handled where it listens: a port in use here is the embedded chain node's
  if (e.code === 'EADDRINUSE' && loaded && !loaded.chain.rpcUrl) {
    const port = loaded.chain.embeddedPort;
    console.error(`glucoguard: CHAIN_PORT: port ${port}${typeof e.address === 'string' ? ` on ${e.address}` : ' on 127.0.0.1'} (the embedded chain node's JSON-RPC port) is in use by another process: `
      + 'stop that process, or set CHAIN_PORT to a free port (0 picks one)');
    process.exit(2);
  }
  console.error(`glucoguard: ${e.issues?.map((i) => i.diagnostics).join('; ') ?? fileError(e) ?? e.message ?? String(err)}`);
  process.exit(1);
});
