// How long `glucoguard` commands take from exec to exit (wall and CPU of the whole process), for this
// checkout and, with OTHER=<checkout>, another one, taking turns: --help, a usage error, `patients
// create` on an existing data directory, and `serve` to its "listening" line (then SIGTERM).
// `node bench/probes/cli-start.mjs` (N=7 rounds); GNU time (/usr/bin/time) measures the CPU.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

const N = Number(process.env.N ?? 7);
const builds = [['this', path.resolve('.')], ...(process.env.OTHER ? [['other', path.resolve(process.env.OTHER)]] : [])];
const base = { ...process.env, PORT: '0', CHAIN_PORT: '0', CHAIN_BLOCK_PERIOD: '0', LOG_LEVEL: 'info' };
for (const k of Object.keys(base)) if (/^(GLUCOGUARD_|REDIS_|UPSTREAM_)/.test(k)) delete base[k];

function timed(root, args, env) {
  const out = path.join(tmpdir(), `cli-start-${process.pid}.time`);
  const r = spawnSync('/usr/bin/time', ['-o', out, '-f', '%e %U %S', process.execPath, path.join(root, 'bin/glucoguard.js'), ...args], { env, encoding: 'utf8' });
  const [wall, user, sys] = readFileSync(out, 'utf8').trim().split('\n').pop().split(' ').map(Number);
  rmSync(out, { force: true });
  return { wall: wall * 1000, cpu: (user + sys) * 1000, status: r.status };
}

function serveToListening(root, env) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(process.execPath, [path.join(root, 'bin/glucoguard.js'), 'serve'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let text = '';
    let listening;
    const onData = (d) => {
      text += d;
      if (listening === undefined && /listening on port/.test(text)) {
        listening = performance.now() - t0;
        child.kill('SIGTERM');
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code) => (listening === undefined ? reject(new Error(`serve exited ${code}: ${text.slice(-500)}`)) : resolve({ wall: listening, status: code })));
  });
}

const results = {};
const add = (build, what, v) => ((results[`${build} ${what}`] ??= []).push(v));
const dirs = Object.fromEntries(builds.map(([name]) => [name, mkdtempSync(path.join(tmpdir(), `cli-start-${name}-`))]));
for (const [name, root] of builds) {
  const env = { ...base, GLUCOGUARD_DATA_DIR: dirs[name] };
  if (timed(root, ['patients', 'create', '--given', 'Set', '--family', 'Up'], env).status !== 0) throw new Error(`${name}: patients create failed`);
}
for (let i = 0; i < N; i++) {
  for (const [name, root] of i % 2 ? [...builds].reverse() : builds) {
    const env = { ...base, GLUCOGUARD_DATA_DIR: dirs[name] };
    add(name, '--help', timed(root, ['--help'], env));
    add(name, 'usage error (exit 2)', timed(root, ['patients', 'create', '--given', 'A'], env));
    add(name, 'patients create', timed(root, ['patients', 'create', '--given', 'A', '--family', 'B'], env));
    add(name, 'serve to listening', await serveToListening(root, env));
  }
}
const med = (xs) => xs.slice().sort((a, b) => a - b)[xs.length >> 1];
for (const [k, v] of Object.entries(results)) {
  const cpu = v[0].cpu === undefined ? '' : `, CPU ${med(v.map((x) => x.cpu)).toFixed(0)} ms`;
  console.log(`${k.padEnd(34)} wall ${med(v.map((x) => x.wall)).toFixed(0)} ms${cpu} (median of ${v.length}; exit ${[...new Set(v.map((x) => x.status))].join('/')})`);
}
for (const d of Object.values(dirs)) rmSync(d, { recursive: true, force: true });
