/**
 * The decision point, stateful part: a requester's permissions (registered identities → grants on
 * chain → the Consent holding each grant's scope) worked out once and cached per requester.
 *
 * Freshness, so a revocation denies at once on every replica:
 * - a grant or revocation increments the consent epoch in the KV store (Redis when replicas share
 *   one) and publishes `consent:changed`, so every replica drops its cache at once;
 * - a replica reads the epoch before deciding whenever it cannot rely on the pub/sub message: its
 *   subscription is down (`subscriptionLive()` false), or its last read is older than
 *   EPOCH_MAX_AGE_MS (a message lost in a reconnect is noticed within that);
 * - chain events (ConsentGranted/ConsentRevoked, GranteeRegistered/Removed) followed from the node
 *   drop caches too, covering grants relayed by anyone else;
 * - expiry is by the clock at each decision (`notAfter`), never by the cache.
 * Fail closed: if the KV store or the chain cannot be read when a decision needs them, ERR_UNAVAILABLE
 * (503) — never a permit.
 */
import { Operator } from '@medplum/core';
import type { Consent } from '@medplum/fhirtypes';
import type { AccessContext } from '../fhir/access.js';
import type { KeyValueStore } from '../kv/port.js';
import type { Logger } from '../log.js';
import type { ChainClient } from '../ledger/client.js';
import type { ConsentRegistryClient } from '../ledger/consent-registry.js';
import { EventFollower, type CursorStore, type EventCursor } from '../ledger/events.js';
import type { IdentityRegistryClient } from '../ledger/identity-registry.js';
import type { Repository } from '../repository/port.js';
import type { GrantIndex } from './grant-index.js';
import { internSet, type ActiveGrant, type Permissions } from './decision.js';
import type { PatientKeys } from './patient-keys.js';
import { requesterOf, type ConsentAccessContext } from './requester.js';
import { consentTerms, GRANT_ID_SYSTEM, purposeBytes, scopeHash } from './terms.js';

export const EPOCH_KEY = 'consent:epoch';
export const CHANGED_CHANNEL = 'consent:changed';
const EPOCH_TTL_MS = 10 * 365 * 24 * 3600 * 1000;
/** Longest time a replica with a live subscription decides without reading the epoch (ms, monotonic). */
export const EPOCH_MAX_AGE_MS = 200;
/** A grant the patient has revoked, denied on every replica before the chain has confirmed it. */
const WITHDRAWN_PREFIX = 'consent:withdrawn:';
const WITHDRAWN_TTL_MS = 24 * 3600 * 1000;

export interface ConsentDecisionsOptions {
  repository: Repository;
  kv: KeyValueStore;
  chain: ChainClient;
  registry: ConsentRegistryClient;
  identity: IdentityRegistryClient;
  keys: PatientKeys;
  /** Which grant ids name which grantee (followed from the chain, kept on disk). */
  grants: GrantIndex;
  logger?: Logger;
  /** Clock (epoch ms); tests freeze it. */
  now?: () => number;
  /** Longest time a cached permission set is used without any event (default 60 s). */
  ttlMs?: number;
  /** Chain event poll interval (default 500 ms). */
  pollMs?: number;
}

interface CacheEntry {
  perms: Permissions;
  expires: number;
}

export class ConsentDecisions {
  readonly now: () => number;
  private readonly cache = new Map<string, CacheEntry>();
  private readonly loading = new Map<string, Promise<Permissions>>();
  private epoch: string | undefined;
  /** performance.now() of the last epoch read (a monotonic clock: tests freeze `now`). */
  private epochReadAt = -Infinity;
  private generation = 0;
  private followers: EventFollower[] = [];
  private unsubscribe: (() => Promise<void>) | undefined;

  constructor(private readonly options: ConsentDecisionsOptions) {
    this.now = options.now ?? Date.now;
  }

