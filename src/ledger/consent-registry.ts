/**
 * ConsentRegistry (chain/contracts/IConsentRegistry.sol) seen from the proxy: the EIP-712 typed data
 * the patient's key signs (domain read from the contract's `eip712Domain()`, EIP-5267), relaying a
 * signed grant or revocation through the one authority signer, and reading grants back.
 *
 * Errors: a revert the signer or the terms caused → ERR_UNPROCESSABLE (422) naming the contract
 * error; a node that cannot be reached → ERR_UNAVAILABLE (503), so callers fail closed.
 */
import { Contract, TypedDataEncoder, type TypedDataDomain, type TypedDataField } from 'ethers';
import { issue, unavailable, unprocessable } from '../errors.js';
import type { ChainClient } from './client.js';
import type { Grant, GrantTermsInput } from './contracts.generated.js';
import { waitForReceipt } from './rpc.js';

export const GRANT_TYPES: Record<string, TypedDataField[]> = {
  Grant: [
    { name: 'patient', type: 'address' },
    { name: 'grantee', type: 'address' },
    { name: 'scopeHash', type: 'bytes32' },
    { name: 'dataFrom', type: 'uint64' },
    { name: 'dataTo', type: 'uint64' },
    { name: 'notBefore', type: 'uint64' },
    { name: 'notAfter', type: 'uint64' },
    { name: 'purpose', type: 'bytes32' },
    { name: 'nonce', type: 'uint256' },
    { name: 'deadline', type: 'uint256' },
  ],
};
export const REVOKE_TYPES: Record<string, TypedDataField[]> = {
  Revoke: [
    { name: 'grantId', type: 'bytes32' },
    { name: 'nonce', type: 'uint256' },
    { name: 'deadline', type: 'uint256' },
  ],
};

/** EIP-712 typed data as a wallet's `eth_signTypedData_v4` takes it (numbers as decimal strings). */
export interface TypedData<Primary extends string = 'Grant' | 'Revoke', Message = Record<string, string>> {
  domain: TypedDataDomain;
  types: Record<string, TypedDataField[]>;
  primaryType: Primary;
  message: Message;
}

export interface StoredGrant {
  grantId: string;
  patient: string;
  grantee: string;
  scopeHash: string;
  dataFrom: number;
  dataTo: number;
  notBefore: number;
  notAfter: number;
  purpose: string;
  patientId: string;
  grantedAt: number;
  revoked: boolean;
}

export class ConsentRegistryClient {
  private domainPromise: Promise<TypedDataDomain> | undefined;

  constructor(private readonly chain: ChainClient) {}

  private get contract(): Contract {
    return this.chain.contract('ConsentRegistry');
  }

  /** The EIP-712 domain, read once from the contract. */
  async domain(): Promise<TypedDataDomain> {
    this.domainPromise ??= chainCall(async () => {
      const d = await this.contract.eip712Domain!() as unknown as [string, string, string, bigint, string];
      return { name: d[1], version: d[2], chainId: Number(d[3]), verifyingContract: d[4] };
    }).catch((err: unknown) => {
      this.domainPromise = undefined;
      throw err;
    });
    return this.domainPromise;
  }

  async nonce(key: string): Promise<bigint> {
    return chainCall(() => this.contract.nonces!(key) as Promise<bigint>);
  }

  /** Typed data for a grant signed by `terms.patient`, with the key's current nonce. */
  async grantTypedData(terms: GrantTermsInput, deadline: number): Promise<TypedData> {
    const [domain, nonce] = await Promise.all([this.domain(), this.nonce(terms.patient)]);
    const message = Object.fromEntries(Object.entries({ ...terms, nonce, deadline }).map(([k, v]) => [k, String(v)]));
    return { domain, types: GRANT_TYPES, primaryType: 'Grant', message };
  }

  /** Typed data for revoking `grantId`, signed by the patient's current key `signer`. */
  async revokeTypedData(grantId: string, signer: string, deadline: number): Promise<TypedData> {
    const [domain, nonce] = await Promise.all([this.domain(), this.nonce(signer)]);
    return { domain, types: REVOKE_TYPES, primaryType: 'Revoke', message: { grantId, nonce: String(nonce), deadline: String(deadline) } };
  }

  /** The grant id the contract will assign: the EIP-712 digest of the Grant message. */
  static grantIdOf(typed: TypedData): string {
    return TypedDataEncoder.hash(typed.domain, typed.types, typed.message);
  }

