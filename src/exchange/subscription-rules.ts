/**
 * What a backport Subscription may ask for, checked when it is written (subscriptions.ts) and again
 * when a stored one is loaded at start-up (a row stored by an older version may break a rule added
 * since): filter criteria, payload content, digest, heartbeat period, `end`, and `channel.header`.
 */
import type { Extension, Subscription } from '@medplum/fhirtypes';
import { badRequest, issue, unprocessable, type GlucoGuardError } from '../errors.js';
import { BACKPORT, type PayloadContent } from './notifications.js';

/** Extra headers a Subscription may have sent with each notification. */
export const MAX_HEADERS = 10;
const MAX_HEADER_NAME = 64;
const MAX_HEADER_VALUE = 1024;
/** RFC 9110 §5.6.2 token. */
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
/** RFC 9110 §5.5 field value, ASCII only: visible characters, SP and HTAB inside. */
const FIELD_VALUE = /^(?:[\x21-\x7e](?:[\x20\x09\x21-\x7e]*[\x21-\x7e])?)?$/;
/**
 * Headers the proxy sets itself, that frame the message or the connection, or that address a proxy:
 * a subscriber's value would desynchronise the request (Content-Length), redirect it (Host) or
 * misdescribe the body.
 */
const RESERVED = new Set([
  'content-length', 'transfer-encoding', 'host', 'connection', 'keep-alive', 'upgrade', 'te', 'trailer', 'expect',
  'content-type', 'content-encoding', 'content-range', 'http2-settings',
]);

const unprocessableAt = (details: string, expression: string): GlucoGuardError => unprocessable([issue('ERR_INVALID', details, expression)]);

/**
 * Why a `channel.header` entry cannot be sent, or undefined when it can: `Name: value` with a token
 * name and a visible-ASCII value, not a header the proxy controls.
 */
export function headerProblem(header: unknown): string | undefined {
  if (typeof header !== 'string') return 'must be a string "Name: value"';
  const colon = header.indexOf(':');
  if (colon <= 0) return 'must be "Name: value"';
  const name = header.slice(0, colon);
  const value = header.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, '');
  if (!TOKEN.test(name) || name.length > MAX_HEADER_NAME) return `must have a header name of at most ${MAX_HEADER_NAME} token characters (RFC 9110)`;
  const lower = name.toLowerCase();
  if (RESERVED.has(lower) || lower.startsWith('proxy-')) return `may not set ${name}: the proxy sets it or it frames the request`;
  if (value.length > MAX_HEADER_VALUE || !FIELD_VALUE.test(value)) return `must have a value of at most ${MAX_HEADER_VALUE} visible ASCII characters, spaces or tabs`;
  return undefined;
}

/** The headers as name/value pairs; throws 422 naming the first entry that cannot be sent. */
export function channelHeaders(headers: unknown[] | undefined): [string, string][] {
  const list = headers ?? [];
  if (list.length > MAX_HEADERS) throw unprocessableAt(`At most ${MAX_HEADERS} channel.header entries are sent`, 'Subscription.channel.header');
  const seen = new Set<string>();
  return list.map((h, i) => {
    const problem = headerProblem(h);
    if (problem) throw unprocessableAt(`channel.header[${i}] ${problem}`, `Subscription.channel.header[${i}]`);
    const text = h as string;
    const colon = text.indexOf(':');
    const name = text.slice(0, colon);
    if (seen.has(name.toLowerCase())) throw unprocessableAt(`channel.header[${i}] repeats the header ${name}`, `Subscription.channel.header[${i}]`);
    seen.add(name.toLowerCase());
    return [name, text.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, '')] as [string, string];
  });
}

/**
 * What a `channel.header` value reads as in the stored Subscription resource. The values (a
 * receiver's bearer token, an API key) are kept sealed in the subscription store only: the
 * repository's copy goes wherever the repository is — on an upstream, in clear text into the EHR's
 * database, readable by anyone who may read Subscriptions there — so it names the headers only.
 */
export const SEALED_HEADER_VALUE = '[sealed]';

/** A copy of a Subscription to store, its `channel.header` values replaced by SEALED_HEADER_VALUE. */
export function withSealedHeaders(sub: Subscription): Subscription {
  if (!sub.channel?.header?.length) return sub;
  return { ...sub, channel: { ...sub.channel, header: channelHeaders(sub.channel.header).map(([name]) => `${name}: ${SEALED_HEADER_VALUE}`) } };
}