  /** Subscribes to invalidations (KV pub/sub) and follows chain events from the current head. */
  async start(): Promise<void> {
    this.unsubscribe = await this.options.kv.subscribe(CHANGED_CHANNEL, () => this.dropAll());
    // A node that is down at start-up must not keep the proxy from starting (writes queue, reads
    // answer): follow from genesis then — replayed events only drop an empty cache.
    const head = await this.options.chain.head().catch((err: unknown) => {
      this.options.logger?.warn({ err: (err as Error).message }, 'consent: chain unreachable at start; following events from block 0');
      return -1;
    });
    const memoryCursor = (): CursorStore => {
      let c: EventCursor | undefined;
      return { load: () => c, save: (v) => { c = v; } };
    };
    const follow = (name: 'ConsentRegistry' | 'IdentityRegistry', events: string[]): EventFollower => new EventFollower({
      provider: this.options.chain.provider,
      contract: this.options.chain.contract(name),
      events,
      cursor: memoryCursor(),
      fromBlock: head + 1,
      pollMs: this.options.pollMs ?? 500,
      handler: () => this.dropAll(),
      onError: (err) => this.options.logger?.warn({ err: (err as Error).message }, 'consent: chain event poll failed'),
    });
    this.followers = [
      follow('ConsentRegistry', ['ConsentGranted', 'ConsentRevoked']),
      follow('IdentityRegistry', ['GranteeRegistered', 'GranteeRemoved']),
    ];
    for (const f of this.followers) f.start();
  }

  async stop(): Promise<void> {
    await Promise.all(this.followers.map((f) => f.stop()));
    await this.unsubscribe?.().catch(() => undefined);
  }

  /**
   * Called once per request before any decision: reads the shared consent epoch unless the
   * subscription is live and the last read is under EPOCH_MAX_AGE_MS old, and drops every cached
   * permission set when it moved. Throws ERR_UNAVAILABLE when the KV store cannot be read.
   */
  async sync(): Promise<void> {
    const subscribed = this.unsubscribe !== undefined && this.options.kv.subscriptionLive();
    if (subscribed && performance.now() - this.epochReadAt < EPOCH_MAX_AGE_MS) return;
    const readAt = performance.now();
    const epoch = (await this.options.kv.get(EPOCH_KEY)) ?? '0';
    if (epoch !== this.epoch) {
      this.dropAll();
      this.epoch = epoch;
    }
    this.epochReadAt = readAt;
  }

  /**
   * Denies a grant on every replica at once, before its on-chain revocation is confirmed (a block
   * period or more later): a revocation only takes access away, so it applies as soon as the signed
   * request is in hand. The mark outlives a revocation transaction that fails (the patient asked;
   * the grant stays denied for a day while they retry).
   */
  async withdraw(grantId: string): Promise<void> {
    await this.options.kv.set(WITHDRAWN_PREFIX + grantId, '1', WITHDRAWN_TTL_MS);
    await this.changed();
  }

  /** Tells every replica that grants changed: bumps the epoch, publishes, drops the local cache. */
  async changed(): Promise<void> {
    this.dropAll();
    await this.options.kv.increment(EPOCH_KEY, EPOCH_TTL_MS);
    await this.options.kv.publish(CHANGED_CHANNEL, String(this.now()));
  }

  dropAll(): void {
    this.generation++;
    this.epochReadAt = -Infinity;
    this.cache.clear();
    this.loading.clear();
  }

  /** The cached permissions of a requester, if any (benchmarks, tests). */
  cached(access: AccessContext): Permissions | undefined {
    const entry = this.cache.get(requesterOf(access).key);
    return entry && entry.expires > this.now() ? entry.perms : undefined;
  }

  /** The requester's permissions: cached, or worked out from the chain (503 when it cannot be read). */
  async permissions(access: ConsentAccessContext): Promise<Permissions> {
    const requester = requesterOf(access);
    if (requester.kind !== 'grantee') return { requester, addresses: [], byPatient: new Map() };
    const entry = this.cache.get(requester.key);
    if (entry && entry.expires > this.now()) {
      // The purpose is per request; grants are per requester.
      return entry.perms.requester.purpose === requester.purpose ? entry.perms : { ...entry.perms, requester };
    }
    let pending = this.loading.get(requester.key);
    if (!pending) {
      const generation = this.generation;
      pending = this.load(requester.refs).then((loaded) => {
        const perms: Permissions = { requester, ...loaded };
        if (generation === this.generation) this.cache.set(requester.key, { perms, expires: this.now() + (this.options.ttlMs ?? 60_000) });
        return perms;
      }).finally(() => this.loading.delete(requester.key));
      this.loading.set(requester.key, pending);
    }
    const perms = await pending;
    return perms.requester.purpose === requester.purpose ? perms : { ...perms, requester };
  }

