/**
 * The access log through the facade: events are written in groups (GLUCOGUARD_AUDIT_WINDOW_MS), and
 * a request that may read AuditEvents first has every event recorded before it stored, so the log
 * never lags behind what its reader has just been answered.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { AuditEvent, Bundle } from '@medplum/fhirtypes';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';

let t: TestApp;
beforeAll(async () => {
  t = await startTestApp({ GLUCOGUARD_AUDIT_WINDOW_MS: '300' });
});
afterAll(async () => {
  await t?.close();
});

const about = (events: AuditEvent[], ref: string): AuditEvent[] => events.filter((e) => e.entity?.some((x) => x.what?.reference === ref));

async function storedEvents(): Promise<AuditEvent[]> {
  return (await t.app.repository.search({ resourceType: 'AuditEvent', count: 1000, offset: 0 })).resources as AuditEvent[];
}

describe('access log', () => {
  it('stores an event within the window, and shows it to an AuditEvent search made at once', async () => {
    expect((await request(t.app.http).get('/fhir/Observation/not-there-1')).status).toBe(404);
    // not written yet: the window is open
    expect(about(await storedEvents(), 'Observation/not-there-1')).toHaveLength(0);
    await new Promise((r) => setTimeout(r, 450));
    expect(about(await storedEvents(), 'Observation/not-there-1')).toHaveLength(1);

    expect((await request(t.app.http).get('/fhir/Observation/not-there-2')).status).toBe(404);
    const log = await request(t.app.http).get('/fhir/AuditEvent').query({ _count: '1000' });
    expect(log.status).toBe(200);
    const events = ((log.body as Bundle).entry ?? []).map((e) => e.resource as AuditEvent);
    expect(about(events, 'Observation/not-there-2')).toHaveLength(1);
  });

  it('stores the events a shutdown finds waiting', async () => {
    expect((await request(t.app.http).get('/fhir/Observation/not-there-3')).status).toBe(404);
    await t.restart();
    expect(about(await storedEvents(), 'Observation/not-there-3')).toHaveLength(1);
  });
});
