/**
 * The real `glucoguard` process for fault tests: build once, spawn `bin/glucoguard.js serve` (or
 * `chain node`, or a one-shot command) on loopback with a clean environment, wait for it to listen,
 * and stop it gently (SIGTERM) or not (SIGKILL). Also a throwaway redis-server and a free-port probe.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { connect, createServer, type AddressInfo } from 'node:net';
import path from 'node:path';
import { PACKAGE_ROOT } from '../../src/paths.js';

export const BIN = path.join(PACKAGE_ROOT, 'bin/glucoguard.js');

/**
 * Compiles dist/ (incremental) exactly as `npm start` does. tsc still emits JavaScript when it
 * reports type errors; those are printed and tolerated (in a shared tree another module may be
 * mid-edit), anything else throws with the output. A truly broken build then fails at start-up.
 */
export function buildOnce(): void {
  const build = spawnSync(process.execPath, [path.join(PACKAGE_ROOT, 'scripts/build.mjs')], { cwd: PACKAGE_ROOT, encoding: 'utf8' });
  if (build.status === 0) return;
  const output = `${build.stdout}\n${build.stderr}`;
  const typeErrorsOnly = output.split('\n').filter((l) => l.trim()).every((l) => /error TS\d+|^\s/.test(l));
  if (!typeErrorsOnly) throw new Error(`build failed:\n${output}`);
  console.warn(`build reported type errors (JavaScript emitted, continuing):\n${output.trim()}`);
}

/**
 * The environment of a child: this process's, minus every GlucoGuard/chain/Redis/upstream setting
 * (so a developer's shell cannot leak into a test), plus loopback defaults and `env`.
 */
export function childEnv(env: Record<string, string>): NodeJS.ProcessEnv {
  const base: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!/^(GLUCOGUARD_|CHAIN_|REDIS_|UPSTREAM_|PORT$|LOG_LEVEL$|NODE_ENV$)/.test(k)) base[k] = v;
  }
  return { ...base, GLUCOGUARD_HOST: '127.0.0.1', PORT: '0', CHAIN_PORT: '0', CHAIN_BLOCK_PERIOD: '0', LOG_LEVEL: 'info', ...env };
}

export interface RunResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a one-shot `glucoguard <args>` to completion. */
export function runCli(args: string[], env: Record<string, string>, timeoutMs = 60_000): RunResult {
  const r = spawnSync(process.execPath, [BIN, ...args], { env: childEnv(env), encoding: 'utf8', timeout: timeoutMs });
  return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

export interface Proc {
  child: ChildProcess;
  /** Everything written to stdout and stderr so far. */
  output(): string;
  /** Resolves with the exit code (or signal name) once the process has exited. */
  exited: Promise<number | string | null>;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when it has exited. */
  stop(graceMs?: number): Promise<number | string | null>;
  /** SIGKILL (kill -9): no shutdown code runs. */
  kill9(): Promise<number | string | null>;
}

function track(child: ChildProcess): Proc {
  let out = '';
  child.stdout?.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr?.on('data', (d: Buffer) => { out += d.toString(); });
  const exited = new Promise<number | string | null>((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal)));
  const alive = () => child.exitCode === null && child.signalCode === null;
  return {
    child,
    output: () => out,
    exited,
    async stop(graceMs = 15_000) {
      if (alive()) child.kill('SIGTERM');
      const timer = setTimeout(() => { if (alive()) child.kill('SIGKILL'); }, graceMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
    async kill9() {
      if (alive()) child.kill('SIGKILL');
      return exited;
    },
  };
}

/** Waits until `pattern` appears in the process output; rejects on exit or timeout with the output. */
function waitFor(proc: Proc, pattern: RegExp, timeoutMs: number, what: string): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    const check = () => {
      const m = pattern.exec(proc.output());
      if (m) {
        done();
        resolve(m);
      }
    };
    const onExit = () => {
      done();
      reject(new Error(`${what} exited before it was ready:\n${proc.output()}`));
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`${what} not ready within ${timeoutMs} ms:\n${proc.output()}`));
    }, timeoutMs);
    const done = () => {
      clearTimeout(timer);
      proc.child.stdout?.off('data', check);
      proc.child.stderr?.off('data', check);
      proc.child.off('exit', onExit);
    };
    proc.child.stdout?.on('data', check);
    proc.child.stderr?.on('data', check);
    proc.child.once('exit', onExit);
    check();
  });
}

