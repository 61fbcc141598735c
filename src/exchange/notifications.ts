/**
 * Notification Bundles of the FHIR R4 Subscriptions Backport IG
 * (https://hl7.org/fhir/uv/subscriptions-backport/): a `history` Bundle whose first entry is the
 * SubscriptionStatus-equivalent Parameters (profile backport-subscription-status-r4), then one
 * entry per focus resource — with the resource for `full-resource`, the fullUrl only for `id-only`.
 */
import { randomUUID } from 'node:crypto';
import type { Bundle, BundleEntry, Parameters, ParametersParameter, Resource } from '@medplum/fhirtypes';

export const BACKPORT = 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/';
export const STATUS_PROFILE = `${BACKPORT}backport-subscription-status-r4`;

export type NotificationType = 'handshake' | 'heartbeat' | 'event-notification' | 'query-status' | 'query-event';
export type PayloadContent = 'empty' | 'id-only' | 'full-resource';

export interface NotificationEvent {
  eventNumber: number;
  timestamp: string;
  resource: Resource;
  interaction: 'create' | 'update';
  /**
   * The focus's fullUrl when it has no URL on this server that serves it: a research requester's
   * pseudonymised resource (researchFullUrl). Otherwise `<fhirBase>/<type>/<id>`.
   */
  fullUrl?: string;
}

/** Where a notification says its focus is. */
function focusUrl(fhirBase: string, e: NotificationEvent): string {
  return e.fullUrl ?? `${fhirBase}/${e.resource.resourceType}/${e.resource.id}`;
}

/**
 * The fullUrl of a pseudonymised resource in a research notification: a `urn:uuid:` made from its
 * pseudonym (40 hex characters; the same for the same resource in every notification of the study).
 * `<fhirBase>/Observation/<pseudonym>` would name a URL this server never serves — the pseudonym is
 * no id here, and research requests by REST are refused — so the notification names none.
 * RFC 9562 layout: version 8 (custom), variant 10.
 */
export function researchFullUrl(pseudonym: string): string {
  const h = pseudonym.toLowerCase();
  if (!/^[0-9a-f]{32,}$/.test(h)) throw new Error('a pseudonym is hex');
  const variant = ((Number.parseInt(h[16]!, 16) & 0x3) | 0x8).toString(16);
  return `urn:uuid:${h.slice(0, 8)}-${h.slice(8, 12)}-8${h.slice(13, 16)}-${variant}${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

export interface StatusInput {
  subscriptionUrl: string;
  topic: string;
  status: string;
  type: NotificationType;
  eventsSinceStart: number;
  events?: NotificationEvent[];
  payload?: PayloadContent;
  fhirBase: string;
  error?: string;
}

/** The status Parameters (SubscriptionStatus in R4 form). */
export function statusParameters(input: StatusInput): Parameters {
  const parameter: ParametersParameter[] = [
    { name: 'subscription', valueReference: { reference: input.subscriptionUrl } },
    { name: 'topic', valueCanonical: input.topic },
    { name: 'status', valueCode: input.status },
    { name: 'type', valueCode: input.type },
    { name: 'events-since-subscription-start', valueString: String(input.eventsSinceStart) },
  ];
  for (const e of input.events ?? []) {
    parameter.push({
      name: 'notification-event',
      part: [
        { name: 'event-number', valueString: String(e.eventNumber) },
        { name: 'timestamp', valueInstant: e.timestamp },
        ...(input.payload !== 'empty' ? [{ name: 'focus', valueReference: { reference: focusUrl(input.fhirBase, e) } }] : []),
      ],
    });
  }
  if (input.error) parameter.push({ name: 'error', valueCodeableConcept: { text: input.error } });
  return { resourceType: 'Parameters', meta: { profile: [STATUS_PROFILE] }, parameter };
}

/** A notification Bundle (handshake, heartbeat, event-notification, or the query-event answer of `$events`). */
export function notificationBundle(input: StatusInput & { subscriptionId: string }): Bundle {
  const entry: BundleEntry[] = [{
    fullUrl: `urn:uuid:${randomUUID()}`,
    resource: statusParameters(input),
    request: { method: 'GET', url: `Subscription/${input.subscriptionId}/$status` },
    response: { status: '200' },
  }];
  if (input.payload !== 'empty') {
    for (const e of input.events ?? []) {
      const r = e.resource;
      entry.push({
        fullUrl: focusUrl(input.fhirBase, e),
        ...(input.payload === 'full-resource' ? { resource: r } : {}),
        request: { method: e.interaction === 'create' ? 'POST' : 'PUT', url: e.interaction === 'create' ? r.resourceType : `${r.resourceType}/${r.id}` },
        response: { status: e.interaction === 'create' ? '201' : '200' },
      });
    }
  }
  return { resourceType: 'Bundle', id: randomUUID(), type: 'history', timestamp: new Date().toISOString(), entry };
}
