/**
 * The CGM ingest service: source file → records (streaming parse) → CGM IG resources → shape-cached
 * profile validation → idempotent storage through the Repository port.
 *
 * Idempotency without one conditional create per reading: each chunk's identifiers are looked up
 * with one search (`identifier=sys|a,sys|b,…`); a reading whose identifier exists with the same
 * content is *unchanged*, with different content it becomes a new version of that resource
 * (*corrected*: an update, the old version stays readable by vread), otherwise it is *created*.
 * Devices are conditional creates (`ifNoneExist`). A reading stored without a Device that the file
 * now names one for (meter readings stored before session 21, when a meter got no Device) becomes a
 * new version referencing it (*linked*): re-sending the file is the migration, as only the file
 * says which meter took a reading. Ingests of one patient run one at a time, so two
 * concurrent imports of the same file cannot both create a reading.
 *
 * A removal (`remove`) reads the file the same way and deletes the readings of it that are stored
 * with the same content: it undoes an import (readings' identifiers hold their instants, so a file
 * read in the wrong time zone is removed by reading it again in that zone).
 *
 * A dry run (`dryRun`) goes the same way up to the writes and makes none: its report says what the
 * import would create, leave unchanged and correct (a preview that shows a wrong time zone before
 * anything is stored under it).
 *
 * All-or-nothing by default: a file with any rejected record stores nothing. A file path (or a
 * spooled upload, spool.ts) larger than HOLD_BYTES is read twice (check, then store) so memory
 * stays bounded; smaller ones and plain streams are held in memory until the whole file is checked. `partial` stores the good records chunk by chunk as they arrive.
 * A storage failure after some chunks leaves those chunks stored; re-running the import completes
 * it without duplicates. So does `stop()` (a server shutting down, an operator's Ctrl-C): an import
 * ends at the next chunk boundary — the chunk being written is finished, the one being gathered is
 * dropped — and says how many readings it stored (ImportInterrupted, a 503 with Retry-After).
 */
import { statSync } from 'node:fs';
import { Operator } from '@medplum/core';
import type { Bundle, BundleEntry, Device, Resource } from '@medplum/fhirtypes';
import type { Repository } from '../repository/port.js';
import { GlucoGuardError, isGlucoGuardError, preconditionFailed, tooLarge, unavailable } from '../errors.js';
import { isStorageFull } from '../fhir/outcomes.js';
import type { CgmInput } from './input.js';
import { openCgm, type CgmStream } from './parse.js';
import { CgmInputError } from './json-stream.js';
import { deviceRole, toDevice, toMedicationAdministration, toObservation, type ConvertContext, type ConvertedEntry } from './fhir.js';
import type { IngestIssue, IngestSummary, ParseOptions } from './types.js';
import { sameContent } from './stable-json.js';
import { isReopenable, type ReopenableInput } from './spool.js';
import type { ResourceCheck } from './validate.js';
import type { ImportTurns } from './turns.js';

/** Files up to this size are checked and held in memory; larger files are read twice. */
export const HOLD_BYTES = 32 * 1024 * 1024;

/** Readings per storage transaction. */
export const INGEST_CHUNK = 2000;
/**
 * Records converted between turns of the event loop. Parsing an in-memory upload and storing it
 * settle as microtasks, so without a turn a large import held the process — every other request,
 * health checks and SIGTERM — for its whole length (11 s for 60,000 readings); now at most one
 * storage transaction (~0.2 s) or this many conversions at a time.
 */
const YIELD_EVERY = 250;

/**
 * Seconds a client whose import a shutdown stopped is told to wait before sending the file again:
 * about as long as a restart takes (behind a load balancer another replica takes it at once).
 */
export const RESEND_AFTER_SECONDS = 10;

