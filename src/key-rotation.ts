/**
 * Rotating the master key (`glucoguard keys rotate-master`), with the server stopped.
 *
 * What changes: every data key of the embedded store (and its index and check keys) is re-wrapped
 * under the new master key in one SQLite transaction, and the key root (src/keys.ts) is sealed
 * under the new master key in `keys/root.sealed`. The old master key then opens nothing in the
 * data directory. What stays: the data keys themselves (bodies are not re-encrypted), and the key
 * root every derived key comes from, so patients keep their on-chain pseudonyms, research studies
 * their pseudonyms, and custodial keys their password wraps.
 *
 * Crash safety: the steps are ordered so that a rotation interrupted at any point can be finished
 * (`--resume`) and nothing is lost. A journal file is written first and removed last; while it
 * exists the server and every other command refuse to start (loadServerKeys).
 *
 *   1. journal `keys/rotation.json`
 *   2. a file-held key: the new key in `keys/master.key.next`
 *   3. the key root sealed under the new key in `keys/root.sealed.next`
 *   4. the store's data keys re-wrapped (one transaction; a key already under the new key is left)
 *   5. `root.sealed.next` → `root.sealed`, then `master.key.next` → `master.key`
 *   6. the journal removed
 *
 * Each file is written to a temporary name, flushed and renamed, so a file that exists is whole.
 * Step 4 only runs once step 3's file exists, so a rotation stopped before it left the store as it
 * was and simply starts again.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import path from 'node:path';
import type { AuditEvent } from '@medplum/fhirtypes';
import type { Config } from './config.js';
import { UsageError } from './cli-app.js';
import {
  checkRoot, keyFingerprint, loadServerKeys, masterKeyPath, openRoot, readKeyFile, rootSealPath, rotationJournalPath, sealRoot,
} from './keys.js';
import { rewrapDataKeys } from './repository/embedded/keys.js';
import { openStore, storeFilePath } from './repository/embedded/store.js';
import { glucoguardSource } from './audit/balp.js';

export interface RotationOptions {
  config: Pick<Config, 'dataDir' | 'masterKey' | 'masterKeyFile'>;
  /**
   * The new master key (base64, 32 bytes). Needed when the current key comes from configuration
   * (GLUCOGUARD_MASTER_KEY[_FILE]): the operator then moves it into the secret store. With a key
   * file in the data directory, one is made when absent.
   */
  newKey?: string;
  /** Finish a rotation that was interrupted (the journal exists). */
  resume?: boolean;
  /** Called after each durable step; the tests throw from it to stop a rotation where a crash could. */
  afterStep?: (step: RotationStep) => void;
}

export type RotationStep = 'journal' | 'master-key-next' | 'root-next' | 'store' | 'root-moved' | 'master-key-moved';

export interface RotationResult {
  /** Where the new key lives: the data directory's key file, or the configuration (the operator's to update). */
  held: 'file' | 'config';
  /** The new master key (base64), when the operator must store it; never when the data directory holds it. */
  newKey?: string;
  /** Data keys of the embedded store re-wrapped, already under the new key (resumed), and erased (left as tombstones). */
  dataKeys: { rewrapped: number; already: number; erased: number } | undefined;
}

interface Journal {
  version: 1;
  held: 'file' | 'config';
  /** SHA-256 of the new key (domain-separated): resuming checks it is the same key. */
  newKey: string;
  started: string;
}

