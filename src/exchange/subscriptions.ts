/**
 * Topic-based Subscriptions, FHIR R4 Subscriptions Backport IG
 * (https://hl7.org/fhir/uv/subscriptions-backport/), rest-hook channel.
 *
 * A client writes a backport Subscription: `criteria` = a topic canonical (new or changed CGM
 * readings, or CGM summaries), optional `backport-filter-criteria` `Observation?patient=Patient/ID`
 * (not under a research purpose: it would tie that patient to its pseudonym),
 * `channel.type` rest-hook, `channel.payload` application/fhir+json with `backport-payload-content`
 * id-only or full-resource (no payload: empty), optional `backport-heartbeat-period` (at least
 * GLUCOGUARD_SUBSCRIPTION_HEARTBEAT_MIN), `channel.header` (subscription-rules.ts: token names,
 * visible-ASCII values, none the proxy sets) and `end`. The endpoint passes the SSRF policy
 * (endpoint.ts). A handshake Bundle is sent, and the Subscription turns `active` when the
 * endpoint accepts it; it turns `off` when its `end` passes.
 *
 * Every stored version (NotifyingRepository) that matches a topic and filter is an event for each
 * active Subscription whose requester may see it then: it is numbered at once (the counter and an
 * event row are persisted before any delivery), so a notification that fails every retry leaves a
 * gap in the event numbers the subscriber sees, as the IG's error handling expects; `$events`
 * answers the events still logged. Right before each delivery attempt the resources go through the
 * requester's policy and every outbound guard again, exactly as a read would — so once a patient
 * revokes, nothing more of theirs leaves — and are de-identified for research requesters.
 * Delivery is retried with exponential back-off and logged (ids and counts only); after the last
 * attempt the Subscription is `error` until a later delivery succeeds. A failed attempt of any kind
 * (status, timeout, socket, a header the HTTP client refuses) never escapes the delivery loop.
 *
 * Versions written by other processes on the same data directory (`glucoguard ingest`) are found
 * in the commitment store every GLUCOGUARD_SUBSCRIPTION_POLL_MS and notified like the server's own.
 * How far the holder got is stored, so a holder that starts later (restart, crash, handover) goes on
 * from there: versions written while none delivered are numbered then, and a version the event log
 * shows numbered already is not numbered again.
 * Only one process delivers (the lease in subscription-store.ts); the others stay passive: they
 * store the Subscriptions written through them and answer `$status`/`$events` from the store, and
 * the holder, at the same poll, takes up every Subscription another process created, updated or
 * deleted (the store's definitions counter moved, a row's revision changed).
 *
 * Daily digest (channel extension DIGEST_EXTENSION, valueCode `daily`; readings topic): instead
 * of a notification per write, once per GLUCOGUARD_SUBSCRIPTION_DIGEST_MS the readings stored
 * since the last digest are read through the policy and guards and sent as one Bundle — the daily
 * push to a study server that a research consent asks for. Its events are numbered when the digest
 * gathers them; one that cannot be delivered is sent again with the next digest under the numbers
 * and timestamps it was given (from the event log), never numbered again.
 *
 * The Subscription resource lives in the repository (GET works for in-process/admin access; for a
 * consent-limited requester a Subscription has no patient link, so reads are withheld — use
 * `$status`) with its `channel.header` values replaced by `[sealed]` (an upstream would hold them
 * in clear; an update that sends one back as read keeps its value); delivery state, the header
 * values sealed, lives in `<dataDir>/exports/subscriptions.sqlite`.
 *
 * Only writes made through GlucoGuard are notified: a version written directly on an upstream
 * server (the EHR's own writes) passes neither NotifyingRepository nor the commitment store.
 * A notification's `events-since-subscription-start` is the number of its last event; a research
 * notification names its pseudonymised focus by a `urn:uuid:` (notifications.ts researchFullUrl).
 */
import { randomUUID } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { Bundle, Parameters, Resource, Subscription } from '@medplum/fhirtypes';
import { badRequest, forbidden, issue, isGlucoGuardError, isPassingOutage, notFound, unavailable, unprocessable } from '../errors.js';
import type { AccessContext } from '../fhir/access.js';
import { patientIdsOf } from '../fhir/compartment.js';
import type { AccessPolicy } from '../fhir/policy.js';
import type { FhirRouter, OperationHandler, TypeWriteHandler } from '../fhir/router.js';
import type { FhirRequest } from '../fhir/types.js';
import type { Logger } from '../log.js';
import { EndpointPolicy } from './endpoint.js';
import { ownerOf, storedAccess, type StoredAccess } from './jobs.js';
import { BACKPORT, notificationBundle, researchFullUrl, statusParameters, type NotificationEvent, type NotificationType, type PayloadContent } from './notifications.js';
import type { GuardedReader } from './reader.js';
import type { Deidentifier } from './deidentify.js';
import { researchContextOf, type StudyDeidentifiers } from './research.js';
import type { ExchangeSettings } from './settings.js';
import {
  channelHeaders, digestOf, endOf, filterPatient, headerProblem, heartbeatOf, keptHeaders, payloadContent, withSealedHeaders,
} from './subscription-rules.js';
import { leaseOwner } from '../lease-owner.js';
import { openText, seal } from '../repository/embedded/keys.js';
import { EVENT_LOG_KEEP, SubscriptionStore, type LoggedEvent, type StoredRow } from './subscription-store.js';
import type { NotifyingRepository, WrittenVersion } from './write-events.js';

const CGM_IG = 'http://hl7.org/fhir/uv/cgm/StructureDefinition/';
/** The topics this server offers (SubscriptionTopic canonicals). */
export const TOPICS = {
  readings: 'https://glucoguard.org/fhir/SubscriptionTopic/cgm-readings',
  summaries: 'https://glucoguard.org/fhir/SubscriptionTopic/cgm-summaries',
} as const;
export const BACKPORT_PROFILE = `${BACKPORT}backport-subscription`;
/** Channel extension asking for one digest Bundle per day (valueCode `daily`) instead of a notification per write. */
export const DIGEST_EXTENSION = 'https://glucoguard.org/fhir/StructureDefinition/subscription-digest';
const READING_CODES = new Set(['http://loinc.org|99504-3', 'http://loinc.org|105272-9']);
const MAX_EVENTS_PER_BUNDLE = 100;
const MAX_PENDING = 10_000;
/**
 * Subscriptions one requester may hold. Every matching write is numbered, logged and delivered once
 * per Subscription, so without a cap one client could multiply each reading into as many outbound
 * POSTs (to any public host) and event rows as it liked.
 */