/**
 * An import ended by `CgmIngestService.stop()` at a chunk boundary: `stored` readings of the file
 * (whole chunks, committed like any write) are kept, and sending the file again stores the rest —
 * what is already stored counts as unchanged. A removal (IngestOptions.remove) says the same of the
 * readings it removed. 503 with Retry-After.
 */
export class ImportInterrupted extends GlucoGuardError {
  constructor(readonly stored: number, reason: string, removing = false) {
    super('ERR_UNAVAILABLE', removing
      ? `${reason}: ${stored ? `${stored} readings of this file were removed before the removal stopped` : 'nothing of this file was removed'}; `
        + `send the file again${stored ? ' to remove the rest' : ''} (what is removed already counts as not stored)`
      : `${reason}: ${stored ? `${stored} readings of this file were stored before the import stopped and are kept` : 'nothing of this file was stored'}; `
        + `send the file again${stored ? ' to store the rest' : ''} (what is already stored counts as unchanged)`);
    this.name = 'ImportInterrupted';
    this.headers = { 'Retry-After': String(RESEND_AFTER_SECONDS) };
  }
}

/** Lets the event loop run what is waiting (I/O, timers) before the import goes on. */
function turn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

export interface IngestOptions extends Omit<ParseOptions, 'defaultTimeZone'> {
  /** Bare id of the Patient the readings belong to (it must exist). */
  patient: string;
  /** Store the good records and report the rest (default: a file with a rejected record stores nothing). */
  partial?: boolean;
  /**
   * Remove the file's readings instead of storing them: each reading of the file, read with these
   * options, that is stored with the same content is deleted (a deleted version; history keeps the
   * earlier ones); one stored with other content (corrected since) is kept, and Devices stay. It
   * undoes an import, one read in the wrong time zone for example. Needs delete access over HTTP.
   */
  remove?: boolean;
  /**
   * Check and compare only: the report says what the import would do (its counts, the readings'
   * first and last instants, the time zone applied) and nothing is written.
   */
  dryRun?: boolean;
  /** Called after each stored chunk and every few thousand records checked. */
  onProgress?: (progress: IngestProgress) => void;
}

export interface IngestProgress {
  /**
   * `checking`: first pass over a file (nothing stored yet); `storing`: records are being written;
   * `removing`: stored readings of the file are being removed (IngestOptions.remove); `comparing`: a
   * dry run's records are being compared with what is stored (nothing is written).
   */
  phase: 'checking' | 'storing' | 'removing' | 'comparing';
  /** Records read from the source so far in this phase. */
  read: number;
  /** Resources written or matched so far (created + unchanged + corrected; in a dry run, compared). */
  stored: number;
  /** Records expected in the storing phase, when a checking pass counted them. */
  total?: number;
}

/** What an import did: the parser's counts plus what happened in the store. */
export interface IngestReport extends IngestSummary {
  /** False when the file was rejected (nothing stored). */
  accepted: boolean;
  partial: boolean;
  /** True for a dry run (IngestOptions.dryRun): the counts below say what the import would do; nothing was stored. */
  dryRun: boolean;
  patient: string;
  /** Readings and doses newly stored. */
  created: number;
  /** Readings already stored with the same content. */
  unchanged: number;
  /** Readings stored with a different value: now a new version. */
  corrected: number;
  /** Readings stored without a Device that the file names one for: now a new version referencing it, value unchanged. */
  linked: number;
  /** Devices created in this import (existing ones are matched). */
  devicesCreated: number;
  /** True when the file's readings were removed (IngestOptions.remove), not stored; the counts above are then 0. */
  remove: boolean;
  /** With `remove`: readings stored with the file's content, deleted (in a dry run, that would be). */
  removed?: number;
  /** With `remove`: readings stored with other content (corrected since the file was imported): kept. */
  changedSince?: number;
  /** With `remove`: readings of the file that are not stored (never imported, or removed already). */
  notStored?: number;
}

