/**
 * Page tokens: the proxy pages every search and history itself. A `next`/`previous` link carries an
 * opaque `_pageToken` holding the original query, the offset and, for a search's `next` link, the
 * repository's position of the last match the page examined (keyset paging, SearchOptions.after),
 * MAC'd together with the requester, so a token issued to one requester is useless to another and
 * cannot be edited. Tokens issued before positions existed (query and offset) still open.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { badRequest } from '../errors.js';
import type { AccessContext } from './access.js';

export interface PageState {
  /** The query of the first page (without `_pageToken`), as ordered pairs. */
  query: [string, string][];
  /** Repository offset; with `after`, where an adapter that cannot resume from it goes on. */
  offset: number;
  /** The repository's position to resume after (SearchResult.positionOf), when it gave one. */
  after?: string;
}

/**
 * Where a walk of a search's pages stands in the repository's matches: the offset counted from the
 * first page, and the position of the last match examined, when the repository gives positions.
 */
export interface PagePosition {
  offset: number;
  after?: string;
}

export class PageTokens {
  constructor(private readonly key: Buffer) {}

  issue(access: AccessContext, state: PageState): string {
    const fields = state.after === undefined ? { q: state.query, o: state.offset } : { q: state.query, o: state.offset, a: state.after };
    const payload = Buffer.from(JSON.stringify(fields)).toString('base64url');
    return `${payload}.${this.mac(access, payload)}`;
  }

  /** Throws 400 for a token that was tampered with or issued to someone else. */
  open(access: AccessContext, token: string): PageState {
    const [payload, mac] = token.split('.');
    if (!payload || !mac) throw badRequest('Invalid _pageToken', '_pageToken');
    const expected = Buffer.from(this.mac(access, payload));
    const given = Buffer.from(mac);
    if (expected.length !== given.length || !timingSafeEqual(expected, given)) throw badRequest('Invalid _pageToken', '_pageToken');
    const parsed = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as { q: [string, string][]; o: number; a?: string };
    return typeof parsed.a === 'string' ? { query: parsed.q, offset: parsed.o, after: parsed.a } : { query: parsed.q, offset: parsed.o };
  }

  private mac(access: AccessContext, payload: string): string {
    const who = `${access.kind}|${access.subject ?? ''}|${access.clientId ?? ''}|${access.patient ?? ''}`;
    return createHmac('sha256', this.key).update(who).update('\n').update(payload).digest('base64url');
  }
}

/** Flattens a query object into ordered pairs (arrays become repeated parameters). */
export function queryPairs(query: Record<string, string | string[]>): [string, string][] {
  const pairs: [string, string][] = [];
  for (const [k, v] of Object.entries(query)) {
    for (const one of Array.isArray(v) ? v : [v]) pairs.push([k, one]);
  }
  return pairs;
}

/** A query string (`a=1&a=2&b=3`, no leading `?`) as a query object; repeated names become lists, in order. */
export function queryOfText(text: string): Record<string, string | string[]> {
  return pairsToQuery([...new URLSearchParams(text)]);
}

/** Turns pairs back into the query object shape @medplum/core's parseSearchRequest takes. */
export function pairsToQuery(pairs: [string, string][]): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of pairs) {
    const prev = out[k];
    out[k] = prev === undefined ? v : Array.isArray(prev) ? [...prev, v] : [prev, v];
  }
  return out;
}

export function toQueryString(pairs: [string, string][]): string {
  return new URLSearchParams(pairs).toString();
}
