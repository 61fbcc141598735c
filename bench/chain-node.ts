/**
 * Embedded chain node figures: sequential transactions with receipts per second through ethers,
 * eth_call latency, RSS of the node process as blocks accumulate, and restart time with those blocks
 * on disk. The node runs in its own process (dist/chain/node/main.js, instant sealing) so its RSS is
 * its own. Run: `npm run build && node dist/bench/chain-node.js` (CHAIN_BENCH_BLOCKS=100000 for the
 * full figure; default 5000), or as part of `npm run bench`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Wallet, id } from 'ethers';
import { loadAuthorityKey } from '../chain/node/index.js';
import { ChainClient, type ChainAddresses } from '../src/ledger/client.js';
import { summary, timeCalls, type Log } from './stats.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const MAIN = path.resolve(here, '../chain/node/main.js');
const CHAIN_ID = 31337;

interface Node {
  child: ChildProcess;
  rpcUrl: string;
  deployment: Record<string, string>;
  readyMs: number;
}

async function startNode(dataDir: string): Promise<Node> {
  const started = performance.now();
  const child = spawn(process.execPath, [MAIN, '--data-dir', dataDir, '--port', '0', '--block-period', '0', '--chain-id', String(CHAIN_ID)], {
    stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, CHAIN_QUIET: '1' },
  });
  const line = await new Promise<string>((resolve, reject) => {
    let buf = '';
    child.stdout!.on('data', (d) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl >= 0) resolve(buf.slice(0, nl));
    });
    child.once('exit', (code) => reject(new Error(`node exited with ${code}`)));
  });
  const info = JSON.parse(line) as { rpcUrl: string; deployment: Record<string, string> };
  return { child, rpcUrl: info.rpcUrl, deployment: info.deployment, readyMs: performance.now() - started };
}

async function stopNode(node: Node): Promise<void> {
  const exited = new Promise((r) => node.child.once('exit', r));
  node.child.kill('SIGTERM');
  await exited;
}

/** User + system CPU time of a process in ms (Linux /proc). */
function cpuMsOf(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100; // utime + stime in clock ticks (100 Hz)
}

function rssOf(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

async function post(url: string, method: string, params: unknown[]): Promise<any> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method, params }) });
  const body = await res.json() as { result?: unknown; error?: { message: string } };
  if (body.error) throw new Error(body.error.message);
  return body.result;
}

export async function run(log: Log): Promise<Record<string, number>> {
  const blocksTarget = Number(process.env.CHAIN_BENCH_BLOCKS ?? 5000);
  const txCount = Number(process.env.CHAIN_BENCH_TXS ?? 300);
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'gg-chain-bench-'));
  const results: Record<string, number> = {};
  let node = await startNode(dataDir);
  try {
    results.firstStartMs = node.readyMs;
    log(`first start (genesis + deployment): ${node.readyMs.toFixed(0)} ms`);
    // the proxy's own chain client: its provider settings and its nonce-managed authority signer
    const client = new ChainClient({
      rpcUrl: node.rpcUrl, chainId: CHAIN_ID, authorityKey: loadAuthorityKey(dataDir), addresses: node.deployment as unknown as ChainAddresses, adapter: 'rpc',
    });
    const wallet = new Wallet(loadAuthorityKey(dataDir), client.provider);
    const anchor = client.contract('ResourceAnchor');

    // sequential contract transactions (gas estimated, fees asked for, signed, sent), each waited for with its receipt
    const t0 = performance.now();
    const cpu0 = { node: cpuMsOf(node.child.pid!), client: process.cpuUsage() };
    for (let i = 0; i < txCount; i++) await (await anchor.anchor(id(`bench-${i}`), 1, i, i)).wait();
    results.seqTxPerSec = txCount / ((performance.now() - t0) / 1000);
    results.nodeCpuMsPerTx = (cpuMsOf(node.child.pid!) - cpu0.node) / txCount;
    const clientCpu = process.cpuUsage(cpu0.client);
    results.clientCpuMsPerTx = (clientCpu.user + clientCpu.system) / 1000 / txCount;
    log(`sequential anchor() txs with receipts through ethers (ChainClient): ${results.seqTxPerSec.toFixed(1)} tx/s (${txCount} txs, target >= 40)`);
    log(`  CPU per tx: node ${results.nodeCpuMsPerTx.toFixed(1)} ms, ethers client ${results.clientCpuMsPerTx.toFixed(1)} ms; load average ${os.loadavg()[0]!.toFixed(1)} on ${os.cpus().length} cores`);

    const calls = summary(await timeCalls(() => anchor.batchCount(), 1000));
    results.ethCallP50Ms = calls.p50;
    results.ethCallP95Ms = calls.p95;
    log(`eth_call (batchCount) through ethers: p50 ${calls.p50.toFixed(2)} ms, p95 ${calls.p95.toFixed(2)} ms`);

    // blocks: one pre-signed transfer per block, sent over raw JSON-RPC
    const fee = BigInt(await post(node.rpcUrl, 'eth_gasPrice', [])) * 2n;
    let nonce = Number(BigInt(await post(node.rpcUrl, 'eth_getTransactionCount', [wallet.address, 'pending'])));
    const tb = performance.now();
    let head = Number(BigInt(await post(node.rpcUrl, 'eth_blockNumber', [])));
    const checkpoints = new Set([1000, 5000, 10_000, 25_000, 50_000, 100_000].filter((n) => n <= blocksTarget).concat([blocksTarget]));
    for (let made = 1; made <= blocksTarget; made++) {
      const raw = await wallet.signTransaction({ type: 2, chainId: CHAIN_ID, nonce: nonce++, to: wallet.address, value: 0n, gasLimit: 21_000n, maxFeePerGas: fee, maxPriorityFeePerGas: 0n });
      await post(node.rpcUrl, 'eth_sendRawTransaction', [raw]);
      if (checkpoints.has(made)) {
        head = Number(BigInt(await post(node.rpcUrl, 'eth_blockNumber', [])));
        log(`  ${made} blocks sealed (head ${head}): node RSS ${rssOf(node.child.pid!).toFixed(0)} MB, ${(made / ((performance.now() - tb) / 1000)).toFixed(0)} blocks/s`);
      }
    }
    results.blocks = head;
    results.rssAfterBlocksMb = rssOf(node.child.pid!);
    log(`node RSS after ${head} blocks: ${results.rssAfterBlocksMb.toFixed(0)} MB (target <= 400 MB after 100,000 blocks)`);
    await client.close();

    await stopNode(node);
    node = await startNode(dataDir);
    results.restartMs = node.readyMs;
    results.rssAfterRestartMb = rssOf(node.child.pid!);
    log(`restart with ${head} blocks on disk: ${node.readyMs.toFixed(0)} ms to JSON-RPC ready (target <= 5 s); RSS ${results.rssAfterRestartMb.toFixed(0)} MB`);
    const headAfter = Number(BigInt(await post(node.rpcUrl, 'eth_blockNumber', [])));
    if (headAfter !== head) throw new Error(`head after restart is ${headAfter}, expected ${head}`);
  } finally {
    await stopNode(node).catch(() => undefined);
    rmSync(dataDir, { recursive: true, force: true });
  }
  return results;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  await run((line) => console.log(line));
  process.exit(0);
}
