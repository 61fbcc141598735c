/**
 * The server's secret keys.
 *
 * - The **master key**: from GLUCOGUARD_MASTER_KEY (base64, 32 bytes) or, for a fresh machine, a
 *   file `<dataDir>/keys/master.key` (base64, mode 0600) created on first start. It wraps the
 *   embedded store's data keys, and seals the key root once the master key has been rotated.
 * - The **key root**: what every derived key comes from (HKDF: page-token MACs, key sessions,
 *   patient and study pseudonyms, custodial-key wraps, the store's patient key ids). Until the
 *   first rotation it is the master key itself; `glucoguard keys rotate-master` keeps it and
 *   seals it under the new master key in `<dataDir>/keys/root.sealed`, so pseudonyms recorded on
 *   chain and wraps that need a patient's password stay valid (src/key-rotation.ts).
 *
 * Replicas that share the master key and the sealed root agree on every derived key.
 */
import { createHash, createHmac, hkdfSync, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { whyUnreadable, type Config } from './config.js';
import { masterOpensStore, open, seal } from './repository/embedded/keys.js';
import { storeFilePath } from './repository/embedded/store.js';

/** The master key and the key root, both base64. */
export interface ServerKeys {
  master: string;
  root: string;
}

const ROOT_AAD = 'glucoguard-key-root\0v1';

export function masterKeyPath(dataDir: string): string {
  return path.join(dataDir, 'keys', 'master.key');
}

/** The key root sealed under the master key (present once the master key has been rotated). */
export function rootSealPath(dataDir: string): string {
  return path.join(dataDir, 'keys', 'root.sealed');
}

/** A check value of the key root, recorded at the data directory's first start (checkRoot). */
export function rootCheckPath(dataDir: string): string {
  return path.join(dataDir, 'keys', 'root.check');
}

/** Written when a rotation starts and removed when it ends: while it exists nothing may start. */
export function rotationJournalPath(dataDir: string): string {
  return path.join(dataDir, 'keys', 'rotation.json');
}

/**
 * Returns the master key as base64, creating the key file when neither env nor file has one and
 * the data directory is new (a directory that holds data made with a key refuses a new one).
 */
export function loadMasterKey(config: Pick<Config, 'masterKey' | 'dataDir'>): string {
  if (config.masterKey) return config.masterKey;
  const file = masterKeyPath(config.dataDir);
  if (existsSync(file)) return readKeyFile(file);
  if (holdsData(config.dataDir)) {
    // a new key would open nothing here, and its file would stand where the real one must be restored
    throw new Error(`${file} is missing, but ${config.dataDir} already holds data made with a master key: restore the key file from your backup, or give the key with GLUCOGUARD_MASTER_KEY_FILE`);
  }
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const key = randomBytes(32).toString('base64');
  writeFileSync(file, `${key}\n`, { mode: 0o600, flag: 'wx' });
  chmodSync(file, 0o600);
  return key;
}

/** True when the data directory already holds something made with a master key (its root check, or a store). */
function holdsData(dataDir: string): boolean {
  return existsSync(rootCheckPath(dataDir)) || existsSync(storeFilePath(dataDir));
}

/**
 * True when the data directory holds a GlucoGuard installation (a key, its root check, a store, a
 * rotation under way): what commands that only read require before they open anything.
 */
export function holdsInstallation(dataDir: string): boolean {
  return holdsData(dataDir) || existsSync(masterKeyPath(dataDir)) || existsSync(rotationJournalPath(dataDir));
}

/**
 * A base64 32-byte key from a file (trimmed; returned in standard base64), or an error naming the
 * file and why (missing, not permitted, not a key), never its content.
 */
export function readKeyFile(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`cannot read ${file}: ${whyUnreadable(err)}`, { cause: err });
  }
  const key = Buffer.from(text.trim(), 'base64');
  if (key.length !== 32) throw new Error(`${file} does not hold a base64 32-byte key`);
  return key.toString('base64');
}

/** Where the master key comes from, as start-up and `keys status` name it: the setting, or the data directory's file. */
export function masterKeySource(config: Pick<Config, 'masterKey' | 'masterKeyFile' | 'dataDir'>): { adapter: string; location: string } {
  if (config.masterKeyFile) return { adapter: 'file (GLUCOGUARD_MASTER_KEY_FILE)', location: config.masterKeyFile };
  if (config.masterKey) return { adapter: 'env', location: 'GLUCOGUARD_MASTER_KEY' };
  return { adapter: 'file', location: masterKeyPath(config.dataDir) };
}

/**
 * The master key and the key root of this data directory. Refuses (fails closed) while a rotation
 * is unfinished, and when the sealed root does not open with the master key given: deriving keys
 * from the wrong root would give patients new pseudonyms and lock their custodial keys.
 */
