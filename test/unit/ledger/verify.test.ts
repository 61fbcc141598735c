/** verifyStore over more than one page: every record counted once, failures named, progress per page. */
import { describe, expect, it } from '@jest/globals';
import type { Resource } from '@medplum/fhirtypes';
import { gone } from '../../../src/errors.js';
import type { CheckResult, IntegrityChecker } from '../../../src/ledger/integrity.js';
import type { CommitmentRecord, CommitmentStore } from '../../../src/ledger/store.js';
import { verifyStore } from '../../../src/ledger/verify.js';
import type { Repository } from '../../../src/repository/port.js';

describe('verifyStore', () => {
  it('checks 1,100 versions in pages, with erased, failed and pending ones reported', async () => {
    const records = Array.from({ length: 1100 }, (_, i) => ({ type: 'Observation', id: `o${i}`, version: '1' }) as CommitmentRecord);
    const store = { *all() { yield* records; } } as unknown as CommitmentStore;
    const repository = {
      async vread(type: string, id: string, version: string): Promise<Resource> {
        if (id === 'o7') throw gone('erased');
        return { resourceType: type, id, meta: { versionId: version } } as Resource;
      },
    } as unknown as Repository;
    const pages: number[] = [];
    const checker = {
      async checkMany(resources: Resource[]): Promise<CheckResult[]> {
        pages.push(resources.length);
        return resources.map((r) => (r.id === 'o600' ? { status: 'failed', reason: 'content' } : r.id === 'o1099' ? { status: 'pending' } : { status: 'verified' }));
      },
    } as unknown as IntegrityChecker;
    const progress: number[] = [];
    const report = await verifyStore({ store, repository, checker }, undefined, (r) => progress.push(r.checked));
    expect(report).toMatchObject({ checked: 1100, verified: 1097, pending: 1, gone: 1, unverified: 0 });
    expect(report.failures).toEqual([{ resource: 'Observation/o600/_history/1', reason: 'content does not match its commitment' }]);
    expect(pages).toEqual([499, 500, 100]);
    expect(progress).toEqual([500, 1000, 1100]);
  });
});
