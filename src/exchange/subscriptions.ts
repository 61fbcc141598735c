/**
 * Topic-based Subscriptions, FHIR R4 Subscriptions Backport IG
 * (https://hl7.org/fhir/uv/subscriptions-backport/), rest-hook channel.
 *
 * A client writes a backport Subscription: `criteria` = a topic canonical (new or changed CGM
 * readings, or CGM summaries), optional `backport-filter-criteria` `Observation?patient=Patient/ID`
 * (not under a research purpose: it would tie that patient to its pseudonym),
 * `channel.type` rest-hook, `channel.payload` application/fhir+json with `backport-payload-content`
 * id-only or full-resource (no payload: empty), optional `backport-heartbeat-period` and
 * `channel.header`. The endpoint passes the SSRF policy (endpoint.ts). A handshake Bundle is sent,
 * and the Subscription turns `active` when the endpoint accepts it.
 *
 * Every stored version (NotifyingRepository) that matches a topic and filter is queued for each
 * active Subscription. Right before each delivery attempt the queued resources go through the
 * requester's policy and every outbound guard, exactly as a read would — so once a patient
 * revokes, nothing more of theirs leaves — and are de-identified for research requesters. Delivery
 * is retried with exponential back-off and logged (ids and counts only); after the last attempt the
 * Subscription is `error` until a later delivery succeeds. `$status` answers the status Parameters.
 *
 * Daily digest (channel extension DIGEST_EXTENSION, valueCode `daily`; readings topic): instead
 * of a notification per write, once per GLUCOGUARD_SUBSCRIPTION_DIGEST_MS the readings stored
 * since the last digest are read through the policy and guards and sent as one Bundle — the daily
 * push to a study server that a research consent asks for.
 *
 * The Subscription resource lives in the repository (GET works for in-process/admin access; for a
 * consent-limited requester a Subscription has no patient link, so reads are withheld — use
 * `$status`); delivery state lives in `<dataDir>/exports/subscriptions.sqlite`.
 */
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import path from 'node:path';
import { mkdirSync } from 'node:fs';
import type { Bundle, Extension, Resource, Subscription } from '@medplum/fhirtypes';
import Database from 'better-sqlite3';
import { badRequest, forbidden, isGlucoGuardError, notFound } from '../errors.js';
import type { AccessContext } from '../fhir/access.js';
import { patientIdsOf } from '../fhir/compartment.js';
import type { AccessPolicy } from '../fhir/policy.js';
import type { FhirRouter, OperationHandler, TypeWriteHandler } from '../fhir/router.js';
import type { FhirRequest } from '../fhir/types.js';
import type { Logger } from '../log.js';
import { EndpointPolicy } from './endpoint.js';
import { ownerOf, storedAccess, type StoredAccess } from './jobs.js';
import { BACKPORT, notificationBundle, statusParameters, type NotificationEvent, type NotificationType, type PayloadContent } from './notifications.js';
import type { GuardedReader } from './reader.js';
import { researchContextOf, type StudyDeidentifiers } from './research.js';
import type { ExchangeSettings } from './settings.js';
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
const DELIVERY_TIMEOUT_MS = 10_000;

export type SubscriptionStatus = 'requested' | 'active' | 'error' | 'off';

/** Delivery state of one Subscription. */
export interface SubscriptionState {
  id: string;
  owner: string;
  access: StoredAccess;
  topic: string;
  patient?: string;
  payload: PayloadContent;
  endpoint: string;
  headers: string[];
  heartbeatSeconds: number;
  status: SubscriptionStatus;
  /** Events delivered since the Subscription started (event numbers). */
  events: number;
  /** Resources that matched but were withheld by the guards at send time. */
  withheld: number;
  failedDeliveries: number;
  lastError?: string;
  lastDeliveryAt?: string;
  /** Daily digest: matching data is gathered and sent once per period instead of per write. */
  digest?: 'daily';
  /** End of the window the last digest covered. */
  lastDigestAt?: string;
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
  logger?: Logger;
}

interface Worker {
  pending: WrittenVersion[];
  busy: Promise<void> | undefined;
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

export class SubscriptionService {
  private readonly db: Database.Database;
  private readonly states = new Map<string, SubscriptionState>();
  private readonly workers = new Map<string, Worker>();
  readonly endpoints: EndpointPolicy;
  private unsubscribe: (() => void) | undefined;
  private digestTimer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(private readonly options: SubscriptionServiceOptions) {
    mkdirSync(options.dir, { recursive: true });
    this.db = new Database(path.join(options.dir, 'subscriptions.sqlite'));
    this.db.pragma('journal_mode = WAL');
    this.db.exec('CREATE TABLE IF NOT EXISTS subscription_state (id TEXT PRIMARY KEY, json TEXT NOT NULL)');
    this.endpoints = new EndpointPolicy(options.settings.subscriptionAllow, options.settings.subscriptionAllowHttp);
  }

