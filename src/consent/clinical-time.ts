/**
 * The clinically relevant time of a resource: what a grant's data period is held against
 * (decision.ts), the same way on every path (read, vread, search, `_include`, history, batch,
 * `$everything`, export, subscriptions), since every resource that leaves is decided on it.
 *
 * The rule (fail closed):
 * - each type names the elements that carry the time its data is about (TIME_ELEMENTS):
 *   Observation, DiagnosticReport and MedicationAdministration `effective[x]`; ServiceRequest
 *   `occurrence[x]` and `authoredOn`; AuditEvent `recorded`;
 * - a value covers the whole span its precision implies, as the search index reads it
 *   (@medplum/core convertToSearchableDates): a date its day, month or year (UTC), a dateTime to
 *   the second that second; a Period covers its start to its end and needs both;
 * - the resource's time runs from the earliest start to the latest end of the elements it carries,
 *   and passes a data period only when it lies wholly inside it;
 * - `unknown` — denied to every grantee — when a time cannot be placed (a Timing, a Period open at
 *   one end, a value that does not parse), and when a resource of one of those types carries none
 *   of its elements: it cannot be placed in a period, and a search would never find it (the search
 *   narrowing bounds `date`/`effective-time`, which index `effective[x]`: policy.ts DATE_PARAM);
 * - `none` for a type with no such elements (Patient, Device, Consent, Practitioner…): timeless,
 *   it passes a grant of every type, and a restricted grant only when the grant names its type
 *   (decision.ts; Consent always needs naming).
 * `issued` (Observation, DiagnosticReport) is not consulted: it is when a version was released,
 * not when what it says happened, and the date search parameters do not index it — reading by id
 * what no date-bounded search finds is the inconsistency this rule removes.
 *
 * Search narrowing stays a superset of this rule: a span wholly inside [from, to] matches both
 * `ge from` and `le to` under the FHIR range semantics, so the guards, not the narrowing, decide.
 */
import type { Resource } from '@medplum/fhirtypes';

/** Epoch ms, both ends inclusive. */
export interface TimeSpan {
  from: number;
  to: number;
}

export type ClinicalTime = TimeSpan | 'none' | 'unknown';

/** The elements (choice types by their stem) that carry a type's clinically relevant time. */
const TIME_ELEMENTS: Record<string, readonly string[]> = {
  Observation: ['effective'],
  DiagnosticReport: ['effective'],
  MedicationAdministration: ['effective'],
  ServiceRequest: ['occurrence', 'authoredOn'],
  AuditEvent: ['recorded'],
};
/** Types that carry no clinically relevant time: timeless. */
const TIMELESS = new Set(['Patient', 'Device', 'Consent', 'Practitioner', 'Organization', 'Group', 'Subscription', 'RelatedPerson']);
/**
 * Any other type (a contained resource of a type the facade does not serve): whichever of the
 * common time elements it carries is judged; with none it is timeless.
 */
const OTHER_ELEMENTS = ['effective', 'occurrence', 'performed', 'authoredOn', 'recorded'];
/** The suffixes of a choice element's names (`effectiveDateTime`…); a plain element has none. */
const CHOICE_SUFFIXES = ['DateTime', 'Instant', 'Date', 'Period', 'Timing', 'Age', 'Range', 'String'];

/** How a value of an element is read: a date/dateTime/instant, a Period, or a kind that cannot be placed. */
type ValueKind = 'moment' | 'period' | 'unplaceable';
/** An element name and how its value is read. */
type TimeElement = readonly [name: string, kind: ValueKind];

/** The element names behind a list of stems (worked out once: this runs for every resource that leaves). */
function elementsOf(stems: readonly string[]): TimeElement[] {
  return stems.flatMap((stem): TimeElement[] => (stem === 'authoredOn' || stem === 'recorded'
    ? [[stem, 'moment']]
    : CHOICE_SUFFIXES.map((suffix): TimeElement => [stem + suffix,
      suffix === 'Period' ? 'period' : suffix === 'DateTime' || suffix === 'Instant' || suffix === 'Date' ? 'moment' : 'unplaceable'])));
}
const ELEMENTS = new Map(Object.entries(TIME_ELEMENTS).map(([type, stems]) => [type, elementsOf(stems)]));
const OTHER = elementsOf(OTHER_ELEMENTS);

const DAY = 86_400_000;
const DATE = /^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$/;
/** A FHIR dateTime/instant with a time of day: R4 requires its seconds and a time zone. */
const DATE_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.(\d+))?(?:Z|[+-]\d{2}:\d{2})$/;

/** The clinically relevant time of a resource (see the file comment). */
export function clinicalTime(resource: Resource): ClinicalTime {
  const type = resource.resourceType;
  if (TIMELESS.has(type)) return 'none';
  const dated = ELEMENTS.get(type);
  const r = resource as unknown as Record<string, unknown>;
  let span: TimeSpan | undefined;
  for (const [name, kind] of dated ?? OTHER) {
    const value = r[name];
    if (value === undefined) continue;
    const part = kind === 'moment' ? spanOf(value) : kind === 'period' ? periodSpan(value) : undefined;
    if (!part) return 'unknown';
    span = span ? { from: Math.min(span.from, part.from), to: Math.max(span.to, part.to) } : part;
  }
  if (span) return span;
  return dated ? 'unknown' : 'none';
}

/** A Period with both ends; an open end cannot lie inside a bounded data period. */
function periodSpan(value: unknown): TimeSpan | undefined {
  if (!value || typeof value !== 'object') return undefined;
  const { start, end } = value as { start?: unknown; end?: unknown };
  const s = spanOf(start);
  const e = spanOf(end);
  return s && e && s.from <= e.to ? { from: s.from, to: e.to } : undefined;
}

/** The span a date, dateTime or instant covers at its precision; undefined when it does not parse. */
export function spanOf(value: unknown): TimeSpan | undefined {
  if (typeof value !== 'string') return undefined;
  if (value.length > 10) {
    const t = DATE_TIME.exec(value);
    if (!t) return undefined;
    const from = Date.parse(value);
    if (Number.isNaN(from)) return undefined;
    const digits = t[1]?.length ?? 0;
    return { from, to: from + (digits >= 3 ? 0 : 10 ** (3 - digits) - 1) };
  }
  const d = DATE.exec(value);
  if (d) {
    const year = Number(d[1]);
    if (d[2] === undefined) return { from: utc(year, 0, 1), to: utc(year + 1, 0, 1) - 1 };
    const month = Number(d[2]) - 1;
    if (month < 0 || month > 11) return undefined;
    if (d[3] === undefined) return { from: utc(year, month, 1), to: utc(year, month + 1, 1) - 1 };
    const from = utc(year, month, Number(d[3]));
    return new Date(from).getUTCMonth() === month ? { from, to: from + DAY - 1 } : undefined;
  }
  return undefined;
}

/** Date.UTC without its two-digit-year quirk (years 0–99 are not 1900–1999 here). */
function utc(year: number, month: number, day: number): number {
  const date = new Date(0);
  date.setUTCFullYear(year, month, day);
  return date.getTime();
}