/**
 * The headers of an update: one sent back as it reads (`Name: [sealed]`) keeps the value it had;
 * one that had none is a 422 (the client gives its value).
 */
export function keptHeaders(headers: string[] | undefined, previous: readonly string[]): string[] {
  const before = new Map(channelHeaders([...previous]).map(([name, value]) => [name.toLowerCase(), value]));
  return channelHeaders(headers).map(([name, value], i) => {
    if (value !== SEALED_HEADER_VALUE) return `${name}: ${value}`;
    const kept = before.get(name.toLowerCase());
    if (kept === undefined) throw unprocessableAt(`channel.header[${i}] ${name} has no value to keep: give it`, `Subscription.channel.header[${i}]`);
    return `${name}: ${kept}`;
  });
}

/**
 * `Subscription.end` as epoch ms (undefined: none). R4: "the time for the server to turn the
 * subscription off"; one already past is refused (422) unless the Subscription is written `off`.
 */
export function endOf(sub: Subscription, now = Date.now(), checkPast = true): number | undefined {
  if (sub.end === undefined) return undefined;
  const end = Date.parse(sub.end);
  if (Number.isNaN(end)) throw unprocessableAt('end must be an instant', 'Subscription.end');
  if (checkPast && end <= now && sub.status !== 'off') throw unprocessableAt('end is already past: the subscription would be off at once', 'Subscription.end');
  return end;
}

function extensionValue(extensions: Extension[] | undefined, name: string): Extension | undefined {
  return extensions?.find((e) => e.url === `${BACKPORT}${name}`);
}

/** The patient of `backport-filter-criteria` (`Observation?patient=Patient/ID`), if any. */
export function filterPatient(sub: Subscription): string | undefined {
  const criteria = (sub as Subscription & { _criteria?: { extension?: Extension[] } })._criteria;
  const filters = (criteria?.extension ?? []).filter((e) => e.url === `${BACKPORT}backport-filter-criteria`);
  if (filters.length > 1) throw badRequest('Only one filter criteria is supported', 'Subscription.criteria');
  const raw = filters[0]?.valueString;
  if (raw === undefined) return undefined;
  // the readings topic notifies Observations alone: a DiagnosticReport filter on it would select nothing it says
  if (raw.startsWith('DiagnosticReport?') && sub.criteria?.endsWith('/SubscriptionTopic/cgm-readings')) {
    throw badRequest('The CGM readings topic notifies Observations: filter criteria must be Observation?patient=Patient/ID', 'Subscription.criteria');
  }
  const query = raw.replace(/^(Observation|DiagnosticReport)\?/, '');
  const params = new URLSearchParams(query);
  const keys = [...params.keys()];
  const value = params.get('patient');
  const id = value ? /^(?:Patient\/)?([A-Za-z0-9\-.]{1,64})$/.exec(value)?.[1] : undefined;
  if (keys.length !== 1 || !id) throw badRequest('Filter criteria must be patient=Patient/ID', 'Subscription.criteria');
  return id;
}

export function payloadContent(sub: Subscription): PayloadContent {
  if (sub.channel?.payload === undefined) return 'empty';
  const payloadExt = (sub.channel as { _payload?: { extension?: Extension[] } })._payload?.extension;
  const code = extensionValue(payloadExt, 'backport-payload-content')?.valueCode ?? 'id-only';
  if (code !== 'empty' && code !== 'id-only' && code !== 'full-resource') throw badRequest('backport-payload-content must be empty, id-only or full-resource', 'Subscription.channel.payload');
  return code;
}

export function digestOf(sub: Subscription, extensionUrl: string): boolean {
  const ext = sub.channel?.extension?.find((e) => e.url === extensionUrl);
  if (!ext) return false;
  if (ext.valueCode !== 'daily') throw badRequest('The digest extension takes the code daily', 'Subscription.channel');
  return true;
}

/** `backport-heartbeat-period` in seconds (0: none); below `minSeconds` is refused (422), so is more than 7 days. */
export function heartbeatOf(sub: Subscription, minSeconds: number): number {
  const v = extensionValue(sub.channel?.extension, 'backport-heartbeat-period')?.valueUnsignedInt;
  if (v === undefined) return 0;
  if (!Number.isInteger(v) || v < minSeconds || v > 86_400 * 7) {
    throw unprocessableAt(`backport-heartbeat-period must be ${minSeconds} s to 7 days`, 'Subscription.channel.extension');
  }
  return v;
}
