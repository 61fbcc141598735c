/**
 * The access log is written by the server alone (src/audit/server-written.ts; FHIR R4 AuditEvent:
 * servers do not accept update or delete, which would compromise the integrity of the audit record).
 * No FHIR write of an AuditEvent is taken — create, update, patch, delete, their conditional forms,
 * inside a batch or a transaction — from a patient's app, a Backend Services client, or anyone with
 * GLUCOGUARD_AUTH=off: 405 with an OperationOutcome and `Allow: GET, HEAD`, nothing written. The
 * server's own events keep being stored, the refused attempts among them.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import type { AuditEvent, Bundle, CapabilityStatement, OperationOutcome } from '@medplum/fhirtypes';
import request from 'supertest';
import type { App } from '../../src/app.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { patientToken, person, practitionerToken } from './consent-helpers.js';

let t: TestApp;
let ana: string;
let doc: string;
/** A genuine event of Ana's log (her own read of her Patient record). */
let genuine: AuditEvent;

beforeAll(async () => {
  t = await startTestApp({ GLUCOGUARD_AUTH: 'on', GLUCOGUARD_AUDIT_WINDOW_MS: '0' });
  ana = await person(t.app, 'Patient', 'Rivera');
  doc = await person(t.app, 'Practitioner', 'Osei');
  expect((await request(t.app.http).get(`/fhir/Patient/${ana}`).set('Authorization', `Bearer ${patientToken(t.app, ana)}`)).status).toBe(200);
  genuine = (await eventsAbout(t.app, ana))[0]!;
  expect(genuine).toBeDefined();
});
afterAll(async () => {
  await t?.close();
});

async function eventsAbout(app: App, patient: string): Promise<AuditEvent[]> {
  await app.consent.audit.flush();
  const all = (await app.repository.search({ resourceType: 'AuditEvent', count: 10_000, offset: 0 })).resources as AuditEvent[];
  return all.filter((e) => e.entity?.some((x) => x.what?.reference === `Patient/${patient}`));
}

const asAna = () => `Bearer ${patientToken(t.app, ana)}`;
const asBackend = () => `Bearer ${t.app.smart.tokens.signAccessToken({ gid: randomUUID(), clientId: 'backend', sub: 'backend', scopes: ['system/*.cruds'] }).token}`;

/** A copy of a genuine event made to say Dr Osei read Ana's record a week ago. */
function forged(): AuditEvent {
  const { id: _id, meta: _meta, ...rest } = structuredClone(genuine);
  return {
    ...rest,
    recorded: new Date(Date.now() - 7 * 86_400_000).toISOString(),
    agent: [{ who: { reference: `Practitioner/${doc}` }, requestor: true }],
  };
}

function expectRefused(res: request.Response): void {
  expect(res.status).toBe(405);
  expect(res.headers.allow).toBe('GET, HEAD');
  const outcome = res.body as OperationOutcome;
  expect(outcome.resourceType).toBe('OperationOutcome');
  expect(outcome.issue[0]).toMatchObject({ severity: 'error', code: 'not-supported' });
  expect(outcome.issue[0]!.diagnostics).toMatch(/written by the server only/);
}

