/**
 * The grant path over HTTP: profile validation (422 for what GlucoGuard cannot enforce, nothing
 * stored), only the patient may consent, a wallet-signed (non-custodial) grant through `$sign`,
 * and revocation by `status: inactive`.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Consent, Parameters } from '@medplum/fhirtypes';
import { Wallet } from 'ethers';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { DAY, consentOf, grant, patientToken, person, practitionerToken, registerIdentity } from './consent-helpers.js';

describe('grant path', () => {
  let t: TestApp;
  let ana: string;
  let doc: string;
  const now = Date.now();
  const spec = () => ({ patient: ana, actor: `Practitioner/${doc}`, accessTo: now + DAY, dataFrom: now - 7 * DAY, dataTo: now });
  const consentCount = async (): Promise<number> => (await t.app.repository.search({ resourceType: 'Consent', count: 100, offset: 0 })).resources.length;
  const post = (body: unknown, token = patientToken(t.app, ana)) => request(t.app.http).post('/fhir/Consent')
    .set('Authorization', `Bearer ${token}`).set('Content-Type', 'application/fhir+json').send(body as object);

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
    ana = await person(t.app, 'Patient', 'Rivera');
    doc = await person(t.app, 'Practitioner', 'Osei');
    await registerIdentity(t.app, `Practitioner/${doc}`);
  });
  afterAll(async () => {
    await t?.close();
  });

  test.each([
    ['a nested provision', (c: Consent) => { c.provision!.provision = [{ type: 'deny' }]; }],
    ['a deny provision', (c: Consent) => { c.provision!.type = 'deny'; }],
    ['a security label', (c: Consent) => { c.provision!.securityLabel = [{ system: 'http://terminology.hl7.org/CodeSystem/v3-Confidentiality', code: 'R' }]; }],
    ['an unknown purpose', (c: Consent) => { c.provision!.purpose = [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActReason', code: 'MARKETING' }]; }],
    ['no data period', (c: Consent) => { delete c.provision!.dataPeriod; }],
    ['a class that is not a patient resource type', (c: Consent) => { c.provision!.class = [{ system: 'http://hl7.org/fhir/resource-types', code: 'Organization' }]; }],
    ['two actors', (c: Consent) => { c.provision!.actor = [...c.provision!.actor!, ...c.provision!.actor!]; }],
    ['a modifier extension', (c: Consent) => { c.modifierExtension = [{ url: 'http://example.org/x', valueBoolean: true }]; }],
  ])('rejects %s with 422 and stores nothing', async (_name, mutate) => {
    const before = await consentCount();
    const c = consentOf(spec());
    mutate(c);
    const res = await post(c);
    expect(res.status).toBe(422);
    expect(res.body.resourceType).toBe('OperationOutcome');
    expect(await consentCount()).toBe(before);
  });

  test('a grantee without a registered identity is 422', async () => {
    const stranger = await person(t.app, 'Practitioner', 'Unregistered');
    const res = await post(consentOf({ ...spec(), actor: `Practitioner/${stranger}` }));
    expect(res.status).toBe(422);
    expect(JSON.stringify(res.body)).toContain('no registered identity');
  });

  test('only the patient may grant: a practitioner or another patient gets 403', async () => {
    expect((await post(consentOf(spec()), practitionerToken(t.app, doc, ana, ['user/*.cruds']))).status).toBe(403);
    const ben = await person(t.app, 'Patient', 'Okafor');
    expect((await post(consentOf(spec()), patientToken(t.app, ben))).status).toBe(403);
  });

  test('custodial grant: 201 active with the grant id; revoked with status inactive', async () => {
    const res = await grant(t.app, spec());
    expect(res.status).toBe(201);
    const c = res.body as Consent;
    expect(c.status).toBe('active');
    const put = await request(t.app.http).put(`/fhir/Consent/${c.id}`).set('Authorization', `Bearer ${patientToken(t.app, ana)}`)
      .set('Content-Type', 'application/fhir+json').send({ ...c, status: 'inactive' });
    expect(put.status).toBe(200);
    expect(put.body.status).toBe('inactive');
    const grantId = c.identifier!.find((i) => i.system === 'urn:glucoguard:consent-grant')!.value!;
    expect((await t.app.consent.registry.getGrant(grantId))?.revoked).toBe(true);
    // another change to a recorded Consent is refused
    const again = await request(t.app.http).put(`/fhir/Consent/${c.id}`).set('Authorization', `Bearer ${patientToken(t.app, ana)}`)
      .set('Content-Type', 'application/fhir+json').send({ ...put.body, status: 'active' });
    expect(again.status).toBe(422);
  });

  test("non-custodial: 202 with the typed data, the wallet's signature through $sign makes it active", async () => {
    const carla = await person(t.app, 'Patient', 'Mendes');
    const wallet = Wallet.createRandom();
    await t.app.consent.keys.registerWallet(carla, wallet.address);
    const res = await post(consentOf({ ...spec(), patient: carla }), patientToken(t.app, carla));
    expect(res.status).toBe(202);
    const params = res.body as Parameters;
    const consent = params.parameter!.find((p) => p.name === 'consent')!.resource as Consent;
    expect(consent.status).toBe('proposed');
    const typed = JSON.parse(params.parameter!.find((p) => p.name === 'typedData')!.valueString!);
    expect(typed.message.patient).toBe(wallet.address);
    // a signature by another key is refused by the contract (422), nothing changes
    const wrong = await Wallet.createRandom().signTypedData(typed.domain, typed.types, typed.message);
    const sign = (signature: string) => request(t.app.http).post(`/fhir/Consent/${consent.id}/$sign`).set('Authorization', `Bearer ${patientToken(t.app, carla)}`)
      .set('Content-Type', 'application/fhir+json').send({ resourceType: 'Parameters', parameter: [{ name: 'signature', valueString: signature }] });
    expect((await sign(wrong)).status).toBe(422);
    const ok = await sign(await wallet.signTypedData(typed.domain, typed.types, typed.message));
    expect(ok.status).toBe(200);
    expect(ok.body.status).toBe('active');
  });
});
