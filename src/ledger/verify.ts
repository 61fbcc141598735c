/**
 * `glucoguard verify`: checks every recorded version (or one patient's) against the repository and
 * the chain — the same check the integrity guard runs on reads — and reports counts and failures.
 * Versions are checked a page at a time (one store read and one root per batch for the page).
 */
import type { Resource } from '@medplum/fhirtypes';
import { isGlucoGuardError } from '../errors.js';
import { TamperedVersionError, type Repository } from '../repository/port.js';
import type { IntegrityChecker } from './integrity.js';
import type { CommitmentRecord, CommitmentStore } from './store.js';

export interface VerifyReport {
  checked: number;
  verified: number;
  pending: number;
  /** Versions no longer readable: deleted since, or erased (crypto-shredded). */
  gone: number;
  unverified: number;
  failures: { resource: string; reason: string }[];
}

const PAGE = 500;

export async function verifyStore(
  deps: { store: CommitmentStore; repository: Repository; checker: IntegrityChecker },
  patient?: string,
  onProgress?: (report: VerifyReport) => void,
): Promise<VerifyReport> {
  const report: VerifyReport = { checked: 0, verified: 0, pending: 0, gone: 0, unverified: 0, failures: [] };
  let page: CommitmentRecord[] = [];
  const checkPage = async (): Promise<void> => {
    const read: { ref: string; resource: Resource }[] = [];
    for (const record of page) {
      report.checked++;
      const ref = `${record.type}/${record.id}/_history/${record.version}`;
      try {
        read.push({ ref, resource: await deps.repository.vread(record.type, record.id, record.version) });
      } catch (err) {
        if (err instanceof TamperedVersionError) report.failures.push({ resource: ref, reason: 'stored data does not authenticate (altered, swapped or corrupted on disk)' });
        else if (isGlucoGuardError(err, 'ERR_GONE')) report.gone++;
        else if (isGlucoGuardError(err, 'ERR_NOT_FOUND')) report.failures.push({ resource: ref, reason: 'missing from the repository' });
        else throw stopped(`reading ${ref} from the repository (${deps.repository.description.adapter}, ${deps.repository.description.location})`, err);
      }
    }
    const results = await deps.checker.checkMany(read.map((r) => r.resource));
    results.forEach((result, i) => {
      if (result.status === 'verified') report.verified++;
      else if (result.status === 'pending') report.pending++;
      else if (result.status === 'unverified') report.unverified++;
      else report.failures.push({ resource: read[i]!.ref, reason: result.reason === 'content' ? 'content does not match its commitment' : `Merkle ${result.reason} check failed` });
    });
    page = [];
    onProgress?.(report);
  };
  const records = deps.store.all(patient);
  for (;;) {
    let next: IteratorResult<CommitmentRecord>;
    try {
      next = records.next();
    } catch (err) {
      throw stopped(`reading the commitment store ${deps.store.file}`, err);
    }
    if (next.done) break;
    page.push(next.value);
    if (page.length === PAGE) await checkPage();
  }
  if (page.length) await checkPage();
  return report;
}

/**
 * An error no check accounts for (a damaged SQLite page): verify stops, saying what it was
 * reading and where — SQLite alone says only "database disk image is malformed", not
 * which of the data directory's files.
 */
function stopped(what: string, err: unknown): unknown {
  const e = err as { code?: unknown; message?: unknown };
  // GlucoGuard's own errors already say what failed, and their codes decide the exit code (ERR_DATA_DIR: 2)
  if (isGlucoGuardError(err) || (typeof e.code === 'string' && e.code.startsWith('ERR_'))) return err;
  const code = typeof e.code === 'string' ? ` (${e.code})` : '';
  return new Error(`verify stopped ${what}: ${typeof e.message === 'string' ? e.message : String(err)}${code}`, { cause: err });
}
