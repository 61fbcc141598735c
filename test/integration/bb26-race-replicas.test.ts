/**
 * Two `glucoguard serve` processes on one data directory (replicas, docs/operations.md) taking the
 * same writes at the same moment: each write either happens whole, at the next version, or is
 * refused as FHIR says (412, 409) — never a 500 because the other process committed between what a
 * write read and what it wrote; conditional creates make one resource; no update is lost; and every
 * version written is committed for the ledger (`glucoguard verify`). With authentication on, a
 * patient's conditional writes (decided over what they may see) make one resource as well, and one
 * CGM export imported through both at once is stored once: a patient's imports take turns across
 * processes (src/cgm/turns.ts; before, both looked the readings up, found none, and stored each twice).
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomBytes, randomUUID } from 'node:crypto';
import { rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Bundle, Observation, Patient } from '@medplum/fhirtypes';
import { DAY, patientToken } from './consent-helpers.js';
import { startTestApp, tempDir, type TestApp } from '../support/app.js';
import { buildOnce, freePort, runCli, startChainNode, startServer, type ChainNodeProc, type ServerProc } from '../support/process.js';
import { makeTrace, nightscoutJson } from '../fixtures/cgm-ingest/trace.js';

const FHIR_JSON = 'application/fhir+json';
const MRN = 'urn:test:mrn';

interface Answer { status: number; body: any }

describe('two server processes on one data directory, writing at once', () => {
  const dirs = [tempDir('bb26race-chain-'), tempDir('bb26race-data-'), tempDir('bb26race-secrets-')];
  let chain: ChainNodeProc | undefined;
  const replicas: ServerProc[] = [];
  let env: Record<string, string>;
  /** The FHIR base of replica i % 2: requests alternate between the two processes. */
  const base = (i: number) => `${replicas[i % 2]!.origin}/fhir`;

  async function call(i: number, method: string, url: string, body?: unknown, headers: Record<string, string> = {}): Promise<Answer> {
    const res = await fetch(base(i) + url, {
      method, headers: { 'Content-Type': FHIR_JSON, ...headers }, ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : undefined };
  }
  const at = (n: number, request: (i: number) => Promise<Answer>) => Promise.all(Array.from({ length: n }, (_, i) => request(i)));
  const statuses = (answers: Answer[]) => answers.map((a) => a.status);

  beforeAll(async () => {
    buildOnce();
    const [chainDir, dataDir, secrets] = dirs as [string, string, string];
    chain = await startChainNode(chainDir, await freePort());
    writeFileSync(path.join(secrets, 'master_key'), randomBytes(32).toString('base64'), { mode: 0o600 });
    env = {
      GLUCOGUARD_DATA_DIR: dataDir, GLUCOGUARD_AUTH: 'off', GLUCOGUARD_MASTER_KEY_FILE: path.join(secrets, 'master_key'),
      CHAIN_RPC_URL: chain.rpcUrl, CHAIN_ID: String(chain.chainId),
      CHAIN_AUTHORITY_KEY_FILE: path.join(chainDir, 'chain', 'signer.key'), CHAIN_DEPLOYMENT_FILE: path.join(chainDir, 'chain', 'deployment.json'),
    };
    for (let i = 0; i < 2; i++) replicas.push(await startServer(env, 90_000));
  }, 240_000);

  afterAll(async () => {
    for (const r of replicas) await r.stop();
    await chain?.stop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  test('a conditional create sent 30 times at once through both makes one resource; the rest answer 200 with it', async () => {
    const mrn = randomUUID();
    const answers = await at(30, (i) => call(i, 'POST', '/Patient', { resourceType: 'Patient', identifier: [{ system: MRN, value: mrn }] },
      { 'If-None-Exist': `identifier=${MRN}|${mrn}` }));
    expect(statuses(answers).sort()).toEqual([...Array(29).fill(200), 201].sort());
    const ids = new Set(answers.map((a) => (a.body as Patient).id));
    expect(ids.size).toBe(1);
    const found = await call(0, 'GET', `/Patient?identifier=${MRN}|${mrn}`);
    expect(((found.body as Bundle).entry ?? []).map((e) => e.resource!.id)).toEqual([...ids]);
  }, 60_000);

  test('30 updates at once through both: each stored at its own next version, none lost, history complete', async () => {
    const { body: created } = await call(0, 'POST', '/Patient', { resourceType: 'Patient', name: [{ family: 'Start' }] });
    const id = (created as Patient).id!;
    const answers = await at(30, (i) => call(i, 'PUT', `/Patient/${id}`, { resourceType: 'Patient', id, name: [{ family: `W${i}` }] }));
    expect(statuses(answers)).toEqual(Array(30).fill(200));
    const versions = answers.map((a) => Number((a.body as Patient).meta!.versionId)).sort((x, y) => x - y);
    expect(versions).toEqual(Array.from({ length: 30 }, (_, i) => i + 2));
    const history = await call(1, 'GET', `/Patient/${id}/_history?_count=100`);
    expect(((history.body as Bundle).entry ?? []).map((e) => Number(e.resource!.meta!.versionId))).toEqual(Array.from({ length: 31 }, (_, i) => 31 - i));
  }, 60_000);

  test('If-Match racing through both: exactly one writer wins, the others get 412', async () => {
    const { body: created } = await call(0, 'POST', '/Patient', { resourceType: 'Patient', name: [{ family: 'Start' }] });
    const id = (created as Patient).id!;
    const answers = await at(20, (i) => call(i, 'PUT', `/Patient/${id}`, { resourceType: 'Patient', id, name: [{ family: `W${i}` }] }, { 'If-Match': 'W/"1"' }));
    expect(statuses(answers).sort()).toEqual([200, ...Array(19).fill(412)]);
    const winner = answers.find((a) => a.status === 200)!.body as Patient;
    const current = await call(1, 'GET', `/Patient/${id}`);
    expect(current.body).toMatchObject({ meta: { versionId: '2' }, name: winner.name });
  }, 60_000);

  test('JSON Patches at once through both: each applies whole or answers 409, none is lost', async () => {
    const { body: created } = await call(0, 'POST', '/Patient', { resourceType: 'Patient', name: [{ family: 'Start' }] });
    const id = (created as Patient).id!;
    const answers = await at(12, (i) => call(i, 'PATCH', `/Patient/${id}`, [{ op: 'add', path: '/name/-', value: { family: `P${i}` } }],
      { 'Content-Type': 'application/json-patch+json' }));
    expect(statuses(answers).every((s) => s === 200 || s === 409)).toBe(true);
    const applied = answers.filter((a) => a.status === 200).map((a) => (a.body as Patient).name!.at(-1)!.family).sort();
    const current = (await call(1, 'GET', `/Patient/${id}`)).body as Patient;
    expect(current.name!.slice(1).map((n) => n.family).sort()).toEqual(applied);
    expect(current.meta!.versionId).toBe(String(1 + applied.length));
  }, 60_000);

  test('conditional updates at once through both make one resource and update it', async () => {
    const mrn = randomUUID();
    const answers = await at(20, (i) => call(i, 'PUT', `/Patient?identifier=${MRN}|${mrn}`,
      { resourceType: 'Patient', identifier: [{ system: MRN, value: mrn }], name: [{ family: `C${i}` }] }));
    expect(statuses(answers).sort()).toEqual([...Array(19).fill(200), 201]);
    const found = await call(0, 'GET', `/Patient?identifier=${MRN}|${mrn}`);
    const entries = (found.body as Bundle).entry ?? [];
    expect(entries).toHaveLength(1);
    expect(entries[0]!.resource!.meta!.versionId).toBe('20');
  }, 60_000);

  test('every version written at once through both is committed: glucoguard verify finds none missing', async () => {
    const result = runCli(['verify'], env, 120_000);
    expect(result.stderr).toBe('');
    expect(result.stdout).toMatch(/ 0 failed; 0 commitments missing from the store, 0 versions without a commitment/);
    expect(result.status).toBe(0);
  }, 150_000);
});

describe('two server processes on one data directory: a patient\'s conditional writes at once', () => {
  const dirs = [tempDir('bb26race-chain-'), tempDir('bb26race-data-')];
  let chain: ChainNodeProc | undefined;
  const replicas: ServerProc[] = [];
  /** An app on the same data directory, as a CLI command would open it: it signs the patient's tokens. */
  let signer: TestApp | undefined;
  let ana: string;
  let token: string;

  async function call(i: number, method: string, url: string, body?: unknown, headers: Record<string, string> = {}): Promise<Answer> {
    const res = await fetch(`${replicas[i % 2]!.origin}/fhir${url}`, {
      method, headers: { 'Content-Type': FHIR_JSON, Authorization: `Bearer ${token}`, ...headers }, ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : undefined };
  }
  const reading = (value: string, mgdl = 120): Observation => ({
    resourceType: 'Observation', status: 'final', identifier: [{ system: MRN, value }],
    code: { coding: [{ system: 'http://loinc.org', code: '99504-3' }] }, subject: { reference: `Patient/${ana}` },
    effectiveDateTime: new Date(Date.now() - DAY / 2).toISOString(),
    valueQuantity: { value: mgdl, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
  });
  const stored = async (value: string) => {
    const found = await call(0, 'GET', `/Observation?identifier=${MRN}|${value}`);
    expect(found.status).toBe(200);
    return ((found.body as Bundle).entry ?? []).filter((e) => e.search?.mode === 'match');
  };

  beforeAll(async () => {
    buildOnce();
    const [chainDir, dataDir] = dirs as [string, string];
    chain = await startChainNode(chainDir, await freePort());
    const env = {
      GLUCOGUARD_DATA_DIR: dataDir, GLUCOGUARD_AUTH: 'on', GLUCOGUARD_BASE_URL: 'http://127.0.0.1:8080', GLUCOGUARD_MASTER_KEY: randomBytes(32).toString('base64'),
      CHAIN_RPC_URL: chain.rpcUrl, CHAIN_ID: String(chain.chainId),
      CHAIN_AUTHORITY_KEY_FILE: path.join(chainDir, 'chain', 'signer.key'), CHAIN_DEPLOYMENT_FILE: path.join(chainDir, 'chain', 'deployment.json'),
    };
    for (let i = 0; i < 2; i++) replicas.push(await startServer(env, 90_000));
    signer = await startTestApp(env, dataDir);
    ana = (await signer.app.repository.create({ resourceType: 'Patient', name: [{ family: 'Rivera' }] } as Patient)).resource.id!;
    token = patientToken(signer.app, ana);
  }, 240_000);

  afterAll(async () => {
    await signer?.app.close();
    for (const r of replicas) await r.stop();
    await chain?.stop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  test('a conditional update (PUT Observation?identifier=…) sent at once through both makes one reading, round after round', async () => {
    for (let round = 0; round < 8; round++) {
      const value = randomUUID();
      const answers = await Promise.all(Array.from({ length: 16 }, (_, i) => call(i, 'PUT', `/Observation?identifier=${MRN}|${value}`, reading(value, 100 + i))));
      expect(answers.map((a) => a.status).sort()).toEqual([...Array(15).fill(200), 201]);
      expect(await stored(value)).toHaveLength(1);
    }
  }, 120_000);

  test('a conditional create (If-None-Exist) sent at once through both makes one reading, round after round', async () => {
    for (let round = 0; round < 8; round++) {
      const value = randomUUID();
      const answers = await Promise.all(Array.from({ length: 16 }, (_, i) => call(i, 'POST', '/Observation', reading(value), { 'If-None-Exist': `identifier=${MRN}|${value}` })));
      expect(answers.map((a) => a.status).sort()).toEqual([...Array(15).fill(200), 201]);
      expect(new Set(answers.map((a) => (a.body as Observation).id)).size).toBe(1);
      expect(await stored(value)).toHaveLength(1);
    }
  }, 120_000);

  test('a transaction with a conditional create (ifNoneExist) sent at once through both makes one reading, round after round', async () => {
    for (let round = 0; round < 8; round++) {
      const value = randomUUID();
      const transaction: Bundle = { resourceType: 'Bundle', type: 'transaction', entry: [{
        fullUrl: `urn:uuid:${randomUUID()}`, resource: reading(value), request: { method: 'POST', url: 'Observation', ifNoneExist: `identifier=${MRN}|${value}` },
      }] };
      const answers = await Promise.all(Array.from({ length: 16 }, (_, i) => call(i, 'POST', '', transaction)));
      expect(answers.map((a) => a.status)).toEqual(Array(16).fill(200));
      expect(answers.map((a) => (a.body as Bundle).entry![0]!.response!.status).sort()).toEqual([...Array(15).fill('200 OK'), '201 Created']);
      expect(await stored(value)).toHaveLength(1);
    }
  }, 120_000);

  /** A patient of their own and their token (an import test counts every reading of its patient). */
  const newPatient = async () => {
    const id = (await signer!.app.repository.create({ resourceType: 'Patient', name: [{ family: 'Import' }] } as Patient)).resource.id!;
    return { id, token: patientToken(signer!.app, id) };
  };

  test('one CGM export imported at once through both stores each reading once; the two reports together create it once', async () => {
    const { id: ana, token } = await newPatient();
    // several days, so that the two imports overlap for certain (one day was stored before the other began)
    const trace = makeTrace(10, { seed: 5 });
    const reports = await Promise.all(replicas.map(async (r) => {
      const res = await fetch(`${r.origin}/cgm/ingest?patient=${ana}&format=nightscout`, {
        method: 'POST', headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' }, body: nightscoutJson(trace),
      });
      expect(res.status).toBe(200);
      return await res.json() as { created: number; unchanged: number };
    }));
    expect(reports.map((r) => r.created + r.unchanged)).toEqual([trace.length, trace.length]);
    expect(reports[0]!.created + reports[1]!.created).toBe(trace.length);
    // every stored reading, page after page (counts are not answered over data filtered for a requester)
    const identifiers = new Set<string>();
    let stored = 0;
    for (let url: string | undefined = `${replicas[0]!.origin}/fhir/Observation?patient=Patient/${ana}&_count=1000&_elements=identifier`; url;) {
      const res = await fetch(url, { headers: { Authorization: `Bearer ${token}` } });
      expect(res.status).toBe(200);
      const page = await res.json() as Bundle;
      for (const e of page.entry ?? []) {
        if (e.search?.mode !== 'match') continue;
        stored++;
        identifiers.add(JSON.stringify((e.resource as { identifier?: unknown }).identifier));
      }
      const next = page.link?.find((l) => l.relation === 'next')?.url;
      // links carry GLUCOGUARD_BASE_URL, not the replica's own port
      url = next && `${replicas[0]!.origin}${new URL(next).pathname}${new URL(next).search}`;
    }
    expect({ stored, distinct: identifiers.size }).toEqual({ stored: trace.length, distinct: trace.length });
  }, 120_000);

  test('an import waits while another process holds the patient\'s turn (src/cgm/turns.ts), and runs once it is given up', async () => {
    const { id: ana, token } = await newPatient();
    const store = signer!.app.ledger.store;
    const name = `cgm-import:${ana}`;
    // a holder on another host: never taken for a dead process here
    const holder = 'another-host/1/test';
    expect(store.holdLease(holder, 60_000, Date.now(), () => false, name)).toBe(true);
    const trace = makeTrace(1, { seed: 9, endsBefore: 40 * 86_400_000 });
    let answered = false;
    const answer = fetch(`${replicas[1]!.origin}/cgm/ingest?patient=${ana}&format=nightscout`, {
      method: 'POST', headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' }, body: nightscoutJson(trace),
    }).then(async (res) => { answered = true; return { status: res.status, report: await res.json() as { created: number } }; });
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    expect(answered).toBe(false);
    store.releaseLease(holder, name);
    const { status, report } = await answer;
    expect(status).toBe(200);
    expect(report.created).toBe(trace.length);
  }, 60_000);
});