  /** Relays a signed grant and waits for the block holding it; returns the grant id and transaction. */
  async relayGrant(typed: TypedData, signature: string): Promise<{ grantId: string; txHash: string; blockNumber: number }> {
    const m = typed.message;
    const terms = {
      patient: m.patient!, grantee: m.grantee!, scopeHash: m.scopeHash!, dataFrom: m.dataFrom!, dataTo: m.dataTo!,
      notBefore: m.notBefore!, notAfter: m.notAfter!, purpose: m.purpose!,
    };
    const receipt = await this.send('grant', [terms, m.deadline, signature]);
    return { grantId: ConsentRegistryClient.grantIdOf(typed), ...receipt };
  }

  /** Relays a signed revocation and waits for its block. */
  async relayRevoke(typed: TypedData, signature: string): Promise<{ txHash: string; blockNumber: number }> {
    return this.send('revoke', [typed.message.grantId, typed.message.deadline, signature]);
  }

  /** A grant as stored on chain, or undefined when no grant has this id. */
  async getGrant(grantId: string): Promise<StoredGrant | undefined> {
    try {
      const g = await this.contract.getGrant!(grantId) as unknown as Grant;
      const t = g.terms;
      return {
        grantId, patient: t.patient, grantee: t.grantee, scopeHash: t.scopeHash, dataFrom: Number(t.dataFrom), dataTo: Number(t.dataTo),
        notBefore: Number(t.notBefore), notAfter: Number(t.notAfter), purpose: t.purpose, patientId: g.patientId,
        grantedAt: Number(g.grantedAt), revoked: g.revoked,
      };
    } catch (err) {
      if (revertName(err) === 'ConsentRegistryUnknownGrant') return undefined;
      throw unavailable('The consent registry cannot be reached', err);
    }
  }

  private async send(method: 'grant' | 'revoke', args: unknown[]): Promise<{ txHash: string; blockNumber: number }> {
    const fn = this.contract.getFunction(method);
    try {
      // Simulate first: a bad signature or window answers 422 without spending a nonce.
      await fn.staticCall(...args);
    } catch (err) {
      throw contractError(err, this.contract);
    }
    try {
      const receipt = await sendWithNonceRetry(this.chain, () => fn.send(...args));
      return { txHash: receipt.hash, blockNumber: receipt.blockNumber };
    } catch (err) {
      throw contractError(err, this.contract);
    }
  }
}

/**
 * Sends and waits for the receipt. Another replica sharing the authority key may have used the
 * nonce this process expected: refused at once ("nonce too low", "replacement underpriced"), or
 * accepted with a higher fee so that it replaced this transaction in the pool (seen while waiting:
 * the nonce is mined, this receipt never comes). Either way the nonce manager is reset from the
 * node and the send retried, a few times.
 */
export async function sendWithNonceRetry(
  chain: ChainClient, send: () => Promise<{ hash: string; from?: string; nonce?: number }>, timeoutMs = 60_000,
): Promise<{ hash: string; blockNumber: number }> {
  for (let attempt = 0; ; attempt++) {
    try {
      const tx = await send();
      // Poll the receipt every 100 ms: the provider's default polling (4 s) would dominate a grant.
      const receipt = await waitForReceipt(chain.provider, tx.hash, {
        timeoutMs, pollMs: 100, ...(tx.from !== undefined && tx.nonce !== undefined ? { sender: tx.from, nonce: tx.nonce } : {}),
      });
      if (receipt.status !== 1) throw new Error('transaction failed');
      return { hash: receipt.hash, blockNumber: receipt.blockNumber };
    } catch (err) {
      const code = (err as { code?: string })?.code;
      if (attempt >= 4 || (code !== 'NONCE_EXPIRED' && code !== 'REPLACEMENT_UNDERPRICED' && code !== 'ERR_TX_REPLACED')) throw err;
      (chain.authority as { reset?: () => void }).reset?.();
    }
  }
}

/** Runs a read against the node; any failure is ERR_UNAVAILABLE. */
export async function chainCall<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw unavailable('The chain cannot be reached', err);
  }
}

/** A contract revert → 422 naming the contract error; anything else → 503. */
export function contractError(err: unknown, contract: Contract): Error {
  const name = revertName(err) ?? decodeData(err, contract);
  if (name) return unprocessable([issue('ERR_UNPROCESSABLE', `The chain refused the signed message: ${name}`)]);
  return unavailable('The chain cannot be reached', err);
}

function revertName(err: unknown): string | undefined {
  return (err as { revert?: { name?: string } })?.revert?.name;
}

function decodeData(err: unknown, contract: Contract): string | undefined {
  const data = (err as { data?: string })?.data ?? (err as { info?: { error?: { data?: string } } })?.info?.error?.data;
  if (typeof data !== 'string' || data.length < 10) return undefined;
  try {
    return contract.interface.parseError(data)?.name;
  } catch {
    return undefined;
  }
}
