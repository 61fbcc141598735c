/**
 * IdentityRegistry (chain/contracts/IIdentityRegistry.sol) seen from the proxy: patients (a
 * pseudonymous id with a current key) and grantees (addresses of practitioners, organisations,
 * clients). The FHIR side of a grantee is kept on chain only as `ref = keccak256("Practitioner/ID")`;
 * the address of a FHIR reference is found from the `GranteeRegistered` events with that ref.
 */
import { Contract, getAddress, keccak256, toUtf8Bytes, ZeroHash } from 'ethers';
import { conflict } from '../errors.js';
import type { ChainClient } from './client.js';
import { chainCall, contractError, sendWithNonceRetry } from './consent-registry.js';

/** The on-chain ref of a FHIR reference or client (`Practitioner/7`, `Client/my-app`). */
export function identityRef(reference: string): string {
  return keccak256(toUtf8Bytes(reference));
}

export class IdentityRegistryClient {
  /**
   * @param registeredUnder where to find the addresses ever registered under a ref (an index kept
   * from the chain's events, see src/consent/grant-index.ts); without it, `GranteeRegistered`
   * logs are read from block 0 on each lookup.
   */
  constructor(private readonly chain: ChainClient, private readonly registeredUnder?: (ref: string) => Promise<string[]>) {}

  private get contract(): Contract {
    return this.chain.contract('IdentityRegistry');
  }

  /** Registers a grantee address for a FHIR reference (or `Client/<client_id>`). 409 when the address is taken. */
  async registerGrantee(reference: string, address: string): Promise<{ txHash: string }> {
    const addr = getAddress(address);
    if (await chainCall(() => this.contract.isGrantee!(addr) as Promise<boolean>)) throw conflict(`${addr} is already registered`);
    return this.send('registerGrantee', [addr, identityRef(reference)]);
  }

  async removeGrantee(address: string): Promise<{ txHash: string }> {
    return this.send('removeGrantee', [getAddress(address)]);
  }

  /** Registered addresses currently standing for this reference (newest first). */
  async granteesOf(reference: string): Promise<string[]> {
    const c = this.contract;
    let candidates: string[];
    if (this.registeredUnder) {
      candidates = await this.registeredUnder(identityRef(reference));
    } else {
      const filter = c.filters.GranteeRegistered!(undefined, identityRef(reference));
      const logs = await chainCall(() => c.queryFilter(filter, 0, 'latest'));
      candidates = [...new Set(logs.reverse().map((l) => getAddress(`0x${l.topics[1]!.slice(26)}`)))];
    }
    const out: string[] = [];
    for (const addr of candidates) {
      const ref = await chainCall(() => c.granteeRef!(addr) as Promise<string>);
      if (ref === identityRef(reference)) out.push(addr);
    }
    return out;
  }

  /** The patient's current key, or undefined when the patient is not registered. */
  async patientKey(patientId: string): Promise<string | undefined> {
    const key = await chainCall(() => this.contract.patientKey!(patientId) as Promise<string>);
    return /^0x0{40}$/i.test(key) ? undefined : key;
  }

  async registerPatient(patientId: string, key: string): Promise<{ txHash: string }> {
    if (patientId === ZeroHash) throw new Error('patient id must not be zero');
    return this.send('registerPatient', [patientId, getAddress(key)]);
  }

  private async send(method: string, args: unknown[]): Promise<{ txHash: string }> {
    const fn = this.contract.getFunction(method);
    try {
      await fn.staticCall(...args);
      const receipt = await sendWithNonceRetry(this.chain, () => fn.send(...args));
      return { txHash: receipt.hash };
    } catch (err) {
      throw contractError(err, this.contract);
    }
  }
}
