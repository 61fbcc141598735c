/**
 * FHIR Bulk Data Access 2.0 `$export` (https://hl7.org/fhir/uv/bulkdata/export.html):
 * - kick-off at system (`/$export`), Patient (`/Patient/$export`) and Group (`/Group/ID/$export`)
 *   level with `Prefer: respond-async` → 202 + Content-Location of the status endpoint;
 * - status (`GET /$export-status?_job=ID`): 202 + X-Progress + Retry-After while running (429 when
 *   polled sooner than Retry-After), then 200 with the manifest; `DELETE` cancels (202, then 404);
 * - `_type`, `_since`, `_typeFilter`, `_outputFormat` (NDJSON). `_typeFilter` is a comma-separated
 *   list of queries (repeated: the same as comma-separated); queries for one type are OR'ed, each
 *   checked at kick-off by the parser, policy and repository the job reads through (400 naming it);
 * - a Patient or Group export holds the patient compartment: `_type` naming a type outside it is a
 *   400, or with `Prefer: handling=lenient` the type is left out and the error file says so.
 *
 * Jobs run one at a time in the background and stream to `<dataDir>/exports/<job>/` with bounded
 * memory: every resource is read through GuardedReader (scopes, consent, integrity decided at the
 * moment it is written) and de-identified for research requesters (research.ts). Files are sealed
 * at rest (sealed-file.ts) and deleted with their job once its retention has passed. They are written
 * as `.part` and renamed at the end, and the manifest exists only for a completed job; a job cut
 * off by a restart runs again from the start; so does one cut off by an unavailable repository (an
 * upstream answering 502/503/504 or gone, consent undecidable), after 15 s and then 30 s, its
 * status telling why meanwhile (X-Progress); after MAX_ATTEMPTS it fails with the upstream's
 * status and what any FHIR client is told of it. The job's files are served (http.ts) only to the
 * requester who started it, while their token's scopes cover what the files hold.
 *
 * A file outlives the request that made it, but not the consent behind it: with each job the
 * patients whose data it holds are recorded with the grants that let it out (one row per patient,
 * never per resource). Every status answer and every download decides again, for the identity and
 * purpose the job ran for, whether each of those grants is still in force (ReleasePolicy: consent
 * decides, in O(patients)). Once one is revoked or has ended the job is withdrawn at once: its files
 * are deleted, and its status and files answer 410 Gone telling the client to start a new export,
 * which holds what is shared now. The patient's own exports and open (operator) access are not
 * limited by grants. Each download is recorded as a BALP Read of the file in the access log.
 */
import { randomUUID } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync, mkdirSync, renameSync, rmSync, type WriteStream } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { getSearchParameter } from '@medplum/core';
import type { Group, OperationOutcomeIssue, Parameters, Resource } from '@medplum/fhirtypes';
import { patientHint } from '../fhir/compartment.js';
import { EXPORT_FILE_PATH } from '../audit/recorder.js';
import { badRequest, forbidden, gone, GlucoGuardError, isGlucoGuardError, isPassingOutage, notFound, tooManyRequests } from '../errors.js';
import type { AccessContext } from '../fhir/access.js';
import { informational, operationOutcome } from '../fhir/outcomes.js';
import { queryOfText } from '../fhir/paging.js';
import type { OperationHandler } from '../fhir/router.js';
import { isSupportedType } from '../fhir/resource-types.js';
import type { FhirRequest, FhirResponse } from '../fhir/types.js';
import type { Logger } from '../log.js';
import type { Repository } from '../repository/port.js';
import {
  JobStore, ownerOf, storedAccess, typeFiltersOf, type ExportJob, type ExportParams, type OutputFile, type Released, type StoredAccess, type TypeFilterQuery,
} from './jobs.js';
import { GuardedReader } from './reader.js';
import { FrameOpener, sealFrame } from './sealed-file.js';
import { researchContextOf, type StudyDeidentifiers } from './research.js';

/** Parameters starting with `_` that a `_typeFilter` may use: filters, not result parameters. */
const TYPE_FILTER_COMMON = new Set(['_id', '_lastUpdated', '_tag', '_security', '_profile']);

/** Types exported when `_type` is absent: the clinical data, not consents, audit trails or subscriptions. */
export const DEFAULT_EXPORT_TYPES = ['Patient', 'Observation', 'Device', 'MedicationAdministration', 'DiagnosticReport', 'ServiceRequest'];
const INSTANT = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-](?:0\d|1[0-3]):[0-5]\d|[+-]14:00)$/;
const NDJSON_FORMATS = new Set(['application/fhir+ndjson', 'application/ndjson', 'ndjson']);
const MAX_ATTEMPTS = 3;
/**
 * Jobs one requester may have queued or running at once. Jobs run one at a time for everyone, so
 * without a cap one client's pile of exports would hold back every other client's for as long as it
 * liked; more is a 429 (Bulk Data IG: the server may refuse a kick-off it cannot take now).
 */
export const MAX_ACTIVE_JOBS_PER_REQUESTER = 4;
/** What a job that failed on the server's side says (the detail is logged, never shown). */
const INTERNAL_FAILURE = 'The export failed because of an internal error; start a new export';

/**
 * What export needs of consent so its files never outlive the grants that let their data out
 * (src/consent/policy.ts: ConsentPolicy, and ComposedPolicy over it).
 */
