/**
 * Black-box round 25: `$validate` given its resource in a Parameters body, the form the operation
 * defines (operation-resource-validate.html). The operation answers 200 with the issues whether or
 * not the resource is valid; a 4xx means it could not validate. A resource with a code outside its
 * required value set, or a date not on the calendar, had been 400 in that form (the Parameters was
 * refused as malformed input) and 200 only when sent bare.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';

const FHIR_JSON = 'application/fhir+json';

describe('$validate with a Parameters body', () => {
  let t: TestApp;
  const validate = (body: unknown) => request(t.app.http).post('/fhir/Patient/$validate').set('Content-Type', FHIR_JSON).send(body as object);
  const wrapped = (resource: unknown) => ({ resourceType: 'Parameters', parameter: [{ name: 'resource', resource }] });

  beforeAll(async () => {
    t = await startTestApp();
  });
  afterAll(async () => {
    await t?.close();
  });

  test.each([
    ['a code outside its required value set', { resourceType: 'Patient', gender: 'bogus' }, 'code-invalid', 'Patient.gender'],
    ['a date that is not on the calendar', { resourceType: 'Patient', birthDate: '2026-02-30' }, 'value', 'Patient.birthDate'],
  ])('%s: 200 with the issue, as when the resource is sent bare', async (_what, resource, code, path) => {
    const bare = await validate(resource);
    const inParameters = await validate(wrapped(resource));
    for (const res of [bare, inParameters]) {
      expect(res.status).toBe(200);
      expect(res.body.resourceType).toBe('OperationOutcome');
      expect(res.body.issue).toContainEqual(expect.objectContaining({ severity: 'error', code, expression: [path] }));
    }
  });

  test('a valid resource in Parameters has no issues', async () => {
    const res = await validate(wrapped({ resourceType: 'Patient', gender: 'female', birthDate: '2024-02-29' }));
    expect(res.status).toBe(200);
    expect(res.body.issue.every((i: { severity: string }) => i.severity === 'information')).toBe(true);
  });

  test('a malformed Parameters around it is still 400', async () => {
    for (const body of [
      { resourceType: 'Parameters', parameter: 'x' },
      wrapped('not a resource'),
      { resourceType: 'Parameters', parameter: [{ name: 'mode', valueCode: 5 }, { name: 'resource', resource: { resourceType: 'Patient' } }] },
    ]) {
      const res = await validate(body);
      expect(res.status).toBe(400);
      expect(res.body.resourceType).toBe('OperationOutcome');
    }
  });
});
