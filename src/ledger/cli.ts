/**
 * Ledger commands: `glucoguard chain node|status|deploy` and `glucoguard verify`.
 * status and verify work while `serve` runs: they talk to its embedded node over JSON-RPC (the
 * node's database is single-process) and read the commitment store alongside it (SQLite WAL).
 */
import { existsSync, readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { JsonRpcProvider, Wallet } from 'ethers';
import { createChain, createRepository } from '../app.js';
import type { Config } from '../config.js';
import { createLogger, type Logger } from '../log.js';
import { loadAuthorityKey, readDeployment, serveUntilSignal, startEmbeddedChain } from '../../chain/node/index.js';
import { ChainClient } from './client.js';
import { deployContracts, setAuthority } from './deploy.js';
import { commitmentStorePath } from './index.js';
import { IntegrityChecker } from './integrity.js';
import { CommitmentStore } from './store.js';
import { verifyStore } from './verify.js';

/** The chain as configured, reusing an embedded node already serving this data directory. */
async function openChain(config: Config, logger: Logger): Promise<{ client: ChainClient; close(): Promise<void> }> {
  const deployment = readDeployment(config.dataDir);
  if (!config.chain.rpcUrl && deployment && config.chain.embeddedPort) {
    const url = `http://127.0.0.1:${config.chain.embeddedPort}`;
    // the network is given, so nothing is detected (ethers would log its retries while no node answers)
    const probe = new JsonRpcProvider(url, deployment.chainId, { staticNetwork: true, batchMaxCount: 1 });
    const running = await Promise.race([
      probe.send('eth_chainId', []).then((id: string) => Number(id) === deployment.chainId, () => false),
      new Promise<boolean>((r) => setTimeout(() => r(false), 1500)),
    ]);
    probe.destroy();
    if (running) {
      const client = new ChainClient({
        rpcUrl: url, chainId: deployment.chainId, authorityKey: loadAuthorityKey(config.dataDir), addresses: deployment.contracts, adapter: 'embedded',
      });
      return { client, close: () => client.close() };
    }
  }
  const chain = await createChain({ ...config, chain: { ...config.chain, embeddedPort: 0 } }, logger);
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

export function registerLedgerCommands(program: Command, loadConfig: () => Config): void {
  const chain = program.command('chain').description('the proof-of-authority chain: run the embedded node, show status, deploy contracts');

  chain
    .command('node')
    .description('run the embedded Clique node alone (JSON-RPC on 127.0.0.1:CHAIN_PORT); prints one JSON line when ready')
    .option('--host <host>', 'interface to bind', '127.0.0.1')
    .action(async (opts: { host: string }) => {
      const config = loadConfig();
      const logger = createLogger(config.logLevel, process.stderr);
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
      const config = loadConfig();
      const logger = createLogger('warn', process.stderr);
      const { client, close } = await openChain(config, logger);
      const storeFile = commitmentStorePath(config.dataDir);
      const store = existsSync(storeFile) ? new CommitmentStore(storeFile) : undefined;
      try {
        const head = await client.provider.getBlock('latest');
        const anchor = client.contract('ResourceAnchor', client.provider);
        const counts = store?.counts();
        const backlog = store?.backlog();
        const status = {
          chainId: client.chainId,
          adapter: client.description.adapter,
          rpc: client.description.location,
          head: { number: head?.number, hash: head?.hash, time: head ? new Date(head.timestamp * 1000).toISOString() : undefined },
          signers: await signersOf(client.provider),
          authority: client.authorityAddress,
          contracts: client.addresses,
          onChain: { batches: Number(await anchor.batchCount()), nextSeq: Number(await anchor.nextSeq(client.authorityAddress)) },
          anchoring: counts && backlog ? {
            commitments: counts.commitments, anchored: counts.anchored, pending: counts.pending, batches: counts.batches,
            lagMs: backlog.oldest === null ? 0 : Date.now() - backlog.oldest,
            lastAnchoredAt: counts.lastAnchoredAt === null ? null : new Date(counts.lastAnchoredAt).toISOString(),
          } : null,
        };
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
          : 'no commitment store in this data directory yet');
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
        const changed = await setAuthority({
          rpcUrl: opts.rpc, adminKey: hexKey(readFileSync(opts.keyFile, 'utf8')), deployment: opts.deployment, authority: address, grant, log: (l) => console.error(l),
        });
        console.log(JSON.stringify({ authority: address, ...changed }, null, 2));
      });
  }

  program
    .command('verify')
    .description('check every recorded resource version (or one patient\'s) against its commitment and the anchored Merkle root')
    .option('--patient <id>', 'only this patient\'s resources')
    .action(async (opts: { patient?: string }) => {
      const config = loadConfig();
      const logger = createLogger('warn', process.stderr);
      const storeFile = commitmentStorePath(config.dataDir);
      if (!existsSync(storeFile)) {
        console.log('no commitments recorded in this data directory');
        return;
      }
      const { client, close } = await openChain(config, logger);
      const repository = await createRepository(config, logger);
      const store = new CommitmentStore(storeFile);
      try {
        const checker = new IntegrityChecker(store, client.contract('ResourceAnchor', client.provider));
        const total = opts.patient === undefined ? store.counts().commitments : undefined;
        let shown = 0;
        const report = await verifyStore({ store, repository, checker }, opts.patient, (r) => {
          // progress on stderr (stdout carries the report), about every 10,000 versions
          if (r.checked - shown < 10_000) return;
          shown = r.checked;
          process.stderr.write(`verified ${r.checked.toLocaleString('en')}${total ? ` of ${total.toLocaleString('en')}` : ''} versions, ${r.failures.length} failed so far\n`);
        });
        console.log(`checked ${report.checked}: ${report.verified} verified, ${report.pending} pending (not anchored yet), ` +
          `${report.gone} deleted or erased, ${report.unverified} unverifiable now (chain unreachable), ${report.failures.length} failed`);
        for (const f of report.failures) console.log(`FAILED ${f.resource}: ${f.reason}`);
        if (report.failures.length) process.exitCode = 1;
      } finally {
        store.close();
        await repository.close();
        await close();
      }
    });
}

/** A private key read from a file: trimmed, 0x-prefixed. */
function hexKey(text: string): string {
  const key = text.trim();
  return key.startsWith('0x') ? key : `0x${key}`;
}
