/**
 * One Security Alert per finding per window. A tampered version fails every read closed, and each
 * read used to write its own alert: three altered rows made 21 AuditEvents within seconds, burying
 * the patient's access log. The finding is the same each time, so after the first alert the next
 * ones within the window are left out (the reads are still refused, each with its issue).
 * In memory, per process: replicas each alert once per window.
 */

/** Default window: one alert per finding per hour. */
export const ALERT_WINDOW_MS = 60 * 60 * 1000;
/** Findings remembered at most; the oldest are forgotten first (then alerted again). */
const MAX_KEYS = 10_000;

export class AlertThrottle {
  /** key → when it was last alerted (insertion order = age). */
  private readonly raised = new Map<string, number>();

  constructor(private readonly windowMs = ALERT_WINDOW_MS, private readonly now: () => number = Date.now) {}

  /** True when `key` has not been alerted within the window: it counts as alerted from now. */
  take(key: string): boolean {
    const now = this.now();
    const at = this.raised.get(key);
    if (at !== undefined && now - at < this.windowMs) return false;
    this.raised.delete(key);
    if (this.raised.size >= MAX_KEYS) this.raised.delete(this.raised.keys().next().value!);
    this.raised.set(key, now);
    return true;
  }

  /** Forgets `key` (its alert could not be written): the next finding alerts again. */
  release(key: string): void {
    this.raised.delete(key);
  }
}
