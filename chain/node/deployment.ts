/**
 * Where the embedded chain records its contracts (`<dataDir>/chain/deployment.json`), and reading it.
 * Apart from deploy.ts, which writes it, so that processes that only read it (the proxy's request
 * thread, every CLI command) do not load the EVM packages deploy.ts needs.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { ContractName } from './artifacts.js';
import { chainDir } from './keys.js';

export type Deployment = Record<ContractName, string>;

export interface DeploymentRecord {
  chainId: number;
  signer: string;
  genesisHash: string;
  contracts: Deployment;
}

/** Path of deployment.json in a data directory. */
export function deploymentPath(dataDir: string): string {
  return path.join(chainDir(dataDir), 'deployment.json');
}

/** Reads deployment.json of a data directory (undefined before the first start). */
export function readDeployment(dataDir: string): DeploymentRecord | undefined {
  const file = deploymentPath(dataDir);
  return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as DeploymentRecord) : undefined;
}
