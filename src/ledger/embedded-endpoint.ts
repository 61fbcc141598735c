/**
 * `<dataDir>/chain/endpoint.json`: where the process that runs this data directory's embedded node
 * serves its JSON-RPC, so operator commands beside it use that node (its LevelDB is single-process).
 *
 * The file outlives its process after `kill -9`, and travels with a copy of the data directory (a
 * copy taken while running, a volume snapshot). A live pid alone proves nothing (pids are reused; in
 * a container pid 1 is always alive), so a recorded node is used only when all of these hold: the
 * file names this very directory; this directory's chain database is locked by another process
 * (LevelDB holds a lock on it while a node has it open); and the node at the address answers with
 * this directory's chain id, genesis block and contracts (deployment.json). A file for another
 * directory, of a process gone, or with the database open nowhere is stale: it is removed and the
 * caller starts the node itself (a node elsewhere with the database open then makes that fail).
 */
import { existsSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { JsonRpcProvider } from 'ethers';
import { readDeployment, type Deployment } from '../../chain/node/index.js';
import { unavailable } from '../errors.js';

export interface EmbeddedEndpoint {
  pid: number;
  rpcUrl: string;
  chainId: number;
  deployment: Deployment;
  /** The data directory (real path) whose node this is. */
  dataDir: string;
}

export function endpointFile(dataDir: string): string {
  return path.join(dataDir, 'chain', 'endpoint.json');
}

function realDir(dataDir: string): string {
  try {
    return realpathSync(dataDir);
  } catch {
    return path.resolve(dataDir);
  }
}

/** Records the node this process serves for this data directory (mode 0600). */
export function writeEndpoint(dataDir: string, endpoint: Omit<EmbeddedEndpoint, 'pid' | 'dataDir'>): void {
  const record: EmbeddedEndpoint = { pid: process.pid, ...endpoint, dataDir: realDir(dataDir) };
  writeFileSync(endpointFile(dataDir), JSON.stringify(record), { mode: 0o600 });
}

export function removeEndpoint(dataDir: string): void {
  rmSync(endpointFile(dataDir), { force: true });
}

/**
 * The embedded node another live process serves for this data directory, checked as the file's
 * comment says; undefined (and a stale file removed) when there is none. `why` hears why a file
 * present was not used.
 */
export async function runningEmbeddedNode(dataDir: string, why: (reason: string) => void = () => undefined): Promise<EmbeddedEndpoint | undefined> {
  const file = endpointFile(dataDir);
  if (!existsSync(file)) return undefined;
  let endpoint: Partial<EmbeddedEndpoint>;
  try {
    endpoint = JSON.parse(readFileSync(file, 'utf8')) as Partial<EmbeddedEndpoint>;
  } catch {
    return stale(dataDir, 'it cannot be read', why);
  }
  if (endpoint.pid === process.pid) return undefined; // our own (a restart within this process): replaced when the node starts
  if (endpoint.dataDir !== realDir(dataDir)) return stale(dataDir, `it was written for ${endpoint.dataDir ?? 'another data directory'} (a copy of a running data directory)`, why);
  try {
    process.kill(endpoint.pid!, 0);
  } catch {
    return stale(dataDir, `its process ${endpoint.pid} is gone`, why);
  }
  if (!(await chainDatabaseInUse(dataDir))) return stale(dataDir, `no process has ${path.join(dataDir, 'chain', 'db')} open`, why);
  // From here a process has this directory's chain open: the file is left alone (it may be that
  // process's), and a node that is not this chain's is not used.
  const deployment = readDeployment(dataDir);
  if (!deployment || !endpoint.rpcUrl) return notUsed(dataDir, 'this data directory records no deployment', why);
  const answer = await nodeIdentity(endpoint.rpcUrl, deployment.chainId);
  if (!answer) {
    throw unavailable(`the embedded chain of ${dataDir} is open in another process (pid ${endpoint.pid}, per ${endpointFile(dataDir)}), but no node answers at ${endpoint.rpcUrl}`);
  }
  const contracts = endpoint.deployment ?? ({} as Partial<Deployment>);
  const same = answer.chainId === deployment.chainId && answer.genesisHash === deployment.genesisHash
    && (Object.keys(deployment.contracts) as (keyof Deployment)[]).every((name) => contracts[name]?.toLowerCase() === deployment.contracts[name].toLowerCase());
  if (!same) return notUsed(dataDir, `the node at ${endpoint.rpcUrl} serves another chain (genesis ${answer.genesisHash}, this directory's is ${deployment.genesisHash})`, why);
  return { pid: endpoint.pid!, rpcUrl: endpoint.rpcUrl, chainId: deployment.chainId, deployment: deployment.contracts, dataDir: endpoint.dataDir };
}

function notUsed(dataDir: string, reason: string, why: (reason: string) => void): undefined {
  why(`chain: not using the node ${endpointFile(dataDir)} names: ${reason}`);
  return undefined;
}

function stale(dataDir: string, reason: string, why: (reason: string) => void): undefined {
  why(`chain: ignoring ${endpointFile(dataDir)} (left by a process that stopped without cleaning up, or copied with the data directory): ${reason}; starting this data directory's own node`);
  removeEndpoint(dataDir);
  return undefined;
}

/**
 * Whether another process (or this one) has the data directory's chain database open: LevelDB
 * locks it while open, so opening it here fails with LEVEL_LOCKED. A database that opens was not in
 * use; it is closed again at once (the caller's node opens it next). Loaded on demand: a server
 * whose node runs on a worker thread does not load LevelDB on its request thread otherwise.
 */
export async function chainDatabaseInUse(dataDir: string): Promise<boolean> {
  const dir = path.join(dataDir, 'chain', 'db');
  if (!existsSync(dir)) return false;
  const { ClassicLevel } = await import('classic-level');
  const level = new ClassicLevel(dir, { createIfMissing: false });
  try {
    await level.open();
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause;
    return cause?.code === 'LEVEL_LOCKED';
  }
  await level.close();
  return false;
}

/** The chain id and genesis hash the node at `rpcUrl` answers with, or undefined when it does not answer within 1.5 s. */
export async function nodeIdentity(rpcUrl: string, chainId: number): Promise<{ chainId: number; genesisHash: string } | undefined> {
  // the network is given, so nothing is detected (ethers would log its retries while no node answers)
  const probe = new JsonRpcProvider(rpcUrl, chainId, { staticNetwork: true, batchMaxCount: 1 });
  try {
    return await Promise.race([
      (async () => {
        const id = Number(await probe.send('eth_chainId', []));
        const genesis = (await probe.send('eth_getBlockByNumber', ['0x0', false])) as { hash?: string } | null;
        return { chainId: id, genesisHash: genesis?.hash ?? '' };
      })().catch(() => undefined),
      new Promise<undefined>((r) => setTimeout(() => r(undefined), 1500).unref()),
    ]);
  } finally {
    probe.destroy();
  }
}