export interface CgmIngestServiceDeps {
  repository: Repository;
  /** Full validation wrapped in `shapeCachedCheck`. */
  check: ResourceCheck;
  /** Zone for device-local timestamps when none is given (config.defaultTimeZone). */
  defaultTimeZone: string;
  /** Records per transaction (default INGEST_CHUNK). */
  chunkSize?: number;
  /** Files larger than this are read twice instead of held in memory (default HOLD_BYTES). */
  holdBytes?: number;
  /**
   * The repository's bulk insert, when it has one (embedded `createMany`): new readings skip the
   * transaction machinery (bundle copy, reference rewriting), about a tenth of the storage cost.
   */
  bulkCreate?: (resources: Resource[]) => Promise<unknown>;
  /** A patient's turn at imports among the processes on the data directory (turns.ts); without it, within this process only. */
  turns?: ImportTurns;
}

type Sink = (entries: ConvertedEntry[], devices: ConvertedEntry<Device>[]) => Promise<void>;

export class CgmIngestService {
  private readonly locks = new Map<string, Promise<unknown>>();
  private readonly chunkSize: number;
  private readonly stopping = new AbortController();
  private stopReason = 'The import was stopped';
  /** Imports called and not ended yet, queued behind another of the same patient or running. */
  private readonly imports = new Set<Promise<IngestReport>>();

  constructor(private readonly deps: CgmIngestServiceDeps) {
    this.chunkSize = deps.chunkSize ?? INGEST_CHUNK;
  }

  /**
   * Imports one source file for a patient. Throws ERR_INVALID for an unknown format, bad options or
   * malformed input (naming the line), ERR_NOT_FOUND when the patient does not exist. A file with
   * rejected records answers `accepted: false` (use `rejectionError(report)` to turn it into a 422).
   */
  async ingest(input: CgmInput | ReopenableInput, options: IngestOptions): Promise<IngestReport> {
    this.throwIfStopped();
    const job = this.deps.repository.read('Patient', options.patient).then(() => this.serialized(options.patient, () => this.inTurn(options.patient, options.remove === true, () => this.run(input, options))));
    this.imports.add(job);
    try {
      return await job;
    } finally {
      this.imports.delete(job);
    }
  }

  /**
   * Stops imports at the next chunk boundary (file comment): each one running or queued ends with
   * ImportInterrupted saying how many readings it stored, with `reason` as its first words ("The
   * server is stopping"), and any later one is refused the same way. Resolves once they have all
   * ended, with what each interrupted one stored.
   */
  async stop(reason: string): Promise<number[]> {
    if (!this.stopping.signal.aborted) {
      this.stopReason = reason;
      this.stopping.abort();
    }
    const ended = await Promise.allSettled([...this.imports]);
    return ended.flatMap((e) => (e.status === 'rejected' && e.reason instanceof ImportInterrupted ? [e.reason.stored] : []));
  }

  /** Aborted once `stop` is called: a reader of an upload stops waiting for its bytes. */
  get stopSignal(): AbortSignal {
    return this.stopping.signal;
  }

  /** Throws ImportInterrupted (nothing stored) once `stop` was called: a new import is refused before its upload is read. */
  throwIfStopped(): void {
    if (this.stopping.signal.aborted) throw new ImportInterrupted(0, this.stopReason);
  }

