/**
 * The access log: one BALP AuditEvent per FHIR request that reached the facade, permitted or
 * denied, stored through the repository like any resource (so it is anchored and tamper-evident
 * with the rest). Recording happens after the response is built and never delays or fails it; a
 * failed write is logged server-side. `flush()` waits for queued and pending writes (readers of the
 * access log, tests, shutdown).
 *
 * Events are stored in groups: those recorded within `windowMs` of the first one waiting
 * (GLUCOGUARD_AUDIT_WINDOW_MS, 50 ms by default; at most MAX_BATCH) go in one write. Every write is
 * a transaction in the store and one in the ledger's commitment store, and events of one client
 * share most of their index rows: in a store of 1,000,000 readings one event alone cost ~0.7–1.1 ms,
 * four together ~0.36–0.59 ms each, ten ~0.3 ms (bench/probes/audit-writes.mjs). The cost
 * is that a process killed outright loses the events of its last window, as it loses the last
 * commits of SQLite's WAL on a power cut; a shutdown flushes them. `windowMs` 0: the events of one
 * turn of the event loop go together.
 *
 * A write that fails (an upstream server answering 503, refusing for a while) is not the end of its
 * events: they are kept and written again after 1 s, then 2, 4 … up to a minute between tries, each
 * failure logged with how many wait (no content). At most MAX_RETAINED wait; beyond that the oldest
 * are given up, logged as lost, and counted (`glucoguard_audit_events_lost_total`). The number
 * waiting is the `audit` queue of `glucoguard_queue_depth`. A shutdown tries once more and logs
 * what it could not store.
 */
import { isResource } from '@medplum/core';
import type { AuditEvent } from '@medplum/fhirtypes';
import { patientIdOfReference, patientIdsOf } from '../fhir/compartment.js';
import type { FhirRequest, FhirResponse } from '../fhir/types.js';
import type { Logger } from '../log.js';
import type { Repository } from '../repository/port.js';
import { takeConsentNotes, type RequestNotes } from '../consent/policy.js';
import { requesterOf, type ConsentAccessContext } from '../consent/requester.js';
import { auditEventOf, type AccessRecord, type BalpInteraction } from './balp.js';
import { metrics } from '../observability/metrics.js';
import { AlertThrottle } from './alert-throttle.js';

/** Most events stored in one write. */
const MAX_BATCH = 500;
/** Requests refused for want of a valid token are recorded once per patient (or once for none) per window… */
const UNAUTHENTICATED_WINDOW_MS = 60_000;
/** … and at most this many in a window in all (ids made up by the thousand write no more). */
const UNAUTHENTICATED_MAX = 600;
/** Most events kept for another try after their write failed (a few hundred bytes each). */
const MAX_RETAINED = 100_000;
const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 60_000;

export const DEFAULT_AUDIT_WINDOW_MS = 50;

/**
 * `FhirRequest.path` under which a Bulk Data output file download is recorded (src/exchange/): with
 * `query.url` the file's URL, it is recorded as a BALP Read of that file; the patients are
 * `query.patient` and those in the consent notes of its access, the grants those in the notes.
 */
export const EXPORT_FILE_PATH = '$export-file';

export class AuditRecorder {
  private readonly pending = new Set<Promise<unknown>>();
  private queue: AuditEvent[] = [];
  /** The drain waiting for the window to close (or for the next turn), if any. */
  private scheduled: { cancel(): void } | undefined;
  private readonly windowMs: number;
  /** Events whose write failed, oldest first, written again when `retry` fires. */
  private failed: AuditEvent[] = [];
  private retryDelayMs = RETRY_MIN_MS;
  private retry: ReturnType<typeof setTimeout> | undefined;
  private readonly unauthenticated: AlertThrottle;
  private unauthenticatedWindow = { start: -Infinity, count: 0 };

  constructor(private readonly options: { repository: Repository; logger?: Logger; now?: () => number; windowMs?: number }) {
    this.windowMs = options.windowMs ?? DEFAULT_AUDIT_WINDOW_MS;
    this.unauthenticated = new AlertThrottle(UNAUTHENTICATED_WINDOW_MS, options.now);
  }

