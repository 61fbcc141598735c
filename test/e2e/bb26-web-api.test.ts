/**
 * Black-box round of the apps' API (/apps/api), as the portal and a curious client call it:
 * - a form post (application/x-www-form-urlencoded) of a password change was read as an empty body:
 *   400 "current and password are required" although both were sent. A body that is not JSON is now
 *   415, saying JSON is expected, and changes nothing;
 * - a path the API does not have answered the server's generic `{"error":"Not found"}`: every answer
 *   of /apps/api is now an OperationOutcome.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Patient } from '@medplum/fhirtypes';
import request from 'supertest';
import { verifyPassword } from '../../src/smart/passwords.js';
import { startTestApp, type TestApp } from '../support/app.js';
import { patientToken } from '../integration/consent-helpers.js';

const ANA = { username: 'ana.api', password: 'first api pw 1' };

describe('/apps/api answers', () => {
  let t: TestApp;
  let ana: string;

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
    ana = (await t.app.repository.create<Patient>({ resourceType: 'Patient', name: [{ family: 'Api' }] })).resource.id!;
    await t.app.smart.store.addUser({ ...ANA, fhirUser: `Patient/${ana}` });
  }, 60_000);

  afterAll(async () => {
    await t?.close();
  });

  test('a password change sent as a form is refused as not JSON (415), and the password stays', async () => {
    const res = await request(t.app.http).post('/apps/api/password').set('Authorization', `Bearer ${patientToken(t.app, ana)}`)
      .type('form').send({ current: ANA.password, password: 'second api pw 2' });
    expect(res.status).toBe(415);
    expect(res.body).toMatchObject({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', diagnostics: expect.stringContaining('JSON') }] });
    await expect(verifyPassword(ANA.password, t.app.smart.store.getUser(ANA.username)!.passwordHash)).resolves.toBe(true);
  });

  test('a path the API does not have is an OperationOutcome 404', async () => {
    for (const [method, path] of [['get', '/apps/api/nope'], ['get', '/apps/api/password'], ['delete', '/apps/api/guardians']] as const) {
      const res = await request(t.app.http)[method](path).set('Authorization', `Bearer ${patientToken(t.app, ana)}`);
      expect(res.status).toBe(404);
      expect(res.body).toMatchObject({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'not-found' }] });
    }
  });
});