  /**
   * Runs an import; when it ends part-way, says how much of the file was stored (each chunk of
   * INGEST_CHUNK is whole and kept) and that sending it again stores the rest: a data disk that
   * filled (503), or `stop()` (ImportInterrupted, thrown wherever the import noticed it with no
   * count yet: at a chunk boundary, or by the upload it was reading). A partial import of an upload
   * past the size limit (413) says what it stored too, and a removal that met a reading changed
   * meanwhile (412) what it removed.
   */
  private async accounted<T>(stored: () => number, removing: boolean, work: () => Promise<T>): Promise<T> {
    try {
      return await work();
    } catch (err) {
      if (err instanceof ImportInterrupted) throw new ImportInterrupted(stored(), this.stopReason, removing);
      const kept = stored();
      const done = removing ? 'removed' : 'stored';
      if (removing && isGlucoGuardError(err, 'ERR_PRECONDITION_FAILED')) {
        // a chunk's deletion found a reading at another version than compared (removeChunk): none of that chunk was deleted
        throw preconditionFailed(`A reading of this file was changed while its readings were being removed${kept ? `: ${kept} readings of this file were removed before it` : ''}; `
          + 'send the file again to remove the rest (a reading changed since is kept)');
      }
      if (isGlucoGuardError(err, 'ERR_TOO_LARGE') && kept) {
        // a partial import of an upload past the size limit, stored as it came
        throw tooLarge(`${err.message}: ${kept} readings of this file were ${done} before the limit${removing ? '' : ' and are kept'}; send the rest as another file`);
      }
      if (!isStorageFull(err)) throw err;
      throw unavailable(`The server has no storage space left${kept ? `: ${kept} readings of this file were ${done} before it ran out${removing ? '' : ' and are kept'}` : ''}; `
        + `send the file again once there is space (${removing ? 'what is removed already counts as not stored' : 'what is already stored counts as unchanged'})`);
    }
  }

  /** Files larger than this are read twice rather than held in memory. */
  get holdBytes(): number {
    return this.deps.holdBytes ?? HOLD_BYTES;
  }

  private async run(source: CgmInput | ReopenableInput, options: IngestOptions): Promise<IngestReport> {
    const counts: StoreCounts = { created: 0, unchanged: 0, corrected: 0, linked: 0, devicesCreated: 0, removed: 0, changedSince: 0, notStored: 0 };
    const stored = () => counts.created + counts.unchanged + counts.corrected + counts.linked + counts.removed + counts.changedSince + counts.notStored;
    // a dry run that ends part way stored nothing, whatever it had compared; a removal counts what it removed
    const done = options.dryRun ? () => 0 : options.remove ? () => counts.removed : stored;
    return this.accounted(done, options.remove === true, () => this.runCounted(source, options, counts, stored));
  }

  private async runCounted(source: CgmInput | ReopenableInput, options: IngestOptions, counts: StoreCounts, stored: () => number): Promise<IngestReport> {
    this.throwIfStopped(); // queued behind another import of the patient while the stop came
    const input = (): CgmInput => (isReopenable(source) ? source.reopen() : source);
    const size = isReopenable(source) ? source.size : typeof source === 'string' ? statSync(source).size : undefined;
    const parse: ParseOptions = { ...options, defaultTimeZone: this.deps.defaultTimeZone };
    const ctx: ConvertContext = { patient: `Patient/${options.patient}` };
    const partial = options.partial === true;
    const progress = options.onProgress ?? (() => undefined);
    const devices = new Map<string, string>(); // device fullUrl → Device/id
    const formers: FormerMatches = { rewritten: new Set(), matched: new Map() };
    const dryRun = options.dryRun === true;
    const storing = dryRun ? 'comparing' : options.remove ? 'removing' : 'storing';
    const remove = options.remove === true;
    const store: Sink = remove ? (entries) => this.removeChunk(entries, counts, dryRun)
      : (entries, devs) => this.storeChunk(entries, devs, devices, counts, formers, dryRun);
    const report = (summary: IngestSummary, accepted: boolean): IngestReport => {
      const { removed, changedSince, notStored, ...stores } = counts;
      return { accepted, partial, dryRun, patient: options.patient, ...stores, remove, ...(remove ? { removed, changedSince, notStored } : {}), ...summary };
    };

    if (partial) {
      const summary = await this.pass(await openCgm(input(), parse), ctx, store, (read) => progress({ phase: storing, read, stored: stored() }), true);
      return report(summary, true);
    }
    if (size !== undefined && size > this.holdBytes) {
      // A large file is read twice: check everything first, then store, memory bounded.
      const checked = await this.pass(await openCgm(input(), parse), ctx, async () => undefined, (read) => progress({ phase: 'checking', read, stored: 0 }));
      if (checked.rejected > 0) return report(checked, false);
      const summary = await this.pass(await openCgm(input(), parse), ctx, store,
        (read) => progress({ phase: storing, read, stored: stored(), total: checked.read }));
      return report(summary, true);
    }
    const held: ConvertedEntry[] = [];
    const heldDevices: ConvertedEntry<Device>[] = [];
    const summary = await this.pass(await openCgm(input(), parse), ctx, async (entries, devs) => {
      held.push(...entries);
      heldDevices.push(...devs);
    }, (read) => progress({ phase: 'checking', read, stored: 0 }));
    if (summary.rejected > 0) return report(summary, false);
    for (let i = 0; i < held.length || (i === 0 && heldDevices.length); i += this.chunkSize) {
      this.throwIfStopped();
      await store(held.slice(i, i + this.chunkSize), i === 0 ? heldDevices : []);
      progress({ phase: storing, read: summary.read, stored: stored(), total: held.length });
      await turn();
    }
    return report(summary, true);
  }

