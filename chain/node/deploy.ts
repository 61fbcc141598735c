/**
 * First-start deployment of the three contracts by the signer (who becomes their admin and first
 * authority). Addresses follow from the signer's nonces 0–2, so a deployment interrupted by a crash is
 * finished on the next start; they are recorded in `<dataDir>/chain/deployment.json`.
 */
import { createFeeMarket1559Tx } from '@ethereumjs/tx';
import { bytesToHex, createAddressFromString, hexToBytes, type PrefixedHexString } from '@ethereumjs/util';
import { AbiCoder, getCreateAddress } from 'ethers';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { loadArtifact, type ContractName } from './artifacts.js';
import { deploymentPath, readDeployment, type Deployment, type DeploymentRecord } from './deployment.js';
import { chainDir } from './keys.js';
import type { ChainNode } from './node.js';

export { deploymentPath, readDeployment, type Deployment, type DeploymentRecord } from './deployment.js';

// IdentityRegistry first: ConsentRegistry's constructor takes its address.
const ORDER: ContractName[] = ['IdentityRegistry', 'ConsentRegistry', 'ResourceAnchor'];

/** Ensures the contracts exist on the chain and deployment.json records them. */
export async function ensureDeployed(node: ChainNode, dataDir: string, signerKey: Uint8Array): Promise<Deployment> {
  const signer = node.signer.toString();
  const expected = Object.fromEntries(ORDER.map((name, nonce) => [name, getCreateAddress({ from: signer, nonce })])) as Deployment;
  const hasCode = async (address: string): Promise<boolean> =>
    (await node.withStateAt(node.head, (vm) => vm.stateManager.getCode(createAddressFromString(address)))).length > 0;

  const nonce = await node.pendingNonce(signer);
  const missing: ContractName[] = [];
  for (const name of ORDER) if (!(await hasCode(expected[name]))) missing.push(name);
  // deployment.json is written once every contract is on chain: a chain that no longer holds them,
  // or another genesis, is not this data directory's chain (its database was lost or replaced).
  // Deploying afresh would make every anchored version fail its integrity check and forget every grant.
  const recorded = readDeployment(dataDir);
  const genesisHash = bytesToHex(node.blockchain.genesisBlock.hash());
  if (recorded && (missing.length || recorded.genesisHash !== genesisHash)) {
    throw new Error(`the embedded chain in ${chainDir(dataDir)} is not the chain ${deploymentPath(dataDir)} records `
      + `(${missing.length ? `no contract code at ${missing.map((n) => expected[n]).join(', ')}` : `genesis ${genesisHash}, recorded ${recorded.genesisHash}`}): `
      + 'its database was lost or replaced. Restore the chain directory from a backup of this data directory; '
      + 'a new chain would hold none of the anchored roots and consent grants');
  }
  if (missing.length) {
    const firstMissing = ORDER.indexOf(missing[0]!);
    if (nonce !== BigInt(firstMissing)) {
      throw new Error(`cannot deploy ${missing.join(', ')}: signer ${signer} has nonce ${nonce}, expected ${firstMissing}`);
    }
    const coder = AbiCoder.defaultAbiCoder();
    const args: Record<ContractName, string> = {
      IdentityRegistry: coder.encode(['address'], [signer]),
      ConsentRegistry: coder.encode(['address', 'address'], [signer, expected.IdentityRegistry]),
      ResourceAnchor: coder.encode(['address'], [signer]),
    };
    const hashes: string[] = [];
    for (const name of missing) {
      const data = `${loadArtifact(name).bytecode}${args[name].slice(2)}` as PrefixedHexString;
      const gas = await node.estimateGas({ from: signer, data }, node.head);
      const baseFee = node.head.header.calcNextBaseFee();
      const tx = createFeeMarket1559Tx({
        chainId: BigInt(node.chainId),
        nonce: BigInt(ORDER.indexOf(name)),
        gasLimit: gas + gas / 5n,
        maxFeePerGas: baseFee * 2n + 1n,
        maxPriorityFeePerGas: 0n,
        data: hexToBytes(data),
      }, { common: node.common }).sign(signerKey);
      hashes.push(await node.sendRawTransaction(tx.serialize()));
    }
    for (const hash of hashes) await waitForReceipt(node, hash);
    for (const name of missing) {
      if (!(await hasCode(expected[name]))) throw new Error(`deployment of ${name} failed`);
    }
  }
  const record: DeploymentRecord = {
    chainId: node.chainId,
    signer,
    genesisHash,
    contracts: { ResourceAnchor: expected.ResourceAnchor, ConsentRegistry: expected.ConsentRegistry, IdentityRegistry: expected.IdentityRegistry },
  };
  const file = deploymentPath(dataDir);
  const text = `${JSON.stringify(record, null, 2)}\n`;
  if (!existsSync(file) || readFileSync(file, 'utf8') !== text) writeFileSync(file, text, { mode: 0o600 });
  return record.contracts;
}

/** Waits until the transaction's block is the head (the pool lets go of it only after that). */
async function waitForReceipt(node: ChainNode, hash: string): Promise<void> {
  const deadline = Date.now() + 120_000;
  for (;;) {
    const pending = node.pool.get(hash) !== undefined;
    if (!pending) {
      if (await node.receipts.txLocation(hash)) return;
      throw new Error(`deployment transaction ${hash} was dropped`);
    }
    if (Date.now() > deadline) throw new Error(`deployment transaction ${hash} was not sealed`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
