/**
 * Guardians for key recovery (IdentityRegistry `setGuardians` / `recover`, EIP-712 signed; domain
 * read from the contract's `eip712Domain()`):
 * - the patient names guardians — addresses, or registered identities (`RelatedPerson/ID`,
 *   `Practitioner/ID`, resolved to their address in the IdentityRegistry) — and a threshold; the
 *   patient's key signs `SetGuardians` (custodial: in the patient's session; a wallet: the typed
 *   data goes back to the client and its signature comes back through `submitSignature`);
 * - recovery: a new custodial key is prepared under the patient's current sign-in, `threshold`
 *   guardians sign `Recover(patientId, newKey, …)` with their own keys, and the relayed `recover`
 *   makes the new key the patient's key on chain and on disk.
 * The chain holds only addresses; which identity an address stood for is kept next to the key
 * file so the portal can name guardians.
 */
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Contract, getAddress, isAddress, Signature, type TypedDataDomain, type TypedDataField } from 'ethers';
import { badRequest, issue, unprocessable } from '../../errors.js';
import type { KeyValueStore } from '../../kv/port.js';
import type { ChainClient } from '../../ledger/client.js';
import { chainCall, contractError, sendWithNonceRetry, type TypedData } from '../../ledger/consent-registry.js';
import type { IdentityRegistryClient } from '../../ledger/identity-registry.js';
import type { KeySession as Session, PatientKeys } from '../patient-keys.js';

export const SET_GUARDIANS_TYPES: Record<string, TypedDataField[]> = {
  SetGuardians: [
    { name: 'patientId', type: 'bytes32' },
    { name: 'guardians', type: 'address[]' },
    { name: 'threshold', type: 'uint8' },
    { name: 'nonce', type: 'uint256' },
    { name: 'deadline', type: 'uint256' },
  ],
};

export const RECOVER_TYPES: Record<string, TypedDataField[]> = {
  Recover: [
    { name: 'patientId', type: 'bytes32' },
    { name: 'newKey', type: 'address' },
    { name: 'nonce', type: 'uint256' },
    { name: 'deadline', type: 'uint256' },
  ],
};

export type GuardianTypedData = TypedData<'SetGuardians' | 'Recover', Record<string, unknown>>;

export interface Guardian {
  address: string;
  /** The identity the patient chose (`RelatedPerson/7`), when they chose one. */
  reference?: string;
}

export interface GuardianSet {
  guardians: Guardian[];
  threshold: number;
}

export type GuardianOutcome =
  | { state: 'done'; guardians: GuardianSet; txHash: string }
  | { state: 'awaiting-signature'; typedData: GuardianTypedData };

const MAX_GUARDIANS = 10;
const PENDING_TTL_MS = 60 * 60_000;
const RECOVERY_TTL_MS = 24 * 60 * 60_000;
const REFERENCE = /^(RelatedPerson|Practitioner|Organization)\/[A-Za-z0-9\-.]{1,64}$/;

export class KeyGuardians {
  private domainPromise: Promise<TypedDataDomain> | undefined;
  private readonly now: () => number;

  constructor(private readonly options: {
    keys: PatientKeys; identity: IdentityRegistryClient; chain: ChainClient; kv: KeyValueStore; dir: string; now?: () => number;
  }) {
    this.now = options.now ?? Date.now;
  }

  private get contract(): Contract {
    return this.options.chain.contract('IdentityRegistry');
  }

  /** The patient's guardians on chain (with the identities they were chosen as) and the threshold. */
  async current(patientId: string): Promise<GuardianSet> {
    const pseudonym = this.options.keys.pseudonym(patientId);
    const [addresses, threshold] = await chainCall(() => this.contract.guardiansOf!(pseudonym) as Promise<[string[], bigint]>);
    const labels = this.labels(patientId);
    return { guardians: [...addresses].map((a) => ({ address: getAddress(a), ...(labels[getAddress(a)] ? { reference: labels[getAddress(a)] } : {}) })), threshold: Number(threshold) };
  }

