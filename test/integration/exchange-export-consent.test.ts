/**
 * Bulk $export files do not outlive the consent behind them (security review F3): data is shared
 * "for exactly as long as the patient chose", so a file is decided again at every download (and the
 * manifest at every status answer) against the grants its data was let out under. Once one is
 * revoked or has ended the job is withdrawn — files deleted, status and files 410 Gone with an
 * OperationOutcome that asks for a new export — while the grant holds nothing changes, and the
 * patient's own exports and the operator's are not limited by grants. Every download is recorded in
 * the access log as a BALP Read of the file, naming the patients whose data it holds.
 */
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { AuditEvent, Bundle, Consent, Observation, OperationOutcome } from '@medplum/fhirtypes';
import request from 'supertest';
import type { ExportJob } from '../../src/exchange/jobs.js';
import { OPEN_ACCESS } from '../../src/fhir/access.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { DAY, grant, ingest, patientToken, person, practitionerToken, registerIdentity, sparseTrace } from './consent-helpers.js';

// exchange settings for the app under test (read with the rest of its configuration)
const EXCHANGE_ENV: Record<string, string> = { GLUCOGUARD_EXPORT_RETRY_AFTER: '1' };

interface Manifest {
  output: { type: string; url: string; count: number }[];
  error: { type: string; url: string; count: number }[];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const local = (url: string): string => url.replace('http://127.0.0.1:8080', '');

describe('bulk $export files end with the consent behind them', () => {
  let t: TestApp;
  let ana: string;
  let ben: string;
  let doc: string;
  let doc2: string;
  let anaConsent: Consent;
  const trace = sparseTrace(3, 120);
  const now = Date.now();

  const kickOff = (url: string, token: string, purpose = 'TREAT') => request(t.app.http).get(url)
    .set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', purpose).set('Prefer', 'respond-async');

  /** Kicks off, waits for the manifest; answers it with the status path and the job id. */
  async function exported(url: string, token: string): Promise<{ manifest: Manifest; status: string; jobId: string }> {
    const kick = await kickOff(url, token);
    expect(kick.status).toBe(202);
    const status = local(kick.headers['content-location']!);
    for (let i = 0; i < 40; i++) {
      const res = await request(t.app.http).get(status).set('Authorization', `Bearer ${token}`);
      if (res.status === 200) return { manifest: res.body as Manifest, status, jobId: new URL(status, 'http://x').searchParams.get('_job')! };
      expect(res.status).toBe(202);
      await sleep(1050);
    }
    throw new Error('export did not complete');
  }

  const fetchFile = (url: string, token: string) => request(t.app.http).get(local(url)).set('Authorization', `Bearer ${token}`).buffer(true).parse((r, cb) => {
    let data = '';
    r.on('data', (c: Buffer) => { data += c.toString(); });
    r.on('end', () => cb(null, data));
  });

  async function readings(url: string, token: string): Promise<Observation[]> {
    const res = await fetchFile(url, token);
    expect(res.status).toBe(200);
    return (res.body as string).trim().split('\n').map((l) => JSON.parse(l) as Observation);
  }

  /** A refusal that says what happened and what to do, and carries nothing of the data. */
  function expectWithdrawn(res: request.Response): void {
    expect(res.status).toBe(410);
    const body = (typeof res.body === 'string' ? JSON.parse(res.body) : res.body) as OperationOutcome;
    expect(body.resourceType).toBe('OperationOutcome');
    expect(body.issue[0]!.code).toBe('deleted');
    expect(body.issue[0]!.diagnostics).toMatch(/revoked or has ended.*new export/);
    expect(JSON.stringify(body)).not.toContain('valueQuantity');
  }

  async function downloadEvents(fileUrl: string): Promise<AuditEvent[]> {
    await t.app.consent.audit.flush();
    const stored = (await t.app.repository.search({ resourceType: 'AuditEvent', count: 1000, offset: 0 })).resources as AuditEvent[];
    return stored.filter((e) => e.entity?.some((x) => x.what?.reference === fileUrl));
  }

  /** Runs `body` with the consent clock at `at` (grants expire by that clock, as in consent-leaks). */
  async function atClock<T>(at: number, body: () => Promise<T>): Promise<T> {
    const decisions = t.app.consent.decisions as unknown as { now: () => number };
    const real = decisions.now;
    decisions.now = () => at;
    try {
      return await body();
    } finally {
      decisions.now = real;
    }
  }

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on', ...EXCHANGE_ENV });
    ana = await person(t.app, 'Patient', 'Rivera');
    ben = await person(t.app, 'Patient', 'Okafor');
    doc = await person(t.app, 'Practitioner', 'Osei');
    doc2 = await person(t.app, 'Practitioner', 'Lund');
    await registerIdentity(t.app, `Practitioner/${doc}`);
    await registerIdentity(t.app, `Practitioner/${doc2}`);
    for (const p of [ana, ben]) await ingest(t.app, p, trace);
    // ana shares her readings with doc until she changes her mind; ben shares his with doc2 for a day
    const granted = await grant(t.app, { patient: ana, actor: `Practitioner/${doc}`, accessTo: now + 30 * DAY, dataFrom: now - 10 * DAY, dataTo: now, purposes: ['TREAT'], classes: ['Observation'] });
    expect(granted.status).toBe(201);
    anaConsent = granted.body as Consent;
    expect((await grant(t.app, { patient: ben, actor: `Practitioner/${doc2}`, accessTo: now + DAY, dataFrom: now - 10 * DAY, dataTo: now, purposes: ['TREAT'], classes: ['Observation'] })).status).toBe(201);
  }, 120_000);
  afterAll(async () => {
    await t?.close();
  });

