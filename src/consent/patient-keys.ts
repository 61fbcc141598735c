/**
 * Patients' signing keys. A patient is registered in the IdentityRegistry under a pseudonym
 * (HMAC of the Patient id under a key derived from the key root, so the chain never holds the id)
 * with either
 * - a custodial key: a secp256k1 key GlucoGuard generates and keeps on disk encrypted. It is
 *   wrapped (keys/wrap.ts) under the key root AND the patient's password ("login wrap"): the
 *   server can sign for a patient only inside a session the patient opened by signing in
 *   (keys/sessions.ts). A second, optional wrap under a recovery code the patient keeps ("recovery
 *   wrap") is the key's backup; guardians on chain (keys/guardians.ts) are the last resort.
 *   A key made before the patient ever signed in (operator tools, older versions) is sealed under the
 *   key root alone ("server-held") and moved under the login at the patient's next sign-in; or
 * - the address of the patient's own wallet (non-custodial): GlucoGuard only hands out typed data
 *   and relays the signature the wallet returns.
 */
import { createCipheriv, createDecipheriv, createHmac, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { getAddress, hexlify, Wallet } from 'ethers';
import { badRequest, conflict, forbidden } from '../errors.js';
import type { AccessContext } from '../fhir/access.js';
import { deriveKey } from '../keys.js';
import type { KeyValueStore } from '../kv/port.js';
import type { IdentityRegistryClient } from '../ledger/identity-registry.js';
import { KeySessions } from './keys/sessions.js';
import {
  newRecoveryCode, normaliseRecoveryCode, SCRYPT_PARAMS, stretch, unwrapKey, wrapKey, type ScryptParams, type Wrap,
} from './keys/wrap.js';

interface KeyFile {
  address: string;
  custodial: boolean;
  /** Legacy: AES-256-GCM under the key root only. Replaced by `login` at the next sign-in. */
  sealed?: { iv: string; tag: string; data: string };
  /** Under the key root and the patient's password. */
  login?: Wrap;
  /** Under the key root and the recovery code (the backup). */
  recovery?: Wrap & { createdAt: string };
  /** A new key waiting for the guardians' signatures (keys/guardians.ts), under the current login. */
  pendingRecovery?: { address: string; login: Wrap; createdAt: string };
}

export interface PatientKey {
  /** bytes32 pseudonym used as `patientId` on chain. */
  pseudonym: string;
  address: string;
  custodial: boolean;
}

/** How a custodial key is protected, in the terms the portal explains. */
export interface KeyProtection {
  /** login: needs the patient's sign-in; server: the server alone holds it (until the next sign-in); wallet: the patient's own. */
  protection: 'login' | 'server' | 'wallet';
  /** When the recovery code (backup) was made; null when there is none. */
  recoveryCodeCreated: string | null;
  /** True when this session cannot open the key (password reset elsewhere): recovery is needed. */
  locked?: boolean;
}

/** Who is asking, as far as keys care: the session (OAuth grant id) that may hold an unlock. */
export type KeySession = Pick<AccessContext, 'kind'> & { grantId?: string };

const LOCKED = 'Your signing key is protected by your sign-in. Sign in again to share or stop sharing (from the command line: --password-file).';

export class PatientKeys {
  private readonly pseudonymKey: Buffer;
  private readonly saltKey: Buffer;
  private readonly locks = new Map<string, Promise<unknown>>();
  readonly sessions: KeySessions;

  constructor(private readonly options: { dir: string; rootKey: string; identity: IdentityRegistryClient; kv: KeyValueStore }) {
    this.pseudonymKey = deriveKey(options.rootKey, 'patient-pseudonym');
    this.saltKey = deriveKey(options.rootKey, 'custodial-login-salt');
    this.sessions = new KeySessions(options.kv, options.rootKey);
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

  /** How the key is protected and whether it is backed up; undefined when the patient has no key. */
  async protection(patientId: string, session?: KeySession): Promise<KeyProtection | undefined> {
    const file = this.read(patientId);
    if (!file) return undefined;
    if (!file.custodial) return { protection: 'wallet', recoveryCodeCreated: null };
    const out: KeyProtection = { protection: file.login ? 'login' : 'server', recoveryCodeCreated: file.recovery?.createdAt ?? null };
    if (file.login && session?.kind === 'token') {
      const unlock = await this.sessions.get(session.grantId, this.pseudonym(patientId));
      if (unlock) out.locked = unwrapKey(this.options.rootKey, this.pseudonym(patientId), 'login', unlock, file.login) === undefined;
    }
    return out;
  }

  /**
   * The patient's key, creating and registering a custodial one on first use: under the login of the
   * session when it has one, server-held otherwise (moved under the login at the next sign-in).
   */
  async ensure(patientId: string, session?: KeySession): Promise<PatientKey> {
    const unlock = await this.sessions.get(session?.grantId, this.pseudonym(patientId));
    return this.serialised(patientId, async () => {
      const existing = this.get(patientId);
      if (existing) return existing;
      const wallet = Wallet.createRandom();
      await this.options.identity.registerPatient(this.pseudonym(patientId), wallet.address);
      const pseudonym = this.pseudonym(patientId);
      this.write(patientId, unlock
        ? { address: wallet.address, custodial: true, login: wrapKey(this.options.rootKey, pseudonym, 'login', unlock, wallet.privateKey, SCRYPT_PARAMS) }
        : { address: wallet.address, custodial: true, sealed: this.seal(patientId, wallet.privateKey) });
      return { pseudonym, address: wallet.address, custodial: true };
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

  /**
   * The custodial signer of the patient for this session; undefined for a non-custodial patient.
   * Throws ERR_FORBIDDEN (403) when the key is under the patient's login and the session holds no
   * unlock that opens it.
   */
  async signer(patientId: string, session?: KeySession): Promise<Wallet | undefined> {
    const file = this.read(patientId);
    if (!file?.custodial) return undefined;
    if (file.sealed && !file.login) return new Wallet(this.unseal(patientId, file.sealed));
    if (!file.login) return undefined;
    const pseudonym = this.pseudonym(patientId);
    const unlock = await this.sessions.get(session?.grantId, pseudonym);
    const privateKey = unlock && unwrapKey(this.options.rootKey, pseudonym, 'login', unlock, file.login);
    if (!privateKey) throw forbidden(LOCKED);
    return new Wallet(privateKey);
  }

  /** Stretches the patient's password into the unlock of their login wrap (scrypt, about 0.1 s). */
  async deriveUnlock(patientId: string, password: string): Promise<Buffer> {
    const salt = createHmac('sha256', this.saltKey).update(this.pseudonym(patientId)).digest();
    return stretch(password, salt, SCRYPT_PARAMS);
  }

  /**
   * At sign-in (the password was just verified): keeps the unlock for the session `gid` and moves a
   * server-held key under the login. A key whose login wrap this password does not open (the
   * password was reset elsewhere) is left as it is: recovery code or guardians re-open it.
   */
  async onLogin(patientId: string, password: string, gid: string, ttlMs: number): Promise<void> {
    const file = this.read(patientId);
    if (file && !file.custodial) return;
    const unlock = await this.deriveUnlock(patientId, password);
    await this.sessions.put(gid, this.pseudonym(patientId), unlock, ttlMs);
    if (file?.sealed && !file.login) {
      await this.serialised(patientId, async () => {
        const current = this.read(patientId);
        if (!current?.sealed || current.login) return;
        const privateKey = this.unseal(patientId, current.sealed);
        const { sealed: _legacy, ...rest } = current;
        this.write(patientId, { ...rest, login: wrapKey(this.options.rootKey, this.pseudonym(patientId), 'login', unlock, privateKey, SCRYPT_PARAMS) });
      });
    }
  }

  /** A session for operator tools: the patient's password opens it (wrong password: 403, nothing kept). */
  async openSession(patientId: string, password: string, ttlMs = 5 * 60_000): Promise<string> {
    const gid = `cli-${randomBytes(16).toString('base64url')}`;
    const file = this.read(patientId);
    const unlock = await this.deriveUnlock(patientId, password);
    if (file?.login && !unwrapKey(this.options.rootKey, this.pseudonym(patientId), 'login', unlock, file.login)) {
      throw forbidden("The password does not open the patient's signing key");
    }
    await this.sessions.put(gid, this.pseudonym(patientId), unlock, ttlMs);
    return gid;
  }

  /** Re-wraps the key under a new password (password change); the old password must open it. */
  async changePassword(patientId: string, oldPassword: string, newPassword: string): Promise<void> {
    const [oldUnlock, newUnlock] = [await this.deriveUnlock(patientId, oldPassword), await this.deriveUnlock(patientId, newPassword)];
    await this.serialised(patientId, async () => {
      const file = this.read(patientId);
      if (!file?.custodial) return;
      const pseudonym = this.pseudonym(patientId);
      const privateKey = file.login ? unwrapKey(this.options.rootKey, pseudonym, 'login', oldUnlock, file.login)
        : file.sealed ? this.unseal(patientId, file.sealed) : undefined;
      if (!privateKey) throw forbidden("The current password does not open the patient's signing key");
      const { sealed: _legacy, ...rest } = file;
      const pending = file.pendingRecovery && unwrapKey(this.options.rootKey, pseudonym, 'login', oldUnlock, file.pendingRecovery.login);
      this.write(patientId, {
        ...rest,
        login: wrapKey(this.options.rootKey, pseudonym, 'login', newUnlock, privateKey, SCRYPT_PARAMS),
        ...(file.pendingRecovery && pending
          ? { pendingRecovery: { ...file.pendingRecovery, login: wrapKey(this.options.rootKey, pseudonym, 'login', newUnlock, pending, SCRYPT_PARAMS) } }
          : {}),
      });
    });
  }

  /**
   * Makes (or replaces) the recovery code: a second wrap of the key, opened by the code. Returns the
   * code; it is shown to the patient once and never stored in clear.
   */
  async createRecoveryCode(patientId: string, session?: KeySession): Promise<string> {
    const wallet = await this.signer(patientId, session);
    if (!wallet) throw badRequest('Only a key GlucoGuard keeps for you has a recovery code; your own wallet has its own recovery phrase');
    const code = newRecoveryCode();
    const salt = randomBytes(16);
    const unlock = await stretch(normaliseRecoveryCode(code), salt);
    await this.serialised(patientId, async () => {
      const file = this.read(patientId)!;
      if (getAddress(file.address) !== getAddress(wallet.address)) throw conflict('The key changed meanwhile; try again');
      const kdf: ScryptParams = { ...SCRYPT_PARAMS, salt: salt.toString('base64') };
      this.write(patientId, {
        ...file,
        recovery: { ...wrapKey(this.options.rootKey, this.pseudonym(patientId), 'recovery', unlock, wallet.privateKey, kdf), createdAt: new Date().toISOString() },
      });
    });
    return code;
  }

  /**
   * Opens the key with the recovery code and wraps it under the login of this session (after a
   * password reset). A wrong code changes nothing (403).
   */
  async recoverWithCode(patientId: string, code: string, session: KeySession): Promise<void> {
    const pseudonym = this.pseudonym(patientId);
    const unlock = await this.sessions.get(session.grantId, pseudonym);
    if (!unlock) throw forbidden('Sign in again first: the key is re-protected with your current sign-in');
    const file = this.read(patientId);
    if (!file?.recovery) throw badRequest('There is no recovery code for this key');
    await this.sessions.countAttempt(pseudonym);
    const salt = Buffer.from(file.recovery.kdf?.salt ?? '', 'base64');
    const codeUnlock = await stretch(normaliseRecoveryCode(code), salt, file.recovery.kdf);
    const privateKey = unwrapKey(this.options.rootKey, pseudonym, 'recovery', codeUnlock, file.recovery);
    if (!privateKey) throw forbidden('That recovery code does not open your key');
    await this.serialised(patientId, async () => {
      const current = this.read(patientId)!;
      const { sealed: _legacy, ...rest } = current;
      this.write(patientId, { ...rest, login: wrapKey(this.options.rootKey, pseudonym, 'login', unlock, privateKey, SCRYPT_PARAMS) });
    });
  }

  /** A new custodial key for guardian recovery, wrapped under this session's login; kept until the chain accepts it. */
  async prepareRecoveryKey(patientId: string, session: KeySession): Promise<string> {
    const pseudonym = this.pseudonym(patientId);
    const unlock = await this.sessions.get(session.grantId, pseudonym);
    if (!unlock) throw forbidden('Sign in again first: the new key is protected with your current sign-in');
    return this.serialised(patientId, async () => {
      const file = this.read(patientId);
      if (!file?.custodial) throw badRequest('Only a key GlucoGuard keeps for you is recovered here; a wallet recovers with its own phrase');
      const wallet = Wallet.createRandom();
      this.write(patientId, { ...file, pendingRecovery: {
        address: wallet.address, createdAt: new Date().toISOString(),
        login: wrapKey(this.options.rootKey, pseudonym, 'login', unlock, wallet.privateKey, SCRYPT_PARAMS),
      } });
      return wallet.address;
    });
  }

  /** The key waiting for guardian recovery, if any. */
  pendingRecovery(patientId: string): string | undefined {
    return this.read(patientId)?.pendingRecovery?.address;
  }

  /** Once the chain recovered the patient to the pending key: it becomes the key (the old wraps go). */
  async completeRecovery(patientId: string, address: string): Promise<void> {
    await this.serialised(patientId, async () => {
      const file = this.read(patientId);
      if (!file?.pendingRecovery || getAddress(file.pendingRecovery.address) !== getAddress(address)) throw conflict('No recovery is waiting for this key');
      this.write(patientId, { address: file.pendingRecovery.address, custodial: true, login: file.pendingRecovery.login });
    });
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
    const cipher = createCipheriv('aes-256-gcm', deriveKey(this.options.rootKey, `custodial-key:${this.pseudonym(patientId)}`), iv);
    const data = Buffer.concat([cipher.update(privateKey, 'utf8'), cipher.final()]);
    return { iv: iv.toString('base64'), tag: cipher.getAuthTag().toString('base64'), data: data.toString('base64') };
  }

  private unseal(patientId: string, sealed: NonNullable<KeyFile['sealed']>): string {
    const decipher = createDecipheriv('aes-256-gcm', deriveKey(this.options.rootKey, `custodial-key:${this.pseudonym(patientId)}`), Buffer.from(sealed.iv, 'base64'));
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
