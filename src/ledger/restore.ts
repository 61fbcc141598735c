/**
 * A data directory is one whole: the FHIR store, the commitment store (`ledger/`) and the embedded
 * chain (`chain/`) only prove each other when they come from the same moment. A restore that leaves
 * one of them out must not start: a new chain would hold none of the anchored roots and consent
 * grants (every version would fail its check, every grant would be gone), a new commitment store
 * none of the salts (every version would read as unverified). These checks run before anything is
 * created, and cost one indexed `LIMIT 1` query per SQLite file.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { deploymentPath } from '../../chain/node/index.js';
import { storeFilePath } from '../repository/embedded/store.js';

/** The data directory holds data but not the embedded chain it was made with. */
export class ChainMissingError extends Error {
  readonly code = 'ERR_CHAIN_MISSING';
}

/** The embedded store holds versions but the commitment store that vouches for them is gone. */
export class LedgerMissingError extends Error {
  readonly code = 'ERR_LEDGER_MISSING';
}

/** Where the commitment store lives (also exported by ./index.ts). */
function commitmentsPath(dataDir: string): string {
  return path.join(dataDir, 'ledger', 'commitments.db');
}

function grantIndexPath(dataDir: string): string {
  return path.join(dataDir, 'consent', 'grants.db');
}

/** Whether `table` of the SQLite file holds a row (matching `where`); false for a missing file or table. */
function hasRow(file: string, table: string, where = ''): boolean {
  if (!existsSync(file)) return false;
  let db: Database.Database | undefined;
  try {
    db = new Database(file, { fileMustExist: true });
    return db.prepare(`SELECT 1 FROM ${table} ${where} LIMIT 1`).get() !== undefined;
  } catch {
    return false; // no such table: nothing was ever written there
  } finally {
    db?.close();
  }
}

/**
 * What the data directory holds that was made with a chain: resource versions in the embedded
 * store, commitments, the consent index of a deployment. Empty for a new installation.
 */
export function heldData(dataDir: string): string[] {
  const held: string[] = [];
  if (hasRow(storeFilePath(dataDir), 'versions')) held.push(`resource versions (${path.relative(dataDir, storeFilePath(dataDir))})`);
  if (hasRow(commitmentsPath(dataDir), 'commitments')) held.push(`commitments (${path.relative(dataDir, commitmentsPath(dataDir))})`);
  if (hasRow(grantIndexPath(dataDir), 'meta', "WHERE k = 'registry'")) held.push(`a consent index of a deployment (${path.relative(dataDir, grantIndexPath(dataDir))})`);
  return held;
}

/**
 * Refuses an embedded chain that would have to be created in a data directory that already holds
 * data: `chain/deployment.json` is missing (the whole `chain/` left out of a restore, or deleted).
 * `create: false` (read-only commands: verify, chain status) refuses a missing chain even in an
 * empty directory: they never create one.
 */
export function assertEmbeddedChainPresent(dataDir: string, options: { create?: boolean } = {}): void {
  const deployment = deploymentPath(dataDir);
  const db = path.join(dataDir, 'chain', 'db');
  if (existsSync(deployment) && !existsSync(db)) {
    // caught here, before a node would open (and so create) an empty database in its place
    throw new ChainMissingError(`the embedded chain in ${path.join(dataDir, 'chain')} is not the chain ${deployment} records (its database ${db} is missing): `
      + 'it was lost or replaced. Restore the chain directory from a backup of this data directory; '
      + 'a new chain would hold none of the anchored roots and consent grants');
  }
  if (existsSync(deployment)) return;
  const held = heldData(dataDir);
  if (held.length) {
    throw new ChainMissingError(`${dataDir} holds ${held.join(', ')} but not the embedded chain they were made with: ${deployment} is missing. `
      + `Restore ${path.join(dataDir, 'chain')} from the same backup as the rest of this data directory (stop the server, copy the whole data directory back). `
      + 'Starting a new chain here would hold none of the anchored roots and consent grants: every anchored version would fail its integrity check and every grant would be lost, '
      + 'so GlucoGuard does not do it. If this directory ran against an external chain, configure CHAIN_RPC_URL and CHAIN_DEPLOYMENT_FILE again (docs/operations.md, Backups and restores)');
  }
  if (options.create === false) {
    throw new ChainMissingError(`there is no embedded chain in ${path.join(dataDir, 'chain')} (${deployment} is missing); this command never creates one. Run glucoguard serve once to set up a new installation`);
  }
}

/**
 * Refuses an embedded store with versions whose commitment store is missing (`ledger/` left out of
 * a restore): a new one would record none of them, and they would be served as unverified for good.
 */
export function assertCommitmentStorePresent(dataDir: string): void {
  const missing = missingCommitmentStore(dataDir);
  if (missing) throw new LedgerMissingError(missing);
}

/** Why the commitment store is missing (the embedded store holds versions, ledger/ does not exist), or undefined. */
export function missingCommitmentStore(dataDir: string): string | undefined {
  const file = commitmentsPath(dataDir);
  if (existsSync(file) || !hasRow(storeFilePath(dataDir), 'versions')) return undefined;
  return `${storeFilePath(dataDir)} holds resource versions but the commitment store ${file} is missing: `
    + `restore ${path.dirname(file)} from the same backup as the store (stop the server, copy the whole data directory back). `
    + 'Its salts are what every stored version is checked against; a new, empty one would leave every version unverified (docs/operations.md, Backups and restores)';
}
