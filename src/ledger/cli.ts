/**
 * Ledger commands: `glucoguard chain node|status|deploy` and `glucoguard verify`.
 * status and verify work while `serve` runs: they talk to its embedded node over JSON-RPC (the
 * node's database is single-process) and read the commitment store alongside it (SQLite WAL).
 */
import { existsSync, readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { isGlucoGuardError } from '../errors.js';
import { Wallet, type JsonRpcProvider } from 'ethers';
import { chainDatabaseInUse, nodeIdentity } from './embedded-endpoint.js';
import { assertCommitmentStorePresent, assertEmbeddedChainPresent, missingCommitmentStore } from './restore.js';
import type { Config } from '../config.js';
import { createLogger, type Logger } from '../log.js';
import { loadAuthorityKey, readDeployment, serveUntilSignal, startEmbeddedChain } from '../../chain/node/index.js';
import { ChainClient } from './client.js';
import { CommitmentStore } from './store.js';
import type { CompletenessReport } from './completeness.js';

// The app and the ledger's checks are imported by the commands that run them (src/cli.ts says why).

/**
 * The chain as configured, reusing an embedded node already serving this data directory (one that
 * answers with this directory's chain and has its database open: src/ledger/embedded-endpoint.ts).
 * Never creates an embedded chain: status and verify only look (src/ledger/restore.ts).
 */
async function openChain(config: Config, logger: Logger): Promise<{ client: ChainClient; close(): Promise<void> }> {
  if (!config.chain.rpcUrl) assertEmbeddedChainPresent(config.dataDir, { create: false });
  const deployment = readDeployment(config.dataDir);
  if (!config.chain.rpcUrl && deployment && config.chain.embeddedPort) {
    const url = `http://127.0.0.1:${config.chain.embeddedPort}`;
    const answer = await nodeIdentity(url, deployment.chainId);
    // a node of another data directory (another installation, or a copy of this one) may answer on that port
    if (answer?.chainId === deployment.chainId && answer.genesisHash === deployment.genesisHash && (await chainDatabaseInUse(config.dataDir))) {
      const client = new ChainClient({
        rpcUrl: url, chainId: deployment.chainId, authorityKey: loadAuthorityKey(config.dataDir), addresses: deployment.contracts, adapter: 'embedded',
      });
      return { client, close: () => client.close() };
    }
  }
  const { createChain } = await import('../app.js');
  const chain = await createChain({ ...config, chain: { ...config.chain, embeddedPort: 0 } }, logger, { create: false });
  return {
    client: chain.client,
    async close() {
      await chain.client.close();
      await chain.embedded?.close();
    },
  };
}

async function signersOf(provider: JsonRpcProvider): Promise<string[] | undefined> {
  for (const [method, params] of [['clique_getSigners', ['latest']], ['qbft_getValidatorsByBlockNumber', ['latest']]] as const) {
    try {
      return (await provider.send(method, [...params])) as string[];
    } catch {
      // not this engine
    }
  }
  return undefined;
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}

/**
 * `loadConfig`: the configuration; `installed`: the same, refusing a data directory with no
 * installation (a mistyped GLUCOGUARD_DATA_DIR), for the commands that only look at one.
 */
export function registerLedgerCommands(program: Command, loadConfig: () => Config, installed: () => Config = loadConfig): void {
  const chain = program.command('chain').description('the proof-of-authority chain: run the embedded node, show status, deploy contracts');

  chain
    .command('node')
    .description('run the embedded Clique node alone (JSON-RPC on 127.0.0.1:CHAIN_PORT); prints one JSON line when ready')
    .option('--host <host>', 'interface to bind', '127.0.0.1')
    .action(async (opts: { host: string }) => {
      const config = loadConfig();
      const logger = createLogger(config.logLevel, process.stderr);
      assertEmbeddedChainPresent(config.dataDir);
      const node = await startEmbeddedChain({
        dataDir: config.dataDir, port: config.chain.embeddedPort, host: opts.host, blockPeriod: config.chain.blockPeriod, chainId: config.chain.chainId,
        logger: { info: (m) => logger.info(m), warn: (m) => logger.warn(m), error: (m) => logger.error(m) },
      });
      serveUntilSignal(node, (line) => console.log(line));
    });

  chain
    .command('status')
    .description('chain id, head, signers, contract addresses and anchoring lag')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }) => {
      // a directory with no installation (a mistyped GLUCOGUARD_DATA_DIR) is said as every command says it
      const config = installed();
      const logger = createLogger('warn', process.stderr);
      const { commitmentStorePath, compareSequence } = await import('./index.js');
      const { describeGaps, missingCount } = await import('./completeness.js');
      const { client, close } = await openChain(config, logger);
      const storeFile = commitmentStorePath(config.dataDir);
      const store = existsSync(storeFile) ? new CommitmentStore(storeFile) : undefined;
      // a restore without ledger/: said, and exit 1, not "nothing recorded yet"
      const ledgerMissing = store || config.upstream ? undefined : missingCommitmentStore(config.dataDir);
      try {
        const head = await client.provider.getBlock('latest');
        const anchor = client.contract('ResourceAnchor', client.provider);
        // the store's anchored end before the chain, the rest after: a batch a running server anchors
        // meanwhile moves the chain on between the two, and is in the store by the second
        const anchoredSeq = store?.lastAnchoredSeq() ?? 0;
        const nextSeq = Number(await anchor.nextSeq(client.authorityAddress));
        const counts = store?.counts();
        const backlog = store?.unanchored(); // queued and in batches not confirmed on chain
        const gaps = store?.gaps();
        const base = store?.getMeta('seq_base');
        // leaves of this authority on chain past the store's last batch: batches removed from the store
        const beyond = store && base !== undefined ? Math.max(0, nextSeq - Number(base) - store.lastBatchedSeq()) : 0;
        // anchored batches the chain does not hold: a chain from an earlier moment than the store (a mixed restore)
        const behind = base !== undefined ? Math.max(0, Number(base) + anchoredSeq - nextSeq) : 0;
        // or a sequence that is no batch's end (ledger/index.ts compareSequence, as the server's start-up check)
        const sequence = store ? await compareSequence(store, client).catch(() => undefined) : undefined;
        const status = {
          chainId: client.chainId,
          adapter: client.description.adapter,
          rpc: client.description.location,
          head: { number: head?.number, hash: head?.hash, time: head ? new Date(head.timestamp * 1000).toISOString() : undefined },
          signers: await signersOf(client.provider),
          authority: client.authorityAddress,
          contracts: client.addresses,
          onChain: { batches: Number(await anchor.batchCount()), nextSeq },
          anchoring: counts && backlog && gaps ? {
            commitments: counts.commitments, anchored: counts.anchored, pending: counts.pending, batches: counts.batches,
            missing: missingCount(gaps) + beyond,
            missingDetail: [describeGaps(gaps), beyond ? `the chain holds ${beyond} leaves of this authority past the store's last batch (batches removed from the store)` : undefined].filter(Boolean),
            lagMs: backlog.oldest === null ? 0 : Date.now() - backlog.oldest,
            // anchoring cannot go on (ERR_ANCHOR_SEQUENCE): why, or null
            stopped: behind
              ? `the chain lacks ${behind} leaves the commitment store recorded as anchored (the chain is older than the store: restored from an earlier moment)`
              : sequence?.message ?? null,
            lastAnchoredAt: counts.lastAnchoredAt === null ? null : new Date(counts.lastAnchoredAt).toISOString(),
          } : null,
          ...(ledgerMissing ? { missingCommitmentStore: ledgerMissing } : {}),
        };
        if (ledgerMissing) process.exitCode = 1;
        if (opts.json) {
          console.log(JSON.stringify(status, null, 2));
          return;
        }
        // one column wide enough for the longest label (a contract's name)
        const row = (label: string, value: string) => console.log(`${label.padEnd(18)}${value}`);
        const batches = (n: number) => `${n} batch${n === 1 ? '' : 'es'}`;
        row('chain id', `${status.chainId} (${status.adapter === 'embedded' ? 'embedded Clique node' : 'JSON-RPC'} at ${status.rpc})`);
        row('head', `#${status.head.number} ${status.head.hash} (${status.head.time})`);
        row('signers', status.signers?.join(', ') ?? 'not reported by this node');
        row('authority', status.authority);
        for (const [name, address] of Object.entries(status.contracts)) row(name, address);
        row('on chain', `${batches(status.onChain.batches)}, next sequence ${status.onChain.nextSeq}`);
        const a = status.anchoring;
        row('anchoring', a
          ? `${a.commitments} commitments: ${a.anchored} anchored in ${batches(a.batches)}, ${a.pending} pending; lag ${seconds(a.lagMs)} (oldest pending)`
          : ledgerMissing ? 'no commitment store' : 'no commitment store in this data directory yet');
        if (ledgerMissing) row('MISSING', ledgerMissing);
        if (a?.stopped) row('STOPPED', `anchoring cannot go on: ${a.stopped}; restore the whole data directory from one backup (docs/operations.md)`);
        if (a?.missing) row('MISSING', `${a.missing} commitments removed from the store: ${a.missingDetail.join('; ')}; run glucoguard verify`);
      } finally {
        store?.close();
        await close();
      }
    });

  chain
    .command('deploy')
    .description('deploy ResourceAnchor, ConsentRegistry and IdentityRegistry to a node (e.g. Besu) and write the deployment JSON')
    .requiredOption('--rpc <url>', 'JSON-RPC URL of the node')
    .requiredOption('--key-file <file>', 'file holding the authority private key (0x hex); it becomes admin and authority')
    .option('--out <file>', 'deployment JSON to write (CHAIN_DEPLOYMENT_FILE)', 'deployment.json')
    .action(async (opts: { rpc: string; keyFile: string; out: string }) => {
      const { deployContracts } = await import('./deploy.js');
      const record = await deployContracts({ rpcUrl: opts.rpc, privateKey: hexKey(readFileSync(opts.keyFile, 'utf8')), out: opts.out, log: (l) => console.error(l) });
      console.log(JSON.stringify(record, null, 2));
    });

  const authority = chain.command('authority').description('add or remove an authority (one per deployment or replica with its own data directory)');
  for (const [verb, grant] of [['grant', true], ['revoke', false]] as const) {
    authority
      .command(verb)
      .description(grant ? 'grant AUTHORITY_ROLE in the three contracts (anchor, relay consents, register identities)' : 'revoke AUTHORITY_ROLE in the three contracts')
      .requiredOption('--rpc <url>', 'JSON-RPC URL of the node')
      .requiredOption('--key-file <file>', "file holding the contracts' admin private key (0x hex)")
      .requiredOption('--deployment <file>', 'the deployment JSON written by chain deploy (CHAIN_DEPLOYMENT_FILE)')
      .option('--address <address>', 'the authority account')
      .option('--authority-key-file <file>', 'or: the file holding its private key (only its address is used)')
      .action(async (opts: { rpc: string; keyFile: string; deployment: string; address?: string; authorityKeyFile?: string }) => {
        if ((opts.address === undefined) === (opts.authorityKeyFile === undefined)) throw new Error('give either --address or --authority-key-file');
        const address = opts.address ?? new Wallet(hexKey(readFileSync(opts.authorityKeyFile!, 'utf8'))).address;
        const { setAuthority } = await import('./deploy.js');
        const changed = await setAuthority({
          rpcUrl: opts.rpc, adminKey: hexKey(readFileSync(opts.keyFile, 'utf8')), deployment: opts.deployment, authority: address, grant, log: (l) => console.error(l),
        });
        console.log(JSON.stringify({ authority: address, ...changed }, null, 2));
      });
  }

  program
    .command('verify')
    .description('check every recorded resource version (or one patient\'s) against its commitment and the anchored Merkle root, and the store for commitments removed from it (exit 1 when any check fails, 2 for a patient never stored or no installation, 3 when the chain could not be read so not everything was checked)')
    .option('--patient <id>', 'only this patient\'s resources')
    .action(async (opts: { patient?: string }) => {
      const config = installed();
      const logger = createLogger('warn', process.stderr);
      const { createRepository } = await import('../app.js');
      const { commitmentStorePath } = await import('./index.js');
      const { IntegrityChecker } = await import('./integrity.js');
      const { verifyStore } = await import('./verify.js');
      const { checkCompleteness, missingCount } = await import('./completeness.js');
      const storeFile = commitmentStorePath(config.dataDir);
      // versions in the embedded store without their commitment store: nothing could be checked, which is no pass
      if (!config.upstream) assertCommitmentStorePresent(config.dataDir);
      if (!existsSync(storeFile)) {
        console.log('no commitments recorded in this data directory');
        return;
      }
      const { client, close } = await openChain(config, logger);
      const repository = await createRepository(config, logger);
      const store = new CommitmentStore(storeFile);
      try {
        if (opts.patient !== undefined && !(await patientKnown(store, repository, opts.patient))) {
          // a typo would otherwise read as "checked 0 … 0 failed" and exit 0
          console.error(`glucoguard: Patient/${opts.patient} was never stored in this data directory`);
          process.exitCode = 2;
          return;
        }
        const checker = new IntegrityChecker(store, client.contract('ResourceAnchor', client.provider));
        const total = opts.patient === undefined ? store.counts().commitments : undefined;
        let shown = 0;
        const report = await verifyStore({ store, repository, checker }, opts.patient, (r) => {
          // progress on stderr (stdout carries the report), about every 10,000 versions
          if (r.checked - shown < 10_000) return;
          shown = r.checked;
          process.stderr.write(`verified ${r.checked.toLocaleString('en')}${total ? ` of ${total.toLocaleString('en')}` : ''} versions, ${r.failures.length} failed so far\n`);
        });
        const complete = await checkCompleteness({
          store, repository, anchor: client.contract('ResourceAnchor', client.provider), authority: client.authorityAddress, patient: opts.patient,
        });
        const missing = missingCount(complete);
        const among = complete.uncommitted.filter((u) => u.among);
        console.log(`checked ${report.checked}: ${report.verified} verified, ${report.pending} pending (not anchored yet), ` +
          `${report.gone} deleted or erased, ${report.unverified} unverifiable now (chain unreachable), ${report.failures.length} failed; ` +
          `${missing} commitments missing from the store, ${among.length} versions without a commitment (unverified)` +
          (!complete.listed ? ' (not looked for: the repository does not list its versions)'
            : complete.listedTypes ? ` (looked for among ${complete.listedTypes.join(', ')} only: the upstream does not list its versions)` : ''));
        for (const f of report.failures) console.log(`FAILED ${f.resource}: ${f.reason}`);
        for (const line of missingLines(complete)) console.log(line);
        if (complete.chainUnavailable) console.log(`the batches' records on chain were not compared (chain unreachable: ${complete.chainUnavailable})`);
        for (const u of among) console.log(`UNVERIFIED ${u.ref}: no commitment, among committed versions (its commitment was removed, or the version was put into the store)`);
        const tail = complete.uncommitted.length - among.length;
        if (tail) console.log(`${tail} versions written after the last committed one of their type have no commitment yet (recorded at the next serve start)`);
        if (report.failures.length || missing || among.length || complete.chain.length) process.exitCode = 1;
        // nothing failed, but what the chain holds was not (all) read: no pass either
        else if (report.unverified || complete.chainUnavailable) {
          console.log('not everything could be checked: the chain did not answer (run verify again once it does)');
          process.exitCode = 3;
        }
      } finally {
        store.close();
        await repository.close();
        await close();
      }
    });
}