export interface ServerProc extends Proc {
  port: number;
  /** `http://127.0.0.1:PORT` */
  origin: string;
}

/** Starts `glucoguard serve` (`bin`: another copy of the command; `user`: run as that uid/gid) and resolves once it logs "listening on port N". */
export async function startServer(env: Record<string, string>, timeoutMs = 60_000, bin = BIN, user?: { uid: number; gid: number }): Promise<ServerProc> {
  const proc = track(spawn(process.execPath, [bin, 'serve'], { env: childEnv(env), stdio: ['ignore', 'pipe', 'pipe'], cwd: path.dirname(path.dirname(bin)), ...user }));
  try {
    const m = await waitFor(proc, /listening on port (\d+)/, timeoutMs, 'glucoguard serve');
    const port = Number(m[1]);
    return { ...proc, port, origin: `http://127.0.0.1:${port}` };
  } catch (err) {
    await proc.kill9();
    throw err;
  }
}

export interface ChainNodeProc extends Proc {
  rpcUrl: string;
  chainId: number;
}

/** Starts `glucoguard chain node` on `dataDir` and `port`; resolves with the JSON line it prints when ready. */
export async function startChainNode(dataDir: string, port: number, timeoutMs = 60_000): Promise<ChainNodeProc> {
  const proc = track(spawn(process.execPath, [BIN, 'chain', 'node'], {
    env: childEnv({ GLUCOGUARD_DATA_DIR: dataDir, CHAIN_PORT: String(port), LOG_LEVEL: 'warn' }), stdio: ['ignore', 'pipe', 'pipe'],
  }));
  try {
    const m = await waitFor(proc, /^(\{.*"rpcUrl".*\})$/m, timeoutMs, 'glucoguard chain node');
    const info = JSON.parse(m[1]!) as { rpcUrl: string; chainId: number };
    return { ...proc, rpcUrl: info.rpcUrl, chainId: info.chainId };
  } catch (err) {
    await proc.kill9();
    throw err;
  }
}

/** A TCP port that was free a moment ago (for processes that must come back on the same port). */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** True when something accepts TCP connections on 127.0.0.1:port. */
export function portAnswers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port, timeout: 500 });
    socket.once('connect', () => { socket.destroy(); resolve(true); });
    socket.once('error', () => resolve(false));
    socket.once('timeout', () => { socket.destroy(); resolve(false); });
  });
}

/** The Redis that tests needing one use: REDIS_TEST_URL, or one answering on 127.0.0.1:6379; undefined when none. */
export async function testRedisUrl(): Promise<string | undefined> {
  return process.env.REDIS_TEST_URL ?? ((await portAnswers(6379)) ? 'redis://127.0.0.1:6379' : undefined);
}

export const HAS_REDIS_SERVER = spawnSync('redis-server', ['--version']).status === 0;

/** Our own redis-server on `port` (loopback, no persistence; `args`: more of its options); resolves once it accepts connections. */
export async function startRedis(port: number, timeoutMs = 10_000, args: string[] = []): Promise<Proc> {
  const proc = track(spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  }));
  try {
    await waitFor(proc, /Ready to accept connections/, timeoutMs, 'redis-server');
    return proc;
  } catch (err) {
    await proc.kill9();
    throw err;
  }
}

/** Polls `probe` every `everyMs` until it returns a value other than undefined; throws after `timeoutMs`. */
export async function eventually<T>(probe: () => Promise<T | undefined>, timeoutMs: number, what: string, everyMs = 250): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${timeoutMs} ms${last ? ` (last error: ${(last as Error).message})` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