  /**
   * One pass over the source: convert and validate each record, hand chunks to the sink. With
   * `partial` (good records stored as they come), a source that becomes unreadable part way (a
   * truncated or malformed file: CgmInputError) ends the pass as one rejected issue naming where,
   * once what was read before it is stored: the answer says what was kept, never a 400 over stored
   * data. Without it the error is thrown, and nothing has been stored yet.
   */
  private async pass(stream: CgmStream, ctx: ConvertContext, sink: Sink, progress: (read: number) => void, partial = false): Promise<IngestSummary> {
    const summary = stream.summary;
    const devices = new Map<string, ConvertedEntry<Device>>();
    let newDevices: ConvertedEntry<Device>[] = [];
    let chunk: ConvertedEntry[] = [];
    const reject = (pos: { record: number; line?: number }, issues: ReturnType<ResourceCheck>): void => {
      summary.converted--;
      summary.rejected++;
      summary.rejectedByReason['invalid-record'] = (summary.rejectedByReason['invalid-record'] ?? 0) + 1;
      const where = pos.line !== undefined ? `record ${pos.record} (line ${pos.line})` : `record ${pos.record}`;
      const first = issues.find((i) => i.severity === 'error' || i.severity === 'fatal');
      // The validator's diagnostics name paths and rules, never values of the record.
      const entry: IngestIssue = { kind: 'rejected', reason: 'invalid-record', record: pos.record, message: `${where}: does not conform to its profile: ${first?.diagnostics ?? 'invalid'}`, ...(pos.line !== undefined ? { line: pos.line } : {}) };
      summary.issues.push(entry);
    };
    let lastProgress = 0;
    try {
      for await (const rec of stream) {
        let entry: ConvertedEntry;
        if (rec.kind === 'glucose') {
          let device: ConvertedEntry<Device> | undefined;
          const role = deviceRole(rec);
          if (role) {
            const key = `${role}\u0000${rec.source}\u0000${rec.deviceId}`;
            device = devices.get(key);
            if (!device) {
              device = toDevice(rec, ctx, role);
              const problems = errors(this.deps.check(device.resource));
              if (problems.length) {
                reject(rec, problems);
                continue;
              }
              devices.set(key, device);
              newDevices.push(device);
            }
          }
          entry = toObservation(rec, ctx, device ? { reference: device.fullUrl } : undefined);
        } else entry = toMedicationAdministration(rec, ctx);
        const problems = errors(this.deps.check(entry.resource));
        if (problems.length) {
          reject(rec, problems);
          continue;
        }
        chunk.push(entry);
        if (chunk.length >= this.chunkSize) {
          this.throwIfStopped();
          await sink(chunk, newDevices);
          chunk = [];
          newDevices = [];
          progress(summary.read);
          lastProgress = summary.read;
          await turn();
        } else {
          if (summary.read - lastProgress >= 5000) {
            progress(summary.read);
            lastProgress = summary.read;
          }
          if (chunk.length % YIELD_EVERY === 0) {
            await turn();
            this.throwIfStopped(); // the chunk being gathered is dropped, never stored in part
          }
        }
      }
    } catch (err) {
      if (!partial || !(err instanceof CgmInputError)) throw err;
      summary.rejected++;
      summary.rejectedByReason['unreadable-input'] = (summary.rejectedByReason['unreadable-input'] ?? 0) + 1;
      summary.issues.push({ kind: 'rejected', reason: 'unreadable-input', record: err.record ?? summary.read, message: `${err.message}; the rest of the source was not read`, ...(err.line !== undefined ? { line: err.line } : {}) });
    }
    if (chunk.length || newDevices.length) {
      this.throwIfStopped();
      await sink(chunk, newDevices);
    }
    progress(summary.read);
    return summary;
  }

