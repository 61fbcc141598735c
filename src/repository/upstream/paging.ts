/**
 * Paging through an upstream's search and history results by the upstream's own `next` links
 * (https://hl7.org/fhir/R4/http.html#paging, search.html#paging): R4 has no offset parameter, and
 * EHRs such as Epic and Oracle Health ignore `_offset` and page with opaque links. The port, though,
 * asks for pages by offset (`search({ offset, count })`, as the FHIR router's page tokens carry
 * them, src/fhir/paging.ts).
 *
 * So the adapter remembers, per query, the upstream `next` link of every page it has fetched, under
 * the offset that page ends at: asked for offset `o`, it starts from the learned link nearest below
 * `o` (or the first page), skips what lies before `o` and follows `next` links until the page is
 * full. `hasMore` is the presence of a further item or `next` link, so no extra search is needed to
 * know it. The page fetched last is also kept for a short while: the FHIR router looks one page
 * ahead to decide whether to offer `next` (filledPage), and asks for that page again when the client
 * follows the link, so each proxied page costs one upstream request.
 *
 * A learned link that the upstream no longer honours (its search expired: 404, 410, 400) sends the
 * walk back to the first page, once. A page identical to one already seen in the same walk (a `next`
 * link that leads back) is ERR_UPSTREAM, never an endless or duplicated result. The state is bounded
 * (queries, links per query, cached items) and expires; a replica that has none (restarted, or a
 * page token served by another replica) walks from the first page.
 */
import { createHash } from 'node:crypto';
import type { Resource } from '@medplum/fhirtypes';
import { isGlucoGuardError, upstreamError } from '../../errors.js';
import type { UpstreamLogger } from './transport.js';

/** One upstream page: its items in order, the resources it included, its checked `next` link. */
export interface FetchedPage<T> {
  items: T[];
  included: Resource[];
  next?: string;
}

/** Fetches one upstream page: the first (a path and query under the base) or a learned link (absolute). */
export type PageFetcher<T> = (target: { path: string } | { url: string }) => Promise<FetchedPage<T>>;

export interface PagedResult<T> {
  items: T[];
  included: Resource[];
  hasMore: boolean;
}

export interface PagingLimits {
  /** How long a query's learned links are kept after its last use. */
  linkTtlMs: number;
  /** How long the page fetched last is kept for the router's next request. */
  pageTtlMs: number;
  /** Queries whose links are kept (least recently used dropped first). */
  maxQueries: number;
  /** Learned links kept per query. */
  maxLinksPerQuery: number;
  /** Items (matches, includes, history entries) of kept pages, over all queries. */
  maxCachedItems: number;
}

export const DEFAULT_PAGING_LIMITS: PagingLimits = {
  linkTtlMs: 10 * 60_000,
  pageTtlMs: 30_000,
  maxQueries: 1000,
  maxLinksPerQuery: 5000,
  maxCachedItems: 10_000,
};

/** Empty pages in a row that still carry a `next` link before the walk gives up. */
const MAX_EMPTY_PAGES = 3;

interface Link {
  url: string;
  /** Fingerprint of the page this link was the `next` of: the page it leads to must differ. */
  after: string;
}

interface KeptPage {
  start: number;
  page: FetchedPage<unknown>;
  fingerprint: string;
  size: number;
  until: number;
}

interface QueryState {
  /** The resource type the query reads ('' for a system-wide search or history). */
  type: string;
  /** The upstream link of the page that starts at each offset (offset 0 is the query itself). */
  links: Map<number, Link>;
  last?: KeptPage;
  until: number;
}

/** Thrown inside a walk when a learned link no longer works; the walk starts again from the first page. */
class DeadLink extends Error {}

export class UpstreamPaging {
  private readonly states = new Map<string, QueryState>();
  private cachedItems = 0;

  constructor(
    private readonly limits: PagingLimits = DEFAULT_PAGING_LIMITS,
    private readonly now: () => number = Date.now,
    private readonly logger?: UpstreamLogger,
  ) {}

  /**
   * Items `offset … offset + count` of the query `key` (whose first page is `first`), fetched by
   * `fetch`; `identity` names an item (type/id/version) to recognise a repeated page. With `count`
   * undefined, the items of one upstream page from `offset` on.
   */
  async page<T>(key: string, type: string, first: string, offset: number, count: number | undefined, fetch: PageFetcher<T>,
    identity: (item: T) => string, what: string): Promise<PagedResult<T>> {
    const state = this.state(key, type);
    try {
      return await this.walk(state, first, offset, count, fetch, identity, what, true);
    } catch (err) {
      if (!(err instanceof DeadLink)) throw err;
      this.logger?.info({ what }, 'upstream no longer honours a paging link it gave; reading from the first page again');
      this.drop(key);
      return this.walk(this.state(key, type), first, offset, count, fetch, identity, what, false);
    }
  }

  /**
   * Forgets kept pages (not links) that a write of `type` may change (all, for a transaction), so
   * that a page is read afresh after it. Writes of other types (the access log's AuditEvents) keep them.
   */
  forgetPages(type?: string): void {
    for (const state of this.states.values()) {
      if (type === undefined || state.type === '' || state.type === type) this.unkeep(state);
    }
  }

