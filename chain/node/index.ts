/**
 * The embedded proof-of-authority chain: a single-signer Clique (EIP-225) node on the EthereumJS
 * libraries, its data in `<dataDir>/chain` (LevelDB, signer key, genesis, deployment), serving standard
 * Ethereum JSON-RPC over HTTP. The proxy talks to it through ethers like to any other node.
 */
import { existsSync } from 'node:fs';
import type { Server } from 'node:http';
import { Worker } from 'node:worker_threads';
import type { Deployment } from './deployment.js';
import type { ChainLogger } from './node.js';
import type { FromChainWorker } from './worker.js';

export { loadAuthorityKey, signerKeyPath } from './keys.js';
export { readDeployment, deploymentPath, type Deployment, type DeploymentRecord } from './deployment.js';
export { loadArtifact, artifactsDir, CONTRACT_NAMES, type Artifact, type ContractName } from './artifacts.js';
export type { ChainLogger } from './node.js';

export interface EmbeddedChainOptions {
  /** Data directory; the chain lives in `<dataDir>/chain`. */
  dataDir: string;
  /** JSON-RPC port; 0 picks a free one. */
  port: number;
  /** Interface to bind (default 127.0.0.1). */
  host?: string;
  /** Seconds between blocks while transactions are pending; 0 seals each transaction at once (tests). */
  blockPeriod: number;
  chainId: number;
  /** Largest number of transactions per block (default 200). */
  maxTxsPerBlock?: number;
  logger?: ChainLogger;
}

export interface EmbeddedChain {
  rpcUrl: string;
  chainId: number;
  /** The Clique signer, also admin and authority of the contracts. */
  signerAddress: string;
  deployment: Deployment;
  /** Stops the RPC server and sealer and closes the database. */
  close(): Promise<void>;
}

/**
 * Starts the embedded chain: opens (or creates: signer key, genesis) the chain in `<dataDir>/chain`,
 * deploys the contracts on first start, and serves JSON-RPC on host:port.
 */
export async function startEmbeddedChain(opts: EmbeddedChainOptions): Promise<EmbeddedChain> {
  const log = opts.logger ?? { info() {}, warn() {}, error() {} };
  // Loaded here, not at the top: a proxy whose node runs on a worker thread never loads the EVM,
  // blockchain and LevelDB modules on its request thread (~16 MB of RSS it would only carry).
  // One after the other: Jest's ES module loader (the tests run the node inline) can fail two
  // concurrent imports that share a module not loaded yet ("request for … is not in cache").
  const { ChainNode } = await import('./node.js');
  const { ensureDeployed } = await import('./deploy.js');
  const { loadOrCreateSignerKey } = await import('./keys.js');
  const { RpcHandlers, serveRpc } = await import('./rpc.js');
  const node = await ChainNode.open({
    dataDir: opts.dataDir, blockPeriod: opts.blockPeriod, chainId: opts.chainId, maxTxsPerBlock: opts.maxTxsPerBlock, logger: log,
  });
  let server: Server | undefined;
  try {
    const deployment = await ensureDeployed(node, opts.dataDir, loadOrCreateSignerKey(opts.dataDir));
    const served = await serveRpc(new RpcHandlers(node), opts.host ?? '127.0.0.1', opts.port, log);
    server = served.server;
    log.info(`chain: embedded Clique node (chain id ${node.chainId}, signer ${node.signer}) at block ${node.head.header.number}, JSON-RPC on ${served.url}`);
    const httpServer = server;
    return {
      rpcUrl: served.url,
      chainId: node.chainId,
      signerAddress: node.signer.toString(),
      deployment,
      close: async () => {
        await new Promise<void>((resolve) => {
          httpServer.close(() => resolve());
          httpServer.closeAllConnections();
        });
        await node.close();
      },
    };
  } catch (err) {
    server?.close();
    await node.close();
    throw err;
  }
}

