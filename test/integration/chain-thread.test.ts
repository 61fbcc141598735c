/**
 * The embedded chain node on its own thread (the default of `glucoguard serve`, CHAIN_NODE_THREAD):
 * the start-up log says so, writes are anchored through it, and SIGTERM closes the node cleanly, so
 * a restart on the same data directory finds every anchor. CHAIN_NODE_THREAD=main runs it on the request thread as before.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { rmSync } from 'node:fs';
import { buildOnce, startServer, type ServerProc } from '../support/process.js';
import { tempDir } from '../support/app.js';

const dirs: string[] = [];
let server: ServerProc | undefined;

beforeAll(() => buildOnce(), 240_000);
afterAll(async () => {
  await server?.kill9();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

async function createPatient(origin: string, family: string): Promise<string> {
  const res = await fetch(`${origin}/fhir/Patient`, {
    method: 'POST', headers: { 'content-type': 'application/fhir+json' },
    body: JSON.stringify({ resourceType: 'Patient', name: [{ family }] }),
  });
  expect(res.status).toBe(201);
  return ((await res.json()) as { id: string }).id;
}

/** The integrity tags a read carries (`pending` until the version's batch is anchored). */
async function integrityTags(origin: string, id: string): Promise<string[]> {
  const body = (await (await fetch(`${origin}/fhir/Patient/${id}`)).json()) as { meta?: { tag?: { system?: string; code?: string }[] } };
  return (body.meta?.tag ?? []).filter((t) => t.system === 'urn:glucoguard:integrity').map((t) => t.code!);
}

async function waitAnchored(origin: string, id: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  while ((await integrityTags(origin, id)).length) {
    if (Date.now() > deadline) throw new Error(`Patient/${id} was not anchored within 30 s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe.each([
  ['worker', 'own thread'],
  ['main', 'request thread'],
] as const)('CHAIN_NODE_THREAD=%s', (thread, described) => {
  it('anchors writes, and a restart after SIGTERM finds them anchored', async () => {
    const dataDir = tempDir(`gg-chain-thread-${thread}-`);
    dirs.push(dataDir);
    const env = { GLUCOGUARD_DATA_DIR: dataDir, GLUCOGUARD_AUTH: 'off', CHAIN_BLOCK_PERIOD: '1', CHAIN_NODE_THREAD: thread };
    server = await startServer(env);
    expect(server.output()).toContain(`embedded Clique node (${described})`);
    const ids = [];
    for (let i = 0; i < 5; i++) ids.push(await createPatient(server.origin, `Thread${i}`));
    for (const id of ids) await waitAnchored(server.origin, id);
    expect(await server.stop()).toBe(0);

    server = await startServer(env);
    for (const id of ids) expect(await integrityTags(server.origin, id)).toEqual([]);
    expect(await server.stop()).toBe(0);
    server = undefined;
  }, 120_000);
});
