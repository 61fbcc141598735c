/**
 * Deploys the three contracts (chain/artifacts) to any node — Besu QBFT in production — with the
 * authority key, and writes the deployment JSON that CHAIN_DEPLOYMENT_FILE reads. The deploying
 * account becomes admin and first authority of each contract, as on the embedded node.
 * Re-running with the same output file finishes a partial deployment and redeploys nothing.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { Contract, ContractFactory, JsonRpcProvider, Wallet, getAddress, type InterfaceAbi } from 'ethers';
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

export interface AuthorityOptions {
  rpcUrl: string;
  /** 0x-prefixed private key of the contracts' admin (the deploying account, or the consortium's). */
  adminKey: string;
  /** The deployment JSON (`glucoguard chain deploy --out`). */
  deployment: string;
  /** The authority account to add or remove. */
  authority: string;
  /** true: grant AUTHORITY_ROLE in the three contracts; false: revoke it. */
  grant: boolean;
  log?: (line: string) => void;
  receiptTimeoutMs?: number;
}

const AUTHORITY_CONTRACTS: ContractName[] = ['ResourceAnchor', 'ConsentRegistry', 'IdentityRegistry'];

/**
 * Adds (or removes) an authority — one per deployment or replica with its own commitment store: each
 * authority numbers its own anchoring sequence, so two of them never fight over one. Grants or
 * revokes AUTHORITY_ROLE in each contract where it is not so already; answers what changed.
 */
export async function setAuthority(options: AuthorityOptions): Promise<Record<ContractName, 'granted' | 'revoked' | 'unchanged'>> {
  const log = options.log ?? (() => undefined);
  const record = JSON.parse(readFileSync(options.deployment, 'utf8')) as Partial<DeploymentFile>;
  if (!record.contracts) throw new Error(`${options.deployment} holds no contract addresses`);
  const authority = getAddress(options.authority);
  const provider = new JsonRpcProvider(options.rpcUrl, undefined, { cacheTimeout: -1, batchMaxCount: 1 });
  try {
    const network = await provider.getNetwork();
    if (record.chainId !== undefined && record.chainId !== Number(network.chainId)) {
      throw new Error(`${options.deployment} is for chain ${record.chainId}, the node is chain ${network.chainId}`);
    }
    const admin = new Wallet(options.adminKey, provider);
    const out = {} as Record<ContractName, 'granted' | 'revoked' | 'unchanged'>;
    for (const name of AUTHORITY_CONTRACTS) {
      const contract = new Contract(record.contracts[name]!, loadArtifact(name).abi as InterfaceAbi, admin);
      const role = await contract.getFunction('AUTHORITY_ROLE')() as string;
      const has = await contract.getFunction('hasRole')(role, authority) as boolean;
      if (has === options.grant) {
        out[name] = 'unchanged';
        log(`${name}: ${authority} ${has ? 'is' : 'is not'} an authority already`);
        continue;
      }
      const tx = await contract.getFunction(options.grant ? 'grantRole' : 'revokeRole')(role, authority) as { hash: string };
      const receipt = await waitForReceipt(provider, tx.hash, { timeoutMs: options.receiptTimeoutMs ?? 120_000, pollMs: 250 });
      if (receipt.status !== 1) throw new Error(`${options.grant ? 'grantRole' : 'revokeRole'} on ${name} failed (tx ${tx.hash})`);
      out[name] = options.grant ? 'granted' : 'revoked';
      log(`${name}: ${authority} ${out[name]} (tx ${tx.hash})`);
    }
    return out;
  } finally {
    provider.destroy();
  }
}
