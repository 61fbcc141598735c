/**
 * SearchRequest → FHIR search query string (https://hl7.org/fhir/R4/search.html) for a generic R4
 * server. @medplum/core's formatSearchQuery does the work; Medplum-only parameters are translated
 * (`_fields` → standard `_elements`) or dropped (`_cursor`), and `_summary` is added back.
 */
import { formatSearchQuery, type SearchRequest } from '@medplum/core';

/** The query string, starting with `?`, or '' when there is nothing to send. */
export function searchQuery(request: SearchRequest): string {
  const { fields, cursor: _cursor, summary, format: _format, pretty: _pretty, ...rest } = request;
  const standard = formatSearchQuery(rest as SearchRequest);
  const extra: string[] = [];
  if (fields?.length) extra.push(`_elements=${fields.map(encodeURIComponent).join(',')}`);
  if (summary) extra.push(`_summary=${encodeURIComponent(summary)}`);
  if (extra.length === 0) return standard;
  return (standard ? `${standard}&` : '?') + extra.join('&');
}

/** Query string of a history request (http.html#history): `_count` and `_since` (later pages follow the upstream's links). */
export function historyQuery(params: { count?: number; since?: string }): string {
  const q = new URLSearchParams();
  if (params.count !== undefined) q.set('_count', String(params.count));
  if (params.since) q.set('_since', params.since);
  const text = q.toString();
  return text ? `?${text}` : '';
}