  describe('while the grant holds', () => {
    test('the clinician downloads the file, and the download is in the access log as a BALP Read naming the patient and grant', async () => {
      const token = practitionerToken(t.app, doc);
      const { manifest, status } = await exported('/fhir/Patient/$export?_type=Observation', token);
      const file = manifest.output[0]!;
      const lines = await readings(file.url, token);
      expect(lines).toHaveLength(trace.length);
      expect(new Set(lines.map((o) => o.subject?.reference))).toEqual(new Set([`Patient/${ana}`]));
      // later in the grant's window: still the same
      await atClock(now + 20 * DAY, async () => {
        expect((await request(t.app.http).get(status).set('Authorization', `Bearer ${token}`)).status).toBe(200);
        expect(await readings(file.url, token)).toHaveLength(trace.length);
      });

      const events = await downloadEvents(file.url);
      expect(events).toHaveLength(2);
      for (const e of events) {
        expect(e.subtype?.[0]?.code).toBe('read');
        expect(e.action).toBe('R');
        expect(e.outcome).toBe('0');
        expect(e.agent.some((a) => a.who?.reference === `Practitioner/${doc}`)).toBe(true);
        expect(e.purposeOfEvent?.[0]?.coding?.[0]?.code).toBe('TREAT');
        expect(e.entity?.some((x) => x.what?.reference === `Patient/${ana}`)).toBe(true);
        expect(e.entity?.some((x) => x.what?.identifier?.system === 'urn:glucoguard:consent-grant')).toBe(true);
        expect(e.entity?.some((x) => x.what?.reference === `Patient/${ben}`)).toBe(false);
        // no health data, no token
        const text = JSON.stringify(e);
        expect(text).not.toContain('valueQuantity');
        expect(text).not.toContain(token);
      }
      // the patient sees it in her own access log
      const log = await request(t.app.http).get(`/fhir/AuditEvent?patient=Patient/${ana}&_count=500`).set('Authorization', `Bearer ${patientToken(t.app, ana)}`);
      expect(log.status).toBe(200);
      const hers = ((log.body as Bundle).entry ?? []).map((e) => e.resource as AuditEvent);
      expect(hers.filter((e) => e.entity?.some((x) => x.what?.reference === file.url))).toHaveLength(2);
    }, 60_000);

    test('a token whose scopes do not cover the file\'s type is refused (403) and withdraws nothing', async () => {
      const token = practitionerToken(t.app, doc);
      const { manifest } = await exported('/fhir/Patient/$export?_type=Observation', token);
      const narrow = practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/Patient.rs']);
      const refused = await fetchFile(manifest.output[0]!.url, narrow);
      expect(refused.status).toBe(403);
      expect(String(refused.body)).not.toContain('valueQuantity');
      expect(await readings(manifest.output[0]!.url, token)).toHaveLength(trace.length);
    }, 60_000);

    test('consent that cannot be decided (chain unreachable) is a 503 that withdraws nothing', async () => {
      const token = practitionerToken(t.app, doc);
      const { manifest, jobId } = await exported('/fhir/Patient/$export?_type=Observation', token);
      const provider = t.app.chain.provider as unknown as { send: (...a: unknown[]) => Promise<unknown> };
      const realSend = provider.send;
      provider.send = () => Promise.reject(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }));
      t.app.consent.decisions.dropAll();
      try {
        const res = await fetchFile(manifest.output[0]!.url, token);
        expect(res.status).toBe(503);
        expect(String(res.body)).not.toContain('valueQuantity');
      } finally {
        provider.send = realSend;
      }
      expect(t.app.exchange.exports.store.get(jobId)!.withdrawnAt).toBeUndefined();
      expect(await readings(manifest.output[0]!.url, token)).toHaveLength(trace.length);
    }, 60_000);

