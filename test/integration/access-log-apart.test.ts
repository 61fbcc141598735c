/**
 * GLUCOGUARD_AUDIT_STORE=local: with an upstream that takes no AuditEvent from third parties (it
 * answers 405 to every AuditEvent request here, as many EHR APIs would), the access log is kept in
 * the data directory's embedded store. A patient's read is recorded there, the patient reads it
 * back by the REST API, it survives a restart and verifies against the ledger, and nothing of it
 * reaches the upstream. Without the setting the same upstream keeps no log (the case it exists for).
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { AuditEvent, Bundle, Patient } from '@medplum/fhirtypes';
import request from 'supertest';
import { loadConfig } from '../../src/config.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { startUpstreamFhirServer, type UpstreamFhirServer } from '../support/upstream-server.js';
import { patientToken } from './consent-helpers.js';

let upstream: UpstreamFhirServer;
beforeAll(async () => {
  upstream = await startUpstreamFhirServer();
  upstream.intercept((req) => (/\/AuditEvent(?:[/?]|$)/.test(req.url) ? { status: 405, body: { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'not-supported', diagnostics: 'AuditEvent is not supported' }] } } : undefined));
});
afterAll(async () => { await upstream.close(); });

async function patientAndItsLog(t: TestApp): Promise<{ id: string; events: AuditEvent[] }> {
  const { resource } = await t.app.repository.create<Patient>({ resourceType: 'Patient', name: [{ family: 'Apart' }] });
  const token = patientToken(t.app, resource.id!);
  expect((await request(t.app.http).get(`/fhir/Patient/${resource.id}`).set('Authorization', `Bearer ${token}`)).status).toBe(200);
  await t.app.consent.audit.flush();
  const log = await request(t.app.http).get(`/fhir/AuditEvent?patient=${resource.id}`).set('Authorization', `Bearer ${token}`);
  return { id: resource.id!, events: log.status === 200 ? ((log.body as Bundle).entry ?? []).map((e) => e.resource as AuditEvent) : [] };
}

describe('GLUCOGUARD_AUDIT_STORE', () => {
  it('is repository (the upstream) by default; local or repository only', () => {
    expect(loadConfig({}).auditStore).toBe('repository');
    expect(() => loadConfig({ GLUCOGUARD_AUDIT_STORE: 'elsewhere' })).toThrow(/GLUCOGUARD_AUDIT_STORE/);
  });

  it('local: the access log is kept in the data directory, read back by the patient, kept over a restart, and never sent upstream', async () => {
    const t = await startTestApp({ UPSTREAM_FHIR_URL: upstream.url, GLUCOGUARD_AUTH: 'on', GLUCOGUARD_AUDIT_STORE: 'local' });
    try {
      expect(t.app.adapters.find((a) => a.port === 'repository')!.location).toMatch(/access log \(AuditEvent\) kept in /);
      const before = upstream.requests.length;
      const { id, events } = await patientAndItsLog(t);
      const reads = events.filter((e) => e.entity?.some((x) => x.what?.reference === `Patient/${id}`) && e.subtype?.some((s) => s.code === 'read'));
      expect(reads.length).toBeGreaterThanOrEqual(1);
      expect(upstream.requests.slice(before).filter((r) => /AuditEvent/.test(r.url))).toEqual([]);
      await t.restart();
      const again = await request(t.app.http).get(`/fhir/AuditEvent?patient=${id}`).set('Authorization', `Bearer ${patientToken(t.app, id)}`);
      expect(again.status).toBe(200);
      const ids = ((again.body as Bundle).entry ?? []).map((e) => e.resource!.id);
      for (const e of reads) expect(ids).toContain(e.id);
      // committed like any resource: served without an integrity tag once anchored
      await t.app.ledger.anchorer.flush();
      const one = await request(t.app.http).get(`/fhir/AuditEvent/${reads[0]!.id}`).set('Authorization', `Bearer ${patientToken(t.app, id)}`);
      expect(one.status).toBe(200);
      expect((one.body as AuditEvent).meta?.tag ?? []).toEqual([]);
    } finally {
      await t.close();
    }
  });

  it('repository (default): the same upstream keeps no log, which is why local exists', async () => {
    const t = await startTestApp({ UPSTREAM_FHIR_URL: upstream.url, GLUCOGUARD_AUTH: 'on' });
    try {
      const { events } = await patientAndItsLog(t);
      expect(events).toEqual([]);
    } finally {
      await t.close();
    }
  });

  it('a transaction may not mix AuditEvents with other resources when the log is kept apart (400, nothing written)', async () => {
    const t = await startTestApp({ UPSTREAM_FHIR_URL: upstream.url, GLUCOGUARD_AUDIT_STORE: 'local' });
    try {
      const bundle: Bundle = {
        resourceType: 'Bundle', type: 'transaction', entry: [
          { resource: { resourceType: 'Patient', name: [{ family: 'Mixed' }] }, request: { method: 'POST', url: 'Patient' } },
          { resource: { resourceType: 'AuditEvent', type: { code: 'rest' }, recorded: new Date().toISOString(), agent: [{ requestor: true }], source: { observer: { display: 'x' } } } as AuditEvent, request: { method: 'POST', url: 'AuditEvent' } },
        ],
      };
      const before = upstream.requests.length;
      await expect(t.app.ledger.repository.transaction(bundle)).rejects.toMatchObject({ status: 400 });
      expect(upstream.requests.length).toBe(before);
    } finally {
      await t.close();
    }
  });
});
