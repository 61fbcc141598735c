/**
 * Which grants name which grantee, and which addresses were registered for which identity: an index
 * of the ConsentRegistry's `ConsentGranted` and the IdentityRegistry's `GranteeRegistered` events,
 * kept in `<dataDir>/consent/grants.db` with the followers' cursors, so working out a requester's
 * grants after a restart reads only the blocks since the last look — not every block from genesis
 * (on the embedded node `eth_getLogs` walks blocks; on Besu it is bounded by its range limit).
 *
 * The index only says which grant ids and addresses to look at; whether a grant still holds
 * (revoked, expired, terms) and whether an address still stands for an identity are read from the
 * contracts each time, so a stale index can only cost a lookup, never permit anything. It is
 * brought up to the chain head before every answer.
 */
import type { Database as DB, Statement } from 'better-sqlite3';
import path from 'node:path';
import { getAddress } from 'ethers';
import { unavailable } from '../errors.js';
import { openSqlite } from '../sqlite.js';
import type { ChainClient } from '../ledger/client.js';
import { EventFollower, type CursorStore, type EventCursor } from '../ledger/events.js';

export class GrantIndex {
  private readonly db: DB;
  private readonly grantFollower: EventFollower;
  private readonly granteeFollower: EventFollower;
  private readonly byGrantee: Statement<[string], { grant_id: string }>;
  private readonly byRef: Statement<[string], { address: string }>;

  constructor(options: { dataDir: string; chain: ChainClient }) {
    const file = path.join(options.dataDir, 'consent', 'grants.db');
    this.db = openSqlite(file);
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS grants (grant_id TEXT PRIMARY KEY, grantee TEXT NOT NULL, block INTEGER NOT NULL);
      CREATE INDEX IF NOT EXISTS grants_by_grantee ON grants (grantee, block);
      CREATE TABLE IF NOT EXISTS grantees (ref TEXT NOT NULL, address TEXT NOT NULL, block INTEGER NOT NULL, PRIMARY KEY (ref, address));
    `);
    // The index belongs to one deployment: a new ConsentRegistry (fresh chain) starts it over.
    const registry = `${options.chain.chainId}:${options.chain.addresses.ConsentRegistry}:${options.chain.addresses.IdentityRegistry}`;
    const indexed = this.db.prepare<[], { v: string }>("SELECT v FROM meta WHERE k = 'registry'").get()?.v;
    if (indexed !== registry) {
      this.db.transaction(() => {
        this.db.exec('DELETE FROM grants; DELETE FROM grantees; DELETE FROM meta;');
        this.db.prepare("INSERT INTO meta (k, v) VALUES ('registry', ?)").run(registry);
      })();
    }
    const insertGrant = this.db.prepare('INSERT OR IGNORE INTO grants (grant_id, grantee, block) VALUES (?, ?, ?)');
    const insertGrantee = this.db.prepare('INSERT OR IGNORE INTO grantees (ref, address, block) VALUES (?, ?, ?)');
    this.byGrantee = this.db.prepare('SELECT grant_id FROM grants WHERE grantee = ? ORDER BY block');
    this.byRef = this.db.prepare('SELECT address FROM grantees WHERE ref = ? ORDER BY block DESC');
    const cursor = (name: string): CursorStore => {
      const save = this.db.prepare('INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v');
      const load = this.db.prepare<[string], { v: string }>('SELECT v FROM meta WHERE k = ?');
      return {
        load: () => {
          const v = load.get(`cursor:${name}`)?.v;
          return v ? (JSON.parse(v) as EventCursor) : undefined;
        },
        save: (c) => { save.run(`cursor:${name}`, JSON.stringify(c)); },
      };
    };
    this.grantFollower = new EventFollower({
      provider: options.chain.provider,
      contract: options.chain.contract('ConsentRegistry'),
      events: ['ConsentGranted'],
      cursor: cursor('ConsentGranted'),
      handler: (event) => {
        insertGrant.run(String(event.args.grantId), getAddress(String(event.args.grantee)), event.blockNumber);
      },
    });
    this.granteeFollower = new EventFollower({
      provider: options.chain.provider,
      contract: options.chain.contract('IdentityRegistry'),
      events: ['GranteeRegistered'],
      cursor: cursor('GranteeRegistered'),
      handler: (event) => {
        insertGrantee.run(String(event.args.ref).toLowerCase(), getAddress(String(event.args.grantee)), event.blockNumber);
      },
    });
  }

  /** Grant ids naming `grantee`, oldest first, after catching up with the chain (ERR_UNAVAILABLE when it cannot be read). */
  async grantIdsTo(grantee: string): Promise<string[]> {
    await catchUp(this.grantFollower);
    return this.byGrantee.all(getAddress(grantee)).map((r) => r.grant_id);
  }

  /**
   * Addresses ever registered under identity `ref` (the bytes32 IdentityRegistry ref), newest first,
   * after catching up with the chain. Candidates only: the registry says which still stand.
   */
  async registeredUnder(ref: string): Promise<string[]> {
    await catchUp(this.granteeFollower);
    return this.byRef.all(ref.toLowerCase()).map((r) => r.address);
  }

  close(): void {
    this.db.close();
  }
}

async function catchUp(follower: EventFollower): Promise<void> {
  try {
    await follower.poll();
  } catch (err) {
    throw unavailable('The chain cannot be reached', err);
  }
}