  /**
   * Stores one chunk: devices by conditional create, readings by bulk identifier lookup. A reading
   * with a former identifier (a LibreView scan, ConvertedEntry.formerIdentifier) not found under its
   * own is the reading stored under the former one when the content is the same — unless this import
   * corrects that resource: then it was the historic reading of the scan's minute, which the scan
   * had been stored in place of, and the scan is stored on its own (FormerMatches). Such readings
   * are decided after the rest of their chunk.
   */
  private async storeChunk(entries: ConvertedEntry[], newDevices: ConvertedEntry<Device>[], devices: Map<string, string>,
    counts: StoreCounts, formers: FormerMatches, dryRun: boolean): Promise<void> {
    const repo = this.deps.repository;
    const pendingDevices = newDevices.filter((d) => !devices.has(d.fullUrl));
    if (pendingDevices.length && dryRun) {
      // the same match as the conditional create below (on the identifier), without creating: a
      // device that would be new keeps its bundle fullUrl as the readings' reference
      const stored = await this.findExisting(pendingDevices);
      for (const d of pendingDevices) {
        const id = stored.get(identifierOf(d.resource) ?? '')?.id;
        if (!id) counts.devicesCreated++;
        devices.set(d.fullUrl, id ? `Device/${id}` : d.fullUrl);
      }
    } else if (pendingDevices.length) {
      const response = await repo.transaction(transaction(pendingDevices.map((d) => ({
        fullUrl: d.fullUrl, resource: d.resource, request: { method: 'POST', url: 'Device', ifNoneExist: d.ifNoneExist },
      }))));
      pendingDevices.forEach((d, i) => {
        const e = response.entry?.[i];
        const id = e?.resource?.id ?? /^Device\/([^/]+)/.exec(e?.response?.location ?? '')?.[1];
        if (!id) throw new Error('device transaction returned no id');
        devices.set(d.fullUrl, `Device/${id}`);
        if (e?.response?.status?.startsWith('201')) counts.devicesCreated++;
      });
    }
    if (entries.length === 0) return;

    const existing = await this.findExisting(entries);
    const writes: BundleEntry[] = [];
    const creates: Resource[] = [];
    const seen = new Set<string>();
    // counted once the chunk is stored: a chunk whose write fails counts for nothing
    const chunk = { created: 0, unchanged: 0, corrected: 0, linked: 0 };
    const ordered = entries.some((e) => e.formerIdentifier) ? [...entries.filter((e) => !e.formerIdentifier), ...entries.filter((e) => e.formerIdentifier)] : entries;
    /** This chunk's readings by identifier, for its scans (a scan is the same reading as a historic one of equal value in its minute, stored or not). */
    const inChunk = new Map<string, Resource>();
    for (const e of ordered) {
      const identifier = e.resource.resourceType === 'Device' ? undefined : identifierOf(e.resource);
      if (!identifier || seen.has(identifier)) continue; // repeats beyond the parser's window: the first wins
      seen.add(identifier);
      const resource = withDevice(e.resource, devices);
      if (!e.formerIdentifier && ordered !== entries) inChunk.set(identifier, resource);
      const found = existing.get(identifier);
      const former = !found && e.formerIdentifier ? existing.get(e.formerIdentifier) ?? inChunk.get(e.formerIdentifier) : undefined;
      const create = (fullUrl: string, resource: Resource): void => {
        chunk.created++;
        if (this.deps.bulkCreate) creates.push(resource);
        else writes.push({ fullUrl, resource, request: { method: 'POST', url: resource.resourceType } });
      };
      if (former && !(former.id && formers.rewritten.has(former.id)) && sameContent(former, resource, ['device', 'identifier'])) {
        chunk.unchanged++; // stored before under its former identifier, or the same value as the historic reading of its minute
        if (former.id) formers.matched.set(former.id, { fullUrl: e.fullUrl, resource });
      } else if (!found) {
        create(e.fullUrl, resource);
      } else if (sameContent(found, resource, ['device'])) { // the same reading: content without id, meta and the device reference
        if (gainsDevice(found, resource)) {
          chunk.linked++;
          writes.push({ resource: { ...resource, id: found.id }, request: { method: 'PUT', url: `${resource.resourceType}/${found.id}` } });
        } else chunk.unchanged++;
      } else {
        chunk.corrected++;
        const earlier = found.id ? formers.matched.get(found.id) : undefined;
        if (earlier) { // a scan of an earlier chunk was taken for this resource, which was its minute's historic reading
          formers.matched.delete(found.id!);
          chunk.unchanged--;
          create(earlier.fullUrl, earlier.resource);
        }
        if (found.id) formers.rewritten.add(found.id);
        writes.push({ resource: { ...resource, id: found.id }, request: { method: 'PUT', url: `${resource.resourceType}/${found.id}` } });
      }
    }
    if (creates.length && !dryRun) await this.deps.bulkCreate!(creates);
    if (writes.length && !dryRun) await repo.transaction(transaction(writes));
    counts.created += chunk.created;
    counts.unchanged += chunk.unchanged;
    counts.corrected += chunk.corrected;
    counts.linked += chunk.linked;
  }

