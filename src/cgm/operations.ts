/**
 * The CGM FHIR operations, registered on the facade by src/app.ts:
 *
 * - `POST /fhir/$submit-cgm-bundle` (http://hl7.org/fhir/uv/cgm/OperationDefinition/submit-cgm-bundle):
 *   a transaction Bundle in (the bare Bundle, or Parameters with the `resource` parameter), a
 *   transaction-response out. It runs as a facade transaction (same validation, scopes and write
 *   rules). Deduplication, as the IG asks servers to document (submission.ts): each POST is matched
 *   on the client's `request.ifNoneExist` when given, else on the resource's first identifier
 *   (client identifiers are kept) or one GlucoGuard adds (`urn:glucoguard:cgm-submission|<SHA-256 of
 *   the submitted content>`) *and* the patient it names. Re-submitting a Bundle creates nothing new;
 *   a matched resource whose content changed becomes a new version of it, as in `/cgm/ingest`.
 *   Relative references (`Observation/x`) to entries with RESTful fullUrls
 *   (`https://example.org/Observation/x`) resolve to those entries (R4 bundle.html#references).
 * - `GET /fhir/Patient/ID/$cgm-summary?start=&end=[&timeZone=][&store=true]`: the IG cgm-summary
 *   Observation and its members as a `collection` Bundle (the panel first), optionally stored by the
 *   submission rules above: each is matched on its identifier (patient, period, code) and patient;
 *   a re-run that computes the same figures leaves the stored summary as it is (its `issued` kept),
 *   one that computes others (readings added or corrected since, or a metrics change) stores a new
 *   version of it, If-Match the version read.
 * - `GET /fhir/Patient/ID/$cgm-agp?start=&end=[&timeZone=][&bin=15]`: AGP percentiles per time-of-day
 *   bin, JSON.
 *
 * Dates in `start`/`end` are the patient's local days: in `timeZone` (IANA) when given, else at the
 * UTC offset the patient's readings record around each bound (PeriodParams). With `timeZone`, that
 * zone is also the local time of the AGP's time of day and of the days of wear (`inZone`).
 * Metric conventions: docs/cgm-metrics.md.
 *
 * The summaries read readings through `FhirRouter.searchAll`, so scopes, consent and integrity
 * guards decide what they compute over, exactly as for a search.
 */
import type { Bundle, BundleEntry, Observation, Parameters, Resource } from '@medplum/fhirtypes';
import { badRequest, isGlucoGuardError, notFound } from '../errors.js';
import type { AccessContext } from '../fhir/access.js';
import type { FhirRouter, OperationHandler } from '../fhir/router.js';
import { onlyParameters } from '../fhir/operations.js';
import type { FhirRequest, FhirResponse } from '../fhir/types.js';
import { agpParameters, computeAgp } from './agp.js';
import { LOINC, READING_CODE, toTransactionBundle } from './fhir.js';
import { computeMetrics, parsePeriod, placeByReadings, placePeriod, type CgmMetrics, type MetricReading, type MetricsOptions, type PeriodBound } from './metrics.js';
import { metricReadingsFromObservations } from './readings.js';
import { submissionTransaction, submittedBundle } from './submission.js';
import { buildCgmSummary } from './summary.js';
import { isTimeZone, ZoneOffsets } from './time.js';

export { prepareSubmission, SUBMISSION_IDENTIFIER_SYSTEM } from './submission.js';

const READING_CODES = Object.values(READING_CODE).map((c) => `${LOINC}|${c.code}`).join(',');
const DAY = 86_400_000;
const HOUR = 3_600_000;

export interface CgmOperationsDeps {
  fhir: FhirRouter;
  /** Absolute FHIR base (`https://host/fhir`), for fullUrls of stored summaries. */
  fhirBase: string;
}

/**
 * Period query of the summary operations. A date (or a date-time without offset) is the patient's
 * local time: in `timeZone` (IANA) when given, else at the UTC offset the patient's readings record
 * around that time (docs/cgm-metrics.md).
 */
