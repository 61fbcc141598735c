/**
 * A benchmark phase in a freshly started node process: a server measured over a data directory that
 * an earlier phase loaded, without the heap and caches the bulk load left behind. The child runs the
 * same compiled module with this process's node flags (e.g. --expose-gc, --max-old-space-size) and
 * answers over stdout: `LOG <line>` lines are relayed, one `RESULT <json>` line is the phase's figures.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Log } from './stats.js';

/** Runs `moduleUrl` (an `import.meta.url`) in a child with `flag` and `args`; answers its RESULT. */
export async function runInChild(moduleUrl: string, flag: string, args: string[], log: Log): Promise<Record<string, number>> {
  const child = spawn(process.execPath, [...process.execArgv, fileURLToPath(moduleUrl), flag, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  let results: Record<string, number> | undefined;
  let buffered = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    buffered += chunk;
    for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      if (line.startsWith('RESULT ')) results = JSON.parse(line.slice(7)) as Record<string, number>;
      else if (line.startsWith('LOG ')) log(line.slice(4));
    }
  });
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  if (code !== 0 || !results) throw new Error(`the ${flag} process exited with ${code}`);
  return results;
}

/**
 * In the child: when this process was started with `flag`, runs `phase(args, log)`, prints its
 * RESULT and exits (1 on failure). Call at the end of the benchmark module.
 */
export function childMain(flag: string, phase: (args: string[], log: Log) => Promise<Record<string, number>>): void {
  if (process.argv[2] !== flag) return;
  phase(process.argv.slice(3), (line) => process.stdout.write(`LOG ${line}\n`)).then(
    (results) => {
      process.stdout.write(`RESULT ${JSON.stringify(results)}\n`);
      process.exit(0);
    },
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    });
}