  /**
   * Removes one chunk's readings (IngestOptions.remove): those stored with the same content are
   * deleted in one transaction, each only at the version compared (If-Match), so a correction made
   * meanwhile is kept and fails the chunk rather than being deleted unseen.
   */
  private async removeChunk(entries: ConvertedEntry[], counts: StoreCounts, dryRun: boolean): Promise<void> {
    if (entries.length === 0) return;
    const existing = await this.findExisting(entries);
    const deletes: BundleEntry[] = [];
    const chunk = { removed: 0, changedSince: 0, notStored: 0 };
    const seen = new Set<string>();
    for (const e of entries) {
      const identifier = identifierOf(e.resource);
      if (!identifier || seen.has(identifier)) continue;
      seen.add(identifier);
      const found = existing.get(identifier);
      if (!found?.id) chunk.notStored++;
      else if (!sameContent(found, e.resource, ['device'])) chunk.changedSince++;
      else {
        chunk.removed++;
        deletes.push({ request: { method: 'DELETE', url: `${found.resourceType}/${found.id}`, ...(found.meta?.versionId ? { ifMatch: `W/"${found.meta.versionId}"` } : {}) } });
      }
    }
    if (deletes.length && !dryRun) await this.deps.repository.transaction(transaction(deletes));
    counts.removed += chunk.removed;
    counts.changedSince += chunk.changedSince;
    counts.notStored += chunk.notStored;
  }