  private async walk<T>(state: QueryState, first: string, offset: number, count: number | undefined, fetch: PageFetcher<T>,
    identity: (item: T) => string, what: string, linksMayBeDead: boolean): Promise<PagedResult<T>> {
    const now = this.now();
    // Start at the learned link nearest at or below the offset, or at the first page.
    let pos = 0;
    let target: { path: string } | { url: string } = { path: first };
    const seen = new Set<string>();
    let after: string | undefined;
    if (offset > 0) {
      for (const [start, link] of state.links) {
        if (start <= offset && start > pos) {
          pos = start;
          target = { url: link.url };
          after = link.after;
        }
      }
    }
    if (after !== undefined) seen.add(after);
    // The page fetched last serves again when it lies between (the router's look-ahead, asked for
    // again); never the first page, which a client reads afresh after its writes.
    let kept = offset > 0 && state.last && state.last.until > now && state.last.start >= pos && state.last.start <= offset
      ? state.last : undefined;
    if (kept) pos = kept.start;
    const items: T[] = [];
    const included: Resource[] = [];
    let empty = 0;
    let fingerprint = '';
    for (;;) {
      let page: FetchedPage<T>;
      if (kept) {
        page = kept.page as FetchedPage<T>;
        fingerprint = kept.fingerprint;
        seen.add(fingerprint);
        kept = undefined;
      } else {
        const fromLink = 'url' in target;
        try {
          page = await fetch(target);
        } catch (err) {
          // an expired upstream search: its links now answer 404, 410 or 400
          const dead = isGlucoGuardError(err, 'ERR_NOT_FOUND') || isGlucoGuardError(err, 'ERR_GONE') || isGlucoGuardError(err, 'ERR_INVALID');
          if (fromLink && dead && linksMayBeDead) throw new DeadLink();
          // a link the upstream gave a moment ago: its failure is the upstream's, not "not found"
          if (fromLink && dead) throw upstreamError('Upstream FHIR server did not honour its own paging link');
          throw err;
        }
        fingerprint = createHash('sha256').update(page.items.map(identity).join('\n')).digest('base64url');
        if (page.items.length > 0) {
          if (seen.has(fingerprint)) {
            this.logger?.warn({ what, offset: pos }, 'upstream paging link led back to a page already read; paging stopped');
            throw upstreamError('Upstream FHIR server sent the same page of results again; run the search again');
          }
          seen.add(fingerprint);
        } else if (page.next !== undefined && ++empty > MAX_EMPTY_PAGES) {
          this.logger?.warn({ what, offset: pos }, 'upstream sent empty pages with a next link; paging stopped');
          throw upstreamError('Upstream FHIR server sent empty pages of results; run the search again');
        }
        if (pos > 0) this.keep(state, { start: pos, page, fingerprint, size: page.items.length + page.included.length, until: now + this.limits.pageTtlMs });
      }
      if (page.next !== undefined) this.learn(state, pos + page.items.length, { url: page.next, after: fingerprint });
      const skip = Math.max(0, offset - pos);
      const room = count === undefined ? page.items.length : count - items.length;
      const take = page.items.slice(skip, skip + room);
      items.push(...take);
      if (take.length > 0) included.push(...page.included);
      const moreHere = skip + take.length < page.items.length;
      if (page.next === undefined) return { items, included, hasMore: moreHere };
      if ((count === undefined && skip < page.items.length) || (count !== undefined && items.length >= count)) {
        return { items, included, hasMore: true };
      }
      pos += page.items.length;
      target = { url: page.next };
    }
  }

  private state(key: string, type: string): QueryState {
    const now = this.now();
    let state = this.states.get(key);
    if (state && state.until <= now) {
      this.drop(key);
      state = undefined;
    }
    if (state) this.states.delete(key); // re-inserted last: least recently used first
    state ??= { type, links: new Map(), until: 0 };
    state.until = now + this.limits.linkTtlMs;
    this.states.set(key, state);
    for (const [oldest] of this.states) {
      if (this.states.size <= this.limits.maxQueries) break;
      this.drop(oldest);
    }
    return state;
  }

  private learn(state: QueryState, start: number, link: Link): void {
    if (state.links.has(start) || state.links.size < this.limits.maxLinksPerQuery) state.links.set(start, link);
  }

  private keep(state: QueryState, page: KeptPage): void {
    this.unkeep(state);
    if (page.size > this.limits.maxCachedItems / 4) return;
    // make room: kept pages of the least recently used queries go first
    for (const other of this.states.values()) {
      if (this.cachedItems + page.size <= this.limits.maxCachedItems) break;
      this.unkeep(other);
    }
    state.last = page;
    this.cachedItems += page.size;
  }

  private unkeep(state: QueryState): void {
    if (!state.last) return;
    this.cachedItems -= state.last.size;
    state.last = undefined;
  }

  private drop(key: string): void {
    const state = this.states.get(key);
    if (!state) return;
    this.unkeep(state);
    this.states.delete(key);
  }
}