  /** Registers the Subscription write handler and `$status`. */
  attach(router: FhirRouter): void {
    router.registerWriteHandler('Subscription', this.writeHandler());
    router.registerOperation(this.statusOperation());
  }

  /** Loads Subscriptions, restarts heartbeats, retries pending handshakes, and starts listening to writes. */
  async start(): Promise<void> {
    for (const row of this.db.prepare('SELECT json FROM subscription_state').all() as { json: string }[]) {
      const state = JSON.parse(row.json) as SubscriptionState;
      this.states.set(state.id, state);
      if (state.status === 'requested') void this.handshake(state);
      else this.startHeartbeat(state);
    }
    this.unsubscribe = this.options.repository.onWrite((written) => this.onWrite(written));
    this.digestTimer = setInterval(() => void this.runDigests(false), Math.min(this.options.settings.digestMs, 60_000));
    this.digestTimer.unref();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.unsubscribe?.();
    if (this.digestTimer) clearInterval(this.digestTimer);
    for (const w of this.workers.values()) if (w.heartbeat) clearInterval(w.heartbeat);
    await this.idle();
    this.db.close();
  }

  /** Resolves when no notification is queued or in flight (tests, benchmarks). */
  async idle(): Promise<void> {
    for (;;) {
      const busy = [...this.workers.values()].map((w) => w.busy).filter((b): b is Promise<void> => !!b);
      if (busy.length === 0) return;
      await Promise.all(busy);
    }
  }

  list(): SubscriptionState[] {
    return [...this.states.values()];
  }

  get(id: string): SubscriptionState | undefined {
    return this.states.get(id);
  }

  // ---- FHIR writes ---------------------------------------------------------------------------

  writeHandler(): TypeWriteHandler {
    return {
      create: async (req) => {
        const sub = await this.parse(req);
        const { resource } = await this.options.repository.create<Subscription>({ ...sub, status: 'requested' });
        const state = this.stateOf(resource, req.access);
        this.save(state);
        void this.handshake(state);
        return { status: 201, headers: { Location: `${this.options.fhirBase}/Subscription/${resource.id}/_history/${resource.meta?.versionId}` }, body: resource };
      },
      update: async (req, id) => {
        this.owned(req.access, id);
        const sub = await this.parse(req);
        if (sub.id !== id) throw badRequest('The resource must carry the id of the URL', 'id');
        const previous = this.states.get(id)!;
        const status = sub.status === 'off' ? 'off' : 'requested';
        const { resource } = await this.options.repository.update<Subscription>({ ...sub, status });
        const state = { ...this.stateOf(resource, req.access), events: previous.events, withheld: previous.withheld };
        this.stopWorker(id);
        this.save(state);
        if (status === 'requested') void this.handshake(state);
        return { status: 200, body: resource };
      },
      delete: async (req, id) => {
        this.owned(req.access, id);
        this.stopWorker(id);
        this.states.delete(id);
        this.db.prepare('DELETE FROM subscription_state WHERE id = ?').run(id);
        await this.options.repository.delete('Subscription', id);
        return { status: 204 };
      },
    };
  }

  private owned(access: AccessContext, id: string): SubscriptionState {
    const state = this.states.get(id);
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
    await this.endpoints.check(body.channel.endpoint);
    if (body.channel.payload !== undefined && !['application/fhir+json', 'application/json'].includes(body.channel.payload)) {
      throw badRequest('channel.payload must be application/fhir+json', 'Subscription.channel.payload');
    }
    payloadContent(body);
    heartbeatOf(body);
    if (digestOf(body) && body.criteria !== TOPICS.readings) throw badRequest('A daily digest is offered for the CGM readings topic', 'Subscription.channel');
    for (const h of body.channel.header ?? []) {
      if (!/^[A-Za-z0-9-]{1,64}:\s?[^\r\n]{0,2048}$/.test(h)) throw badRequest('channel.header entries must be "Name: value"', 'Subscription.channel.header');
    }
    return { ...body, meta: { ...body.meta, profile: [...new Set([...(body.meta?.profile ?? []), BACKPORT_PROFILE])] } };
  }

