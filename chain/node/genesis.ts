/**
 * Geth-style genesis for a single-signer Clique (EIP-225) network, hardforks up to London at block 0.
 * EthereumJS treats Shanghai and later as proof-of-stake, so the chain stops at London (contracts are
 * compiled for `evmVersion: "london"`).
 */
export interface GethGenesis {
  config: Record<string, unknown> & { chainId: number; clique: { period: number; epoch: number } };
  nonce: string;
  timestamp: string;
  extraData: string;
  gasLimit: string;
  difficulty: string;
  mixHash: string;
  coinbase: string;
  baseFeePerGas: string;
  alloc: Record<string, { balance: string }>;
}

/** Gas limit of every block (30 M, like mainnet). */
export const BLOCK_GAS_LIMIT = 30_000_000n;
/** Base fee of the genesis block; EIP-1559 lowers it while blocks stay under half full. */
const GENESIS_BASE_FEE = 1_000_000_000n;
/** Balance of the signer at genesis: it pays for every transaction the proxy sends. */
const SIGNER_BALANCE = 10n ** 30n;

/** Builds the genesis: `signer` is the only Clique signer and holds the genesis balance. */
export function cliqueGenesis(opts: { chainId: number; signer: string; period: number; epoch?: number; timestamp: number }): GethGenesis {
  const signer = opts.signer.toLowerCase().replace(/^0x/, '');
  return {
    config: {
      chainId: opts.chainId,
      homesteadBlock: 0,
      eip150Block: 0,
      eip155Block: 0,
      eip158Block: 0,
      byzantiumBlock: 0,
      constantinopleBlock: 0,
      petersburgBlock: 0,
      istanbulBlock: 0,
      berlinBlock: 0,
      londonBlock: 0,
      clique: { period: opts.period, epoch: opts.epoch ?? 30_000 },
    },
    nonce: '0x0',
    timestamp: `0x${opts.timestamp.toString(16)}`,
    // EIP-225: 32 bytes vanity, the signer list, 65 bytes (empty) seal
    extraData: `0x${'00'.repeat(32)}${signer}${'00'.repeat(65)}`,
    gasLimit: `0x${BLOCK_GAS_LIMIT.toString(16)}`,
    difficulty: '0x1',
    mixHash: `0x${'00'.repeat(32)}`,
    coinbase: `0x${'00'.repeat(20)}`,
    baseFeePerGas: `0x${GENESIS_BASE_FEE.toString(16)}`,
    alloc: { [`0x${signer}`]: { balance: `0x${SIGNER_BALANCE.toString(16)}` } },
  };
}