export interface PeriodParams {
  start?: string;
  end?: string;
  timeZone?: string;
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
          onlyParameters(req, 'cgm-summary', [...PERIOD_PARAMS, 'store']);
          const store = single(req.query.store, 'store');
          if (store !== undefined && store !== 'true' && store !== 'false') throw badRequest('store must be true or false', 'store');
          return this.summary(req.access, target.id!, periodParams(req.query), store === 'true');
        },
      },
      {
        name: 'cgm-agp', levels: ['instance'], resourceTypes: ['Patient'], methods: ['GET'],
        handle: async (req, target) => {
          onlyParameters(req, 'cgm-agp', [...PERIOD_PARAMS, 'bin']);
          const bin = single(req.query.bin, 'bin');
          const binMinutes = bin === undefined ? 15 : Number(bin);
          if (!Number.isInteger(binMinutes) || binMinutes < 1 || 1440 % binMinutes !== 0) throw badRequest('bin must be a whole number of minutes dividing a day (5, 15, 30, 60…)', 'bin');
          return { status: 200, body: await this.agp(req.access, target.id!, periodParams(req.query), binMinutes) };
        },
      },
    ];
  }

  /**
   * `$cgm-summary`: metrics over the period (default: the last 14 days of data) as the cgm-summary
   * Observation and its members in a collection Bundle; with `store`, stored first (idempotent; a
   * changed result is a new version of the stored summary).
   * 404 when the patient is not visible or has no CGM reading with a value in the period.
   */
  async summary(access: AccessContext, patientId: string, params: PeriodParams, store = false): Promise<FhirResponse> {
    const { metrics } = await this.metrics(access, patientId, params);
    const built = buildCgmSummary(metrics, { patient: `Patient/${patientId}`, issued: new Date().toISOString() });
    if (!store) {
      const entry: BundleEntry[] = built.entries.map((e) => ({ fullUrl: e.fullUrl, resource: e.resource }));
      return { status: 200, body: { resourceType: 'Bundle', type: 'collection', timestamp: new Date().toISOString(), entry } };
    }
    // Matched like a submission (identifier and patient), so a recomputed summary that differs
    // replaces the stored one instead of the conditional create handing the old one back.
    const transaction = toTransactionBundle(built.entries);
    for (const e of transaction.entry ?? []) delete e.request!.ifNoneExist;
    const body = await submissionTransaction(transaction, (type, identifiers, patient) => this.stored(access, type, identifiers, patient), ['issued']);
    const response = await this.deps.fhir.handle({
      method: 'POST', path: '', query: {}, headers: { 'content-type': 'application/fhir+json' }, body, access,
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

  /** `$cgm-agp`: AGP data over the period (default: the last 14 days of data), as Parameters (agpParameters). */
  async agp(access: AccessContext, patientId: string, params: PeriodParams, binMinutes = 15): Promise<Parameters> {
    const { readings, period } = await this.readings(access, patientId, params);
    const agp = computeAgp(readings, { ...period, binMinutes });
    if (!agp) throw notFound('No CGM readings with a value in the period');
    return agpParameters(`Patient/${patientId}`, agp);
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
   * days before the latest reading (or `end`) are fetched — what the default period needs. Local
   * bounds (dates) without `timeZone` are fetched with the widest margin a UTC offset can need
   * (−12 h … +14 h), then placed by the readings' own offsets.
   */
  private async readings(access: AccessContext, patientId: string, params: PeriodParams) {
    const fhir = this.deps.fhir;
    if (params.timeZone !== undefined && !isTimeZone(params.timeZone)) throw badRequest('timeZone must be an IANA time zone (e.g. Europe/Berlin)', 'timeZone');
    const query = parsePeriod(params);
    // The patient must be visible to the requester: the same 404 as a read otherwise.
    const patient = await fhir.handle({ method: 'GET', path: `Patient/${patientId}`, query: {}, headers: {}, access });
    if (patient.status !== 200) throw notFound('Not found');
    const zone = params.timeZone ? new ZoneOffsets(params.timeZone) : undefined;
    const place = (b: PeriodBound, margin: number): number => ('instant' in b ? b.instant : zone ? zone.resolve(b.wallMs).epochMs : b.wallMs + margin);
    const search = { start: query.start && place(query.start, -14 * HOUR), end: query.end && place(query.end, 12 * HOUR) };
    const base = { patient: `Patient/${patientId}`, code: READING_CODES };
    const dates: string[] = [];
    // The default period's readings are fetched from 15 days back only: the first reading says
    // whether it starts at the first fetched (less than 14 days of data) or before (a sensor gap).
    let firstReading: number | undefined;
    if (search.start !== undefined) dates.push(`ge${iso(search.start)}`);
    else {
      const readingAt = async (sort: string): Promise<number | undefined> => {
        const found = await fhir.handle({ method: 'GET', path: 'Observation', query: { ...base, _sort: sort, _count: '1' }, headers: {}, access });
        const obs = ((found.body as Bundle | undefined)?.entry ?? []).find((e) => e.resource?.resourceType === 'Observation')?.resource as Observation | undefined;
        return obs?.effectiveDateTime ? Date.parse(obs.effectiveDateTime) : undefined;
      };
      let end = search.end;
      if (end === undefined) {
        const last = await readingAt('-date');
        end = last === undefined ? undefined : last + 1;
      }
      if (end !== undefined) dates.push(`ge${iso(end - 15 * DAY)}`); // one spare day: the default period ends one interval after the last reading
      firstReading = await readingAt('date');
    }
    if (search.end !== undefined) dates.push(`lt${iso(search.end)}`);
    const observations = await fhir.searchAll(access, 'Observation', { ...base, ...(dates.length ? { date: dates } : {}) });
    const stored = metricReadingsFromObservations(observations as Observation[]);
    // With timeZone, the patient's local time is that zone's, for the AGP's time of day and the days
    // of a date period too, not the offset a reading happened to be stored with (a Nightscout entry
    // is stored in UTC: its 03:00 hypo would be drawn at 08:00 for a patient in New York).
    const readings = zone ? inZone(stored, zone) : stored;
    const period: Pick<MetricsOptions, 'start' | 'end' | 'startDate' | 'endDate' | 'firstReading'> = {
      ...placePeriod(query, zone ? (wallMs) => zone.resolve(wallMs).epochMs : placeByReadings(readings)),
      ...(firstReading !== undefined ? { firstReading } : {}),
    };
    return { readings, period };
  }

  /** `$submit-cgm-bundle`: see the file comment and submission.ts. */
  private async submit(req: FhirRequest): Promise<FhirResponse> {
    const bundle = await submissionTransaction(submittedBundle(req.body), (type, identifiers, patient) => this.stored(req.access, type, identifiers, patient));
    return this.deps.fhir.handle({ ...req, method: 'POST', path: '', query: {}, headers: { ...req.headers, 'content-type': 'application/fhir+json' }, body: bundle });
  }

  /**
   * Stored resources a submission may match, among those the requester may see (a search's
   * scopes, narrowing and guards); undefined when they may not search that type, so their
   * submission stays plain conditional creates.
   */
  private async stored(access: AccessContext, type: string, identifiers: string[], patient: string | undefined): Promise<Resource[] | undefined> {
    try {
      return await this.deps.fhir.searchAll(access, type, { identifier: identifiers.join(','), ...(patient ? { patient } : {}) });
    } catch (err) {
      if (isGlucoGuardError(err, 'ERR_FORBIDDEN')) return undefined;
      throw err;
    }
  }
}

/**
 * Readings with `offsetMinutes` of the zone at each reading's instant. The zone is asked once per
 * UTC day and, only on a day whose offset changes (DST), per reading.
 */
export function inZone(readings: readonly MetricReading[], zone: ZoneOffsets): MetricReading[] {
  const days = new Map<number, number | undefined>();
  return readings.map((r) => {
    const day = Math.floor(r.epochMs / DAY);
    let off = days.get(day);
    if (!days.has(day)) {
      const a = zone.offsetAt(day * DAY), b = zone.offsetAt((day + 1) * DAY);
      off = a === b ? a : undefined;
      days.set(day, off);
    }
    return { ...r, offsetMinutes: off ?? zone.offsetAt(r.epochMs) };
  });
}

const PERIOD_PARAMS = ['start', 'end', 'timeZone'];

function periodParams(query: Record<string, string | string[] | undefined>): PeriodParams {
  const timeZone = single(query.timeZone, 'timeZone');
  return { start: single(query.start, 'start'), end: single(query.end, 'end'), ...(timeZone !== undefined ? { timeZone } : {}) };
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
