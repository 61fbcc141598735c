/**
 * Deploys the three contracts (chain/artifacts) to any node — Besu QBFT in production — with the
 * authority key, and writes the deployment JSON that CHAIN_DEPLOYMENT_FILE reads. The deploying
 * account becomes admin and first authority of each contract, as on the embedded node.
 * Re-running with the same output file finishes a partial deployment and redeploys nothing.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { ContractFactory, JsonRpcProvider, Wallet, type InterfaceAbi } from 'ethers';
import { loadArtifact, type ContractName } from '../../chain/node/artifacts.js';
import type { ChainAddresses } from './client.js';
import { waitForReceipt } from './rpc.js';

export interface DeploymentFile {
  chainId: number;
  /** The deploying authority (admin of every contract). */
  signer: string;
  genesisHash: string;
  contracts: ChainAddresses;
}

export interface DeployOptions {
  rpcUrl: string;
  /** 0x-prefixed private key of the authority account. */
  privateKey: string;
  /** Deployment JSON to write (and to resume from when it exists). */
  out: string;
  log?: (line: string) => void;
  receiptTimeoutMs?: number;
}

/** Deploys what is missing and writes `out`; returns the record. */
export async function deployContracts(options: DeployOptions): Promise<DeploymentFile> {
  const log = options.log ?? (() => undefined);
  const provider = new JsonRpcProvider(options.rpcUrl, undefined, { cacheTimeout: -1, batchMaxCount: 1 });
  try {
    const network = await provider.getNetwork();
    const genesis = await provider.getBlock(0);
    const wallet = new Wallet(options.privateKey, provider);
    const previous = existsSync(options.out) ? (JSON.parse(readFileSync(options.out, 'utf8')) as Partial<DeploymentFile>) : undefined;
    if (previous?.chainId !== undefined && previous.chainId !== Number(network.chainId)) {
      throw new Error(`${options.out} is for chain ${previous.chainId}, the node is chain ${network.chainId}`);
    }
    const contracts: Partial<ChainAddresses> = { ...previous?.contracts };
    const deploy = async (name: ContractName, args: unknown[]): Promise<string> => {
      const known = contracts[name];
      if (known && (await provider.getCode(known)) !== '0x') {
        log(`${name}: already at ${known}`);
        return known;
      }
      const artifact = loadArtifact(name);
      const factory = new ContractFactory(artifact.abi as InterfaceAbi, artifact.bytecode, wallet);
      const contract = await factory.deploy(...args);
      const tx = contract.deploymentTransaction()!;
      await waitForReceipt(provider, tx.hash, { timeoutMs: options.receiptTimeoutMs ?? 120_000, pollMs: 250 });
      const address = await contract.getAddress();
      if ((await provider.getCode(address)) === '0x') throw new Error(`deployment of ${name} failed (tx ${tx.hash})`);
      contracts[name] = address;
      write(); // after each contract, so an interrupted run resumes
      log(`${name}: deployed at ${address} (tx ${tx.hash})`);
      return address;
    };
    const record = (): DeploymentFile => ({
      chainId: Number(network.chainId), signer: wallet.address, genesisHash: genesis?.hash ?? '', contracts: contracts as ChainAddresses,
    });
    const write = () => writeFileSync(options.out, `${JSON.stringify(record(), null, 2)}\n`);
    const identity = await deploy('IdentityRegistry', [wallet.address]);
    await deploy('ConsentRegistry', [wallet.address, identity]);
    await deploy('ResourceAnchor', [wallet.address]);
    write();
    return record();
  } finally {
    provider.destroy();
  }
}