  private stateOf(resource: Subscription, access: AccessContext): SubscriptionState {
    return {
      id: resource.id!,
      owner: ownerOf(access),
      access: storedAccess(access as StoredAccess),
      topic: resource.criteria,
      ...(filterPatient(resource) ? { patient: filterPatient(resource) } : {}),
      payload: payloadContent(resource),
      endpoint: resource.channel.endpoint!,
      headers: resource.channel.header ?? [],
      heartbeatSeconds: heartbeatOf(resource),
      status: resource.status === 'off' ? 'off' : 'requested',
      ...(digestOf(resource) ? { digest: 'daily' as const, lastDigestAt: new Date().toISOString() } : {}),
      events: 0,
      withheld: 0,
      failedDeliveries: 0,
    };
  }

  private save(state: SubscriptionState): void {
    this.states.set(state.id, state);
    this.db.prepare('INSERT INTO subscription_state (id, json) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET json = excluded.json')
      .run(state.id, JSON.stringify(state));
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
      await this.options.repository.update<Subscription>({ ...current, status, ...(error ? { error } : {}) });
    } catch (err) {
      this.options.logger?.warn({ subscription: state.id, err: (err as Error).message }, 'subscription: could not record its status');
    }
  }

  // ---- $status -------------------------------------------------------------------------------

  private statusOperation(): OperationHandler {
    return {
      name: 'status', levels: ['type', 'instance'], resourceTypes: ['Subscription'], methods: ['GET'],
      handle: async (req, target) => {
        const ids = target.id ? [target.id] : [req.query.id ?? []].flat().flatMap((v) => v.split(','));
        const owner = ownerOf(req.access);
        const states = target.id || ids.length ? ids.map((id) => this.states.get(id)).filter((s): s is SubscriptionState => !!s && s.owner === owner)
          : [...this.states.values()].filter((s) => s.owner === owner);
        if (target.id && states.length === 0) throw notFound('Not found');
        const bundle: Bundle = {
          resourceType: 'Bundle', type: 'searchset',
          entry: states.map((s) => ({ resource: statusParameters({ ...this.statusInput(s, 'query-status'), ...(s.lastError ? { error: s.lastError } : {}) }), search: { mode: 'match' as const } })),
        };
        return { status: 200, body: bundle };
      },
    };
  }

  private statusInput(state: SubscriptionState, type: NotificationType) {
    return {
      subscriptionUrl: `${this.options.fhirBase}/Subscription/${state.id}`, subscriptionId: state.id, topic: state.topic,
      status: state.status, type, eventsSinceStart: state.events, payload: state.payload, fhirBase: this.options.fhirBase,
    };
  }

  // ---- events --------------------------------------------------------------------------------

  private onWrite(written: WrittenVersion[]): void {
    if (this.closed || this.states.size === 0) return;
    for (const state of this.states.values()) {
      if ((state.status !== 'active' && state.status !== 'error') || state.digest) continue;
      const matching = written.filter((w) => topicsOf(w.resource).includes(state.topic) && (!state.patient || patientIdsOf(w.resource).includes(state.patient)));
      if (matching.length === 0) continue;
      const worker = this.worker(state);
      worker.pending.push(...matching);
      if (worker.pending.length > MAX_PENDING) {
        const dropped = worker.pending.splice(0, worker.pending.length - MAX_PENDING);
        this.options.logger?.warn({ subscription: state.id, dropped: dropped.length }, 'subscription: queue full, oldest events dropped');
      }
      this.kick(state, worker);
    }
  }