export interface ReleasePolicy {
  /** Whose data the guards let out to this access object since the last call, and under which grants; the first call starts the count. */
  takeReleased(access: AccessContext): Released;
  /**
   * May data let out under `released` (undefined: not known) still go to this requester now? Notes
   * the patients, grants and reasons on `access` for the access log; ERR_UNAVAILABLE when it cannot decide.
   */
  stillReleasable(access: AccessContext, released: Released | undefined): Promise<boolean>;
  /** The patients whose data the requester may see some of now; undefined when nothing limits it (open access). */
  visiblePatients?(access: AccessContext): Promise<string[] | undefined>;
}

export interface ExportServiceOptions {
  dir: string;
  fhirBase: string;
  /** Public base of the download route (`https://host/exports`). */
  filesBase: string;
  reader: GuardedReader;
  /** The repository seen in-process (Group membership, patient ids); never served directly. */
  repository: Repository;
  /** Records whose data a job holds and decides again, at each status answer and download, whether it may still go out. */
  releases: ReleasePolicy;
  deidentifiers: StudyDeidentifiers;
  retryAfterSeconds: number;
  /** How long a finished job and its files are kept (ExchangeSettings.exportRetentionHours); then both are deleted. */
  retentionMs: number;
  /** Seals the files at rest (sealed-file.ts; derived from the key root). */
  fileKey: Buffer;
  logger?: Logger;
  /** Records an access-log entry when a job finishes and for each file download (the consent audit recorder). */
  audit?: (request: FhirRequest, response: FhirResponse) => void;
  now?: () => number;
  /** How often a download in progress decides again whether its job's data may still go out (ms; default 2,000). */
  downloadRecheckMs?: number;
  /**
   * First wait (ms) before a job cut off by an unavailable repository (an upstream answering
   * 502/503/504 or gone, a consent decision that cannot be made) runs again, doubled per attempt
   * (default 15,000: an upstream restarting or a failover); it fails after MAX_ATTEMPTS attempts in all.
   */
  unavailableRetryMs?: number;
}

export class ExportService {
  readonly store: JobStore;
  private readonly queue: string[] = [];
  private running: Promise<void> | undefined;
  private readonly cancelled = new Set<string>();
  private readonly lastPoll = new Map<string, number>();
  private readonly progress = new Map<string, string>();
  private closed = false;
  private sweeper: NodeJS.Timeout | undefined;
  /** Jobs waiting to run again after an outage (see unavailableRetryMs). */
  private readonly retries = new Set<NodeJS.Timeout>();

  constructor(private readonly options: ExportServiceOptions) {
    this.store = new JobStore(options.dir);
  }

  /** When a finished job's files go (the manifest's Expires); undefined while it runs. */
  private expiresAt(job: ExportJob): number | undefined {
    if (job.status !== 'completed' && job.status !== 'failed') return undefined;
    return Date.parse(job.completedAt ?? job.createdAt) + this.options.retentionMs;
  }

  private expired(job: ExportJob): boolean {
    const at = this.expiresAt(job);
    return at !== undefined && at <= this.now();
  }

  /**
   * Deletes finished jobs past their retention, files and all (at start and then hourly): export
   * files are copies of health data and must not outlive the time the manifest promised them for.
   * Answers how many went.
   */
  sweep(): number {
    let removed = 0;
    for (const job of this.store.byStatus('completed', 'failed')) {
      if (!this.expired(job)) continue;
      rmSync(this.jobDir(job.id), { recursive: true, force: true });
      this.store.delete(job.id);
      this.lastPoll.delete(job.id);
      removed++;
    }
    if (removed) this.options.logger?.info({ removed }, 'export: deleted expired jobs and their files');
    return removed;
  }

  private now(): number {
    return this.options.now?.() ?? Date.now();
  }

  /** Resumes jobs a restart cut off (from the start), or fails them cleanly after MAX_ATTEMPTS; deletes expired ones, now and hourly. */
  start(): void {
    this.sweep();
    this.sweeper = setInterval(() => {
      try {
        this.sweep();
      } catch (err) {
        this.options.logger?.error({ err: (err as Error).message }, 'export: could not delete expired jobs');
      }
    }, 3_600_000);
    this.sweeper.unref();
    for (const job of this.store.byStatus('queued', 'running')) {
      rmSync(this.jobDir(job.id), { recursive: true, force: true });
      if (job.attempts >= MAX_ATTEMPTS) {
        this.store.put({ ...job, status: 'failed', failure: `${INTERNAL_FAILURE} (it was cut off ${MAX_ATTEMPTS} times)`, outputs: [], errors: [] });
        continue;
      }
      this.store.put({ ...job, status: 'queued', outputs: [], errors: [] });
      this.options.logger?.info({ job: job.id }, 'export: resuming a job cut off by a restart');
      this.enqueue(job.id);
    }
  }

