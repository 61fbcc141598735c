/**
 * The signer (authority) key of the embedded node: generated on first start into
 * `<dataDir>/chain/signer.key` (hex, mode 0600) and reused afterwards. The proxy sends its transactions
 * with this key, so on the embedded chain the Clique signer and the contract authority are one account.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';

/**
 * The order of secp256k1's group: a private key is a 32-byte number in [1, n − 1] (SEC 1 §3.2.1).
 * Checked here rather than with @ethereumjs/util so that the request thread of every process (which
 * reads this key to sign with ethers) does not load the EVM packages, ~70 modules.
 */
const SECP256K1_ORDER = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141n;

function isValidPrivate(key: Uint8Array): boolean {
  if (key.length !== 32) return false;
  const k = BigInt(`0x${Buffer.from(key).toString('hex')}`);
  return k > 0n && k < SECP256K1_ORDER;
}

const bytesToHex = (bytes: Uint8Array): string => `0x${Buffer.from(bytes).toString('hex')}`;

/** Directory holding the embedded chain's files inside a data directory. */
export function chainDir(dataDir: string): string {
  return path.join(dataDir, 'chain');
}

/** Path of the signer key file. */
export function signerKeyPath(dataDir: string): string {
  return path.join(chainDir(dataDir), 'signer.key');
}

/**
 * Reads the authority private key (`0x`-prefixed hex) of the embedded chain in `dataDir`.
 * Throws when the node has never been started there.
 */
export function loadAuthorityKey(dataDir: string): string {
  const file = signerKeyPath(dataDir);
  const hex = readFileSync(file, 'utf8').trim().replace(/^0x/, '');
  if (!/^[0-9a-fA-F]{64}$/.test(hex) || !isValidPrivate(Buffer.from(hex, 'hex'))) throw new Error(`${file} does not hold a valid secp256k1 private key`);
  return `0x${hex.toLowerCase()}`;
}

/** Loads the signer key, creating it (0600) when absent. */
export function loadOrCreateSignerKey(dataDir: string): Uint8Array {
  const file = signerKeyPath(dataDir);
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  if (!existsSync(file)) {
    let key: Uint8Array;
    do key = new Uint8Array(randomBytes(32)); while (!isValidPrivate(key));
    // 'wx' fails if another process created it meanwhile; then we read theirs below.
    try {
      writeFileSync(file, `${bytesToHex(key)}\n`, { mode: 0o600, flag: 'wx' });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
  if ((statSync(file).mode & 0o077) !== 0) chmodSync(file, 0o600);
  return new Uint8Array(Buffer.from(loadAuthorityKey(dataDir).slice(2), 'hex'));
}