  /**
   * Sets the guardians and threshold (an empty list with threshold 0 removes them). Bad input (an
   * unknown identity, a bad address, a threshold out of range) is 400/422 and changes nothing.
   */
  async set(patientId: string, entries: unknown, threshold: unknown, session: Session): Promise<GuardianOutcome> {
    const key = this.options.keys.get(patientId);
    if (!key) throw unprocessable([issue('ERR_UNPROCESSABLE', 'You have no signing key yet: share your data once, or register your wallet, first')]);
    const guardians = await this.resolve(entries, key.address);
    if (typeof threshold !== 'number' || !Number.isInteger(threshold)
      || (guardians.length === 0 ? threshold !== 0 : threshold < 1 || threshold > guardians.length)) {
      throw badRequest(`threshold must be a whole number from 1 to the number of guardians (${guardians.length})`, 'threshold');
    }
    const wallet = await this.options.keys.signer(patientId, session);
    const typedData: GuardianTypedData = {
      domain: await this.domain(),
      types: SET_GUARDIANS_TYPES,
      primaryType: 'SetGuardians',
      message: {
        patientId: key.pseudonym, guardians: guardians.map((g) => g.address), threshold: String(threshold),
        nonce: String(await this.nonce(key.pseudonym)), deadline: String(Math.floor(this.now() / 1000) + 3600),
      },
    };
    const pending = { typedData, labels: Object.fromEntries(guardians.filter((g) => g.reference).map((g) => [g.address, g.reference!])) };
    if (!wallet) {
      await this.options.kv.set(this.pendingKey(patientId), JSON.stringify(pending), PENDING_TTL_MS);
      return { state: 'awaiting-signature', typedData };
    }
    const signature = await wallet.signTypedData(typedData.domain, typedData.types, typedData.message);
    return this.relaySet(patientId, pending, signature);
  }

  /** Relays the wallet's signature of the pending SetGuardians. */
  async submitSignature(patientId: string, signature: unknown): Promise<GuardianOutcome> {
    const raw = await this.options.kv.get(this.pendingKey(patientId));
    if (!raw) throw unprocessable([issue('ERR_UNPROCESSABLE', 'No guardian change is waiting for a signature (or it expired)')]);
    const result = await this.relaySet(patientId, JSON.parse(raw) as PendingSet, normaliseSignature(signature));
    await this.options.kv.delete(this.pendingKey(patientId));
    return result;
  }

  /**
   * Starts a guardian recovery: a new custodial key under the patient's current sign-in, and the
   * `Recover` typed data each guardian signs with their own key.
   */
  async startRecovery(patientId: string, session: Session): Promise<{ newKey: string; typedData: GuardianTypedData; threshold: number }> {
    const key = this.options.keys.get(patientId);
    if (!key) throw unprocessable([issue('ERR_UNPROCESSABLE', 'The patient has no key to recover')]);
    const { threshold } = await this.current(patientId);
    if (threshold === 0) throw unprocessable([issue('ERR_UNPROCESSABLE', 'No guardians are set for this key: it cannot be recovered by guardians')]);
    const newKey = await this.options.keys.prepareRecoveryKey(patientId, session);
    const typedData = await this.recoverTypedData(patientId, newKey);
    await this.options.kv.set(this.recoveryKey(patientId), JSON.stringify(typedData), RECOVERY_TTL_MS);
    return { newKey, threshold, typedData };
  }

  /** The recovery waiting for guardian signatures (started through the API), if any. */
  async pendingRecovery(patientId: string): Promise<GuardianTypedData | undefined> {
    const raw = await this.options.kv.get(this.recoveryKey(patientId));
    const typedData = raw ? JSON.parse(raw) as GuardianTypedData : undefined;
    const waiting = this.options.keys.pendingRecovery(patientId);
    return typedData && waiting && getAddress(String(typedData.message.newKey)) === waiting ? typedData : undefined;
  }

  /** The `Recover` typed data for the pending key (current nonce; valid for 24 hours). */
  async recoverTypedData(patientId: string, newKey: string, deadline = Math.floor(this.now() / 1000) + 24 * 3600): Promise<GuardianTypedData> {
    const pseudonym = this.options.keys.pseudonym(patientId);
    return {
      domain: await this.domain(), types: RECOVER_TYPES, primaryType: 'Recover',
      message: { patientId: pseudonym, newKey: getAddress(newKey), nonce: String(await this.nonce(pseudonym)), deadline: String(deadline) },
    };
  }

  /**
   * Relays the guardians' signatures of `typedData` (default: the recovery started through the API);
   * on success the pending key becomes the patient's key.
   */
  async recover(patientId: string, signatures: unknown, given?: GuardianTypedData): Promise<{ address: string; txHash: string }> {
    const typedData = given ?? await this.pendingRecovery(patientId);
    if (!typedData) throw unprocessable([issue('ERR_UNPROCESSABLE', 'No recovery is waiting for this patient (or it expired): start one first')]);
    if (!Array.isArray(signatures) || signatures.length === 0) throw badRequest('signatures must be a list of the guardians\' signatures', 'signatures');
    const sigs = signatures.map(normaliseSignature);
    const m = typedData.message as { patientId: string; newKey: string; deadline: string };
    if (m.patientId !== this.options.keys.pseudonym(patientId) || this.options.keys.pendingRecovery(patientId) !== getAddress(m.newKey)) {
      throw unprocessable([issue('ERR_UNPROCESSABLE', 'These signatures are not for the recovery waiting for this patient')]);
    }
    const { txHash } = await this.send('recover', [m.patientId, m.newKey, m.deadline, sigs]);
    await this.options.keys.completeRecovery(patientId, m.newKey);
    await this.options.kv.delete(this.recoveryKey(patientId));
    return { address: getAddress(m.newKey), txHash };
  }