/** Whether `patient` was ever stored: a commitment recorded under them, or the Patient (even erased or deleted) in the repository. */
async function patientKnown(store: CommitmentStore, repository: { read(type: string, id: string): Promise<unknown> }, patient: string): Promise<boolean> {
  if (store.knowsPatient(patient)) return true;
  try {
    await repository.read('Patient', patient);
    return true;
  } catch (err) {
    return !isGlucoGuardError(err, 'ERR_NOT_FOUND');
  }
}

/** The report's lines for commitments missing from the store and for disagreements with the chain. */
function missingLines(report: CompletenessReport): string[] {
  const lines: string[] = [];
  for (const { batch, missing } of report.batches) {
    const where = `batch ${batch.id}${batch.chainBatchId !== null ? ` (chain batch #${batch.chainBatchId})` : ''}, seqs ${batch.firstSeq}–${batch.lastSeq}`;
    lines.push(`MISSING ${missing.length} of ${batch.lastSeq - batch.firstSeq + 1} commitments of ${where}:`);
    for (const leaf of missing) {
      const what = leaf.version
        ? `the commitment of ${leaf.version} (still in the repository, unverified)`
        : `a commitment whose version is not in the repository either (removed from both)${leaf.position === undefined ? '' : `, leaf ${leaf.position} of the tree`}`;
      const around = [leaf.after && `written after ${leaf.after}`, leaf.before && `before ${leaf.before}`, leaf.patient && `among the versions of Patient/${leaf.patient} in the tree`].filter(Boolean);
      lines.push(`  seq ${leaf.seq}: ${what}${around.length ? `; ${around.join(', ')}` : ''}`);
    }
  }
  for (const r of report.unbatched) lines.push(`MISSING seqs ${r.from}–${r.to}: no batch in the store covers them (a batch removed)`);
  if (report.queued.length) lines.push(`MISSING ${report.queued.length} queued commitments (seqs ${report.queued.slice(0, 20).join(', ')}${report.queued.length > 20 ? ', …' : ''}): removed before they were anchored`);
  for (const c of report.chain) lines.push(`MISSING ${c}`);
  return lines;
}

/** A private key read from a file: trimmed, 0x-prefixed. */
function hexKey(text: string): string {
  const key = text.trim();
  return key.startsWith('0x') ? key : `0x${key}`;
}
