/**
 * Runs the embedded chain alone: `node dist/chain/node/main.js --data-dir DIR [--port 8545] [--host 127.0.0.1]
 * [--block-period 1] [--chain-id 1337]`. Prints one JSON line ({ rpcUrl, chainId, signerAddress, deployment })
 * when ready; stops cleanly on SIGINT/SIGTERM. `glucoguard chain node` is the operator-facing command.
 */
import { serveUntilSignal, startEmbeddedChain } from './index.js';

function arg(name: string, fallback?: string): string {
  const i = process.argv.indexOf(`--${name}`);
  const value = i >= 0 ? process.argv[i + 1] : fallback;
  if (value === undefined) {
    process.stderr.write(`missing --${name}\n`);
    process.exit(2);
  }
  return value;
}

const log = {
  info: (m: string) => process.env.CHAIN_QUIET ? undefined : process.stderr.write(`${m}\n`),
  warn: (m: string) => process.stderr.write(`${m}\n`),
  error: (m: string) => process.stderr.write(`${m}\n`),
};
const chain = await startEmbeddedChain({
  dataDir: arg('data-dir'),
  port: Number(arg('port', '8545')),
  host: arg('host', '127.0.0.1'),
  blockPeriod: Number(arg('block-period', '1')),
  chainId: Number(arg('chain-id', '1337')),
  logger: log,
});
serveUntilSignal(chain, (line) => process.stdout.write(`${line}\n`));