  private async relaySet(patientId: string, pending: PendingSet, signature: string): Promise<GuardianOutcome> {
    const m = pending.typedData.message as { patientId: string; guardians: string[]; threshold: string; deadline: string };
    const { txHash } = await this.send('setGuardians', [m.patientId, m.guardians, m.threshold, m.deadline, signature]);
    this.writeLabels(patientId, pending.labels);
    return { state: 'done', guardians: await this.current(patientId), txHash };
  }

  /** Addresses or registered identities → addresses; none may repeat or be the patient's own key. */
  private async resolve(entries: unknown, ownKey: string): Promise<Guardian[]> {
    if (!Array.isArray(entries)) throw badRequest('guardians must be a list of addresses or references (RelatedPerson/ID, Practitioner/ID)', 'guardians');
    if (entries.length > MAX_GUARDIANS) throw badRequest(`At most ${MAX_GUARDIANS} guardians`, 'guardians');
    const out: Guardian[] = [];
    for (const entry of entries) {
      if (typeof entry !== 'string') throw badRequest('guardians must be strings', 'guardians');
      let guardian: Guardian;
      if (isAddress(entry)) guardian = { address: getAddress(entry) };
      else if (REFERENCE.test(entry)) {
        const [address] = await this.options.identity.granteesOf(entry);
        if (!address) throw unprocessable([issue('ERR_UNPROCESSABLE', `${entry} has no registered identity, so it cannot be a guardian yet`, 'guardians')]);
        guardian = { address: getAddress(address), reference: entry };
      } else throw badRequest(`"${String(entry).slice(0, 80)}" is neither an address nor a RelatedPerson/Practitioner reference`, 'guardians');
      if (guardian.address === getAddress(ownKey)) throw badRequest('Your own key cannot be your guardian', 'guardians');
      if (out.some((g) => g.address === guardian.address)) throw badRequest('The same guardian is named twice', 'guardians');
      out.push(guardian);
    }
    return out;
  }

  private async domain(): Promise<TypedDataDomain> {
    this.domainPromise ??= chainCall(async () => {
      const d = await this.contract.eip712Domain!() as unknown as [string, string, string, bigint, string];
      return { name: d[1], version: d[2], chainId: Number(d[3]), verifyingContract: d[4] };
    }).catch((err: unknown) => {
      this.domainPromise = undefined;
      throw err;
    });
    return this.domainPromise;
  }

  private async nonce(pseudonym: string): Promise<bigint> {
    return chainCall(() => this.contract.nonces!(pseudonym) as Promise<bigint>);
  }

  private async send(method: string, args: unknown[]): Promise<{ txHash: string }> {
    const fn = this.contract.getFunction(method);
    try {
      await fn.staticCall(...args);
      const receipt = await sendWithNonceRetry(this.options.chain, () => fn.send(...args));
      return { txHash: receipt.hash };
    } catch (err) {
      throw contractError(err, this.contract);
    }
  }

  private recoveryKey(patientId: string): string {
    return `keys:recovery:${this.options.keys.pseudonym(patientId)}`;
  }

  private pendingKey(patientId: string): string {
    return `keys:guardians:pending:${this.options.keys.pseudonym(patientId)}`;
  }

  private labelFile(patientId: string): string {
    return path.join(this.options.dir, `${this.options.keys.pseudonym(patientId).slice(2)}.guardians.json`);
  }

  private labels(patientId: string): Record<string, string> {
    const file = this.labelFile(patientId);
    return existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')) as Record<string, string> : {};
  }

  private writeLabels(patientId: string, labels: Record<string, string>): void {
    const file = this.labelFile(patientId);
    writeFileSync(`${file}.tmp`, JSON.stringify(labels), { mode: 0o600 });
    renameSync(`${file}.tmp`, file);
  }
}

interface PendingSet {
  typedData: GuardianTypedData;
  labels: Record<string, string>;
}

function normaliseSignature(signature: unknown): string {
  try {
    if (typeof signature !== 'string') throw new Error();
    return Signature.from(signature).serialized;
  } catch {
    throw badRequest('signature must be a 65-byte hex ECDSA signature', 'signature');
  }
}
