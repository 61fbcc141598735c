/**
 * Docs walkthrough finding: `/fhir` answers carried ETag and Last-Modified but no Cache-Control, so
 * a browser could keep a patient's data on disk (a shared clinic workstation). Every answer of the
 * data API now says `Cache-Control: no-store`, with a token and with GLUCOGUARD_AUTH=off alike; the
 * public capability statement and SMART discovery stay cacheable; a conditional read still answers
 * 304 (no-store keeps it off disk, not the client from revalidating what it holds).
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import request from 'supertest';
import { startTestApp, type TestApp } from '../support/app.js';
import { patientToken, person } from './consent-helpers.js';

describe('/fhir answers are never stored by a cache (auth on)', () => {
  let t: TestApp;
  let ana: string;
  let token: string;

  beforeAll(async () => {
    t = await startTestApp({ GLUCOGUARD_AUTH: 'on' });
    ana = await person(t.app, 'Patient', 'Rivera');
    token = patientToken(t.app, ana);
  }, 60_000);
  afterAll(async () => {
    await t?.close();
  });

  test('a read, a search, a 404 and a refused request say no-store', async () => {
    const read = await request(t.app.http).get(`/fhir/Patient/${ana}`).set('Authorization', `Bearer ${token}`);
    expect(read.status).toBe(200);
    expect(read.headers.etag).toBeDefined();
    expect(read.headers['cache-control']).toBe('no-store');
    const search = await request(t.app.http).get(`/fhir/Patient?_id=${ana}`).set('Authorization', `Bearer ${token}`);
    expect(search.status).toBe(200);
    expect(search.headers['cache-control']).toBe('no-store');
    const missing = await request(t.app.http).get('/fhir/Observation/no-such-id').set('Authorization', `Bearer ${token}`);
    expect(missing.status).toBe(404);
    expect(missing.headers['cache-control']).toBe('no-store');
    const refused = await request(t.app.http).get(`/fhir/Patient/${ana}`);
    expect(refused.status).toBe(401);
    expect(refused.headers['cache-control']).toBe('no-store');
  });

  test('If-None-Match still answers 304, also no-store', async () => {
    const read = await request(t.app.http).get(`/fhir/Patient/${ana}`).set('Authorization', `Bearer ${token}`);
    const again = await request(t.app.http).get(`/fhir/Patient/${ana}`).set('Authorization', `Bearer ${token}`).set('If-None-Match', read.headers.etag!);
    expect(again.status).toBe(304);
    expect(again.headers['cache-control']).toBe('no-store');
  });

  test('the capability statement and SMART discovery stay cacheable', async () => {
    const metadata = await request(t.app.http).get('/fhir/metadata');
    expect(metadata.status).toBe(200);
    expect(metadata.headers['cache-control'] ?? '').not.toContain('no-store');
    const discovery = await request(t.app.http).get('/fhir/.well-known/smart-configuration');
    expect(discovery.status).toBe(200);
    expect(discovery.headers['cache-control'] ?? '').not.toContain('no-store');
  });
});

describe('/fhir answers are never stored by a cache (GLUCOGUARD_AUTH=off)', () => {
  let t: TestApp;

  beforeAll(async () => {
    t = await startTestApp();
  }, 60_000);
  afterAll(async () => {
    await t?.close();
  });

  test('a create and a read say no-store', async () => {
    const created = await request(t.app.http).post('/fhir/Patient').set('Content-Type', 'application/fhir+json').send({ resourceType: 'Patient', name: [{ family: 'Okafor' }] });
    expect(created.status).toBe(201);
    expect(created.headers['cache-control']).toBe('no-store');
    const read = await request(t.app.http).get(`/fhir/Patient/${created.body.id}`);
    expect(read.status).toBe(200);
    expect(read.headers['cache-control']).toBe('no-store');
  });
});
