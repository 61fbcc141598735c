/**
 * Operator restore drills (QA, confirmed): a data directory restored without one of its parts, or
 * with parts from different moments, must not start as if nothing happened.
 *
 * - without `chain/`: refused, naming what is missing — no new chain, no new signer;
 * - with a stale or copied `chain/endpoint.json`: the node it names is not used unless it is this
 *   directory's own, running; the directory's own node is started;
 * - with a chain older than the commitment store: refused at start; with a contract that expects
 *   another sequence than the store's next batch: anchoring stops, /readyz fails its `anchoring`
 *   check with ERR_ANCHOR_SEQUENCE, the error is logged with what to do, and the lag and queue
 *   metrics count the batch waiting;
 * - without `ledger/` (the store present): refused, naming what is missing.
 */
import { afterAll, describe, expect, it } from '@jest/globals';
import { cpSync, existsSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { randomBytes } from 'node:crypto';
import request from 'supertest';
import { createApp, type App } from '../../src/app.js';
import { loadConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { runningEmbeddedNode } from '../../src/ledger/embedded-endpoint.js';
import { startTestApp, tempDir } from '../support/app.js';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function captured(): { text(): string; stream: Writable } {
  const lines: string[] = [];
  return { text: () => lines.join(''), stream: new Writable({ write(chunk: Buffer, _enc, done) { lines.push(chunk.toString('utf8')); done(); } }) };
}

function open(dataDir: string, logger = createLogger('silent')): Promise<App> {
  return createApp(loadConfig({
    GLUCOGUARD_DATA_DIR: dataDir, GLUCOGUARD_BASE_URL: 'http://127.0.0.1:8080', GLUCOGUARD_AUTH: 'off', LOG_LEVEL: 'silent', CHAIN_BLOCK_PERIOD: '0', CHAIN_PORT: '0',
  }), { logger });
}

async function writePatient(app: App, family: string): Promise<string> {
  const res = await request(app.http).post('/fhir/Patient').set('content-type', 'application/fhir+json').send({ resourceType: 'Patient', name: [{ family }] });
  expect(res.status).toBe(201);
  return res.body.id as string;
}

/** A data directory with data in it, everything anchored, the app closed. */
async function installation(prefix: string): Promise<string> {
  const dataDir = tempDir(prefix);
  dirs.push(dataDir);
  const t = await startTestApp({}, dataDir);
  await writePatient(t.app, 'Restore');
  await t.app.consent.audit.flush();
  await t.app.ledger.anchorer.flush();
  await t.app.close();
  return dataDir;
}

async function readiness(app: App): Promise<{ status: number; checks: { name: string; ok: boolean; error?: string }[] }> {
  const res = await request(app.http).get('/readyz');
  return { status: res.status, checks: res.body.checks };
}

describe('a restore without chain/', () => {
  it('is refused at start, naming the missing chain, and no new chain or signer is created', async () => {
    const dataDir = await installation('gg-restore-nochain-');
    rmSync(path.join(dataDir, 'chain'), { recursive: true, force: true });
    await expect(open(dataDir)).rejects.toMatchObject({
      code: 'ERR_CHAIN_MISSING',
      message: expect.stringMatching(/holds resource versions .*commitments .*not the embedded chain .*deployment\.json is missing.*Restore .*chain from the same backup/),
    });
    expect(existsSync(path.join(dataDir, 'chain'))).toBe(false);
    // and again: the refusal did not leave anything behind that would let a second start through
    await expect(open(dataDir)).rejects.toMatchObject({ code: 'ERR_CHAIN_MISSING' });
    expect(existsSync(path.join(dataDir, 'chain'))).toBe(false);
  }, 120_000);

  it('a chain directory without its database is refused before a node creates an empty one', async () => {
    const dataDir = await installation('gg-restore-nodb-');
    rmSync(path.join(dataDir, 'chain', 'db'), { recursive: true, force: true });
    await expect(open(dataDir)).rejects.toMatchObject({ code: 'ERR_CHAIN_MISSING', message: expect.stringMatching(/lost or replaced/) });
    expect(existsSync(path.join(dataDir, 'chain', 'db'))).toBe(false);
  }, 120_000);

  it('a new installation still sets its chain up', async () => {
    const dataDir = tempDir('gg-restore-new-');
    dirs.push(dataDir);
    const app = await open(dataDir);
    try {
      expect(existsSync(path.join(dataDir, 'chain', 'deployment.json'))).toBe(true);
    } finally {
      await app.close();
    }
  }, 120_000);
});

describe('a restore without ledger/', () => {
  it('is refused at start: the store holds versions its commitment store is missing for', async () => {
    const dataDir = await installation('gg-restore-noledger-');
    rmSync(path.join(dataDir, 'ledger'), { recursive: true, force: true });
    await expect(open(dataDir)).rejects.toMatchObject({
      code: 'ERR_LEDGER_MISSING',
      message: expect.stringMatching(/holds resource versions but the commitment store .*commitments\.db is missing: restore/),
    });
    // nothing was created in its place
    expect(existsSync(path.join(dataDir, 'ledger', 'commitments.db'))).toBe(false);
  }, 120_000);
});

describe('a stale chain/endpoint.json', () => {
  it('copied from another running installation: the copy starts and anchors with its own node', async () => {
    const other = await startTestApp({}, tempDir('gg-restore-other-'));
    const dataDir = await installation('gg-restore-copy-');
    try {
      // the other installation's endpoint, as if written by another live process (our parent's pid)
      const theirs = JSON.parse(readFileSync(path.join(other.dataDir, 'chain', 'endpoint.json'), 'utf8')) as Record<string, unknown>;
      writeFileSync(path.join(dataDir, 'chain', 'endpoint.json'), JSON.stringify({ ...theirs, pid: process.ppid }));
      const app = await open(dataDir);
      try {
        const chain = app.adapters.find((a) => a.port === 'chain')!;
        expect(chain.adapter).toMatch(/^embedded Clique node \(/); // its own, not "of the running server"
        const own = JSON.parse(readFileSync(path.join(dataDir, 'chain', 'deployment.json'), 'utf8')) as { contracts: Record<string, string> };
        expect(app.chain.addresses).toEqual(own.contracts);
        expect(app.chain.description.location).not.toBe(other.app.chain.description.location);
        const endpoint = JSON.parse(readFileSync(path.join(dataDir, 'chain', 'endpoint.json'), 'utf8')) as { pid: number; dataDir: string };
        expect(endpoint).toMatchObject({ pid: process.pid, dataDir: realpathSync(dataDir) });
        await writePatient(app, 'AfterCopy');
        await app.consent.audit.flush();
        await app.ledger.anchorer.flush();
        expect(app.ledger.store.counts().pending).toBe(0);
      } finally {
        await app.close();
      }
    } finally {
      await other.close();
    }
  }, 180_000);

  it('naming this directory but a node that is not its own: ignored and removed', async () => {
    const other = await startTestApp({}, tempDir('gg-restore-other2-'));
    const dataDir = await installation('gg-restore-stale-');
    const file = path.join(dataDir, 'chain', 'endpoint.json');
    try {
      const theirs = JSON.parse(readFileSync(path.join(other.dataDir, 'chain', 'endpoint.json'), 'utf8')) as Record<string, unknown>;
      // a live pid (pid 1 in a container, a reused pid) and this directory's path: nobody has its chain database open
      writeFileSync(file, JSON.stringify({ ...theirs, pid: process.ppid, dataDir: realpathSync(dataDir) }));
      const reasons: string[] = [];
      expect(await runningEmbeddedNode(dataDir, (r) => reasons.push(r))).toBeUndefined();
      expect(reasons.join('\n')).toMatch(/no process has .*chain.db open/);
      expect(existsSync(file)).toBe(false);
      // with this directory's node running, an endpoint naming another chain's node is still refused
      const app = await open(dataDir);
      try {
        writeFileSync(file, JSON.stringify({ ...theirs, pid: process.ppid, dataDir: realpathSync(dataDir) }));
        const why: string[] = [];
        expect(await runningEmbeddedNode(dataDir, (r) => why.push(r))).toBeUndefined();
        expect(why.join('\n')).toMatch(/not using the node .* serves another chain \(genesis 0x[0-9a-f]+, this directory's is 0x[0-9a-f]+\)/);
      } finally {
        await app.close();
      }
    } finally {
      await other.close();
    }
  }, 180_000);
});

describe('a chain and a commitment store from different moments', () => {
  it('a chain older than the store is refused at start, saying what happened and what to do', async () => {
    const dataDir = await installation('gg-restore-mixed-');
    const earlier = `${dataDir}-chain-backup`;
    dirs.push(earlier);
    cpSync(path.join(dataDir, 'chain'), earlier, { recursive: true });
    const t = await startTestApp({}, dataDir);
    await writePatient(t.app, 'Later');
    await t.app.consent.audit.flush();
    await t.app.ledger.anchorer.flush();
    await t.app.close();
    rmSync(path.join(dataDir, 'chain'), { recursive: true, force: true });
    cpSync(earlier, path.join(dataDir, 'chain'), { recursive: true });
    await expect(open(dataDir)).rejects.toMatchObject({
      code: 'ERR_ANCHOR_SEQUENCE',
      message: expect.stringMatching(/refusing to start: .*chain is older than the commitment store.*restore the whole data directory/),
    });
  }, 180_000);

  it('a contract expecting another sequence: anchoring stops, /readyz 503 (anchoring, ERR_ANCHOR_SEQUENCE), logged as an error, lag and queue metrics count it', async () => {
    const dataDir = await installation('gg-restore-sequence-');
    const log = captured();
    const app = await open(dataDir, createLogger('info', log.stream));
    try {
      expect((await readiness(app)).status).toBe(200);
      // another store anchoring with this authority's key moves the contract's sequence on
      const anchor = app.chain.contract('ResourceAnchor');
      const next = Number(await anchor.nextSeq(app.chain.authorityAddress));
      const tx = await anchor.anchor(`0x${randomBytes(32).toString('hex')}`, 5, next, next + 4);
      await tx.wait();
      await writePatient(app, 'Stuck');
      await expect(app.ledger.anchorer.flush()).rejects.toMatchObject({ code: 'ERR_ANCHOR_SEQUENCE' });
      let ready = await readiness(app);
      for (let i = 0; i < 100 && ready.status === 200; i++) {
        await new Promise((r) => setTimeout(r, 100));
        ready = await readiness(app);
      }
      expect(ready.status).toBe(503);
      expect(ready.checks).toContainEqual(expect.objectContaining({ name: 'anchoring', ok: false, error: 'ERR_ANCHOR_SEQUENCE' }));
      expect(log.text()).toMatch(/"level":50.*anchoring stopped: local batch \d+ starts at sequence \d+ but the contract expects \d+.*restore the whole data directory/);
      const metrics = (await request(app.http).get('/metrics')).text;
      expect(Number(/^glucoguard_queue_depth\{queue="anchor"[^}]*\} (\d+)/m.exec(metrics)?.[1])).toBeGreaterThan(0);
      expect(Number(/^glucoguard_anchoring_lag_seconds\{[^}]*\} ([\d.e-]+)/m.exec(metrics)?.[1])).toBeGreaterThan(0);
    } finally {
      await app.close();
    }
    // after a restart the start-up comparison finds it at once, before anything is sent
    const again = await open(dataDir);
    try {
      const ready = await readiness(again);
      let checks = ready.checks;
      for (let i = 0; i < 50 && !checks.some((c) => c.name === 'anchoring' && !c.ok); i++) {
        await new Promise((r) => setTimeout(r, 100));
        checks = (await readiness(again)).checks;
      }
      expect(checks).toContainEqual(expect.objectContaining({ name: 'anchoring', ok: false, error: 'ERR_ANCHOR_SEQUENCE' }));
    } finally {
      await again.close();
    }
  }, 180_000);
});
