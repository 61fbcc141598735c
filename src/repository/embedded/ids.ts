/**
 * Ids the embedded repository assigns: UUIDv7 (RFC 9562), time-ordered and monotonic within the
 * process, so resources created together (a day of CGM readings from one upload) sit next to each
 * other in every B-tree keyed by id: the repository's `versions_by_id` and the ledger's
 * `commitments_by_key`. A random UUIDv4 scattered them over the whole index, and a first read of a
 * patient-day then touched a different page per resource. The id reveals when the resource was
 * created (to the millisecond) to whoever sees the id; it says nothing of the data, and de-identified
 * exports replace ids with pseudonyms anyway.
 */
import { v7 } from 'uuid';

export function newResourceId(): string {
  return v7();
}