describe('no FHIR write of an AuditEvent is taken from a patient\'s app (patient/*.cruds)', () => {
  test('delete is refused and the event still reads, unchanged', async () => {
    expectRefused(await request(t.app.http).delete(`/fhir/AuditEvent/${genuine.id}`).set('Authorization', asAna()));
    const read = await request(t.app.http).get(`/fhir/AuditEvent/${genuine.id}`).set('Authorization', asAna());
    expect(read.status).toBe(200);
    expect(read.body.meta.versionId).toBe(genuine.meta!.versionId);
  });

  test('update and patch are refused; no new version is stored', async () => {
    expectRefused(await request(t.app.http).put(`/fhir/AuditEvent/${genuine.id}`).set('Authorization', asAna())
      .set('Content-Type', 'application/fhir+json').send({ ...genuine, outcomeDesc: 'nothing happened' }));
    expectRefused(await request(t.app.http).patch(`/fhir/AuditEvent/${genuine.id}`).set('Authorization', asAna())
      .set('Content-Type', 'application/json-patch+json').send([{ op: 'replace', path: '/recorded', value: '2020-01-01T00:00:00Z' }]));
    const history = await t.app.repository.history({ resourceType: 'AuditEvent', id: genuine.id!, count: 10, offset: 0 });
    expect(history.entries.map((e) => e.versionId)).toEqual([genuine.meta!.versionId]);
  });

  test('a forged create (a genuine event\'s copy, another agent, backdated) is refused and stored nowhere', async () => {
    const before = (await eventsAbout(t.app, ana)).filter((e) => e.agent.some((a) => a.who?.reference === `Practitioner/${doc}`));
    expectRefused(await request(t.app.http).post('/fhir/AuditEvent').set('Authorization', asAna())
      .set('Content-Type', 'application/fhir+json').send(forged()));
    expectRefused(await request(t.app.http).post('/fhir/AuditEvent').set('Authorization', asAna())
      .set('Content-Type', 'application/fhir+json').set('If-None-Exist', `_id=${randomUUID()}`).send(forged()));
    const after = (await eventsAbout(t.app, ana)).filter((e) => e.agent.some((a) => a.who?.reference === `Practitioner/${doc}`));
    expect(after).toEqual(before);
    // nor does the app see one in Ana's log through the facade
    const log = await request(t.app.http).get('/fhir/AuditEvent').query({ patient: `Patient/${ana}`, _count: '1000' }).set('Authorization', asAna());
    expect(log.status).toBe(200);
    const shown = ((log.body as Bundle).entry ?? []).map((e) => e.resource as AuditEvent).filter((e) => e.resourceType === 'AuditEvent');
    expect(shown.some((e) => e.agent.some((a) => a.who?.reference === `Practitioner/${doc}`))).toBe(false);
  });

  test('conditional update, patch and delete are refused before any match is looked for', async () => {
    const criteria = { patient: `Patient/${ana}` };
    expectRefused(await request(t.app.http).put('/fhir/AuditEvent').query(criteria).set('Authorization', asAna())
      .set('Content-Type', 'application/fhir+json').send(forged()));
    expectRefused(await request(t.app.http).patch('/fhir/AuditEvent').query({ _id: genuine.id! }).set('Authorization', asAna())
      .set('Content-Type', 'application/json-patch+json').send([{ op: 'remove', path: '/outcomeDesc' }]));
    expectRefused(await request(t.app.http).delete('/fhir/AuditEvent').query(criteria).set('Authorization', asAna()));
    expect((await request(t.app.http).get(`/fhir/AuditEvent/${genuine.id}`).set('Authorization', asAna())).status).toBe(200);
  });

  test('a batch answers 405 for each AuditEvent entry and writes none of them', async () => {
    const batch: Bundle = {
      resourceType: 'Bundle', type: 'batch', entry: [
        { resource: forged(), request: { method: 'POST', url: 'AuditEvent' } },
        { resource: { ...genuine, outcomeDesc: 'edited' }, request: { method: 'PUT', url: `AuditEvent/${genuine.id}` } },
        { request: { method: 'DELETE', url: `AuditEvent/${genuine.id}` } },
      ],
    };
    const res = await request(t.app.http).post('/fhir').set('Authorization', asAna()).set('Content-Type', 'application/fhir+json').send(batch);
    expect(res.status).toBe(200);
    const entries = (res.body as Bundle).entry!;
    expect(entries.map((e) => e.response?.status)).toEqual(['405 Method Not Allowed', '405 Method Not Allowed', '405 Method Not Allowed']);
    expect((entries[0]!.response!.outcome as OperationOutcome).issue[0]).toMatchObject({ code: 'not-supported' });
    const read = await request(t.app.http).get(`/fhir/AuditEvent/${genuine.id}`).set('Authorization', asAna());
    expect(read.body.meta.versionId).toBe(genuine.meta!.versionId);
  });

  test('a transaction holding an AuditEvent write fails whole: its other writes are not made either', async () => {
    const marker = `tx-${randomUUID()}`;
    const tx: Bundle = {
      resourceType: 'Bundle', type: 'transaction', entry: [
        { resource: { resourceType: 'Observation', status: 'final', code: { text: marker }, subject: { reference: `Patient/${ana}` } } as never,
          request: { method: 'POST', url: 'Observation' } },
        { resource: forged(), request: { method: 'POST', url: 'AuditEvent' } },
      ],
    };
    const res = await request(t.app.http).post('/fhir').set('Authorization', asAna()).set('Content-Type', 'application/fhir+json').send(tx);
    // 400 naming the entry: the transaction's own URL takes POST, so a 405 with its Allow would misstate it
    expect(res.status).toBe(400);
    expect(res.headers.allow).toBeUndefined();
    expect((res.body as OperationOutcome).issue[0]).toMatchObject({ code: 'not-supported', expression: ['Bundle.entry[1].request.method'] });
    expect((res.body as OperationOutcome).issue[0]!.diagnostics).toMatch(/^Bundle\.entry\[1\]: AuditEvent resources are written by the server only/);
    const observations = (await t.app.repository.search({ resourceType: 'Observation', count: 1000, offset: 0 })).resources;
    expect(observations.some((o) => JSON.stringify(o).includes(marker))).toBe(false);
  });
});

