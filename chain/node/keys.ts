/**
 * The signer (authority) key of the embedded node: generated on first start into
 * `<dataDir>/chain/signer.key` (hex, mode 0600) and reused afterwards. The proxy sends its transactions
 * with this key, so on the embedded chain the Clique signer and the contract authority are one account.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { bytesToHex, hexToBytes, isValidPrivate } from '@ethereumjs/util';

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
  const hex = readFileSync(file, 'utf8').trim();
  const key = hexToBytes(hex.startsWith('0x') ? (hex as `0x${string}`) : `0x${hex}`);
  if (key.length !== 32 || !isValidPrivate(key)) throw new Error(`${file} does not hold a valid secp256k1 private key`);
  return bytesToHex(key);
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
  return hexToBytes(loadAuthorityKey(dataDir) as `0x${string}`);
}