export const MAX_SUBSCRIPTIONS_PER_REQUESTER = 50;
const DELIVERY_TIMEOUT_MS = 10_000;
/** The delivery lease lasts this long unless renewed (renewed at every poll). */
const LEASE_TTL_MS = 15_000;
/** Versions recently reported by this process's own writes, so the commitment poll does not report them again. */
const SEEN_KEEP = 200_000;
const SEEN_MS = 10 * 60_000;
/** Commitments read per step of the poll for other processes' writes. */
const POLL_CHUNK = 500;
/** Longest setTimeout (ms); a later `end` re-arms. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export type SubscriptionStatus = 'requested' | 'active' | 'error' | 'off';

/** Delivery state of one Subscription. */
export interface SubscriptionState {
  id: string;
  /** Revision of the definition (the store's, set when the row is read or written). */
  rev: number;
  owner: string;
  access: StoredAccess;
  topic: string;
  patient?: string;
  payload: PayloadContent;
  endpoint: string;
  headers: string[];
  heartbeatSeconds: number;
  status: SubscriptionStatus;
  /** Events numbered since the Subscription started (delivered or not): the last event number. */
  events: number;
  /** Resources that matched but were withheld by the guards (when they happened, or at send time). */
  withheld: number;
  failedDeliveries: number;
  lastError?: string;
  lastDeliveryAt?: string;
  /** `Subscription.end`: the server turns it off then. */
  end?: string;
  /** Why a stored Subscription cannot be used (it broke a rule when loaded); nothing is sent for it. */
  unusable?: string;
  /** Daily digest: matching data is gathered and sent once per period instead of per write. */
  digest?: 'daily';
  /** End of the window the last digest covered (its readings are numbered, delivered or not). */
  lastDigestAt?: string;
  /**
   * Digest: the events up to this number were delivered or withheld; later ones are owed and go
   * with the next digest under their numbers. Absent: nothing owed.
   */
  digestSentThrough?: number;
}

/** Where the versions of every process sharing the data directory are listed, in write order (the ledger's commitment store). */
export interface CommittedVersions {
  lastSeq(): number;
  after(seq: number, limit: number): { seq: number; type: string; id: string; version: string }[];
}

export interface SubscriptionServiceOptions {
  dir: string;
  fhir: FhirRouter;
  policy: AccessPolicy;
  repository: NotifyingRepository;
  fhirBase: string;
  deidentifiers: StudyDeidentifiers;
  settings: ExchangeSettings;
  /** Reads the data a digest covers, through policy and guards. */
  reader: GuardedReader;
  /** Versions other processes wrote (CLI ingest) are found here; without it only this process's writes notify. */
  commitments?: CommittedVersions;
  /**
   * True when the requester who made a Subscription is cut off since (its client or user disabled:
   * src/smart/tokens.ts): its notifications stop as its tokens did. Throws when it cannot tell.
   */
  requesterCutOff?: (access: StoredAccess) => boolean;
  /**
   * Seals `channel.header` values (a receiver's bearer token, an API key) in the subscription
   * store, as the repository seals the Subscription itself; without it they are stored as given.
   */
  headerKey?: Buffer;
  logger?: Logger;
}

/** An event: numbered when it happened, delivered later (or not). */
interface QueuedEvent {
  number: number;
  timestamp: string;
  version: WrittenVersion;
}

interface Worker {
  pending: QueuedEvent[];
  busy: Promise<void> | undefined;
  /** Numbering runs one batch after another, in write order. */
  intake: Promise<void>;
  intakeBusy: number;
  heartbeat?: NodeJS.Timeout;
  /** One access object per Subscription (the consent notes and caches hang off it). */
  access: StoredAccess;
}

/** Does this stored version belong to a topic? */
export function topicsOf(resource: Resource): string[] {
  const profiles = resource.meta?.profile ?? [];
  const out: string[] = [];
  if (resource.resourceType === 'Observation') {
    const codes = (resource.code?.coding ?? []).map((c) => `${c.system}|${c.code}`);
    if (codes.some((c) => READING_CODES.has(c)) || profiles.some((p) => p.startsWith(`${CGM_IG}cgm-sensor-reading`))) out.push(TOPICS.readings);
  }
  if ((resource.resourceType === 'Observation' || resource.resourceType === 'DiagnosticReport') && profiles.some((p) => p.startsWith(`${CGM_IG}cgm-summary`))) {
    out.push(TOPICS.summaries);
  }
  return out;
}

const keyOf = (r: { resourceType: string; id?: string; meta?: { versionId?: string } }): string => `${r.resourceType}/${r.id}/${r.meta?.versionId}`;

export class SubscriptionService {
  private readonly store: SubscriptionStore;
  private readonly states = new Map<string, SubscriptionState>();
  private readonly workers = new Map<string, Worker>();
  private readonly endTimers = new Map<string, NodeJS.Timeout>();
  readonly endpoints: EndpointPolicy;
  private readonly owner = leaseOwner(randomUUID());
  /** Whether this process holds the delivery lease (delivers); otherwise it stays passive. */
  private active = false;
  /** Versions this process already reported (key → when), newest last. */
  private readonly seen = new Map<string, number>();
  /** Commitments up to this seq have been looked at. */
  private highWater = 0;
  private polling = false;
  /** The store's definitions counter when the states were last compared with the rows. */
  private definitionsSeen = 0;
  private refreshing = false;
  private refreshAgain = false;
  /** Rows already reported as unreadable (`id rev`), so a passive process's reloads do not repeat it. */
  private readonly unreadable = new Set<string>();
  /** The digest run in progress per Subscription: runs follow each other, so owed events go once. */
  private readonly digestRuns = new Map<string, Promise<void>>();
  private unsubscribe: (() => void) | undefined;
  private digestTimer: NodeJS.Timeout | undefined;
  private tickTimer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(private readonly options: SubscriptionServiceOptions) {
    this.store = new SubscriptionStore(options.dir);
    this.endpoints = new EndpointPolicy(options.settings.subscriptionAllow, options.settings.subscriptionAllowHttp);
  }

  /** Registers the Subscription write handler, `$status` and `$events`. */
  attach(router: FhirRouter): void {
    router.registerWriteHandler('Subscription', this.writeHandler());
    router.registerOperation(this.statusOperation());
    router.registerOperation(this.eventsOperation());
  }

  /**
   * Loads Subscriptions and starts listening to writes; takes the delivery lease when no other
   * running process holds it (then restarts heartbeats and pending handshakes), and keeps trying.
   */
  async start(): Promise<void> {
    this.load();
    this.unsubscribe = this.options.repository.onWrite((written) => this.onWrite(written));
    await this.tick();
    if (this.active) void this.sealStoredHeaders();
    this.tickTimer = setInterval(() => void this.tick(), this.options.settings.foreignWritesPollMs);
    this.tickTimer.unref();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.unsubscribe?.();
    if (this.digestTimer) clearInterval(this.digestTimer);
    if (this.tickTimer) clearInterval(this.tickTimer);
    for (const t of this.endTimers.values()) clearTimeout(t);
    for (const w of this.workers.values()) if (w.heartbeat) clearInterval(w.heartbeat);
    await this.idle();
    if (this.active) {
      this.markOwnWrites();
      this.store.releaseLease(this.owner);
    }
    this.store.close();
  }

  /** Resolves when no notification is being numbered, queued or in flight (tests, benchmarks). */
  async idle(): Promise<void> {
    for (;;) {
      const busy = [...this.workers.values()].flatMap((w) => [w.busy, w.intakeBusy ? w.intake : undefined]).filter((b): b is Promise<void> => !!b);
      if (busy.length === 0 && !this.polling) return;
      await Promise.all(busy);
      if (this.polling) await new Promise((r) => setTimeout(r, 5));
    }
  }

  list(): SubscriptionState[] {
    return this.viewAll();
  }

  get(id: string): SubscriptionState | undefined {
    return this.view(id);
  }

  /** Whether this process delivers notifications (holds the lease). */
  get delivering(): boolean {
    return this.active;
  }

