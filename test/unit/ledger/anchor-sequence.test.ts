/**
 * The anchorer when the contract expects another sequence number than the store's next batch (a
 * chain and a commitment store from different moments): it sends nothing, reports the problem for
 * readiness (ERR_ANCHOR_SEQUENCE), logs it as an error with what to do — again while it lasts — and
 * the lag and queue gauges count the refused batch, which is prepared, no longer queued.
 */
import { afterAll, expect, it } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { Anchorer } from '../../../src/ledger/anchor.js';
import type { ChainClient } from '../../../src/ledger/client.js';
import { CommitmentStore } from '../../../src/ledger/store.js';
import { createLogger } from '../../../src/log.js';
import { metrics } from '../../../src/observability/metrics.js';
import { anchoringCheck, Readiness } from '../../../src/observability/readiness.js';

const dir = mkdtempSync(path.join(tmpdir(), 'gg-anchor-seq-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

it('a sequence mismatch stops anchoring, fails readiness with ERR_ANCHOR_SEQUENCE, is logged as an error again while it lasts, and counts in lag and queue depth', async () => {
  const store = new CommitmentStore(path.join(dir, 'commitments.db'));
  store.setMeta('seq_base', '1');
  store.add(Array.from({ length: 3 }, (_, i) => ({ type: 'Observation', id: `o${i}`, version: '1', patient: 'p', salt: randomBytes(32), leaf: randomBytes(32) })), Date.now() - 60_000);
  let sent = 0;
  const anchor = Object.assign(async () => { sent++; throw new Error('must not be sent'); }, {
    estimateGas: async () => { throw Object.assign(new Error('execution reverted'), { code: 'CALL_EXCEPTION' }); },
  });
  const chain = {
    authorityAddress: `0x${'11'.repeat(20)}`,
    authority: { reset() {} },
    contract: () => ({ nextSeq: async () => 318n, batchIdOfRoot: async () => 0n, anchor }),
  } as unknown as ChainClient;
  const lines: string[] = [];
  const logger = createLogger('info', new Writable({ write(chunk: Buffer, _enc, done) { lines.push(chunk.toString('utf8')); done(); } }));
  const anchorer = new Anchorer({ store, chain, logger, maxDelayMs: 0, repeatLogMs: 100 });
  const readiness = new Readiness(createLogger('silent'), [anchoringCheck(anchorer)]);
  expect((await readiness.run()).status).toBe('ready');
  anchorer.start();
  try {
    for (let i = 0; i < 100 && lines.filter((l) => /anchoring stopped/.test(l)).length < 2; i++) await new Promise((r) => setTimeout(r, 50));
    const errors = lines.filter((l) => /anchoring stopped/.test(l)).map((l) => JSON.parse(l) as { level: number; code: string; msg: string });
    expect(errors.length).toBeGreaterThanOrEqual(2);
    expect(errors[0]).toMatchObject({ level: 50, code: 'ERR_ANCHOR_SEQUENCE' });
    expect(errors[0]!.msg).toMatch(/local batch 1 starts at sequence 1 but the contract expects 318 .*the chain holds anchors of this authority that the commitment store does not.*restore the whole data directory/);
    expect(sent).toBe(0);
    const report = await readiness.run();
    expect(report).toMatchObject({ status: 'unavailable', checks: [{ name: 'anchoring', ok: false, error: 'ERR_ANCHOR_SEQUENCE' }] });
    expect(store.backlog().count).toBe(0); // the batch is prepared: what the gauges used to leave out
    expect((await metrics.queueDepth.get()).values.find((v) => v.labels.queue === 'anchor')?.value).toBe(3);
    expect((await metrics.anchoringLag.get()).values[0]?.value).toBeGreaterThanOrEqual(59);
  } finally {
    await anchorer.stop();
    store.close();
  }
});
