/**
 * `glucoguard verify`: checks every recorded version (or one patient's) against the repository and
 * the chain — the same check the integrity guard runs on reads — and reports counts and failures.
 */
import { isGlucoGuardError } from '../errors.js';
import type { Repository } from '../repository/port.js';
import type { IntegrityChecker } from './integrity.js';
import type { CommitmentStore } from './store.js';

export interface VerifyReport {
  checked: number;
  verified: number;
  pending: number;
  /** Versions no longer readable: deleted since, or erased (crypto-shredded). */
  gone: number;
  unverified: number;
  failures: { resource: string; reason: string }[];
}

export async function verifyStore(deps: { store: CommitmentStore; repository: Repository; checker: IntegrityChecker }, patient?: string): Promise<VerifyReport> {
  const report: VerifyReport = { checked: 0, verified: 0, pending: 0, gone: 0, unverified: 0, failures: [] };
  for (const record of deps.store.all(patient)) {
    report.checked++;
    const ref = `${record.type}/${record.id}/_history/${record.version}`;
    let resource;
    try {
      resource = await deps.repository.vread(record.type, record.id, record.version);
    } catch (err) {
      if (isGlucoGuardError(err, 'ERR_GONE')) { report.gone++; continue; }
      if (isGlucoGuardError(err, 'ERR_NOT_FOUND')) { report.failures.push({ resource: ref, reason: 'missing from the repository' }); continue; }
      throw err;
    }
    const result = await deps.checker.check(resource);
    if (result.status === 'verified') report.verified++;
    else if (result.status === 'pending') report.pending++;
    else if (result.status === 'unverified') report.unverified++;
    else report.failures.push({ resource: ref, reason: result.reason === 'content' ? 'content does not match its commitment' : `Merkle ${result.reason} check failed` });
  }
  return report;
}