  /**
   * The repository's copies of Subscriptions an earlier release stored hold their `channel.header`
   * values in clear (on an upstream, in the EHR's database): a new version names them `[sealed]`.
   * Once, by the delivering process at start; the values stay sealed in the subscription store, and
   * earlier versions in the repository's history keep what they held (an upstream's history is its own).
   */
  private async sealStoredHeaders(): Promise<void> {
    let sealed = 0;
    for (const state of [...this.states.values()]) {
      if (!state.headers.length) continue;
      try {
        const current = await this.options.repository.read<Subscription>('Subscription', state.id);
        const again = withSealedHeaders(current);
        if (JSON.stringify(again.channel?.header) === JSON.stringify(current.channel?.header)) continue;
        await this.options.repository.update<Subscription>(again);
        sealed++;
      } catch (err) {
        this.options.logger?.warn({ subscription: state.id, err: (err as Error).message }, 'subscription: could not seal the header values of its stored copy');
      }
    }
    if (sealed) this.options.logger?.warn({ subscriptions: sealed }, 'subscriptions: header values an earlier release stored in clear are now [sealed] in the current versions; earlier versions in the repository history still hold them');
  }

  // ---- lease, start-up, other processes' writes ------------------------------------------------

  /** Reads every stored row; one that cannot be parsed is logged and left alone. */
  private load(): void {
    this.definitionsSeen = this.store.definitions();
    this.states.clear();
    for (const row of this.store.rows()) {
      const state = this.stateOfRow(row);
      if (state) this.states.set(state.id, state);
    }
  }

  /** The state a stored row holds, marked unusable when it breaks a rule; undefined (logged once) when it cannot be read. */
  private stateOfRow(row: StoredRow): SubscriptionState | undefined {
    let state: SubscriptionState;
    try {
      const stored = JSON.parse(row.json) as SubscriptionState & { sealedHeaders?: string };
      if (!stored || typeof stored !== 'object' || stored.id !== row.id) throw new Error('not a subscription state');
      if (stored.sealedHeaders !== undefined) {
        const text = this.options.headerKey && openText(this.options.headerKey, Buffer.from(stored.sealedHeaders, 'base64'), `subscription-headers/${stored.id}`);
        if (text === undefined) throw new Error('sealed headers do not open');
        stored.headers = JSON.parse(text) as string[];
        delete stored.sealedHeaders;
      }
      state = stored;
    } catch {
      if (!this.unreadable.has(`${row.id} ${row.rev}`)) {
        this.unreadable.add(`${row.id} ${row.rev}`);
        this.options.logger?.error({ subscription: row.id }, 'subscription: stored state cannot be read; it is ignored');
      }
      return undefined;
    }
    state.rev = row.rev;
    const problem = unusableReason(state);
    if (problem) state.unusable = problem;
    return state;
  }

  /**
   * A Subscription as stored now. A passive process reads the store (the holder moves the delivery
   * state, any process the definition); the holder's own states are the latest.
   */
  private view(id: string): SubscriptionState | undefined {
    if (!this.active && !this.closed) {
      const row = this.store.row(id);
      const state = row && this.stateOfRow(row);
      if (state) this.states.set(id, state);
      else this.states.delete(id);
    }
    return this.states.get(id);
  }

  private viewAll(): SubscriptionState[] {
    if (!this.active && !this.closed) this.load();
    return [...this.states.values()];
  }

  /**
   * Takes up what other processes did to Subscriptions (created, updated or deleted through them):
   * a row at another revision than the state held replaces it and its delivery restarts, as in the
   * process that wrote it; a state whose row is gone stops. A row at the revision held is this
   * process's to keep (only the holder writes delivery state). Never throws on a bad row.
   */
  private refresh(): void {
    // a state taken up may be written at once (set to error, turned off); a write that finds its row
    // changed again asks for another look, taken after this one instead of inside it
    if (this.refreshing) {
      this.refreshAgain = true;
      return;
    }
    this.refreshing = true;
    try {
      do {
        this.refreshAgain = false;
        this.takeUpRows();
      } while (this.refreshAgain);
    } finally {
      this.refreshing = false;
    }
  }

  private takeUpRows(): void {
    this.definitionsSeen = this.store.definitions();
    const rows = this.store.rows();
    const stored = new Set(rows.map((r) => r.id));
    for (const id of [...this.states.keys()]) {
      if (!stored.has(id)) this.forget(id);
    }
    for (const row of rows) {
      if (this.states.get(row.id)?.rev === row.rev) continue;
      this.forget(row.id);
      const state = this.stateOfRow(row);
      if (!state) continue;
      this.states.set(state.id, state);
      this.options.logger?.info({ subscription: state.id, status: state.status }, 'subscription: written by another process; taken up');
      if (this.active) this.startResume(state);
    }
  }

  /** Stops delivering for a Subscription and drops its state (deleted, or replaced by a newer revision). */
  private forget(id: string): void {
    this.stopWorker(id);
    const timer = this.endTimers.get(id);
    if (timer) clearTimeout(timer);
    this.endTimers.delete(id);
    this.states.delete(id);
  }

  /** Renews or takes the lease; when held, looks for other processes' writes. Never throws. */
  private async tick(): Promise<void> {
    if (this.closed) return;
    try {
      const held = this.store.holdLease(this.owner, LEASE_TTL_MS);
      if (held && !this.active) await this.activate();
      else if (!held && this.active) this.deactivate();
      if (this.active && this.store.definitions() !== this.definitionsSeen) this.refresh();
      if (this.active) await this.pollCommitted();
    } catch (err) {
      this.options.logger?.warn({ err: (err as Error).message }, 'subscription: lease or poll failed; trying again');
    }
  }

  private async activate(): Promise<void> {
    this.active = true;
    this.load(); // what a process that delivered before wrote
    this.highWater = this.startingMark();
    for (const state of [...this.states.values()]) await this.resume(state);
    this.digestTimer = setInterval(() => void this.runDigests(false).catch((err: unknown) => {
      this.options.logger?.warn({ err: (err as Error).message }, 'subscription: digest run failed');
    }), Math.min(this.options.settings.digestMs, 60_000));
    this.digestTimer.unref();
    this.options.logger?.info({ subscriptions: this.states.size }, 'subscriptions: this process delivers notifications');
  }

  /**
   * Starts delivering for a stored Subscription as its status asks: an unusable one is set to
   * error, an expired one off, a requested one gets its handshake, an active one its heartbeat.
   */
  private async resume(state: SubscriptionState): Promise<void> {
    if (state.unusable) {
      if (state.status !== 'error' || state.lastError !== `Subscription cannot be used: ${state.unusable}`) {
        this.options.logger?.warn({ subscription: state.id, reason: state.unusable }, 'subscription: stored Subscription cannot be used; set to error');
        await this.setStatus(state, 'error', `Subscription cannot be used: ${state.unusable}`);
      }
      return;
    }
    if (state.status === 'off') return;
    if (this.expired(state)) return this.turnOff(state);
    this.armEnd(state);
    if (state.status === 'requested') this.startHandshake(state);
    else this.startHeartbeat(state);
  }

  private startResume(state: SubscriptionState): void {
    void this.resume(state).catch((err: unknown) => {
      this.options.logger?.error({ subscription: state.id, err: (err as Error).message }, 'subscription: could not resume');
    });
  }

  /**
   * Where the poll for written versions starts: where the previous holder (this server before a
   * crash or restart, or another process) had numbered up to, so versions written while no process
   * delivered, or in its last poll interval, are still notified — numbered, never silently skipped.
   * Versions that holder numbered already are found in the event log and not numbered again. The
   * first holder on a data directory starts at the newest commitment; a mark past it (a restored
   * commitment store) is brought back to it.
   */
  private startingMark(): number {
    const last = this.options.commitments?.lastSeq() ?? 0;
    const stored = this.store.commitmentsSeen();
    const mark = stored === undefined || stored > last ? last : stored;
    this.store.setCommitmentsSeen(mark);
    return mark;
  }