  /** Stops taking jobs and waits for the running one to stop at its next page (it resumes on the next start). */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.sweeper);
    for (const timer of this.retries) clearTimeout(timer); // stored as queued: they run again on the next start
    this.retries.clear();
    this.queue.length = 0;
    await this.running;
    this.store.close();
  }

  /** The `$export` and `$export-status` operations for the facade. */
  handlers(): OperationHandler[] {
    return [
      {
        name: 'export', levels: ['system', 'type', 'instance'], resourceTypes: ['Patient', 'Group'], methods: ['GET', 'POST'],
        handle: (req, target) => this.kickOff(req, target),
      },
      {
        name: 'export-status', levels: ['system'], methods: ['GET', 'DELETE'],
        handle: (req) => (req.method === 'DELETE' ? this.cancel(req) : this.status(req)),
      },
    ];
  }

  // ---- kick-off ------------------------------------------------------------------------------

  async kickOff(req: FhirRequest, target: { resourceType?: string; id?: string }): Promise<FhirResponse> {
    const level = !target.resourceType ? 'system' : target.resourceType === 'Patient' && !target.id ? 'patient' : target.resourceType === 'Group' && target.id ? 'group' : undefined;
    if (!level) throw notFound('Unknown operation $export');
    if (!/respond-async/.test(req.headers.prefer ?? '')) throw badRequest('Bulk export needs the header Prefer: respond-async', 'Prefer');
    const query = exportParameters(req);
    const format = query._outputFormat?.[0];
    if (format !== undefined && !NDJSON_FORMATS.has(format)) throw badRequest('_outputFormat must be application/fhir+ndjson', '_outputFormat');
    const since = query._since?.[0];
    // an instant has a time zone (FHIR instant); one without would be read in the server's own zone
    if (since !== undefined && (!INSTANT.test(since) || Number.isNaN(Date.parse(since)))) throw badRequest('_since must be an instant with a time zone (e.g. 2026-01-01T00:00:00Z)', '_since');
    const requested = (query._type ?? []).flatMap((t) => t.split(',')).map((t) => t.trim()).filter(Boolean);
    for (const t of requested) if (!isSupportedType(t)) throw badRequest(`_type: unsupported resource type "${t.slice(0, 64)}"`, '_type');
    let types = requested.length ? [...new Set(requested)] : DEFAULT_EXPORT_TYPES;
    const notices: string[] = [];
    if (level !== 'system') {
      // Bulk Data IG, _type: a type outside the patient compartment asked of a Patient or Group
      // export is an error with an OperationOutcome, unless the client allows leaving it out
      const outside = types.filter((t) => !GuardedReader.isPatientLinked(t));
      types = types.filter((t) => GuardedReader.isPatientLinked(t));
      if (outside.length) {
        const why = `${outside.join(', ')} ${outside.length > 1 ? 'are' : 'is'} not in the patient compartment, and a ${level === 'group' ? 'Group' : 'Patient'}-level export `
          + 'holds only resources of the patient compartment (a system-level export, [base]/$export, can hold them)';
        if (!lenient(req) || types.length === 0) throw badRequest(`_type: ${why}`, '_type');
        notices.push(`_type: ${outside.join(', ')} left out (Prefer: handling=lenient): ${why}`);
      }
    }
    const allowedTypes = await this.authorizedTypes(req.access, types, requested.length > 0);
    const typeFilters: Record<string, TypeFilterQuery[]> = {};
    // What a research export selects by must not name people: its files carry pseudonyms, and data
    // picked by a real id, reference or identifier (or a Group of chosen patients) would tell the
    // study whose pseudonym is whose. Its cohort is whoever granted the study.
    const research = researchContextOf(req.access) !== undefined;
    if (research && level === 'group') throw forbidden('A research export covers the patients who granted the study ([base]/Patient/$export); a Group of chosen patients would tie their pseudonyms to them');
    // repeated values count as one comma-separated list; the queries of one type are OR'ed
    for (const text of typeFilterQueries(query._typeFilter ?? [])) {
      const q = text.indexOf('?');
      const type = q > 0 ? text.slice(0, q) : '';
      const label = `_typeFilter "${text.slice(0, 200)}"`;
      if (!allowedTypes.includes(type)) throw badRequest(`${label}: a _typeFilter must be Type?query for a type this export holds`, '_typeFilter');
      const record = queryOfText(text.slice(q + 1));
      if (Object.keys(record).some((k) => k.startsWith('_') && !k.startsWith('_has:') && !TYPE_FILTER_COMMON.has(k.split(':')[0]!))) {
        throw badRequest(`${label}: a _typeFilter takes search filters only, not result parameters`, '_typeFilter');
      }
      const naming = research ? Object.keys(record).find((k) => !researchMaySelectBy(type, k, this.options.deidentifiers.dateShift)) : undefined;
      if (naming) {
        throw forbidden(`Under a research purpose an export's _typeFilter cannot select by "${naming.slice(0, 64)}": ids, references, identifiers, names, contact details, `
          + 'free text and exact dates would tie pseudonyms to people (it may select by codes, quantities and meta tags)');
      }
      // checked now as the job will read it, chains, parameters, values and all (400 before a job
      // exists); its chains are resolved again when the job runs
      try {
        await this.options.reader.check(req.access, type, record);
      } catch (err) {
        throw aboutFilter(err, text);
      }
      (typeFilters[type] ??= []).push(record);
    }
    if (level === 'group') await this.groupMembers(req.access, target.id!); // 404 before a job exists
    if (req.access.kind !== 'open') {
      const owner = ownerOf(req.access);
      const active = this.store.byStatus('queued', 'running').filter((j) => j.owner === owner).length;
      if (active >= MAX_ACTIVE_JOBS_PER_REQUESTER) {
        const err = tooManyRequests(`At most ${MAX_ACTIVE_JOBS_PER_REQUESTER} exports of one requester may be waiting or running; wait for one to finish, or cancel one (DELETE its status URL)`);
        return { status: 429, headers: { 'Retry-After': String(this.options.retryAfterSeconds) }, body: operationOutcome(err.issues) };
      }
    }
    const job = this.submit(req.access, {
      level, ...(target.id ? { groupId: target.id } : {}), types: allowedTypes, explicitTypes: requested.length > 0, ...(since ? { since } : {}), typeFilters,
      ...(notices.length ? { notices } : {}),
    }, requestUrl(this.options.fhirBase, req));
    return {
      status: 202,
      headers: { 'Content-Location': this.statusUrl(job.id) },
      body: informational('Export started'),
    };
  }

  /**
   * The types `access` may export: a type named explicitly but not allowed is a 403; default types
   * not allowed are left out; none at all is a 403.
   */
  async authorizedTypes(access: AccessContext, types: string[], explicit: boolean): Promise<string[]> {
    const allowed: string[] = [];
    for (const t of types) {
      try {
        await this.options.reader.authorize(access, t);
        allowed.push(t);
      } catch (err) {
        if (!isGlucoGuardError(err, 'ERR_FORBIDDEN')) throw err;
        if (explicit) throw forbidden(`Not allowed to export ${t}`);
      }
    }
    if (allowed.length === 0) throw forbidden('Not allowed to export any of the requested types');
    return allowed;
  }

  /**
   * Records and queues a job for `access` (already authorized for `params.types`); the kick-off and
   * the `glucoguard export` command both come here.
   */
  submit(access: AccessContext, params: ExportParams, request: string): ExportJob {
    const job: ExportJob = {
      id: randomUUID(),
      owner: ownerOf(access),
      access: storedAccess(access as StoredAccess),
      request,
      params,
      status: 'queued',
      outputs: [],
      errors: [],
      createdAt: new Date(this.now()).toISOString(),
      attempts: 0,
    };
    this.store.put(job);
    this.enqueue(job.id);
    return job;
  }

  /** Resolves with the job once it is completed or failed (undefined when cancelled). */
  async whenDone(id: string, pollMs = 100): Promise<ExportJob | undefined> {
    for (;;) {
      const job = this.store.get(id);
      if (!job || job.status === 'completed' || job.status === 'failed') return job;
      await new Promise((r) => setTimeout(r, pollMs));
    }
  }

  /** Where a job's file lies on disk (operator tools). */
  filePath(jobId: string, file: string): string {
    return path.join(this.jobDir(jobId), file);
  }

  statusUrl(jobId: string): string {
    return `${this.options.fhirBase}/$export-status?_job=${jobId}`;
  }

  // ---- status and cancel ---------------------------------------------------------------------

  private ownJob(req: FhirRequest): ExportJob {
    const id = [req.query._job ?? []].flat()[0];
    const job = id ? this.store.get(id) : undefined;
    // Another requester's job looks exactly like no job; so does an expired one not swept yet.
    if (!job || job.owner !== ownerOf(req.access) || this.expired(job)) throw notFound('No such export job');
    return job;
  }

  async status(req: FhirRequest): Promise<FhirResponse> {
    const job = this.ownJob(req);
    const retryAfter = this.options.retryAfterSeconds;
    if (job.status === 'queued' || job.status === 'running') {
      const last = this.lastPoll.get(job.id);
      const now = this.now();
      if (last !== undefined && now - last < retryAfter * 1000) {
        const err = tooManyRequests(`Poll no more than once every ${retryAfter} s`);
        return { status: 429, headers: { 'Retry-After': String(retryAfter) }, body: operationOutcome(err.issues) };
      }
      this.lastPoll.set(job.id, now);
      return { status: 202, headers: { 'X-Progress': this.progress.get(job.id) ?? job.progress ?? job.status, 'Retry-After': String(retryAfter) } };
    }
    if (job.status === 'failed') {
      // Bulk Data IG, error status: 4XX or 5XX with an OperationOutcome; a client's error is told as such
      return {
        status: job.failureStatus ?? 500,
        body: operationOutcome([{ severity: 'error', code: job.failureCode ?? 'exception', diagnostics: job.failure ?? INTERNAL_FAILURE }]),
      };
    }
    // a manifest promises its files can be fetched: not once consent behind any of them has ended
    if (!(await this.releasable(job, jobAccess(job)))) throw withdrawn();
    const url = (f: OutputFile) => this.fileUrl(job.id, f.file);
    return {
      status: 200,
      // Bulk Data IG, complete status: "Content-Type header of application/json" (the manifest is no FHIR resource)
      headers: { 'Content-Type': 'application/json; charset=utf-8', Expires: new Date(this.expiresAt(job)!).toUTCString() },
      body: {
        transactionTime: job.transactionTime!,
        request: job.request,
        requiresAccessToken: true,
        output: job.outputs.map((f) => ({ type: f.type, url: url(f), count: f.count })),
        error: job.errors.map((f) => ({ type: f.type, url: url(f), count: f.count })),
      },
    };
  }

  async cancel(req: FhirRequest): Promise<FhirResponse> {
    const job = this.ownJob(req);
    this.cancelled.add(job.id);
    this.store.delete(job.id);
    rmSync(this.jobDir(job.id), { recursive: true, force: true });
    this.lastPoll.delete(job.id);
    return { status: 202, body: informational('Export cancelled; its files are deleted') };
  }

  private fileUrl(jobId: string, file: string): string {
    return `${this.options.filesBase}/${jobId}/${file}`;
  }

  /**
   * A completed job's file for the download route (http.ts), answered as its path on disk: only to
   * the job's owner (anyone else: 404, as for a missing file), while the token's scopes cover the
   * types it holds (403), and while every grant its data was let out under is in force (the job is
   * withdrawn otherwise: 410). Each attempt is recorded in the access log as a BALP Read of the
   * file — the owner's naming the patients whose data it holds; `requestId` names the HTTP request.
   */
  async download(access: AccessContext, jobId: string, file: string, requestId?: string): Promise<string> {
    // the access log names the job's requester with the purpose it ran for, the patients whose data
    // the file holds (refused or not), and consent's notes (grants, reasons)
    let recorded: AccessContext = access;
    let patients: string[] = [];
    let status = 200;
    try {
      const job = this.store.get(jobId);
      if (!job || job.status !== 'completed' || job.owner !== ownerOf(access) || this.expired(job)) throw notFound('No such export file');
      const entry = [...job.outputs, ...job.errors].find((f) => f.file === file);
      if (!entry) throw notFound('No such export file');
      const decided = jobAccess(job);
      recorded = decided;
      const released = job.released === undefined ? undefined : this.store.released(job.id);
      patients = [...(released?.keys() ?? [])];
      if (job.withdrawnAt) throw withdrawn();
      // Bulk Data: a file request is protected like the kick-off, "with scopes that cover all resources being exported"
      for (const type of entry.type === 'OperationOutcome' ? job.params.types : [entry.type]) await this.options.reader.authorize(access, type);
      if (!(await this.releasable(job, decided, released))) throw withdrawn();
      const full = path.join(this.jobDir(jobId), file);
      if (!existsSync(full)) throw notFound('No such export file');
      return full;
    } catch (err) {
      status = isGlucoGuardError(err) ? err.status : 500;
      throw err;
    } finally {
      this.options.audit?.({
        method: 'GET', path: EXPORT_FILE_PATH, query: { url: this.fileUrl(jobId, file), ...(patients.length ? { patient: patients } : {}) },
        headers: requestId ? { 'x-request-id': requestId } : {}, access: recorded,
      }, { status });
    }
  }

  /**
   * Decides again whether a completed job's data may still go to its requester: consent over the
   * patients and grants recorded with the job (`released`, read from the store when not given), for
   * the identity and purpose it ran for (`access`, a copy of the job's, collects the notes for the
   * access log). When not, the job is withdrawn at once: its files are deleted and it answers 410
   * from then on. ERR_UNAVAILABLE (undecidable) passes through and withdraws nothing.
   */
  private async releasable(job: ExportJob, access: AccessContext, released = job.released === undefined ? undefined : this.store.released(job.id)): Promise<boolean> {
    if (job.withdrawnAt) return false;
    if (await this.options.releases.stillReleasable(access, released)) return true;
    this.withdraw(job.id);
    return false;
  }

  /** Deletes a job's files, keeping its record (marked withdrawn) until its retention ends so it answers 410, not 404. */
  private withdraw(jobId: string): void {
    rmSync(this.jobDir(jobId), { recursive: true, force: true });
    const current = this.store.get(jobId);
    if (current && !current.withdrawnAt) {
      this.store.put({ ...current, withdrawnAt: new Date(this.now()).toISOString() });
      this.options.logger?.info({ job: jobId }, 'export: consent behind the job has ended; its files are deleted');
    }
  }

  /**
   * A job's file as its NDJSON, decrypted as it is read (sealed-file.ts). The stream errors when
   * the file on disk was altered or cut short; callers check who may read it first (download).
   */
  openFile(jobId: string, file: string): Readable {
    const opener = new FrameOpener(this.options.fileKey, `${jobId}/${file}`);
    const raw = createReadStream(this.filePath(jobId, file));
    raw.on('error', (err) => opener.destroy(err));
    opener.once('close', () => raw.destroy());
    return raw.pipe(opener);
  }

  /**
   * A job's file for a download that has passed `download`: as openFile, and while it goes out the
   * job's consent is decided again every `downloadRecheckMs`; once a grant behind it is revoked or
   * has ended the job is withdrawn and the stream ends with the 410 error (the client sees the
   * download cut off). A decision that cannot be made (ERR_UNAVAILABLE) lets it go on.
   */
  serveFile(jobId: string, file: string): Readable {
    const stream = this.openFile(jobId, file);
    const every = this.options.downloadRecheckMs ?? 2_000;
    let deciding = false;
    const timer = setInterval(() => {
      const job = this.store.get(jobId);
      if (deciding || !job) return;
      deciding = true;
      this.releasable(job, jobAccess(job)).then((ok) => {
        if (!ok) stream.destroy(withdrawn());
      }, () => undefined).finally(() => {
        deciding = false;
      });
    }, every);
    timer.unref();
    stream.once('close', () => clearInterval(timer));
    return stream;
  }

  // ---- running -------------------------------------------------------------------------------

  private jobDir(id: string): string {
    return path.join(this.options.dir, id);
  }

  private enqueue(id: string): void {
    this.queue.push(id);
    if (!this.running) this.running = this.drain().finally(() => { this.running = undefined; });
  }

  private async drain(): Promise<void> {
    for (let id = this.queue.shift(); id !== undefined && !this.closed; id = this.queue.shift()) {
      const job = this.store.get(id);
      if (!job || job.status !== 'queued') continue;
      try {
        await this.run(job);
      } catch (err) {
        if (this.closed) return; // resumes on the next start
        if (!this.store.get(id)) continue; // cancelled meanwhile
        rmSync(this.jobDir(id), { recursive: true, force: true });
        const attempts = job.attempts + 1;
        const outage = unavailability(err);
        if (outage && attempts < MAX_ATTEMPTS) {
          // an upstream that failed or went away part-way, or consent undecidable: the partial files
          // are gone, and the job runs again from the start once the wait is over
          const waitMs = (this.options.unavailableRetryMs ?? 15_000) * 2 ** (attempts - 1);
          this.options.logger?.warn({ job: id, attempt: attempts, waitMs, err: (err as Error).message }, 'export: job cut off by an unavailable repository; it runs again');
          this.store.put({
            ...job, status: 'queued', outputs: [], errors: [], attempts,
            progress: `waiting to run again: ${outage.diagnostics} (attempt ${attempts} of ${MAX_ATTEMPTS})`,
          });
          this.retryLater(id, waitMs);
          continue;
        }
        this.options.logger?.error({ job: id, err: (err as Error).message }, 'export: job failed');
        // a client's error (a filter the repository refused) is told to the client, and so is an
        // outage that outlasted every attempt, with its status (502/503/504) but as `processing`:
        // the job has failed for good, and a transient code would tell the client to poll again
        // (Bulk Data IG, status request: transient codes are for polls that failed, not jobs)
        const told = isGlucoGuardError(err) && err.status < 500 ? err.issues[0] : undefined;
        const failure = told?.diagnostics
          ?? (outage ? `The export could not be completed after ${attempts} attempts: ${outage.diagnostics}. Start a new export later` : INTERNAL_FAILURE);
        const failureCode = told?.code ?? (outage ? 'processing' : undefined);
        this.store.put({
          ...job, status: 'failed', outputs: [], errors: [], attempts, failure,
          ...(failureCode ? { failureStatus: (err as GlucoGuardError).status, failureCode } : {}),
        });
      } finally {
        this.progress.delete(id);
        this.cancelled.delete(id);
      }
    }
  }

  /** Queues a job again after `ms` (unless cancelled or closing meanwhile). */
  private retryLater(id: string, ms: number): void {
    const timer = setTimeout(() => {
      this.retries.delete(timer);
      if (!this.closed) this.enqueue(id);
    }, ms);
    timer.unref();
    this.retries.add(timer);
  }

  /** Runs one job to completion; throws on failure, returns quietly when cancelled or closing. */
  async run(queued: ExportJob): Promise<void> {
    const { progress: _waiting, ...rest } = queued;
    const job: ExportJob = { ...rest, status: 'running', transactionTime: new Date(this.now()).toISOString(), attempts: queued.attempts + 1, outputs: [], errors: [] };
    this.store.put(job);
    const dir = this.jobDir(job.id);
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    // One access object for the whole run: consent notes on it feed the access-log entry.
    const access: StoredAccess = { ...job.access, scopes: [...job.access.scopes] };
    const deid = this.options.deidentifiers.forAccess(access);
    const stop = (): boolean => this.closed || this.cancelled.has(job.id);
    const sealed = (file: string) => new NdjsonFile(path.join(dir, file), this.options.fileKey, `${job.id}/${file}`);
    const errors = sealed('errors.ndjson');
    let errorCount = 0;
    // whose data the files hold and under which grants: a patient set per job, never per resource
    const released = new Map<string, Set<string>>();
    const openPatients = new Set<string>();
    try {
      // what the kick-off left out (Prefer: handling=lenient), told in the error file
      for (const notice of job.params.notices ?? []) {
        await errors.write(operationOutcome([{ severity: 'warning', code: 'not-supported', diagnostics: notice }]));
        errorCount++;
      }
      // the Group's members once for the job, read (and guarded) as the requester; what reading it let out is not in the files
      const members = job.params.level === 'group' ? await this.groupMembers(access, job.params.groupId!) : undefined;
      // A requester consent limits (a grantee, a patient) is read only for the patients it may see
      // some data of: listing every stored patient once per type, to search each, cost an upstream
      // EHR of 100,000 patients that many searches for a study two of them granted.
      const visible = members ? undefined : await this.options.releases.visiblePatients?.(access);
      this.options.releases.takeReleased(access);
      for (const type of job.params.types) {
        // a _typeFilter's chains select as the requester's search would, now; a query that selects
        // nothing adds nothing, and when none selects anything nothing of the type is exported
        const asked = typeFiltersOf(job.params, type);
        const filters: TypeFilterQuery[] = [];
        for (const one of asked) {
          const resolved = await this.options.reader.resolved(access, type, one);
          if (resolved) filters.push(resolved);
        }
        if (asked.length > 0 && filters.length === 0) continue;
        this.options.releases.takeReleased(access); // what resolving the filters read is not in the file
        const queries = (filters.length ? filters : [{}]).map((filter) => {
          const query: TypeFilterQuery = { ...filter };
          if (job.params.since) query._lastUpdated = [[query._lastUpdated ?? []].flat(), `gt${job.params.since}`].flat();
          return query;
        });
        const patients = members ?? (GuardedReader.isPatientLinked(type) ? (visible ? [...visible].sort() : this.patientIds()) : undefined);
        const file = `${type}.ndjson`;
        const out = sealed(file);
        let count = 0;
        try {
          for await (const page of this.options.reader.pagesOfAny(access, type, queries, patients)) {
            if (stop()) return;
            if (page.resources.length) {
              await out.writeAll(deid ? page.resources.map((r) => deid.apply(r)) : page.resources);
              count += page.resources.length;
              // open access notes no consent releases: whose data went out is read off the resources
              if (access.kind === 'open') {
                for (const r of page.resources) {
                  const owner = patientHint(r);
                  if (owner) openPatients.add(owner);
                }
              }
            }
            if (page.issues.length) {
              // the issues name versions by id: a research export's by their pseudonyms
              await errors.write(operationOutcome(deid ? page.issues.map((i) => deid.issue(i)) : page.issues));
              errorCount++;
            }
            this.progress.set(job.id, `${type}: ${count} resources`);
          }
        } finally {
          await out.close();
        }
        for (const [patient, grants] of this.options.releases.takeReleased(access)) {
          const into = released.get(patient) ?? new Set<string>();
          for (const g of grants) into.add(g);
          released.set(patient, into);
        }
        if (count > 0) job.outputs.push({ type, file, count });
        else rmSync(out.path, { force: true });
      }
    } finally {
      await errors.close();
    }
    if (stop()) return;
    if (errorCount > 0) job.errors.push({ type: 'OperationOutcome', file: 'errors.ndjson', count: errorCount });
    else rmSync(errors.path, { force: true });
    for (const f of [...job.outputs, ...job.errors]) renameSync(path.join(dir, `${f.file}.part`), path.join(dir, f.file));
    if (!this.store.get(job.id)) return; // cancelled while finishing
    this.store.putReleased(job.id, released);
    this.store.put({ ...job, status: 'completed', completedAt: new Date(this.now()).toISOString(), released: released.size });
    this.options.logger?.info({ job: job.id, files: job.outputs.length, resources: job.outputs.reduce((n, f) => n + f.count, 0) }, 'export: job completed');
    // the access log names every patient whose data the files hold (an operator's export too), so it is in each one's log
    const named = access.kind === 'open' ? [...openPatients] : [];
    this.options.audit?.({ method: 'GET', path: '$export', query: named.length ? { patient: named } : {}, headers: {}, access }, { status: 200 });
  }

  /**
   * The active Patient members of a Group the requester may read. One they may not read answers
   * exactly as one never stored (404), so the kick-off tells no one whether a Group id exists; a
   * requester who may not read Groups at all gets the read's 403 whatever the id.
   */
  private async groupMembers(access: AccessContext, groupId: string): Promise<string[]> {
    await this.options.reader.authorizeRead(access, 'Group');
    let group: Group;
    try {
      group = await this.options.repository.read<Group>('Group', groupId);
    } catch (err) {
      if (isGlucoGuardError(err, 'ERR_NOT_FOUND') || isGlucoGuardError(err, 'ERR_GONE')) throw notFound('Group not found');
      throw err;
    }
    if (!(await this.options.reader.readable(access, group))) throw notFound('Group not found');
    const ids = (group.member ?? []).filter((m) => !m.inactive)
      .map((m) => /^Patient\/([A-Za-z0-9\-.]{1,64})$/.exec(m.entity?.reference ?? '')?.[1])
      .filter((id): id is string => !!id);
    return [...new Set(ids)];
  }

  /** Every stored Patient id (in-process, ids only; what leaves is decided per resource). */
  private async *patientIds(): AsyncGenerator<string> {
    const pageSize = 1000;
    for (let offset = 0; ; offset += pageSize) {
      const result = await this.options.repository.search({ resourceType: 'Patient', count: pageSize, offset, sortRules: [{ code: '_id' }] });
      for (const r of result.resources) if (r.id) yield r.id;
      if (!result.hasMore) return;
    }
  }
}

