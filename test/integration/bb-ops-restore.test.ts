/**
 * Restore checks on a damaged data directory (black-box round on docs/operations.md, Backups and
 * restores). The checks that refuse a restore missing `chain/` or `ledger/` ask the store's SQLite
 * files whether they hold data; a file that cannot be read (damaged, not a database) is no answer,
 * so it must not count as "holds nothing" — that would let a new chain or an empty commitment
 * store be made beside data it never saw. It is refused, naming the file.
 *
 * And `chain/` restored from another installation (another backup, another site): the chain is
 * whole and consistent with itself, so only the data directory's own record of its deployment —
 * the consent index's registry — shows it is not the chain the data was made with. Measured before
 * the check: refused as "the chain is older than the commitment store" (a chain with fewer
 * anchors), or started with anchoring stopped and every read withheld as an integrity failure
 * (a chain with more), and the consent index emptied to follow the foreign chain.
 */
import { afterAll, describe, expect, it } from '@jest/globals';
import { cpSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import Database from 'better-sqlite3';
import request from 'supertest';
import { createApp, type App } from '../../src/app.js';
import { loadConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { assertCommitmentStorePresent, assertEmbeddedChainPresent, heldData } from '../../src/ledger/restore.js';
import { startTestApp, tempDir } from '../support/app.js';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function dataDir(): string {
  const dir = tempDir('bb-ops-restore-');
  dirs.push(dir);
  mkdirSync(path.join(dir, 'store'), { recursive: true });
  return dir;
}

/** A store file that is not a database at all (overwritten, or the wrong file copied in). */
function damagedStore(dir: string): string {
  const file = path.join(dir, 'store', 'glucoguard.db');
  writeFileSync(file, randomBytes(8192));
  return file;
}

describe('restore checks on a damaged store file', () => {
  it('a store file that cannot be read is refused, not taken for an empty installation, without chain/', () => {
    const dir = dataDir();
    const file = damagedStore(dir);
    expect(() => assertEmbeddedChainPresent(dir)).toThrow(file);
    expect(() => heldData(dir)).toThrow(/not a database/);
  });

  it('a store file that cannot be read is refused when ledger/ is missing', () => {
    const dir = dataDir();
    const file = damagedStore(dir);
    expect(() => assertCommitmentStorePresent(dir)).toThrow(file);
  });

  it('data found in another file is still the refusal given: a damaged consent index does not hide it', () => {
    const dir = dataDir();
    const db = new Database(path.join(dir, 'store', 'glucoguard.db'));
    db.exec('CREATE TABLE versions (seq INTEGER PRIMARY KEY); INSERT INTO versions VALUES (1)');
    db.close();
    mkdirSync(path.join(dir, 'consent'));
    writeFileSync(path.join(dir, 'consent', 'grants.db'), randomBytes(8192));
    expect(heldData(dir)).toEqual(['resource versions (store/glucoguard.db)']);
    expect(() => assertEmbeddedChainPresent(dir)).toThrow(/not the embedded chain they were made with/);
  });

  it('a readable store without the table (nothing ever written) still counts as empty', () => {
    const dir = dataDir();
    new Database(path.join(dir, 'store', 'glucoguard.db')).close(); // a valid, empty SQLite file
    expect(heldData(dir)).toEqual([]);
    expect(() => assertEmbeddedChainPresent(dir)).not.toThrow();
    expect(() => assertCommitmentStorePresent(dir)).not.toThrow();
  });

  it('a readable store with versions is still named as holding them', () => {
    const dir = dataDir();
    const db = new Database(path.join(dir, 'store', 'glucoguard.db'));
    db.exec('CREATE TABLE versions (seq INTEGER PRIMARY KEY); INSERT INTO versions VALUES (1)');
    db.close();
    expect(heldData(dir)).toEqual(['resource versions (store/glucoguard.db)']);
    expect(() => assertEmbeddedChainPresent(dir)).toThrow(/not the embedded chain they were made with/);
  });
});

function open(dataDir: string): Promise<App> {
  return createApp(loadConfig({
    GLUCOGUARD_DATA_DIR: dataDir, GLUCOGUARD_BASE_URL: 'http://127.0.0.1:8080', GLUCOGUARD_AUTH: 'off', LOG_LEVEL: 'silent', CHAIN_BLOCK_PERIOD: '0', CHAIN_PORT: '0',
  }), { logger: createLogger('silent') });
}

/** An installation with `patients` Patients written and anchored, closed. */
async function installation(patients: number): Promise<string> {
  const dataDir = tempDir('bb-ops-install-');
  dirs.push(dataDir);
  const t = await startTestApp({}, dataDir);
  for (let i = 0; i < patients; i++) {
    const res = await request(t.app.http).post('/fhir/Patient').set('content-type', 'application/fhir+json').send({ resourceType: 'Patient', name: [{ family: `Restore${i}` }] });
    expect(res.status).toBe(201);
  }
  await t.app.consent.audit.flush();
  await t.app.ledger.anchorer.flush();
  await t.app.close();
  return dataDir;
}

function chainFrom(from: string, to: string): void {
  rmSync(path.join(to, 'chain'), { recursive: true, force: true });
  cpSync(path.join(from, 'chain'), path.join(to, 'chain'), { recursive: true });
  rmSync(path.join(to, 'chain', 'endpoint.json'), { force: true });
}

describe('chain/ restored from another installation', () => {
  it('is refused at start, saying the chain is another deployment, whichever holds more anchors', async () => {
    const small = await installation(1);
    const large = await installation(3);
    const mixedSmall = tempDir('bb-ops-mixed-');
    const mixedLarge = tempDir('bb-ops-mixed-');
    dirs.push(mixedSmall, mixedLarge);
    cpSync(small, mixedSmall, { recursive: true });
    cpSync(large, mixedLarge, { recursive: true });
    chainFrom(large, mixedSmall); // the chain holds more anchors than the store
    chainFrom(small, mixedLarge); // the chain holds fewer
    for (const dir of [mixedSmall, mixedLarge]) {
      await expect(open(dir)).rejects.toMatchObject({
        code: 'ERR_CHAIN_MISSING',
        message: expect.stringMatching(/is not the chain this data directory was made with: .*consent\/grants\.db.* another installation/),
      });
      // the consent index was not emptied to follow the foreign chain
      expect(registryOf(dir)).toBe(registryOf(dir === mixedSmall ? small : large));
    }
  }, 180_000);

  it('the installation\'s own chain/ (copied back from it) still opens', async () => {
    const dataDir = await installation(1);
    const copy = tempDir('bb-ops-same-');
    dirs.push(copy);
    cpSync(dataDir, copy, { recursive: true });
    chainFrom(dataDir, copy);
    const app = await open(copy);
    await app.close();
  }, 120_000);
});

/** The consent index's record of the deployment it was built from. */
function registryOf(dataDir: string): string {
  const db = new Database(path.join(dataDir, 'consent', 'grants.db'), { readonly: true });
  try {
    return (db.prepare("SELECT v FROM meta WHERE k = 'registry'").get() as { v: string }).v;
  } finally {
    db.close();
  }
}