  /** The lease went to another process (this one was paused past its expiry): stop delivering. */
  private deactivate(): void {
    this.active = false;
    if (this.digestTimer) clearInterval(this.digestTimer);
    for (const id of [...this.workers.keys()]) this.stopWorker(id);
    for (const t of this.endTimers.values()) clearTimeout(t);
    this.endTimers.clear();
    this.options.logger?.warn('subscriptions: another process took over delivery');
  }

  /**
   * Notifies versions that other processes (the CLI) committed since the last look. The commitment
   * store lists every process's versions in write order; this process's own were reported already
   * (`seen`) and are skipped without a read.
   */
  private async pollCommitted(): Promise<void> {
    const commitments = this.options.commitments;
    if (!commitments || this.polling) return;
    const last = commitments.lastSeq();
    if (last <= this.highWater) return;
    const listening = [...this.states.values()].some((s) => this.deliverable(s) && !s.digest);
    if (!listening) {
      this.highWater = last;
      this.store.setCommitmentsSeen(last);
      return;
    }
    this.polling = true;
    try {
      while (this.highWater < last && !this.closed && this.active) {
        const rows = commitments.after(this.highWater, POLL_CHUNK);
        if (rows.length === 0) break;
        const found: WrittenVersion[] = [];
        for (const row of rows) {
          if ((row.type !== 'Observation' && row.type !== 'DiagnosticReport') || this.seen.has(`${row.type}/${row.id}/${row.version}`)) continue;
          try {
            found.push({ resource: await this.options.repository.vread(row.type, row.id, row.version), interaction: row.version === '1' ? 'create' : 'update' });
          } catch {
            // deleted, erased or failing integrity since: nothing to notify
          }
        }
        if (found.length) await this.onWrite(found);
        // numbered (and logged) before the mark moves past them
        this.highWater = rows[rows.length - 1]!.seq;
        if (this.active) this.store.setCommitmentsSeen(this.highWater);
      }
    } finally {
      this.polling = false;
    }
  }

  /**
   * On close: moves the stored mark over this process's own writes (numbered already) up to the
   * first version another process wrote, which the next holder is left to number. Otherwise a big
   * import made since the last poll would be looked at again by the next holder, and its versions
   * beyond the event log's last EVENT_LOG_KEEP numbered a second time.
   */
  private markOwnWrites(): void {
    const commitments = this.options.commitments;
    if (!commitments) return;
    const from = this.highWater;
    try {
      scan: for (let more = true; more;) {
        const rows = commitments.after(this.highWater, POLL_CHUNK);
        more = rows.length === POLL_CHUNK;
        for (const row of rows) {
          const foreign = (row.type === 'Observation' || row.type === 'DiagnosticReport') && !this.seen.has(`${row.type}/${row.id}/${row.version}`);
          if (foreign) break scan;
          this.highWater = row.seq;
        }
      }
      if (this.highWater > from) this.store.setCommitmentsSeen(this.highWater);
    } catch (err) {
      this.options.logger?.warn({ err: (err as Error).message }, 'subscription: could not record how far notifications were numbered');
    }
  }

  /** Remembers versions as reported; answers those not reported before. */
  private fresh(written: WrittenVersion[]): WrittenVersion[] {
    const now = Date.now();
    const out = written.filter((w) => {
      const key = keyOf(w.resource);
      if (this.seen.has(key)) return false;
      this.seen.set(key, now);
      return true;
    });
    for (const [key, at] of this.seen) {
      if (this.seen.size <= SEEN_KEEP && at > now - SEEN_MS) break;
      this.seen.delete(key);
    }
    return out;
  }

  // ---- FHIR writes ---------------------------------------------------------------------------

  writeHandler(): TypeWriteHandler {
    return {
      create: async (req) => {
        const sub = await this.parse(req);
        if (req.access.kind !== 'open') {
          const owner = ownerOf(req.access);
          if (this.viewAll().filter((s) => s.owner === owner).length >= MAX_SUBSCRIPTIONS_PER_REQUESTER) {
            throw unprocessable([issue('ERR_INVALID', `A requester may hold at most ${MAX_SUBSCRIPTIONS_PER_REQUESTER} Subscriptions; delete one it no longer needs first`, 'Subscription')]);
          }
        }
        // the header values stay in the subscription store, sealed; the repository's copy names them only
        const { resource } = await this.options.repository.create<Subscription>(withSealedHeaders({ ...sub, status: 'requested' }));
        const state = this.stateOf(resource, req.access, sub.channel.header ?? []);
        this.define(state);
        // a passive process leaves the handshake to the holder, which takes the row up at its next poll
        if (this.active) this.startResume(state);
        return { status: 201, headers: { Location: `${this.options.fhirBase}/Subscription/${resource.id}/_history/${resource.meta?.versionId}` }, body: resource };
      },
      update: async (req, id) => {
        const previous = this.owned(req.access, id);
        const sub = await this.parse(req);
        if (sub.id !== id) throw badRequest('The resource must carry the id of the URL', 'id');
        const status = sub.status === 'off' ? 'off' : 'requested';
        const headers = keptHeaders(sub.channel.header, previous.headers);
        const { resource } = await this.options.repository.update<Subscription>(withSealedHeaders({ ...sub, status }));
        const state = this.stateOf(resource, req.access, headers);
        this.stopWorker(id);
        this.define(state, previous);
        if (this.active) this.startResume(state);
        return { status: 200, body: resource };
      },
      delete: async (req, id) => {
        this.owned(req.access, id);
        this.forget(id);
        this.store.remove(id);
        await this.options.repository.delete('Subscription', id);
        return { status: 204 };
      },
    };
  }

  private owned(access: AccessContext, id: string): SubscriptionState {
    const state = this.view(id);
    if (!state || state.owner !== ownerOf(access)) throw notFound('Not found');
    return state;
  }

  private async parse(req: FhirRequest): Promise<Subscription> {
    const body = req.body as Subscription | undefined;
    if (!body || typeof body !== 'object' || body.resourceType !== 'Subscription') throw badRequest('The body must be a Subscription', 'resourceType');
    if (!Object.values(TOPICS).includes(body.criteria as never)) {
      throw badRequest(`criteria must be a topic this server offers: ${Object.values(TOPICS).join(', ')}`, 'Subscription.criteria');
    }
    if (filterPatient(body) && researchContextOf(req.access)) {
      // notifications carry pseudonyms: a study choosing one patient's would learn that patient's pseudonym
      throw forbidden('A research subscription covers the patients who granted the study; a patient filter would tie that patient to its pseudonym');
    }
    if (body.channel?.type !== 'rest-hook') throw badRequest('Only the rest-hook channel is supported', 'Subscription.channel.type');
    if (!body.channel.endpoint) throw badRequest('channel.endpoint is required', 'Subscription.channel.endpoint');
    channelHeaders(body.channel.header);
    endOf(body);
    await this.endpoints.check(body.channel.endpoint);
    if (body.channel.payload !== undefined && !['application/fhir+json', 'application/json'].includes(body.channel.payload)) {
      throw badRequest('channel.payload must be application/fhir+json', 'Subscription.channel.payload');
    }
    payloadContent(body);
    heartbeatOf(body, this.options.settings.heartbeatMinSeconds);
    if (digestOf(body, DIGEST_EXTENSION) && body.criteria !== TOPICS.readings) throw badRequest('A daily digest is offered for the CGM readings topic', 'Subscription.channel');
    return { ...body, meta: { ...body.meta, profile: [...new Set([...(body.meta?.profile ?? []), BACKPORT_PROFILE])] } };
  }