  /** Current resources carrying the entries' identifiers, by `system|value`; one search per type and batch. */
  private async findExisting(entries: ConvertedEntry<Resource>[]): Promise<Map<string, Resource>> {
    const byType = new Map<Resource['resourceType'], string[]>();
    for (const e of entries) {
      const id = identifierOf(e.resource);
      const ids = byType.get(e.resource.resourceType) ?? byType.set(e.resource.resourceType, []).get(e.resource.resourceType)!;
      if (id) ids.push(id);
      if (e.formerIdentifier) ids.push(e.formerIdentifier);
    }
    // Upstream servers take the values in the URL: keep those queries short.
    const batch = this.deps.repository.description.adapter === 'embedded' ? 2000 : 50;
    const found = new Map<string, Resource>();
    for (const [resourceType, ids] of byType) {
      for (let i = 0; i < ids.length; i += batch) {
        const values = ids.slice(i, i + batch);
        const result = await this.deps.repository.search({
          resourceType,
          filters: [{ code: 'identifier', operator: Operator.EQUALS, value: values.map((v) => v.replaceAll(',', '\\,')).join(',') }],
          count: values.length * 2 + 1,
          offset: 0,
        });
        for (const r of result.resources) {
          const id = identifierOf(r);
          if (id) found.set(id, r);
        }
      }
    }
    return found;
  }

  /** `job` in the patient's turn among the processes on the data directory, when there are turns to take. */
  private inTurn<T>(patient: string, removing: boolean, job: () => Promise<T>): Promise<T> {
    const turns = this.deps.turns;
    return turns ? turns.run(patient, this.stopping.signal, () => new ImportInterrupted(0, this.stopReason, removing), job) : job();
  }

  private async serialized<T>(key: string, job: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(key) ?? Promise.resolve();
    const result = previous.catch(() => undefined).then(job);
    const tail = result.catch(() => undefined);
    this.locks.set(key, tail);
    try {
      return await result;
    } finally {
      if (this.locks.get(key) === tail) this.locks.delete(key);
    }
  }
}

/** What one import learnt of readings matched on a former identifier (storeChunk). */
interface FormerMatches {
  /** Ids of stored readings this import corrected. */
  rewritten: Set<string>;
  /** Id of a stored reading → the reading (a scan) found to be it under its former identifier. */
  matched: Map<string, { fullUrl: string; resource: Resource }>;
}

interface StoreCounts {
  created: number;
  unchanged: number;
  corrected: number;
  linked: number;
  devicesCreated: number;
  removed: number;
  changedSince: number;
  notStored: number;
}

function errors(issues: ReturnType<ResourceCheck>): ReturnType<ResourceCheck> {
  return issues.filter((i) => i.severity === 'error' || i.severity === 'fatal');
}

function transaction(entry: BundleEntry[]): Bundle {
  return { resourceType: 'Bundle', type: 'transaction', entry };
}

/** `system|value` of the first identifier. */
function identifierOf(resource: Resource): string | undefined {
  const first = (resource as { identifier?: { system?: string; value?: string }[] }).identifier?.[0];
  return first?.system && first.value ? `${first.system}|${first.value}` : undefined;
}

/**
 * Whether a stored reading gets a Device only now: it has none, and the file names one. A stored
 * reference is kept when it differs (the same meter or sensor under another id is no change).
 */
function gainsDevice(stored: Resource, incoming: Resource): boolean {
  const has = (r: Resource): boolean => Boolean((r as { device?: { reference?: string } }).device?.reference);
  return !has(stored) && has(incoming);
}

/** The resource with its device reference resolved from the bundle fullUrl to `Device/id`. */
function withDevice(resource: Resource, devices: Map<string, string>): Resource {
  const device = (resource as { device?: { reference?: string } }).device;
  const resolved = device?.reference ? devices.get(device.reference) : undefined;
  return resolved ? { ...resource, device: { reference: resolved } } as Resource : resource;
}

