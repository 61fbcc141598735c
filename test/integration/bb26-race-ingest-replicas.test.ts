/**
 * The same CGM export imported at once through two replicas on one data directory stores each
 * reading once (README: "idempotent per patient"): the imports take turns across processes
 * (src/cgm/turns.ts). Before, both looked the readings up, found none, and stored every one twice.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import path from 'node:path';
import type { Bundle, Patient } from '@medplum/fhirtypes';
import { startTestApp, tempDir, type TestApp } from '../support/app.js';
import { buildOnce, freePort, startChainNode, startServer, type ChainNodeProc, type ServerProc } from '../support/process.js';
import { makeTrace, nightscoutJson } from '../fixtures/cgm-ingest/trace.js';
import { patientToken } from './consent-helpers.js';

describe('one CGM export imported at once through two replicas', () => {
  const dirs = [tempDir('bb26race-chain-'), tempDir('bb26race-data-')];
  let chain: ChainNodeProc | undefined;
  const replicas: ServerProc[] = [];
  let signer: TestApp | undefined;
  let ana: string;
  let token: string;

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

  test('each reading is stored once; the two reports together create it once', async () => {
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

  test('an import waits while another process holds the patient\'s turn, and runs once it is given up', async () => {
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
