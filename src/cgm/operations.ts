/**
 * The CGM FHIR operations, registered on the facade by src/app.ts:
 *
 * - `POST /fhir/$submit-cgm-bundle` (http://hl7.org/fhir/uv/cgm/OperationDefinition/submit-cgm-bundle):
 *   a transaction Bundle in (the bare Bundle, or Parameters with the `resource` parameter), a
 *   transaction-response out. It runs as a facade transaction (same validation, scopes and write
 *   rules). Deduplication, as the IG asks servers to document: every POST is a conditional create —
 *   on the client's `request.ifNoneExist` when given, else on the resource's first identifier
 *   (client identifiers are kept), else on an identifier GlucoGuard adds
 *   (`urn:glucoguard:cgm-submission|<SHA-256 of the submitted content>`). Re-submitting a Bundle
 *   therefore creates nothing new. Relative references (`Observation/x`) to entries with RESTful
 *   fullUrls (`https://example.org/Observation/x`) resolve to those entries (R4 bundle.html#references).
 * - `GET /fhir/Patient/ID/$cgm-summary?start=&end=[&store=true]`: the IG cgm-summary Observation and
 *   its members as a `collection` Bundle (the panel first), optionally stored (conditional creates).
 * - `GET /fhir/Patient/ID/$cgm-agp?start=&end=[&bin=15]`: AGP percentiles per time-of-day bin, JSON.
 *
 * The summaries read readings through `FhirRouter.searchAll`, so scopes, consent and integrity
 * guards decide what they compute over, exactly as for a search.
 */
import { createHash } from 'node:crypto';
import type { Bundle, BundleEntry, Observation, Parameters, Resource } from '@medplum/fhirtypes';
import { badRequest, notFound } from '../errors.js';
import type { AccessContext } from '../fhir/access.js';
import type { FhirRouter, OperationHandler } from '../fhir/router.js';
import type { FhirRequest, FhirResponse } from '../fhir/types.js';
import { computeAgp, type Agp } from './agp.js';
import { LOINC, READING_CODE, toTransactionBundle } from './fhir.js';
import { computeMetrics, periodFromParams, type CgmMetrics, type MetricsOptions } from './metrics.js';
import { metricReadingsFromObservations } from './readings.js';
import { buildCgmSummary } from './summary.js';
import { stableJson } from './stable-json.js';

/** Identifier system GlucoGuard adds to submitted resources that carry none (content hash). */
export const SUBMISSION_IDENTIFIER_SYSTEM = 'urn:glucoguard:cgm-submission';

const READING_CODES = Object.values(READING_CODE).map((c) => `${LOINC}|${c.code}`).join(',');
const DAY = 86_400_000;

export interface CgmOperationsDeps {
  fhir: FhirRouter;
  /** Absolute FHIR base (`https://host/fhir`), for fullUrls of stored summaries. */
  fhirBase: string;
}

/** Period query of the summary operations. */
export interface PeriodParams {
  start?: string;
  end?: string;
}

export class CgmOperations {
  constructor(private readonly deps: CgmOperationsDeps) {}

  /** The operation handlers to register on the facade. */
  handlers(): OperationHandler[] {
    return [
      { name: 'submit-cgm-bundle', levels: ['system'], methods: ['POST'], handle: (req) => this.submit(req) },
      {
        name: 'cgm-summary', levels: ['instance'], resourceTypes: ['Patient'], methods: ['GET'],
        handle: async (req, target) => {
          const store = single(req.query.store, 'store');
          if (store !== undefined && store !== 'true' && store !== 'false') throw badRequest('store must be true or false', 'store');
          return this.summary(req.access, target.id!, { start: single(req.query.start, 'start'), end: single(req.query.end, 'end') }, store === 'true');
        },
      },
      {
        name: 'cgm-agp', levels: ['instance'], resourceTypes: ['Patient'], methods: ['GET'],
        handle: async (req, target) => {
          const bin = single(req.query.bin, 'bin');
          const binMinutes = bin === undefined ? 15 : Number(bin);
          if (!Number.isInteger(binMinutes) || binMinutes < 1 || 1440 % binMinutes !== 0) throw badRequest('bin must be a whole number of minutes dividing a day (5, 15, 30, 60…)', 'bin');
          const agp = await this.agp(req.access, target.id!, { start: single(req.query.start, 'start'), end: single(req.query.end, 'end') }, binMinutes);
          return { status: 200, body: agp as unknown as Record<string, unknown> };
        },
      },
    ];
  }

