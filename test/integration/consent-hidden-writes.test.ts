/**
 * Consent writes are no existence oracle (docs/architecture.md: a resource a requester cannot see
 * is absent to them): DELETE, PUT and `$sign` of a Consent the requester can neither see nor
 * consent for answer exactly as for an id never stored, and change nothing; PATCH is refused alike
 * for both. Someone who can see the Consent (a grant naming the type) but may not revoke it still
 * hears why (403).
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Consent } from '@medplum/fhirtypes';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { DAY, grant, person, practitionerToken, registerIdentity } from './consent-helpers.js';

describe('writes of a Consent the requester cannot see', () => {
  let t: TestApp;
  let ben: string;
  let consent: Consent;
  let backend: string;
  let doc: string;

  const as = (token: string) => ({
    get: (path: string) => request(t.app.http).get(`/fhir/${path}`).set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT'),
    send: (method: 'put' | 'delete' | 'patch' | 'post', path: string, body?: unknown, type = 'application/fhir+json') => request(t.app.http)[method](`/fhir/${path}`)
      .set('Authorization', `Bearer ${token}`).set('X-Purpose-Of-Use', 'TREAT').set('Content-Type', type).send(body === undefined ? '' : JSON.stringify(body)),
  });

  /** Every write a client can try on Consent/`id`, with a body naming `id`. */
  const attempts = (token: string, id: string) => [
    ['GET', () => as(token).get(`Consent/${id}`)],
    ['DELETE', () => as(token).send('delete', `Consent/${id}`)],
    ['PUT inactive', () => as(token).send('put', `Consent/${id}`, { ...consent, id, status: 'inactive' })],
    ['PUT active', () => as(token).send('put', `Consent/${id}`, { ...consent, id })],
    ['PATCH', () => as(token).send('patch', `Consent/${id}`, [{ op: 'replace', path: '/status', value: 'inactive' }], 'application/json-patch+json')],
    ['$sign', () => as(token).send('post', `Consent/${id}/$sign`, { resourceType: 'Parameters', parameter: [{ name: 'signature', valueString: `0x${'11'.repeat(65)}` }] })],
  ] as const;

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
    ben = await person(t.app, 'Patient', 'Okafor');
    doc = await person(t.app, 'Practitioner', 'Osei');
    await registerIdentity(t.app, `Practitioner/${doc}`);
    // Ben lets the doctor see his Consents (among his readings); the backend client gets nothing
    const res = await grant(t.app, { patient: ben, actor: `Practitioner/${doc}`, accessTo: Date.now() + DAY, dataFrom: Date.now() - 10 * DAY, dataTo: Date.now(), classes: ['Observation', 'Consent'] });
    expect(res.status).toBe(201);
    consent = res.body as Consent;
    backend = t.app.smart.tokens.signAccessToken({ gid: randomUUID(), clientId: 'backend', sub: 'backend', scopes: ['system/*.cruds'] }).token;
  }, 120_000);
  afterAll(async () => {
    await t?.close();
  });

  test('a hidden Consent answers every write exactly like an id never stored (404; PATCH 405 for both)', async () => {
    const hidden = attempts(backend, consent.id!);
    const absentId = randomUUID();
    const absent = attempts(backend, absentId);
    for (let i = 0; i < hidden.length; i++) {
      const [what, send] = hidden[i]!;
      const seen = await send();
      const twin = await absent[i]![1]();
      expect({ what, status: seen.status, body: JSON.stringify(seen.body).replaceAll(consent.id!, '<id>') })
        .toEqual({ what, status: twin.status, body: JSON.stringify(twin.body).replaceAll(absentId, '<id>') });
      expect(seen.status).toBe(what === 'PATCH' ? 405 : 404);
    }
    // nothing changed: the Consent is active and its grant in force
    expect((await t.app.repository.read<Consent>('Consent', consent.id!)).status).toBe('active');
    const grantId = consent.identifier!.find((i) => i.system === 'urn:glucoguard:consent-grant')!.value!;
    expect((await t.app.consent.registry.getGrant(grantId))?.revoked).toBe(false);
  });

  test('a Consent the requester can see but not revoke is a 403 that says who may', async () => {
    const token = practitionerToken(t.app, doc, undefined, ['openid', 'fhirUser', 'user/*.cruds']);
    expect((await as(token).get(`Consent/${consent.id}`)).status).toBe(200);
    const res = await as(token).send('delete', `Consent/${consent.id}`);
    expect(res.status).toBe(403);
    expect(JSON.stringify(res.body)).toContain('Only the patient or their guardian');
    expect((await t.app.repository.read<Consent>('Consent', consent.id!)).status).toBe('active');
  });
});