/** Token parameters that match who someone is (ids, identifiers, contact details), not what was measured. */
const IDENTIFYING_TOKENS = new Set(['_id', 'identifier', 'telecom', 'phone', 'email', 'altid']);

/**
 * Whether a research export's `_typeFilter` may select by this parameter (`code[:modifier]`, or a
 * `_has:Type:ref:param` reverse chain, decided on its last parameter). Allowed only what describes the
 * data, never the person: tokens other than ids, identifiers and contact details (not `:text`, which
 * matches free text), quantities, numbers, code/quantity composites, meta tags and profiles, and dates
 * that are neither a Patient's (an exact birth date is beyond Safe Harbor's year) nor shifted in the
 * files (a filter by the real date would undo the shift). Everything else — strings (names, addresses,
 * free text), references, uris, chains, ids — is refused: whatever a study selects by, it learns the
 * pseudonyms of, so anything not known to be harmless fails closed.
 */
export function researchMaySelectBy(type: string, key: string, dateShift: boolean): boolean {
  if (key.startsWith('_has:')) {
    const [, target, ref, ...rest] = key.split(':');
    if (!target || !ref || rest.length === 0 || getSearchParameter(target, ref)?.type !== 'reference') return false;
    return researchMaySelectBy(target, rest.join(':'), dateShift);
  }
  const [code = '', modifier, ...more] = key.split(':');
  if (more.length || code.includes('.') || IDENTIFYING_TOKENS.has(code)) return false;
  if (modifier !== undefined && !['missing', 'not', 'above', 'below', 'in', 'not-in', 'of-type'].includes(modifier)) return false;
  // _lastUpdated selects by when a version was stored, as _since does
  if (code === '_tag' || code === '_security' || code === '_profile' || code === '_lastUpdated') return true;
  const param = getSearchParameter(type, code);
  switch (param?.type) {
    case 'token':
    case 'quantity':
    case 'number':
      return true;
    case 'composite':
      return /-(concept|quantity)$/.test(code);
    case 'date':
      return !dateShift && type !== 'Patient';
    default:
      return false;
  }
}