  private async load(refs: string[]): Promise<Omit<Permissions, 'requester'>> {
    const addresses = [...new Set((await Promise.all(refs.map((r) => this.options.identity.granteesOf(r)))).flat())];
    const byPatient = new Map<string, ActiveGrant[]>();
    for (const address of addresses) {
      for (const grant of await this.grantsTo(address)) {
        const list = byPatient.get(grant.patientId) ?? [];
        list.push(grant);
        byPatient.set(grant.patientId, list);
      }
    }
    return { addresses, byPatient };
  }

  /** Grants to `address` that are on chain, not revoked, not over, and match their Consent. */
  private async grantsTo(address: string): Promise<ActiveGrant[]> {
    const out: ActiveGrant[] = [];
    for (const grantId of await this.options.grants.grantIdsTo(address)) {
      const stored = await this.options.registry.getGrant(grantId);
      // (stored.notAfter + 1): the Consent's exact end may lie within the chain's last second (grantTimes);
      // every decision checks the end again by the clock.
      if (!stored || stored.revoked || (stored.notAfter + 1) * 1000 <= this.now()) continue;
      if (await this.options.kv.get(WITHDRAWN_PREFIX + grantId)) continue;
      const consent = await this.consentOf(grantId);
      if (!consent) continue;
      let terms;
      try {
        terms = consentTerms(consent);
      } catch {
        continue;
      }
      // The chain is the authority on who, when and for what; the Consent must agree with it.
      if (stored.scopeHash !== scopeHash(terms) || stored.purpose !== purposeBytes(terms.purposes)
        || stored.patientId !== this.options.keys.pseudonym(terms.patientId)) {
        this.options.logger?.warn({ grantId }, 'consent: the Consent does not match its on-chain grant; ignored');
        continue;
      }
      out.push({
        grantId, consentId: consent.id!, patientId: terms.patientId,
        ...grantTimes(stored, terms),
        purposes: internSet(terms.purposes),
        ...(terms.classes.length ? { classes: internSet(terms.classes) } : {}),
        ...(terms.codes.length ? { codes: internSet(terms.codes) } : {}),
      });
    }
    return out;
  }

  private async consentOf(grantId: string): Promise<Consent | undefined> {
    const result = await this.options.repository.search({
      resourceType: 'Consent',
      filters: [{ code: 'identifier', operator: Operator.EQUALS, value: `${GRANT_ID_SYSTEM}|${grantId}` }],
      count: 2,
      offset: 0,
    });
    return result.resources[0] as Consent | undefined;
  }
}

type GrantTimes = Pick<ActiveGrant, 'notBefore' | 'notAfter' | 'dataFrom' | 'dataTo'>;

/**
 * A grant's bounds in epoch ms. The chain keeps whole seconds (floored when the grant was signed),
 * so a data period ending on a date ("last day included whole", 23:59:59.999) would end at
 * 23:59:59.000 and a reading in the day's last second would be withheld; a start of 00:00:00.500
 * would begin half a second early. The Consent holds the exact instants: they are used when each
 * one floors to the chain's second (so the Consent can move a bound by less than a second, never
 * more); otherwise the chain's seconds, as the authority on when.
 */
function grantTimes(stored: GrantTimes, terms: GrantTimes): GrantTimes {
  const agrees = (['notBefore', 'notAfter', 'dataFrom', 'dataTo'] as const).every((k) => Math.floor(terms[k] / 1000) === stored[k]);
  if (agrees) return { notBefore: terms.notBefore, notAfter: terms.notAfter, dataFrom: terms.dataFrom, dataTo: terms.dataTo };
  return { notBefore: stored.notBefore * 1000, notAfter: stored.notAfter * 1000, dataFrom: stored.dataFrom * 1000, dataTo: stored.dataTo * 1000 };
}
