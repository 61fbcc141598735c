/**
 * Patients' signing keys. A patient is registered in the IdentityRegistry under a pseudonym
 * (HMAC of the Patient id under a key derived from the master key, so the chain never holds the id)
 * with either
 * - a custodial key: a secp256k1 key GlucoGuard generates and keeps on disk encrypted (AES-256-GCM)
 *   under a per-patient key derived from the master key, used to sign the patient's grants when the
 *   patient acts through an authenticated session; or
 * - the address of the patient's own wallet (non-custodial): GlucoGuard only hands out typed data
 *   and relays the signature the wallet returns.
 */
import { createCipheriv, createDecipheriv, createHmac, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { getAddress, hexlify, Wallet } from 'ethers';
import { conflict } from '../errors.js';
import { deriveKey } from '../keys.js';
import type { IdentityRegistryClient } from '../ledger/identity-registry.js';

interface KeyFile {
  address: string;
  custodial: boolean;
  /** AES-256-GCM of the private key: base64 iv, tag, ciphertext. */
  sealed?: { iv: string; tag: string; data: string };
}

export interface PatientKey {
  /** bytes32 pseudonym used as `patientId` on chain. */
  pseudonym: string;
  address: string;
  custodial: boolean;
}

export class PatientKeys {
  private readonly pseudonymKey: Buffer;
  private readonly locks = new Map<string, Promise<unknown>>();

  constructor(private readonly options: { dir: string; masterKey: string; identity: IdentityRegistryClient }) {
    this.pseudonymKey = deriveKey(options.masterKey, 'patient-pseudonym');
    mkdirSync(options.dir, { recursive: true, mode: 0o700 });
  }

  /** The patient's on-chain id: HMAC-SHA256 of `Patient/<id>`. */
  pseudonym(patientId: string): string {
    return hexlify(createHmac('sha256', this.pseudonymKey).update(`Patient/${patientId}`).digest());
  }

  /** The patient's key record, or undefined when none was made yet. */
  get(patientId: string): PatientKey | undefined {
    const file = this.read(patientId);
    return file ? { pseudonym: this.pseudonym(patientId), address: file.address, custodial: file.custodial } : undefined;
  }

  /** The patient's key, creating and registering a custodial one on first use. */
  async ensure(patientId: string): Promise<PatientKey> {
    return this.serialised(patientId, async () => {
      const existing = this.get(patientId);
      if (existing) return existing;
      const wallet = Wallet.createRandom();
      await this.options.identity.registerPatient(this.pseudonym(patientId), wallet.address);
      this.write(patientId, { address: wallet.address, custodial: true, sealed: this.seal(patientId, wallet.privateKey) });
      return { pseudonym: this.pseudonym(patientId), address: wallet.address, custodial: true };
    });
  }

  /** Registers the address of the patient's own wallet (non-custodial); 409 when the patient has a key. */
  async registerWallet(patientId: string, address: string): Promise<PatientKey> {
    return this.serialised(patientId, async () => {
      if (this.get(patientId)) throw conflict('The patient already has a key; rotate it with the patient key instead');
      const addr = getAddress(address);
      await this.options.identity.registerPatient(this.pseudonym(patientId), addr);
      this.write(patientId, { address: addr, custodial: false });
      return { pseudonym: this.pseudonym(patientId), address: addr, custodial: false };
    });
  }

  /** The custodial signer of the patient; undefined for a non-custodial patient. */
  signer(patientId: string): Wallet | undefined {
    const file = this.read(patientId);
    if (!file?.custodial || !file.sealed) return undefined;
    return new Wallet(this.unseal(patientId, file.sealed));
  }

  private file(patientId: string): string {
    return path.join(this.options.dir, `${this.pseudonym(patientId).slice(2)}.json`);
  }

  private read(patientId: string): KeyFile | undefined {
    const file = this.file(patientId);
    return existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')) as KeyFile : undefined;
  }

  private write(patientId: string, content: KeyFile): void {
    const file = this.file(patientId);
    writeFileSync(`${file}.tmp`, JSON.stringify(content), { mode: 0o600 });
    renameSync(`${file}.tmp`, file);
  }

  private seal(patientId: string, privateKey: string): KeyFile['sealed'] {
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', deriveKey(this.options.masterKey, `custodial-key:${this.pseudonym(patientId)}`), iv);
    const data = Buffer.concat([cipher.update(privateKey, 'utf8'), cipher.final()]);
    return { iv: iv.toString('base64'), tag: cipher.getAuthTag().toString('base64'), data: data.toString('base64') };
  }

  private unseal(patientId: string, sealed: NonNullable<KeyFile['sealed']>): string {
    const decipher = createDecipheriv('aes-256-gcm', deriveKey(this.options.masterKey, `custodial-key:${this.pseudonym(patientId)}`), Buffer.from(sealed.iv, 'base64'));
    decipher.setAuthTag(Buffer.from(sealed.tag, 'base64'));
    return Buffer.concat([decipher.update(Buffer.from(sealed.data, 'base64')), decipher.final()]).toString('utf8');
  }

  private async serialised<T>(patientId: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(patientId) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    this.locks.set(patientId, next.catch(() => undefined));
    return next;
  }
}