/** An NDJSON file written sealed (sealed-file.ts) as `<path>.part` with back-pressure. */
class NdjsonFile {
  private stream: WriteStream | undefined;
  private frames = 0;

  /** `label`: the job and file the frames are bound to. */
  constructor(readonly path: string, private readonly key: Buffer, private readonly label: string) {}

  async write(resource: Resource): Promise<void> {
    await this.writeText(`${JSON.stringify(resource)}\n`);
  }

  /** One page as one chunk (far fewer stream writes than a line each). */
  async writeAll(resources: Resource[]): Promise<void> {
    let text = '';
    for (const r of resources) text += `${JSON.stringify(r)}\n`;
    await this.writeText(text);
  }

  private failure: Error | undefined;

  private async writeText(text: string): Promise<void> {
    const frame = sealFrame(this.key, this.label, this.frames++, text);
    if (!this.stream) {
      this.stream = createWriteStream(`${this.path}.part`, { mode: 0o600 });
      // e.g. the job directory removed by a cancel: the job stops at its next write
      this.stream.on('error', (err) => { this.failure = err; });
    }
    if (this.failure) throw this.failure;
    this.stream.cork();
    let room = true;
    for (const piece of frame) room = this.stream.write(piece);
    this.stream.uncork();
    if (!room) {
      const s = this.stream;
      await new Promise<void>((resolve) => {
        const done = (): void => {
          s.off('drain', done);
          s.off('error', done);
          resolve();
        };
        s.once('drain', done);
        s.once('error', done);
      });
      if (this.failure) throw this.failure;
    }
  }