  /**
   * `$cgm-summary`: metrics over the period (default: the last 14 days of data) as the cgm-summary
   * Observation and its members in a collection Bundle; with `store`, stored first (idempotent).
   * 404 when the patient is not visible or has no CGM reading with a value in the period.
   */
  async summary(access: AccessContext, patientId: string, params: PeriodParams, store = false): Promise<FhirResponse> {
    const { metrics } = await this.metrics(access, patientId, params);
    const built = buildCgmSummary(metrics, { patient: `Patient/${patientId}`, issued: new Date().toISOString() });
    if (!store) {
      const entry: BundleEntry[] = built.entries.map((e) => ({ fullUrl: e.fullUrl, resource: e.resource }));
      return { status: 200, body: { resourceType: 'Bundle', type: 'collection', timestamp: new Date().toISOString(), entry } };
    }
    const response = await this.deps.fhir.handle({
      method: 'POST', path: '', query: {}, headers: { 'content-type': 'application/fhir+json' },
      body: toTransactionBundle(built.entries), access,
    });
    if (response.status !== 200) return response;
    // The transaction response may leave the bodies out: read each stored panel back through the facade.
    const stored: Resource[] = [];
    for (const e of (response.body as Bundle).entry ?? []) {
      if (e.resource) {
        stored.push(e.resource);
        continue;
      }
      const location = /^([A-Z][A-Za-z]+\/[A-Za-z0-9\-.]{1,64})/.exec(e.response?.location ?? '')?.[1];
      if (!location) continue;
      const read = await this.deps.fhir.handle({ method: 'GET', path: location, query: {}, headers: {}, access });
      if (read.status === 200 && read.body) stored.push(read.body as Resource);
    }
    const entry: BundleEntry[] = stored.map((r) => ({ fullUrl: `${this.deps.fhirBase}/${r.resourceType}/${r.id}`, resource: r }));
    return { status: 200, body: { resourceType: 'Bundle', type: 'collection', timestamp: new Date().toISOString(), entry } };
  }

  /** `$cgm-agp`: AGP data over the period (default: the last 14 days of data). */
  async agp(access: AccessContext, patientId: string, params: PeriodParams, binMinutes = 15): Promise<Agp & { patient: string; startTime: string; endTime: string }> {
    const { readings, period } = await this.readings(access, patientId, params);
    const agp = computeAgp(readings, { ...period, binMinutes });
    if (!agp) throw notFound('No CGM readings with a value in the period');
    return { patient: `Patient/${patientId}`, ...agp, startTime: new Date(agp.start).toISOString(), endTime: new Date(agp.end).toISOString() };
  }

  /** Metrics for a patient over a period, from the readings the requester may see. */
  async metrics(access: AccessContext, patientId: string, params: PeriodParams): Promise<{ metrics: CgmMetrics }> {
    const { readings, period } = await this.readings(access, patientId, params);
    const metrics = computeMetrics(readings, period);
    if (!metrics) throw notFound('No CGM readings with a value in the period');
    return { metrics };
  }

  /**
   * The patient's CGM readings for a period, through the facade. Without `start`, only the last 14
   * days before the latest reading (or `end`) are fetched — what the default period needs.
   */
  private async readings(access: AccessContext, patientId: string, params: PeriodParams) {
    const fhir = this.deps.fhir;
    // The patient must be visible to the requester: the same 404 as a read otherwise.
    const patient = await fhir.handle({ method: 'GET', path: `Patient/${patientId}`, query: {}, headers: {}, access });
    if (patient.status !== 200) throw notFound('Not found');
    const period: Pick<MetricsOptions, 'start' | 'end'> = periodFromParams(params);
    const base = { patient: `Patient/${patientId}`, code: READING_CODES };
    const dates: string[] = [];
    if (period.start !== undefined) dates.push(`ge${iso(period.start)}`);
    else {
      let end = period.end;
      if (end === undefined) {
        const latest = await fhir.handle({ method: 'GET', path: 'Observation', query: { ...base, _sort: '-date', _count: '1' }, headers: {}, access });
        const last = ((latest.body as Bundle | undefined)?.entry ?? []).find((e) => e.resource?.resourceType === 'Observation')?.resource as Observation | undefined;
        end = last?.effectiveDateTime ? Date.parse(last.effectiveDateTime) + 1 : undefined;
      }
      if (end !== undefined) dates.push(`ge${iso(end - 15 * DAY)}`); // one spare day: the default period ends one interval after the last reading
    }
    if (period.end !== undefined) dates.push(`lt${iso(period.end)}`);
    const observations = await fhir.searchAll(access, 'Observation', { ...base, ...(dates.length ? { date: dates } : {}) });
    return { readings: metricReadingsFromObservations(observations as Observation[]), period };
  }