test('$validate of an AuditEvent write answers the refusal as its issue (no 405 misstating what the operation URL takes)', async () => {
  const res = await request(t.app.http).post('/fhir/AuditEvent/$validate').set('Authorization', asAna())
    .set('Content-Type', 'application/fhir+json').send(forged());
  expect(res.status).toBe(200);
  expect(res.headers.allow).toBeUndefined();
  expect((res.body as OperationOutcome).issue).toEqual([expect.objectContaining({ severity: 'error', code: 'not-supported' })]);
});

describe('nor from anyone else', () => {
  test('a Backend Services client (system/*.cruds, no consent involved) cannot create or delete one', async () => {
    expectRefused(await request(t.app.http).post('/fhir/AuditEvent').set('Authorization', asBackend())
      .set('Content-Type', 'application/fhir+json').send(forged()));
    expectRefused(await request(t.app.http).delete(`/fhir/AuditEvent/${genuine.id}`).set('Authorization', asBackend()));
  });

  test('a practitioner with write scopes cannot either', async () => {
    const token = practitionerToken(t.app, doc, ana, ['launch', 'user/*.cruds']);
    expectRefused(await request(t.app.http).post('/fhir/AuditEvent').set('Authorization', `Bearer ${token}`)
      .set('Content-Type', 'application/fhir+json').send(forged()));
  });

  test('with GLUCOGUARD_AUTH=off (no token at all) the writes are refused too', async () => {
    const open = await startTestApp({ GLUCOGUARD_AUDIT_WINDOW_MS: '0' });
    try {
      const patient = await person(open.app, 'Patient', 'Open');
      const { resource: stored } = await open.app.repository.create<AuditEvent>({ ...forged(), entity: [{ what: { reference: `Patient/${patient}` } }] });
      expectRefused(await request(open.app.http).post('/fhir/AuditEvent').set('Content-Type', 'application/fhir+json').send(forged()));
      expectRefused(await request(open.app.http).put(`/fhir/AuditEvent/${stored.id}`).set('Content-Type', 'application/fhir+json').send(stored));
      expectRefused(await request(open.app.http).delete(`/fhir/AuditEvent/${stored.id}`));
      expect((await request(open.app.http).get(`/fhir/AuditEvent/${stored.id}`)).status).toBe(200);
    } finally {
      await open.close();
    }
  });
});

describe('the server\'s own writes', () => {
  test('each refused attempt is itself in the log, as a denied write by its requester', async () => {
    const res = await request(t.app.http).delete(`/fhir/AuditEvent/${genuine.id}`).set('Authorization', asAna());
    expect(res.status).toBe(405);
    await t.app.consent.audit.flush();
    const all = (await t.app.repository.search({ resourceType: 'AuditEvent', count: 10_000, offset: 0 })).resources as AuditEvent[];
    const attempts = all.filter((e) => e.action === 'D' && e.outcome === '4' && e.entity?.some((x) => x.what?.reference === `AuditEvent/${genuine.id}`));
    expect(attempts.length).toBeGreaterThan(0);
  });

  test('the CapabilityStatement offers AuditEvent for reading and searching only', async () => {
    const cs = (await request(t.app.http).get('/fhir/metadata')).body as CapabilityStatement;
    const audit = cs.rest![0]!.resource!.find((r) => r.type === 'AuditEvent')!;
    expect(audit.interaction!.map((i) => i.code).sort()).toEqual(['history-instance', 'history-type', 'read', 'search-type', 'vread']);
    expect(audit).toMatchObject({ updateCreate: false, conditionalCreate: false, conditionalUpdate: false, conditionalDelete: 'not-supported' });
    expect((audit.operation ?? []).map((o) => o.name)).not.toContain('validate');
    // other types keep their writes
    const observation = cs.rest![0]!.resource!.find((r) => r.type === 'Observation')!;
    expect(observation.interaction!.map((i) => i.code)).toEqual(expect.arrayContaining(['create', 'update', 'patch', 'delete']));
  });
});