  /**
   * Records a FHIR request refused before anyone was identified (401: no token, or one that is
   * invalid, expired or revoked) as a denied access by "no valid access token": the patients its
   * path or query names find it in their log. Nobody is identified, so anyone can send these: at
   * most one event per named patient (and one naming none) per minute goes into the log, the
   * others of the minute only into the request log.
   */
  recordUnauthenticated(request: Pick<FhirRequest, 'method' | 'path' | 'query' | 'headers'>, status: number): void {
    const parts = request.path.split('/').filter(Boolean);
    if (parts[0] === 'metadata') return;
    const patients = namedPatients(parts, request.query);
    const interaction = interactionOf(request.method, parts);
    const base: AccessRecord = {
      interaction,
      recorded: new Date((this.options.now ?? Date.now)()).toISOString(),
      outcome: '4',
      outcomeDesc: `HTTP ${status}: no valid access token`,
      requester: { kind: 'unauthenticated' },
      ...(parts.length >= 2 && !parts[1]!.startsWith('$') && !parts[1]!.startsWith('_') ? { target: `${parts[0]}/${parts[1]}` } : {}),
      // no query text: sent by someone unidentified, it could be anything (the ids it names are kept as entities)
      patients: [],
      grants: [],
      requestId: request.headers['x-request-id'],
    };
    for (const p of patients.size ? patients : ['']) {
      if (!this.unauthenticatedRoom() || !this.unauthenticated.take(p)) continue;
      this.unauthenticatedWindow.count++;
      this.enqueue(auditEventOf(p ? { ...base, patients: [p] } : base));
    }
  }

  private unauthenticatedRoom(): boolean {
    const now = (this.options.now ?? Date.now)();
    if (now - this.unauthenticatedWindow.start >= UNAUTHENTICATED_WINDOW_MS) this.unauthenticatedWindow = { start: now, count: 0 };
    return this.unauthenticatedWindow.count < UNAUTHENTICATED_MAX;
  }

  /**
   * Records one request (the FhirRouter's `onResponse`). Events recorded within the window of the
   * first one waiting are stored together, in one write (one transaction per store) when the
   * repository has a bulk path.
   */
  record(request: FhirRequest, response: FhirResponse): void {
    for (const event of this.eventsOf(request, response)) this.enqueue(event);
  }

  /**
   * Records an access made outside the FHIR facade (the SMART patient picker lists patients to a
   * signed-in user) as the facade's are: the requester and its app, what was done, the outcome,
   * the patients it was about (their access logs list it) and the grants that allowed it.
   */
  recordAccess(access: ConsentAccessContext, what: Pick<AccessRecord, 'interaction' | 'outcome' | 'outcomeDesc' | 'target' | 'query' | 'patients' | 'grants'>): void {
    const requester = requesterOf(access);
    this.enqueue(auditEventOf({
      ...what,
      recorded: new Date((this.options.now ?? Date.now)()).toISOString(),
      requester: { kind: requester.kind, reference: access.fhirUser, clientId: access.clientId },
      purpose: requester.purpose,
    }));
  }

  private enqueue(event: AuditEvent): void {
    this.queue.push(event);
    if (this.queue.length >= MAX_BATCH) this.schedule(0);
    else if (!this.scheduled) this.schedule(this.windowMs);
  }

  /**
   * Stores every queued event now and waits for every write in flight; events whose write failed
   * are tried once more (not again if that fails: see unstored).
   */
  async flush(): Promise<void> {
    this.requeueFailed();
    while (this.pending.size || this.queue.length) {
      if (this.queue.length) this.drain();
      await Promise.all([...this.pending]);
    }
  }

  /** Events waiting for another try after their write failed. */
  unstored(): number {
    return this.failed.length;
  }