/** Rotates the master key of a data directory (see the module comment); the caller has checked no server runs on it. */
export function rotateMasterKey(options: RotationOptions): RotationResult {
  const { dataDir } = options.config;
  const journalFile = rotationJournalPath(dataDir);
  const held: Journal['held'] = options.config.masterKey ? 'config' : 'file';
  if (options.newKey !== undefined && held === 'file') {
    throw new UsageError('the master key is the data directory\'s key file: the rotation makes the new key itself (--new-key-file is for a key given by GLUCOGUARD_MASTER_KEY or GLUCOGUARD_MASTER_KEY_FILE)');
  }
  if (options.newKey !== undefined && !isKey(options.newKey)) throw new UsageError('the new master key must be 32 bytes, base64-encoded');
  if (existsSync(journalFile)) {
    if (!options.resume) throw new UsageError(`a master-key rotation of ${dataDir} did not finish: run again with --resume`);
    return resume(options, readJournal(journalFile));
  }
  if (options.resume) throw new UsageError(`no master-key rotation of ${dataDir} to resume`);
  if (held === 'config' && options.newKey === undefined) {
    throw new UsageError(`the master key comes from ${options.config.masterKeyFile ? 'GLUCOGUARD_MASTER_KEY_FILE' : 'GLUCOGUARD_MASTER_KEY'}: give the new key with --new-key-file (32 random bytes, base64: \`openssl rand -base64 32\`)`);
  }
  const current = loadServerKeys(options.config);
  const newKey = options.newKey ?? randomBytes(32).toString('base64');
  if (keyFingerprint(newKey) === keyFingerprint(current.master)) throw new UsageError('the new master key is the current one');
  const journal: Journal = { version: 1, held, newKey: keyFingerprint(newKey), started: new Date().toISOString() };
  writeFileDurably(journalFile, `${JSON.stringify(journal)}\n`);
  options.afterStep?.('journal');
  return finish(options, held, current.master, newKey, current.root);
}

/**
 * Finishes an interrupted rotation from what its files say (module comment). The new key is in
 * `master.key.next` (or already renamed into `master.key`), or the operator gives it again; the
 * root is in `root.sealed.next` or `root.sealed` under the new key when step 3 was done, else the
 * store was not touched and the root is still the one the current key opens.
 */
function resume(options: RotationOptions, journal: Journal): RotationResult {
  const { dataDir } = options.config;
  const masterFile = masterKeyPath(dataDir);
  const rootFile = rootSealPath(dataDir);
  const current = journal.held === 'file' ? readKeyFile(masterFile) : options.config.masterKey!;
  let newKey: string | undefined;
  if (journal.held === 'config') {
    if (options.newKey === undefined) throw new UsageError('the interrupted rotation was to a key given by the operator: give the same key again with --new-key-file');
    newKey = options.newKey;
  } else {
    newKey = existsSync(`${masterFile}.next`) ? readKeyFile(`${masterFile}.next`) : keyFingerprint(current) === journal.newKey ? current : undefined;
    if (newKey === undefined) {
      // stopped before the new key was written: nothing had changed
      unlinkDurably(rotationJournalPath(dataDir));
      return rotateMasterKey({ ...options, resume: false });
    }
  }
  if (keyFingerprint(newKey) !== journal.newKey) throw new UsageError('that is not the key the interrupted rotation started with: give the same --new-key-file');
  const root = rootSealedIn(`${rootFile}.next`, newKey) ?? rootSealedIn(rootFile, newKey);
  if (root !== undefined) return finish(options, journal.held, current, newKey, root);
  // step 3 was not done, so the store is as it was: the root is the one the old key opens
  if (keyFingerprint(current) === keyFingerprint(newKey)) {
    throw new Error('GLUCOGUARD_MASTER_KEY already holds the new key, but the interrupted rotation had not re-wrapped anything: resume with the old key configured');
  }
  const oldRoot = existsSync(rootFile) ? rootSealedIn(rootFile, current) : current;
  if (oldRoot === undefined) throw new Error(`${rootFile} does not open with the current master key`);
  return finish(options, journal.held, current, newKey, oldRoot);
}