  /** The delivery state of a stored Subscription; `headers` as the client gave them (the stored copy has them sealed). */
  private stateOf(resource: Subscription, access: AccessContext, headers: string[]): SubscriptionState {
    const end = endOf(resource, Date.now(), false);
    return {
      id: resource.id!,
      rev: 0,
      owner: ownerOf(access),
      access: storedAccess(access as StoredAccess),
      topic: resource.criteria,
      ...(filterPatient(resource) ? { patient: filterPatient(resource) } : {}),
      payload: payloadContent(resource),
      endpoint: resource.channel.endpoint!,
      headers,
      heartbeatSeconds: heartbeatOf(resource, 0),
      status: resource.status === 'off' ? 'off' : 'requested',
      ...(end !== undefined ? { end: new Date(end).toISOString() } : {}),
      ...(digestOf(resource, DIGEST_EXTENSION) ? { digest: 'daily' as const, lastDigestAt: new Date().toISOString() } : {}),
      events: 0,
      withheld: 0,
      failedDeliveries: 0,
    };
  }

  /**
   * Stores a Subscription as written (created, or updated: then its event counter and withheld
   * count carry on from the stored row, the latest whichever process numbered them, else from
   * `previous`), at a new revision the holder takes up.
   */
  private define(state: SubscriptionState, previous?: SubscriptionState): void {
    state.rev = this.store.define(state.id, (current) => {
      if (previous) {
        const stored = current ? countersOf(current.json) : undefined;
        state.events = stored?.events ?? previous.events;
        state.withheld = stored?.withheld ?? previous.withheld;
      }
      return this.rowOf(state);
    });
    this.states.set(state.id, state);
  }

  /** A state as its store row holds it: the channel headers sealed (headerKey), bound to the Subscription's id. */
  private rowOf(state: SubscriptionState): string {
    const key = this.options.headerKey;
    if (!key || !state.headers.length) return JSON.stringify(state);
    const { headers, ...rest } = state;
    return JSON.stringify({ ...rest, headers: [], sealedHeaders: seal(key, Buffer.from(JSON.stringify(headers)), `subscription-headers/${state.id}`).toString('base64') });
  }

  /**
   * Stores the delivery state of a Subscription this process delivers for. Nothing is written for a
   * state no longer current here (replaced or deleted meanwhile), nor from a process without the
   * lease; a row another process redefined or deleted is not overwritten but taken up at once.
   */
  private save(state: SubscriptionState): void {
    if (!this.active || this.states.get(state.id) !== state) return;
    if (!this.store.save(state.id, state.rev, this.rowOf(state))) this.refresh();
  }

  private async setStatus(state: SubscriptionState, status: SubscriptionStatus, error?: string): Promise<void> {
    if (state.status === status && state.lastError === error) return;
    if (this.states.get(state.id) !== state) return; // deleted or replaced meanwhile
    state.status = status;
    if (error) state.lastError = error;
    else delete state.lastError;
    this.save(state);
    try {
      const current = await this.options.repository.read<Subscription>('Subscription', state.id);
      // sealed again: a copy an earlier release stored holds its header values in clear (upgrade round)
      await this.options.repository.update<Subscription>(withSealedHeaders({ ...current, status, ...(error ? { error } : {}) }));
    } catch (err) {
      this.options.logger?.warn({ subscription: state.id, err: (err as Error).message }, 'subscription: could not record its status');
    }
  }

  // ---- end -----------------------------------------------------------------------------------

  private expired(state: SubscriptionState, now = Date.now()): boolean {
    return state.end !== undefined && Date.parse(state.end) <= now;
  }

  /** Active, or failing and still retried: notifications are made for it. */
  private deliverable(state: SubscriptionState): boolean {
    return !state.unusable && (state.status === 'active' || state.status === 'error');
  }

  /** Turns the Subscription off when its `end` comes (re-armed when the end is beyond a timer's reach). */
  private armEnd(state: SubscriptionState): void {
    const old = this.endTimers.get(state.id);
    if (old) clearTimeout(old);
    this.endTimers.delete(state.id);
    if (state.end === undefined || state.status === 'off') return;
    const wait = Math.min(Math.max(0, Date.parse(state.end) - Date.now()), MAX_TIMER_MS);
    const timer = setTimeout(() => {
      this.endTimers.delete(state.id);
      if (this.closed || this.states.get(state.id) !== state) return;
      if (this.expired(state)) void this.turnOff(state);
      else this.armEnd(state);
    }, wait);
    timer.unref();
    this.endTimers.set(state.id, timer);
  }

  private async turnOff(state: SubscriptionState): Promise<void> {
    if (state.status === 'off' || this.states.get(state.id) !== state) return;
    this.stopWorker(state.id);
    const timer = this.endTimers.get(state.id);
    if (timer) clearTimeout(timer);
    this.endTimers.delete(state.id);
    this.options.logger?.info({ subscription: state.id, end: state.end }, 'subscription: end reached, off');
    await this.setStatus(state, 'off');
  }

  // ---- $status and $events ---------------------------------------------------------------------

  private statusOperation(): OperationHandler {
    return {
      name: 'status', levels: ['type', 'instance'], resourceTypes: ['Subscription'], methods: ['GET'],
      handle: async (req, target) => {
        const ids = target.id ? [target.id] : [req.query.id ?? []].flat().flatMap((v) => v.split(','));
        const owner = ownerOf(req.access);
        const states = target.id || ids.length ? ids.map((id) => this.view(id)).filter((s): s is SubscriptionState => !!s && s.owner === owner)
          : this.viewAll().filter((s) => s.owner === owner);
        if (target.id && states.length === 0) throw notFound('Not found');
        const bundle: Bundle = {
          resourceType: 'Bundle', type: 'searchset',
          entry: states.map((s) => ({ resource: statusParameters({ ...this.statusInput(s, 'query-status'), ...(s.lastError ? { error: s.lastError } : {}) }), search: { mode: 'match' as const } })),
        };
        return { status: 200, body: bundle };
      },
    };
  }

