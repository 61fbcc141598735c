/**
 * GLUCOGUARD_AUDIT_STORE=local keeps the access log in the embedded store beside an upstream
 * (src/repository/access-log-apart.ts); the ledger treats that part as the embedded store's own.
 * An AuditEvent written there whose commitment was never recorded — the process died between the
 * write and the record, or it stopped while the commitment store refused records — is a crash's
 * tail: `verify`'s completeness check lists it, and the next start records it. Before, neither
 * looked at the access log at all (both walked the upstream's history only), so such an event stayed
 * unverified for good (withheld in strict mode).
 */
import { afterAll, beforeAll, expect, it } from '@jest/globals';
import type { AuditEvent, Patient } from '@medplum/fhirtypes';
import { checkCompleteness } from '../../src/ledger/completeness.js';
import { startTestApp } from '../support/app.js';
import { startUpstreamFhirServer, type UpstreamFhirServer } from '../support/upstream-server.js';

let upstream: UpstreamFhirServer;
beforeAll(async () => { upstream = await startUpstreamFhirServer(); });
afterAll(async () => { await upstream.close(); });

const event = (patient: string): AuditEvent => ({
  resourceType: 'AuditEvent', type: { system: 'http://terminology.hl7.org/CodeSystem/audit-event-type', code: 'rest' },
  recorded: new Date().toISOString(), agent: [{ requestor: true, who: { display: 'test' } }], source: { observer: { display: 'test' } },
  entity: [{ what: { reference: `Patient/${patient}` } }],
});

it('an access-log event left without its commitment is listed by the completeness check and recorded at the next start', async () => {
  const t = await startTestApp({ UPSTREAM_FHIR_URL: upstream.url, GLUCOGUARD_AUDIT_STORE: 'local' });
  try {
    // a recorded write first: reconciliation looks at what came after the last one
    const patient = (await t.app.repository.create<Patient>({ resourceType: 'Patient', name: [{ family: 'Apart' }] })).resource.id!;
    const adapter = t.app.ledger.repository.adapter;
    const log = adapter.localPart?.repository;
    expect(log?.description.adapter).toBe('embedded');
    // written to the access log's store without the ledger (as when the process dies before the record)
    const tail = (await log!.create(event(patient))).resource;
    expect(t.app.ledger.store.has('AuditEvent', tail.id!, tail.meta!.versionId!)).toBe(false);

    const report = await checkCompleteness({ store: t.app.ledger.store, repository: adapter });
    expect(report.listed).toBe(true);
    expect(report.listedTypes).toEqual(['AuditEvent']);
    expect(report.uncommitted).toEqual([{ ref: `AuditEvent/${tail.id}/_history/${tail.meta!.versionId}`, among: false }]);

    await t.restart();
    expect(t.app.ledger.store.has('AuditEvent', tail.id!, tail.meta!.versionId!)).toBe(true);
    const read = await t.app.ledger.repository.read<AuditEvent>('AuditEvent', tail.id!);
    expect((await t.app.ledger.checker.check(read)).status).toMatch(/^(pending|verified)$/);
  } finally {
    await t.close();
  }
});