    test('a job that does not record whose data it holds (made before this check) is refused to a grantee', async () => {
      const token = practitionerToken(t.app, doc);
      const { manifest, jobId } = await exported('/fhir/Patient/$export?_type=Observation', token);
      const store = t.app.exchange.exports.store;
      const { released: _, ...unrecorded } = store.get(jobId)!;
      store.put(unrecorded as ExportJob);
      expectWithdrawn(await fetchFile(manifest.output[0]!.url, token));
      expect(existsSync(path.join(t.dataDir, 'exports', jobId))).toBe(false);
    }, 60_000);
  });

  test('a download under way is cut off once the grant behind it is revoked (decided again while it goes out)', async () => {
    const doc3 = await person(t.app, 'Practitioner', 'Mensah');
    await registerIdentity(t.app, `Practitioner/${doc3}`);
    const granted = await grant(t.app, { patient: ana, actor: `Practitioner/${doc3}`, accessTo: now + 30 * DAY, dataFrom: now - 10 * DAY, dataTo: now, purposes: ['TREAT'], classes: ['Observation'] });
    expect(granted.status).toBe(201);
    const token = practitionerToken(t.app, doc3);
    const { manifest, jobId } = await exported('/fhir/Patient/$export?_type=Observation', token);
    const exports = t.app.exchange.exports;
    (exports as unknown as { options: { downloadRecheckMs: number } }).options.downloadRecheckMs = 50;
    const file = manifest.output[0]!.url.split('/').pop()!;
    // a client that has read the first piece and waits before reading on
    const stream = exports.serveFile(jobId, file);
    const first = await new Promise<Buffer>((resolve) => stream.once('readable', () => resolve(stream.read() as Buffer)));
    expect(first.length).toBeGreaterThan(0);
    const ended = new Promise<Error | 'ended'>((resolve) => {
      stream.once('error', resolve);
      stream.once('end', () => resolve('ended'));
    });
    // still in force: decided again several times, the stream goes on
    await sleep(200);
    expect(stream.destroyed).toBe(false);
    const revoked = await request(t.app.http).delete(`/fhir/Consent/${(granted.body as Consent).id}`).set('Authorization', `Bearer ${patientToken(t.app, ana)}`);
    expect(revoked.status).toBe(204);
    const outcome = await ended;
    expect(outcome).not.toBe('ended');
    expect((outcome as { status?: number }).status).toBe(410);
    expect(existsSync(path.join(t.dataDir, 'exports', jobId))).toBe(false);
  }, 60_000);

  test('after the patient revokes, the file, the manifest and any later download answer 410; the files are deleted', async () => {
    const token = practitionerToken(t.app, doc);
    const { manifest, status, jobId } = await exported('/fhir/Patient/$export?_type=Observation', token);
    const file = manifest.output[0]!;
    expect(await readings(file.url, token)).toHaveLength(trace.length);
    // and the patient's own export, made before she revokes
    const own = patientToken(t.app, ana);
    const mine = await exported('/fhir/Patient/$export?_type=Observation', own);

    const revoked = await request(t.app.http).delete(`/fhir/Consent/${anaConsent.id}`).set('Authorization', `Bearer ${patientToken(t.app, ana)}`);
    expect(revoked.status).toBe(204);

    expectWithdrawn(await fetchFile(file.url, token));
    expect(existsSync(path.join(t.dataDir, 'exports', jobId))).toBe(false);
    expectWithdrawn(await request(t.app.http).get(status).set('Authorization', `Bearer ${token}`));
    expectWithdrawn(await fetchFile(file.url, token));
    // still the owner's alone: anyone else learns nothing (404 as ever)
    expect((await fetchFile(file.url, practitionerToken(t.app, doc2))).status).toBe(404);
    // the refusal is in the patient's access log too
    const events = await downloadEvents(file.url);
    const refused = events.filter((e) => e.outcome === '4' && e.agent.some((a) => a.who?.reference === `Practitioner/${doc}`));
    expect(refused.length).toBeGreaterThanOrEqual(2);
    for (const e of refused) {
      expect(e.entity?.some((x) => x.what?.reference === `Patient/${ana}`)).toBe(true);
      expect(e.outcomeDesc).toContain('HTTP 410');
    }
    // a new export holds what is shared now: nothing
    expect((await exported('/fhir/Patient/$export?_type=Observation', token)).manifest.output).toEqual([]);

    // the patient's own export is hers whatever she grants or revokes
    expect(await readings(mine.manifest.output[0]!.url, own)).toHaveLength(trace.length);
    expect((await request(t.app.http).get(mine.status).set('Authorization', `Bearer ${own}`)).status).toBe(200);
  }, 90_000);

  test('after the grant\'s access window ends, an older file is refused (410) and stays refused', async () => {
    const token = practitionerToken(t.app, doc2);
    const { manifest, status, jobId } = await exported('/fhir/Patient/$export?_type=Observation', token);
    const file = manifest.output[0]!;
    expect(await readings(file.url, token)).toHaveLength(trace.length);
    const own = patientToken(t.app, ben);
    const mine = await exported('/fhir/Patient/$export?_type=Observation', own);

    await atClock(now + 2 * DAY, async () => {
      expectWithdrawn(await fetchFile(file.url, token));
      expectWithdrawn(await request(t.app.http).get(status).set('Authorization', `Bearer ${token}`));
      // the patient's own export: no grant involved
      expect(await readings(mine.manifest.output[0]!.url, own)).toHaveLength(trace.length);
    });
    expect(existsSync(path.join(t.dataDir, 'exports', jobId))).toBe(false);
    // withdrawn for good: the clock going back (or a new grant) does not bring the old files back
    expectWithdrawn(await fetchFile(file.url, token));
  }, 90_000);

  test('the operator\'s export (open access) is not limited by grants', async () => {
    const job = t.app.exchange.exports.submit(OPEN_ACCESS, { level: 'system', types: ['Observation'], explicitTypes: true, typeFilters: {} }, `test-${randomUUID()}`);
    const done = (await t.app.exchange.exports.whenDone(job.id, 50)) as ExportJob;
    expect(done.status).toBe('completed');
    await atClock(now + 60 * DAY, async () => {
      const full = await t.app.exchange.exports.download(OPEN_ACCESS, job.id, 'Observation.ndjson');
      expect(existsSync(full)).toBe(true);
    });
  }, 60_000);

  test("the operator's export is in the access log of every patient whose data it holds (each patient can see who looked)", async () => {
    const job = t.app.exchange.exports.submit(OPEN_ACCESS, { level: 'system', types: ['Observation'], explicitTypes: true, typeFilters: {} }, `test-${randomUUID()}`);
    expect(((await t.app.exchange.exports.whenDone(job.id, 50)) as ExportJob).status).toBe('completed');
    await t.app.consent.audit.flush();
    const events = (await t.app.repository.search({ resourceType: 'AuditEvent', count: 100_000, offset: 0 })).resources as AuditEvent[];
    const exportEvents = events.filter((e) => e.outcome === '0'
      && e.entity?.some((x) => x.query !== undefined && Buffer.from(x.query, 'base64').toString('utf8').startsWith('$export')));
    expect(exportEvents.length).toBeGreaterThan(0);
    const named = new Set(exportEvents.flatMap((e) => e.entity!.map((x) => x.what?.reference).filter((r): r is string => !!r?.startsWith('Patient/'))));
    for (const p of [ana, ben]) expect(named).toContain(`Patient/${p}`);
  }, 60_000);
});
