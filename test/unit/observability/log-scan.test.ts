/**
 * Nothing secret or clinical reaches the logs: a small but complete scenario runs with the logger
 * at `trace` into memory — a backend client token, a patient and glucose readings created, a CGM
 * file ingested, searches (with the patient's name in the query string), a browser login with a
 * password (and a wrong one), code and refresh-token exchanges, a forged bearer token — and then
 * every line the logger wrote is scanned for the passwords, client secret, tokens, codes, the
 * patient's name, birth date and identifier, and the glucose values used. None may appear.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createApp, type App } from '../../../src/app.js';
import { loadConfig } from '../../../src/config.js';
import { createLogger } from '../../../src/log.js';
import { browse, loginAndApprove } from '../../support/smart-client.js';

const PASSWORD = 'Zx!9-vantablack-pw-Q';
const WRONG_PASSWORD = 'Wr0ng-Guess-77-Pw!';
const FAMILY = 'Vantablack';
const GIVEN = 'Quintessa';
const BIRTH_DATE = '1961-07-19';
const MRN = 'MRN-ZX-99123';
const GLUCOSE = [187.3, 53.9, 241.7, 263];
const REDIRECT_URI = 'http://localhost:3999/callback';

let server: Server;
let app: App;
let base: string;
let dataDir: string;
const lines: string[] = [];
/** Every secret value the scenario used or received, to scan for afterwards. */
const secrets = new Map<string, string>([['password', PASSWORD], ['wrong password', WRONG_PASSWORD], ['family name', FAMILY], ['given name', GIVEN],
  ['birth date', BIRTH_DATE], ['identifier', MRN]]);

/** The JSON body; a write whose body is withheld (write-response filtering) yields its Location id. */
async function json(res: Response): Promise<Record<string, unknown>> {
  const text = await res.text();
  if (!res.ok) throw new Error(`${res.url} answered ${res.status} ${text.slice(0, 300)}`);
  if (!text) return { id: /\/([^/]+)\/_history\//.exec(res.headers.get('location') ?? '')?.[1] };
  return JSON.parse(text) as Record<string, unknown>;
}

async function fhir(method: string, url: string, token: string, body?: unknown): Promise<Record<string, unknown>> {
  return json(await fetch(`${base}${url}`, { method, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/fhir+json' },
    body: body === undefined ? undefined : JSON.stringify(body) }));
}

async function token(form: Record<string, string>, basic?: string): Promise<Record<string, unknown>> {
  return json(await fetch(`${base}/oauth/token`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded',
    ...(basic ? { authorization: `Basic ${basic}` } : {}) }, body: new URLSearchParams(form).toString() }));
}

beforeAll(async () => {
  server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  dataDir = mkdtempSync(path.join(tmpdir(), 'gg-logscan-'));
  app = await createApp(loadConfig({ GLUCOGUARD_DATA_DIR: dataDir, GLUCOGUARD_BASE_URL: base, GLUCOGUARD_AUTH: 'on', CHAIN_BLOCK_PERIOD: '0', CHAIN_PORT: '0' }),
    { logger: createLogger('trace', { write: (l: string) => void lines.push(l) }) });
  server.on('request', app.http);
});

afterAll(async () => {
  server?.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await app?.close();
  rmSync(dataDir, { recursive: true, force: true });
});

