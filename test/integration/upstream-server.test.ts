/**
 * The test FHIR server other suites build on (test/support/upstream-server.ts) behaves like a real
 * server where they rely on it: HTTP statuses and headers, paging links, tombstones, token endpoint
 * checks of client assertions, and the tamper hook.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import type { Bundle, Patient } from '@medplum/fhirtypes';
import { SignJWT, exportJWK, generateKeyPair } from 'jose';
import { startUpstreamFhirServer, type UpstreamFhirServer } from '../support/upstream-server.js';

const json = { 'content-type': 'application/fhir+json', accept: 'application/fhir+json' };

describe('test upstream FHIR server: REST behaviour', () => {
  let server: UpstreamFhirServer;
  beforeAll(async () => { server = await startUpstreamFhirServer(); });
  afterAll(async () => { await server.close(); });

  it('create answers 201 with Location, ETag and a server-assigned id', async () => {
    const res = await fetch(`${server.url}/Patient`, { method: 'POST', headers: json, body: JSON.stringify({ resourceType: 'Patient', id: 'mine' }) });
    expect(res.status).toBe(201);
    const body = await res.json() as Patient;
    expect(body.id).not.toBe('mine');
    expect(res.headers.get('location')).toBe(`${server.url}/Patient/${body.id}/_history/${body.meta!.versionId}`);
    expect(res.headers.get('etag')).toBe(`W/"${body.meta!.versionId}"`);
  });

  it('delete leaves a tombstone: read 410, vread of the deletion 410, history keeps it', async () => {
    const created = await server.repo.createResource<Patient>({ resourceType: 'Patient' });
    expect((await fetch(`${server.url}/Patient/${created.id}`, { method: 'DELETE' })).status).toBe(200);
    expect((await fetch(`${server.url}/Patient/${created.id}`)).status).toBe(410);
    const history = await (await fetch(`${server.url}/Patient/${created.id}/_history`)).json() as Bundle;
    expect(history.entry?.map((e) => e.request?.method)).toEqual(['DELETE', 'POST']);
    const deletionVersion = /W\/"(.+)"/.exec(history.entry![0]!.response!.etag!)![1];
    expect((await fetch(`${server.url}/Patient/${created.id}/_history/${deletionVersion}`)).status).toBe(410);
  });

  it('search pages with absolute next/previous links and marks match entries', async () => {
    for (let i = 0; i < 3; i++) await server.repo.createResource<Patient>({ resourceType: 'Patient', name: [{ family: 'Pager' }] });
    const page = await (await fetch(`${server.url}/Patient?family=Pager&_count=2&_offset=1`)).json() as Bundle;
    expect(page.entry).toHaveLength(2);
    expect(page.entry!.every((e) => e.search?.mode === 'match' && e.fullUrl?.startsWith(`${server.url}/Patient/`))).toBe(true);
    expect(page.link?.find((l) => l.relation === 'previous')?.url).toBe(`${server.url}/Patient?family=Pager&_count=2&_offset=0`);
    expect(page.link?.find((l) => l.relation === 'next')).toBeUndefined();
  });

  it('tamper changes stored content without a new version', async () => {
    const created = await server.repo.createResource<Patient>({ resourceType: 'Patient', gender: 'female' });
    server.repo.tamper('Patient', created.id, (r) => { (r as Patient).gender = 'male'; });
    const read = await (await fetch(`${server.url}/Patient/${created.id}`)).json() as Patient;
    expect(read.gender).toBe('male');
    expect(read.meta?.versionId).toBe(created.meta?.versionId);
    const vread = await (await fetch(`${server.url}/Patient/${created.id}/_history/${created.meta!.versionId}`)).json() as Patient;
    expect(vread.gender).toBe('male');
  });

  it('records what it received and can be intercepted', async () => {
    server.intercept((req) => (req.url.endsWith('/Patient/boom') ? { status: 503, body: 'down' } : undefined));
    try {
      expect((await fetch(`${server.url}/Patient/boom`, { headers: { 'x-probe': '1' } })).status).toBe(503);
    } finally {
      server.intercept(undefined);
    }
    expect(server.requests.at(-1)).toMatchObject({ method: 'GET', url: '/fhir/Patient/boom' });
    expect(server.requests.at(-1)!.headers['x-probe']).toBe('1');
  });
});

describe('test upstream FHIR server: Backend Services token endpoint', () => {
  const clientId = 'test-client';
  let server: UpstreamFhirServer;
  let privateKey: CryptoKey;
  beforeAll(async () => {
    const pair = await generateKeyPair('ES384');
    privateKey = pair.privateKey;
    server = await startUpstreamFhirServer({
      backendServices: { clientId, publicJwks: [{ ...(await exportJWK(pair.publicKey)), kid: 'k1', alg: 'ES384' }], tokenLifetimeSeconds: 120 },
    });
  });
  afterAll(async () => { await server.close(); });

  const assertion = (claims: { exp?: number; jti?: string; kid?: string; aud?: string } = {}): Promise<string> => {
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({ jti: claims.jti ?? randomUUID() })
      .setProtectedHeader({ alg: 'ES384', ...(claims.kid === '' ? {} : { kid: claims.kid ?? 'k1' }) })
      .setIssuer(clientId).setSubject(clientId).setAudience(claims.aud ?? server.tokenUrl)
      .setIssuedAt(now).setExpirationTime(claims.exp ?? now + 240)
      .sign(privateKey);
  };
  const requestToken = async (clientAssertion: string) => fetch(server.tokenUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      grant_type: 'client_credentials', scope: 'system/*.rs',
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: clientAssertion,
    }),
  });

  it('issues a token for a valid assertion, and FHIR requires it', async () => {
    expect((await fetch(`${server.url}/metadata`)).status).toBe(401);
    const res = await requestToken(await assertion());
    expect(res.status).toBe(200);
    const token = await res.json() as { access_token: string; expires_in: number; token_type: string };
    expect([token.token_type, token.expires_in]).toEqual(['bearer', 120]);
    expect((await fetch(`${server.url}/metadata`, { headers: { authorization: `Bearer ${token.access_token}` } })).status).toBe(200);
    server.revokeTokens();
    expect((await fetch(`${server.url}/metadata`, { headers: { authorization: `Bearer ${token.access_token}` } })).status).toBe(401);
  });

  it.each([
    ['a replayed jti', async () => { const jti = randomUUID(); await requestToken(await assertion({ jti })); return assertion({ jti }); }],
    ['exp more than 5 minutes ahead', async () => assertion({ exp: Math.floor(Date.now() / 1000) + 600 })],
    ['no kid', async () => assertion({ kid: '' })],
    ['the wrong audience', async () => assertion({ aud: 'https://elsewhere.example/token' })],
  ])('refuses %s with invalid_client', async (_name, make) => {
    const res = await requestToken(await make());
    expect(res.status).toBe(401);
    expect(((await res.json()) as { error: string }).error).toBe('invalid_client');
  });
});