  /**
   * `$events` (Backport IG): the events numbered `eventsSinceNumber`..`eventsUntilNumber` that are
   * still logged (the last EVENT_LOG_KEEP), at most MAX_EVENTS_PER_BUNDLE, each decided again for
   * the caller as a read would be; an event withheld now, or whose version is gone, is left out.
   */
  private eventsOperation(): OperationHandler {
    return {
      name: 'events', levels: ['instance'], resourceTypes: ['Subscription'], methods: ['GET', 'POST'],
      handle: async (req, target) => {
        const state = this.owned(req.access, target.id!);
        const arg = (name: string): string | undefined => {
          const fromQuery = [req.query[name] ?? []].flat()[0];
          if (fromQuery !== undefined) return fromQuery;
          const body = req.body as Parameters | undefined;
          const p = body?.resourceType === 'Parameters' ? body.parameter?.find((x) => x.name === name) : undefined;
          return p?.valueString ?? p?.valueCode ?? (p?.valueInteger !== undefined ? String(p.valueInteger) : undefined);
        };
        const number = (name: string, fallback: number): number => {
          const raw = arg(name);
          if (raw === undefined) return fallback;
          if (!/^\d{1,15}$/.test(raw)) throw badRequest(`${name} must be an event number`, name);
          return Number(raw);
        };
        const since = number('eventsSinceNumber', 1);
        const until = Math.min(number('eventsUntilNumber', state.events), state.events);
        const content = arg('content') ?? state.payload;
        if (content !== 'empty' && content !== 'id-only' && content !== 'full-resource') throw badRequest('content must be empty, id-only or full-resource', 'content');
        const queued = await this.logged(state.id, since, until, MAX_EVENTS_PER_BUNDLE);
        const access = req.access as StoredAccess;
        const allowed = queued.length ? await this.allowedNow(access, queued.map((q) => q.version)) : [];
        if (allowed === undefined) throw unavailable('The events cannot be decided now; try again');
        const ok = new Set(allowed.map((w) => keyOf(w.resource)));
        const deid = this.options.deidentifiers.forAccess(access);
        const events: NotificationEvent[] = queued.filter((q) => ok.has(keyOf(q.version.resource))).map((q) => ({
          eventNumber: q.number, timestamp: q.timestamp, interaction: q.version.interaction, ...focusOf(q.version.resource, deid),
        }));
        return { status: 200, body: notificationBundle({ ...this.statusInput(state, 'query-event'), payload: content, events }) };
      },
    };
  }

  /**
   * Logged events numbered `since`..`until` with the versions they are about; one whose version is
   * gone (deleted, erased) stays a gap. A repository that cannot answer now (an upstream failing,
   * timing out or unavailable) throws: its events are not gone, and a gap would tell the
   * subscriber they are.
   */
  private async logged(id: string, since: number, until: number, limit: number): Promise<QueuedEvent[]> {
    const queued: QueuedEvent[] = [];
    for (const e of this.store.events(id, since, until, limit)) {
      try {
        queued.push({ number: e.number, timestamp: e.timestamp, version: { resource: await this.options.repository.vread(e.type, e.id, e.version), interaction: e.interaction } });
      } catch (err) {
        if (isPassingOutage(err)) throw err;
        // deleted or erased since: the number stays a gap
      }
    }
    return queued;
  }

  private statusInput(state: SubscriptionState, type: NotificationType) {
    return {
      subscriptionUrl: `${this.options.fhirBase}/Subscription/${state.id}`, subscriptionId: state.id, topic: state.topic,
      status: state.status, type, eventsSinceStart: state.events, payload: state.payload, fhirBase: this.options.fhirBase,
    };
  }

  // ---- events --------------------------------------------------------------------------------

  /** Numbers the written versions for every Subscription they match; resolves when they are numbered (never rejects). */
  private async onWrite(written: WrittenVersion[]): Promise<void> {
    if (this.closed || !this.active) return;
    const fresh = this.fresh(written);
    if (fresh.length === 0 || this.states.size === 0) return;
    const numbering: Promise<void>[] = [];
    for (const state of this.states.values()) {
      if (!this.deliverable(state) || state.digest) continue;
      if (this.expired(state)) {
        void this.turnOff(state);
        continue;
      }
      const matching = fresh.filter((w) => topicsOf(w.resource).includes(state.topic) && (!state.patient || patientIdsOf(w.resource).includes(state.patient)));
      if (matching.length === 0) continue;
      numbering.push(this.enqueue(state, matching, new Date().toISOString()));
    }
    await Promise.all(numbering);
  }

  /**
   * The events happen: those the requester may see now are numbered and logged (persisted), then
   * queued for delivery. One batch after another per Subscription, so numbers follow write order.
   */
  private enqueue(state: SubscriptionState, versions: WrittenVersion[], timestamp: string): Promise<void> {
    const worker = this.worker(state);
    worker.intakeBusy++;
    worker.intake = worker.intake.then(async () => {
      if (this.closed || this.states.get(state.id) !== state) return;
      const events = await this.number(state, worker, versions, timestamp);
      worker.pending.push(...events);
      if (worker.pending.length > MAX_PENDING) {
        const dropped = worker.pending.splice(0, worker.pending.length - MAX_PENDING);
        // their numbers are used: the subscriber sees the gap and can ask $events
        this.options.logger?.warn({ subscription: state.id, dropped: dropped.length }, 'subscription: queue full, oldest events not sent');
      }
      this.kick(state, worker);
    }).catch((err: unknown) => {
      this.options.logger?.error({ subscription: state.id, err: (err as Error).message }, 'subscription: events could not be numbered');
    }).finally(() => {
      worker.intakeBusy--;
    });
    return worker.intake;
  }

  /**
   * Numbers the versions the requester may see now (when undecidable, all of them: the send-time
   * check decides) and persists the counter with the event rows before anything is sent.
   */
  private async number(state: SubscriptionState, worker: Worker, versions: WrittenVersion[], timestamp: string, also: Partial<SubscriptionState> = {}): Promise<QueuedEvent[]> {
    const decided = (await this.allowedNow(worker.access, versions)) ?? versions;
    // numbers are given only by the holder, to the Subscription as stored now
    if (!this.active || this.states.get(state.id) !== state) return [];
    // a version an earlier holder numbered already (found again by the poll after a restart or a lease handover) is not an event again
    const numberedBefore = new Set(decided.filter((w) => this.store.isLogged(state.id, w.resource.resourceType, w.resource.id!, w.resource.meta!.versionId!)));
    const eligible = decided.filter((w) => !numberedBefore.has(w));
    if (numberedBefore.size) versions = versions.filter((w) => !numberedBefore.has(w));
    Object.assign(state, also);
    if (eligible.length < versions.length) {
      state.withheld += versions.length - eligible.length;
      this.options.logger?.info({ subscription: state.id, withheld: versions.length - eligible.length }, 'subscription: events withheld by consent');
    }
    const events = eligible.map((version, i) => ({ number: state.events + i + 1, timestamp, version }));
    state.events += events.length;
    const logged: LoggedEvent[] = events.map((e) => ({
      number: e.number, timestamp, type: e.version.resource.resourceType, id: e.version.resource.id!, version: e.version.resource.meta!.versionId!, interaction: e.version.interaction,
    }));
    if (this.store.recordEvents(state.id, state.rev, this.rowOf(state), logged)) return events;
    // redefined or deleted by another process meanwhile: these numbers were never stored
    this.refresh();
    return [];
  }

  private worker(state: SubscriptionState): Worker {
    let w = this.workers.get(state.id);
    if (!w) {
      w = { pending: [], busy: undefined, intake: Promise.resolve(), intakeBusy: 0, access: { ...state.access, scopes: [...state.access.scopes] } };
      this.workers.set(state.id, w);
    }
    return w;
  }

  private stopWorker(id: string): void {
    const w = this.workers.get(id);
    if (!w) return;
    if (w.heartbeat) clearInterval(w.heartbeat);
    w.pending.length = 0;
    this.workers.delete(id);
  }

  /** Still the Subscription to deliver for, from this process, now? */
  private current(state: SubscriptionState): boolean {
    return !this.closed && this.active && this.states.get(state.id) === state && state.status !== 'off' && !state.unusable;
  }