  async close(): Promise<void> {
    if (!this.stream || this.stream.destroyed) return;
    const s = this.stream;
    for (const piece of sealFrame(this.key, this.label, this.frames, '', true)) s.write(piece);
    await new Promise<void>((resolve) => s.end(() => resolve()));
    if (this.failure) throw this.failure;
  }
}

/** A fresh copy of the access a job ran with: the consent notes of one decision hang off it. */
function jobAccess(job: ExportJob): StoredAccess {
  return { ...job.access, scopes: [...job.access.scopes] };
}

/**
 * The queries of `_typeFilter` values: each value is a comma-separated list of `Type?query`
 * (Bulk Data IG export.html#_typefilter), already URL-decoded once, so a comma inside a query's own
 * value still arrives encoded (`code=a%2Cb`) and decodes only when the query is parsed. A comma
 * starts a new query only where `Type?` follows it; any other (a client that left a value's comma
 * unencoded) stays inside its query, where it is that parameter's own OR.
 */
export function typeFilterQueries(values: string[]): string[] {
  return values.flatMap((v) => v.split(/,(?=[A-Z][A-Za-z]{0,63}\?)/)).map((q) => q.trim()).filter(Boolean);
}

/** A client error about one `_typeFilter` query, naming it. */
function aboutFilter(err: unknown, text: string): unknown {
  if (!isGlucoGuardError(err) || err.status >= 500 || err.code === 'ERR_FORBIDDEN') return err;
  const label = `_typeFilter "${text.slice(0, 200)}"`;
  return new GlucoGuardError(err.code, `${label}: ${err.message}`, err.issues.map((i) => ({ ...i, diagnostics: `${label}: ${i.diagnostics ?? 'invalid'}`, expression: ['_typeFilter'] })));
}