  /** `$submit-cgm-bundle`: see the file comment. */
  private async submit(req: FhirRequest): Promise<FhirResponse> {
    const bundle = prepareSubmission(submittedBundle(req.body));
    return this.deps.fhir.handle({ ...req, method: 'POST', path: '', query: {}, headers: { ...req.headers, 'content-type': 'application/fhir+json' }, body: bundle });
  }
}

/** The Bundle of a `$submit-cgm-bundle` call: the body itself, or the `resource` parameter of Parameters. */
function submittedBundle(body: unknown): Bundle {
  const resource = body as Resource | undefined;
  let bundle: Resource | undefined = resource;
  if (resource?.resourceType === 'Parameters') {
    const params = (resource as Parameters).parameter ?? [];
    const named = params.filter((p) => p.name === 'resource');
    if (named.length !== 1) throw badRequest('Parameters must carry exactly one "resource" parameter holding the Bundle', 'Parameters.parameter');
    bundle = named[0]!.resource;
  }
  if (bundle?.resourceType !== 'Bundle') throw badRequest('Expected a transaction Bundle (cgm-data-submission-bundle), or Parameters with it as "resource"');
  if ((bundle as Bundle).type !== 'transaction') throw badRequest('The submitted Bundle must be of type transaction', 'Bundle.type');
  return bundle as Bundle;
}

/** Resolves in-bundle relative references and makes every POST a conditional create (file comment). */
export function prepareSubmission(input: Bundle): Bundle {
  const bundle = structuredClone(input);
  const entries = bundle.entry ?? [];
  // `Type/id` → the fullUrl `<base>/Type/id` of the entry it names, when exactly one entry does.
  const byRelative = new Map<string, string | null>();
  for (const e of entries) {
    const m = e.fullUrl ? /^https?:\/\/.+\/([A-Z][A-Za-z]+\/[A-Za-z0-9\-.]{1,64})$/.exec(e.fullUrl) : null;
    if (m) byRelative.set(m[1]!, byRelative.has(m[1]!) ? null : e.fullUrl!);
  }
  for (const e of entries) if (e.resource) resolveReferences(e.resource, byRelative);
  for (const [i, e] of entries.entries()) {
    if (e.request?.method !== 'POST' || !e.resource || e.request.ifNoneExist) continue;
    const resource = e.resource as Resource & { identifier?: { system?: string; value?: string }[] };
    delete resource.id; // a create: the server assigns ids
    const first = Array.isArray(resource.identifier) ? resource.identifier.find((x) => x.system && x.value) : undefined;
    if (first) {
      e.request.ifNoneExist = `identifier=${first.system}|${first.value}`;
      continue;
    }
    if (!('identifier' in resource) || Array.isArray(resource.identifier)) {
      const value = createHash('sha256').update(stableJson({ ...resource, meta: undefined })).digest('hex').slice(0, 40);
      resource.identifier = [...(resource.identifier ?? []), { system: SUBMISSION_IDENTIFIER_SYSTEM, value }];
      e.request.ifNoneExist = `identifier=${SUBMISSION_IDENTIFIER_SYSTEM}|${value}`;
    } else throw badRequest('identifier must be an array', `Bundle.entry[${i}].resource.identifier`);
  }
  return bundle;
}

function resolveReferences(value: unknown, byRelative: Map<string, string | null>): void {
  if (!value || typeof value !== 'object') return;
  if (Array.isArray(value)) {
    for (const v of value) resolveReferences(v, byRelative);
    return;
  }
  const obj = value as Record<string, unknown>;
  for (const [k, v] of Object.entries(obj)) {
    if (k === 'reference' && typeof v === 'string') {
      const target = byRelative.get(v);
      if (target) obj[k] = target;
    } else if (v && typeof v === 'object') resolveReferences(v, byRelative);
  }
}

function single(v: string | string[] | undefined, name: string): string | undefined {
  if (Array.isArray(v)) {
    if (v.length > 1) throw badRequest(`${name} given more than once`, name);
    return v[0];
  }
  return v;
}

function iso(epochMs: number): string {
  return new Date(epochMs).toISOString();
}
