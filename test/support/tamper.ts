import type { Database } from 'better-sqlite3';
import { loadServerKeys } from '../../src/keys.js';
import { KeyRing } from '../../src/repository/embedded/keys.js';

/** The data keys of a data directory's store, as someone holding its master key would open them (tests that forge rows). */
export function keyRingOf(db: Database, dataDir: string): KeyRing {
  const { master, root } = loadServerKeys({ dataDir });
  return new KeyRing(db, Buffer.from(master, 'base64'), Buffer.from(root, 'base64'));
}