describe('log scan', () => {
  test('a full scenario writes request logs but no token, password, name, identifier or glucose value', async () => {
    // Backend client: client_credentials with a secret.
    const backend = app.smart.store.addClient({ name: 'Backend', type: 'confidential-symmetric', scopes: ['system/*.cruds'], redirectUris: [REDIRECT_URI] });
    secrets.set('client secret', backend.secret!);
    const system = await token({ grant_type: 'client_credentials', scope: 'system/*.cruds' }, Buffer.from(`${backend.client.clientId}:${backend.secret}`).toString('base64'));
    const systemToken = system.access_token as string;
    secrets.set('system access token', systemToken);

    // A patient, readings, a CGM file, searches.
    const patient = await fhir('POST', '/fhir/Patient', systemToken, { resourceType: 'Patient', name: [{ family: FAMILY, given: [GIVEN] }], birthDate: BIRTH_DATE,
      identifier: [{ system: 'urn:test:mrn', value: MRN }] });
    const patientId = patient.id as string;
    for (const [i, value] of GLUCOSE.slice(0, 3).entries()) {
      await fhir('POST', '/fhir/Observation', systemToken, { resourceType: 'Observation', status: 'final', subject: { reference: `Patient/${patientId}` },
        code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] }, effectiveDateTime: `2026-01-0${i + 1}T08:00:00Z`,
        valueQuantity: { value, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' } });
    }
    const ingest = await fetch(`${base}/cgm/ingest?patient=${patientId}&format=nightscout`, { method: 'POST',
      headers: { authorization: `Bearer ${systemToken}`, 'content-type': 'application/json' },
      body: JSON.stringify([{ type: 'sgv', sgv: GLUCOSE[3], date: Date.UTC(2026, 0, 5, 8), device: 'xDrip-DexcomG6' }]) });
    expect(ingest.status).toBe(200);
    expect((await app.repository.search({ resourceType: 'Observation', filters: [], count: 10, offset: 0 })).resources.length).toBe(4);
    const search = await fhir('GET', `/fhir/Observation?patient=${patientId}&date=ge2026-01-01`, systemToken);
    // Counts depend on consent and integrity rules (other tests check them); here only the logs matter.
    expect(search.resourceType).toBe('Bundle');
    await fhir('GET', `/fhir/Patient?name=${FAMILY}&birthdate=${BIRTH_DATE}&identifier=urn:test:mrn|${MRN}`, systemToken);

    // A patient signs in with a password in the browser; the app redeems the code and refreshes.
    await app.smart.store.addUser({ username: 'quintessa', password: PASSWORD, fhirUser: `Patient/${patientId}` });
    const clientId = app.smart.store.addClient({ name: 'Viewer', type: 'public', redirectUris: [REDIRECT_URI],
      scopes: ['openid', 'fhirUser', 'launch/patient', 'offline_access', 'patient/*.rs'] }).client.clientId;
    const verifier = randomBytes(32).toString('base64url');
    secrets.set('code verifier', verifier);
    const authorize = new URL(`${base}/oauth/authorize`);
    for (const [k, v] of Object.entries({ response_type: 'code', client_id: clientId, redirect_uri: REDIRECT_URI, scope: 'openid fhirUser launch/patient offline_access patient/*.rs',
      state: 'st-9', aud: `${base}/fhir`, code_challenge: createHash('sha256').update(verifier).digest('base64url'), code_challenge_method: 'S256' })) authorize.searchParams.set(k, v);
    const login = await browse(authorize.href);
    const wrong = await browse(`${base}/oauth/login`, { request: /name="request" value="([^"]+)"/.exec(login.html)![1]!, username: 'quintessa', password: WRONG_PASSWORD });
    expect(wrong.html).toMatch(/role="alert"/);
    const done = await loginAndApprove(base, (await browse(authorize.href)).html, { username: 'quintessa', password: PASSWORD });
    const code = new URL(done.location!).searchParams.get('code')!;
    secrets.set('authorization code', code);
    const user = await token({ grant_type: 'authorization_code', code, redirect_uri: REDIRECT_URI, client_id: clientId, code_verifier: verifier });
    secrets.set('user access token', user.access_token as string);
    secrets.set('refresh token', user.refresh_token as string);
    if (user.id_token) secrets.set('id token', user.id_token as string);
    const own = await fhir('GET', `/fhir/Observation?patient=${patientId}`, user.access_token as string);
    expect(own.resourceType).toBe('Bundle');
    const refreshed = await token({ grant_type: 'refresh_token', refresh_token: user.refresh_token as string, client_id: clientId });
    secrets.set('refreshed access token', refreshed.access_token as string);
    // A reused code and a forged token are refused (and logged as refusals, not as values).
    expect((await fetch(`${base}/oauth/token`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: REDIRECT_URI, client_id: clientId, code_verifier: verifier }).toString() })).status).toBe(400);
    const forged = `${(systemToken).slice(0, -10)}AAAAAAAAAA`;
    secrets.set('forged token', forged);
    expect((await fetch(`${base}/fhir/Patient/${patientId}`, { headers: { authorization: `Bearer ${forged}` } })).status).toBe(401);
    await fetch(`${base}/metrics`);
    await fetch(`${base}/readyz`);

    // The logger did write: one request line per request, at least.
    const all = lines.join('\n');
    expect(lines.filter((l) => l.includes('"msg":"request"')).length).toBeGreaterThanOrEqual(15);
    const scan = (text: string): string[] => {
      const found: string[] = [];
      for (const [what, value] of secrets) if (value && text.includes(value)) found.push(what);
      // Tokens are long; a leak of part of one (e.g. its signature) counts too.
      for (const [what, value] of secrets) {
        if (what.includes('token') && value.length > 40 && text.includes(value.slice(-32))) found.push(`${what} (signature)`);
      }
      // A glucose value is a whole number in the text (263, not 263.41), wherever it stands except as
      // the value of the logger's own numeric fields: a request taking 263.41 ms or a ledger count of
      // exactly 263 is no leak. Nor is "263" inside a random identifier: request ids (UUIDs), the chain
      // signer's address and the data directory's random suffix are hex or base62, and "…e263f…" in one
      // of them is a chance of a few percent per run over the ~25 such strings of the scenario (two
      // clean-clone runs flagged "glucose 263" before they were masked; these are all the numeric
      // fields and random strings the scenario's log lines carry).
      const clinical = text.split(dataDir).join('DATA_DIR')
        .replace(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/gi, 'UUID')
        .replace(/0x[0-9a-f]+/gi, '0xHEX')
        .replace(/"(level|time|ms|status|commitments|anchored|pending|batches)":\d+(\.\d+)?(?=[,}])/g, '"$1":0');
      for (const value of GLUCOSE) {
        if (new RegExp(`(?<![\\d.])${String(value).replace('.', '\\.')}(?!\\.?\\d)`).test(clinical)) found.push(`glucose ${value}`);
      }
      return found;
    };
    expect(scan(all)).toEqual([]);
    // The scanner itself finds a planted leak, also next to an identifier, and not inside one.
    expect(scan(`{"msg":"request","reqId":"0a2630bc-1263-4e26-a263-0263abcdef12","value":${GLUCOSE[3]}}`)).toEqual([`glucose ${GLUCOSE[3]}`]);
    expect(scan(`{"msg":"request","reqId":"0a2630bc-1263-4e26-a263-0263abcdef12","signer":"0xab263cd"}`)).toEqual([]);
    expect(scan(`{"msg":"oops","valueQuantity":{"value":${GLUCOSE[1]}},"name":"${GIVEN}"}`)).toEqual(['given name', `glucose ${GLUCOSE[1]}`]);
    expect(scan(`{"msg":"request","ms":${GLUCOSE[3]}.41,"note":"value ${GLUCOSE[3]}."}`)).toEqual([`glucose ${GLUCOSE[3]}`]);
    expect(scan(`{"msg":"request","ms":${GLUCOSE[3]}.41,"anchored":${GLUCOSE[3]}}`)).toEqual([]);
    if (process.env.LOG_SCAN_DEBUG) process.stdout.write(`${lines.length} lines; messages: ${[...new Set(lines.map((l) => JSON.parse(l).msg))].join(' | ')}\n`);
  });
});
