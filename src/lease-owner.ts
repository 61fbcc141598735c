/**
 * Names of lease holders, shared by the leases processes on one data directory take turns with
 * (the ledger's anchoring lease, src/ledger/anchor.ts; subscription delivery,
 * src/exchange/subscription-store.ts): `host/pid/random`, so two apps in one process are two
 * owners, and a holder on this host whose process is gone can be told apart from a live one.
 */
import { hostname } from 'node:os';

/** A lease owner name for this process: host/pid/random. */
export function leaseOwner(random: string): string {
  return `${hostname()}/${process.pid}/${random}`;
}

/**
 * True when the holder ran on this host in a process that no longer exists (killed, crashed): its
 * lease need not run out before another process takes over (a restart takes over at once).
 */
export function holderDied(holder: string): boolean {
  const [host, pid] = holder.split('/');
  if (host !== hostname() || !pid || Number(pid) === process.pid) return false;
  try {
    process.kill(Number(pid), 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
}