  /** Stops retrying (shutdown), after one last flush; answers how many events could not be stored. */
  async close(): Promise<number> {
    await this.flush();
    if (this.retry) clearTimeout(this.retry);
    this.retry = undefined;
    const lost = this.failed.length;
    if (lost) {
      this.options.logger?.error({ events: lost }, 'audit: access-log events could not be stored before shutdown and are lost');
      metrics.auditEventsLost.inc(lost);
    }
    this.failed = [];
    return lost;
  }

  private requeueFailed(): void {
    if (!this.failed.length) return;
    this.queue.unshift(...this.failed);
    this.failed = [];
    metrics.queueDepth.set({ queue: 'audit' }, 0);
  }

  private stored(): void {
    this.retryDelayMs = RETRY_MIN_MS;
  }

  /** Keeps a failed write's events for another try, up to MAX_RETAINED (see the class comment). */
  private keepForRetry(batch: AuditEvent[], err: unknown): void {
    this.failed.push(...batch);
    const over = this.failed.length - MAX_RETAINED;
    if (over > 0) {
      this.failed.splice(0, over);
      metrics.auditEventsLost.inc(over);
      this.options.logger?.error({ events: over }, 'audit: access-log events lost: the repository refused them for too long');
    }
    metrics.queueDepth.set({ queue: 'audit' }, this.failed.length);
    this.options.logger?.error({ err: (err as Error).message, events: batch.length, waiting: this.failed.length, retryInMs: this.retryDelayMs },
      'audit: could not store AuditEvents; they are kept and written again');
    if (this.retry) return;
    this.retry = setTimeout(() => {
      this.retry = undefined;
      this.requeueFailed();
      this.drain();
    }, this.retryDelayMs);
    this.retry.unref();
    this.retryDelayMs = Math.min(this.retryDelayMs * 2, RETRY_MAX_MS);
  }

  private schedule(delayMs: number): void {
    this.scheduled?.cancel();
    if (delayMs > 0) {
      const timer = setTimeout(() => this.drain(), delayMs);
      this.scheduled = { cancel: () => clearTimeout(timer) };
    } else {
      const immediate = setImmediate(() => this.drain());
      this.scheduled = { cancel: () => clearImmediate(immediate) };
    }
  }

