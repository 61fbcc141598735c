/**
 * Whether a reference names a resource that is there, for commands that bind something to it (a
 * grant, an identity, a user): binding to an id nobody holds would hand that binding to whoever
 * later creates a resource with that id.
 */
import { isGlucoGuardError } from '../errors.js';
import type { Repository } from './port.js';

/** True when `type/id` reads; false when it was never stored, or was deleted or erased. Other failures (an upstream down) are thrown. */
export async function resourceExists(repository: Pick<Repository, 'read'>, type: string, id: string): Promise<boolean> {
  try {
    await repository.read(type, id);
    return true;
  } catch (err) {
    if (isGlucoGuardError(err, 'ERR_NOT_FOUND') || isGlucoGuardError(err, 'ERR_GONE')) return false;
    throw err;
  }
}