/**
 * The issue of an outage that may pass — the upstream failed (502), timed out (504) or was
 * unavailable, or consent could not be decided (503) — whose text is what any FHIR client is told
 * of it; undefined for any other failure.
 */
function unavailability(err: unknown): OperationOutcomeIssue | undefined {
  return isPassingOutage(err) ? err.issues[0] : undefined;
}

/** 410: the job's data may no longer go out; its files are deleted. */
function withdrawn(): GlucoGuardError {
  return gone('Consent for data in this export has been revoked or has ended since it ran, so its files have been deleted. '
    + 'Start a new export to receive the data that is shared now.');
}

/** Whether the client lets the server leave out what it cannot serve (`Prefer: handling=lenient`). */
function lenient(req: FhirRequest): boolean {
  return /(?:^|[\s,;])handling\s*=\s*"?lenient"?(?:$|[\s,;])/i.test(req.headers.prefer ?? '');
}

/** `_type`, `_since`, `_typeFilter`, `_outputFormat` from the query (GET) or a Parameters body (POST). */
function exportParameters(req: FhirRequest): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  const add = (k: string, v: string): void => {
    (out[k] ??= []).push(v);
  };
  for (const [k, v] of Object.entries(req.query)) for (const one of [v].flat()) add(k, one);
  if (req.method === 'POST' && req.body !== undefined) {
    const body = req.body as Parameters;
    if (body?.resourceType !== 'Parameters') throw badRequest('POST $export takes a Parameters resource');
    for (const p of body.parameter ?? []) {
      const v = p.valueString ?? p.valueInstant ?? p.valueCode ?? p.valueReference?.reference;
      if (p.name && v !== undefined) add(p.name, v);
    }
  }
  for (const k of Object.keys(out)) {
    if (!['_type', '_since', '_typeFilter', '_outputFormat', '_format', '_pretty'].includes(k)) {
      throw badRequest(`Unsupported $export parameter "${k.slice(0, 64)}"`, k);
    }
  }
  for (const k of ['_since', '_outputFormat']) if ((out[k]?.length ?? 0) > 1) throw badRequest(`${k} given more than once`, k);
  return out;
}

function requestUrl(fhirBase: string, req: FhirRequest): string {
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(req.query)) for (const one of [v].flat()) qs.append(k, one);
  const s = qs.toString();
  return `${fhirBase}/${req.path}${s ? `?${s}` : ''}`;
}
