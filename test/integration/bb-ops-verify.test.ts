/**
 * `glucoguard verify` on a damaged data directory (black-box round on docs/operations.md): a store
 * page overwritten on disk made verify stop with SQLite's bare "database disk image is malformed",
 * exit 1 — nothing said which of the directory's files, or which version, it was reading. The
 * error now names what was being read and where; it still stops (exit 1), nothing is counted as
 * verified.
 */
import { describe, expect, it } from '@jest/globals';
import type { Resource } from '@medplum/fhirtypes';
import type { IntegrityChecker } from '../../src/ledger/integrity.js';
import type { CommitmentRecord, CommitmentStore } from '../../src/ledger/store.js';
import { verifyStore } from '../../src/ledger/verify.js';
import type { Repository } from '../../src/repository/port.js';

/** What better-sqlite3 throws for a damaged page. */
function corrupt(): Error {
  return Object.assign(new Error('database disk image is malformed'), { code: 'SQLITE_CORRUPT' });
}

const record: CommitmentRecord = {
  seq: 1, type: 'Observation', id: 'obs-1', version: '1', patient: 'p1', salt: Buffer.alloc(32), leaf: Buffer.alloc(32), createdAt: 0, batch: null, proof: null,
};

const checker = { checkMany: async (rs: Resource[]) => rs.map(() => ({ status: 'verified' as const })) } as unknown as IntegrityChecker;

describe('verify on a damaged data directory', () => {
  it('GlucoGuard\'s own errors pass as they are (their codes decide the exit code)', async () => {
    const own = Object.assign(new Error('cannot open /data/store/glucoguard.db: permission denied'), { code: 'ERR_DATA_DIR' });
    const store = { file: '/data/ledger/commitments.db', *all() { yield record; } } as unknown as CommitmentStore;
    const repository = { description: { adapter: 'embedded', location: '/data' }, vread: async () => { throw own; } } as unknown as Repository;
    await expect(verifyStore({ store, repository, checker })).rejects.toBe(own);
  });

  it('a version the repository cannot read: the error names the version and the repository, and keeps SQLite\'s words', async () => {
    const store = { file: '/data/ledger/commitments.db', *all() { yield record; } } as unknown as CommitmentStore;
    const repository = {
      description: { adapter: 'embedded', location: '/data' },
      vread: async () => { throw corrupt(); },
    } as unknown as Repository;
    const run = verifyStore({ store, repository, checker });
    await expect(run).rejects.toThrow(/Observation\/obs-1\/_history\/1 .*repository \(embedded, \/data\).*database disk image is malformed \(SQLITE_CORRUPT\)/);
    await expect(run).rejects.toMatchObject({ cause: expect.objectContaining({ code: 'SQLITE_CORRUPT' }) });
  });

  it('a commitment store that cannot be read: the error names its file', async () => {
    const store = { file: '/data/ledger/commitments.db', *all(): Generator<CommitmentRecord> { throw corrupt(); } } as unknown as CommitmentStore;
    const repository = { description: { adapter: 'embedded', location: '/data' }, vread: async () => ({}) } as unknown as Repository;
    await expect(verifyStore({ store, repository, checker })).rejects.toThrow(/commitment store \/data\/ledger\/commitments\.db.*database disk image is malformed \(SQLITE_CORRUPT\)/);
  });
});
