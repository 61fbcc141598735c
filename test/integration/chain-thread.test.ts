/**
 * The embedded chain node on its own thread (the default of `glucoguard serve`, CHAIN_NODE_THREAD):
 * the start-up log says so, writes are anchored through it, and SIGTERM closes the node cleanly, so
 * a restart on the same data directory finds every anchor. CHAIN_NODE_THREAD=main runs it on the request thread as before.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { PACKAGE_ROOT } from '../../src/paths.js';
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

describe('the node thread ending on its own', () => {
  it('is reported once; a clean close is not', async () => {
    // the compiled module: a worker thread runs JavaScript, not the TypeScript jest runs
    const mod = await import(pathToFileURL(path.join(PACKAGE_ROOT, 'dist/chain/node/index.js')).href) as typeof import('../../chain/node/index.js');
    const exits: number[] = [];
    const start = async () => {
      const dataDir = tempDir('gg-chain-thread-exit-');
      dirs.push(dataDir);
      return mod.startEmbeddedChainThread({ dataDir, port: 0, blockPeriod: 0, chainId: 1337, onUnexpectedExit: (code) => exits.push(code) });
    };
    const chain = await start();
    expect(chain.thread).toBe('worker');
    const head = await fetch(chain.rpcUrl, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'eth_blockNumber', params: [] }) });
    expect(((await head.json()) as { result?: string }).result).toMatch(/^0x/);
    await chain.terminate!();
    for (let i = 0; i < 50 && exits.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect(exits).toHaveLength(1);

    const other = await start();
    await other.close();
    await new Promise((r) => setTimeout(r, 100));
    expect(exits).toHaveLength(1);
  }, 60_000);
});