export function loadServerKeys(config: Pick<Config, 'masterKey' | 'dataDir'>): ServerKeys {
  if (existsSync(rotationJournalPath(config.dataDir))) {
    throw new Error(`a master-key rotation of ${config.dataDir} did not finish: run \`glucoguard keys rotate-master --resume\` before anything else`);
  }
  const master = loadMasterKey(config);
  const sealed = rootSealPath(config.dataDir);
  let root = master;
  if (existsSync(sealed)) {
    const opened = openRoot(master, readFileSync(sealed, 'utf8'));
    if (!opened) throw new Error(`${sealed} does not open with this master key: the master key was rotated; start with the key the rotation made current`);
    root = opened;
  }
  // Without its root check (lost, or not restored from a backup) the directory still knows its key
  // by the store: a wrong key is refused before checkRoot records it as this directory's.
  const store = storeFilePath(config.dataDir);
  if (!existsSync(rootCheckPath(config.dataDir)) && existsSync(store) && masterOpensStore(store, Buffer.from(master, 'base64')) === false) {
    throw new Error(`the master key does not match this data directory (${store} was made with another key)`);
  }
  checkRoot(config.dataDir, root);
  return { master, root };
}

/**
 * Compares the key root with the check value the data directory recorded the first time (writing
 * it then). A directory whose master key was rotated elsewhere, given the new key without its
 * `root.sealed`, would otherwise derive every key from the wrong root without noticing.
 */
export function checkRoot(dataDir: string, root: string): void {
  const file = rootCheckPath(dataDir);
  const value = createHmac('sha256', Buffer.from(root, 'base64')).update('glucoguard-key-root-check').digest('base64');
  if (!existsSync(file)) {
    mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    writeFileSync(file, `${value}\n`, { mode: 0o600 });
    return;
  }
  if (readFileSync(file, 'utf8').trim() !== value) {
    throw new Error(`the master key does not match this data directory (${file} records another key root): `
      + 'give the master key this directory was last used with (GLUCOGUARD_MASTER_KEY / _FILE, or keys/master.key), '
      + 'or, if the key was rotated elsewhere (a replica, a copy), copy that directory\'s keys/root.sealed here with the new key, '
      + 'or restore keys/root.sealed from a backup taken with this key (docs/operations.md, Keys and rotation)');
  }
}

/**
 * A key's fingerprint (SHA-256 of a domain tag and the key, hex): what the rotation journal records
 * of the new key, and what `keys status` shows so operators can compare replicas without the keys.
 */
export function keyFingerprint(key: string): string {
  return createHash('sha256').update('glucoguard-master-key-fingerprint\0').update(Buffer.from(key, 'base64')).digest('hex');
}

/** What `glucoguard keys status` prints: where the keys come from, their fingerprints, and what stops a start-up (if anything). */
export function describeServerKeys(config: Pick<Config, 'masterKey' | 'masterKeyFile' | 'dataDir'>): { lines: string[]; problem?: string } {
  const lines: string[] = [];
  const short = (key: string) => keyFingerprint(key).slice(0, 16);
  if (!config.masterKey && !existsSync(masterKeyPath(config.dataDir)) && !existsSync(rotationJournalPath(config.dataDir)) && !holdsData(config.dataDir)) {
    return { lines: [`master key: none yet (made in ${masterKeyPath(config.dataDir)} at the first start)`] };
  }
  try {
    const { master, root } = loadServerKeys(config);
    const where = config.masterKeyFile ? `GLUCOGUARD_MASTER_KEY_FILE=${config.masterKeyFile}` : config.masterKey ? 'GLUCOGUARD_MASTER_KEY' : masterKeyPath(config.dataDir);
    lines.push(`master key: ${where} (fingerprint ${short(master)})`);
    lines.push(root === master
      ? 'key root: the master key itself (never rotated)'
      : `key root: sealed in ${rootSealPath(config.dataDir)} (fingerprint ${short(root)})`);
    lines.push(`key root check: matches ${rootCheckPath(config.dataDir)}`);
    lines.push('rotation: none in progress');
    return { lines };
  } catch (err) {
    return { lines, problem: (err as Error).message };
  }
}

/** The key root sealed under a master key (base64 text for root.sealed). */
export function sealRoot(master: string, root: string): string {
  return `${seal(Buffer.from(master, 'base64'), Buffer.from(root, 'base64'), ROOT_AAD).toString('base64')}\n`;
}

/** The key root from root.sealed's text, or undefined when this master key does not open it. */
export function openRoot(master: string, sealedText: string): string | undefined {
  return open(Buffer.from(master, 'base64'), Buffer.from(sealedText.trim(), 'base64'), ROOT_AAD)?.toString('base64');
}

/** A 32-byte key for one purpose, derived from the key root. */
export function deriveKey(rootKeyBase64: string, purpose: string): Buffer {
  return Buffer.from(hkdfSync('sha256', Buffer.from(rootKeyBase64, 'base64'), Buffer.alloc(0), `glucoguard:${purpose}`, 32));
}
