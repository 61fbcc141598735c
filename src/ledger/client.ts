/**
 * The chain port: what GlucoGuard needs from a proof-of-authority EVM chain, over standard Ethereum
 * JSON-RPC through ethers v6 — a provider, ONE nonce-managed authority signer shared by every
 * sender (anchoring, consent relaying, identity registration) so concurrent sends never collide or
 * leave gaps, and the three contracts. Nothing here knows which engine (embedded Clique node, Besu)
 * is behind the URL; src/app.ts decides that.
 */
import { Contract, JsonRpcProvider, NonceManager, Wallet, type ContractRunner, type InterfaceAbi } from 'ethers';
import { loadArtifact, type ContractName } from '../../chain/node/artifacts.js';

export interface ChainAddresses {
  ResourceAnchor: string;
  ConsentRegistry: string;
  IdentityRegistry: string;
}

export interface ChainClientOptions {
  rpcUrl: string;
  chainId: number;
  /** Private key (0x hex) of the authority account that relays and anchors. */
  authorityKey: string;
  addresses: ChainAddresses;
  /** Shown in the start-up log: 'embedded' or 'rpc'. */
  adapter: 'embedded' | 'rpc';
}

export class ChainClient {
  readonly provider: JsonRpcProvider;
  /** The authority signer, nonce-managed: use it for every transaction the proxy sends. */
  readonly authority: NonceManager;
  readonly authorityAddress: string;
  readonly addresses: ChainAddresses;
  readonly chainId: number;
  readonly description: { adapter: 'embedded' | 'rpc'; location: string };
  private readonly contracts = new Map<ContractName, Contract>();

  constructor(options: ChainClientOptions) {
    // staticNetwork: no eth_chainId per call; cacheTimeout -1: never serve a stale nonce or block.
    this.provider = new JsonRpcProvider(options.rpcUrl, options.chainId, { staticNetwork: true, cacheTimeout: -1, batchMaxCount: 1 });
    const wallet = new Wallet(options.authorityKey, this.provider);
    this.authority = new NonceManager(wallet);
    this.authorityAddress = wallet.address;
    this.addresses = options.addresses;
    this.chainId = options.chainId;
    this.description = { adapter: options.adapter, location: redact(options.rpcUrl) };
  }

  /** A contract bound to the authority signer (sends) or to another runner (reads, other signers). */
  contract(name: ContractName, runner: ContractRunner = this.authority): Contract {
    if (runner === this.authority) {
      const hit = this.contracts.get(name);
      if (hit) return hit;
    }
    const c = new Contract(this.addresses[name], loadArtifact(name).abi as InterfaceAbi, runner);
    if (runner === this.authority) this.contracts.set(name, c);
    return c;
  }

  /** Latest block number; throws when the node cannot be reached (callers fail closed). */
  async head(): Promise<number> {
    return this.provider.getBlockNumber();
  }

  async close(): Promise<void> {
    this.provider.destroy();
  }
}

function redact(url: string): string {
  try {
    const u = new URL(url);
    u.username = '';
    u.password = '';
    return u.toString().replace(/\/$/, '');
  } catch {
    return 'invalid URL';
  }
}