  private kick(state: SubscriptionState, worker: Worker): void {
    if (worker.busy) return;
    worker.busy = (async () => {
      while (worker.pending.length && this.current(state)) {
        const batch = worker.pending.splice(0, MAX_EVENTS_PER_BUNDLE);
        await this.deliverEvents(state, worker, batch);
      }
    })().catch((err: unknown) => {
      this.options.logger?.error({ subscription: state.id, err: (err as Error).message }, 'subscription: delivery loop failed');
    }).finally(() => {
      worker.busy = undefined;
      if (worker.pending.length && this.current(state)) this.kick(state, worker);
    });
  }

  /**
   * Sends one batch of numbered events: before every attempt the resources are decided again
   * (policy + guards, at send time), so a revocation between attempts stops the data too.
   */
  private async deliverEvents(state: SubscriptionState, worker: Worker, batch: QueuedEvent[]): Promise<boolean> {
    const attempts = this.options.settings.deliveryAttempts;
    for (let attempt = 1; attempt <= attempts; attempt++) {
      if (!this.current(state)) return false;
      if (this.expired(state)) {
        await this.turnOff(state);
        return false;
      }
      const allowed = await this.allowedNow(worker.access, batch.map((e) => e.version));
      if (allowed === undefined) {
        // could not decide (KV/chain outage): never send, try again later
        if (attempt < attempts) await sleep(this.backoff(attempt));
        continue;
      }
      const ok = new Set(allowed.map((w) => keyOf(w.resource)));
      const sendable = batch.filter((e) => ok.has(keyOf(e.version.resource)));
      const withheld = batch.length - sendable.length;
      if (withheld > 0) {
        state.withheld += withheld;
        this.options.logger?.info({ subscription: state.id, withheld }, 'subscription: events withheld by consent at send time');
      }
      if (sendable.length === 0) {
        this.save(state);
        return true;
      }
      const deid = this.options.deidentifiers.forAccess(worker.access);
      const events: NotificationEvent[] = sendable.map((e) => ({
        eventNumber: e.number, timestamp: e.timestamp, interaction: e.version.interaction, ...focusOf(e.version.resource, deid),
      }));
      // events-since-subscription-start counts the events up to this notification's last (Backport IG:
      // "inclusive of this notification"), not those numbered since, which later notifications carry:
      // told the total at send time, a subscriber behind a retry or a queue would take the events
      // still on their way for lost and ask $events for them
      const bundle = notificationBundle({
        ...this.statusInput(state, 'event-notification'), status: 'active', events, eventsSinceStart: Math.max(...sendable.map((e) => e.number)),
      });
      const result = await this.post(state, bundle);
      if (result.ok) {
        state.lastDeliveryAt = new Date().toISOString();
        this.save(state);
        if (state.status !== 'active') await this.setStatus(state, 'active');
        this.options.logger?.info({ subscription: state.id, events: events.length, attempt, status: result.status }, 'subscription: notification delivered');
        return true;
      }
      state.failedDeliveries++;
      this.save(state);
      this.options.logger?.warn({ subscription: state.id, attempt, attempts, status: result.status, reason: result.reason }, 'subscription: delivery failed');
      if (result.status === 410) {
        // the endpoint says it is gone for good: nothing more goes there (the client makes a new Subscription)
        if (this.current(state)) {
          this.stopWorker(state.id);
          await this.setStatus(state, 'off', 'The endpoint answered 410 Gone: no more deliveries');
        }
        return false;
      }
      // another refusal of the request itself (400, 401, 403, 404, 413…) would be refused again: no retry
      if (result.status !== undefined && result.status >= 400 && result.status < 500 && result.status !== 408 && result.status !== 429) {
        if (this.current(state)) await this.setStatus(state, 'error', `The endpoint refused the notification (HTTP ${result.status})`);
        return false;
      }
      if (attempt < attempts) await sleep(this.backoff(attempt));
    }
    if (this.current(state)) await this.setStatus(state, 'error', `Delivery failed after ${attempts} attempts`);
    return false;
  }

  /**
   * Sends the digests that are due (all of them with `force`): the readings stored since the last
   * digest, read through the requester's policy and guards, then decided again at send time.
   */
  async runDigests(force = true): Promise<void> {
    for (const state of [...this.states.values()]) {
      if (!state.digest || !this.deliverable(state) || this.closed || !this.active) continue;
      if (this.expired(state)) {
        await this.turnOff(state);
        continue;
      }
      const due = Date.parse(state.lastDigestAt ?? '1970-01-01T00:00:00Z') + this.options.settings.digestMs <= Date.now();
      if (force || due) await this.digestInTurn(state);
    }
  }

  /** Runs a Subscription's digests one after another, so events owed by a failed one are sent by one run only. */
  private digestInTurn(state: SubscriptionState): Promise<void> {
    const previous = this.digestRuns.get(state.id) ?? Promise.resolve();
    const run = previous.catch(() => undefined).then(() => this.runDigest(state));
    this.digestRuns.set(state.id, run);
    return run.finally(() => {
      if (this.digestRuns.get(state.id) === run) this.digestRuns.delete(state.id);
    });
  }

  /**
   * One digest: the events an earlier digest numbered but could not deliver (from the event log,
   * under their numbers and timestamps), then the readings stored since the last digest, numbered
   * now — with the end of the window, in one transaction, so a window is numbered once.
   */
  private async runDigest(state: SubscriptionState): Promise<void> {
    if (!this.current(state)) return;
    const worker = this.worker(state);
    const until = new Date().toISOString();
    const since = state.lastDigestAt ?? state.lastDeliveryAt ?? '1970-01-01T00:00:00Z';
    const sentThrough = state.digestSentThrough ?? state.events;
    let owed: QueuedEvent[] = [];
    try {
      owed = sentThrough < state.events ? await this.logged(state.id, sentThrough + 1, state.events, EVENT_LOG_KEEP) : [];
    } catch (err) {
      // the repository cannot answer now: the owed events stay owed, for the next digest
      this.options.logger?.warn({ subscription: state.id, err: (err as Error).message }, 'subscription: digest could not be read');
      return;
    }
    const query = { _lastUpdated: [`gt${since}`, `le${until}`], code: [...READING_CODES].join(',') };
    const versions: WrittenVersion[] = [];
    try {
      for await (const page of this.options.reader.pages(worker.access, 'Observation', query, state.patient ? [state.patient] : undefined)) {
        // The guards hand back copies (integrity tags); the stored versions go to the send-time check.
        for (const r of page.resources) {
          const stored = await this.options.repository.vread(r.resourceType, r.id!, r.meta!.versionId!);
          versions.push({ resource: stored, interaction: r.meta?.versionId === '1' ? 'create' : 'update' });
        }
      }
    } catch (err) {
      if (!isGlucoGuardError(err, 'ERR_FORBIDDEN')) {
        this.options.logger?.warn({ subscription: state.id, err: (err as Error).message }, 'subscription: digest could not be read');
        return;
      }
    }
    const events = versions.length ? await this.number(state, worker, versions, until, { lastDigestAt: until, digestSentThrough: sentThrough }) : [];
    if (this.states.get(state.id) !== state) return; // replaced or deleted meanwhile
    const through = state.events;
    const batch = [...owed, ...events];
    const ok = batch.length === 0 || await this.deliverEvents(state, worker, batch);
    if (this.states.get(state.id) !== state) return;
    state.lastDigestAt = until;
    state.digestSentThrough = ok ? through : sentThrough;
    this.save(state);
    if (ok) this.options.logger?.info({ subscription: state.id, events: batch.length, owed: owed.length }, 'subscription: daily digest done');
    else this.options.logger?.warn({ subscription: state.id, owed: through - sentThrough }, 'subscription: daily digest not delivered; its events go with the next one');
  }