  private drain(): void {
    this.scheduled?.cancel();
    this.scheduled = undefined;
    const batch = this.queue.splice(0, MAX_BATCH);
    if (!batch.length) return;
    const repository = this.options.repository as Repository & { createMany?(resources: AuditEvent[]): Promise<unknown> };
    // the embedded store's bulk write is one transaction (all or nothing); elsewhere each event is
    // its own write, and only those that failed are tried again (never one stored twice)
    const write = repository.createMany && batch.length > 1 && repository.description?.adapter === 'embedded'
      ? repository.createMany(batch).then(() => this.stored(), (err: unknown) => this.keepForRetry(batch, err))
      : Promise.allSettled(batch.map((e) => repository.create(e))).then((results) => {
        const failed = batch.filter((_, i) => results[i]!.status === 'rejected');
        if (!failed.length) return this.stored();
        this.keepForRetry(failed, (results.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason);
      });
    this.pending.add(write);
    void write.finally(() => this.pending.delete(write));
    if (this.queue.length) this.schedule(0);
  }

  /** The one AuditEvent of a request, naming every patient it touched (see eventsOf for what is stored). */
  eventOf(request: FhirRequest, response: FhirResponse): AuditEvent | undefined {
    const rec = this.recordOf(request, response, false);
    return rec && auditEventOf(rec);
  }

  /**
   * The AuditEvents stored for a request: one per patient it touched (BALP: a patient's log then
   * holds events about them alone, and no patient reads another's id, grants or withheld counts in
   * it; an event naming two patients would be withheld from both by consent). Each copy's query
   * leaves the other patients out (queryCopies). An access about no patient is one event.
   */
  eventsOf(request: FhirRequest, response: FhirResponse): AuditEvent[] {
    const rec = this.recordOf(request, response, true);
    if (!rec) return [];
    if (rec.patients.length <= 1) return [auditEventOf(rec)];
    const grantPatients = rec.notes?.grantPatients;
    const status = response.status;
    // the reasons of a denial name grants, and the withheld count is everyone's: kept out of the copies
    const outcomeDesc = status >= 400 ? `HTTP ${status}` : rec.outcomeDesc ? 'entries withheld by consent' : undefined;
    const queryOf = rec.query !== undefined ? queryCopies(request.query, rec.patients) : undefined;
    return rec.patients.map((p) => auditEventOf({
      ...rec,
      ...(queryOf ? { query: `${request.path}?${queryOf(p)}` } : {}),
      patients: [p],
      grants: rec.grants.filter((g) => grantPatients?.get(g)?.has(p)),
      ...(outcomeDesc ? { outcomeDesc } : { outcomeDesc: undefined }),
    }));
  }

  /** `take`: this event takes the consent notes gathered since the last one of the request (a batch entry's own). */
  private recordOf(request: FhirRequest, response: FhirResponse, take: boolean): (AccessRecord & { notes?: RequestNotes }) | undefined {
    const parts = request.path.split('/').filter(Boolean);
    if (parts[0] === 'metadata') return undefined;
    const file = parts.length === 1 && parts[0] === EXPORT_FILE_PATH ? [request.query.url ?? []].flat()[0] : undefined;
    const interaction = file !== undefined ? 'read' : interactionOf(request.method, parts);
    const access = request.access as ConsentAccessContext;
    const requester = requesterOf(access);
    // a batch's own event reads what all its entries noted; any other event (an entry) its own notes
    const notes = takeConsentNotes(access, !take || interaction === 'batch');
    const status = response.status;
    // a write is about the patients of what it wrote, whether or not its answer showed it (a
    // guardian who may write a reading in the ward's record but not read it back)
    const written = status < 300 && (interaction === 'create' || interaction === 'update') && isResource(request.body) ? patientIdsOf(request.body) : [];
    const patients = new Set([...(notes?.patients ?? []), ...namedPatients(parts, request.query), ...written]);
    const desc = status >= 400
      ? `HTTP ${status}${notes?.reasons.size ? `; ${[...notes.reasons].slice(0, 5).join('; ')}` : ''}`
      : notes && notes.denied > 0 ? `${notes.denied} entr${notes.denied === 1 ? 'y' : 'ies'} withheld by consent` : undefined;
    const query = queryText(request.query);
    // a create, or a conditional write (named by criteria), names the resource it wrote in the Location
    const conditional = parts.length === 1 && ['PUT', 'PATCH', 'DELETE'].includes(request.method);
    const target = file ?? (parts.length >= 2 && !parts[1]!.startsWith('$') && !parts[1]!.startsWith('_') ? `${parts[0]}/${parts[1]}`
      : conditional || interaction === 'create' ? writtenResource(response) : undefined);
    return {
      interaction,
      recorded: new Date((this.options.now ?? Date.now)()).toISOString(),
      outcome: status >= 500 ? '8' : status >= 400 ? '4' : '0',
      ...(desc ? { outcomeDesc: desc } : {}),
      requester: { kind: requester.kind, reference: access.fhirUser, clientId: access.clientId },
      purpose: requester.purpose,
      ...(target ? { target } : {}),
      ...(interaction === 'search-type' || interaction === 'operation' || conditional ? { query: `${request.path}?${query}` } : {}),
      patients: [...patients],
      grants: [...(notes?.grants ?? [])],
      requestId: request.headers['x-request-id'],
      ...(notes ? { notes } : {}),
    };
  }
}

/** The patients a request names itself: `Patient/<id>…` paths and `patient`/`subject` values. */
function namedPatients(parts: readonly string[], query: FhirRequest['query']): Set<string> {
  const patients = new Set<string>();
  if (parts[0] === 'Patient' && parts[1] && /^[A-Za-z0-9\-.]{1,64}$/.test(parts[1])) patients.add(parts[1]);
  for (const key of ['patient', 'subject']) {
    for (const v of [query[key] ?? []].flat()) {
      for (const one of v.split(',')) {
        const id = patientIdOfReference(one) ?? (key === 'patient' && /^[A-Za-z0-9\-.]{1,64}$/.test(one) ? one : undefined);
        if (id) patients.add(id);
      }
    }
  }
  return patients;
}

/** A request's query as text, as asked. */
function queryText(query: FhirRequest['query']): string {
  return Object.entries(query).flatMap(([k, v]) => [v].flat().map((x) => `${k}=${x}`)).join('&');
}

const PLACEHOLDER = '(another patient)';

/**
 * The query of each patient's copy of an event about `patients`: a `patient`/`subject` value naming
 * another of them is left out (an export's list of every patient, a clinician's `patient=A,B`), and
 * their ids in any other value (`_id=A,B`) read `(another patient)`, a page token (which holds its
 * search) is not copied; search values such as a typed name stay as asked. Worked out once, so that each copy costs what its own part of the query does,
 * not the whole list (an export names every patient, and each gets a copy).
 */
function queryCopies(query: FhirRequest['query'], patients: readonly string[]): (p: string) => string {
  const all = new Set(patients);
  const idOf = (one: string): string => patientIdOfReference(one) ?? one;
  const tokens = /[A-Za-z0-9\-.]{1,64}/g;
  const common: { i: number; text: string }[] = [];
  const own = new Map<string, { i: number; text: string }[]>();
  // values naming several patients, or a patient inside another parameter: rewritten per copy (few)
  const mixed: { i: number; k: string; x: string; list: boolean }[] = [];
  let i = 0;
  for (const [k, v] of Object.entries(query)) {
    for (const x of [v].flat()) {
      i++;
      // a next-page link carries its search (other patients' ids among it) inside the token
      if (k === '_pageToken') common.push({ i, text: `${k}=(a further page of the search)` });
      else if (k === 'patient' || k === 'subject') {
        const named = x.split(',').filter((one) => all.has(idOf(one)));
        if (named.length === 0) common.push({ i, text: `${k}=${x}` });
        else if (named.length === 1 && named[0] === x) {
          const list = own.get(idOf(x)) ?? [];
          list.push({ i, text: `${k}=${x}` });
          own.set(idOf(x), list);
        } else mixed.push({ i, k, x, list: true });
      } else if ((x.match(tokens) ?? []).some((t) => all.has(t))) mixed.push({ i, k, x, list: false });
      else common.push({ i, text: `${k}=${x}` });
    }
  }
  return (p) => {
    const parts = [...common, ...(own.get(p) ?? [])];
    for (const m of mixed) {
      if (m.list) {
        const kept = m.x.split(',').filter((one) => !all.has(idOf(one)) || idOf(one) === p);
        if (kept.length) parts.push({ i: m.i, text: `${m.k}=${kept.join(',')}` });
      } else parts.push({ i: m.i, text: `${m.k}=${m.x.replace(tokens, (t) => (all.has(t) && t !== p ? PLACEHOLDER : t))}` });
    }
    return parts.sort((a, b) => a.i - b.i).map((e) => e.text).join('&');
  };
}

function interactionOf(method: string, parts: string[]): BalpInteraction {
  if (parts.length === 0) return 'batch';
  if (parts.some((p) => p.startsWith('$'))) return 'operation';
  if (parts[1] === '_search') return 'search-type';
  if (parts.includes('_history')) {
    if (parts.length === 4) return 'vread';
    return parts.length === 1 ? 'history-system' : parts.length === 2 ? 'history-type' : 'history-instance';
  }
  if (method === 'POST') return 'create';
  if (method === 'PUT' || method === 'PATCH') return 'update';
  if (method === 'DELETE') return 'delete';
  return parts.length === 1 ? 'search-type' : 'read';
}

/** `Type/id` of the resource a write answered with, from its Location (`…/Type/id/_history/v`, or relative as the Consent module sends it). */
function writtenResource(response: FhirResponse): string | undefined {
  const location = response.headers?.Location;
  const m = typeof location === 'string' ? /(?:^|\/)([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})\/_history\/[^/]+$/.exec(location) : null;
  return m ? `${m[1]}/${m[2]}` : undefined;
}