/** Steps 2–6 (module comment). */
function finish(options: RotationOptions, held: Journal['held'], oldKey: string, newKey: string, root: string): RotationResult {
  const { dataDir } = options.config;
  const step = options.afterStep ?? (() => undefined);
  const masterFile = masterKeyPath(dataDir);
  const rootFile = rootSealPath(dataDir);
  checkRoot(dataDir, root); // never seal a root other than the one this directory was made with
  const renamed = held === 'file' && oldKey === newKey; // resumed after master.key.next was moved into place
  if (held === 'file' && !renamed && !existsSync(`${masterFile}.next`)) {
    writeFileDurably(`${masterFile}.next`, `${newKey}\n`);
    step('master-key-next');
  }
  if (!existsSync(`${rootFile}.next`) && rootSealedIn(rootFile, newKey) === undefined) {
    writeFileDurably(`${rootFile}.next`, sealRoot(newKey, root));
    step('root-next');
  }
  const dataKeys = rewrapStore(dataDir, oldKey, newKey);
  step('store');
  if (existsSync(`${rootFile}.next`)) {
    moveDurably(`${rootFile}.next`, rootFile);
    step('root-moved');
  }
  if (held === 'file' && existsSync(`${masterFile}.next`)) {
    moveDurably(`${masterFile}.next`, masterFile);
    step('master-key-moved');
  }
  unlinkDurably(rotationJournalPath(dataDir));
  return { held, ...(held === 'config' ? { newKey } : {}), dataKeys };
}

/** Step 4: the embedded store's data keys under the new key, in one transaction (undefined when the data directory has no store). */
function rewrapStore(dataDir: string, oldKey: string, newKey: string): RotationResult['dataKeys'] {
  if (!existsSync(storeFilePath(dataDir))) return undefined;
  const { db } = openStore(dataDir);
  try {
    return db.transaction(() => rewrapDataKeys(db, Buffer.from(oldKey, 'base64'), Buffer.from(newKey, 'base64')))();
  } finally {
    db.close();
  }
}

/** The key root a sealed-root file holds under `key`; undefined when the file is absent or `key` does not open it. */
function rootSealedIn(file: string, key: string): string | undefined {
  return existsSync(file) ? openRoot(key, readFileSync(file, 'utf8')) : undefined;
}

function readJournal(file: string): Journal {
  let journal: Partial<Journal> | undefined;
  try {
    journal = JSON.parse(readFileSync(file, 'utf8')) as Partial<Journal>;
  } catch {
    // reported below
  }
  if (journal?.version !== 1 || (journal.held !== 'file' && journal.held !== 'config') || typeof journal.newKey !== 'string') throw new Error(`${file} is not a rotation journal this version can resume`);
  return journal as Journal;
}

function isKey(text: string): boolean {
  return Buffer.from(text, 'base64').length === 32;
}

/** Writes `text` to a temporary file, flushes it and renames it over `file` (mode 0600), then flushes the directory. */
function writeFileDurably(file: string, text: string): void {
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.tmp`;
  const fd = openSync(tmp, 'w', 0o600);
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  moveDurably(tmp, file);
}

function moveDurably(from: string, to: string): void {
  renameSync(from, to);
  syncDirectory(path.dirname(to));
}

function unlinkDurably(file: string): void {
  unlinkSync(file);
  syncDirectory(path.dirname(file));
}

function syncDirectory(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** The Security Alert AuditEvent (DICOM 110113, subtype 110129 Security Configuration) of a rotation: who, when, counts; no key material. */
export function keyRotationAuditEvent(operator: string, result: RotationResult, recorded = new Date().toISOString()): AuditEvent {
  const keys = result.dataKeys;
  return {
    resourceType: 'AuditEvent',
    type: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110113', display: 'Security Alert' },
    subtype: [{ system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110129', display: 'Security Configuration' }],
    action: 'E',
    recorded,
    outcome: '0',
    outcomeDesc: `master key rotated (${result.held === 'file' ? 'key file in the data directory' : 'key given by configuration'}): `
      + (keys ? `${keys.rewrapped + keys.already} data keys under the new key, ${keys.erased} erased ones left as they were` : 'no embedded store')
      + '; key root sealed under the new key',
    agent: [{ who: { display: operator }, requestor: true }],
    source: glucoguardSource(),
  };
}
