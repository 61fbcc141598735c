/** Starts the embedded chain in a temp data dir and gives ethers handles to it (instant sealing). */
import { Contract, JsonRpcProvider, Network, Wallet, type InterfaceAbi } from 'ethers';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadArtifact, loadAuthorityKey, startEmbeddedChain, type ContractName, type EmbeddedChain, type EmbeddedChainOptions } from '../../chain/node/index.js';

export interface TestChain {
  dir: string;
  chain: EmbeddedChain;
  provider: JsonRpcProvider;
  authority: Wallet;
  contract(name: ContractName, runner?: Wallet): Contract;
  stop(opts?: { keepDir?: boolean }): Promise<void>;
}

export function tempDir(): string {
  return mkdtempSync(path.join(os.tmpdir(), 'gg-chain-test-'));
}

/** ethers provider as the proxy should configure it: fixed network, no response cache, no batching stall. */
export function providerFor(chain: EmbeddedChain): JsonRpcProvider {
  return new JsonRpcProvider(chain.rpcUrl, Network.from(chain.chainId), {
    staticNetwork: true, cacheTimeout: -1, batchMaxCount: 1, pollingInterval: 50,
  });
}

export async function startTestChain(opts: Partial<EmbeddedChainOptions> = {}): Promise<TestChain> {
  const dir = opts.dataDir ?? tempDir();
  const chain = await startEmbeddedChain({ port: 0, blockPeriod: 0, chainId: 31337, ...opts, dataDir: dir });
  const provider = providerFor(chain);
  const authority = new Wallet(loadAuthorityKey(dir), provider);
  return {
    dir,
    chain,
    provider,
    authority,
    contract: (name, runner = authority) => new Contract(chain.deployment[name], loadArtifact(name).abi as InterfaceAbi, runner),
    stop: async ({ keepDir = false } = {}) => {
      provider.destroy();
      await chain.close();
      if (!keepDir) rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Posts a raw JSON-RPC body and returns the parsed response. */
export async function rpc(url: string, body: unknown): Promise<any> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return res.status === 204 ? undefined : res.json();
}

/** Runs `fn` expecting a revert; returns the custom error name and args as ethers decodes them. */
export async function revertOf(fn: () => Promise<unknown>): Promise<{ name: string; args: unknown[] }> {
  try {
    await fn();
  } catch (err) {
    const e = err as { code?: string; revert?: { name: string; args: unknown[] } };
    if (e.code === 'CALL_EXCEPTION' && e.revert) return { name: e.revert.name, args: [...e.revert.args] };
    throw err;
  }
  throw new Error('expected a revert');
}

/** Seconds of the chain's latest block. */
export async function chainTime(provider: JsonRpcProvider): Promise<number> {
  return (await provider.getBlock('latest'))!.timestamp;
}

/**
 * Moves the chain's clock to at least `timestamp` by sealing empty-value transfers: Clique needs strictly
 * increasing block timestamps, so each block sealed faster than once a second adds one second.
 */
export async function advanceChainTime(t: TestChain, timestamp: number): Promise<void> {
  while ((await chainTime(t.provider)) < timestamp) {
    await (await t.authority.sendTransaction({ to: t.authority.address, value: 0n })).wait();
  }
}