  private worker(state: SubscriptionState): Worker {
    let w = this.workers.get(state.id);
    if (!w) {
      w = { pending: [], busy: undefined, access: { ...state.access, scopes: [...state.access.scopes] } };
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

  private kick(state: SubscriptionState, worker: Worker): void {
    if (worker.busy) return;
    worker.busy = (async () => {
      while (worker.pending.length && !this.closed && this.states.get(state.id) === state) {
        const batch = worker.pending.splice(0, MAX_EVENTS_PER_BUNDLE);
        await this.deliverEvents(state, worker, batch);
      }
    })().catch((err: unknown) => {
      this.options.logger?.error({ subscription: state.id, err: (err as Error).message }, 'subscription: delivery loop failed');
    }).finally(() => {
      worker.busy = undefined;
      if (worker.pending.length && !this.closed && this.states.get(state.id) === state) this.kick(state, worker);
    });
  }

  /**
   * Sends one batch: before every attempt the resources are decided again (policy + guards, at
   * send time), so a revocation between attempts stops the data too.
   */
  private async deliverEvents(state: SubscriptionState, worker: Worker, batch: WrittenVersion[]): Promise<boolean> {
    const attempts = this.options.settings.deliveryAttempts;
    for (let attempt = 1; attempt <= attempts; attempt++) {
      if (this.closed || this.states.get(state.id) !== state) return false;
      const allowed = await this.allowedNow(worker.access, batch);
      if (allowed === undefined) {
        // could not decide (KV/chain outage): never send, try again later
        if (attempt < attempts) await sleep(this.backoff(attempt));
        continue;
      }
      const withheld = batch.length - allowed.length;
      if (withheld > 0) {
        state.withheld += withheld;
        this.options.logger?.info({ subscription: state.id, withheld }, 'subscription: events withheld by consent at send time');
      }
      if (allowed.length === 0) {
        this.save(state);
        return true;
      }
      const deid = this.options.deidentifiers.forAccess(worker.access);
      const now = new Date().toISOString();
      const events: NotificationEvent[] = allowed.map((w, i) => ({
        eventNumber: state.events + i + 1, timestamp: now, interaction: w.interaction, resource: deid ? deid.apply(w.resource) : w.resource,
      }));
      const bundle = notificationBundle({ ...this.statusInput(state, 'event-notification'), status: 'active', eventsSinceStart: state.events + events.length, events });
      const result = await this.post(state, bundle);
      if (result.ok) {
        state.events += events.length;
        state.lastDeliveryAt = new Date().toISOString();
        this.save(state);
        if (state.status !== 'active') await this.setStatus(state, 'active');
        this.options.logger?.info({ subscription: state.id, events: events.length, attempt, status: result.status }, 'subscription: notification delivered');
        return true;
      }
      state.failedDeliveries++;
      this.options.logger?.warn({ subscription: state.id, attempt, attempts, status: result.status, reason: result.reason }, 'subscription: delivery failed');
      if (attempt < attempts) await sleep(this.backoff(attempt));
    }
    await this.setStatus(state, 'error', `Delivery failed after ${attempts} attempts`);
    return false;
  }

  /**
   * Sends the digests that are due (all of them with `force`): the readings stored since the last
   * digest, read through the requester's policy and guards, then decided again at send time.
   */
  async runDigests(force = true): Promise<void> {
    for (const state of [...this.states.values()]) {
      if (!state.digest || (state.status !== 'active' && state.status !== 'error') || this.closed) continue;
      const due = Date.parse(state.lastDigestAt ?? '1970-01-01T00:00:00Z') + this.options.settings.digestMs <= Date.now();
      if (force || due) await this.runDigest(state);
    }
  }

  private async runDigest(state: SubscriptionState): Promise<void> {
    const worker = this.worker(state);
    const until = new Date().toISOString();
    const since = state.lastDigestAt ?? state.lastDeliveryAt ?? '1970-01-01T00:00:00Z';
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
    const ok = versions.length === 0 || await this.deliverEvents(state, worker, versions);
    if (ok && this.states.get(state.id) === state) {
      state.lastDigestAt = until;
      this.save(state);
      this.options.logger?.info({ subscription: state.id, events: versions.length }, 'subscription: daily digest done');
    }
  }

  /** The versions that may leave now, or undefined when the decision cannot be made. */
  private async allowedNow(access: StoredAccess, batch: WrittenVersion[]): Promise<WrittenVersion[] | undefined> {
    try {
      for (const type of new Set(batch.map((w) => w.resource.resourceType))) await this.options.policy.authorize(access, 'search', type);
      const { allowed } = await this.options.fhir.guard(access, batch.map((w) => w.resource));
      const ok = new Set(allowed.map((r) => `${r.resourceType}/${r.id}/${r.meta?.versionId}`));
      return batch.filter((w) => ok.has(`${w.resource.resourceType}/${w.resource.id}/${w.resource.meta?.versionId}`));
    } catch (err) {
      if (isGlucoGuardError(err, 'ERR_FORBIDDEN')) return [];
      this.options.logger?.warn({ err: (err as Error).message }, 'subscription: no decision at send time');
      return undefined;
    }
  }

  private backoff(attempt: number): number {
    return this.options.settings.retryBaseMs * 2 ** (attempt - 1);
  }

  private async handshake(state: SubscriptionState): Promise<void> {
    const attempts = this.options.settings.deliveryAttempts;
    for (let attempt = 1; attempt <= attempts; attempt++) {
      if (this.closed || this.states.get(state.id) !== state) return;
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
    await this.setStatus(state, 'error', `Handshake failed after ${attempts} attempts`);
  }

  private startHeartbeat(state: SubscriptionState): void {
    if (state.heartbeatSeconds <= 0 || (state.status !== 'active' && state.status !== 'error')) return;
    const worker = this.worker(state);
    if (worker.heartbeat) clearInterval(worker.heartbeat);
    worker.heartbeat = setInterval(() => {
      if (worker.busy || worker.pending.length || this.closed) return;
      void this.post(state, notificationBundle({ ...this.statusInput(state, 'heartbeat'), payload: 'empty' })).then((r) => {
        if (!r.ok) this.options.logger?.warn({ subscription: state.id, status: r.status, reason: r.reason }, 'subscription: heartbeat failed');
      });
    }, state.heartbeatSeconds * 1000);
    worker.heartbeat.unref();
  }

  /** POSTs a Bundle to the endpoint (SSRF-checked lookup); never throws. */
  private async post(state: SubscriptionState, bundle: Bundle): Promise<{ ok: boolean; status?: number; reason?: string }> {
    let url: URL;
    try {
      url = await this.endpoints.check(state.endpoint);
    } catch {
      return { ok: false, reason: 'endpoint not allowed' };
    }
    const body = Buffer.from(JSON.stringify(bundle));
    const headers: Record<string, string> = { 'Content-Type': 'application/fhir+json', 'Content-Length': String(body.length) };
    for (const h of state.headers) {
      const i = h.indexOf(':');
      headers[h.slice(0, i).trim()] = h.slice(i + 1).trim();
    }
    const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
    return new Promise((resolve) => {
      const req = send(url, { method: 'POST', headers, lookup: this.endpoints.lookup() as never, timeout: DELIVERY_TIMEOUT_MS }, (res) => {
        res.resume();
        res.on('end', () => resolve({ ok: (res.statusCode ?? 0) >= 200 && (res.statusCode ?? 0) < 300, status: res.statusCode }));
        res.on('error', () => resolve({ ok: false, reason: 'response error' }));
      });
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', (err: Error & { code?: string }) => resolve({ ok: false, reason: err.code ?? err.message }));
      req.end(body);
    });
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref?.());
}

function extensionValue(extensions: Extension[] | undefined, name: string): Extension | undefined {
  return extensions?.find((e) => e.url === `${BACKPORT}${name}`);
}

/** The patient of `backport-filter-criteria` (`Observation?patient=Patient/ID`), if any. */
function filterPatient(sub: Subscription): string | undefined {
  const criteria = (sub as Subscription & { _criteria?: { extension?: Extension[] } })._criteria;
  const filters = (criteria?.extension ?? []).filter((e) => e.url === `${BACKPORT}backport-filter-criteria`);
  if (filters.length > 1) throw badRequest('Only one filter criteria is supported', 'Subscription.criteria');
  const raw = filters[0]?.valueString;
  if (raw === undefined) return undefined;
  const query = raw.replace(/^(Observation|DiagnosticReport)\?/, '');
  const params = new URLSearchParams(query);
  const keys = [...params.keys()];
  const value = params.get('patient');
  const id = value ? /^(?:Patient\/)?([A-Za-z0-9\-.]{1,64})$/.exec(value)?.[1] : undefined;
  if (keys.length !== 1 || !id) throw badRequest('Filter criteria must be patient=Patient/ID', 'Subscription.criteria');
  return id;
}

function payloadContent(sub: Subscription): PayloadContent {
  if (sub.channel?.payload === undefined) return 'empty';
  const payloadExt = (sub.channel as { _payload?: { extension?: Extension[] } })._payload?.extension;
  const code = extensionValue(payloadExt, 'backport-payload-content')?.valueCode ?? 'id-only';
  if (code !== 'empty' && code !== 'id-only' && code !== 'full-resource') throw badRequest('backport-payload-content must be empty, id-only or full-resource', 'Subscription.channel.payload');
  return code;
}

function digestOf(sub: Subscription): boolean {
  const ext = sub.channel?.extension?.find((e) => e.url === DIGEST_EXTENSION);
  if (!ext) return false;
  if (ext.valueCode !== 'daily') throw badRequest('The digest extension takes the code daily', 'Subscription.channel');
  return true;
}

function heartbeatOf(sub: Subscription): number {
  const v = extensionValue(sub.channel?.extension, 'backport-heartbeat-period')?.valueUnsignedInt;
  if (v === undefined) return 0;
  if (!Number.isInteger(v) || v < 1 || v > 86_400 * 7) throw badRequest('backport-heartbeat-period must be 1 s to 7 days', 'Subscription.channel');
  return v;
}