/**
 * A node run as its own process (`glucoguard chain node`, `node dist/chain/node/main.js`): prints
 * one JSON line describing it once ready, then closes it cleanly on the first SIGINT/SIGTERM.
 */
export function serveUntilSignal(chain: EmbeddedChain, print: (line: string) => void): void {
  const { close, ...info } = chain;
  print(JSON.stringify(info));
  let stopping = false;
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      if (stopping) return;
      stopping = true;
      void close().then(() => process.exit(0));
    });
  }
}

/**
 * The node's thread allocates little per request (a block every few seconds, JSON-RPC answers), so it
 * gets a small young generation: V8's default lets the new space grow to 32 MB, which the thread
 * reaches while loading its modules and then keeps (measured: 50 MB RSS for the thread at rest
 * against 36 MB with this limit). The old generation is left unbounded: a limit there would end the
 * thread, and with it the chain, instead of slowing it.
 */
const WORKER_LIMITS = { maxYoungGenerationSizeMb: 4 } as const;

/** An embedded chain started by startEmbeddedChainThread: where it runs, and (on a worker) a hard stop. */
export type EmbeddedChainThread = EmbeddedChain & {
  thread: 'worker' | 'main';
  /** Stops the node's thread at once, as a failure would (no clean close): tests, last resort. */
  terminate?: () => Promise<void>;
};

/**
 * The embedded chain on a thread of its own, so that sealing blocks and running the EVM (tens of
 * milliseconds per block) never stall the proxy's request thread; the proxy reaches it over
 * JSON-RPC on loopback exactly as when it runs inline. Needs the compiled worker (dist/, as run by
 * `npm start` and the CLI); from TypeScript sources (jest) the node runs inline on the calling
 * thread. `thread: 'main'` asks for inline explicitly.
 */
export async function startEmbeddedChainThread(opts: EmbeddedChainOptions & {
  thread?: 'worker' | 'main';
  /** Called when the node's thread ends other than through `close()` (it failed): the node is gone. */
  onUnexpectedExit?: (code: number) => void;
}): Promise<EmbeddedChainThread> {
  const { thread = 'worker', logger, onUnexpectedExit, ...options } = opts;
  const workerFile = new URL('./worker.js', import.meta.url);
  if (thread === 'main' || !import.meta.url.endsWith('.js') || !existsSync(workerFile)) {
    return { ...(await startEmbeddedChain({ ...options, logger })), thread: 'main' };
  }
  const log = logger ?? { info() {}, warn() {}, error() {} };
  const worker = new Worker(workerFile, { workerData: options, resourceLimits: WORKER_LIMITS });
  const exited = new Promise<number>((resolve) => worker.once('exit', resolve));
  const info = await new Promise<Omit<EmbeddedChain, 'close'>>((resolve, reject) => {
    worker.on('message', (message: FromChainWorker) => {
      if (message.type === 'log') log[message.level](message.message);
      else if (message.type === 'ready') resolve(message.info);
      else if (message.type === 'failed') reject(Object.assign(new Error(message.message), message.code ? { code: message.code } : {}));
    });
    worker.once('error', reject);
    void exited.then((code) => reject(new Error(`the chain worker exited (code ${code}) before it was ready`)));
  });
  worker.on('error', (err) => log.error(`chain: the node's thread failed: ${err.message}`));
  let closing = false;
  void exited.then((code) => {
    if (closing) return;
    log.error(`chain: the node's thread ended unexpectedly (exit code ${code}); the embedded chain is gone`);
    onUnexpectedExit?.(code);
  });
  return {
    ...info,
    thread: 'worker',
    terminate: async () => {
      await worker.terminate();
    },
    close: async () => {
      closing = true;
      worker.postMessage('close');
      const timer = setTimeout(() => {
        log.warn('chain: the node did not close within 10 s; stopping its thread');
        void worker.terminate();
      }, 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}
