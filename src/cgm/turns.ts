/**
 * Turns at a patient's CGM imports across the processes on one data directory (replicas, and
 * `glucoguard ingest` beside a server). An import looks its readings up, then stores those it did not
 * find; two imports of one export at once through two processes both found nothing and stored every
 * reading twice. Within a process CgmIngestService queues a patient's imports; across processes
 * each import holds the patient's turn, a lease in the commitment store that every process on the
 * data directory opens (CommitmentStore.holdLease), renewed while it runs and given up at its end.
 * A holder that died on this host is passed over at once; one on another host, once its lease
 * has run out.
 */
import { randomUUID } from 'node:crypto';
import { holderDied, leaseOwner } from '../lease-owner.js';

/** Where the turns are kept: CommitmentStore's named leases. */
export interface LeaseStore {
  holdLease(owner: string, ttlMs: number, now: number, gone: (holder: string) => boolean, name: string): boolean;
  releaseLease(owner: string, name: string): void;
}

/** How long a turn lasts unless renewed (a process that stops renewing loses it after this). */
const TURN_TTL_MS = 30_000;
/** How often a held turn is renewed. */
const RENEW_MS = 10_000;
/** How often a waiting import asks again. */
const POLL_MS = 200;

export class ImportTurns {
  private readonly owner = leaseOwner(randomUUID().slice(0, 8));

  constructor(private readonly store: LeaseStore) {}

  /**
   * Runs `work` in the patient's turn: waits while another process imports for them (until
   * `signal` aborts: then throws what `stopped` makes), renews the turn while `work` runs, gives it
   * up after.
   */
  async run<T>(patient: string, signal: AbortSignal, stopped: () => Error, work: () => Promise<T>): Promise<T> {
    const name = `cgm-import:${patient}`;
    const hold = (): boolean => this.store.holdLease(this.owner, TURN_TTL_MS, Date.now(), holderDied, name);
    while (!hold()) {
      if (signal.aborted) throw stopped();
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
    const renewal = setInterval(() => {
      try {
        hold();
      } catch {
        // the store closing under a stopping import: the turn runs out on its own
      }
    }, RENEW_MS);
    renewal.unref();
    try {
      return await work();
    } finally {
      clearInterval(renewal);
      this.store.releaseLease(this.owner, name);
    }
  }
}
