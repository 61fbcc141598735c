/**
 * A Subscription or a Consent inside a transaction Bundle was stored as plain data: the Subscription
 * skipped its endpoint rules, state and handshake (201 for an endpoint on the chain's RPC port, never
 * delivered), the Consent its on-chain grant (subscriptions round, 2026-12-06). Their writes are done
 * by their own modules, so a transaction refuses them (400, nothing applied); a batch entry goes
 * through those modules as a request on its own does.
 */
import { afterAll, beforeAll, expect, test } from '@jest/globals';
import type { Bundle, OperationOutcome, ResourceType } from '@medplum/fhirtypes';
import request from 'supertest';
import { TOPICS } from '../../src/exchange/subscriptions.js';
import { startTestApp, type TestApp } from '../support/app.js';

let t: TestApp;
beforeAll(async () => {
  t = await startTestApp();
}, 60_000);
afterAll(async () => {
  await t?.close();
});

const subscription = { resourceType: 'Subscription', status: 'requested', reason: 'x', criteria: TOPICS.readings, channel: { type: 'rest-hook', endpoint: 'http://127.0.0.1:9/hook' } };
const consent = {
  resourceType: 'Consent', status: 'active', scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] },
  category: [{ coding: [{ system: 'http://loinc.org', code: '59284-0' }] }], patient: { reference: 'Patient/nobody' },
  policyRule: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'OPTIN' }] },
};
const count = async (type: string) => (await t.app.repository.search({ resourceType: type as ResourceType, count: 100, offset: 0 })).resources.length;

test.each([['Subscription', subscription], ['Consent', consent]])('a %s in a transaction is refused and nothing of the transaction is applied', async (type, resource) => {
  const before = { [type]: await count(type), Patient: await count('Patient') };
  const res = await request(t.app.http).post('/fhir').set('Content-Type', 'application/fhir+json').send({
    resourceType: 'Bundle', type: 'transaction', entry: [
      { resource: { resourceType: 'Patient', name: [{ family: 'Tx' }] }, request: { method: 'POST', url: 'Patient' } },
      { resource, request: { method: 'POST', url: type } },
    ],
  } as Bundle);
  expect(res.status).toBe(400);
  expect((res.body as OperationOutcome).issue[0]!.diagnostics).toMatch(new RegExp(`Bundle.entry\\[1\\]: a ${type} is written on its own`));
  expect({ [type]: await count(type), Patient: await count('Patient') }).toEqual(before);
});

test('in a batch the same Subscription goes through the Subscription rules, as on its own', async () => {
  const res = await request(t.app.http).post('/fhir').set('Content-Type', 'application/fhir+json').send({
    resourceType: 'Bundle', type: 'batch', entry: [{ resource: subscription, request: { method: 'POST', url: 'Subscription' } }],
  } as Bundle);
  expect(res.status).toBe(200);
  expect((res.body as Bundle).entry![0]!.response!.status).toMatch(/^400/); // the endpoint is not allowed
});
