/**
 * Export jobs on disk (`<dataDir>/exports/jobs.sqlite`), so a job survives a restart: on start-up
 * a job that was queued or running is run again from the start (its partial files are discarded),
 * and a manifest is only ever answered for a job whose files were all completed and renamed.
 * With each completed job, whose data its files hold (`export_release`: one row per patient with
 * the consent grants that let it out), so its files can be decided again when they are fetched.
 */
import path from 'node:path';
import type { OperationOutcomeIssue } from '@medplum/fhirtypes';
import type Database from 'better-sqlite3';
import { openSqlite } from '../sqlite.js';
import type { AccessContext } from '../fhir/access.js';

export type JobStatus = 'queued' | 'running' | 'completed' | 'failed';

/** What a job needs to run again after a restart: who asked (to re-run every guard) and what. */
export interface StoredAccess extends AccessContext {
  purposeOfUse?: string;
  /** When it was stored (epoch ms): what outlives the token is cut off as tokens issued then would be (an operator disabling the user or client). */
  storedAt?: number;
}

export interface ExportParams {
  level: 'system' | 'patient' | 'group';
  groupId?: string;
  types: string[];
  /** Types the client named in `_type` (vs the default set). */
  explicitTypes: boolean;
  since?: string;
  /**
   * `_typeFilter` queries per type, as query records: a resource of the type is exported when it
   * matches any of them (Bulk Data IG: queries for one type are OR'ed). A job recorded before
   * several were taken holds one record per type (typeFiltersOf reads both).
   */
  typeFilters: Record<string, TypeFilterQuery[] | TypeFilterQuery>;
  /** What the kick-off left out of the request and why (Prefer: handling=lenient); each goes to the job's error file. */
  notices?: string[];
}

export type TypeFilterQuery = Record<string, string | string[]>;

/** The `_typeFilter` queries of one type (none: every resource of it). */
export function typeFiltersOf(params: ExportParams, type: string): TypeFilterQuery[] {
  const recorded = params.typeFilters[type];
  return recorded === undefined ? [] : Array.isArray(recorded) ? recorded : [recorded];
}

export interface OutputFile {
  type: string;
  file: string;
  count: number;
}

export interface ExportJob {
  id: string;
  owner: string;
  access: StoredAccess;
  request: string;
  params: ExportParams;
  status: JobStatus;
  transactionTime?: string;
  progress?: string;
  outputs: OutputFile[];
  errors: OutputFile[];
  /** Failure reason shown to the client (never internal detail). */
  failure?: string;
  /** The status and issue code a failed job answers with (absent: 500 `exception`, an internal failure). */
  failureStatus?: number;
  failureCode?: OperationOutcomeIssue['code'];
  createdAt: string;
  completedAt?: string;
  /** Attempts so far (restarts count). */
  attempts: number;
  /**
   * How many patients' data the files hold, recorded with the job (JobStore.released). Absent on
   * a job completed before releases were recorded: whose data it holds is not known.
   */
  released?: number;
  /** When consent behind the job's data was found to have ended: its files were deleted then (410 from then on). */
  withdrawnAt?: string;
}

/** Whose data a job's files hold: patient id → the consent grants it was let out under (none: the patient's own). */
export type Released = ReadonlyMap<string, ReadonlySet<string>>;

interface Row {
  id: string;
  json: string;
}

export class JobStore {
  private readonly db: Database.Database;

  constructor(dir: string) {
    // owner-only: it holds patient ids and grant ids
    this.db = openSqlite(path.join(dir, 'jobs.sqlite'), { synchronous: 'FULL' });
    this.db.exec('CREATE TABLE IF NOT EXISTS export_job (id TEXT PRIMARY KEY, status TEXT NOT NULL, created TEXT NOT NULL, json TEXT NOT NULL)');
    // apart from the job's JSON, which every status poll reads: a system export may hold many patients
    this.db.exec('CREATE TABLE IF NOT EXISTS export_release (job TEXT NOT NULL, patient TEXT NOT NULL, grants TEXT NOT NULL, PRIMARY KEY (job, patient))');
  }

  put(job: ExportJob): void {
    this.db.prepare('INSERT INTO export_job (id, status, created, json) VALUES (?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET status = excluded.status, json = excluded.json')
      .run(job.id, job.status, job.createdAt, JSON.stringify(job));
  }

  get(id: string): ExportJob | undefined {
    const row = this.db.prepare('SELECT id, json FROM export_job WHERE id = ?').get(id) as Row | undefined;
    return row ? (JSON.parse(row.json) as ExportJob) : undefined;
  }

  delete(id: string): void {
    this.db.transaction(() => {
      this.db.prepare('DELETE FROM export_job WHERE id = ?').run(id);
      this.db.prepare('DELETE FROM export_release WHERE job = ?').run(id);
    })();
  }

  /** Records whose data a job's files hold, in place of anything recorded for it before. */
  putReleased(jobId: string, released: Released): void {
    this.db.transaction(() => {
      this.db.prepare('DELETE FROM export_release WHERE job = ?').run(jobId);
      const insert = this.db.prepare('INSERT INTO export_release (job, patient, grants) VALUES (?, ?, ?)');
      for (const [patient, grants] of released) insert.run(jobId, patient, JSON.stringify([...grants]));
    })();
  }

  /** Whose data a job's files hold, as recorded by putReleased. */
  released(jobId: string): Released {
    const rows = this.db.prepare('SELECT patient, grants FROM export_release WHERE job = ?').all(jobId) as { patient: string; grants: string }[];
    return new Map(rows.map((r) => [r.patient, new Set(JSON.parse(r.grants) as string[])]));
  }

  /** Jobs in a state, oldest first. */
  byStatus(...statuses: JobStatus[]): ExportJob[] {
    const marks = statuses.map(() => '?').join(',');
    return (this.db.prepare(`SELECT id, json FROM export_job WHERE status IN (${marks}) ORDER BY created`).all(...statuses) as Row[])
      .map((r) => JSON.parse(r.json) as ExportJob);
  }

  all(): ExportJob[] {
    return (this.db.prepare('SELECT id, json FROM export_job ORDER BY created').all() as Row[]).map((r) => JSON.parse(r.json) as ExportJob);
  }

  close(): void {
    this.db.close();
  }
}

/** Who owns a job or a file: the same client, user and identity. */
export function ownerOf(access: AccessContext): string {
  if (access.kind === 'open') return 'open';
  return JSON.stringify([access.clientId ?? '', access.subject ?? '', access.fhirUser ?? '']);
}

/** The parts of an access context a job keeps (no token). */
export function storedAccess(access: StoredAccess): StoredAccess {
  const { kind, subject, clientId, fhirUser, patient, scopes, purposeOfUse } = access;
  return {
    kind, scopes: [...scopes], storedAt: access.storedAt ?? Date.now(),
    ...(subject ? { subject } : {}), ...(clientId ? { clientId } : {}), ...(fhirUser ? { fhirUser } : {}),
    ...(patient ? { patient } : {}), ...(purposeOfUse ? { purposeOfUse } : {}),
  };
}
