/**
 * SMART auth layer figures: access-token verifications/s on the FHIR request path, client_credentials
 * token requests/s (client_secret_basic, private_key_jwt RS384 and ES384), and the latency the auth
 * layer adds to `GET /fhir/Patient/ID`, all against a baseline handler in the same process and run.
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import express from 'express';
import { SignJWT, exportJWK, generateKeyPair } from 'jose';
import { loadConfig } from '../src/config.js';
import { EmbeddedKeyValueStore } from '../src/kv/embedded.js';
import { MemoryKeyValueStore } from '../src/kv/memory.js';
import { loadServerKeys } from '../src/keys.js';
import { createLogger } from '../src/log.js';
import { createSmart } from '../src/smart/index.js';
import { fmt, percentile, type Log } from './stats.js';

export async function run(log: Log): Promise<Record<string, number>> {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'gg-bench-smart-'));
  const app = express();
  const server = http.createServer(app);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  const baseUrl = `http://127.0.0.1:${port}`;
  const config = loadConfig({}, { dataDir, baseUrl, port, logLevel: 'silent' });
  // the KV the server uses by default (SQLite in the data directory); GLUCOGUARD_KV=memory for the in-process one
  const kv = process.env.GLUCOGUARD_KV === 'memory' ? new MemoryKeyValueStore()
    : new EmbeddedKeyValueStore({ file: path.join(dataDir, 'kv', 'kv.sqlite'), rootKey: loadServerKeys(config).root });
  log(`KV: ${kv.description.adapter}`);
  const smart = await createSmart({ config, kv, logger: createLogger('silent'), fhirBase: `${baseUrl}/fhir`, rateLimits: { tokenPerIp: 1e9, tokenPerClient: 1e9 } });
  const agent = new http.Agent({ keepAlive: true, maxSockets: 32 });
  try {
    app.use(smart.router);
    const patient = { resourceType: 'Patient', id: 'p1' };
    app.get('/plain/Patient/:id', (_req, res) => {
      res.json(patient);
    });
    app.get('/fhir/Patient/:id', async (req, res) => {
      try {
        const access = await smart.authenticate(req.headers as Record<string, string>, req.originalUrl);
        if (!smart.scopeAllows(access, 'read', 'Patient', patient)) return void res.status(404).end();
        res.json(patient);
      } catch {
        res.status(401).end();
      }
    });

    // 1. verification on the request path (signature, claims, revocation lookup)
    const { token } = smart.tokens.signAccessToken({ gid: 'g1', clientId: 'c', scopes: ['patient/*.rs'], sub: 'ana', patient: 'p1' });
    const headers = { authorization: `Bearer ${token}` };
    for (let i = 0; i < 2000; i++) await smart.authenticate(headers);
    let n = 0;
    let t0 = performance.now();
    while (performance.now() - t0 < 3000) {
      await smart.authenticate(headers);
      n++;
    }
    const verifyPerSec = n / ((performance.now() - t0) / 1000);
    const distinct = Array.from({ length: 20000 }, (_, i) => smart.tokens.signAccessToken({ gid: `g${i}`, clientId: 'c', scopes: ['patient/*.rs'], sub: 'ana', patient: 'p1' }).token);
    t0 = performance.now();
    for (const tk of distinct) await smart.authenticate({ authorization: `Bearer ${tk}` });
    const uncachedPerSec = distinct.length / ((performance.now() - t0) / 1000);
    log(`access-token verification: ${Math.round(verifyPerSec).toLocaleString('en')}/s with cached signatures (target >= 20,000/s); ${Math.round(uncachedPerSec).toLocaleString('en')}/s for 20,000 distinct tokens`);

    // 2. client_credentials over HTTP
    const request = (pathname: string, body?: string, extra: Record<string, string> = {}): Promise<number> => new Promise((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port, path: pathname, method: body ? 'POST' : 'GET', agent,
        headers: body ? { 'content-type': 'application/x-www-form-urlencoded', 'content-length': String(Buffer.byteLength(body)), ...extra } : extra }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      req.on('error', reject);
      req.end(body);
    });
    const throughput = async (makeBody: () => string, extra: Record<string, string>, seconds: number): Promise<{ perSec: number; bad: number }> => {
      let done = 0;
      let bad = 0;
      const start = performance.now();
      const end = start + seconds * 1000;
      await Promise.all(Array.from({ length: 32 }, async () => {
        while (performance.now() < end) (await request('/oauth/token', makeBody(), extra)) === 200 ? done++ : bad++;
      }));
      return { perSec: done / ((performance.now() - start) / 1000), bad };
    };
    const es = await generateKeyPair('ES384');
    const esClient = smart.store.addClient({ name: 'bench-es', type: 'confidential-asymmetric', jwks: { keys: [{ ...(await exportJWK(es.publicKey)), kid: 'k', alg: 'ES384' }] }, scopes: ['system/*.rs'] }).client;
    const rs = await generateKeyPair('RS384');
    const rsClient = smart.store.addClient({ name: 'bench-rs', type: 'confidential-asymmetric', jwks: { keys: [{ ...(await exportJWK(rs.publicKey)), kid: 'r', alg: 'RS384' }] }, scopes: ['system/*.rs'] }).client;
    const sym = smart.store.addClient({ name: 'bench-sym', type: 'confidential-symmetric', redirectUris: ['https://x.example/cb'], scopes: ['system/*.rs'] });
    const now = Math.floor(Date.now() / 1000);
    const sign = async (alg: string, kid: string, clientId: string, key: Parameters<SignJWT['sign']>[0]) =>
      new SignJWT({}).setProtectedHeader({ alg, kid }).setIssuer(clientId).setSubject(clientId).setAudience(smart.urls.token)
        .setJti(randomUUID()).setExpirationTime(now + 280).sign(key);
    const esAssertions: string[] = [];
    const rsAssertions: string[] = [];
    for (let i = 0; i < 8000; i++) esAssertions.push(await sign('ES384', 'k', esClient.clientId, es.privateKey));
    for (let i = 0; i < 8000; i++) rsAssertions.push(await sign('RS384', 'r', rsClient.clientId, rs.privateKey));
    let ei = 0;
    let ri = 0;
    const assertionBody = (a: string) => new URLSearchParams({ grant_type: 'client_credentials', scope: 'system/*.rs', client_assertion: a,
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer' }).toString();
    const basic = { authorization: `Basic ${Buffer.from(`${sym.client.clientId}:${sym.secret}`).toString('base64')}` };
    const secretBody = () => 'grant_type=client_credentials&scope=system%2F*.rs';
    await throughput(secretBody, basic, 1);
    const ccSecret = await throughput(secretBody, basic, 3);
    const ccRs = await throughput(() => assertionBody(rsAssertions[ri++ % rsAssertions.length]!), {}, 3);
    const ccEs = await throughput(() => assertionBody(esAssertions[ei++ % esAssertions.length]!), {}, 3);
    log(`client_credentials token requests (32 concurrent, target >= 1,000/s): client_secret_basic ${fmt(ccSecret.perSec, 0)}/s, private_key_jwt RS384 ${fmt(ccRs.perSec, 0)}/s, ES384 ${fmt(ccEs.perSec, 0)}/s (non-200: ${ccSecret.bad + ccRs.bad + ccEs.bad})`);

    // 3. added latency of the auth layer on GET /fhir/Patient/ID, against the same handler without auth
    const p50 = async (pathname: string, h: Record<string, string>): Promise<number> => {
      const times: number[] = [];
      for (let i = 0; i < 500; i++) await request(pathname, undefined, h);
      for (let i = 0; i < 3000; i++) {
        const t = performance.now();
        await request(pathname, undefined, h);
        times.push(performance.now() - t);
      }
      return percentile(times.sort((a, b) => a - b), 50);
    };
    const plain = Math.min(await p50('/plain/Patient/p1', {}), await p50('/plain/Patient/p1', {}));
    const authed = Math.min(await p50('/fhir/Patient/p1', headers), await p50('/fhir/Patient/p1', headers));
    log(`GET Patient p50: ${fmt(plain, 3)} ms without auth, ${fmt(authed, 3)} ms with auth → auth adds ${fmt(authed - plain, 3)} ms (target <= 0.2 ms)`);
    return {
      verifyPerSec, uncachedPerSec, ccSecretPerSec: ccSecret.perSec, ccRs384PerSec: ccRs.perSec, ccEs384PerSec: ccEs.perSec,
      plainP50: plain, authedP50: authed, addedP50: authed - plain,
    };
  } finally {
    agent.destroy();
    server.closeAllConnections();
    server.close();
    await smart.close();
    await kv.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
}
