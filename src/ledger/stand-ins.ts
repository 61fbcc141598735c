/**
 * Why a stand-in (repository/port.ts TamperedVersionError) fails the integrity check. The embedded
 * store makes one for stored bytes that do not authenticate (AES-GCM); the ledger's repository
 * (anchored-repository.ts) makes one for a committed version the store no longer holds, or for a
 * current version older than the newest committed one. The alert and the issue say which.
 */
import type { TamperedVersionError } from '../repository/port.js';

export type StandInCause = 'unauthenticated' | 'missing' | 'rolled-back';

const causes = new WeakMap<object, StandInCause>();

/** Marks the stand-in of `err` as made by the ledger for `cause`; answers `err`. */
export function withCause(err: TamperedVersionError, cause: 'missing' | 'rolled-back'): TamperedVersionError {
  causes.set(err.standIn, cause);
  return err;
}

/** Why `standIn` fails: what the ledger marked, else bytes that do not authenticate (the store's own stand-ins). */
export function causeOf(standIn: object): StandInCause {
  return causes.get(standIn) ?? 'unauthenticated';
}
