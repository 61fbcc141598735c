/**
 * A Repository decorator that tells listeners about every stored version after the write
 * succeeded (create, update, transaction, bulk create), so subscriptions fire from every write
 * path — FHIR facade, CGM ingest, CLI — without those paths knowing. Listeners run after the
 * write returned and their errors never reach the writer.
 */
import { WriteObservingRepository, type WrittenVersion } from '../repository/observed.js';

export type { WrittenVersion };

export type WriteListener = (written: WrittenVersion[]) => void;

export class NotifyingRepository extends WriteObservingRepository {
  private readonly listeners: WriteListener[] = [];

  /** Adds a listener; returns a function that removes it. */
  onWrite(listener: WriteListener): () => void {
    this.listeners.push(listener);
    return () => {
      const i = this.listeners.indexOf(listener);
      if (i >= 0) this.listeners.splice(i, 1);
    };
  }

  protected override written(written: WrittenVersion[]): void {
    for (const l of this.listeners) {
      try {
        l(written);
      } catch {
        // a listener's failure is its own business (it logs); the write already succeeded
      }
    }
  }
}