  /** The versions that may leave now, or undefined when the decision cannot be made. */
  private async allowedNow(access: StoredAccess, batch: WrittenVersion[]): Promise<WrittenVersion[] | undefined> {
    try {
      // a requester an operator cut off gets nothing more, as its tokens do not (withheld, counted)
      if (this.options.requesterCutOff?.(access)) return [];
      for (const type of new Set(batch.map((w) => w.resource.resourceType))) await this.options.policy.authorize(access, 'search', type);
      const { allowed } = await this.options.fhir.guard(access, batch.map((w) => w.resource));
      const ok = new Set(allowed.map((r) => keyOf(r)));
      return batch.filter((w) => ok.has(keyOf(w.resource)));
    } catch (err) {
      if (isGlucoGuardError(err, 'ERR_FORBIDDEN')) return [];
      this.options.logger?.warn({ err: (err as Error).message }, 'subscription: no decision at send time');
      return undefined;
    }
  }

  private backoff(attempt: number): number {
    return this.options.settings.retryBaseMs * 2 ** (attempt - 1);
  }

  private startHandshake(state: SubscriptionState): void {
    void this.handshake(state).catch((err: unknown) => {
      this.options.logger?.error({ subscription: state.id, err: (err as Error).message }, 'subscription: handshake failed');
    });
  }

  private async handshake(state: SubscriptionState): Promise<void> {
    const attempts = this.options.settings.deliveryAttempts;
    for (let attempt = 1; attempt <= attempts; attempt++) {
      if (!this.current(state)) return;
      if (this.expired(state)) return this.turnOff(state);
      const result = await this.post(state, notificationBundle({ ...this.statusInput(state, 'handshake'), status: 'requested', payload: 'empty' }));
      if (result.ok) {
        await this.setStatus(state, 'active');
        this.startHeartbeat(state);
        this.options.logger?.info({ subscription: state.id }, 'subscription: handshake accepted, active');
        return;
      }
      this.options.logger?.warn({ subscription: state.id, attempt, status: result.status, reason: result.reason }, 'subscription: handshake failed');
      if (attempt < attempts) await sleep(this.backoff(attempt));
    }
    if (this.current(state)) await this.setStatus(state, 'error', `Handshake failed after ${attempts} attempts`);
  }

  private startHeartbeat(state: SubscriptionState): void {
    if (state.heartbeatSeconds <= 0 || !this.deliverable(state)) return;
    const worker = this.worker(state);
    if (worker.heartbeat) clearInterval(worker.heartbeat);
    worker.heartbeat = setInterval(() => {
      if (worker.busy || worker.pending.length || !this.current(state)) return;
      if (this.expired(state)) {
        void this.turnOff(state);
        return;
      }
      void this.post(state, notificationBundle({ ...this.statusInput(state, 'heartbeat'), payload: 'empty' })).then((r) => {
        if (!r.ok) this.options.logger?.warn({ subscription: state.id, status: r.status, reason: r.reason }, 'subscription: heartbeat failed');
      });
    }, state.heartbeatSeconds * 1000);
    worker.heartbeat.unref();
  }

  /**
   * POSTs a Bundle to the endpoint (SSRF-checked lookup on the address connected to). Never throws
   * and never rejects: a header the HTTP client refuses, a socket error or a timeout is a failed
   * attempt like a 5xx.
   */
  private async post(state: SubscriptionState, bundle: Bundle): Promise<{ ok: boolean; status?: number; reason?: string }> {
    let url: URL;
    try {
      url = await this.endpoints.check(state.endpoint);
    } catch {
      return { ok: false, reason: 'endpoint not allowed' };
    }
    let extra: [string, string][];
    try {
      extra = channelHeaders(state.headers);
    } catch {
      return { ok: false, reason: 'channel.header cannot be sent' };
    }
    const body = Buffer.from(JSON.stringify(bundle));
    // the proxy's own headers last: a subscriber's cannot replace them (channelHeaders refuses them anyway)
    const headers: Record<string, string> = { ...Object.fromEntries(extra), 'Content-Type': 'application/fhir+json', 'Content-Length': String(body.length) };
    const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
    return new Promise((resolve) => {
      let deadline: NodeJS.Timeout | undefined;
      const settle = (result: { ok: boolean; status?: number; reason?: string }) => {
        if (deadline) clearTimeout(deadline);
        resolve(result);
      };
      try {
        const req = send(url, { method: 'POST', headers, lookup: this.endpoints.lookup(url) as never, timeout: DELIVERY_TIMEOUT_MS }, (res) => {
          res.resume();
          res.on('end', () => settle({ ok: (res.statusCode ?? 0) >= 200 && (res.statusCode ?? 0) < 300, status: res.statusCode }));
          res.on('error', () => settle({ ok: false, reason: 'response error' }));
          res.on('aborted', () => settle({ ok: false, reason: 'response aborted' }));
        });
        // The socket timeout above only measures idleness: an endpoint that trickles a byte now and
        // then (or never ends its body) would hold this Subscription's delivery, its retries and a
        // graceful shutdown forever. The whole exchange gets the same bound.
        deadline = setTimeout(() => {
          settle({ ok: false, reason: 'timeout' });
          req.destroy(new Error('timeout'));
        }, DELIVERY_TIMEOUT_MS);
        deadline.unref();
        req.on('timeout', () => req.destroy(new Error('timeout')));
        req.on('error', (err: Error & { code?: string }) => settle({ ok: false, reason: err.code ?? 'request error' }));
        req.end(body);
      } catch (err) {
        // http.request throws synchronously on a header value it cannot send (ERR_INVALID_CHAR)
        settle({ ok: false, reason: (err as { code?: string }).code ?? 'request error' });
      }
    });
  }
}

/**
 * Why a stored Subscription cannot be used, or undefined: rows stored by an older version may break
 * rules added since (a header the HTTP client refuses crashed delivery before they were checked).
 */
function unusableReason(state: SubscriptionState): string | undefined {
  if (!Object.values(TOPICS).includes(state.topic as never)) return 'unknown topic';
  if (typeof state.endpoint !== 'string' || !URL.canParse(state.endpoint)) return 'channel.endpoint is not a URL';
  if (!Array.isArray(state.headers)) return 'channel.header is not a list';
  for (const [i, h] of state.headers.entries()) {
    const problem = headerProblem(h);
    if (problem) return `channel.header[${i}] ${problem}`;
  }
  if (!['empty', 'id-only', 'full-resource'].includes(state.payload)) return 'unknown payload content';
  if (typeof state.events !== 'number' || !state.access || !Array.isArray(state.access.scopes)) return 'delivery state is incomplete';
  return undefined;
}

/** The counters a stored row carries, when it can be read. */
function countersOf(json: string): { events: number; withheld: number } | undefined {
  try {
    const { events, withheld } = JSON.parse(json) as Partial<SubscriptionState>;
    return typeof events === 'number' && typeof withheld === 'number' ? { events, withheld } : undefined;
  } catch {
    return undefined;
  }
}

/** A notification's focus as it leaves: de-identified for a research requester, named then by no URL of this server (researchFullUrl). */
function focusOf(resource: Resource, deid: Deidentifier | undefined): Pick<NotificationEvent, 'resource' | 'fullUrl'> {
  if (!deid) return { resource };
  const pseudonymised = deid.apply(resource);
  return { resource: pseudonymised, fullUrl: researchFullUrl(pseudonymised.id!) };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref?.());
}
