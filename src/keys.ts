/**
 * The master key: from GLUCOGUARD_MASTER_KEY (base64, 32 bytes) or, for a fresh machine, a file
 * `<dataDir>/keys/master.key` (base64, mode 0600) created on first start. Every other symmetric key
 * (page-token MACs, index HMACs, data-key wrapping) is derived from it with HKDF, so replicas that
 * share the master key agree on all of them.
 */
import { hkdfSync, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Config } from './config.js';

export function masterKeyPath(dataDir: string): string {
  return path.join(dataDir, 'keys', 'master.key');
}

/** Returns the master key as base64, creating the key file when neither env nor file has one. */
export function loadMasterKey(config: Pick<Config, 'masterKey' | 'dataDir'>): string {
  if (config.masterKey) return config.masterKey;
  const file = masterKeyPath(config.dataDir);
  if (existsSync(file)) {
    const key = readFileSync(file, 'utf8').trim();
    if (Buffer.from(key, 'base64').length !== 32) throw new Error(`${file} does not hold a base64 32-byte key`);
    return key;
  }
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const key = randomBytes(32).toString('base64');
  writeFileSync(file, `${key}\n`, { mode: 0o600, flag: 'wx' });
  chmodSync(file, 0o600);
  return key;
}

/** A 32-byte key for one purpose, derived from the master key. */
export function deriveKey(masterKeyBase64: string, purpose: string): Buffer {
  return Buffer.from(hkdfSync('sha256', Buffer.from(masterKeyBase64, 'base64'), Buffer.alloc(0), `glucoguard:${purpose}`, 32));
}
