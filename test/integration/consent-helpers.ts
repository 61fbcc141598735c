/** Shared set-up for the consent tests: people, tokens, Consents, sparse CGM traces. */
import { randomUUID } from 'node:crypto';
import type { Consent, Patient, Practitioner } from '@medplum/fhirtypes';
import { Wallet } from 'ethers';
import { afterAll, beforeAll } from '@jest/globals';
import request from 'supertest';
import type { App } from '../../src/app.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { nightscoutJson, makeTrace } from '../fixtures/cgm-ingest/trace.js';

export const LOINC_MGDL = 'http://loinc.org|99504-3';
export const DAY = 86_400_000;

/**
 * For a describe block: an app with SMART auth on and two patients, Ana and Ben (ids), set up
 * before its tests and closed after them. Read the fields inside tests, not at definition time.
 */
export function withTwoPatients(): { t: TestApp; ana: string; ben: string } {
  const ctx = {} as { t: TestApp; ana: string; ben: string };
  beforeAll(async () => {
    ctx.t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
    ctx.ana = await person(ctx.t.app, 'Patient', 'Rivera');
    ctx.ben = await person(ctx.t.app, 'Patient', 'Okafor');
  });
  afterAll(async () => {
    await ctx.t?.close();
  });
  return ctx;
}

export async function person(app: App, type: 'Patient' | 'Practitioner', family: string): Promise<string> {
  const { resource } = await app.repository.create({ resourceType: type, name: [{ family }] } as Patient | Practitioner);
  return resource.id!;
}

/** Registers a fresh address for a FHIR reference in the IdentityRegistry. */
export async function registerIdentity(app: App, reference: string): Promise<string> {
  const address = Wallet.createRandom().address;
  await app.consent.identity.registerGrantee(reference, address);
  return address;
}

export function patientToken(app: App, patientId: string): string {
  return app.smart.tokens.signAccessToken({
    gid: randomUUID(), clientId: 'patient-app', sub: `Patient/${patientId}`, fhirUser: `Patient/${patientId}`, patient: patientId,
    scopes: ['openid', 'fhirUser', 'launch/patient', 'patient/*.cruds'],
  }).token;
}

/** An EHR-launch style practitioner token with the patient in context. */
export function practitionerToken(app: App, practitionerId: string, patientId?: string, scopes = ['openid', 'fhirUser', 'launch', 'user/*.rs']): string {
  return app.smart.tokens.signAccessToken({
    gid: randomUUID(), clientId: 'ehr-app', sub: `Practitioner/${practitionerId}`, fhirUser: `Practitioner/${practitionerId}`,
    ...(patientId ? { patient: patientId } : {}), scopes,
  }).token;
}

export interface ConsentSpec {
  patient: string;
  actor: string;
  accessFrom?: number;
  accessTo: number;
  dataFrom: number;
  dataTo: number;
  purposes?: string[];
  classes?: string[];
  codes?: string[];
}

export function consentOf(spec: ConsentSpec): Consent {
  return {
    resourceType: 'Consent',
    status: 'active',
    scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] },
    category: [{ coding: [{ system: 'http://loinc.org', code: '59284-0' }] }],
    patient: { reference: `Patient/${spec.patient}` },
    performer: [{ reference: `Patient/${spec.patient}` }],
    policyRule: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'OPTIN' }] },
    provision: {
      type: 'permit',
      period: { start: new Date(spec.accessFrom ?? Date.now() - 60_000).toISOString(), end: new Date(spec.accessTo).toISOString() },
      actor: [{ role: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType', code: 'IRCP' }] }, reference: { reference: spec.actor } }],
      action: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentaction', code: 'access' }] }],
      purpose: (spec.purposes ?? ['TREAT']).map((code) => ({ system: 'http://terminology.hl7.org/CodeSystem/v3-ActReason', code })),
      ...(spec.classes ? { class: spec.classes.map((code) => ({ system: 'http://hl7.org/fhir/resource-types', code })) } : {}),
      ...(spec.codes ? { code: spec.codes.map((c) => ({ coding: [{ system: c.split('|')[0], code: c.split('|')[1] }] })) } : {}),
      dataPeriod: { start: new Date(spec.dataFrom).toISOString(), end: new Date(spec.dataTo).toISOString() },
    },
  };
}

/** A sparse trace: one reading every `everyMinutes` over `days` days, ending an hour ago. */
export function sparseTrace(days: number, everyMinutes = 120, seed = 7): { epochMs: number; sgv: number }[] {
  const step = everyMinutes / 5;
  return makeTrace(days, { seed }).filter((_r, i) => i % step === 0);
}

/** The patient ingests a trace through POST /cgm/ingest with their own token. */
export async function ingest(app: App, patientId: string, trace: { epochMs: number; sgv: number }[]): Promise<void> {
  const res = await request(app.http).post(`/cgm/ingest?patient=${patientId}&format=nightscout`)
    .set('Authorization', `Bearer ${patientToken(app, patientId)}`).send(nightscoutJson(trace as never));
  if (res.status !== 200) throw new Error(`ingest failed: ${res.status} ${JSON.stringify(res.body)}`);
}

/** POST /fhir/Consent as the patient. */
export function grant(app: App, spec: ConsentSpec) {
  return request(app.http).post('/fhir/Consent').set('Authorization', `Bearer ${patientToken(app, spec.patient)}`)
    .set('Content-Type', 'application/fhir+json').send(consentOf(spec));
}

/**
 * Ana and Ben, and Dr Osei with an identity and two grants for the 14 days before `now`: Ana's
 * glucose readings only (one code; beside Ben's unlimited grant, so a search is not cut to the code)
 * and all of Ben's Observations. Answers the ids and Dr Osei's `user/*.rs` token.
 */
export async function codeLimitedAndWholeGrants(app: App, now: number): Promise<{ ana: string; ben: string; doc: string; token: string }> {
  const ana = await person(app, 'Patient', 'Rivera');
  const ben = await person(app, 'Patient', 'Okafor');
  const doc = await person(app, 'Practitioner', 'Osei');
  await registerIdentity(app, `Practitioner/${doc}`);
  const base = { actor: `Practitioner/${doc}`, accessTo: now + 3 * DAY, dataFrom: now - 14 * DAY, dataTo: now };
  for (const spec of [{ ...base, patient: ana, classes: ['Observation'], codes: [LOINC_MGDL] }, { ...base, patient: ben, classes: ['Observation'] }]) {
    const res = await grant(app, spec);
    if (res.status !== 201) throw new Error(`grant failed: ${res.status} ${JSON.stringify(res.body)}`);
  }
  return { ana, ben, doc, token: practitionerToken(app, doc, undefined, ['openid', 'fhirUser', 'user/*.rs']) };
}
