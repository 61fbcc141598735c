// Starts `glucoguard serve` (chain node on its own thread) again and again; logs slow starts.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
const BIN = path.resolve('bin/glucoguard.js');
const N = Number(process.env.N ?? 20);
function start(dir) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const p = spawn(process.execPath, [BIN, 'serve'], { env: { ...process.env, GLUCOGUARD_DATA_DIR: dir, GLUCOGUARD_AUTH: 'off', GLUCOGUARD_HOST: '127.0.0.1', PORT: '0', CHAIN_PORT: '0', CHAIN_BLOCK_PERIOD: '1', CHAIN_NODE_THREAD: 'worker', LOG_LEVEL: 'debug' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const on = (c) => { out += c; const m = /listening on port (\d+)/.exec(out); if (m && !p.done) { p.done = true; resolve({ p, port: Number(m[1]), ms: Date.now() - t0, out: () => out }); } };
    p.stdout.on('data', on); p.stderr.on('data', on);
    setTimeout(() => { if (!p.done) { p.done = true; resolve({ p, port: 0, ms: Date.now() - t0, out: () => out }); } }, 90_000);
  });
}
for (let i = 0; i < N; i++) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'gg-stall-'));
  for (const round of [1, 2]) {
    const s = await start(dir);
    let anchored = 'n/a';
    if (s.port && round === 1) {
      const ids = [];
      for (let k = 0; k < 5; k++) {
        const r = await fetch(`http://127.0.0.1:${s.port}/fhir/Patient`, { method: 'POST', headers: { 'content-type': 'application/fhir+json' }, body: JSON.stringify({ resourceType: 'Patient', name: [{ family: 'S' + k }] }) });
        ids.push((await r.json()).id);
      }
      const t = Date.now();
      for (const id of ids) for (;;) {
        const b = await (await fetch(`http://127.0.0.1:${s.port}/fhir/Patient/${id}`)).json();
        if (!(b.meta?.tag ?? []).some((x) => x.system === 'urn:glucoguard:integrity')) break;
        if (Date.now() - t > 40_000) { anchored = 'TIMEOUT'; break; }
        await new Promise((r) => setTimeout(r, 200));
      }
      if (anchored !== 'TIMEOUT') anchored = `${Date.now() - t} ms`;
    }
    s.p.kill('SIGTERM');
    const code = await new Promise((r) => s.p.on('exit', r));
    console.log(`#${i} round ${round}: listening after ${s.ms} ms, anchored ${anchored}, exit ${code}`);
    if (s.ms > 15_000 || anchored === 'TIMEOUT' || code !== 0) writeFileSync(`/tmp/stall-${i}-${round}.log`, s.out());
  }
  rmSync(dir, { recursive: true, force: true });
}
