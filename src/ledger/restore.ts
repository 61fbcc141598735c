/**
 * A data directory is one whole: the FHIR store, the commitment store (`ledger/`) and the embedded
 * chain (`chain/`) only prove each other when they come from the same moment. A restore that leaves
 * one of them out must not start: a new chain would hold none of the anchored roots and consent
 * grants (every version would fail its check, every grant would be gone), a new commitment store
 * none of the salts (every version would read as unverified); a `chain/` from another installation
 * would hold other roots and other grants. These checks run before anything is created, and cost
 * one indexed `LIMIT 1` query per SQLite file.
 */
import { existsSync, readFileSync } from 'node:fs';
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

/** A data file these checks cannot read (damaged, or not a database): no answer, so nothing goes on. */
export class DataFileUnreadableError extends Error {
  readonly code = 'ERR_DATA_FILE_UNREADABLE';
}

/**
 * `run` on the SQLite file, or `absent` when the file or the table does not exist (nothing was ever
 * written there). A file that cannot be read is refused (DataFileUnreadableError), never taken for
 * an empty one: "holds nothing" would let a new chain or commitment store be made beside data it
 * never saw.
 */
function query<T>(file: string, absent: T, run: (db: Database.Database) => T): T {
  if (!existsSync(file)) return absent;
  let db: Database.Database | undefined;
  try {
    db = new Database(file, { fileMustExist: true });
    return run(db);
  } catch (err) {
    const e = err as { code?: string; message?: string };
    if (e.code === 'SQLITE_ERROR' && /^no such table/.test(e.message ?? '')) return absent;
    throw new DataFileUnreadableError(`cannot read ${file}: ${e.message ?? String(err)}${e.code ? ` (${e.code})` : ''}: it is damaged or not a GlucoGuard file. `
      + 'Restore the whole data directory from one backup (docs/operations.md, Backups and restores)', { cause: err });
  } finally {
    db?.close();
  }
}

/** Whether `table` of the SQLite file holds a row (matching `where`); false for a missing file or table. */
function hasRow(file: string, table: string, where = ''): boolean {
  return query(file, false, (db) => db.prepare(`SELECT 1 FROM ${table} ${where} LIMIT 1`).get() !== undefined);
}

/** The consent index's record of the deployment it was built from (`chainId:ConsentRegistry:IdentityRegistry`), if any. */
function indexedRegistry(dataDir: string): string | undefined {
  return query(grantIndexPath(dataDir), undefined, (db) => (db.prepare("SELECT v FROM meta WHERE k = 'registry'").get() as { v: string } | undefined)?.v);
}

/**
 * What the data directory holds that was made with a chain: resource versions in the embedded
 * store, commitments, the consent index of a deployment. Empty for a new installation.
 */
export function heldData(dataDir: string): string[] {
  const held: string[] = [];
  let unreadable: Error | undefined;
  const look = (file: string, table: string, what: string, where?: string): void => {
    try {
      if (hasRow(file, table, where)) held.push(`${what} (${path.relative(dataDir, file)})`);
    } catch (err) {
      if (!(err instanceof DataFileUnreadableError)) throw err;
      unreadable ??= err;
    }
  };
  look(storeFilePath(dataDir), 'versions', 'resource versions');
  look(commitmentsPath(dataDir), 'commitments', 'commitments');
  look(grantIndexPath(dataDir), 'meta', 'a consent index of a deployment', "WHERE k = 'registry'");
  // data found elsewhere is the clearer refusal; with none found, a file that could not be read is no "empty"
  if (!held.length && unreadable) throw unreadable;
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
  if (existsSync(deployment)) {
    assertIndexedDeployment(dataDir, deployment);
    return;
  }
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
 * Refuses a `chain/` restored from another installation (another backup, another site): whole and
 * consistent with itself, so only this directory's own record of its deployment tells — the
 * consent index names the chain id and registry contracts it was built from, and the embedded
 * contracts' addresses follow from the chain's signer, so no two installations share them. Without
 * this the start compared only anchor counts: "the chain is older than the commitment store", or
 * anchoring stopped with every read withheld, and the index emptied to follow the foreign chain.
 * An index never built (nothing recorded) proves nothing either way and is let through.
 */
function assertIndexedDeployment(dataDir: string, deploymentFile: string): void {
  const index = grantIndexPath(dataDir);
  let indexed: string | undefined;
  try {
    indexed = indexedRegistry(dataDir);
  } catch (err) {
    if (err instanceof DataFileUnreadableError) return; // the index is rebuilt from the chain; opening it reports the damage
    throw err;
  }
  if (indexed === undefined) return;
  let chain: string;
  try {
    const d = JSON.parse(readFileSync(deploymentFile, 'utf8')) as { chainId?: unknown; contracts?: Record<string, unknown> };
    chain = `${String(d.chainId)}:${String(d.contracts?.ConsentRegistry)}:${String(d.contracts?.IdentityRegistry)}`;
  } catch {
    return; // an unreadable deployment.json is the node's to refuse (chain/node/deploy.ts), with its own message
  }
  if (chain.toLowerCase() === indexed.toLowerCase()) return;
  throw new ChainMissingError(`the embedded chain in ${path.join(dataDir, 'chain')} is not the chain this data directory was made with: `
    + `${index} was built from chain ${indexed.split(':')[0]} with ConsentRegistry ${indexed.split(':')[1]}, ${deploymentFile} records chain ${chain.split(':')[0]} `
    + `with ConsentRegistry ${chain.split(':')[1]}, so chain/ comes from another installation. Restore the whole data directory (store, ledger and chain) `
    + 'from one backup of this installation (docs/operations.md, Backups and restores)');
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
